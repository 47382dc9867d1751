"""The penal connection as an autograd Function and as a small module.

Forward is the identity. Backward adds ``coef * z`` to the gradient reaching z, where
``coef = tau * gain``:

* ``tau`` is the configured penalty τ (a 0-dim float32 buffer, so a schedule changes it in place and a compiled
  graph never recompiles);
* ``gain`` is an implementation detail the training integration keeps up to date: the current loss scale of a
  GradScaler (the incoming gradient is multiplied by it, so τ·z must be too) times the number of data-parallel
  ranks (DDP averages gradients over ranks, which would divide a per-sample-summed penalty by the rank count).
  Gradient accumulation needs no correction: summing τ·z over k micro-batches gives exactly the penalty of one
  batch k times larger, which is what accumulation emulates.

Optionally the op also measures the Markov efficiency ε = cos(z, −∂L/∂x) per sample (design §1), using the
incoming gradient as ∂L/∂x at the node, and the mean per-sample ‖z‖. That path is a separate Function so the default
backward does no extra work.
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


def _unpack_z(saved: tuple, dtype: torch.dtype) -> torch.Tensor:
    """z, as saved by `_pack_z`, in `dtype` (the gradient's)."""
    if len(saved) == 1:
        return saved[0].to(dtype)
    codes, scale = saved
    return codes.to(dtype) * scale.to(dtype)


def _efficiency_terms(z: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (cos(z, −grad), ‖z‖) in float32, bounded and accurate for activations of any magnitude.

    Each sample's z and grad are first divided by their own max |·|: every element is then ≤ 1, so no square or
    product can overflow or underflow whatever the scale (a plain fp32 dot product overflows once |z|·|g| summed over
    a sample exceeds 3e38, and the old clamp of ‖z‖·‖g‖ at 1e-30 inflated cosines of tiny gradients). The cosine is
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


class _PenalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, coef, storage_dtype, copy):
        ctx.save_for_backward(*_pack_z(z, storage_dtype), coef)
        # where the model later writes into z (timm ResNet `x += shortcut`, then ReLU(inplace)) hand it a copy and
        # keep the original; elsewhere a view costs nothing
        return z.clone() if copy else z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        *saved, coef = ctx.saved_tensors
        return torch.addcmul(grad, _unpack_z(saved, grad.dtype), coef.to(grad.dtype)), None, None, None


class _PenalProbeFunction(torch.autograd.Function):
    """Same gradient as `_PenalFunction`; also accumulates ε and ‖z‖ statistics into `stats` (a float32 [3] buffer:
    sum of per-sample cosines, sum of per-sample ‖z‖, number of samples)."""

    @staticmethod
    def forward(ctx, z, coef, storage_dtype, copy, stats):
        ctx.save_for_backward(*_pack_z(z, storage_dtype), coef)
        ctx.stats = stats
        return z.clone() if copy else z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        *saved, coef = ctx.saved_tensors
        z = _unpack_z(saved, grad.dtype)
        with torch.no_grad():
            cos, zn = _efficiency_terms(z if grad.dtype.itemsize >= 4 else _unpack_z(saved, torch.float32), grad)
            ctx.stats[0] += cos.sum()
            ctx.stats[1] += zn.sum()
            ctx.stats[2] += cos.shape[0]
        return torch.addcmul(grad, z, coef.to(grad.dtype)), None, None, None, None


def penal(z: torch.Tensor, tau, *, storage_dtype: torch.dtype | None = None, copy: bool = False) -> torch.Tensor:
    """Functional penal connection: returns z unchanged; in backward the gradient reaching z gets ``+ tau * z``.

    tau: float or 0-dim tensor (use a tensor under torch.compile). Does nothing when grad is disabled.
    """
    if not torch.is_grad_enabled() or not z.requires_grad:
        return z
    if not torch.is_tensor(tau):
        tau = torch.tensor(float(tau), dtype=torch.float32, device=z.device)
    return _PenalFunction.apply(z, tau, storage_dtype, copy)


class PenalConnection(nn.Module):
    """Penal connection at one residual site. Identity in forward; in training adds τ·z to z's gradient.

    Args:
        tau: τ (float ≥ 0). Kept in a 0-dim float32 buffer, changed in place by `set_tau`.
        storage_dtype: dtype z is kept in for the backward pass (None: z's own dtype).
        copy: keep a private copy of z (needed where the model later modifies z in place).
    """

    def __init__(self, tau: float = 3e-4, storage_dtype: torch.dtype | None = None, copy: bool = False):
        super().__init__()
        # non-persistent: checkpoints stay free of new keys and load into plain models
        self.register_buffer("tau", torch.tensor(float(tau), dtype=torch.float32), persistent=False)
        self.register_buffer("gain", torch.tensor(1.0, dtype=torch.float32), persistent=False)
        self.register_buffer("stats", torch.zeros(3, dtype=torch.float32), persistent=False)
        self.storage_dtype = storage_dtype
        self.copy = copy
        self.measure_efficiency = False
        self._sum = None  # set by hf_penal.recompute where z is recomputed from x + z instead of saved

    def _apply(self, fn, recurse=True):
        # .half()/.to(bfloat16) must not turn the coefficients into fp16 (a loss scale of 65536 overflows it)
        super()._apply(fn, recurse)
        for name in ("tau", "gain", "stats"):
            buf = self._buffers[name]
            if buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and z.requires_grad):
            return z
        coef = self.tau * self.gain
        if self._sum is not None and not self.measure_efficiency and self._sum.active():
            return self._sum.branch(z, coef)
        if self.measure_efficiency:
            return _PenalProbeFunction.apply(z, coef, self.storage_dtype, self.copy, self.stats)
        return _PenalFunction.apply(z, coef, self.storage_dtype, self.copy)

    def extra_repr(self) -> str:
        s = f"tau={self.tau.item():g}"
        if self.storage_dtype is not None:
            s += f", storage_dtype={self.storage_dtype}"
        if self._sum is not None:
            s += ", storage=recompute"
        return s

    # ε / ‖z‖ statistics --------------------------------------------------------------------------------------
    def read_stats(self, reset: bool = True) -> tuple | None:
        """(mean ε, mean ‖z‖) over the samples seen since the last reset, or None if none."""
        s = self.stats.tolist()
        if reset:
            self.stats.zero_()
        if s[2] == 0:
            return None
        return s[0] / s[2], s[1] / s[2]
