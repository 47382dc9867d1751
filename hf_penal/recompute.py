"""``storage_dtype="recompute"``: z recovered in backward as (x + z) − x instead of being saved.

In most transformer blocks the skip input x and the sum y = x + z are both saved by autograd anyway, for the norms
and linears that consume them (BERT: the query/key/value linears save x, the LayerNorm saves y; pre-LN blocks: the
two norms save them). At such a site the penalty needs no memory of its own:

* the branch end routes z through `_DeferredPenal`, which saves nothing (its backward adds τ·z like the stored op);
* a hook (`hf_penal.hooks`) where y is consumed (the input of the norm that follows the add, or the block's output,
  as the block's record says: ``Branch.sum``) checks from the autograd graph that y really is ``x + z`` (an
  ``AddBackward0`` whose inputs are the penal node and x, same shape) and routes y through `_SumNode`, which saves
  y and x with ``save_for_backward`` (the same storages the norms save, so no new memory) and, in backward, hands
  ``y − x`` to the branch end's node. `_SumNode` sits downstream of the branch end, so its backward always runs
  first.

Where that is not safe the connection falls back to storing z, per site and per forward pass:

* statically (`plan`): in-place adds (timm ResNet), branches whose record in `hf_penal.architectures` names no sum
  (``Branch.sum``), sites found by the generic probe or named by the user, and residual modes other than "identity"
  (they rewrite the add) store z;
* at run time: under transformers' gradient checkpointing (the block's tensors are freed and recomputed, so holding
  x and y would keep them alive), under ``torch.compile`` (the hand-off between the two nodes is Python state), while
  the ε probes are on, and when the graph check fails (e.g. a dropout > 0 between z and the add, as in ViT with
  ``hidden_dropout_prob > 0``). Then z is kept alive from the branch end, exactly like the stored path.

z recomputed this way differs from the stored z by the rounding of the add: at most half an ulp of y per element.
"""
from __future__ import annotations

import torch
from torch import nn

from .discovery import module_at
from .hooks import hook_recompute, unhook_recompute


# ------------------------------------------------------------------------------------------------------------ ops
class _Pending:
    """What the branch end's node reads in backward: z recomputed by `_SumNode`, or z itself (fallback)."""

    __slots__ = ("z", "version", "node", "recomputed")

    def __init__(self, z: torch.Tensor):
        self.z, self.version, self.node, self.recomputed = z, z._version, None, None

    def take(self) -> torch.Tensor:
        if self.recomputed is not None:
            z, self.recomputed = self.recomputed, None
            return z
        if self.z is None:
            raise RuntimeError("hf_penal storage_dtype='recompute': the sum x + z of this site was not reached in "
                               "backward, so z cannot be recomputed (please report the model)")
        if self.z._version != self.version:
            raise RuntimeError("hf_penal storage_dtype='recompute': z was modified in place after the residual site; "
                               "use storage_dtype=None for this model")
        return self.z


class _DeferredPenal(torch.autograd.Function):
    """Identity forward; backward adds coef · z, with z from `_Pending` (saves no activation)."""

    @staticmethod
    def forward(ctx, z, coef, pending):
        ctx.save_for_backward(coef)
        ctx.pending = pending
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        (coef,) = ctx.saved_tensors
        return torch.addcmul(grad, ctx.pending.take().to(grad.dtype), coef.to(grad.dtype)), None, None


class _SumNode(torch.autograd.Function):
    """Identity on y = x + z; saves y and x (tensors the block saves anyway) and recomputes z = y − x in backward."""

    @staticmethod
    def forward(ctx, y, x, pending):
        ctx.save_for_backward(y, x)
        ctx.pending = pending
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        y, x = ctx.saved_tensors
        ctx.pending.recomputed = y - x
        return grad, None, None


