"""Residual sites: where a residual branch output z meets its skip, and how they are found.

Discovery has two passes:

1. the architecture table (`hf_penal.architectures`): block class name → branch-end submodules;
2. for models with no table entry, a generic probe: one forward pass on example inputs (a transformers model's
   `dummy_inputs`, or a timm model's input size) under a TorchFunctionMode that watches every tensor addition. An
   add inside a numbered layer whose one operand is the output of a submodule M, and whose other operand existed
   before M started, is a residual add and M ends the branch.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .architectures import INPLACE_ADD, branches_for


@dataclasses.dataclass(frozen=True)
class ResidualSite:
    """One residual branch.

    name: qualified name of the submodule whose output is the branch output z.
    block: qualified name of the module that owns the residual add.
    kind: "attention", "cross_attention", "mlp" or "conv".
    layer: qualified name of the layer the site belongs to (diagnostics aggregate per layer).
    depth: index of that layer in model order (0-based); n_layers: number of layers with sites.
    output_index: None if the module returns z, else z's index in the returned tuple.
    inplace: the model modifies z in place after the module (the op then keeps a copy of z).
    skip: where the residual modes find the skip input x (see `hf_penal.architectures`); None if unknown.
    source: "table", "probe" or "user".
    """

    name: str
    block: str
    kind: str
    layer: str = ""
    depth: int = 0
    n_layers: int = 1
    output_index: int | None = None
    inplace: bool = False
    skip: str | None = None
    source: str = "table"


class NoResidualSiteError(ValueError):
    """Raised when no residual site can be found in a model."""


# ------------------------------------------------------------------------------------------------------------ table
def _resolve_path(block: nn.Module, path: str) -> str | None:
    for alt in path.split("|"):
        mod = block
        for part in alt.split("."):
            mod = getattr(mod, part, None) if isinstance(mod, nn.Module) else None
            if mod is None:
                break
        if isinstance(mod, nn.Module):
            return alt
    return None


def _table_sites(model: nn.Module) -> list[dict]:
    found = []
    for bname, block in model.named_modules():
        cls_name, branches = branches_for(type(block))
        if branches is None:
            continue
        for path, index, kind, skip in branches:
            rel = _resolve_path(block, path)
            if rel is None:
                continue
            found.append(dict(name=f"{bname}.{rel}" if bname else rel, block=bname, kind=kind, output_index=index,
                              inplace=cls_name in INPLACE_ADD, skip=skip, source="table"))
    return found


# ------------------------------------------------------------------------------------------------------------ probe
_ADD_NAMES = {"add", "__add__", "__radd__", "__iadd__", "add_"}
_NOT_BRANCH = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _numbered(name: str) -> bool:
    return any(p.isdigit() for p in name.split("."))


def _kind_from_text(text: str) -> str | None:
    low = text.lower()
    if re.search(r"cross|encdec|enc_dec", low):
        return "cross_attention"
    if re.search(r"attn|attention", low):
        return "attention"
    if re.search(r"mlp|ffn|feed_?forward|\bff\b|fc|intermediate|dense", low):
        return "mlp"
    return None


def _guess_kind(name: str, module: nn.Module, owner: str = "", owner_module: nn.Module | None = None) -> str:
    """Kind of a probed site, from (in order) its name relative to the block, the block's class, the block's name."""
    rel = name[len(owner) + 1:] if owner and name.startswith(owner + ".") else name
    for text in (rel, type(owner_module).__name__ if owner_module is not None else "", owner):
        kind = _kind_from_text(text)
        if kind:
            return kind
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)):
        return "conv"
    return "mlp"


class _AddWatcher(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.clock = 0
        self.birth: dict[int, int] = {}
        self.keep: list = []  # keeps probed tensors alive so ids stay unique
        self.outputs: dict[int, tuple] = {}  # id(z) -> (module name, output index, start time)
        self.stack: list[str] = []
        self.found: dict[str, dict] = {}
        self.modules = dict(model.named_modules())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _ADD_NAMES and len(args) >= 2 and all(torch.is_tensor(a) for a in args[:2]):
            self._inspect(args[0], args[1], inplace=name in ("__iadd__", "add_"))
        out = func(*args, **kwargs)
        self.clock += 1
        if torch.is_tensor(out) and id(out) not in self.birth:
            self.birth[id(out)] = self.clock
            self.keep.append(out)
        return out

    def _inspect(self, a, b, inplace):
        if a.shape != b.shape or not a.is_floating_point() or not self.stack:
            return
        owner = self.stack[-1]
        if not _numbered(owner):
            return
        for z, x, z_is_target in ((a, b, True), (b, a, False)):
            rec = self.outputs.get(id(z))
            if rec is None:
                continue
            mname, index, start = rec
            if self.birth.get(id(x), -1) >= start or not mname.startswith(owner + ".") and mname != owner:
                continue
            if isinstance(self.modules[mname], _NOT_BRANCH):
                continue
            kind = _guess_kind(mname, self.modules[mname], owner, self.modules.get(owner))
            self.found.setdefault(mname, dict(name=mname, block=owner, kind=kind, output_index=index,
                                              inplace=inplace and z_is_target, skip=None, source="probe"))
            return

    def pre_hook(self, name):
        def hook(mod, args):
            self.stack.append(name)
            self.clock += 1
            self._start = getattr(self, "_start", {})
            self._start.setdefault(name, []).append(self.clock)
        return hook

    def post_hook(self, name):
        def hook(mod, args, out):
            self.stack.pop()
            start = self._start[name].pop()
            if torch.is_tensor(out):
                self.outputs[id(out)] = (name, None, start)
                self.keep.append(out)
            elif isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                self.outputs[id(out[0])] = (name, 0, start)
                self.keep.append(out[0])
        return hook


def _example_inputs(model: nn.Module):
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:
        return (), dict(dummy)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return (torch.zeros(1, *cfg["input_size"]),), {}
    return None


def probe_sites(model: nn.Module, example_inputs: Any = None) -> list[dict]:
    """Find residual adds by running one forward pass; see the module docstring."""
    if example_inputs is None:
        example_inputs = _example_inputs(model)
        if example_inputs is None:
            return []
    elif isinstance(example_inputs, dict):
        example_inputs = ((), example_inputs)
    elif torch.is_tensor(example_inputs):
        example_inputs = ((example_inputs,), {})
    args, kwargs = example_inputs
    try:
        p = next(iter(model.parameters()))
        device = p.device
    except StopIteration:
        device = torch.device("cpu")
    if device.type == "meta":
        return []
    args = tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    watcher = _AddWatcher(model)
    handles = []
    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(watcher.pre_hook(name)))
            handles.append(mod.register_forward_hook(watcher.post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), watcher:
            model(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an unknown model we cannot run: the caller reports "no site found"
        return []
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(watcher.found.values(), key=lambda s: order[s["name"]])


# ------------------------------------------------------------------------------------------------------------ layers
def _layer_of(model: nn.Module, block: str, modules: dict) -> str:
    parts = block.split(".")
    # T5-style sub-layers (`block.3.layer.1`): the layer is the numbered module holding the ModuleList
    if len(parts) >= 3 and parts[-1].isdigit():
        parent = ".".join(parts[:-1])
        grand = ".".join(parts[:-2])
        if isinstance(modules.get(parent), nn.ModuleList) and grand and grand.split(".")[-1].isdigit():
            return grand
    return block


def _finish(model: nn.Module, raw: list[dict]) -> list[ResidualSite]:
    modules = dict(model.named_modules())
    layers: list[str] = []
    for s in raw:
        lay = _layer_of(model, s["block"], modules)
        s["layer"] = lay
        if lay not in layers:
            layers.append(lay)
    return [ResidualSite(depth=layers.index(s["layer"]), n_layers=len(layers), **s) for s in raw]


def discover(model: nn.Module, example_inputs: Any = None) -> list[ResidualSite]:
    """All residual sites of a model (table first, generic probe otherwise), in model order."""
    raw = _table_sites(model)
    if not raw:
        raw = probe_sites(model, example_inputs)
    return _finish(model, raw)


def user_sites(model: nn.Module, names: Iterable[str]) -> list[ResidualSite]:
    """Sites from explicit module names (for architectures discovery cannot handle)."""
    modules = dict(model.named_modules())
    raw = []
    for n in names:
        if n not in modules:
            raise ValueError(f"sites: {n!r} is not a submodule of the model")
        raw.append(dict(name=n, block=n.rsplit(".", 1)[0] if "." in n else "", kind=_guess_kind(n, modules[n]),
                        output_index=None, inplace=True, skip=None, source="user"))
    return _finish(model, raw)
