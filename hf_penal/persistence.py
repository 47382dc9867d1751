"""Where a model keeps its penal settings between sessions, and whether it was loaded with weights.

Settings live beside the model's own configuration, so that saving the model saves them: a transformers model's
``config.penal`` (written to config.json by `save_pretrained`), a timm model's ``pretrained_cfg["penal"]``. The
penal connection adds no weights, so these entries are all that distinguishes a penalized checkpoint.

"Loaded with weights?" decides whether a residual mode's change of the forward function deserves a warning (the
default strength ρ is the same for both). Where it is known it is an argument (``apply(..., pretrained=)``: the
integrations pass it). It is also recorded on the model when an integration builds it (`mark_pretrained`), for one
case only: a model loaded without penal settings and given a mode later by ``hf_penal.apply(model, mode=...)``.
Neither library keeps the fact itself (transformers' `from_config` of a config read from a checkpoint folder sets
``_name_or_path`` like `from_pretrained`; timm sets ``pretrained_cfg`` with or without weights), so without the
record that call would warn for random weights and stay silent for loaded ones. For a model built by hand, a
transformers config's ``_name_or_path`` stands in.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .config import PenalConfig

KEY = "penal"
_PRETRAINED = "_hf_penal_pretrained"


def _timm_cfg(model: Any) -> dict | None:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg if isinstance(cfg, dict) else None


def _hf_config(obj: Any) -> Any:
    """The transformers config of a model, or `obj` itself when it is one; None otherwise."""
    conf = obj if hasattr(obj, "to_dict") and not isinstance(obj, nn.Module) else getattr(obj, "config", None)
    return conf if conf is not None and hasattr(conf, "to_dict") else None


def saved_settings(obj: Any) -> Any:
    """The settings saved with a model (or on a transformers config): the raw entry, normally a dict of PenalConfig
    fields, or None when there is none. Not validated: callers say where it came from when it is bad."""
    pcfg = _timm_cfg(obj)
    if pcfg is not None and KEY in pcfg:
        return pcfg[KEY]
    conf = _hf_config(obj)
    return getattr(conf, KEY, None) if conf is not None else None


def record(model: nn.Module, cfg: PenalConfig) -> None:
    """Write `cfg` where the model's checkpoints keep it."""
    pcfg = _timm_cfg(model)
    if pcfg is not None:
        pcfg[KEY] = cfg.to_dict()
    conf = _hf_config(model)
    if conf is not None:
        setattr(conf, KEY, cfg.to_dict())


def forget(model: nn.Module) -> None:
    """Remove saved settings, so the model saves as a plain one."""
    pcfg = _timm_cfg(model)
    if pcfg is not None:
        pcfg.pop(KEY, None)
    conf = _hf_config(model)
    if conf is not None and KEY in conf.__dict__:
        delattr(conf, KEY)


def mark_pretrained(model: nn.Module, pretrained: bool) -> None:
    """Record whether `model` was loaded with weights (the integrations call this when they build it)."""
    model.__dict__[_PRETRAINED] = bool(pretrained)


def loaded_with_weights(model: nn.Module) -> bool:
    """Was `model` loaded from a checkpoint (fine-tuning) rather than built from a config (training from scratch)?
    The integrations' record when there is one (on the model or a module inside a wrapper), else a transformers
    config's ``_name_or_path``."""
    for m in model.modules():
        if _PRETRAINED in m.__dict__:
            return m.__dict__[_PRETRAINED]
    conf = _hf_config(model)
    return bool(str(getattr(conf, "_name_or_path", "") or "")) if conf is not None else False
