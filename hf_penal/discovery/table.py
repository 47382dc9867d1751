"""Table lookup: the residual sites that `hf_penal.architectures` records for a model's block classes, each record
resolved on its block (which alternative exists, the feature width)."""
from __future__ import annotations

import torch
from torch import nn

from ..architectures import Branch, Take, block_record


def module_at(block: nn.Module, path: str) -> nn.Module | None:
    """The submodule at a dotted `path` of `block` ("" is the block itself), or None."""
    mod = block
    for part in filter(None, path.split(".")):
        mod = getattr(mod, part, None)
        if not isinstance(mod, nn.Module):
            return None
    return mod


def first_take(block: nn.Module, takes: tuple[Take, ...]) -> Take | None:
    """The first of the alternatives `takes` whose module exists in `block`, or None."""
    return next((t for t in takes if module_at(block, t.path) is not None), None)


def _width(mod: nn.Module) -> int | None:
    """Feature width of a module (its output features / channels / normalized size), or None."""
    for attr in ("num_features", "out_features", "out_channels"):
        v = getattr(mod, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    shape = getattr(mod, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape:
        return int(shape[-1])
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        return int(w.numel())
    return None


def feature_width(block: nn.Module, paths: tuple[str, ...]) -> int | None:
    """The feature width of the first module among `paths` of `block` that has one, or None."""
    for path in paths:
        mod = module_at(block, path)
        width = _width(mod) if mod is not None else None
        if width is not None:
            return width
    return None


def _branch_site(block: nn.Module, bname: str, branch: Branch) -> dict | None:
    """The raw site dict of one record branch on `block` (named `bname`), or None when its module is absent."""
    rel = next((p for p in branch.module if module_at(block, p) is not None), None)
    if rel is None or (branch.end and module_at(block, branch.end) is None):
        return None
    skip = first_take(block, branch.x)
    width = feature_width(block, branch.width or (skip.path,)) if skip is not None else None
    end = f"{bname}.{branch.end}" if bname and branch.end else branch.end
    return dict(name=".".join(p for p in (bname, rel) if p), block=bname, kind=branch.kind, output_index=branch.index,
                skip=skip, width=width, sum=first_take(block, branch.sum), end=end)


def table_sites(model: nn.Module) -> list[dict]:
    """Raw site dicts for every block of `model` whose class the table records, in model order."""
    found = []
    for bname, block in model.named_modules():
        _, record = block_record(type(block))
        if record is None:
            continue
        for branch in record.branches:
            site = _branch_site(block, bname, branch)
            if site is not None:
                found.append(dict(site, inplace=record.inplace_add, source="table", note=record.note))
    return found
