"""Calibrated τ (``tau="auto"``): one τ_l per site, measured on a clean backward and then held fixed.

τ is not scale-free: the penalty (τ/2)·Σ‖z‖² sums over every element of every site while the task loss is a batch
mean, so one absolute τ is weak on one model and overwhelming on another. With ``tau="auto"`` each site gets

    τ_l = ρ · ‖∂L/∂z_l‖ / ‖z_l‖          (norms over the whole micro-batch tensor)

so that, at the start of training, the penalty's pull on z_l is ρ times the loss's. ρ (``tau_ratio``) is portable
across models, widths, batch sizes and sequence lengths (‖g‖/‖z‖ scales as 1/batch for a mean loss). The measurement
happens inside the connection (`hf_penal.ops`), on the first training backward, in any training loop; this module
holds the explicit API around it:

    hf_penal.calibrate(model, batch)                 # measure now, on this batch; returns {site: τ_l}
    hf_penal.calibrate(model)                        # measure again on the next training backward

Under data parallelism each rank measures ‖g‖² and ‖z‖² on its own micro-batch (g taken as the single-rank
equivalent: the incoming gradient divided by the loss scale × world size); `sync_calibration` sums them over ranks,
which gives every rank the τ_l a single process would measure on the whole global batch. `PenalTrainer` /
`PenalCallback` call it after the first optimizer step; `calibrate(model, batch)` calls it itself.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import surgery


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    out = model(**batch) if isinstance(batch, dict) else model(*batch) if isinstance(batch, (tuple, list)) \
        else model(batch)
    loss = out["loss"] if isinstance(out, dict) or hasattr(out, "keys") else getattr(out, "loss", out)
    if not (torch.is_tensor(loss) and loss.dim() == 0):
        raise ValueError("calibrate: the model's output has no scalar loss; pass loss_fn=lambda model, batch: ...")
    return loss


def calibrate(model: nn.Module, batch: Any = None, loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
              ) -> dict[str, float]:
    """Calibrate τ_l of every ``tau="auto"`` site.

    With `batch`: one forward and backward now (training mode, no penalty in that backward; the model's ``.grad``
    are left as they were), ranks synchronised; returns ``{site name: τ_l}``. The loss is ``loss_fn(model, batch)``,
    or the model's own ``.loss`` for a dict / tuple batch (transformers models with labels).
    Without `batch`: the sites measure again on the next training backward; returns ``{}``.
    """
    surgery.start_calibration(model, "calibrate")
    if batch is None:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    kept = [p.grad for p in params]
    for p in params:
        p.grad = None
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            loss = (loss_fn or _default_loss)(model, batch)
            loss.backward()
    finally:
        model.train(was_training)
        for p, g in zip(params, kept):
            p.grad = g
    sync_calibration(model)
    return calibrated_taus(model)


def sync_calibration(model: nn.Module) -> bool:
    """Under torch.distributed: sum each site's measured ‖g‖², ‖z‖² over ranks and set τ_l from the sums, so every
    rank holds the τ_l of the whole global batch. Returns True when it synchronised (False: one process, or nothing
    calibrated). Collective: every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    local = surgery.measured_norms(model)
    if not local:
        return False
    names = list(local)
    norms = torch.stack([local[n] for n in names]).double()
    dist.all_reduce(norms)
    surgery.finish_calibration(model, dict(zip(names, norms)))
    return True


def calibrated_taus(model: nn.Module) -> dict[str, float]:
    """``{site name: τ_l}`` of the calibrated ``tau="auto"`` sites (empty before calibration)."""
    return surgery.calibrated_taus(surgery.connections(model))
