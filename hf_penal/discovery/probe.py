"""The generic probe: one forward pass on example inputs (the user's, or those that `hf_penal.discovery.inputs` builds)
under a TorchFunctionMode that watches every tensor addition. An add inside a numbered layer (a list entry,
``layer.3``, or a module named with its number, ``s1.b2``), one of whose operands is the output z of a submodule M
while another existed before M started, is a residual add and M ends the branch, provided z is used only in that add.
Outside numbered layers (XLM adds ``x + attentions[i](x)`` in the model's own forward) M must be a list entry
computed from the stream it is added to, and its index is the layer. A position embedding added to the normed stream
(``q = norm(x) + pos``, the norm's output also attention's value or the next residual) is not a branch. A chain of
adds counts as one add of all its operands (parallel blocks, ``x + attn(ln1(x)) + mlp(ln2(x))``, give one site per
branch), and values keep their identity through shape-only ops (view, permute, roll, pad, slicing: windowed
attention) and scaling by a constant (a number, a learned scale, or a gate computed from parameters alone:
tanh(alpha)). A probe that cannot run the model raises `ProbeFailedError`."""
from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .inputs import probe_inputs
from .site import ProbeFailedError

_ADD_NAMES = {"add", "__add__", "__radd__", "__iadd__", "add_"}
# ops that move, copy or crop values without computing new ones: a branch output (and a skip) keeps its identity
# through them, so windowed attention that partitions, pads, rolls and crops around the branch does not hide it
_SHAPE_OPS = {"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten", "squeeze", "unsqueeze",
              "roll", "pad", "__getitem__", "narrow", "movedim", "swapaxes", "view_as", "reshape_as", "to", "type",
              "type_as", "float", "half", "bfloat16", "clone", "dropout", "t"}
# a branch output scaled by a constant before the add (Granite's residual_multiplier, Inception-ResNet's scale,
# a per-channel layer scale): the branch is still found, and its note says the penalty is on the unscaled output
_SCALE_OPS = {"mul", "__mul__", "__rmul__", "div", "__truediv__"}
_NOT_BRANCH = (nn.Embedding,)
# the last name of a module that computes the skip, not a branch (ResNet's downsample, ConvNeXt's shortcut)
_SKIP_NAME = re.compile(r"shortcut|short_cut|downsample|skip|identity", re.I)
# a mixture of experts' always-on experts, added to the routed experts' output (both computed from the block's
# input): that sum is the MLP's own, not a residual add
_NOT_BRANCH_NAME = re.compile(r"^shared_experts?$|^shared_mlp$", re.I)


_NUMBERED_PART = re.compile(r"^\d+$|^[A-Za-z]+_?\d+$")


def _numbered(name: str) -> bool:
    """Whether a module name has a numbered part: a ModuleList / Sequential index (``layer.3``) or a name ending in
    its number (RegNet's ``s1.b2``, ``group_1.block_2``)."""
    return any(_NUMBERED_PART.match(p) for p in name.split("."))


def _inside(name: str, owner: str) -> bool:
    """Whether module `name` is inside module `owner` ("" is the model itself)."""
    return name.startswith(owner + ".") if owner else bool(name)


def _relative(name: str, owner: str) -> str:
    """Module `name` relative to `owner`, where it is inside it; else `name`."""
    return name[len(owner) + 1:] if owner and name.startswith(owner + ".") else name


def _list_index(name: str, owner: str) -> str | None:
    """The first index in the name of module `name` below `owner` (``attentions.3`` -> "3": a ModuleList entry),
    or None."""
    return next((p for p in _relative(name, owner).split(".") if p.isdigit()), None)


def _kind_from_text(text: str) -> str | None:
    low = text.lower()
    if re.search(r"cross|encdec|enc_dec|encoder_attn|enc_attn", low):
        return "cross_attention"
    if re.search(r"attn|attention", low):
        return "attention"
    if re.search(r"mlp|ffn|feed_?forward|\bff\b|fc|intermediate|dense", low):
        return "mlp"
    return None


