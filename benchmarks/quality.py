"""Quality study: does the default penalty beat plain training at plain's *best* setting? Selects ``DEFAULT_TAU_RATIO``.

Tasks (`quality_tasks.py`), each on a learning-rate grid of 3 values spanning 10×:

* **selection** (choose the default ρ): ``bbc`` (post-norm BERT from scratch, BBC News topics), ``seq2seq``
  (pre-norm T5 from scratch, synthetic transduction), ``lm_gpt2`` (GPT-2-style decoder LM from scratch, BBC News
  article text, held-out perplexity);
* **held out** (run afterwards with the selected ρ, never used to choose): ``lm_llama`` (a Llama-style pre-norm
  decoder), ``vit`` (timm ViT from scratch, MNIST), ``mnist`` (ResNet-20, SGD: plain is stable there) and
  ``finetune`` (the real all-MiniLM-L6-v2 checkpoint: a model loaded with weights).

Arms per task and learning rate: ``plain``; the candidates ``ρ=…`` (``tau="auto"``: τ_l = ρ·‖∂L/∂z_l‖/‖z_l‖ per
site, calibrated on the first backward) or, on held-out tasks, the selected ρ; what a user would try instead:
``plain wd 0.1`` (AdamW weight decay 0.1; SGD: 10× the task's) and ``plain warm-up 5×`` (a 5× longer linear
warm-up); ``τ=0`` (connections attached with τ = 0: must equal plain, see tests/test_benchmarks.py).

Parts (``--parts``, all by default): ``grid`` (the above), ``lrmap`` (a 6-point learning-rate grid spanning 300×
for lm_llama, bbc and seq2seq: plain, the default, z-loss 1e-4, and for the LM qk-layernorm (a Qwen3 config: Llama
plus q/k norms) with and without the default; LR sensitivity per arm, after Wortsman et al. 2023), ``longer`` (lm_llama
and bbc 5× longer, plain and the default each at its own best learning rate of the grid, loss curves).
Figures go to ``benchmarks/results/``; the tables into BENCHMARKS.md between ``<!-- quality:begin -->`` and
``<!-- quality:end -->``.

    python benchmarks/quality.py --preset small --jobs 2 --json benchmarks/results/quality_small.json
                        # 454 runs, 68 min wall time on a shared 2-core machine (138 min of single-thread run time)
    python benchmarks/quality.py --preset full --jobs 2  # 4× the steps, 8/5/5/5 seeds: ~7–8× the small preset
    python benchmarks/quality.py --preset tiny           # about a minute; the smoke test

Runs can be split and merged: ``--tasks``/``--parts`` choose what runs, ``--resume a.json b.json`` keeps the runs
recorded there (the held-out tasks then use the selection computed from them). The JSON log is rewritten after
every run, so a stopped study keeps what it measured.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import quality_tasks as T  # noqa: E402

import hf_penal  # noqa: E402

CANDIDATES = (0.01, 0.03, 0.1)
SELECTION = ("bbc", "seq2seq", "lm_gpt2")
HELD_OUT = ("lm_llama", "vit", "mnist", "finetune")
LRMAP_TASKS = ("lm_llama", "bbc", "seq2seq")
LONGER_TASKS = ("lm_llama", "bbc")
Z_LOSS = 1e-4
TIE = 0.005

SELECTION_RULE = (
    "Selection rule (written and committed before the study ran): **one ρ for every model**. Candidates ρ ∈ "
    "{0.01, 0.03, 0.1}; selection tasks bbc, seq2seq, lm_gpt2 (from scratch). For each selection task and candidate, "
    "Δ = (candidate at its own best learning rate of the grid) − (plain at *its* best learning rate of the grid), "
    "'best' meaning the best mean over the seeds; Δ is in accuracy for the accuracy tasks and the relative perplexity "
    "reduction (ppl_plain − ppl_ρ) / ppl_plain for the language model. The default maximises the worst-case Δ over "
    "the selection tasks; candidates within 0.005 of the best worst case are tied and the tie goes to the smaller ρ "
    "(the gentler penalty). The held-out tasks (lm_llama, vit, mnist, finetune) are run afterwards with the selected "
    "ρ and reported as they come out. The same ρ is the default for models loaded with weights unless the held-out "
    "fine-tune shows it worse than plain at plain's best learning rate with Welch p < 0.05; then that default stays "
    "at its previous value (0.01) and the README says so.")


# ----------------------------------------------------------------------------------------------------------- presets
@dataclasses.dataclass
class Preset:
    seeds: int  # plain and the candidates on the selection tasks' grid: the cells that decide the default
    heldout_seeds: int  # plain and the default on the held-out tasks' grid
    control_seeds: int  # weight decay, warm-up 5×, the longer runs
    map_seeds: int  # the learning-rate map (its cells on the grid reuse the grid's first seeds)
    tasks: dict
    lrmap: tuple = ()
    longer: int = 5


_ADAM_MAP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
PRESETS = {
    "tiny": Preset(seeds=2, heldout_seeds=2, control_seeds=1, map_seeds=1, longer=2, lrmap=(1e-3, 1e-2), tasks=dict(
        bbc=dict(layers=2, hidden=32, seq=32, steps=6, batch=16, lrs=(1e-3, 1e-2), docs=500),
        seq2seq=dict(layers=1, d_model=32, steps=6, batch=32, lrs=(3e-3, 3e-2), n_train=256, n_test=128),
        lm_gpt2=dict(layers=2, width=32, seq=32, steps=6, batch=8, lrs=(1e-3, 1e-2), vocab=256, eval_windows=8),
        lm_llama=dict(layers=2, width=32, seq=32, steps=6, batch=8, lrs=(1e-3, 1e-2), vocab=256, eval_windows=8),
        vit=dict(depth=2, dim=32, steps=6, batch=32, lrs=(1e-3, 1e-2), n_train=256, n_test=128),
        mnist=dict(n=1, width=4, steps=6, batch=32, lrs=(0.1, 1.0), n_train=256, n_test=128),
        finetune=dict(seq=32, steps=3, batch=8, lrs=(2e-4, 2e-3), n_train=48, n_test=40))),
    "small": Preset(seeds=5, heldout_seeds=3, control_seeds=2, map_seeds=2, lrmap=_ADAM_MAP, tasks=dict(
        bbc=dict(layers=4, hidden=64, seq=64, steps=200, batch=16, lrs=(3e-4, 1e-3, 3e-3)),
        seq2seq=dict(layers=2, d_model=64, steps=400, batch=64, lrs=(1e-3, 3e-3, 1e-2), n_train=8000, n_test=1000),
        lm_gpt2=dict(layers=4, width=64, seq=64, steps=200, batch=16, lrs=(3e-4, 1e-3, 3e-3), vocab=2048,
                     eval_windows=256),
        lm_llama=dict(layers=4, width=64, seq=64, steps=200, batch=16, lrs=(3e-4, 1e-3, 3e-3), vocab=2048,
                      eval_windows=256),
        vit=dict(depth=4, dim=64, steps=200, batch=32, lrs=(3e-4, 1e-3, 3e-3), n_train=4000, n_test=1000),
        mnist=dict(n=3, width=8, steps=200, batch=64, lrs=(0.03, 0.1, 0.3), n_train=4000, n_test=1000),
        finetune=dict(seq=64, steps=30, batch=8, lrs=(6e-5, 2e-4, 6e-4), n_train=240, n_test=445))),
}
PRESETS["full"] = dataclasses.replace(PRESETS["small"], seeds=8, heldout_seeds=5, control_seeds=5, map_seeds=5, tasks={
    k: {**v, "steps": v["steps"] * 4} for k, v in PRESETS["small"].tasks.items()})


# ----------------------------------------------------------------------------------------------------------- arms
@dataclasses.dataclass(frozen=True)
class Arm:
    """One way to train: `hf_penal.apply` keywords (None: plain) and what else differs from the task's recipe."""

    name: str
    apply: tuple | None = None  # sorted (key, value) pairs of hf_penal.apply keywords
    weight_decay: float | None = None  # None: the task's
    warmup_factor: float = 1.0  # × the task's warm-up length (a task without warm-up gets 0.2 of the steps)
    z_loss: float = 0.0
    variant: str | None = None  # a model variant of the task (e.g. "qknorm")
    steps_factor: int = 1


