"""How much does a calibrated τ_l depend on the batch it is measured on? (decides: calibrate on 1 micro-batch or k)

For each model, `tau="auto"` is calibrated independently on N different first micro-batches (fresh copies of the same
initial weights); per site we report the coefficient of variation (std / mean) of τ_l across batches, and how far the
mean of the first k calibrations (k = 1, 4) is from the mean over all N. ρ moves τ_l by factors of 3 between the
candidates of the quality study, so a spread of a few percent is far below what matters.

    python benchmarks/calibration_spread.py            # ≈ 1 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import quality as Q  # noqa: E402

import hf_penal  # noqa: E402


def spread(task: Q.Task, batches: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    base = task.build()
    gen = torch.Generator().manual_seed(1000 + seed)
    runs = []
    for _ in range(batches):
        model = hf_penal.apply(copy.deepcopy(base), tau="auto", tau_ratio=0.03)
        runs.append(hf_penal.calibrate(model, task.train_batch(gen), loss_fn=task.loss))
    sites = list(runs[0])
    cvs, k1, k4 = [], [], []
    for s in sites:
        xs = [r[s] for r in runs]
        m = statistics.fmean(xs)
        cvs.append(statistics.stdev(xs) / m)
        k1.append(abs(xs[0] - m) / m)
        k4.append(abs(statistics.fmean(xs[:4]) - m) / m)
    return dict(sites=len(sites), cv_median=statistics.median(cvs), cv_max=max(cvs),
                k1_err=statistics.median(k1), k4_err=statistics.median(k4))


THRESHOLD = 0.25  # a quarter of the way to the next candidate ρ (×3 apart): below it, one batch is enough


def verdict(worst_k1: float) -> str:
    head = (f"Rule: one calibration micro-batch is enough when the median k = 1 error stays below {THRESHOLD:.0%} on "
            f"every task (the study's candidate ρ are ×3 apart). Worst task here: {worst_k1:.1%}. ")
    if worst_k1 < THRESHOLD:
        return head + "**Verdict: k = 1 suffices** — hf_penal calibrates on the first training micro-batch."
    return head + "**Verdict: k = 1 is too noisy here** — averaging over several micro-batches would be needed."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--preset", default="small", choices=sorted(Q.PRESETS))
    ap.add_argument("--out", default="BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    preset = Q.PRESETS[args.preset]
    rows, worst = [], 0.0
    for name in ("bbc", "seq2seq", "finetune", "mnist"):
        task = Q.TASKS[name](getattr(preset, name))
        r = spread(task, args.batches)
        worst = max(worst, r["k1_err"])
        rows.append([name, r["sites"], f"{r['cv_median']:.1%}", f"{r['cv_max']:.1%}", f"{r['k1_err']:.1%}",
                     f"{r['k4_err']:.1%}"])
        print(rows[-1], flush=True)
    text = "\n".join([
        "## Calibration: one micro-batch or several?", "",
        f"Machine: {C.machine()}. Command: `{C.command_line()}`.", "",
        f"τ_l calibrated on {args.batches} different first micro-batches (same initial weights, the quality study's "
        f"`{args.preset}` tasks and batch sizes). CV = std/mean of τ_l across batches (median and worst site); "
        "error k = median over sites of |mean of the first k calibrations − mean of all| / mean of all.", "",
        C.table(["task", "sites", "CV median", "CV max", "error k=1", "error k=4"], rows), "",
        verdict(worst)])
    C.write_section(args.out, "calibration", text)
    print(text)


if __name__ == "__main__":
    main()
