"""Saved-activation bytes (deduplicated storages) and gradient error per storage_dtype, BERT 4x256, batch 8x128.

    PYTHONPATH=. python benchmarks/saved_bytes.py     # a minute on one CPU core

Counts every tensor autograd saves for backward (`saved_tensors_hooks`), once per storage, so a tensor saved by
several ops (as x and x + z are under storage_dtype="recompute") counts once. Errors are against fp32 storage.
"""
import copy

import torch
from transformers import BertConfig, BertForSequenceClassification

import hf_penal

torch.manual_seed(0)
cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=2,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
base = BertForSequenceClassification(cfg)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, cfg.vocab_size, (8, 128), generator=g)
labels = torch.randint(0, 2, (8,), generator=g)


def run(storage, penal=True):
    m = copy.deepcopy(base)
    if penal:
        hf_penal.apply(m, tau=3e-4, storage_dtype=storage)
    m.train()
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(input_ids=ids, labels=labels).loss.backward()
    return sum(seen.values()), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).double()


bp, gp = run(None, penal=False)
bs, gs = run(None)
print(f"plain saved {bp / 2**20:.1f} MiB; penalty/loss gradient {float((gs - gp).norm() / gp.norm()):.3g}")
print(f"stored fp32: +{(bs - bp) / 2**20:.2f} MiB")
for st in ["bfloat16", "float8_e4m3fn", "float8_e5m2", "recompute"]:
    b, gg = run(st)
    d = float((gg - gs).norm())
    print(f"{st}: +{(b - bp) / 2**20:.3f} MiB ({(b - bp) / (bs - bp):.3f}x stored); penalty-term err "
          f"{d / float((gs - gp).norm()):.2e}; whole-gradient err {d / float(gs.norm()):.2e}")
