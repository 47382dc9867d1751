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

import copy
import math
import os
import sys
import warnings
from typing import Any

import torch
from torch import nn

from . import hooks, persistence, recompute
from .config import SITE_KEYWORDS, PenalConfig, check_tau, effective_config, resolve_config
from .depth import depth_factor
from .discovery import NoResidualSiteError, ResidualSite, discover, user_sites
from .hooks import CONNECTION, MODE, Rendezvous, hook_site, hook_skip, unhook_site, unhook_skips
from .modes import create_mode, mode_settings
from .ops import PenalConnection

_STATE = "_hf_penal"

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _host(modules: dict, site_name: str) -> tuple[nn.Module, str]:
    """(module that holds a site's connection/mode children, suffix of their names). The branch-end module itself,
    unless it is a container whose forward (or whose owner's iteration) would run any child we add: then its
    nearest ancestor that is not a container, with the path below it as suffix (``penal_connection_ffn``;
    HRNet's ``fuse_layers.0.1`` Sequential inside ModuleLists: ``penal_connection_fuse_layers_0_1``)."""
    mod = modules[site_name]
    if not isinstance(mod, _CONTAINERS) or not site_name:
        return mod, ""
    parts = site_name.split(".")
    cut = len(parts) - 1
    while cut > 0 and isinstance(modules[".".join(parts[:cut])], _CONTAINERS):
        cut -= 1
    return modules[".".join(parts[:cut])], "_" + "_".join(parts[cut:])


class _PenalState:
    """What `apply` did to a model: its config and its active sites."""

    def __init__(self, config: PenalConfig, sites: list, pairs: list):
        self.config = config
        self.sites = sites
        self.pairs = pairs  # (site, PenalConnection) of the sites that have a connection
        self.warned = False  # the "mode changes a pretrained model" warning was given
        self.probe_only = False  # τ = 0 measuring probes: nothing recorded in the model's config
        self.depth: dict[str, list[float]] = {}  # depth profile -> its factor at each connection (computed once)


def _state(model: nn.Module) -> _PenalState | None:
    return model.__dict__.get(_STATE)


# ------------------------------------------------------------------------------------------------ the public boundary
# The one unwrap rule: every public function takes the model as the user holds it (plain, DDP, FSDP, PEFT,
# torch.compile'd) and acts on the penalized model inside, found here.

def _inner_model(model: nn.Module) -> nn.Module | None:
    """The model a known wrapper holds (DDP / DataParallel / FSDP1 `.module`, torch.compile's `_orig_mod`, a PEFT
    model's `base_model` and its tuner's `model`); None when `model` is not such a wrapper."""
    kind = type(model)
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or \
            kind.__name__ == "FullyShardedDataParallel":
        return model._modules.get("module")
    if kind.__name__ == "OptimizedModule":  # torch.compile(model)
        return model._modules.get("_orig_mod")
    if kind.__module__.split(".")[0] == "peft":
        inner = model._modules.get("base_model")
        return inner if inner is not None else model._modules.get("model")
    return None


def penalized_root(model: nn.Module) -> nn.Module:
    """The model hf_penal acts on: `model` itself or the module inside it that carries penal connections (inside a
    DDP / FSDP / PEFT / compiled wrapper, or any container); for a model without them, the model inside the known
    wrappers (what `apply` would penalize)."""
    if _state(model) is not None:
        return model
    for m in model.modules():
        if m is not model and _state(m) is not None:
            return m
    inner = _inner_model(model)
    return model if inner is None else penalized_root(inner)


def require_penalized(model: nn.Module, caller: str, hint: str = "") -> nn.Module:
    """`penalized_root(model)`; raises ValueError naming `caller` when neither `model` nor any module inside it has
    penal connections (a public function that needs them never silently does nothing)."""
    root = penalized_root(model)
    if _state(root) is None:
        raise ValueError(f"{caller}: {type(model).__name__} has no penal connections (nor has any module inside it); "
                         f"give it some first: hf_penal.apply(model) or from_pretrained(..., penal=True).{hint}")
    return root


