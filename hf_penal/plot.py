"""`plot_run`: a picture of a training run's penal diagnostics, from its ``trainer_state.json``.

Top: τ over optimizer steps (``penal/tau``). Middle: a layer × step heatmap of the Markov efficiency ε
(``penal/efficiency/layer_NN``), layer 0 (nearest the input) at the top. Bottom: mean ‖z‖ per layer over steps, when
logged. Used by ``hf-penal plot RUN_DIR``.
"""
from __future__ import annotations

import glob
import json
import os
import re

_LAYER = re.compile(r"^penal/(efficiency|z_norm)/layer_(\d+)$")


def find_trainer_state(run_dir: str) -> str:
    """Path of the most advanced ``trainer_state.json`` in `run_dir` or its ``checkpoint-*`` folders."""
    candidates = [os.path.join(run_dir, "trainer_state.json")]
    candidates += glob.glob(os.path.join(run_dir, "checkpoint-*", "trainer_state.json"))
    best, best_key = None, None
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        key = (state.get("global_step") or 0, len(state.get("log_history") or []))
        if best_key is None or key > best_key:
            best, best_key = path, key
    if best is None:
        raise FileNotFoundError(f"no trainer_state.json in {run_dir!r} or its checkpoint-* folders: train with "
                                f"hf_penal.PenalTrainer or a PenalCallback (they write one at the end)")
    return best


def _series(history: list[dict]) -> tuple[dict, dict, dict]:
    """tau {step: value}; efficiency / z_norm {layer index: {step: value}} (the last value logged at a step wins)."""
    tau: dict[int, float] = {}
    eff: dict[int, dict[int, float]] = {}
    znorm: dict[int, dict[int, float]] = {}
    for row in history:
        step = row.get("step")
        if step is None:
            continue
        for k, v in row.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k == "penal/tau":
                tau[step] = float(v)
                continue
            m = _LAYER.match(k)
            if m:
                (eff if m.group(1) == "efficiency" else znorm).setdefault(int(m.group(2)), {})[step] = float(v)
    return tau, eff, znorm


def plot_run(run_dir: str, output: str | None = None) -> str:
    """Draw τ over steps and a layer × step heatmap of ε for the run in `run_dir`; returns the PNG's path.

    run_dir: a Trainer ``output_dir`` (or one checkpoint folder) holding ``trainer_state.json``.
    output: the PNG path (default ``RUN_DIR/penal_diagnostics.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    state_path = find_trainer_state(run_dir)
    with open(state_path) as f:
        history = json.load(f).get("log_history") or []
    tau, eff, znorm = _series(history)
    output = output or os.path.join(run_dir, "penal_diagnostics.png")

    panels = 2 + bool(znorm)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.6 + 2.4 * (panels - 1) + 0.15 * len(eff)),
                             gridspec_kw={"height_ratios": [1] + [1.6] * (panels - 1)})
    ax = axes[0]
    if tau:
        steps = sorted(tau)
        ax.plot(steps, [tau[s] for s in steps], marker="." if len(steps) < 60 else None)
    else:
        ax.text(0.5, 0.5, "no penal/tau logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("τ")
    ax.set_title(f"penal connection: τ and Markov efficiency ε — {os.path.basename(os.path.abspath(run_dir))}")
    ax.grid(alpha=0.3)

    ax = axes[1]
    if eff:
        layers = sorted(eff)
        steps = sorted({s for v in eff.values() for s in v})
        grid = np.full((len(layers), len(steps)), np.nan)
        col = {s: j for j, s in enumerate(steps)}
        for i, layer in enumerate(layers):
            for s, v in eff[layer].items():
                grid[i, col[s]] = v
        lim = max(1e-3, float(np.nanmax(np.abs(grid))))
        # one column per logged step; extent puts column centres on the step numbers
        half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
        img = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                        extent=(steps[0] - half, steps[-1] + half, len(layers) - 0.5, -0.5))
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([str(layer) for layer in layers])
        # colorbar outside the axes, so all panels keep the same width and their step axes line up
        fig.colorbar(img, cax=ax.inset_axes((1.015, 0.0, 0.02, 1.0)), label="ε = cos(z, −∂L/∂x)")
    else:
        ax.text(0.5, 0.5, "no efficiency logged (train with penal_log_efficiency=True)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer (0 = input side)")

    if znorm:
        ax = axes[2]
        cmap = plt.get_cmap("viridis")
        layers = sorted(znorm)
        for i, layer in enumerate(layers):
            steps = sorted(znorm[layer])
            ax.plot(steps, [znorm[layer][s] for s in steps], color=cmap(i / max(1, len(layers) - 1)),
                    label=f"layer {layer}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean ‖z‖ per sample")
        ax.grid(alpha=0.3)
        if len(layers) <= 12:
            ax.legend(fontsize="small", ncol=min(6, len(layers)))
    steps_all = sorted(set(tau) | {s for v in eff.values() for s in v} | {s for v in znorm.values() for s in v})
    for ax in axes:
        if len(steps_all) > 1:
            ax.set_xlim(steps_all[0] - 0.5, steps_all[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
