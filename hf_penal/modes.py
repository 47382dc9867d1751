"""Residual modes (scaled / layernorm / recursive_layernorm / entangled skips). Work in progress: see issue "modes"."""
from __future__ import annotations


def build_mode_modules(model, sites, cfg):
    raise NotImplementedError(f"PenalConfig field 'mode': {cfg.mode!r} is not implemented yet; use mode='identity'")


def attach_skip_capture(model, sites, modes):
    raise NotImplementedError


def detach_skip_capture(model):
    return None
