"""Residual sites: where a residual branch output z meets its skip, and how they are found.

Discovery has two passes:

1. the architecture table (`hf_penal.architectures`, looked up in `.table`): block class name → branch-end
   submodules;
2. for models with no table entry, or with a stack of layers outside the table's blocks, the generic probe
   (`.probe`): one forward pass on example inputs (the user's, or built by `.inputs` from what the integrations
   register: a transformers model's `main_input_name` and config, a timm model's input size) that watches every
   tensor addition.

`.site` holds the record both passes produce.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .probe import ProbeFailedError, branch_candidates, guess_kind, probe_sites
from .site import NoResidualSiteError, ResidualSite, as_sites
from .table import module_at, table_sites

__all__ = ["ResidualSite", "NoResidualSiteError", "ProbeFailedError", "discover", "user_sites", "probe_sites",
           "branch_candidates", "module_at"]


def _related(name: str, blocks: set[str]) -> bool:
    """Whether module `name` is, holds or lies in one of the table blocks `blocks`."""
    return any(name == b or name.startswith(b + ".") or b.startswith(name + ".") for b in blocks)


def _stacks_outside(model: nn.Module, blocks: set[str]) -> bool:
    """Whether the model has a ModuleList of layers none of which is, holds or lies in a table block (a vision or
    audio tower next to a text tower the table knows, a detection transformer next to a table backbone)."""
    return any(isinstance(m, nn.ModuleList) and len(m) > 0 and not _related(n, blocks)
               and not any(_related(f"{n}.{i}" if n else i, blocks) for i, _ in m.named_children())
               for n, m in model.named_modules())


def discover(model: nn.Module, example_inputs: Any = None, strict: bool = True) -> list[ResidualSite]:
    """All residual sites of a model, in model order: the table's, and the generic probe's outside the table's blocks
    (the probe runs when no table block is found, or when some stack of layers holds none). A probe that cannot run
    the model raises `ProbeFailedError` when the table found nothing (``strict=False``: finds nothing instead)."""
    raw = table_sites(model)
    blocks = {s["block"] for s in raw}
    if not raw or _stacks_outside(model, blocks):
        try:
            probed = probe_sites(model, example_inputs)
        except ProbeFailedError:
            if strict and not raw:
                raise
            probed = []
        # a probed branch inside a table block, or one whose module is or holds a table block (SuperGlue's GNN adds
        # each table-recorded layer's output in its own loop: the probe's site there is the table's branch again)
        inside = [s for s in probed if _related(s["name"], blocks)
                  or any(s["block"] == b or s["block"].startswith(b + ".") for b in blocks)]
        if probed and len(inside) < len(probed):
            order = {n: i for i, (n, _) in enumerate(model.named_modules())}
            raw = sorted(raw + [s for s in probed if s not in inside], key=lambda s: order[s["name"]])
    return as_sites(model, raw)


def user_sites(model: nn.Module, names: Iterable[str]) -> list[ResidualSite]:
    """Sites from explicit module names (for architectures discovery cannot handle)."""
    modules = dict(model.named_modules())
    raw = []
    for n in names:
        if n not in modules:
            raise ValueError(f"sites: {n!r} is not a submodule of the model")
        raw.append(dict(name=n, block=n.rsplit(".", 1)[0] if "." in n else "", kind=guess_kind(n, modules[n]),
                        output_index=None, inplace=True, skip=None, source="user"))
    return as_sites(model, raw)
