"""Table lookup: the residual sites that `hf_penal.architectures` lists for a model's block classes, and the
resolution of the table's module specs (``a|b``, ``a>e``, ``how@path~width``) on one block."""
from __future__ import annotations

import torch
from torch import nn

from ..architectures import INPLACE_ADD, NOTES, branches_for


def module_at(block: nn.Module, path: str) -> nn.Module | None:
    """The submodule at a dotted `path` of `block` ("" is the block itself), or None."""
    mod = block
    for part in filter(None, path.split(".")):
        mod = getattr(mod, part, None)
        if not isinstance(mod, nn.Module):
            return None
    return mod


def _resolve_path(block: nn.Module, path: str) -> str | None:
    """The first of the table's ``a|b`` alternatives that exists in `block` (``a>e``: both `a` and `e` exist)."""
    return next((alt for alt in path.split("|")
                 if alt and all(p and module_at(block, p) is not None for p in alt.split(">"))), None)


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


def resolve_tensor_spec(block: nn.Module, spec: str) -> tuple[str, str] | None:
    """The first ``how@path`` alternative of a table spec (``how@path|how@path``, see `hf_penal.architectures`) whose
    module exists in `block`: (how the tensor is taken, module path relative to the block), or None."""
    for alt in spec.partition("~")[0].split("|"):
        how, _, path = alt.partition("@")
        if module_at(block, path) is not None:
            return how, path
    return None


def skip_input(block: nn.Module, spec: str) -> tuple[str, str, int | None]:
    """Resolve a table skip spec (``how@path|...~width_path``) on one block: (how x is taken, module path relative
    to the block, feature width or None). ValueError (field 'mode') when none of the alternatives exists."""
    found = resolve_tensor_spec(block, spec)
    if found is None:
        raise ValueError(f"PenalConfig field 'mode': skip input {spec!r} not found in {type(block).__name__}")
    how, path = found
    width_paths = spec.partition("~")[2]
    width = None
    for wp in width_paths.split("|") if width_paths else [path]:
        wmod = module_at(block, wp)
        width = _width(wmod) if wmod is not None else None
        if width is not None:
            break
    return how, path, width


def table_sites(model: nn.Module) -> list[dict]:
    """Raw site dicts for every block of `model` whose class the table lists, in model order."""
    found = []
    for bname, block in model.named_modules():
        cls_name, branches = branches_for(type(block))
        if branches is None:
            continue
        for path, index, kind, skip in branches:
            rel = _resolve_path(block, path)
            if rel is None:
                continue
            rel, _, end = rel.partition(">")
            found.append(dict(name=f"{bname}.{rel}" if bname else rel, block=bname, kind=kind, output_index=index,
                              inplace=cls_name in INPLACE_ADD, skip=skip, source="table",
                              note=NOTES.get(cls_name, ""), end=f"{bname}.{end}" if bname and end else end))
    return found
