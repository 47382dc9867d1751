"""The penal connection as an autograd Function and as a small module.

Forward is the identity. Backward adds ``coef * z`` to the gradient reaching z, where
``coef = tau * factor * gain``:

* ``tau`` is the site's base penalty τ_l (a 0-dim float32 buffer, changed in place, so a compiled graph never
  recompiles): the configured absolute τ, or — with ``tau="auto"`` — the value calibrated on the first training
  backward (below);
* ``factor`` is the τ schedule's multiplier (× a depth profile), written once per optimizer step by the trainer
  integration (1 outside training with a schedule);
* ``gain`` is an implementation detail the training integration keeps up to date: the current loss scale of a
  GradScaler (the incoming gradient is multiplied by it, so τ·z must be too) times the number of data-parallel
  ranks (DDP averages gradients over ranks, which would divide a per-sample-summed penalty by the rank count).
  Gradient accumulation needs no correction: summing τ·z over k micro-batches gives exactly the penalty of one
  batch k times larger, which is what accumulation emulates.

Calibration (``tau="auto"``, design §1 "Strength"): the first training backward through the site adds nothing and
measures τ_l = ρ · ‖g‖ / ‖z‖, with g = (incoming gradient) / gain — the unscaled, single-rank-equivalent ∂L/∂z —
and the norms over the whole micro-batch tensor. Every site of the model calibrates in that same backward, so the
gradients it sees carry no penalty of other sites (calibrating inside a penalized backward compounds). Later
backwards add τ_l·z. The measurement is tensor arithmetic on buffers (``pending`` switches it off), so it needs no
host sync and no recompile.

Optionally the op also measures the Markov efficiency ε = cos(z, −∂L/∂x) per sample (design §1), using the
incoming gradient as ∂L/∂x at the node, and the mean per-sample ‖z‖.

Who writes what: the buffers are written only in this file — by `PenalConnection`'s methods (`set_tau`,
`set_factor`, `set_gain`, `recalibrate`, `set_calibrated`, `finish_calibration`, `track_efficiency`, `read_stats`)
and by the backward. Outside this file only `hf_penal.surgery` calls those methods.
"""
from __future__ import annotations

import torch
from torch import nn


def _is_fp8(dtype: torch.dtype | None) -> bool:
    return dtype is not None and dtype.is_floating_point and dtype.itemsize == 1


def _pack_z(z: torch.Tensor, storage: torch.dtype | None) -> tuple:
    """The tensors to save for backward that let `_unpack_z` give z back: z itself (storage None or z's dtype), a
    cast copy (16/32-bit storage), or 8-bit codes plus a per-tensor fp32 scale (fp8 storage).

    The fp8 scale is the power of two that maps max|z| into the format's range, so small activations keep their
    relative precision instead of flushing to zero, and scaling itself is exact."""
    if storage is None or storage == z.dtype:
        return (z,)
    z = z.detach()
    if not _is_fp8(storage):
        return (z.to(storage),)
    amax = torch.linalg.vector_norm(z, ord=float("inf"), dtype=torch.float32)
    ratio = (amax / torch.finfo(storage).max).clamp_min(torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.ceil(torch.log2(ratio)))
    # divide in fp32: a power-of-two scale is exact there, but may not exist in fp16
    return ((z.float() / scale).to(storage), scale)


def _unpack_z(saved, dtype: torch.dtype) -> torch.Tensor:
    """z, as saved by `_pack_z`, in `dtype`."""
    if len(saved) == 1:
        return saved[0].to(dtype)
    codes, scale = saved
    return codes.to(dtype) * scale.to(dtype)


