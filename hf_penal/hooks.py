"""The forward hooks hf_penal puts on a model, and their removal: the one place that edits torch's hook dicts.

* `SiteHook`, on a branch-end module: routes the branch output z through the site's penal connection and, with a
  residual mode, hands it to the site's `Rendezvous` (which may rewrite it into z' = y − x with the mode layer).
* `SharedEndHook` + `ArmHook`, where one module ends several branches (a site's ``end``): the branch module that
  returned last owns the shared module's next call.
* `SkipInputCapture` / `ShortcutCapture`, where the architecture table says a block's skip input x lives: hand x to
  the `Rendezvous` (or rewrite a shortcut computed after the branch into x' = y − z).
* `RecomputeXCapture`, `SumInputHook` / `SumOutputHook` for ``storage_dtype="recompute"`` (`hf_penal.recompute`).

`taken` / `first_input` are the one rule for taking a tensor from a forward call.

Every hook is a small picklable object (no closures), so deepcopy and pickle carry it. torch returns a handle per
hook, but handles do not survive deepcopy or pickle, so hooks are found again by their type when removed.
"""
from __future__ import annotations

import torch
from torch import nn

from .modes import ResidualMode


def guard_hooks_under_compile() -> None:
    """Make torch.compile guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards = False``).

    With dynamo's default (True) a compiled graph is reused for any module of the same class whatever its hooks, so
    a model penalized after it was compiled, or compiled in the same process as a plain model of its class, silently
    runs the graph traced without (or with another model's) penal hooks: plain gradients, no error. Called by
    ``import hf_penal`` and by `surgery.apply`; it changes dynamo's setting for the whole process (guards then also
    check hook dicts: a recompile when hooks change, e.g. after `hf_penal.apply` or `hf_penal.remove`)."""
    import torch._dynamo  # noqa: PLC0415 - already imported by torch.compile users and by transformers

    if getattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False):
        torch._dynamo.config.skip_nnmodule_hook_guards = False


CONNECTION = "penal_connection"  # child name of a site's PenalConnection
MODE = "residual_mode"  # child name of a site's residual-mode module


class Rendezvous:
    """Where a site's skip input x and branch output z meet in one forward pass, so that its residual mode (the
    pure layer `mode`) can rewrite whichever arrives second: z into z' = y − x, or, where the shortcut runs after the
    branch (``x_first`` False), the shortcut's output into x' = y − z. The pending tensor is consumed at once, so
    repeated calls of a block and gradient-checkpointing recomputes see fresh values; it never travels with a copy."""

    def __init__(self, mode: ResidualMode, site: str, x_first: bool = True):
        self.mode, self.site, self.x_first = mode, site, x_first
        self.pending = None

    def skip_input(self, x: torch.Tensor | None) -> None:
        self.pending = x

    def branch_output(self, z: torch.Tensor) -> torch.Tensor:
        if not self.x_first:
            self.pending = z
            return z
        x, self.pending = self.pending, None
        if x is None:
            raise RuntimeError(f"hf_penal: residual mode at {self.site!r} got the branch output before its skip input; "
                               f"the block no longer runs as hf_penal.architectures describes")
        return self.mode.branch_delta(x, z)

    def shortcut_output(self, x: torch.Tensor) -> torch.Tensor:
        z, self.pending = self.pending, None
        if z is None:
            raise RuntimeError(f"hf_penal: residual mode at {self.site!r} got the shortcut before the branch output; "
                               f"the block no longer runs as hf_penal.architectures describes")
        return self.mode.skip_delta(x, z)

    def __getstate__(self):
        return {**self.__dict__, "pending": None}


class SiteHook:
    """Forward hook at a branch-end module: z → connection(z) → mode. The penalty is on z, the branch output,
    whatever the mode. `host`: the module holding the connection / mode children (None: the hooked module itself);
    `suffix`: appended to their names when the host is the parent of a container branch; `join`: the site's
    `Rendezvous` with its skip input (None: no residual mode)."""

    def __init__(self, index: int | None, host: nn.Module | None = None, suffix: str = "",
                 join: Rendezvous | None = None):
        self.index = index
        self.host = host
        self.suffix = suffix
        self.join = join

    def __call__(self, module, args, output):
        return _route(output, self.index, module if self.host is None else self.host, self.suffix, self.join)