def guess_kind(name: str, module: nn.Module, owner: str = "", owner_module: nn.Module | None = None,
                inner: Iterable[str] = ()) -> str:
    """Kind of a probed site, from (in order) its name relative to the block, the block's class, the block's name,
    the names of the modules inside it that returned the same value (`inner`, e.g. the attention under a drop path).
    """
    block = type(owner_module).__name__ if owner_module is not None else ""
    for text in (_relative(name, owner), block, owner, *(_relative(n, owner) for n in inner)):
        kind = _kind_from_text(text)
        if kind:
            return kind
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)):
        return "conv"
    return "mlp"


@dataclasses.dataclass(frozen=True)
class _Value:
    """What the probe knows about a tensor that some module returned (possibly re-laid out since)."""

    chain: tuple  # ((module name, output index, numel of that output), ...): modules that returned it, inner first
    start: int  # when its computation began: the innermost module's start, or its own birth for a pass-through
    in_born: int  # birth of the outermost module's input (where a shortcut module's skip came from)
    scaled_after: int = 0  # it was scaled by a constant after the first `scaled_after` modules of the chain
    fed_by: tuple = ()  # per module of the chain: (birth of its first input, birth of that input's module's input)


def _key(v: _Value) -> tuple:
    """One module output (one call of its innermost module), whatever it was re-laid out or passed through since."""
    return v.chain[0], v.start


def _version(t) -> int | None:
    """A tensor's version counter (it counts in-place writes), None for no tensor or one without a counter."""
    try:
        return t._version if t is not None else None
    except RuntimeError:  # an inference tensor
        return None


def _inplace_call(func, args, kwargs) -> bool:
    """Whether the call asks to write in place (``inplace=True``, or an in-place variant: a name ending in ``_``): an
    in-place dropout returns its input untouched in eval, where the probe runs, and overwrites it in training."""
    name = getattr(func, "__name__", "")
    if kwargs.get("inplace") or (name.endswith("_") and not name.endswith("__")):
        return True
    try:
        return bool(inspect.signature(func).bind_partial(*args, **kwargs).arguments.get("inplace"))
    except (TypeError, ValueError):  # a builtin without a signature, or arguments it does not bind
        return False


def _tensor_args(args: tuple, kwargs: dict) -> list:
    """An op's tensor arguments, also those inside list / tuple arguments (as torch.cat takes them), in order."""
    return [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple)) else (a,))
            if torch.is_tensor(t)]


def _per_sample(c: torch.Tensor, out: torch.Tensor) -> bool:
    """A factor with the batch dimension of what it scales (a gate computed from the input, like FocalNet's focal
    gates), not a constant or learned scale: a branch times it is a gated term, not a residual branch."""
    return c.dim() == out.dim() and out.dim() > 1 and c.shape[0] == out.shape[0] > 1