def _efficiency_terms(z: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (cos(z, −grad), ‖z‖) in float32, bounded and accurate for activations of any magnitude.

    Each sample's z and grad are first divided by their own max |·|: every element is then ≤ 1, so no square or product
    can overflow or underflow whatever the scale (a plain fp32 dot product overflows once |z|·|g| summed over
    a sample exceeds 3e38, and a clamp of ‖z‖·‖g‖ at 1e-30 inflates cosines of tiny gradients). The cosine is
    clamped to [−1, 1] against the last rounding; a zero z or grad gives 0. Reductions are batched matmuls and
    vector norms, so the transient memory is two fp32 copies of z, not fp64 ones."""
    n = z.shape[0] if z.dim() > 1 else 1
    tiny = torch.finfo(torch.float32).tiny
    zf, gf = z.detach().reshape(n, -1).float(), grad.detach().reshape(n, -1).float()
    zs = torch.linalg.vector_norm(zf, ord=float("inf"), dim=1, keepdim=True)
    gs = torch.linalg.vector_norm(gf, ord=float("inf"), dim=1, keepdim=True)
    zu, gu = zf / zs.clamp_min(tiny), gf / gs.clamp_min(tiny)
    zn, gn = torch.linalg.vector_norm(zu, dim=1), torch.linalg.vector_norm(gu, dim=1)
    dot = torch.bmm(zu.unsqueeze(1), gu.unsqueeze(2)).reshape(n)
    cos = -dot / (zn * gn).clamp_min(tiny)
    return cos.clamp(-1.0, 1.0), zn * zs.reshape(n)


def _efficiency_(stats: torch.Tensor, z: torch.Tensor, grad: torch.Tensor) -> None:
    """Accumulate (Σ per-sample cos(z, −g), Σ per-sample ‖z‖, number of samples) into `stats`."""
    cos, zn = _efficiency_terms(z, grad)
    stats[0] += cos.sum()
    stats[1] += zn.sum()
    stats[2] += cos.shape[0]


def calibrated_tau(ratio: torch.Tensor, g2: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """τ_l = ρ · ‖g‖ / ‖z‖ from the measured ‖g‖², ‖z‖² (float64 0-dim tensors): the one place it is written."""
    return ratio.double() * (g2.sqrt() / z2.sqrt().clamp_min(1e-30))


def _calibrate_(cal: tuple, z: torch.Tensor, grad: torch.Tensor, gain: torch.Tensor) -> None:
    """While ``pending`` is 1: measure ‖g‖², ‖z‖² (g = grad / gain), set τ = ρ·‖g‖/‖z‖ and clear ``pending``.
    A branch whose z is exactly zero (a zero-initialised last norm, as in timm's ResNets) has no scale to measure:
    it stays pending and calibrates on its first backward with z ≠ 0. Tensor-only (no branch on values): once
    calibrated the buffers keep their values."""
    tau, ratio, pending, norms = cal
    g2 = (grad.detach().double() / gain.double()).square().sum()
    z2 = z.detach().double().square().sum()
    ready = pending.double() * (z2 > 0).double()
    measured = torch.stack([g2, z2])
    norms.copy_(torch.lerp(norms.double(), measured, ready).to(norms.dtype))
    new_tau = calibrated_tau(ratio, g2, z2)
    tau.copy_(torch.lerp(tau.double(), new_tau, ready).to(tau.dtype))
    pending.sub_(ready.to(pending.dtype))


class _PenalFunction(torch.autograd.Function):
    """z → z; backward: grad + coef·z. `stats` (ε probe) and `cal` (calibration buffers) are optional."""

    @staticmethod
    def forward(ctx, z, coef, gain, storage_dtype, copy, stats, cal):
        ctx.save_for_backward(*_pack_z(z, storage_dtype), coef, gain)
        ctx.stats = stats
        ctx.cal = cal
        # where the model later writes into z (timm ResNet `x += shortcut`, then ReLU(inplace)) hand it a copy and
        # keep the original; elsewhere a view costs nothing
        return z.clone() if copy else z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        *saved, coef, gain = ctx.saved_tensors
        z = _unpack_z(saved, grad.dtype)
        if ctx.stats is not None or ctx.cal is not None:
            with torch.no_grad():  # the statistics read z at full precision even when grad is 16-bit
                zm = z if grad.dtype.itemsize >= 4 else _unpack_z(saved, torch.float32)
                if ctx.stats is not None:
                    _efficiency_(ctx.stats, zm, grad)
                if ctx.cal is not None:
                    _calibrate_(ctx.cal, zm, grad, gain)
        return torch.addcmul(grad, z, coef.to(grad.dtype)), None, None, None, None, None, None


def penal(z: torch.Tensor, tau, *, storage_dtype: torch.dtype | None = None, copy: bool = False) -> torch.Tensor:
    """Functional penal connection: returns z unchanged; in backward the gradient reaching z gets ``+ tau * z``.

    tau: float or 0-dim tensor (use a tensor under torch.compile). Does nothing when grad is disabled.
    """
    if not torch.is_grad_enabled() or not z.requires_grad:
        return z
    if not torch.is_tensor(tau):
        tau = torch.tensor(float(tau), dtype=torch.float32, device=z.device)
    one = torch.ones((), dtype=torch.float32, device=z.device)
    return _PenalFunction.apply(z, tau, one, storage_dtype, copy, None, None)


class PenalConnection(nn.Module):
    """Penal connection at one residual site. Identity in forward; in training adds τ·z to z's gradient.

    It owns its state (τ, the schedule factor, the gain, the calibration and ε buffers): only its own methods and
    backward write them; from outside the package, `hf_penal.surgery` is the one caller of those methods.

    Args:
        tau: τ (float ≥ 0), or ``"auto"``: calibrated on the first training backward as
            ``tau_ratio · ‖∂L/∂z‖ / ‖z‖`` (that backward adds no penalty). Kept in a 0-dim float32 buffer.
        tau_ratio: ρ of ``"auto"`` (ignored otherwise).
        storage_dtype: dtype z is kept in for the backward pass (None: z's own dtype).
        copy: keep a private copy of z (needed where the model later modifies z in place).
    """

    _FLOAT_BUFFERS = ("tau", "factor", "gain", "stats", "ratio", "pending", "norms")

    def __init__(self, tau: float | str = 3e-4, storage_dtype: torch.dtype | None = None, copy: bool = False,
                 tau_ratio: float = 0.0):
        super().__init__()
        self.auto = tau == "auto"
        # non-persistent: checkpoints stay free of new keys and load into plain models
        f32 = dict(dtype=torch.float32)
        self.register_buffer("tau", torch.tensor(0.0 if self.auto else float(tau), **f32), persistent=False)
        self.register_buffer("factor", torch.tensor(1.0, **f32), persistent=False)
        self.register_buffer("gain", torch.tensor(1.0, **f32), persistent=False)
        self.register_buffer("stats", torch.zeros(3, **f32), persistent=False)
        if self.auto:
            self.register_buffer("ratio", torch.tensor(float(tau_ratio), **f32), persistent=False)
            self.register_buffer("pending", torch.tensor(1.0, **f32), persistent=False)
            self.register_buffer("norms", torch.zeros(2, **f32), persistent=False)  # ‖g‖², ‖z‖² measured
        self.storage_dtype = storage_dtype
        self.copy = copy
        self.measure_efficiency = False
        self.sum_site = None  # set by hf_penal.recompute where z is recomputed from x + z instead of saved
        self._calibrating = self.auto  # eager fast path: stop measuring once `pending` is seen cleared

    def _apply(self, fn, recurse=True):
        # .half()/.to(bfloat16) must not turn the coefficients into fp16 (a loss scale of 65536 overflows it)
        super()._apply(fn, recurse)
        for name in self._FLOAT_BUFFERS:
            buf = self._buffers.get(name)
            if buf is not None and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and z.requires_grad):
            return z
        cal = None
        if self.auto:
            if self._calibrating and not torch.compiler.is_compiling() and not self.pending.item():
                self._calibrating = False  # eager: calibrated, skip the measurement from now on
            if self._calibrating or torch.compiler.is_compiling():
                cal = (self.tau, self.ratio, self.pending, self.norms)
        coef = self.tau * self.factor * self.gain
        if self.sum_site is not None and cal is None and not self.measure_efficiency and self.sum_site.active():
            return self.sum_site.branch(z, coef)
        stats = self.stats if self.measure_efficiency else None
        return _PenalFunction.apply(z, coef, self.gain, self.storage_dtype, self.copy, stats, cal)

    def extra_repr(self) -> str:
        if self.auto:
            s = (f"tau=auto(ratio={self.ratio.item():g}, " +
                 ("pending)" if self.pending.item() else f"calibrated={self.tau.item():.3g})"))
        else:
            s = f"tau={self.tau.item():g}"
        if self.storage_dtype is not None:
            s += f", storage_dtype={self.storage_dtype}"
        if self.sum_site is not None:
            s += ", storage=recompute"
        return s

    # state ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_tau(self, tau: float) -> None:
        """Set a fixed τ (an ``"auto"`` connection calibrates its τ instead: `recalibrate` / `set_calibrated`)."""
        if self.auto:
            raise ValueError("set_tau: this connection calibrates its tau (tau='auto'); rebuild it with a fixed tau")
        self.tau.fill_(float(tau))

    @torch.no_grad()
    def set_factor(self, factor: float) -> None:
        """The schedule's multiplier of τ (× the depth profile's value at this site); 1 leaves τ as configured."""
        self.factor.fill_(float(factor))

    @torch.no_grad()
    def set_gain(self, gain: float | torch.Tensor) -> None:
        """Loss scale × data-parallel world size (a tensor is copied without a host sync)."""
        if torch.is_tensor(gain):
            self.gain.copy_(gain.detach().reshape(()))
        else:
            self.gain.fill_(float(gain))

    # calibration --------------------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """True when τ is known: a fixed τ, or an ``"auto"`` τ after its calibrating backward (or a restore)."""
        return not self.auto or not bool(self.pending.item())

    def set_calibrated(self, tau: float) -> None:
        """Restore a calibrated τ_l (from saved settings): no calibration backward will run."""
        with torch.no_grad():
            self.tau.fill_(float(tau))
            if self.auto:
                self.pending.zero_()
        self._calibrating = False

    @property
    def measured_norms(self) -> torch.Tensor | None:
        """(‖g‖², ‖z‖²) of the calibrating backward (a read-only copy; None for a fixed τ)."""
        return self.norms.detach().clone() if self.auto else None

    def finish_calibration(self, g2: torch.Tensor | float, z2: torch.Tensor | float) -> None:
        """Set τ_l from measured ‖g‖², ‖z‖² (e.g. summed over data-parallel ranks), as the backward would."""
        g2, z2 = torch.as_tensor(g2, dtype=torch.float64), torch.as_tensor(z2, dtype=torch.float64)
        with torch.no_grad():
            self.set_calibrated(calibrated_tau(self.ratio, g2.to(self.ratio.device), z2.to(self.ratio.device)).item())
            self.norms.copy_(torch.stack([g2, z2]).float())

    def recalibrate(self) -> None:
        """Measure τ_l again on the next training backward (which then adds no penalty at this site)."""
        if not self.auto:
            raise ValueError("recalibrate: this connection has a fixed tau; apply tau='auto' to calibrate")
        with torch.no_grad():
            self.tau.zero_()
            self.pending.fill_(1.0)
            self.norms.zero_()
        self._calibrating = True

    # ε / ‖z‖ statistics --------------------------------------------------------------------------------------
    def track_efficiency(self, enabled: bool = True) -> None:
        """Switch the ε / ‖z‖ measurement in backward on or off; the statistics restart from zero."""
        self.measure_efficiency = bool(enabled)
        with torch.no_grad():
            self.stats.zero_()

    def read_stats(self, reset: bool = True) -> tuple | None:
        """(mean ε, mean ‖z‖) over the samples seen since the last reset, or None if none."""
        s = self.stats.tolist()
        if reset:
            self.stats.zero_()
        if s[2] == 0:
            return None
        return s[0] / s[2], s[1] / s[2]
