"""``storage_dtype="recompute"``: z recovered in backward as (x + z) − x instead of being saved.

In most transformer blocks the skip input x and the sum y = x + z are both saved by autograd anyway, for the norms
and linears that consume them (BERT: the query/key/value linears save x, the LayerNorm saves y; pre-LN blocks: the
two norms save them). At such a site the penalty needs no memory of its own:

* the branch end routes z through `_DeferredPenal`, which saves nothing (its backward adds τ·z like the stored op);
* a hook where y is consumed (the input of the norm that follows the add, or the block's output) checks from the
  autograd graph that y really is ``x + z`` (an ``AddBackward0`` whose inputs are the penal node and x, same shape)
  and routes y through `_SumNode`, which saves y and x with ``save_for_backward`` (the same storages the norms save,
  so no new memory) and, in backward, hands ``y − x`` to the branch end's node. `_SumNode` sits downstream of the
  branch end, so its backward always runs first.

Where that is not safe the connection falls back to storing z, per site and per forward pass:

* statically (`plan`): in-place adds (timm ResNet), blocks missing from `SUMS`, sites found by the generic probe or
  named by the user, and residual modes other than "identity" (they rewrite the add) store z;
* at run time: under transformers' gradient checkpointing (the block's tensors are freed and recomputed, so holding
  x and y would keep them alive), under ``torch.compile`` (the hand-off between the two nodes is Python state), while
  the ε probes are on, and when the graph check fails (e.g. a dropout > 0 between z and the add, as in ViT with
  ``hidden_dropout_prob > 0``). Then z is kept alive from the branch end, exactly like the stored path.

z recomputed this way differs from the stored z by the rounding of the add: at most half an ulp of y per element.
"""
from __future__ import annotations

import torch
from torch import nn

from .architectures import INPLACE_ADD, branches_for
from .discovery import module_at, resolve_tensor_spec
from .hooks import remove_hooks

_BERT_SUMS = {"attention": "input@attention.output.LayerNorm",
              "cross_attention": "input@crossattention.output.LayerNorm", "mlp": "input@output.LayerNorm"}
_DECODER_SUMS = {"attention": "input@post_attention_layernorm", "mlp": "output@"}

#: where the block consumes y = x + z, per block class and branch kind: ``input@path`` (y is the first input of the
#: submodule ``path``) or ``output@`` (y is the block's output, element 0 of a tuple). Alternatives separated by ``|``:
#: the first whose module exists wins.
SUMS: dict[str, dict[str, str]] = {
    **{f"{p}Layer": _BERT_SUMS for p in ("Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "Data2VecText",
                                         "Ernie")},
    "GPT2Block": {"attention": "input@ln_cross_attn|input@ln_2", "cross_attention": "input@ln_2", "mlp": "output@"},
    **{f"{p}DecoderLayer": _DECODER_SUMS for p in ("Llama", "Mistral", "Qwen2", "Qwen3", "Olmo")},
    "ViTLayer": {"attention": "input@layernorm_after", "mlp": "output@"},
    "T5LayerSelfAttention": {"attention": "output@"},
    "T5LayerCrossAttention": {"cross_attention": "output@"},
    "T5LayerFF": {"mlp": "output@"},
    "Block": {"attention": "input@norm2", "mlp": "output@"},  # timm ViT-style blocks
}


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
    """Per-site state between the hooks of one forward pass. Picklable (no closures)."""

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


class _XCapture:
    """Forward pre-hook (prepended, so it sees the original inputs) recording the skip input x."""

    def __init__(self, site: _SumSite, how: str):
        self.site, self.how = site, how

    def __call__(self, module, args, kwargs):
        if not (torch.is_grad_enabled() and module.training) or torch.compiler.is_compiling():
            return None
        if self.how == "input_tensor":
            x = args[1] if len(args) > 1 else kwargs.get("input_tensor")
        else:
            x = args[0] if args else kwargs.get("hidden_states")
        self.site.x = x if torch.is_tensor(x) else None
        return None


class _SumInput:
    """Forward pre-hook on the module that consumes y: routes y through `_SumNode`."""

    def __init__(self, site: _SumSite):
        self.site = site

    def __call__(self, module, args, kwargs):
        if self.site.pending is None and self.site.x is None:
            return None
        if args:
            return (self.site.swap(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": self.site.swap(kwargs["hidden_states"])}
        self.site.swap(None)  # unknown call signature: the stored path
        return None


class _SumOutput:
    """Forward hook on the block whose output is y: routes y through `_SumNode`."""

    def __init__(self, site: _SumSite):
        self.site = site

    def __call__(self, module, args, output):
        if self.site.pending is None and self.site.x is None:
            return None
        if isinstance(output, tuple) and output:
            return (self.site.swap(output[0]), *output[1:])
        return self.site.swap(output)


_HOOKS = (_XCapture, _SumInput, _SumOutput)


# ------------------------------------------------------------------------------------------------------------ wiring
def _eligibility(modules: dict, site, mode: str) -> tuple[str, tuple | None]:
    """("recompute", (x how, x path, y how, y path)) or ("stored (reason)", None) for one site."""
    if mode != "identity":
        return "stored (residual mode rewrites the add)", None
    block = modules.get(site.block)
    cls_name, _ = branches_for(type(block)) if block is not None else (None, None)
    if site.inplace or cls_name in INPLACE_ADD:
        return "stored (in-place add)", None
    sums = SUMS.get(cls_name or "", {})
    if site.source != "table" or not site.skip or site.kind not in sums:
        return "stored (block not in hf_penal.recompute.SUMS)", None
    x = resolve_tensor_spec(block, site.skip)
    y = resolve_tensor_spec(block, sums[site.kind])
    if x is None or x[0] not in ("input", "input_tensor") or y is None:
        return "stored (x or x + z not found in the block)", None
    return "recompute", (*x, *y)


def plan(model: nn.Module, sites) -> dict[str, str]:
    """{site name: "recompute" or "stored (reason)"}: what ``storage_dtype="recompute"`` does at each site (run-time
    fallbacks aside: gradient checkpointing, torch.compile, ε probes, a failed graph check)."""
    modules = dict(model.named_modules())
    return {s.name: _eligibility(modules, s, "identity")[0] for s in sites}


def attach(modules: dict, site, conn, mode: str) -> str:
    """Wire one site (``modules``: the model's ``dict(named_modules())``) for recompute if it is eligible; returns
    the site's storage ("recompute" or "stored (...)")."""
    label, where = _eligibility(modules, site, mode)
    if where is None:
        return label
    x_how, x_path, y_how, y_path = where
    block = modules[site.block]
    parts = site.block.split(".")
    switches = [m for m in (modules.get(".".join(parts[:i])) for i in range(len(parts) + 1))
                if m is not None and (hasattr(m, "gradient_checkpointing") or hasattr(m, "grad_checkpointing"))]
    state = _SumSite(switches)
    module_at(block, x_path).register_forward_pre_hook(_XCapture(state, x_how), with_kwargs=True, prepend=True)
    if y_how == "output":
        module_at(block, y_path).register_forward_hook(_SumOutput(state))
    else:
        module_at(block, y_path).register_forward_pre_hook(_SumInput(state), with_kwargs=True)
    conn.sum_site = state
    return label


def detach(model: nn.Module) -> None:
    """Remove every recompute hook from the model."""
    for mod in model.modules():
        remove_hooks(mod, _HOOKS)
