"""The residual site record and the errors of discovery."""
from __future__ import annotations

import dataclasses

from torch import nn

from ..architectures import Take


@dataclasses.dataclass(frozen=True)
class ResidualSite:
    """One residual branch.

    name: qualified name of the submodule whose output is the branch output z.
    block: qualified name of the module that owns the residual add.
    kind: "attention", "cross_attention", "mlp" or "conv".
    layer: qualified name of the layer the site belongs to (diagnostics aggregate per layer); where a model's own
        forward adds branches kept in ModuleLists (XLM's ``attentions.3`` and ``ffns.3``), the owner's name and
        the list index (``transformer.3``).
    depth: index of that layer in model order (0-based); n_layers: number of layers with sites.
    output_index: None if the module returns z, else z's index in the returned tuple.
    inplace: the model modifies z in place after the module (the op then keeps a copy of z).
    skip: where the residual modes find the skip input x, the tensor the block adds to z (a `Take` relative to
        `block`, see `hf_penal.architectures`); None if unknown (modes other than "identity" are then refused).
    width: the feature width the residual modes act on at this site; None if unknown.
    sum: where the block consumes y = x + z (a `Take` relative to `block`), for ``storage_dtype="recompute"``; None
        where recompute is not valid (z is stored).
    source: "table", "probe" or "user".
    end: "" when z is the output of `name`; otherwise the module whose output is z, one module that ends several
        branches (Phi's one `resid_dropout` after both the attention and the MLP): the site is the call of `end` that
        follows `name`'s return, and `output_index` refers to `end`'s output. `name` is the branch's own module, so
        each branch is one site with its own kind.
    note: "" when the penalty is exactly on what the block adds; otherwise how it differs (a probed branch scaled
        after the site, re-laid out with padding, or passing through a module shared with other calls).
    """

    name: str
    block: str
    kind: str
    layer: str = ""
    depth: int = 0
    n_layers: int = 1
    output_index: int | None = None
    inplace: bool = False
    skip: Take | None = None
    width: int | None = None
    sum: Take | None = None
    source: str = "table"
    note: str = ""
    end: str = ""


class NoResidualSiteError(ValueError):
    """Raised when no residual site can be found in a model."""


class ProbeFailedError(NoResidualSiteError):
    """Raised when the generic probe cannot run the model (the cause is chained)."""


def _layer_of(model: nn.Module, block: str, modules: dict) -> str:
    parts = block.split(".")
    # T5-style sub-layers (`block.3.layer.1`): the layer is the numbered module holding the ModuleList
    if len(parts) >= 3 and parts[-1].isdigit():
        parent = ".".join(parts[:-1])
        grand = ".".join(parts[:-2])
        if isinstance(modules.get(parent), nn.ModuleList) and grand and grand.split(".")[-1].isdigit():
            return grand
    return block


def as_sites(model: nn.Module, raw: list[dict]) -> list[ResidualSite]:
    """Site records from raw dicts (name, block, kind, ...), with each site's layer, depth and the number of layers."""
    modules = dict(model.named_modules())
    layers: list[str] = []
    for s in raw:
        lay = s.get("layer") or _layer_of(model, s["block"], modules)
        s["layer"] = lay
        if lay not in layers:
            layers.append(lay)
    return [ResidualSite(depth=layers.index(s["layer"]), n_layers=len(layers), **s) for s in raw]