def _route(output, index: int | None, host: nn.Module, suffix: str, join: Rendezvous | None):
    """`output` with z (at `index`) routed through the connection that `host` holds under `suffix`, then the site's
    residual mode (`join`)."""
    conn = host._modules.get(CONNECTION + suffix)
    if index is None and isinstance(output, (tuple, list)):
        index = 0
    z = output if index is None else output[index]
    if conn is not None and conn.training:
        z = conn(z)
    if join is not None:
        z = join.branch_output(z)
    if index is None:
        return z
    out = list(output)
    out[index] = z
    return type(output)(out) if isinstance(output, tuple) else out


class SharedEndHook:
    """Forward hook on a module that ends several branches (Phi applies one `resid_dropout` to the attention and to
    the MLP output; a site's ``end``): each call belongs to the branch whose own module returned last (its `ArmHook`
    says which), and z goes through that site's connection and mode. A call that no armed branch precedes is left
    alone. Discovery only splits a shared module this way when every call of it came right after a branch module."""

    def __init__(self, index: int | None):
        self.index = index
        self.armed = None  # (host, suffix, join) of the branch whose module returned last

    def __call__(self, module, args, output):
        armed, self.armed = self.armed, None
        if armed is None:
            return None
        return _route(output, self.index, *armed)

    def __getstate__(self):  # a pending arm never travels with a copy
        return {**self.__dict__, "armed": None}


class ArmHook:
    """Forward hook on a branch's own module whose z is taken at a shared module called after it: marks the next
    call of that module (`SharedEndHook`) as this branch's. `host`/`suffix`/`join` as in `SiteHook`."""

    def __init__(self, end: SharedEndHook, host: nn.Module | None = None, suffix: str = "",
                 join: Rendezvous | None = None):
        self.end, self.host, self.suffix, self.join = end, host, suffix, join

    def __call__(self, module, args, output):
        self.end.armed = (module if self.host is None else self.host, self.suffix, self.join)


def first_input(args: tuple, kwargs: dict) -> tuple[int | str | None, torch.Tensor | None]:
    """Where a forward call's first input is: (0, args[0]), else the ``hidden_states`` / ``x`` keyword or the first
    tensor keyword, as (keyword, tensor); (None, None) when the call has no tensor input."""
    if args:
        return 0, args[0]
    for key in ("hidden_states", "x"):
        if key in kwargs:
            return key, kwargs[key]
    return next(((k, v) for k, v in kwargs.items() if torch.is_tensor(v)), (None, None))


def taken(how: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor an input `Take` (`hf_penal.architectures`; ``how`` "input" or "input_tensor") names in a forward
    call's ``(args, kwargs)``, or None: the one "take this tensor from the call" rule of every capture hook."""
    x = (args[1] if len(args) > 1 else kwargs.get("input_tensor")) if how == "input_tensor" else \
        first_input(args, kwargs)[1]
    return x if torch.is_tensor(x) else None


def with_first_input(args: tuple, kwargs: dict, value) -> tuple[tuple, dict] | None:
    """``(args, kwargs)`` with the first input (`first_input`) replaced by `value`; None when there is none."""
    key, _ = first_input(args, kwargs)
    if key is None:
        return None
    if key == 0:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, key: value}


class SkipInputCapture:
    """Forward pre-hook (with kwargs) handing the skip input x to a site's `Rendezvous`: the block's ``input_tensor``
    argument (``how="input_tensor"``), else the module's first input."""

    def __init__(self, join: Rendezvous, how: str):
        self.join, self.how = join, how

    def __call__(self, module, args, kwargs):
        self.join.skip_input(taken(self.how, args, kwargs))


class ShortcutCapture:
    """Forward hook on a shortcut module that runs after the branch: rewrites its output x into y − z."""

    def __init__(self, join: Rendezvous):
        self.join = join

    def __call__(self, module, args, output):
        return self.join.shortcut_output(output)


