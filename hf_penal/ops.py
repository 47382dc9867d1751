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


class _PenalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, coef, storage_dtype, copy):
        saved = z.detach().to(storage_dtype) if storage_dtype is not None and storage_dtype != z.dtype else z
        ctx.save_for_backward(saved, coef)
        # where the model later writes into z (timm ResNet `x += shortcut`, then ReLU(inplace)) hand it a copy and
        # keep the original; elsewhere a view costs nothing
        return z.clone() if copy else z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        saved, coef = ctx.saved_tensors
        return torch.addcmul(grad, saved.to(grad.dtype), coef.to(grad.dtype)), None, None, None


class _PenalProbeFunction(torch.autograd.Function):
    """Same gradient as `_PenalFunction`; also accumulates ε and ‖z‖ statistics into `stats` (a float32 [3] buffer:
    sum of per-sample cosines, sum of per-sample ‖z‖, number of samples)."""

    @staticmethod
    def forward(ctx, z, coef, storage_dtype, copy, stats):
        saved = z.detach().to(storage_dtype) if storage_dtype is not None and storage_dtype != z.dtype else z
        ctx.save_for_backward(saved, coef)
        ctx.stats = stats
        return z.clone() if copy else z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        saved, coef = ctx.saved_tensors
        with torch.no_grad():
            zf = saved.detach().float().reshape(saved.shape[0], -1) if saved.dim() > 1 else saved.float()[None]
            gf = grad.detach().float().reshape(zf.shape)
            zn, gn = zf.norm(dim=1), gf.norm(dim=1)
            cos = -(zf * gf).sum(dim=1) / (zn * gn).clamp_min(1e-30)
            ctx.stats[0] += cos.sum()
            ctx.stats[1] += zn.sum()
            ctx.stats[2] += zf.shape[0]
        return torch.addcmul(grad, saved.to(grad.dtype), coef.to(grad.dtype)), None, None, None, None


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
        if self.measure_efficiency:
            return _PenalProbeFunction.apply(z, coef, self.storage_dtype, self.copy, self.stats)
        return _PenalFunction.apply(z, coef, self.storage_dtype, self.copy)

    def extra_repr(self) -> str:
        s = f"tau={self.tau.item():g}"
        if self.storage_dtype is not None:
            s += f", storage_dtype={self.storage_dtype}"
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
