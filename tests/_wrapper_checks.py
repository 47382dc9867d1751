"""Shared by test_wrappers and its DDP worker: call every public function on a wrapped model and record what the
penalized model inside shows after each call (JSON-ready, so the 2-rank worker can write it for the test to read)."""
from __future__ import annotations

import math

import torch

import hf_penal

TAU = 1e-2
NEEDS_CONNECTIONS = ("set_tau", "set_tau_factor", "set_loss_scale", "calibrate", "track_efficiency",
                     "markov_efficiency")


def _connections(inner):
    return [m for m in inner.modules() if isinstance(m, hf_penal.PenalConnection)]


def _errors(wrapped, inputs) -> dict:
    """{function: the ValueError's message, or None when it raised none} for the functions that need connections."""
    calls = {"set_tau": lambda: hf_penal.set_tau(wrapped, TAU),
             "set_tau_factor": lambda: hf_penal.set_tau_factor(wrapped, 0.5),
             "set_loss_scale": lambda: hf_penal.set_loss_scale(wrapped, 8.0, world_size=2),
             "calibrate": lambda: hf_penal.calibrate(wrapped, inputs),
             "track_efficiency": lambda: hf_penal.track_efficiency(wrapped),
             "markov_efficiency": lambda: hf_penal.markov_efficiency(wrapped)}
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def exercise(wrapped, inner, inputs, world: int = 1) -> dict:
    """`wrapped` holds `inner`, a tiny 2-layer BERT penalized with tau=TAU at its 4 sites; `inputs` has labels.
    Ends with `inner` plain again (through `remove(wrapped)`)."""
    out = {}
    cfg = hf_penal.penal_config(wrapped)
    out["config"] = cfg.to_dict() if cfg is not None else None
    out["inner_config"] = hf_penal.penal_config(inner).to_dict()
    out["sites"] = [s.name for s in hf_penal.sites(wrapped)]
    out["inner_sites"] = [s.name for s in hf_penal.sites(inner)]

    hf_penal.set_tau(wrapped, 2 * TAU)
    out["tau"] = [c.tau.item() for c in _connections(inner)]
    out["config_tau"] = hf_penal.penal_config(inner).tau
    hf_penal.set_tau_factor(wrapped, 0.5, "decreasing")
    out["factor"] = [c.factor.item() for c in _connections(inner)]
    hf_penal.set_loss_scale(wrapped, 8.0, world_size=2)
    out["gain"] = [c.gain.item() for c in _connections(inner)]
    hf_penal.set_tau_factor(wrapped, 1.0)
    hf_penal.set_loss_scale(wrapped, 1.0, world_size=world)

    out["tracked"] = hf_penal.track_efficiency(wrapped)
    wrapped.train()
    wrapped(**inputs).loss.backward()
    eff = hf_penal.markov_efficiency(wrapped)
    out["efficiency_layers"] = sorted(eff)
    out["efficiency_finite"] = all(math.isfinite(v["efficiency"]) and math.isfinite(v["z_norm"]) for v in eff.values())
    hf_penal.track_efficiency(wrapped, False)

    hf_penal.set_tau(wrapped, "auto")
    out["auto"] = all(c.auto and not c.calibrated for c in _connections(inner))
    out["calibrated"] = hf_penal.calibrate(wrapped, inputs)
    out["inner_calibrated"] = hf_penal.penal_config(inner).tau_calibrated

    out["remove_returns_wrapper"] = hf_penal.remove(wrapped) is wrapped
    out["removed"] = hf_penal.penal_config(inner) is None and not _connections(inner)
    out["config_after_remove"] = hf_penal.penal_config(wrapped)
    out["candidate_sites"] = [s.name for s in hf_penal.sites(wrapped)]
    out["errors"] = _errors(wrapped, inputs)
    hf_penal.remove(wrapped)  # removing twice = once
    return out


def check(out: dict, n_sites: int = 4, n_layers: int = 2) -> None:
    """The expected record of `exercise` (AssertionError naming what differs)."""
    assert out["config"] == out["inner_config"] and out["config"]["tau"] == TAU, out["config"]
    assert out["sites"] == out["inner_sites"] and len(out["sites"]) == n_sites, out["sites"]
    f32 = torch.tensor(2 * TAU).item()  # τ lives in a float32 buffer
    assert out["tau"] == [f32] * n_sites and out["config_tau"] == 2 * TAU, (out["tau"], out["config_tau"])
    assert out["factor"] == [0.5, 0.5, 0.0, 0.0], out["factor"]  # decreasing: layer 0 × 1, layer 1 × 0
    assert out["gain"] == [16.0] * n_sites, out["gain"]
    assert out["tracked"] == n_sites and len(out["efficiency_layers"]) == n_layers and out["efficiency_finite"], out
    assert out["auto"], "set_tau(wrapped, 'auto') did not rebuild the inner connections as auto"
    assert sorted(out["calibrated"]) == sorted(out["inner_sites"]), out["calibrated"]
    assert out["calibrated"] == out["inner_calibrated"] and all(v > 0 for v in out["calibrated"].values())
    assert out["remove_returns_wrapper"] and out["removed"] and out["config_after_remove"] is None
    assert out["candidate_sites"] == out["inner_sites"], out["candidate_sites"]
    for name in NEEDS_CONNECTIONS:
        msg = out["errors"][name]
        assert msg is not None, f"{name} on a model without penal connections raised nothing"
        assert msg.startswith(f"{name}:") and "hf_penal.apply(model)" in msg, msg