def penal_config(model: nn.Module) -> PenalConfig | None:
    """The PenalConfig applied to `model` (with ``tau="auto"``: the calibrated τ_l of every calibrated site in
    ``tau_calibrated``), or None when it has no penal connections. `model` may be wrapped (DDP, PEFT, compiled)."""
    st = _state(penalized_root(model))
    if st is None:
        return None
    if not st.config.auto:
        return st.config
    cal = calibrated_taus(connections(model))
    return st.config if cal == (st.config.tau_calibrated or {}) else st.config.replace(tau_calibrated=cal or None)


def record_settings(model: nn.Module) -> None:
    """Write the current settings (calibrated τ_l included) where checkpoints keep them: ``config.penal``
    (transformers) or ``pretrained_cfg["penal"]`` (timm). `save_pretrained` calls this."""
    model = penalized_root(model)
    cfg = penal_config(model)
    if cfg is not None and not _state(model).probe_only:
        persistence.record(model, cfg)


# ------------------------------------------------------------------------------------------------------------ sites
def sites(model: nn.Module, example_inputs: Any = None) -> list[ResidualSite]:
    """Residual sites of `model`: the active ones of a penalized model, otherwise all discoverable ones (of the model
    inside a DDP / FSDP / PEFT / compiled wrapper)."""
    model = penalized_root(model)
    st = _state(model)
    if st is not None:
        return list(st.sites)
    return discover(model, example_inputs)


def select_sites(found: list[ResidualSite], spec, model: nn.Module | None = None) -> list[ResidualSite]:
    """The sites of `found` that a `sites=` setting selects; names in a list that discovery did not find become
    user sites of `model` (ignored without a model)."""
    if isinstance(spec, list):
        by_name = {s.name: s for s in found}
        extra = [n for n in spec if n not in by_name]
        chosen = [by_name[n] for n in spec if n in by_name]
        if extra and model is not None:
            chosen += user_sites(model, extra)
        return chosen
    if spec in SITE_KEYWORDS:
        kinds = SITE_KEYWORDS[spec]
        return [s for s in found if s.kind in kinds]
    import re
    rx = re.compile(spec)
    chosen = [s for s in found if rx.search(s.name)]
    if not chosen:  # a string that is not a keyword is a regex: say so, and show names it could have matched
        names = [s.name for s in found]
        shown = names[:6] + ([f"... {len(names) - 6} more"] if len(names) > 6 else [])
        raise ValueError(f"PenalConfig field 'sites': {spec!r} is not a keyword ({', '.join(SITE_KEYWORDS)}), so it "
                         f"is a regex searched in site names, and it matches none of the model's {len(names)} "
                         f"residual sites: {shown}")
    return chosen


def _no_site_message(model: nn.Module, example_inputs: Any = None) -> str:
    from .discovery import branch_candidates  # noqa: PLC0415
    cands = branch_candidates(model, example_inputs)[:4]
    hint = (f" Submodules whose outputs enter an addition (candidates to check): sites={cands!r}." if cands else
            " The probe saw no submodule output enter an addition.")
    return (f"no residual site found in {type(model).__name__}: its blocks are not in hf_penal's architecture table "
            f"and the generic probe found no residual add (a tensor added to the output of a submodule that started "
            f"after it existed, inside a numbered layer). Pass the names of the submodules whose outputs are the "
            f"residual branches as sites=[...].{hint}")


