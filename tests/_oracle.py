"""The explicit-penalty oracle, independent of hf_penal: forward hooks capture each branch output z on the vanilla
model, and the loss gets + tau/2 * sum ||z||^2. A penalized model must produce the same parameter gradients."""
from __future__ import annotations

import re

import torch


def _capture(index, captured):
    def hook(mod, args, out):
        z = out if index is None else out[index]
        captured.append(z)
        z2 = z.clone()  # downstream in-place ops (timm ResNet) must not touch the captured value
        if index is None:
            return z2
        lst = list(out)
        lst[index] = z2
        return type(out)(lst) if isinstance(out, tuple) else lst  # a list stays a list (OpenAI GPT's Attention)
    return hook


def grads(model, loss_fn, zspec=(), tau=0.0, train=True):
    """Parameter gradients (dict name -> tensor) of loss_fn(model) + tau/2 * sum ||z||^2 over the modules whose
    qualified names fullmatch a regex of zspec [(regex, output index or None)]. Returns (grads, loss, n_captured)."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    captured, handles = [], []
    for name, mod in model.named_modules():
        for rx, idx in zspec:
            if re.fullmatch(rx, name):
                handles.append(mod.register_forward_hook(_capture(idx, captured)))
    try:
        loss = loss_fn(model)
        wide = (lambda z: z.double() if z.dtype == torch.float64 else z.float())  # noqa: E731 - float64 stays
        total = loss + tau / 2 * sum((wide(z) ** 2).sum() for z in captured) if captured else loss
        total.backward()
    finally:
        for h in handles:
            h.remove()
    g = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
         for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g, loss.detach(), len(captured)


def rel_err(a: dict, b: dict) -> float:
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    return (num / max(den, 1e-300)) ** 0.5


def saved_bytes_and_grads(model, loss_fn):
    """(bytes autograd saves for backward, counted once per storage, in one oracle `grads` pass; the gradients)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        g, _, _ = grads(model, loss_fn)
    return sum(seen.values()), g