def plain() -> Arm:
    return Arm("plain")


def penal(rho: float, **kw) -> Arm:
    suffix = {"variant": " + qk-norm", "steps_factor": " (longer)"}
    name = f"ρ={rho:g}" + "".join(s for k, s in suffix.items() if k in kw)
    return Arm(name, apply=(("tau", "auto"), ("tau_ratio", rho)), **kw)


def controls(task: T.Task) -> list[Arm]:
    wd = 0.1 if task.optimizer == "adamw" else 10 * task.weight_decay
    return [Arm(f"plain wd {wd:g}", weight_decay=wd), Arm("plain warm-up 5×", warmup_factor=5.0)]


TAU0 = Arm("τ=0", apply=(("tau", 0.0),))


def lrmap_arms(task: T.Task, rho: float) -> list[Arm]:
    out = [plain(), penal(rho), Arm(f"z-loss {Z_LOSS:g}", z_loss=Z_LOSS)]
    if "qknorm" in task.variants:
        out += [Arm("qk-norm", variant="qknorm"), penal(rho, variant="qknorm")]
    return out


# ----------------------------------------------------------------------------------------------------------- runs
def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    w = int(total * warmup)
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _optimizer(task: T.Task, arm: Arm, model: nn.Module, lr: float):
    wd = task.weight_decay if arm.weight_decay is None else arm.weight_decay
    if task.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def probe_batch_efficiency(model: nn.Module, task: T.Task) -> tuple[float, float]:
    """ε and ‖z‖ of `model` on the task's held-out probe batch, each the mean over *sites* (plain models are
    measured through τ = 0 connections, which leave the gradients unchanged)."""
    if not hf_penal.penal_config(model):
        hf_penal.apply(model, tau=0.0)
    model.eval()  # dropout off, batch-norm statistics frozen ...
    for m in model.modules():  # ... but the connections must act as in training
        if isinstance(m, hf_penal.PenalConnection):
            m.train()
    hf_penal.track_efficiency(model)  # also resets the statistics
    model.zero_grad(set_to_none=True)
    T.loss(task, model, task.probe_batch).backward()
    stats = [v for v in hf_penal.markov_efficiency(model, per="site").values() if math.isfinite(v["efficiency"])]
    hf_penal.track_efficiency(model, False)
    model.zero_grad(set_to_none=True)
    if not stats:
        return math.nan, math.nan
    return (sum(v["efficiency"] for v in stats) / len(stats), sum(v["z_norm"] for v in stats) / len(stats))