# ------------------------------------------------------------------------------------------------------------ apply
def apply(model: nn.Module, config: PenalConfig | dict | bool | None = None, *, example_inputs: Any = None,
          pretrained: bool | None = None, **fields) -> nn.Module:
    """Give `model` penal connections (and/or a residual mode) in place, and return it.

    config: a PenalConfig, a dict of its fields, True or None (defaults); keyword `fields` (tau=..., sites=...,
    mode=...) override it. On a model that already has them, the settings are replaced (never stacked); with no
    config, keywords update the current settings. Raises ValueError (naming the field) on bad input and
    `NoResidualSiteError` when no residual site is found; in both cases the model is left untouched.
    pretrained: whether `model` was loaded with weights (whether a residual mode
    warns that it changes a checkpoint's function); None: as the integrations recorded when they built the model
    (`persistence.loaded_with_weights`).
    """
    hooks.guard_hooks_under_compile()
    st = _state(model)
    if pretrained is None:
        pretrained = persistence.loaded_with_weights(model)
    if isinstance(config, PenalConfig) and not fields and not (config.auto and config.tau_ratio is None):
        cfg = copy.deepcopy(config)  # already resolved (by an integration or set_tau); ours, not the caller's
    else:  # with no config, keywords update the current settings (calibration so far included)
        saved = penal_config(model) if config is None and st is not None else None
        cfg = effective_config(config, fields, saved=saved)
    prior = persistence.saved_settings(model)  # as loaded with the checkpoint
    old_sites = st.sites if st is not None else None
    old_modes = _current_modes(model, old_sites)
    if st is not None:  # discover on the plain structure
        _detach(model, old_sites)
    try:
        found = discover(model, example_inputs, strict=not isinstance(cfg.sites, list))
        if not found and not isinstance(cfg.sites, list):
            raise NoResidualSiteError(_no_site_message(model, example_inputs))
        chosen = select_sites(found, cfg.sites, model)
        if not chosen:
            raise NoResidualSiteError(f"sites={cfg.sites!r} selects none of the {len(found)} residual sites of "
                                      f"{type(model).__name__} (kinds present: {sorted({s.kind for s in found})})")
        modes = _mode_modules(model, chosen, cfg, old_modes if st is not None and _same_mode(st.config, cfg) else None)
    except Exception:
        if st is not None:
            _attach(model, old_sites, st.config, old_modes)
        raise
    _attach(model, chosen, cfg, modes)
    new = _PenalState(cfg, chosen, _pairs(model, chosen))
    new.warned = st is not None and st.warned and _same_mode(st.config, cfg)  # said once per mode
    model.__dict__[_STATE] = new
    persistence.record(model, cfg)
    if cfg.mode != "identity":
        if isinstance(prior, dict) and _same_mode(prior, cfg):
            new.warned = True  # the checkpoint was saved with this mode: its function is unchanged
        elif pretrained:
            _warn_mode_changes_checkpoint(model, cfg)
    return model


def _mode_modules(model: nn.Module, chosen: list[ResidualSite], cfg: PenalConfig, previous=None) -> dict | None:
    """One residual-mode module per site ({site name: module}), placed where the table says each site's skip input
    x lives; None for mode="identity". Raises ValueError (field 'mode') before the model is touched when a site's
    skip input is unknown (sites from the generic probe, given by name, or with no x in their block's record)."""
    if cfg.mode == "identity":
        return None
    unknown = [s.name for s in chosen if not s.skip]
    if unknown:
        raise ValueError(
            f"PenalConfig field 'mode': mode={cfg.mode!r} rewrites the residual add, so hf_penal must know where each "
            f"site's skip input x comes from; it knows that only for the branches of hf_penal.architectures.BLOCKS "
            f"that record their x, and {len(unknown)} site(s) (e.g. {unknown[:3]}) were found by the generic probe, "
            f"given by name or have no x recorded. Use mode='identity' (penal only) for this model, or record its "
            f"block class in the table with each branch's x.")
    modules = dict(model.named_modules())
    for s in chosen:
        if s.width is None and cfg.mode != "scaled":
            raise ValueError(f"PenalConfig field 'mode': cannot tell the feature width at site {s.name!r} "
                             f"(skip input x: {s.skip.how} of {s.skip.path or 'the block'!r})")
    out = {}
    for s in chosen:
        if previous and s.name in previous:  # same mode settings as before: keep the trained LN parameters / M
            out[s.name] = previous[s.name]
            continue
        mode = create_mode(cfg, s.width or 0, channel_dim=1 if s.kind == "conv" else -1, site=s.name)
        ref = next((t for t in modules[s.block].parameters() if t.is_floating_point()), None)
        if ref is not None and ref.device.type != "meta":
            mode.to(device=ref.device, dtype=ref.dtype)
        out[s.name] = mode
    return out


