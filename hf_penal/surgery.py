"""apply / remove / sites / set_tau over any nn.Module.

The surgery never replaces or re-parents a module of the model, and never assigns `forward` on an instance (that would
silently switch off transformers' gradient checkpointing). At each residual site it

* registers a `PenalConnection` as a child named ``penal_connection`` of the branch-end module (so `print(model)`
  shows it and `.to()`, `.train()`, deepcopy and pickle carry it), and
* registers a forward hook on that module that routes the branch output z through the connection (and, for the
  residual modes, through the mode module ``residual_mode``).

The connection's buffers are non-persistent: `state_dict()` and checkpoints are exactly the plain model's.
`remove` deletes both and restores the module tree exactly.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from .config import SITE_KEYWORDS, PenalConfig, resolve_config
from .ops import PenalConnection
from .sites import NoResidualSiteError, ResidualSite, discover, user_sites

CONNECTION = "penal_connection"
MODE = "residual_mode"
_STATE = "_hf_penal"


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _host(modules: dict, site_name: str) -> tuple[nn.Module, str]:
    """(module that holds a site's connection/mode children, suffix of their names). The branch-end module itself,
    unless it is a container whose forward would run any child we add: then its parent, with the container's
    attribute name as suffix (``penal_connection_ffn``)."""
    mod = modules[site_name]
    if isinstance(mod, _CONTAINERS) and site_name:
        parent, _, attr = site_name.rpartition(".")
        return modules[parent], "_" + attr
    return mod, ""


class _SiteHook:
    """Forward hook at a branch-end module: z → connection(z) → mode (which turns z into z' = y − x where it
    rewrites the add). The penalty is on z, the branch output, whatever the mode. Picklable (no closures)."""

    def __init__(self, index: Optional[int], host: Optional[nn.Module] = None, suffix: str = ""):
        self.index = index
        self.host = host  # None: the hooked module itself
        self.suffix = suffix

    def __call__(self, module, args, output):
        host = module if self.host is None else self.host
        conn = host._modules.get(CONNECTION + self.suffix)
        mode = host._modules.get(MODE + self.suffix)
        index = self.index
        if index is None and isinstance(output, (tuple, list)):
            index = 0
        z = output if index is None else output[index]
        if conn is not None and conn.training:
            z = conn(z)
        if mode is not None:
            z = mode.take_branch_output(z)
        if index is None:
            return z
        out = list(output)
        out[index] = z
        return type(output)(out) if isinstance(output, tuple) else out


class _PenalState:
    """What `apply` did to a model: its config and its active sites."""

    def __init__(self, config: PenalConfig, sites: list):
        self.config = config
        self.sites = sites
        self.warned = False  # the "mode changes a pretrained model" warning was given


def _state(model: nn.Module) -> Optional[_PenalState]:
    return model.__dict__.get(_STATE)


def is_penalized(model: nn.Module) -> bool:
    return _state(model) is not None


def penal_config(model: nn.Module) -> Optional[PenalConfig]:
    """The PenalConfig applied to `model`, or None."""
    st = _state(model)
    return st.config if st else None


# ------------------------------------------------------------------------------------------------------------ sites
def sites(model: nn.Module, example_inputs: Any = None) -> list[ResidualSite]:
    """Residual sites of `model`: the active ones of a penalized model, otherwise all discoverable ones."""
    st = _state(model)
    if st is not None:
        return list(st.sites)
    return discover(model, example_inputs)


def _select(model: nn.Module, found: list[ResidualSite], spec) -> list[ResidualSite]:
    if isinstance(spec, list):
        by_name = {s.name: s for s in found}
        extra = [n for n in spec if n not in by_name]
        chosen = [by_name[n] for n in spec if n in by_name]
        if extra:
            chosen += user_sites(model, extra)
        return chosen
    if spec in SITE_KEYWORDS:
        kinds = SITE_KEYWORDS[spec]
        return [s for s in found if s.kind in kinds]
    import re
    rx = re.compile(spec)
    chosen = [s for s in found if rx.search(s.name)]
    if not chosen:
        raise ValueError(f"PenalConfig field 'sites': regex {spec!r} matches none of the model's {len(found)} "
                         f"residual sites (e.g. {[s.name for s in found[:3]]})")
    return chosen


def _no_site_message(model: nn.Module, example_inputs: Any = None) -> str:
    from .sites import branch_candidates  # noqa: PLC0415
    cands = branch_candidates(model, example_inputs)[:4]
    hint = (f" Submodules whose outputs enter an addition (candidates to check): sites={cands!r}." if cands else
            " The probe saw no submodule output enter an addition.")
    return (f"no residual site found in {type(model).__name__}: its blocks are not in hf_penal's architecture table "
            f"and the generic probe found no residual add (a tensor added to the output of a submodule that started "
            f"after it existed, inside a numbered layer). Pass the names of the submodules whose outputs are the "
            f"residual branches as sites=[...].{hint}")


# ------------------------------------------------------------------------------------------------------------ apply
def apply(model: nn.Module, config: Union[PenalConfig, dict, bool, None] = None, *, example_inputs: Any = None,
          **fields) -> nn.Module:
    """Give `model` penal connections (and/or a residual mode) in place, and return it.

    config: a PenalConfig, a dict of its fields, True or None (defaults); keyword `fields` (tau=..., sites=...,
    mode=...) override it. On a model that already has them, the settings are replaced (never stacked); with no
    config, keywords update the current settings. Raises ValueError (naming the field) on bad input and
    `NoResidualSiteError` when no residual site is found; in both cases the model is left untouched.
    """
    st = _state(model)
    if config is None and st is not None:
        config = st.config
    cfg = resolve_config(config, **fields)
    prior = getattr(getattr(model, "config", None), "penal", None)  # as loaded from the checkpoint's config.json
    old_sites = st.sites if st is not None else None
    old_modes = _current_modes(model, old_sites)
    if st is not None:  # discover on the plain structure
        _detach(model, old_sites)
    try:
        found = discover(model, example_inputs, strict=not isinstance(cfg.sites, list))
        if not found and not isinstance(cfg.sites, list):
            raise NoResidualSiteError(_no_site_message(model, example_inputs))
        chosen = _select(model, found, cfg.sites)
        if not chosen:
            raise NoResidualSiteError(f"sites={cfg.sites!r} selects none of the {len(found)} residual sites of "
                                      f"{type(model).__name__} (kinds present: {sorted({s.kind for s in found})})")
        modes = _mode_modules(model, chosen, cfg, old_modes if st is not None and _same_mode(st.config, cfg) else None)
    except Exception:
        if st is not None:
            _attach(model, old_sites, st.config, old_modes)
        raise
    _attach(model, chosen, cfg, modes)
    model.__dict__[_STATE] = _PenalState(cfg, chosen)
    _record_config(model, cfg)
    if cfg.mode != "identity":
        if isinstance(prior, dict) and _same_mode(prior, cfg):
            model.__dict__[_STATE].warned = True  # the checkpoint was saved with this mode: its function is unchanged
        elif str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""):
            warn_if_pretrained(model, cfg, pretrained=True)  # loaded from a checkpoint
    return model


def _mode_modules(model, chosen, cfg, previous=None):
    if cfg.mode == "identity":
        return None
    from .modes import build_mode_modules  # noqa: PLC0415 - modes are optional machinery
    modes = build_mode_modules(model, chosen, cfg)
    if previous:  # same mode settings as before (e.g. only tau changed): keep the trained LN parameters / M
        modes.update({k: v for k, v in previous.items() if k in modes})
    return modes


def _same_mode(a: PenalConfig | dict, b: PenalConfig) -> bool:
    from .modes import mode_settings
    try:
        return mode_settings(resolve_config(a) if isinstance(a, dict) else a) == mode_settings(b)
    except (TypeError, ValueError):  # an unreadable config.penal: not the same
        return False


def _current_modes(model: nn.Module, chosen) -> dict | None:
    if not chosen:
        return None
    modules = dict(model.named_modules())
    found = {s.name: modules[s.name]._modules[MODE] for s in chosen
             if s.name in modules and MODE in modules[s.name]._modules}
    return found or None


def _attach(model: nn.Module, chosen: list[ResidualSite], cfg: PenalConfig, modes) -> None:
    modules = dict(model.named_modules())
    dtype = cfg.torch_storage_dtype
    for site in chosen:
        mod = modules[site.name]
        host, suffix = _host(modules, site.name)
        try:
            ref = next(mod.parameters())
            device = ref.device
        except StopIteration:
            device = None
        if cfg.tau > 0 or cfg.mode == "identity":
            conn = PenalConnection(cfg.tau, storage_dtype=dtype, copy=site.inplace)
            if device is not None and device.type != "meta":
                conn.to(device)
            host.add_module(CONNECTION + suffix, conn)
        if modes is not None and site.name in modes:
            host.add_module(MODE + suffix, modes[site.name])
        mod.register_forward_hook(_SiteHook(site.output_index, None if host is mod else host, suffix))
    if modes is not None:
        from .modes import attach_skip_capture  # noqa: PLC0415
        attach_skip_capture(model, chosen, modes)


def _detach(model: nn.Module, chosen: list[ResidualSite]) -> None:
    modules = dict(model.named_modules())
    for site in chosen:
        mod = modules.get(site.name)
        if mod is None:
            continue
        for key in [k for k, h in mod._forward_hooks.items() if isinstance(h, _SiteHook)]:
            del mod._forward_hooks[key]
            mod._forward_hooks_with_kwargs.pop(key, None)
            mod._forward_hooks_always_called.pop(key, None)
        host, suffix = _host(modules, site.name)
        for child in (CONNECTION + suffix, MODE + suffix):
            if child in host._modules:
                del host._modules[child]
    from .modes import detach_skip_capture  # noqa: PLC0415
    detach_skip_capture(model)


def _record_config(model: nn.Module, cfg: Optional[PenalConfig]) -> None:
    conf = getattr(model, "config", None)
    pcfg = getattr(model, "pretrained_cfg", None)  # timm
    if isinstance(pcfg, dict):
        if cfg is None:
            pcfg.pop("penal", None)
        else:
            pcfg["penal"] = cfg.to_dict()
    if conf is None or not hasattr(conf, "to_dict"):
        return
    if cfg is None:
        if "penal" in conf.__dict__:
            delattr(conf, "penal")
    else:
        conf.penal = cfg.to_dict()


def remove(model: nn.Module) -> nn.Module:
    """Undo `apply` exactly: the module tree, hooks, buffers and `config.penal` are as before."""
    st = _state(model)
    if st is None:
        return model
    _detach(model, st.sites)
    del model.__dict__[_STATE]
    _record_config(model, None)
    return model


# ------------------------------------------------------------------------------------------------------------ tau
def connections(model: nn.Module) -> list[tuple[ResidualSite, PenalConnection]]:
    """(site, connection) pairs of a penalized model, in site order."""
    st = _state(model)
    if st is None:
        return []
    modules = dict(model.named_modules())
    out = []
    for s in st.sites:
        host, suffix = _host(modules, s.name)
        conn = host._modules.get(CONNECTION + suffix)
        if conn is not None:
            out.append((s, conn))
    return out


def _check_tau(tau) -> float:
    PenalConfig(tau=tau)  # one place validates
    return float(tau)


def write_tau(model: nn.Module, tau: float, depth_factor=None) -> None:
    """Set the live τ of every site (times `depth_factor(site)` if given) without touching the recorded config."""
    with torch.no_grad():
        for site, conn in connections(model):
            conn.tau.fill_(tau * (depth_factor(site) if depth_factor else 1.0))


def set_tau(model: nn.Module, tau: float) -> None:
    """Set τ on every penal connection of `model` (and in its recorded config)."""
    tau = _check_tau(tau)
    st = _state(model)
    if st is None:
        raise ValueError("set_tau: the model has no penal connections; call hf_penal.apply(model, tau=...) first")
    write_tau(model, tau)
    st.config = st.config.replace(tau=tau)
    _record_config(model, st.config)


def set_loss_scale(model: nn.Module, scale: Union[float, torch.Tensor], world_size: int = 1) -> None:
    """Tell the penal connections the current loss scale (GradScaler) and data-parallel world size.

    The incoming gradient is scaled by `scale` (and DDP averages over `world_size` ranks), so the added τ·z is
    multiplied by ``scale * world_size`` to keep the penalty equal to the fp32, single-process one. PenalTrainer /
    PenalCallback do this for you; call it yourself in a hand-written loop with a GradScaler
    (``hf_penal.set_loss_scale(model, scaler.get_scale())`` before each forward).
    """
    with torch.no_grad():
        for _, conn in connections(model):
            if torch.is_tensor(scale):
                conn.gain.copy_(scale.detach().reshape(()) * world_size)
            else:
                conn.gain.fill_(float(scale) * world_size)


def warn_if_pretrained(model: nn.Module, cfg: PenalConfig, pretrained: bool) -> None:
    """Residual modes other than "identity" change the function a checkpoint computes: say so once."""
    st = _state(model)
    if st is not None and st.warned:
        return
    if cfg.mode != "identity" and pretrained:
        if st is not None:
            st.warned = True
        warnings.warn(f"hf_penal: mode={cfg.mode!r} changes the forward function of a pretrained model; its outputs "
                      f"will differ from the checkpoint's until it is fine-tuned", UserWarning, stacklevel=3)
