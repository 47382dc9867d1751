"""Example inputs for the generic probe, when the user gives none.

The library-specific builders live with the integrations (`hf_penal.integrations.transformers_inputs`,
`hf_penal.integrations.timm_inputs`) and are registered here by `import hf_penal`. A builder takes a model and
returns its candidate ``(args, kwargs)`` pairs, most complete first, or None when the model is not of its library.
The first builder that claims the model decides; a model's own ``dummy_inputs`` (a dict of keyword inputs) is tried
before the candidates of a builder that does not already use it, and alone when no builder claims the model. After all
of them come the same candidates at batch 1 (`batch_one`), for forwards that run on one sample only.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: batch size and sequence length of built inputs: two samples (so per-sample gates are told from constants)
BATCH, SEQ = 2, 8

_BUILDERS: list[tuple[Callable[[nn.Module], list | None], bool]] = []


def register(builder: Callable[[nn.Module], list | None], uses_dummy_inputs: bool = False) -> None:
    """Add an example-input builder (idempotent). ``uses_dummy_inputs``: the builder already includes the model's
    ``dummy_inputs`` among its candidates."""
    if all(b is not builder for b, _ in _BUILDERS):
        _BUILDERS.append((builder, uses_dummy_inputs))


def size2(size, default: int) -> tuple[int, int]:
    """(height, width) from a config's image size: an int, a sequence ending in (h, w), or a dict with height /
    width / shortest_edge; `default` when absent."""
    if isinstance(size, (list, tuple)) and size:
        return (int(size[-2]), int(size[-1])) if len(size) >= 2 else (int(size[0]), int(size[0]))
    if isinstance(size, dict):  # {"height": .., "width": ..} / {"shortest_edge": ..}
        h = size.get("height") or size.get("shortest_edge") or default
        return int(h), int(size.get("width") or h)
    return (int(size), int(size)) if isinstance(size, int) and size > 0 else (default, default)


def generator() -> torch.Generator:
    """A fixed-seed CPU generator: built inputs are the same on every call."""
    return torch.Generator().manual_seed(0)


def probe_inputs(model: nn.Module) -> list[tuple]:
    """Candidate (args, kwargs) for the probe's forward pass, tried in order."""
    dummy = getattr(model, "dummy_inputs", None)
    own = [((), dict(dummy))] if isinstance(dummy, dict) and dummy else []
    for builder, uses_dummy in _BUILDERS:
        cands = builder(model)
        if cands is not None:
            cands = list(cands) if uses_dummy else own + list(cands)
            return cands + batch_one(cands)
    return own + batch_one(own)


def batch_one(cands: list[tuple]) -> list[tuple]:
    """Last resorts, after every candidate (a model that runs on one keeps its inputs): each candidate at batch 1,
    its tensors whose first dimension is BATCH cut to their first sample, for a forward that only runs on one sample
    (one that views a per-position table to (batch, ...)); candidates with no such tensor are left out."""
    def batched(v):
        return torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == BATCH

    out = []
    for args, kwargs in cands:
        if any(batched(v) for v in (*args, *kwargs.values())):
            out.append((tuple(a[:1] if batched(a) else a for a in args),
                        {k: v[:1] if batched(v) else v for k, v in kwargs.items()}))
    return out
