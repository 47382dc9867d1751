"""Markov-chain diagnostics: the efficiency ε and the step size ‖z‖ of each residual branch.

Our formulation of the paper's indicator (design §1): per site and per sample, with z the branch output and g the
gradient of the loss at the node output x_l = x_{l-1} + z (the gradient that reaches z from downstream),

    ε = cos(z, −g) = −⟨z, g⟩ / (‖z‖·‖g‖)

averaged over samples; ε = 1 means the step points exactly along steepest descent. Per layer we average the sites of
that layer; the chain's efficiency is the mean over layers. The measurement rides on the penal connection's backward
(`PenalConnection.measure_efficiency`), so it costs nothing when switched off. A model without penal connections can
be measured after ``hf_penal.apply(model, tau=0.0)`` (τ = 0 leaves the gradients unchanged).

    hf_penal.track_efficiency(model)                  # switch the probes on
    loss.backward()                                   # any number of backward passes
    hf_penal.markov_efficiency(model)                 # {'bert.encoder.layer.0': {'efficiency': ..., 'z_norm': ...}}
"""
from __future__ import annotations

from torch import nn

from . import surgery

PREFIX = "penal/"


def track_efficiency(model: nn.Module, enabled: bool = True) -> int:
    """Switch the ε / ‖z‖ probes of every penal connection on (or off, ``enabled=False``); returns how many sites.

    The statistics are reset either way. Raises ValueError when the model has no penal connection.
    """
    return surgery.track_efficiency(model, enabled)


def markov_efficiency(model: nn.Module, reset: bool = True, per: str = "layer") -> dict[str, dict[str, float]]:
    """ε and mean per-sample ‖z‖ since the last reset, per layer (``per="layer"``) or per site (``per="site"``).

    Returns ``{name: {"efficiency": ε, "z_norm": mean ‖z‖, "depth": layer index}}`` in model order, for the layers
    (sites) that saw at least one backward pass with the probes on (see `track_efficiency`); ``{}`` otherwise.
    ``reset`` zeroes the accumulated statistics after reading them.
    """
    if per not in ("layer", "site"):
        raise ValueError(f"markov_efficiency: per must be 'layer' or 'site'; got {per!r}")
    groups: dict[str, list] = {}
    depth: dict[str, int] = {}
    for site, stats in surgery.efficiency_stats(model, "markov_efficiency", reset=reset):
        key = site.layer if per == "layer" else site.name
        groups.setdefault(key, []).append(stats)
        depth[key] = site.depth
    return {k: {"efficiency": sum(e for e, _ in v) / len(v), "z_norm": sum(n for _, n in v) / len(v),
                "depth": depth[k]}
            for k, v in groups.items()}


def efficiency_metrics(model: nn.Module, reset: bool = True, n_layers: int | None = None) -> dict[str, float]:
    """Flat log entries: ``penal/efficiency/layer_03``, ``penal/z_norm/layer_03`` per layer (zero-padded index in
    model order) and the chain mean ``penal/efficiency``. Empty when nothing was measured."""
    pairs = surgery.connections(model)
    per_layer = markov_efficiency(model, reset=reset) if pairs else {}
    if not per_layer:
        return {}
    if n_layers is None:
        n_layers = max(s.n_layers for s, _ in pairs)
    width = max(2, len(str(max(n_layers - 1, 0))))
    out: dict[str, float] = {}
    for v in sorted(per_layer.values(), key=lambda v: v["depth"]):
        out[f"{PREFIX}efficiency/layer_{v['depth']:0{width}d}"] = v["efficiency"]
    for v in sorted(per_layer.values(), key=lambda v: v["depth"]):
        out[f"{PREFIX}z_norm/layer_{v['depth']:0{width}d}"] = v["z_norm"]
    out[f"{PREFIX}efficiency"] = sum(v["efficiency"] for v in per_layer.values()) / len(per_layer)
    return out