def _same_mode(a: PenalConfig | dict, b: PenalConfig) -> bool:
    try:
        return mode_settings(resolve_config(a) if isinstance(a, dict) else a) == mode_settings(b)
    except (TypeError, ValueError):  # an unreadable config.penal: not the same
        return False


def _current_modes(model: nn.Module, chosen) -> dict | None:
    if not chosen:
        return None
    modules = dict(model.named_modules())
    found = {}
    for s in chosen:
        if s.name in modules:
            host, suffix = _host(modules, s.name)
            if MODE + suffix in host._modules:
                found[s.name] = host._modules[MODE + suffix]
    return found or None


def _attach(model: nn.Module, chosen: list[ResidualSite], cfg: PenalConfig, modes) -> None:
    modules = dict(model.named_modules())
    dtype = cfg.torch_storage_dtype
    joins = []
    for site in chosen:
        mod = modules[site.name]
        host, suffix = _host(modules, site.name)
        try:
            ref = next(mod.parameters())
            device = ref.device
        except StopIteration:
            device = None
        if cfg.auto or cfg.tau > 0 or cfg.mode == "identity":
            conn = PenalConnection(cfg.tau, storage_dtype=dtype, copy=site.inplace, tau_ratio=cfg.tau_ratio or 0.0)
            if cfg.auto and cfg.tau_calibrated and site.name in cfg.tau_calibrated:
                conn.set_calibrated(cfg.tau_calibrated[site.name])  # restored: no recalibration
            if device is not None and device.type != "meta":
                conn.to(device)
            host.add_module(CONNECTION + suffix, conn)
            if cfg.storage_dtype == "recompute":
                recompute.attach(modules, site, conn, cfg.mode)
        join = None
        if modes is not None and site.name in modes:
            host.add_module(MODE + suffix, modes[site.name])
            join = Rendezvous(modes[site.name], site.name, x_first=site.skip.how != "output")
            joins.append((site, join))
        hook_site(mod, site.output_index, None if host is mod else host, suffix,
                  end=modules[site.end] if site.end else None, join=join)
    for site, join in joins:  # x's capture: where the block's record says x is taken
        hook_skip(modules[".".join(p for p in (site.block, site.skip.path) if p)], site.skip.how, join)


def _detach(model: nn.Module, chosen: list[ResidualSite]) -> None:
    modules = dict(model.named_modules())
    for site in chosen:
        mod = modules.get(site.name)
        if mod is None:
            continue
        unhook_site(mod, modules.get(site.end) if site.end else None)
        host, suffix = _host(modules, site.name)
        for child in (CONNECTION + suffix, MODE + suffix):
            if child in host._modules:
                del host._modules[child]
    unhook_skips(model)
    recompute.detach(model)