def train_one(task: T.Task, arm: Arm, lr: float, seed: int) -> dict:
    """Train one model; the held-out metric, ε, calibrated τ, divergence, and the training-loss curve (20 points)."""
    torch.manual_seed(seed)
    model = task.build(arm.variant)
    if arm.apply is not None:
        hf_penal.apply(model, **dict(arm.apply))
    model.train()
    opt = _optimizer(task, arm, model, lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    steps = task.steps * arm.steps_factor
    warmup = min(0.5, task.warmup * arm.warmup_factor) if task.warmup else (0.2 if arm.warmup_factor > 1 else 0.0)
    every = max(1, steps // 20)
    curve, window = [], []
    diverged, t0 = False, time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = T.loss(task, model, task.train_batch(gen), arm.z_loss)
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if task.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip)
        opt.step()
        window.append(loss.item())
        if len(window) == every:
            curve.append([step + 1, sum(window) / every])
            window = []
    train_s = time.perf_counter() - t0
    cfg = hf_penal.penal_config(model)
    taus = [t for t in (cfg.tau_calibrated or {}).values()] if cfg is not None else []
    model.eval()
    metric = task.evaluate(model)
    if not math.isfinite(metric):  # a diverged LM: count it at the perplexity of a uniform guess, not drop it
        metric = task.chance if not task.higher_is_better else 0.0
    eps, znorm = probe_batch_efficiency(model, task) if not diverged else (math.nan, math.nan)
    return dict(metric=metric, eps=eps, znorm=znorm, diverged=diverged, train_s=train_s, curve=curve,
                wall_s=time.perf_counter() - t0, tau_mean=sum(taus) / len(taus) if taus else None)


_TASK_CACHE: dict = {}


def _task(preset: str, name: str) -> T.Task:
    key = (preset, name)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = T.TASKS[name](PRESETS[preset].tasks[name])
    return _TASK_CACHE[key]


def _run_job(preset: str, task: str, arm: Arm, lr: float, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    return train_one(_task(preset, task), arm, lr, seed)


# ----------------------------------------------------------------------------------------------------------- stats
def cells(results: list) -> dict:
    """{(task, lr, arm): {seed: metric}}."""
    out: dict = {}
    for r in results:
        out.setdefault((r["task"], r["lr"], r["arm"]), {})[r["seed"]] = r["metric"]
    return out


def _mean(values) -> float:
    return C.mean_std(list(values))[0]


def best_lr(cell: dict, task: str, arm: str, lrs, higher: bool, seeds=None) -> float | None:
    """The learning rate of `lrs` where `arm` has the best mean (over seeds < `seeds`, if given)."""
    scored = []
    for lr in lrs:
        vals = {s: v for s, v in cell.get((task, lr, arm), {}).items() if seeds is None or s < seeds}
        if vals:
            scored.append((_mean(vals.values()), lr))
    if not scored:
        return None
    return (max if higher else min)(scored)[1]


def gain(ours: float, base: float, higher: bool) -> float:
    """Δ in the rule's units: accuracy difference, or relative perplexity reduction."""
    return ours - base if higher else (base - ours) / base


def select(results: list, preset: Preset) -> dict | None:
    """SELECTION_RULE applied to the grid runs of the selection tasks (seeds < preset.seeds). Returns
    {"rho", "worst", "scores": {ρ: (worst, mean, {task: Δ})}} or None without complete selection results."""
    cell = cells(results)
    scores = {}
    for rho in CANDIDATES:
        per_task = {}
        for t in SELECTION:
            lrs, higher = preset.tasks[t]["lrs"], t != "lm_gpt2"
            bp = best_lr(cell, t, "plain", lrs, higher, preset.seeds)
            bc = best_lr(cell, t, f"ρ={rho:g}", lrs, higher, preset.seeds)
            if bp is None or bc is None:
                return None
            ours = _mean(v for s, v in cell[(t, bc, f"ρ={rho:g}")].items() if s < preset.seeds)
            base = _mean(v for s, v in cell[(t, bp, "plain")].items() if s < preset.seeds)
            per_task[t] = gain(ours, base, higher)
        scores[rho] = (min(per_task.values()), sum(per_task.values()) / len(per_task), per_task)
    best = max(w for w, _, _ in scores.values())
    rho = min(r for r, (w, _, _) in scores.items() if w >= best - TIE)
    return dict(rho=rho, worst=scores[rho][0], scores=scores)


def lr_sensitivity(means: dict, higher: bool, cap: float) -> float:
    """Wortsman et al. (2023): the mean over the grid of how far an arm's final value is from its own best, each value
    first capped at `cap` (chance accuracy / the loss of a uniform guess). For LMs the values are log-perplexities."""
    vals = [max(v, cap) if higher else min(v, cap) for v in means.values()]
    best = max(vals) if higher else min(vals)
    return sum(abs(v - best) for v in vals) / len(vals)


# ----------------------------------------------------------------------------------------------------------- plan
def longer(arm: Arm, factor: int) -> Arm:
    return dataclasses.replace(arm, name=f"{arm.name} (longer)", steps_factor=factor)


def plan(preset: Preset, tasks: dict, parts: list, results: list, rho: float | None) -> list:
    """The (task, arm, lr, seed) runs of the chosen parts that `results` lacks, given the selected ρ (held-out tasks,
    the map and the longer runs need it; None: only the selection tasks' grid runs)."""
    done = {(r["task"], r["lr"], r["arm"], r["seed"]) for r in results}
    cell = cells(results)
    todo = []

    def add(task, arm, lr, seeds):
        for seed in range(seeds):
            if (task, lr, arm.name, seed) not in done:
                todo.append((task, arm, lr, seed))
                done.add((task, lr, arm.name, seed))

    for name, task in tasks.items():
        lrs = task.lrs
        if rho is None and name not in SELECTION:
            continue
        if "grid" in parts:
            penal_arms = [penal(r) for r in CANDIDATES] if name in SELECTION else [penal(rho)]
            for lr in lrs:
                for arm in [plain(), *penal_arms]:
                    add(name, arm, lr, preset.seeds if name in SELECTION else preset.heldout_seeds)
                for arm in controls(task):
                    add(name, arm, lr, preset.control_seeds)
            add(name, TAU0, lrs[len(lrs) // 2], max(2, preset.control_seeds - 1))
        if rho is None:
            continue
        if "lrmap" in parts and name in LRMAP_TASKS:
            for lr in preset.lrmap:
                for arm in lrmap_arms(task, rho):
                    add(name, arm, lr, preset.map_seeds)
        if "longer" in parts and name in LONGER_TASKS:
            for arm in (plain(), penal(rho)):
                lr = best_lr(cell, name, arm.name, lrs, task.higher_is_better)
                if lr is not None:
                    add(name, longer(arm, preset.longer), lr, preset.control_seeds)
    return todo


# ----------------------------------------------------------------------------------------------------------- report
def _fmt(v: float, higher: bool) -> str:
    return f"{v:.4f}" if higher else f"{v:.2f}"


def _cell_text(vals: list, higher: bool) -> str:
    m, sd = C.mean_std(vals)
    return f"{_fmt(m, higher)} ± {_fmt(sd, higher)}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def grid_table(task: T.Task, results: list, rho_arms: list) -> str:
    by = {}
    for r in results:
        if r["task"] == task.name:
            by.setdefault((r["lr"], r["arm"]), []).append(r)
    arm_order = ["plain", *rho_arms, *(a.name for a in controls(task)), TAU0.name]
    rows = []
    for lr in task.lrs:
        base = [r["metric"] for r in by.get((lr, "plain"), [])]
        for arm in arm_order:
            rs = by.get((lr, arm))
            if not rs:
                continue
            ms = [r["metric"] for r in rs]
            delta = ""
            if arm != "plain" and base:
                w = C.welch(ms, base)
                delta = f"{w['diff']:+.4f} (p {_p(w['p'])})" if task.higher_is_better else \
                    f"{w['diff']:+.2f} (p {_p(w['p'])})"
            e, es = C.mean_std([r["eps"] for r in rs])
            taus = [r["tau_mean"] for r in rs if r.get("tau_mean")]
            rows.append([f"{lr:g}", arm, len(rs), _cell_text(ms, task.higher_is_better), delta,
                         f"{C.mean_std(taus)[0]:.2e}" if taus else "", f"{e:.3f} ± {es:.3f}",
                         f"{sum(r['diverged'] for r in rs)}/{len(rs)}",
                         f"{C.mean_std([r['train_s'] for r in rs])[0]:.0f}"])
    return C.table(["lr", "arm", "n", task.metric, "Δ vs plain, same lr (Welch p)", "τ_l mean", "ε", "diverged",
                    "train s/run"], rows)


def headline(tasks: dict, results: list, rho: float) -> tuple[str, list]:
    """Per task: the default at its best lr vs plain at its best lr, and vs the best control at its best lr."""
    cell = cells(results)
    rows, comps = [], []
    for name, task in tasks.items():
        hb = task.higher_is_better
        ours = best_lr(cell, name, f"ρ={rho:g}", task.lrs, hb)
        if ours is None:
            continue
        a = cell[(name, ours, f"ρ={rho:g}")]
        rivals = [("plain", best_lr(cell, name, "plain", task.lrs, hb))]
        ctrl = [(c.name, best_lr(cell, name, c.name, task.lrs, hb)) for c in controls(task)]
        ctrl = [(c, lr) for c, lr in ctrl if lr is not None]
        if ctrl:
            rivals.append(max(ctrl, key=lambda c: _mean(cell[(name, c[1], c[0])].values()) * (1 if hb else -1)))
        for rival, lr in rivals:
            if lr is None:
                continue
            b = cell[(name, lr, rival)]
            w = C.welch(list(a.values()), list(b.values()))
            pp, npair = C.paired_p(a, b)
            comps.append(dict(task=name, rival=rival, p=w["p"], gain=gain(_mean(a.values()), _mean(b.values()), hb)))
            rows.append([name + (" (held out)" if name in HELD_OUT else ""), f"{_cell_text(list(a.values()), hb)} "
                         f"@ {ours:g}", f"{rival}: {_cell_text(list(b.values()), hb)} @ {lr:g}",
                         (f"{w['diff']:+.4f}" if hb else f"{w['diff']:+.2f}") + f" [{w['lo']:+.3g}, {w['hi']:+.3g}]",
                         f"{comps[-1]['gain']:+.3f}", f"{w['df']:.1f}", _p(w["p"]), f"{_p(pp)} ({npair})"])
    rejected = C.holm([c["p"] for c in comps])
    for row, c, rej in zip(rows, comps, rejected):
        c["holm"] = rej
        row.append("yes" if rej else "no")
    text = C.table(["task", f"default ρ={rho:g} @ its best lr", "rival @ its best lr (same seeds)",
                    "difference [95 % CI]", "gain (rule units)", "Welch df", "Welch p", "paired p (n)",
                    "Holm 5 %"], rows)
    return text, comps


def verdict_line(comps: list) -> str:
    """Counted from the comparisons, never written in advance."""
    vs_plain = [c for c in comps if c["rival"] == "plain"]
    up = [c["task"] for c in vs_plain if c["holm"] and c["gain"] > 0]
    down = [c["task"] for c in vs_plain if c["holm"] and c["gain"] < 0]
    same = [c["task"] for c in vs_plain if not c["holm"]]
    return (f"**Against plain at its best learning rate ({len(comps)} comparisons in the table, Holm-corrected at "
            f"5 %):** the default is better on {len(up)} task(s) ({', '.join(up) or '—'}), worse on {len(down)} "
            f"({', '.join(down) or '—'}), and not distinguishable on {len(same)} ({', '.join(same) or '—'}).")


def lrmap_section(tasks: dict, results: list, preset: Preset, rho: float, seeds: int, png: str | None) -> str:
    cell = cells(results)
    lines = []
    for name in LRMAP_TASKS:
        if name not in tasks:
            continue
        task, hb = tasks[name], tasks[name].higher_is_better
        # on a common scale (accuracy, or log-perplexity), each value capped at chance / a uniform guess
        cap, scale = (task.chance, lambda v: v) if hb else (math.log(task.chance), math.log)
        means = {}
        for arm in lrmap_arms(task, rho):
            vals = {lr: [v for s, v in cell.get((name, lr, arm.name), {}).items() if s < seeds] for lr in preset.lrmap}
            means[arm.name] = {lr: _mean(v) for lr, v in vals.items() if v}
        complete = {a: m for a, m in means.items() if len(m) == len(preset.lrmap)}
        capped = {a: {lr: (max if hb else min)(scale(v), cap) for lr, v in m.items()} for a, m in complete.items()}
        best_all = (max if hb else min)(v for m in capped.values() for v in m.values()) if capped else math.nan
        near = math.log(1.1) if not hb else 0.02
        rows = []
        for arm in lrmap_arms(task, rho):
            row = [arm.name]
            for lr in preset.lrmap:
                vals = [v for s, v in cell.get((name, lr, arm.name), {}).items() if s < seeds]
                row.append(_cell_text(vals, hb) if vals else "")
            if arm.name in capped:
                c = capped[arm.name]
                good = [lr for lr, v in c.items() if abs(v - best_all) <= near]
                dist = sum(abs(v - best_all) for v in c.values()) / len(c)
                row += [f"{lr_sensitivity(c, hb, cap):.3f}", f"{dist:.3f}",
                        f"{len(good)}" + (f" ({min(good):g}–{max(good):g})" if good else "")]
            else:
                row += ["", "", ""]
            rows.append(row)
        unit = "nats" if not hb else "accuracy"
        within = "perplexity ≤ 1.1 × the best" if not hb else "accuracy ≥ the best − 0.02"
        lines += [f"#### {name}: {task.metric} vs learning rate (n = {seeds} seeds per cell)", "",
                  C.table(["arm", *(f"{lr:g}" for lr in preset.lrmap), f"LR sensitivity ({unit})",
                           f"distance from the best of any arm ({unit})", f"lrs with {within} of any arm"], rows),
                  ""]
    if png:
        lines += [f"![learning-rate map]({png})", ""]
    return "\n".join(lines)


def longer_section(tasks: dict, results: list, rho: float, factor: int, png: str | None) -> str:
    cell = cells(results)
    rows = []
    for name in LONGER_TASKS:
        if name not in tasks:
            continue
        task, hb = tasks[name], tasks[name].higher_is_better
        got = {}
        for arm in (plain(), penal(rho)):
            lr = best_lr(cell, name, arm.name, task.lrs, hb)
            for k, short in ((longer(arm, factor).name, False), (arm.name, True)):
                vals = cell.get((name, lr, k), {})
                if vals:
                    got[(arm.name, short)] = (lr, vals)
        for short in (True, False):
            if ("plain", short) in got and (f"ρ={rho:g}", short) in got:
                (lp, p), (lo, o) = got[("plain", short)], got[(f"ρ={rho:g}", short)]
                w = C.welch(list(o.values()), list(p.values()))
                g = gain(_mean(o.values()), _mean(p.values()), hb)
                rows.append([name, f"{task.steps * (1 if short else factor)}",
                             f"{_cell_text(list(p.values()), hb)} @ {lp:g}",
                             f"{_cell_text(list(o.values()), hb)} @ {lo:g}", f"{g:+.3f}", _p(w["p"])])
    text = C.table(["task", "steps", "plain @ its best lr", f"ρ={rho:g} @ its best lr", "gain (rule units)",
                    "Welch p"], rows)
    return text + (f"\n\n![loss curves]({png})" if png else "")


def plots(tasks: dict, results: list, preset: Preset, rho: float, seeds: int, outdir: str) -> tuple:
    """The learning-rate map and the longer runs' loss curves as PNGs (None where there is nothing to draw)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cell = cells(results)
    os.makedirs(outdir, exist_ok=True)
    map_png = longer_png = None
    names = [n for n in LRMAP_TASKS if n in tasks]
    if names and preset.lrmap:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            for arm in lrmap_arms(tasks[name], rho):
                pts = [(lr, C.mean_std([v for s, v in cell.get((name, lr, arm.name), {}).items() if s < seeds]))
                       for lr in preset.lrmap]
                pts = [(lr, m, sd) for lr, (m, sd) in pts if not math.isnan(m)]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o",
                                capsize=3, label=arm.name)
            ax.set_xscale("log")
            if not tasks[name].higher_is_better:
                ax.set_yscale("log")
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel(tasks[name].metric)
            ax.set_title(name)
            ax.legend(fontsize=8)
        fig.tight_layout()
        map_png = os.path.join(outdir, "quality_lr_map.png")
        fig.savefig(map_png, dpi=90)
        plt.close(fig)
    names = [n for n in LONGER_TASKS if n in tasks and any(r["task"] == n and "(longer)" in r["arm"]
                                                           for r in results)]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            for r in results:
                if r["task"] == name and "(longer)" in r["arm"] and r["curve"]:
                    xs, ys = zip(*r["curve"])
                    ax.plot(xs, ys, color="C0" if r["arm"].startswith("plain") else "C1", alpha=0.6,
                            label=r["arm"] if r["seed"] == 0 else None)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss (mean of 1/20 of the run)")
            ax.set_yscale("log")
            ax.set_title(f"{name}, {preset.longer}× longer, each arm at its best lr")
            ax.legend(fontsize=8)
        fig.tight_layout()
        longer_png = os.path.join(outdir, "quality_longer.png")
        fig.savefig(longer_png, dpi=90)
        plt.close(fig)
    return map_png, longer_png


def render(preset_name: str, tasks: dict, results: list, commands: list, chosen: dict | None, rho: float | None,
           png_dir: str, out: str) -> str:
    preset = PRESETS[preset_name]
    total = sum(r.get("wall_s", r["train_s"]) for r in results)
    cmd = ("Command: `" + commands[0] + "`" if len(commands) == 1 else
           "Commands (runs merged from their JSON logs with `--resume`): " + "; ".join(f"`{c}`" for c in commands))
    lines = ["## Quality", "", f"Machine: {C.machine()}.  ",
             f"{cmd} ({total / 60:.1f} min of single-thread training and evaluation in all).", "",
             SELECTION_RULE, ""]
    if rho is None:
        return "\n".join(lines + ["**Selection:** the selection tasks' grid is incomplete in this run."])
    if chosen is None:
        lines += [f"**Selection:** not in this run; ρ = {rho:g} given with --rho.", ""]
    else:
        sc = "; ".join(f"ρ {r:g}: worst {w:+.4f}, mean {m:+.4f} (" + ", ".join(f"{t} {d:+.4f}" for t, d in pt.items())
                       + ")" for r, (w, m, pt) in sorted(chosen["scores"].items()))
        lines += [f"**Selection (computed from the tables below):** **ρ = {chosen['rho']:g}** (worst-case Δ "
                  f"{chosen['worst']:+.4f}). {sc}.", ""]
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(out))) if p else None  # noqa: E731
    map_png, longer_png = plots(tasks, results, preset, rho, preset.map_seeds, png_dir)
    head, comps = headline(tasks, results, rho)
    lines += ["### The default against tuned baselines", "",
              "Each arm at its own best learning rate of the grid (the best mean); the rival is plain, then the best "
              "of what a user would try instead (weight decay 0.1, a 5× longer warm-up). Welch's t-test with its "
              "degrees of freedom and the 95 % CI of the difference; paired p: the same seeds (same init and batch "
              "order) paired. Perplexity: lower is better, so a negative difference is a gain; 'gain' is in the "
              "rule's units (accuracy, or relative perplexity reduction).", "", head, "", verdict_line(comps), ""]
    for name, task in tasks.items():
        tag = " — **held out** (not used to select)" if name in HELD_OUT else " — selection"
        rho_arms = [f"ρ={r:g}" for r in CANDIDATES] if name in SELECTION else [f"ρ={rho:g}"]
        lines += [f"### {name}{tag}: {task.description}", "", grid_table(task, results, rho_arms), ""]
    if preset.lrmap and any(r["lr"] not in tasks[r["task"]].lrs for r in results if r["task"] in tasks):
        lines += ["### Learning-rate map", "",
                  f"Final held-out metric vs peak learning rate (same recipe as the grid; n = {preset.map_seeds} "
                  f"seeds per cell: the first seeds of the grid's cells). LR sensitivity (Wortsman et al. 2023, "
                  "arXiv 2309.14322): the mean over the grid of how far the arm's value is from its own best, each "
                  "value capped at chance (accuracy) or at a uniform guess (log-perplexity); smaller is more robust. "
                  "It measures flatness around an arm's *own* optimum, so an arm whose optimum is much better scores "
                  "worse when the far ends of the grid are equally bad for every arm; the two columns after it (added"
                  " after the first results showed this) measure against the best cell of *any* arm on the task: the "
                  "mean distance from it over the grid, and how many learning rates of the grid come within 10 % "
                  "perplexity / 0.02 accuracy of it — the range that trains well. "
                  "qk-norm: the same model as a Qwen3 config (Llama plus RMSNorm on queries and keys; BERT and T5 have "
                  "no q/k-norm config, so their maps have no qk-norm arm); z-loss: "
                  f"{Z_LOSS:g}·logsumexp(logits)² added to the loss.", "",
                  lrmap_section(tasks, results, preset, rho, preset.map_seeds, rel(map_png)), ""]
    if any("(longer)" in r["arm"] for r in results):
        lines += [f"### Longer training ({preset.longer}× the steps, the same warm-up fraction)", "",
                  longer_section(tasks, results, rho, preset.longer, rel(longer_png)), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--tasks", nargs="+", choices=list(T.TASKS), default=list(T.TASKS))
    ap.add_argument("--parts", nargs="+", choices=("grid", "lrmap", "longer"), default=["grid", "lrmap", "longer"])
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    ap.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose 'quality' section is rewritten")
    ap.add_argument("--figures", default=None, help="folder for the PNGs (default: results/ beside --out's "
                    "benchmarks folder: benchmarks/results)")
    ap.add_argument("--json", help="write every run's numbers to this JSON file (after every run)")
    ap.add_argument("--resume", nargs="+", default=[], help="JSON files of earlier runs: kept, not repeated")
    ap.add_argument("--report", action="store_true", help="run nothing: only write the report of the --resume runs")
    ap.add_argument("--rho", type=float, help="use this ρ for the held-out tasks, the map and the longer runs "
                    "instead of the selection (for a partial run whose selection tasks are not in this run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    figures = args.figures or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    raw = [r for f in args.resume for r in json.load(open(f))]
    this = C.command_line()
    tasks = {n: _task(args.preset, n) for n in T.TASKS if n in args.tasks}
    start = time.perf_counter()
    pool = (cf.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
            if args.jobs > 1 else None)

    def run_all(todo):
        if args.report:
            return
        def record(job, r):
            task, arm, lr, seed = job
            r = dict(task=task, lr=lr, arm=arm.name, seed=seed, command=this, **r)
            raw.append(r)
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {task} lr={lr:g} seed={seed} {arm.name:<22} "
                  f"{tasks[task].metric}={r['metric']:.4f} ε={r['eps']:.3f} diverged={r['diverged']} "
                  f"{r['train_s']:.0f}s", flush=True)
            if args.json:  # after every run: a stopped study keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(raw, f, indent=1)
        if pool is None:
            for job in todo:
                record(job, train_one(tasks[job[0]], job[1], job[2], job[3]))
            return
        futures = {pool.submit(_run_job, args.preset, job[0], job[1], job[2], job[3], args.threads): job
                   for job in todo}
        for fut in cf.as_completed(futures):
            record(futures[fut], fut.result())

    rho = args.rho
    try:
        sel_tasks = {n: t for n, t in tasks.items() if n in SELECTION}
        run_all(plan(preset, sel_tasks, args.parts, raw, None))
        chosen = select(raw, preset)
        rho = args.rho or (chosen["rho"] if chosen else None)
        if rho is not None:
            # the grid and the map first (the longer runs need each arm's best learning rate of the grid)
            run_all(plan(preset, tasks, [p for p in args.parts if p != "longer"], raw, rho))
            if "longer" in args.parts:
                run_all(plan(preset, tasks, ["longer"], raw, rho))
    finally:
        if pool is not None:
            pool.shutdown()
    commands = list(dict.fromkeys(r.get("command", "(earlier run)") for r in raw))
    if this not in commands:
        commands.append(this + (" (report only)" if args.report else ""))
    text = render(args.preset, tasks, [r for r in raw if r["task"] in tasks], commands, chosen, rho, figures, args.out)
    C.write_section(args.out, "quality", text)
    print(text)
    return raw


if __name__ == "__main__":
    main()