def _is_sum(y, node, x) -> bool:
    """Whether autograd recorded y as exactly ``x + z_out`` (z_out: the output of the penal node `node`)."""
    fn = getattr(y, "grad_fn", None)
    if fn is None or fn.name() != "AddBackward0" or getattr(fn, "_saved_alpha", 1) != 1:
        return False
    if y.shape != x.shape or y.dtype != x.dtype:
        return False
    nxt = [f for f, _ in fn.next_functions]
    if len(nxt) != 2 or not any(f is node for f in nxt):
        return False
    other = nxt[1] if nxt[0] is node else nxt[0]
    if x.requires_grad:
        return other is not None and (other is x.grad_fn or (x.grad_fn is None and other.name() == "AccumulateGrad"))
    return other is None


# ------------------------------------------------------------------------------------------------------------ state
class _SumSite:
    """Per-site state between the hooks of one forward pass (`hf_penal.hooks`: ``x`` is set by the x capture, ``swap``
    called where y is consumed). Picklable (no closures)."""

    def __init__(self, switches: list):
        # modules whose `gradient_checkpointing` (transformers layers) or `grad_checkpointing` (timm models) turns
        # recompute off
        self.switches = switches
        self.x = None
        self.pending = None
        self.recomputed = 0  # forward passes that took each path (for tests and diagnostics)
        self.stored = 0

    def active(self) -> bool:
        if torch.compiler.is_compiling():
            return False
        return not any(getattr(m, "gradient_checkpointing", False) or getattr(m, "grad_checkpointing", False)
                       for m in self.switches)

    def branch(self, z: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        pending = _Pending(z)
        out = _DeferredPenal.apply(z, coef, pending)
        pending.node = out.grad_fn
        self.pending = pending
        return out

    def swap(self, y):
        pending, x = self.pending, self.x
        self.pending = self.x = None
        if pending is None or not torch.is_tensor(y):
            return y
        if x is None or not _is_sum(y, pending.node, x):
            self.stored += 1  # pending keeps z: the stored path
            return y
        self.recomputed += 1
        out = _SumNode.apply(y, x.detach(), pending)
        pending.z = None
        return out

    def __getstate__(self):
        return {**self.__dict__, "x": None, "pending": None}


# ------------------------------------------------------------------------------------------------------------ wiring
def _eligibility(site, mode: str) -> str:
    """"recompute" or "stored (reason)" for one site."""
    if mode != "identity":
        return "stored (residual mode rewrites the add)"
    if site.inplace:
        return "stored (in-place add)"
    if site.sum is None:
        return "stored (no x + z recorded for the block in hf_penal.architectures)"
    if site.skip is None or site.skip.how not in ("input", "input_tensor"):
        return "stored (x is not an input in the block)"
    return "recompute"


def plan(model: nn.Module, sites) -> dict[str, str]:
    """{site name: "recompute" or "stored (reason)"}: what ``storage_dtype="recompute"`` does at each site (run-time
    fallbacks aside: gradient checkpointing, torch.compile, ε probes, a failed graph check)."""
    return {s.name: _eligibility(s, "identity") for s in sites}


def attach(modules: dict, site, conn, mode: str) -> str:
    """Wire one site (``modules``: the model's ``dict(named_modules())``) for recompute if it is eligible; returns
    the site's storage ("recompute" or "stored (...)")."""
    label = _eligibility(site, mode)
    if label != "recompute":
        return label
    block = modules[site.block]
    parts = site.block.split(".")
    switches = [m for m in (modules.get(".".join(parts[:i])) for i in range(len(parts) + 1))
                if m is not None and (hasattr(m, "gradient_checkpointing") or hasattr(m, "grad_checkpointing"))]
    state = _SumSite(switches)
    hook_recompute(state, module_at(block, site.skip.path), site.skip.how, module_at(block, site.sum.path),
                   site.sum.how)
    conn.sum_site = state
    return label


def detach(model: nn.Module) -> None:
    """Remove every recompute hook from the model."""
    unhook_recompute(model)