def attach_probes(model: nn.Module, sites="all") -> nn.Module:
    """τ = 0 connections that only measure (ε, ‖z‖; gradients unchanged) on a model without penal connections;
    nothing is recorded in its config, so its checkpoints stay plain."""
    apply(model, tau=0.0, sites=sites)
    _state(model).probe_only = True
    persistence.forget(model)
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo `apply` exactly: the module tree, hooks, buffers and `config.penal` are as before. `model` may be wrapped
    (DDP, PEFT, compiled): the penalized model inside is restored, and `model` returned. A model without penal
    connections is returned as it is (removing twice = once)."""
    root = penalized_root(model)
    st = _state(root)
    if st is None:
        return model
    _detach(root, st.sites)
    del root.__dict__[_STATE]
    persistence.forget(root)
    return model


# ------------------------------------------------------------------------------------------------------------ tau
def connections(model: nn.Module) -> list[tuple[ResidualSite, PenalConnection]]:
    """(site, connection) pairs of a penalized model (possibly wrapped), in site order (built once by `apply`); empty
    for a model without penal connections."""
    st = _state(penalized_root(model))
    return list(st.pairs) if st is not None else []


def _pairs(model: nn.Module, chosen: list[ResidualSite]) -> list[tuple[ResidualSite, PenalConnection]]:
    modules = dict(model.named_modules())
    out = []
    for s in chosen:
        host, suffix = _host(modules, s.name)
        conn = host._modules.get(CONNECTION + suffix)
        if conn is not None:
            out.append((s, conn))
    return out


def set_tau_factor(model: nn.Module, factor: float, depth_profile: str = "uniform") -> None:
    """Multiply every site's τ by `factor` times the depth profile's value at the site's layer (``"uniform"``: 1,
    ``"increasing"``: 0 at the first layer to 1 at the last, ``"decreasing"``: the reverse): a τ schedule in a
    hand-written loop (PenalTrainer does it each step). The configured / calibrated τ_l and the recorded config are
    untouched; ``set_tau_factor(model, 1.0)`` restores them."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
        raise ValueError(f"set_tau_factor: factor must be a finite number >= 0; got {factor!r}")
    root = require_penalized(model, "set_tau_factor")
    for (_, conn), d in zip(connections(root), depth_factors(root, depth_profile)):
        conn.set_factor(factor * d)


def depth_factors(model: nn.Module, depth_profile: str = "uniform") -> list[float]:
    """The depth profile's factor at each penal connection, in `connections` order (computed once per profile;
    empty for a model without connections). ValueError for an unknown profile."""
    st = _state(penalized_root(model))
    if st is None:
        depth_factor(0, 1, depth_profile)  # validates the name
        return []
    if depth_profile not in st.depth:
        st.depth[depth_profile] = [depth_factor(s.depth, s.n_layers, depth_profile) for s, _ in st.pairs]
    return list(st.depth[depth_profile])


def set_tau(model: nn.Module, tau: float | str) -> None:
    """Set τ on every penal connection of `model` (and in its recorded config): an absolute τ, or ``"auto"`` (the
    sites calibrate again on the next training backward)."""
    tau = check_tau(tau, "set_tau: tau")
    model = require_penalized(model, "set_tau")
    st = _state(model)
    if tau == "auto" or st.config.auto or not st.pairs:  # the connections change kind (or do not exist yet: a
        # residual mode applied with tau=0 has none): rebuild them
        apply(model, st.config.replace(tau=tau, tau_calibrated=None))
        return
    for _, conn in connections(model):
        conn.set_tau(tau)
    st.config = st.config.replace(tau=tau)
    persistence.record(model, st.config)


def set_loss_scale(model: nn.Module, scale: float | torch.Tensor, world_size: int = 1) -> None:
    """Tell the penal connections the current loss scale (GradScaler) and data-parallel world size.

    The incoming gradient is scaled by `scale` (and DDP averages over `world_size` ranks), so the added τ·z is
    multiplied by ``scale * world_size`` to keep the penalty equal to the fp32, single-process one. PenalTrainer /
    PenalCallback do this for you; call it yourself in a hand-written loop with a GradScaler
    (``hf_penal.set_loss_scale(model, scaler.get_scale())`` before each forward). `model` may be the DDP-wrapped one.
    """
    gain = scale.detach().reshape(()) * world_size if torch.is_tensor(scale) else float(scale) * world_size
    for _, conn in connections(require_penalized(model, "set_loss_scale")):
        conn.set_gain(gain)