class _AddWatcher(TorchFunctionMode):
    """Watches one forward pass. An add inside a numbered layer whose operands (a chain of adds counts as one add of
    all its operands) include the output z of a submodule M and a tensor that existed before M started is a
    residual add, and M ends a branch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.clock = 0
        self.born: dict[int, int] = {}  # id -> birth time (through shape-only ops: the original's)
        self.keep: list = []  # keeps probed tensors alive so ids stay unique
        self.values: dict[int, _Value] = {}
        self.versions: dict[int, int] = {}  # id -> version counter when a module returned it
        self.mutated: set[tuple] = set()  # chains of module outputs that an in-place op modified later
        self.terms: dict[int, tuple] = {}  # id(sum) -> (owner, operands of the chain of adds that made it)
        self.stack: list[tuple] = []  # (module name, start, birth of its first input)
        self.calls: dict[str, int] = {}
        self.returned = ""  # the module that returned last
        self.after: dict[str, set] = {}  # module -> the modules that had returned last when it was called
        self.branches: dict[int, tuple] = {}  # id(z) -> (owner, chain, _Value, inplace, numel added)
        self.candidates: set[str] = set()  # branch ends of residual adds outside numbered layers: for sites=[...]
        self.loose: set[str] = set()  # modules whose output met a same-shape add (suggestions when no candidate)
        self.modules = dict(model.named_modules())
        self.uses: dict[tuple, int] = {}  # _key(value) -> ops that computed something new from it (an add included)
        self.uses_before: dict[int, int] = {}  # id(z) -> its uses before an add wrote into it in place (z += x)
        self.learned: set[int] = set()  # ids of tensors computed from parameters alone (`_note_learned`)
        self.summed: dict[int, set] = {}  # id(sum) -> births of what its chain of adds summed (`_on_add`)
        self.layers: dict[int, str] = {}  # id(z) -> layer of a branch added outside numbered layers (`_stream_index`)

    def _born_of(self, t) -> int:
        return self.born.get(id(t), -1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        first = args[0] if args and torch.is_tensor(args[0]) else None
        version = _version(first)
        out = func(*args, **kwargs)
        self.clock += 1
        if not torch.is_tensor(out):
            return out
        if name in _ADD_NAMES and len(args) >= 2 and all(torch.is_tensor(a) for a in args[:2]):
            self._on_add(args[0], args[1], out, inplace=name in ("__iadd__", "add_"))
        ts = _tensor_args(args, kwargs)
        if id(out) in self.born:  # the same tensor: in place, or returned unchanged (eval dropout, contiguous)
            if id(out) in self.values and (out is not first or version is None or _version(out) != version
                                           or _inplace_call(func, args, kwargs)):
                self.mutated.add(self.values[id(out)].chain)
            self._count_uses(ts, out)
            return out
        self.born[id(out)] = self.clock
        self.keep.append(out)
        self._note_learned(ts, out)
        src = args[0] if args and torch.is_tensor(args[0]) else None
        if name in _SHAPE_OPS and src is not None:
            self.born[id(out)] = self._born_of(src)
            if id(src) in self.values:
                self.values[id(out)] = self.values[id(src)]
        elif name in _SCALE_OPS and len(args) >= 2:
            self._on_scale(args[0], args[1], out, name)
        self._count_uses(ts, out)
        return out

    def _count_uses(self, ts: list, out: torch.Tensor) -> None:
        """One more use of each module output among the op's tensor arguments `ts`, whole (a slice of it, as where
        ReXNet adds the skip to its first channels and passes the others on, is not counted), unless the op's result
        is that same value (re-laid out, scaled by a constant, modified in place)."""
        kept = self.values.get(id(out))
        for t in ts:
            v = self.values.get(id(t))
            if v is not None and t.numel() == v.chain[0][2] and (kept is None or _key(kept) != _key(v)):
                self.uses[_key(v)] = self.uses.get(_key(v), 0) + 1

    def _note_learned(self, ts: list, out: torch.Tensor) -> None:
        """Records `out` as learned (computed from parameters alone, through any ops or modules: a gate
        ``tanh(alpha)`` of an ``nn.Tanh`` module on a parameter) where every tensor argument (`ts`) is a parameter or
        learned, so that a branch scaled by it counts as scaled by a constant (`_on_scale`)."""
        if ts and all(isinstance(t, nn.Parameter) or id(t) in self.learned for t in ts):
            self.learned.add(id(out))

    def _on_scale(self, a, b, out, name):
        for t, c in ((a, b), (b, a)) if name in ("mul", "__mul__", "__rmul__") else ((a, b),):
            v = self.values.get(id(t)) if torch.is_tensor(t) else None
            if v is None or t.shape != out.shape:
                continue
            constant = isinstance(c, (int, float)) or (torch.is_tensor(c) and c.numel() < out.numel()
                                                       and (id(c) not in self.values or id(c) in self.learned)
                                                       and not _per_sample(c, out))
            if constant:
                self.values[id(out)] = dataclasses.replace(v, scaled_after=len(v.chain))
                self.born[id(out)] = self._born_of(t)
            return

    def _operands(self, t, owner):
        got = self.terms.get(id(t))
        if got is not None and got[0] == owner:
            return got[1]
        v = self.values.get(id(t))
        born = self._born_of(t)
        if v is not None and _SKIP_NAME.search(v.chain[-1][0].rsplit(".", 1)[-1]):
            born = min(born, v.in_born)  # a shortcut module's output stands for the skip it was computed from
        return [(id(t), born, v)]

    def _on_add(self, a, b, out, inplace):
        if a.shape != b.shape or not a.is_floating_point():
            return
        owner = self.stack[-1][0] if self.stack else ""  # "": the model's own forward
        ta, tb = self._operands(a, owner), self._operands(b, owner)
        terms = ta + tb
        self.terms[id(out)] = (owner, terms)
        # births of the tensors this chain of adds summed, the partial sums included (the stream of a pre-norm
        # loop ``x = x + mlps[i](norms[i](x))`` in one forward is one chain): what a branch may be computed from
        summed = {self._born_of(a), self._born_of(b)} | self.summed.get(id(a), set()) | self.summed.get(id(b), set())
        self.summed[id(out)] = summed
        for _, _, v in terms:
            if v is not None:
                self.loose.add(v.chain[-1][0])
        if any(v is not None and _NOT_BRANCH_NAME.search(v.chain[-1][0].rsplit(".", 1)[-1]) for _, _, v in terms):
            return  # routed + shared experts: the MLP's own sum, whichever comes first
        for i, (tid, _, v) in enumerate(terms):
            if v is None or tid in self.branches:
                continue
            chain = tuple(c for c in v.chain if _inside(c[0], owner)
                          and not isinstance(self.modules[c[0]], _NOT_BRANCH))
            if not chain or _SKIP_NAME.search(chain[-1][0].rsplit(".", 1)[-1]):
                continue
            if not any(born < v.start for j, (_, born, _) in enumerate(terms) if j != i):
                continue
            numbered = _numbered(owner)
            index = None if numbered else self._stream_index(terms, i, owner, summed, self.summed.get(tid, set()))
            if numbered or index is not None:
                into = inplace and i == 0 and len(ta) == 1
                self.branches[tid] = (owner, chain, v, into, a.numel())
                if index is not None:
                    self.layers[tid] = f"{owner}.{index}" if owner else index
                if into:  # z += x: z is the stream from here on, so only its uses before the add count
                    self.uses_before[tid] = self.uses.get(_key(v), 0)
            else:  # a residual add outside numbered layers: only a suggestion
                self.candidates.add(chain[-1][0])

    @staticmethod
    def _stream_index(terms: list, i: int, owner: str, summed: set, inner: set) -> str | None:
        """A residual add in a forward outside numbered layers (XLM's model forward: ``x = x + attentions[i](x)``,
        over ModuleLists of branches) counts where the branch module is numbered, a ModuleList entry, and is
        computed from the stream it is added to: its input is another operand, or the output of a module whose
        input is (a pre-norm). Its layer is that entry's index. Adds of sibling outputs (an FPN's lateral conv plus
        the upsampled coarser level) are not residual and stay suggestions; nor is a module output that is itself a
        sum with the stream it is added to (`inner`: BLT's cross-attention returns x + o, which its encoder adds to x
        again; the branch is o, found inside)."""
        v = terms[i][2]
        skips = {born for j, (_, born, _) in enumerate(terms) if j != i and born >= 0}
        if skips & inner:
            return None
        skips = skips | {b for b in summed if b >= 0}
        for link, fed in zip(v.chain, v.fed_by):
            index = _list_index(link[0], owner) if _inside(link[0], owner) else None
            if index is not None and skips.intersection(fed):
                return index
        return None

    def pre_hook(self, name):
        def hook(mod, args, kwargs):
            self.clock += 1
            first = next((t for t in (*args, *kwargs.values()) if torch.is_tensor(t)), None)
            v = self.values.get(id(first)) if first is not None else None
            self.stack.append((name, self.clock, self._born_of(first) if first is not None else -1,
                               v.in_born if v is not None else -1))
            self.calls[name] = self.calls.get(name, 0) + 1
            self.after.setdefault(name, set()).add(self.returned)
        return hook

    def post_hook(self, name):
        def hook(mod, args, out):
            _, start, in_born, src_born = self.stack.pop()
            self.returned = name
            if torch.is_tensor(out):
                t, index = out, None
            elif isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                t, index = out[0], 0
            else:
                return
            prev = self.values.get(id(t))
            if prev is not None and self.versions.get(id(t), t._version) != t._version:
                self.mutated.add(prev.chain)
                prev = None  # modified in place (an in-place activation): this module computes a new value
            self.versions[id(t)] = t._version
            link = (name, index, t.numel())
            if prev is not None:  # a pass-through (dropout, drop path, identity) of a known value
                self.values[id(t)] = dataclasses.replace(prev, chain=prev.chain + (link,), in_born=in_born,
                                                         fed_by=prev.fed_by + ((in_born, src_born),))
            else:
                self.values[id(t)] = _Value((link,), min(start, self._born_of(t)), in_born,
                                            fed_by=((in_born, src_born),))
            self.keep.append(t)
        return hook

    def _mutated(self, chain: tuple, k: int) -> bool:
        """Whether the output of the chain's k-th module (the same tensor through the pass-throughs after it) was
        modified in place later, also through a scaled copy's source (NF-Net's `out.mul_(skipinit_gain)`)."""
        return any(chain[k] in m for m in self.mutated)  # a chain continues only through the same tensor

    def sites(self) -> list[dict]:
        """One site per branch: the outermost module of its chain that, at every call, is the site of a branch (a
        module with other uses, like Swin's one `dropout` that serves both branches, one of them inside a longer
        chain, is passed over for the module inside it)."""
        # a branch output that is also used outside its add (a normed stream that is also attention's value or the
        # next residual, plus a position embedding: ``q = norm(x) + pos``; a Res2Net split's output, also a part of
        # the block's output) is the stream, not a branch; added into in place (``z += x``), only its uses before
        # the add count (after it, z is the stream)
        def alone(tid, b):
            return self.uses_before[tid] == 0 if tid in self.uses_before else self.uses.get(_key(b[2]), 0) <= 1
        self.branches = {tid: b for tid, b in self.branches.items() if alone(tid, b)}
        level = {tid: len(b[1]) - 1 for tid, b in self.branches.items()}
        while True:
            picks: dict[str, int] = {}
            for tid, b in self.branches.items():
                picks[b[1][level[tid]][0]] = picks.get(b[1][level[tid]][0], 0) + 1
            bad = [tid for tid, b in self.branches.items()
                   if level[tid] > 0 and picks[b[1][level[tid]][0]] != self.calls[b[1][level[tid]][0]]]
            if not bad:
                break
            for tid in bad:
                level[tid] -= 1
        split = self._shared_ends(level)
        found: dict[str, dict] = {}
        for tid, (owner, chain, v, inplace, numel) in self.branches.items():
            k = level[tid]
            name, index, size = chain[k]
            end = ""
            if tid in split:  # a module ending several branches: the site is named after the branch's own module
                end, name = name, chain[k - 1][0]
            notes = []
            if k < len(chain) - 1:
                notes.append(f"passes through {chain[-1][0]!r} after the site (a module with other uses): exact "
                             f"while that is the identity (dropout p=0, eval)")
            if k < v.scaled_after:
                notes.append("scaled after the site: the penalty is on the unscaled branch output")
            if size != numel:
                notes.append(f"re-laid out after the site ({size} elements, {numel} added): the penalty also covers "
                             f"padding")
            kind = guess_kind(name, self.modules[name], owner, self.modules.get(owner),
                               [c[0] for c in reversed(chain[:k - 1 if end else k])])
            site = dict(name=name, block=owner, kind=kind, output_index=index,
                        inplace=(inplace and k == len(chain) - 1) or self._mutated(chain, k), skip=None,
                        source="probe", note="; ".join(notes), end=end)
            if tid in self.layers:
                site["layer"] = self.layers[tid]
            found.setdefault(name, site)
        return list(found.values())

    def _shared_ends(self, level: dict) -> set:
        """The branches (tensor ids) whose chosen module also ends another branch of the same block (Phi's one
        `resid_dropout` after both the attention and the MLP) and can be told apart at run time: each call of that
        module came right after one of the branches' own modules (the module inside it in each chain) returned, so
        the branch whose module returned last owns the call (`hf_penal.hooks.SharedEndHook`)."""
        groups: dict[tuple, list] = {}
        for tid, (owner, chain, *_) in self.branches.items():
            groups.setdefault((owner, chain[level[tid]][0]), []).append(tid)
        split = set()
        for (_, end), tids in groups.items():
            inner = [self.branches[t][1][level[t] - 1][0] if level[t] > 0 else None for t in tids]
            if (len(tids) > 1 and None not in inner and len(set(inner)) == len(inner)
                    and self.after.get(end, {None}) <= set(inner)):
                split.update(tids)
        return split


def _as_call(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if torch.is_tensor(example_inputs):
        return (example_inputs,), {}
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2 and isinstance(example_inputs[0], (tuple, list))
            and isinstance(example_inputs[1], dict)):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(f"example_inputs must be a tensor, a dict of keyword inputs, a tuple of positional inputs or "
                    f"(args, kwargs); got {type(example_inputs).__name__}")


def _run_probe(model: nn.Module, args: tuple, kwargs: dict) -> _AddWatcher:
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    args = tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    watcher = _AddWatcher(model)
    for t in _tensor_args(args, kwargs):  # the inputs are born first (parameters and buffers never are: -1), so a
        watcher.born[id(t)] = 0  # branch computed from an input is told from one added to a parameter
        watcher.keep.append(t)
    handles = []
    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(watcher.pre_hook(name), with_kwargs=True))
            handles.append(mod.register_forward_hook(watcher.post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), watcher:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return watcher


def _describe(args: tuple, kwargs: dict) -> str:
    show = [f"{tuple(a.shape)}" if torch.is_tensor(a) else type(a).__name__ for a in args]
    show += [f"{k}={tuple(v.shape)}" if torch.is_tensor(v) else f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return ", ".join(show)


def _probe(model: nn.Module, example_inputs: Any = None) -> _AddWatcher:
    """Run the probe on the user's inputs, or on the first candidate inputs that the model accepts. Raises
    `ProbeFailedError` (chaining the model's own exception) when it cannot run the model."""
    fix = ("pass example_inputs=... (a tensor, a dict of keyword inputs or (args, kwargs) that the model's forward "
           "accepts) so the probe can run it, or name the branch-end submodules with sites=[...]")
    model_name = type(model).__name__
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ProbeFailedError(f"the generic probe cannot run {model_name}: its parameters are on the meta device; "
                               f"load the weights first, or {fix}")
    cands = [_as_call(example_inputs)] if example_inputs is not None else probe_inputs(model)
    if not cands:
        raise ProbeFailedError(f"the generic probe cannot build example inputs for {model_name} (its blocks are not "
                               f"in hf_penal's architecture table): {fix}")
    first = None
    for args, kwargs in cands:
        try:
            return _run_probe(model, args, kwargs)
        except Exception as e:  # noqa: BLE001 - the next candidate may fit; the first error is reported
            if first is None:
                first = (e, _describe(args, kwargs))
    e, shown = first
    given = "the given example_inputs" if example_inputs is not None else f"example inputs built for it ({shown})"
    raise ProbeFailedError(f"the generic probe failed to run {model_name} on {given}: {type(e).__name__}: {e}. "
                           f"Its blocks are not in hf_penal's architecture table, so {fix}.") from e


def probe_sites(model: nn.Module, example_inputs: Any = None) -> list[dict]:
    """Find residual adds by running one forward pass; see the module docstring. Raises `ProbeFailedError` when the
    model cannot be run."""
    found = _probe(model, example_inputs).sites()
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(found, key=lambda s: order[s["name"]])


def branch_candidates(model: nn.Module, example_inputs: Any = None) -> list[str]:
    """Names worth trying as ``sites=[...]`` when discovery finds no residual site: branch ends of residual adds
    outside numbered layers, else any submodule whose output enters an addition with a tensor of the same shape.
    Empty when the probe cannot run the model."""
    try:
        watcher = _probe(model, example_inputs)
    except ProbeFailedError:
        return []
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    names = watcher.candidates or watcher.loose
    return sorted((n for n in names if n in order and not isinstance(watcher.modules[n], _NOT_BRANCH)),
                  key=order.__getitem__)