def hook_site(module: nn.Module, index: int | None, host: nn.Module | None = None, suffix: str = "",
              end: nn.Module | None = None, join: Rendezvous | None = None) -> None:
    """Route a site's z through its connection / mode: a `SiteHook` on its branch-end `module`, or, when z is the
    output of a module `end` that ends several branches, an `ArmHook` on `module` and one `SharedEndHook` on `end`
    (shared by the sites that end there)."""
    if end is None:
        module.register_forward_hook(SiteHook(index, host, suffix, join))
        return
    shared = next((h for h in end._forward_hooks.values() if isinstance(h, SharedEndHook)), None)
    if shared is None:
        shared = SharedEndHook(index)
        end.register_forward_hook(shared)
    module.register_forward_hook(ArmHook(shared, host, suffix, join))


def unhook_site(module: nn.Module, end: nn.Module | None = None) -> None:
    """Remove what `hook_site` registered for a site."""
    remove_hooks(module, (SiteHook, ArmHook))
    if end is not None:
        remove_hooks(end, (SharedEndHook,))


_CAPTURES = (SkipInputCapture, ShortcutCapture)


def hook_skip(module: nn.Module, how: str, join: Rendezvous) -> None:
    """Hand a site's skip input x, taken at `module` as `how` says (a `Take` of `hf_penal.architectures`), to its
    `Rendezvous`: the module's input (pre-hook), or its output where the shortcut runs after the branch."""
    if how == "output":
        module.register_forward_hook(ShortcutCapture(join))
    else:
        module.register_forward_pre_hook(SkipInputCapture(join, how), with_kwargs=True)


def unhook_skips(model: nn.Module) -> None:
    """Remove every skip-input capture hook (and its rendezvous) from the model."""
    for mod in model.modules():
        remove_hooks(mod, _CAPTURES)


# ------------------------------------------------------------------------------------- storage_dtype="recompute"
# `state` is the site's `hf_penal.recompute` state: ``x`` (the captured skip input), ``pending`` (z waiting for its
# sum) and ``swap(y)`` (y routed through the node that recomputes z in backward).
class RecomputeXCapture:
    """Forward pre-hook (prepended, so it sees the original inputs) recording the skip input x."""

    def __init__(self, state, how: str):
        self.state, self.how = state, how

    def __call__(self, module, args, kwargs):
        if not (torch.is_grad_enabled() and module.training) or torch.compiler.is_compiling():
            return None
        self.state.x = taken(self.how, args, kwargs)
        return None


class SumInputHook:
    """Forward pre-hook on the module that consumes y = x + z as its first input: routes y through ``state.swap``."""

    def __init__(self, state):
        self.state = state

    def __call__(self, module, args, kwargs):
        if self.state.pending is None and self.state.x is None:
            return None
        _, y = first_input(args, kwargs)
        if y is None:
            self.state.swap(None)  # unknown call signature: the stored path
            return None
        return with_first_input(args, kwargs, self.state.swap(y))


class SumOutputHook:
    """Forward hook on the module whose output (element 0 of a tuple) is y = x + z: routes y through ``state.swap``."""

    def __init__(self, state):
        self.state = state

    def __call__(self, module, args, output):
        if self.state.pending is None and self.state.x is None:
            return None
        if isinstance(output, tuple) and output:
            return (self.state.swap(output[0]), *output[1:])
        return self.state.swap(output)


_RECOMPUTE = (RecomputeXCapture, SumInputHook, SumOutputHook)


def hook_recompute(state, x_module: nn.Module, x_how: str, y_module: nn.Module, y_how: str) -> None:
    """Register a recompute site's hooks: x taken (`x_how`) at `x_module`, y at `y_module` (its first input, or its
    output for ``y_how="output"``)."""
    x_module.register_forward_pre_hook(RecomputeXCapture(state, x_how), with_kwargs=True, prepend=True)
    if y_how == "output":
        y_module.register_forward_hook(SumOutputHook(state))
    else:
        y_module.register_forward_pre_hook(SumInputHook(state), with_kwargs=True)


def unhook_recompute(model: nn.Module) -> None:
    """Remove every recompute hook from the model."""
    for mod in model.modules():
        remove_hooks(mod, _RECOMPUTE)


def remove_hooks(module: nn.Module, kinds: tuple) -> None:
    """Remove the forward hooks and forward pre-hooks of `module` that are instances of `kinds`."""
    for hooks, extra in ((module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
                         (module._forward_hooks, (module._forward_hooks_with_kwargs,
                                                  module._forward_hooks_always_called))):
        for key in [k for k, h in hooks.items() if isinstance(h, kinds)]:
            del hooks[key]
            for d in extra:
                d.pop(key, None)