# ------------------------------------------------------------------------------------ calibration and ε (the door)
def auto_connections(model: nn.Module, caller: str) -> list[tuple[ResidualSite, PenalConnection]]:
    """The (site, connection) pairs whose τ is calibrated (``tau="auto"``); ValueError naming `caller` when the model
    has no penal connections or a fixed τ."""
    root = require_penalized(model, caller)
    auto = [(s, c) for s, c in connections(root) if c.auto]
    if not auto:
        raise ValueError(f"{caller}: the model's tau is fixed ({_state(root).config.tau}); apply tau='auto' to "
                         f"calibrate")
    return auto


def start_calibration(model: nn.Module, caller: str = "calibrate") -> None:
    """Every ``tau="auto"`` site measures τ_l again on the next training backward (which adds no penalty there)."""
    for _, conn in auto_connections(model, caller):
        conn.recalibrate()


def measured_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{site name: (‖g‖², ‖z‖²)}`` measured by the calibrated ``tau="auto"`` sites (copies)."""
    return {s.name: c.measured_norms for s, c in connections(model) if c.auto and c.calibrated}


def finish_calibration(model: nn.Module, norms: dict[str, torch.Tensor]) -> None:
    """Set τ_l of the sites named in `norms` from their ``(‖g‖², ‖z‖²)`` (e.g. summed over ranks)."""
    for site, conn in connections(model):
        if conn.auto and site.name in norms:
            g2, z2 = norms[site.name]
            conn.finish_calibration(g2, z2)


def restore_calibration(model: nn.Module, taus: dict[str, float]) -> int:
    """Set the calibrated τ_l of the ``tau="auto"`` sites named in `taus` (``{site name: τ_l}``); returns how many."""
    n = 0
    for site, conn in connections(model):
        if conn.auto and site.name in taus:
            conn.set_calibrated(float(taus[site.name]))
            n += 1
    return n


def calibrated_taus(pairs: list[tuple[ResidualSite, PenalConnection]]) -> dict[str, float]:
    """``{site name: τ_l}`` of the calibrated ``tau="auto"`` connections among `pairs`."""
    return {site.name: conn.tau.item() for site, conn in pairs if conn.auto and conn.calibrated}


def track_efficiency(model: nn.Module, enabled: bool = True) -> int:
    """Switch the ε / ‖z‖ measurement of every connection on or off (statistics reset); returns how many."""
    pairs = connections(require_penalized(
        model, "track_efficiency", hint=" hf_penal.apply(model, tau=0.0) measures without penalizing."))
    if not pairs:
        raise ValueError("track_efficiency: the model's residual mode has no penal connections (tau=0); apply "
                         "tau=0.0 with mode='identity', or a tau > 0, to measure")
    for _, conn in pairs:
        conn.track_efficiency(enabled)
    return len(pairs)


def efficiency_stats(model: nn.Module, caller: str, reset: bool = True) -> list[tuple[ResidualSite, tuple]]:
    """(site, (mean ε, mean ‖z‖)) of the sites that measured since the last reset; `reset` restarts them."""
    out = []
    for site, conn in connections(require_penalized(model, caller)):
        stats = conn.read_stats(reset=reset)
        if stats is not None:
            out.append((site, stats))
    return out


def _warn_mode_changes_checkpoint(model: nn.Module, cfg: PenalConfig) -> None:
    """Residual modes other than "identity" change the function a checkpoint computes: say so once."""
    st = _state(model)
    if st.warned:
        return
    st.warned = True
    warnings.warn(f"hf_penal: mode={cfg.mode!r} changes the forward function of a pretrained model; its outputs "
                  f"will differ from the checkpoint's until it is fine-tuned", UserWarning,
                  stacklevel=_caller_outside_package())


def _caller_outside_package() -> int:
    """warnings.warn's stacklevel (from the function calling it) of the first frame outside hf_penal, so a warning
    points at the user's line whether it came through apply, from_pretrained or timm.create_model."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level
