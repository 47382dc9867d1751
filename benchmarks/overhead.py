"""Overhead of hf_penal against the plain model and against the paper's one-line formulation.

For each model, the arms are interleaved in one process on one set of weights (warm-up first, then rounds
A B C D E, A B C D E, ...; the arm is switched by surgery between measurements, which is not timed):

* ``plain``: the model as built;
* ``penal``: ``hf_penal.apply(model, tau=3e-4)``;
* ``penal bf16``: the same with ``storage_dtype="bfloat16"`` (z kept in bf16 for backward);
* ``penal fp8``: the same with ``storage_dtype="float8_e4m3fn"`` (8-bit z with a per-tensor scale);
* ``penal recompute``: the same with ``storage_dtype="recompute"`` (z = (x + z) − x in backward where the block keeps
  both; stored elsewhere, e.g. timm ResNet's in-place adds and timm blocks, which are not in the recompute table);
* ``one-line``: the paper's formulation written from its description: a forward hook on every branch-end module
  (the same sites, from ``hf_penal.sites(model)``) that clones z and registers ``z.register_hook(lambda g: g + tau *
  z_clone)``;
* ``penal + ε``: hf_penal with the Markov-efficiency diagnostics on (``conn.measure_efficiency = True``).

Figures: training-step time (forward + backward + AdamW step) as a ratio to plain (median over rounds of the
per-round ratio), eval forward ratio (``model.eval()``, ``torch.no_grad()``), peak memory of a training step above
plain's (bytes, as a fraction of the one-line formulation's, and as a percent of plain's whole peak: parameters,
gradients and AdamW state plus the step's own peak), the gradient error of each storage dtype against fp32 storage,
surgery time (also on a 32-layer, 4096-wide Llama built on the meta device), and optionally the torch.compile step
ratio per backend (``--compile aot_eager inductor``).

    python benchmarks/overhead.py                      # full sizes (bert-base, gpt2-small, vit_small, resnet50)
    python benchmarks/overhead.py --preset small       # small models, a few minutes on 2 CPU cores
    python benchmarks/overhead.py --device cuda        # the GPU column (names the card)
    python benchmarks/overhead.py --compile aot_eager inductor   # add torch.compile step ratios (minutes per arm)
    python benchmarks/overhead.py --preset small --compile-only --compile inductor --threads 1
        # only the compile column: penal vs plain, both compiled (step and compile-time ratios, graph breaks,
        # recompiles when τ changes); section overhead-DEVICE-compile

The tables go into BENCHMARKS.md between ``<!-- overhead-DEVICE:begin -->`` and ``<!-- overhead-DEVICE:end -->``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import hf_penal  # noqa: E402

TAU = 3e-4
MEM_TOL = 0.01
ARMS = ("plain", "penal", "penal bf16", "penal fp8", "penal recompute", "one-line", "penal + ε")
COMPILE_ARMS = ("plain", "penal", "penal bf16", "penal fp8", "one-line")
#: storage dtypes whose gradient error against fp32 storage is measured
STORAGES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "recompute")
FP8_TARGET = 0.26  # fp8 storage: extra memory ≤ this × the one-line formulation's

# name -> (builder kind, sizes); "full" are the shapes, "small" fits a quick CPU run, "tiny" the smoke test
PRESETS = {
    "full": dict(batch=8, seq=128, img=224, bert={}, gpt2={}, vit="vit_small_patch16_224", resnet="resnet50"),
    "small": dict(batch=8, seq=64, img=64, bert=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                     intermediate_size=1024),
                  gpt2=dict(n_embd=256, n_layer=4, n_head=4), vit="vit_tiny_patch16_224", resnet="resnet18"),
    "tiny": dict(batch=2, seq=16, img=32, bert=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=512),
                 gpt2=dict(n_embd=32, n_layer=2, n_head=2, vocab_size=512), vit="vit_tiny_patch16_224",
                 resnet="resnet18"),
}


# ----------------------------------------------------------------------------------------------------------- models
def build_models(preset: dict, device: torch.device):
    """[(name, model, inputs, loss_fn)]: loss_fn(model, inputs) -> scalar; eval uses model(**inputs) / model(x)."""
    import timm
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    b, s, img = preset["batch"], preset["seq"], preset["img"]
    out = []
    g = torch.Generator().manual_seed(0)

    bert = BertForSequenceClassification(BertConfig(num_labels=2, **preset["bert"]))
    ids = torch.randint(0, bert.config.vocab_size, (b, s), generator=g)
    bert_in = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 2, (b,), generator=g))
    out.append((f"bert ({_shape(bert.config.num_hidden_layers, bert.config.hidden_size)}, seq {s})", bert, bert_in))

    gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=max(s, 128), **preset["gpt2"]))
    # the loss transformers uses anyway; left unset, its `loss_type=None ... unrecognized` warning_once is a graph
    # break under torch.compile (in whichever compiled copy traces it first)
    gpt2.loss_type = "ForCausalLM"
    ids = torch.randint(0, gpt2.config.vocab_size, (b, s), generator=g)
    out.append((f"gpt2 ({_shape(gpt2.config.n_layer, gpt2.config.n_embd)}, seq {s})", gpt2,
                dict(input_ids=ids, labels=ids)))

    for name in (preset["vit"], preset["resnet"]):
        kw = dict(img_size=img) if name.startswith("vit") else {}
        m = timm.create_model(name, pretrained=False, num_classes=10, **kw)
        x = torch.randn(b, 3, img, img, generator=g)
        out.append((f"{name} ({img} px)", m, dict(x=x, y=torch.randint(0, 10, (b,), generator=g))))
    res = []
    for name, m, inp in out:
        inp = {k: v.to(device) for k, v in inp.items()}
        res.append((name, m.to(device), inp))
    return res


def _shape(layers, hidden):
    return f"{layers} layers × {hidden}"


def loss_of(model, inp):
    if "x" in inp:
        return F.cross_entropy(model(inp["x"]), inp["y"])
    return model(**inp).loss


def forward_eval(model, inp):
    if "x" in inp:
        return model(inp["x"])
    return model(**{k: v for k, v in inp.items() if k != "labels"})


# ----------------------------------------------------------------------------------------------------------- arms
def _one_line_hook(module, args, output, *, tau: float, index):
    # the paper's formulation: a tensor hook adding tau * z to z's gradient, z taken as a detached clone
    z = output if index is None else output[index]
    if module.training and torch.is_tensor(z) and z.requires_grad:
        z_saved = z.detach().clone()
        z.register_hook(lambda g: g + tau * z_saved)


class ArmSwitch:
    """Puts one model into any arm; `set(arm)` returns the seconds the surgery took."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sites = hf_penal.sites(model)
        self.handles: list = []
        self.arm = "plain"

    def set(self, arm: str) -> float:
        if arm == self.arm:
            return 0.0
        hf_penal.remove(self.model)
        for h in self.handles:
            h.remove()
        self.handles = []
        t0 = time.perf_counter()
        if arm in ("penal", "penal + ε"):
            hf_penal.apply(self.model, tau=TAU)
        elif arm == "penal bf16":
            hf_penal.apply(self.model, tau=TAU, storage_dtype="bfloat16")
        elif arm == "penal fp8":
            hf_penal.apply(self.model, tau=TAU, storage_dtype="float8_e4m3fn")
        elif arm == "penal recompute":
            hf_penal.apply(self.model, tau=TAU, storage_dtype="recompute")
        elif arm == "one-line":
            modules = dict(self.model.named_modules())
            # a module ending several branches (a site's `end`, ViT's one dropout) gets one hook: it sees every call
            for name, index in dict.fromkeys((s.end or s.name, s.output_index) for s in self.sites):
                hook = functools.partial(_one_line_hook, tau=TAU, index=index)
                self.handles.append(modules[name].register_forward_hook(hook))
        dt = time.perf_counter() - t0
        if arm == "penal + ε":
            hf_penal.track_efficiency(self.model)
        self.arm = arm
        return dt


# ----------------------------------------------------------------------------------------------------------- timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, inp):
    loss = loss_of(model, inp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def interleaved(arms, switch: ArmSwitch, fn, repeats: int, device, warmup: int = 1) -> dict:
    """{arm: [seconds per round]} for `fn()` run in rounds A B C ..., after `warmup` untimed rounds."""
    times = {a: [] for a in arms}
    for r in range(warmup + repeats):
        for arm in arms:
            switch.set(arm)
            t = timed(fn, device)
            if r >= warmup:
                times[arm].append(t)
    switch.set("plain")
    return times


def ratios(times: dict, base: str = "plain") -> dict:
    """{arm: (median per-round ratio to base, relative spread of base)}; spread = median |t - median| / median."""
    b = times[base]
    med = C.median(b)
    noise = C.median([abs(t - med) for t in b]) / med
    return {a: (C.median([t / tb for t, tb in zip(ts, b)]), noise) for a, ts in times.items()}


# ----------------------------------------------------------------------------------------------------------- memory
def peak_memory(fn, device) -> tuple[int, str]:
    """Peak bytes allocated during `fn()` above what was allocated before it, and the method used."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "CUDA caching allocator peak"
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every op event carries the bytes its own allocations minus frees left on the CPU allocator; replayed in
    # order, their running sum is the memory in use
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak, "CPU allocator (torch.profiler profile_memory, op-level running sum)"


def resident_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes held across steps: parameters, their gradients and the optimizer state (the base of every arm's peak)."""
    ts = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    ts += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in ts)


# ----------------------------------------------------------------------------------------------------------- gradients
def _grads(model, inp, seed=0) -> torch.Tensor:
    """All parameter gradients of one training loss, flattened in fp64 (same dropout masks for every arm)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss_of(model, inp).backward()
    g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).double().flatten()
                   for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def gradient_errors(model, inp) -> dict:
    """{storage: (relative error of the penalty term, relative error of the whole gradient)} against fp32 storage:
    ‖g_s − g_fp32‖ / ‖g_fp32 − g_plain‖ and ‖g_s − g_fp32‖ / ‖g_fp32‖, at τ = TAU, one batch."""
    hf_penal.remove(model)
    g_plain = _grads(model, inp)
    hf_penal.apply(model, tau=TAU)
    g_fp32 = _grads(model, inp)
    out = {"penalty/loss gradient norm": [float((g_fp32 - g_plain).norm() / g_plain.norm()), math.nan]}
    for storage in STORAGES:
        hf_penal.apply(model, tau=TAU, storage_dtype=storage)
        d = float((_grads(model, inp) - g_fp32).norm())
        out[storage] = [d / float((g_fp32 - g_plain).norm()), d / float(g_fp32.norm())]
    hf_penal.remove(model)
    return out


# ----------------------------------------------------------------------------------------------------------- surgery
def surgery_times(model: nn.Module, repeats: int = 5) -> tuple[float, float]:
    """(first `apply` on the model, median of `repeats` later remove + apply cycles), seconds of `apply` alone. Every
    `apply` call runs site discovery again, so the later calls measure the same work without one-off stalls."""
    hf_penal.remove(model)
    t0 = time.perf_counter()
    hf_penal.apply(model, tau=TAU)
    first = time.perf_counter() - t0
    later = []
    for _ in range(repeats):
        hf_penal.remove(model)
        t0 = time.perf_counter()
        hf_penal.apply(model, tau=TAU)
        later.append(time.perf_counter() - t0)
    hf_penal.remove(model)
    return first, C.median(later)


def llama_meta(layers: int, hidden: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 256 * 256 or 4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128), vocab_size=32000)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


# ----------------------------------------------------------------------------------------------------------- main
def bench_model(name, model, inp, args, device) -> dict:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    switch = ArmSwitch(model)
    res = dict(name=name, sites=len(switch.sites), inplace=any(site.inplace for site in switch.sites))
    step = functools.partial(train_step, model, opt, inp)
    not_timed = {arm: (math.nan, math.nan) for arm in ARMS}
    print(f"{name}: {len(switch.sites)} sites; step timing ...", flush=True)
    res["step"] = not_timed if args.memory_only else ratios(
        interleaved(ARMS, switch, step, args.repeats, device, warmup=args.warmup))
    print(f"{name}: memory and gradient errors ...", flush=True)
    mem = {}
    peak_memory(step, device)  # the profiler's first run sees allocations of its own: discard it
    for arm in ARMS:  # memory: one profiled step per arm (untimed), gradients present as in steady state
        switch.set(arm)
        mem[arm], res["mem_method"] = peak_memory(step, device)
    switch.set("plain")
    res["mem"] = mem
    res["resident"] = resident_bytes(model, opt)
    res["grad_err"] = gradient_errors(model, inp)
    model.eval()

    def fwd():
        with torch.no_grad():
            forward_eval(model, inp)
    print(f"{name}: eval timing ...", flush=True)
    res["eval"] = not_timed if args.memory_only else ratios(
        interleaved(ARMS, switch, fwd, args.repeats, device, warmup=args.warmup))
    model.train()
    res["surgery"] = surgery_times(model)
    res["compile"] = {b: compiled_ratios(model, inp, args, device, b) for b in args.compile or ()}
    return res


def compiled_ratios(model, inp, args, device, backend) -> dict:
    """Step ratio under torch.compile(backend=...): one compiled copy per arm, interleaved."""
    with _strict_hook_guards():  # without it every copy would run the graph compiled for the first one
        return _compiled_ratios(model, inp, args, device, backend)


def _compiled_ratios(model, inp, args, device, backend) -> dict:
    import torch._dynamo
    torch._dynamo.reset()
    print(f"  torch.compile ({backend}) ...", flush=True)
    copies = {}
    for arm in COMPILE_ARMS:
        m = copy.deepcopy(model)
        ArmSwitch(m).set(arm)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        cm = torch.compile(m, backend=backend)
        copies[arm] = functools.partial(train_step, cm, opt, inp)
    times = {a: [] for a in copies}
    for r in range(args.warmup + 1 + args.repeats):  # an extra warm-up round: compilation
        for arm, fn in copies.items():
            t = timed(fn, device)
            if r >= args.warmup + 1:
                times[arm].append(t)
    return ratios(times)


# ----------------------------------------------------------------------------------------------------------- compile
#: τ changes applied after compilation: (what, function on the uncompiled model)
TAU_CHANGES = (("set_tau(2τ)", lambda m: hf_penal.set_tau(m, 2 * TAU)),
               ("set_tau_factor(0.5)", lambda m: hf_penal.set_tau_factor(m, 0.5)),
               ("set_tau(τ), set_tau_factor(1)", lambda m: (hf_penal.set_tau(m, TAU), hf_penal.set_tau_factor(m, 1.0))))


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def _compile_warmup(backend) -> None:
    """One throw-away compile, so the first arm does not pay for importing and initialising the compiler stack."""
    import torch._dynamo
    from torch._inductor.utils import fresh_cache
    torch._dynamo.reset()
    with fresh_cache():
        f = torch.compile(lambda a: (a.sin() + 1).sum(), backend=backend)
        f(torch.randn(4, requires_grad=True)).backward()


def _strict_hook_guards():
    """A context in which dynamo guards on module hooks. By default (``skip_nnmodule_hook_guards = True``) it does
    not: a model compiled after another instance of its class (or penalized after it was compiled and run) reuses the
    graph compiled without the penal hooks and silently computes plain gradients. Arms of one model share the class,
    so the benchmark compiles them with the guards on; τ-change recompiles counted under these stricter guards bound
    those under the default ones. Since 55b7268 ``import hf_penal`` sets this for the whole process
    (`hf_penal.hooks.guard_hooks_under_compile`); the patch keeps the benchmark's guards explicit."""
    import torch._dynamo
    return torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)


def _reason(text: str) -> str:
    """A graph-break reason in one line: dynamo's first line and the call it names (its debug context)."""
    first = text.strip().splitlines()[0]
    ctx = [ln.strip() for ln in text.splitlines() if "debug context:" in ln]
    return first + (f" [{ctx[0].split('debug context:', 1)[1].strip()[:200]}]" if ctx else "")


def _compile_arm(model, inp, arm, backend, device) -> dict:
    """Compile a deep copy of `model` in `arm` with a cold compiler cache and time its first two training steps.

    Two steps, because transformers' sequence classifiers set ``config.problem_type`` in their first forward, which
    makes dynamo recompile at the second (in every arm). The cache is cold: ``torch._inductor.utils.fresh_cache()``
    clears inductor's in-memory caches and points TORCHINDUCTOR_CACHE_DIR (FX graph, AOTAutograd and kernel caches)
    at a new empty temporary folder for this arm. The caller resets dynamo before a round. Graphs / graph breaks
    come from ``torch._dynamo.utils.counters`` (deltas over this arm's two steps). For penal arms, τ is then changed
    three times (TAU_CHANGES) with a training step after each; any graph compiled by those steps is a recompile."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    def snap():
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())

    cache_keys = ("autograd_cache_miss", "autograd_cache_hit", "autograd_cache_bypass")
    cache_before = {k: counters["aot_autograd"][k] for k in cache_keys}

    m = copy.deepcopy(model)
    ArmSwitch(m).set(arm)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
    cm = torch.compile(m, backend=backend)
    step = functools.partial(train_step, cm, opt, inp)
    breaks_before = dict(counters["graph_break"])
    g0, b0 = snap()
    with fresh_cache():
        first = timed(step, device)
        second = timed(step, device)
        g2, b2 = snap()
        aot_cache = {k.removeprefix("autograd_cache_"): counters["aot_autograd"][k] - cache_before[k]
                     for k in cache_keys if counters["aot_autograd"][k] > cache_before[k]}
        tau_graphs = []
        if arm != "plain":
            for _, change in TAU_CHANGES:
                change(m)
                timed(step, device)
                tau_graphs.append(snap()[0])
    if g2 == g0:
        raise RuntimeError(f"{arm}: no graph was compiled for this copy (dynamo reused another arm's graph)")
    reasons = {_reason(k): v - breaks_before.get(k, 0) for k, v in counters["graph_break"].items()
               if v > breaks_before.get(k, 0)}
    return dict(first=first + second, first_step=first, second_step=second, graphs=g2 - g0, graph_breaks=b2 - b0,
                break_reasons=reasons, aot_cache=aot_cache,
                tau_recompiles=(tau_graphs[-1] - g2) if tau_graphs else None, model=m, step=step)


def compile_column(name, model, inp, args, device, backend) -> dict:
    """Penal against plain, both under torch.compile(backend=...): compile time (first training step, cold cache),
    graphs and graph breaks, recompiles when τ changes, and the steady step-time ratio (interleaved rounds).

    `args.compile_rounds` rounds, each a fresh dynamo (``torch._dynamo.reset()``) compiling both arms in turn, the
    order alternating between rounds (plain first, then penal first, ...). The compiled copies of the last round are
    then timed interleaved (`args.warmup` untimed rounds, `args.repeats` timed)."""
    with _strict_hook_guards():
        return _compile_column(name, model, inp, args, device, backend)


def _compile_column(name, model, inp, args, device, backend) -> dict:
    import torch._dynamo
    model.train()
    res = dict(name=name, backend=backend, load_before=_loadavg(), rounds=[])
    arms = ("plain", "penal")
    last = {}
    for r in range(args.compile_rounds):
        torch._dynamo.reset()
        out = {}
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            print(f"  {name}: round {r + 1}, compiling {arm} ({backend}) ...", flush=True)
            out[arm] = _compile_arm(model, inp, arm, backend, device)
            o = out[arm]
            print(f"    steps 1+2 {o['first']:.1f} s (step 2 {o['second_step']:.3f} s), graphs {o['graphs']}, "
                  f"breaks {o['graph_breaks']}, τ-change recompiles {o['tau_recompiles']}", flush=True)
        last = out
        res["rounds"].append({a: {k: v for k, v in o.items() if k not in ("model", "step")} for a, o in out.items()})
    times = {a: [] for a in arms}
    for r in range(args.warmup + args.repeats):
        for arm in arms:
            t = timed(last[arm]["step"], device)
            if r >= args.warmup:
                times[arm].append(t)
    res["step_times"] = times
    res["step"] = ratios(times)
    firsts = [(rd["penal"]["first"], rd["plain"]["first"]) for rd in res["rounds"]]
    res["compile_ratio"] = C.median([a / b for a, b in firsts])
    res["load_after"] = _loadavg()
    torch._dynamo.reset()
    return res


def _cache(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "–"


def _values(rounds, arm, key) -> str:
    """One arm's value over the rounds: "n" when every round agrees, else "a, b, ..."."""
    vals = [str(x[arm][key]) for x in rounds]
    return vals[0] if len(set(vals)) == 1 else ", ".join(vals)


def render_compile(results, args, device, elapsed, command=None) -> str:
    dev = "GPU" if device.type == "cuda" else "CPU"
    loads = "; ".join(f"{r['name'].split(' (')[0]} {r['load_before']} → {r['load_after']}" for r in results)
    lines = [f"## Overhead (torch.compile, {dev}, preset {args.preset})", "",
             f"Machine: {C.machine(device.type)}, gcc for inductor's C++ kernels.  ",
             f"Command: `{command or C.command_line()}` ("
             + (f"{elapsed / 60:.1f} min; " if elapsed else "")
             + f"{args.compile_rounds} compile round(s), then {args.repeats} timed rounds after {args.warmup} "
             f"warm-up round(s), τ = {TAU:g}).  ",
             f"Load average (1/5/15 min, /proc/loadavg) before → after each model: {loads}.", "",
             "Both arms are compiled (`torch.compile(model, backend=...)`, default mode); the training step is "
             "forward + backward under the compiled model and an eager AdamW step. **Compiled step ratio**: median "
             "over interleaved rounds of (penal step time ÷ plain step time in the same round), the compiled copies "
             "of the last compile round; noise = median absolute deviation of plain's times ÷ their median. "
             "**Compile-time ratio**: the first two training steps (dynamo tracing, AOTAutograd, inductor codegen "
             "and C++ compilation of forward and backward, plus two executions; two because transformers' "
             "sequence classifiers set `config.problem_type` in their first forward and dynamo recompiles at the "
             "second, in both arms) of penal ÷ plain, median over rounds of the per-round ratio (seconds: medians). "
             "Every arm compiles with a cold cache (`torch._inductor.utils.fresh_cache()`: inductor's in-memory "
             "caches cleared and a new empty TORCHINDUCTOR_CACHE_DIR per arm), each round starts from "
             "`torch._dynamo.reset()`, the order of the arms alternates between rounds, and one throw-away compile "
             "runs before the first round. **Graphs / graph breaks**: `torch._dynamo.utils.counters` "
             "(`stats.unique_graphs`, `graph_break`) over those two steps (one value when all rounds agree). "
             "**Recompiles on τ change**: graphs compiled by three further steps after `set_tau(model, 2τ)`, "
             "`set_tau_factor(model, 0.5)` and `set_tau(model, τ); set_tau_factor(model, 1)` (0 expected: τ and its "
             "factor are buffers, read as tensors inside the graph). The run sets "
             "`torch._dynamo.config.skip_nnmodule_hook_guards = False`: with dynamo's default (`True`) it does not "
             "guard on module hooks, and the penal copy, compiled after a plain copy of the same class, would "
             "silently reuse plain's graph (checked: plain gradients, no new graph; `import hf_penal` now sets "
             "this for every process); the stricter guards can only "
             "add recompiles, so 0 here means 0 under the default too. **AOTAutograd cache**: "
             "`counters[\"aot_autograd\"]` over steps 1+2 of the first round (a miss compiles and saves, a hit "
             "reuses, a bypass compiles without caching).", ""]
    rows = []
    for r in results:
        rd = r["rounds"]
        st, noise = r["step"]["penal"]
        pf = C.median([x["plain"]["first"] for x in rd])
        qf = C.median([x["penal"]["first"] for x in rd])
        rows.append([r["name"], r["backend"], f"{st:.3f} (noise {noise:.3f})",
                     f"{r['compile_ratio']:.2f} ({qf:.0f} s / {pf:.0f} s)",
                     " / ".join(_values(rd, a, "graphs") for a in ("plain", "penal")),
                     " / ".join(_values(rd, a, "graph_breaks") for a in ("plain", "penal")),
                     ", ".join(str(x["penal"]["tau_recompiles"]) for x in rd),
                     " / ".join(_cache(rd[0][a].get("aot_cache", {})) for a in ("plain", "penal"))])
    lines += [C.table(["model", "backend", "compiled step ratio penal / plain", "compile-time ratio (steps 1+2, "
                       "penal / plain)", "graphs plain / penal", "graph breaks plain / penal",
                       "recompiles on τ change (per round)", "AOTAutograd cache, steps 1+2 (plain / penal)"],
                      rows), ""]
    reasons = {k: v for r in results for x in r["rounds"] for a in x.values() for k, v in a["break_reasons"].items()}
    if reasons:
        lines += ["Graph-break reasons: " + "; ".join(f"{k} ({v}×)" for k, v in reasons.items()) + ".", ""]
    bypass = [r["name"].split(" (")[0] for r in results
              if any("bypass" in x["penal"].get("aot_cache", {}) and "bypass" not in x["plain"].get("aot_cache", {})
                     for x in r["rounds"])]
    if bypass:
        lines += [f"Penal graphs bypass AOTAutograd's cache ({', '.join(bypass)}): torch does not cache a graph that "
                  "calls a custom `autograd.Function` (its log: \"Unsupported call_function target "
                  "autograd_function_apply\"), and the penal op is one. A cold first compile pays nothing for this; "
                  "every later compile of the same graph does: AOTAutograd's tracing and partitioning run again where "
                  "plain's graph is a cache hit (inductor's FX graph cache still hits for both). Measured here on "
                  "BERT's second-step recompile (step 2 in the JSON: `second_step`); a new process with a warm cache "
                  "is the same case (no AOTAutograd entry is saved for penal) but was not timed.", ""]
    return "\n".join(lines)


def render(results, surgery_llama, args, device, elapsed, command=None) -> str:
    dev = "GPU" if device.type == "cuda" else "CPU"
    step_target = 1.01 if device.type == "cuda" else 1.02
    mark = {True: "met", False: "**missed**"}
    backends = list(args.compile or ())
    title = f"## Overhead ({dev}{', torch.compile' if backends else ''}, preset {args.preset})"
    lines = [title, "",
             f"Machine: {C.machine(device.type)}.  ",
             f"Command: `{command or C.command_line()}` ("
             + (f"{elapsed / 60:.1f} min; " if elapsed else "")
             + ("memory and gradient errors only, no timing" if args.memory_only else
                f"{args.repeats} timed rounds after {args.warmup} warm-up round(s)")
             + f", τ = {TAU:g}).", "",
             "Ratios are the median over rounds of (arm time ÷ plain time in the same round); noise = median "
             "absolute deviation of plain's own times ÷ their median. Memory: peak bytes in use during one training "
             "step (forward, backward, AdamW step) minus plain's; \"÷ one-line\" divides by the one-line "
             "formulation's overhead; \"% of plain's peak\" divides it by plain's whole peak (parameters, gradients "
             "and AdamW state, counted from the tensors, plus the step's own peak). Memory method: "
             f"{results[0]['mem_method'] if results else '-'}.", ""]
    rows = []
    for r in results:
        one = r["mem"]["one-line"] - r["mem"]["plain"]
        whole = r["mem"]["plain"] + r.get("resident", math.nan)
        comp = {b: (r.get("compile") or {}).get(b, {}) for b in backends}
        for arm in ARMS:
            if arm not in r["mem"]:
                continue
            st, sn = r["step"][arm]
            ev, en = r["eval"][arm]
            over = r["mem"][arm] - r["mem"]["plain"]
            rel = f"{over / one:.2f}" if arm != "plain" and one > 0 else ""
            row = [r["name"] if arm == "plain" else "", arm, _ratio(st, sn, arm), _ratio(ev, en, arm),
                   f"{over / 2**20:+.1f}", rel, f"{100 * over / whole:+.2f}%" if whole == whole else "n/a"]
            rows.append(row + [f"{comp[b][arm][0]:.3f}" if arm in comp[b] else "–" for b in backends])
    lines += [C.table(["model", "arm", "step ratio", "eval ratio", "peak mem over plain (MiB)", "÷ one-line",
                       "% of plain's peak"] + [f"compiled step ratio ({b})" for b in backends], rows), ""]
    if any("grad_err" in r for r in results):
        erows = []
        for r in results:
            ge = dict(r.get("grad_err") or {})
            if not ge:
                continue
            ratio = ge.pop("penalty/loss gradient norm", [math.nan])[0]
            for i, (storage, (e_pen, e_all)) in enumerate(ge.items()):
                erows.append([r["name"] if i == 0 else "", f"{ratio:.3g}" if i == 0 else "", storage,
                              f"{e_pen:.2e}", f"{e_all:.2e}"])
        lines += ["### Gradient error of low-precision storage (one batch, τ = 3e-4, against fp32 storage)", "",
                  "Penalty term: ‖g − g_fp32‖ / ‖g_fp32 − g_plain‖ (the error relative to what the penalty adds); "
                  "whole gradient: ‖g − g_fp32‖ / ‖g_fp32‖, over all parameters; ‖penalty‖ / ‖loss gradient‖ = "
                  "‖g_fp32 − g_plain‖ / ‖g_plain‖. Same dropout masks in every arm. Where the penalty is below ~1e-5 "
                  "of the loss gradient, the penalty-term error has a floor from fp32 rounding of grad + τ·z itself "
                  "(the storage error of τ·z is then smaller than one ulp of the sum).", "",
                  C.table(["model", "‖penalty‖ / ‖loss gradient‖", "storage_dtype", "penalty term error",
                           "whole gradient error"], erows), ""]

    # targets
    trows, missed = [], []
    for r in results:
        one = r["mem"]["one-line"] - r["mem"]["plain"]
        pen = r["mem"]["penal"] - r["mem"]["plain"]
        bf = r["mem"]["penal bf16"] - r["mem"]["plain"]
        f8 = r["mem"].get("penal fp8", math.nan) - r["mem"]["plain"]
        st, _ = r["step"]["penal"]
        ev, en = r["eval"]["penal"]
        eval_ok = abs(ev - 1) <= max(0.01, 2 * en)
        checks = [
            (f"step ratio ≤ {step_target}", f"{st:.3f}", st <= step_target),
            ("memory ≤ one-line's", f"{pen / 2**20:.2f} vs {one / 2**20:.2f} MiB", pen <= one * (1 + MEM_TOL)),
            ("bf16 memory ≤ 0.5× one-line's", f"{bf / one:.3f}×" if one > 0 else "n/a",
             one > 0 and bf <= 0.5 * one * (1 + MEM_TOL)),
            (f"fp8 memory ≤ {FP8_TARGET}× one-line's", f"{f8 / one:.3f}×" if one > 0 else "n/a",
             one > 0 and f8 <= FP8_TARGET * one),
            ("eval ratio 1.00 ± noise", f"{ev:.3f} (noise {en:.3f})", eval_ok),
            ("surgery < 0.5 s", f"{r['surgery'][1]:.3f} s (first call {r['surgery'][0]:.3f} s)",
             r["surgery"][1] < 0.5),
        ]
        checks = [c for c in checks if not c[1].startswith("nan")]  # --memory-only: no timing targets
        for i, (target, value, ok) in enumerate(checks):
            trows.append([r["name"] if i == 0 else "", target, value, mark[ok]])
            if not ok:
                missed.append(f"{r['name']}: {target} ({value})")
    first, later, desc = surgery_llama
    trows.append([desc, "surgery < 0.5 s", f"{later:.3f} s (first call {first:.3f} s)", mark[later < 0.5]])
    if later >= 0.5:
        missed.append(f"{desc}: surgery ({later:.3f} s)")
    lines += ["### Targets (arm `penal` unless stated)", "", C.table(["model", "target", "value", ""], trows), ""]
    lines += _why(results, missed, step_target)
    lines += [f"Memory targets allow {MEM_TOL:.0%} for the few bytes of bookkeeping (τ, gain) the ops save. Surgery: "
              "wall-clock of `hf_penal.apply` (site discovery included), median of 5 remove + apply cycles; the "
              "first call on each model is shown too (on this shared 2-core machine a single call can stall).",
              "Missed: " + ("; ".join(missed) if missed else "none") + ".", ""]
    if not backends:
        lines += ["torch.compile was not run (pass `--compile aot_eager inductor`; on CPU each arm compiles for "
                  "minutes).", ""]
    return "\n".join(lines)


def _ratio(value, noise, arm) -> str:
    if math.isnan(value):
        return "not timed"
    return f"{value:.3f}" + (f" (noise {noise:.3f})" if arm == "plain" else "")


def _why(results, missed, step_target) -> list:
    """Closing notes: why each kind of missed target was missed, from the measurements themselves."""
    notes = []
    if any("eval ratio" in m for m in missed):
        spread = ", ".join(f"{r['name'].split(' (')[0]} {min(v[0] for a, v in r['eval'].items() if a != 'plain'):.3f}–"
                           f"{max(v[0] for a, v in r['eval'].items() if a != 'plain'):.3f}" for r in results)
        notes.append("Eval ratio: in eval mode every arm computes exactly the plain forward (the site hook returns z "
                     "after one Python call per site; the one-line hook returns at once), so the eval ratios of all "
                     f"{len(ARMS) - 1} non-plain arms measure the same thing; their range ({spread}) is the timing "
                     "noise of this shared machine, which the median absolute deviation of a few plain timings "
                     "underestimates. A miss here is noise, not cost.")
    if any("bf16 memory" in m or "fp8 memory" in m for m in missed) and any(r["inplace"] for r in results):
        notes.append("bf16/fp8 memory on timm ResNet: at in-place sites (`x += shortcut`) the model overwrites z, so "
                     "the op must hand it a fresh fp32 tensor (autograd forbids modifying in place a custom Function's "
                     "view of its input); while the branch module's output is still referenced, the original fp32 z, "
                     "that copy and the low-precision copy coexist. The excess over 0.5× (bf16) or 0.25× (fp8) is "
                     "about one fp32 activation of the "
                     "last block (resnet50, batch 8: 8×2048×7×7×4 B = 3.1 MB), i.e. a one-block transient at the "
                     "step's peak, not a per-site cost.")
    if any("step ratio" in m for m in missed):
        notes.append(f"Step ratio above {step_target}: the op adds one autograd node and one `addcmul` per site; on "
                     "small models the Python cost of the hook and the Function per site is a larger share of the "
                     "step. Compare with the one-line arm, which pays a similar per-site Python cost.")
    return ["**Why targets were missed.** " + " ".join(notes), ""] if notes else []


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--repeats", type=int, help="timed rounds (default: 5 on CPU, 20 on GPU)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", nargs="+", help="substrings selecting models (default: all)")
    ap.add_argument("--compile", nargs="*", metavar="BACKEND",
                    help="also time torch.compile(model, backend=...) steps per backend (default: inductor)")
    ap.add_argument("--compile-only", action="store_true",
                    help="measure only the compile column (penal vs plain, both compiled with each --compile backend: "
                    "step ratio, compile-time ratio, graph breaks, recompiles on τ change); section overhead-DEVICE-"
                    "compile")
    ap.add_argument("--compile-rounds", type=int, default=2,
                    help="--compile-only: cold compiles per arm (order alternating between rounds)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure memory and gradient errors only (no step/eval timing; for a busy machine)")
    ap.add_argument("--llama-layers", type=int, default=32)
    ap.add_argument("--llama-hidden", type=int, default=4096)
    ap.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose overhead section is rewritten")
    ap.add_argument("--section", help="name of that section (default: overhead-DEVICE)")
    ap.add_argument("--json", help="also write the raw measurements to this JSON file")
    ap.add_argument("--from-json", help="measure nothing: re-render the tables from a --json file of an earlier run "
                    "(pass that run's --preset/--repeats/--warmup/--device)")
    args = ap.parse_args(argv)
    if args.compile == []:
        args.compile = ["inductor"]
    if args.repeats is None:
        args.repeats = 20 if args.device.startswith("cuda") else 5
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_only:
        args.compile = args.compile or ["inductor"]
        return compile_main(args)
    if args.from_json:
        import json
        with open(args.from_json) as f:
            saved = json.load(f)
        device = torch.device(args.device)
        text = render(saved["results"], saved["llama_surgery"], args, device, saved.get("elapsed_s"),
                      command=f"{saved['command']}`; tables re-rendered from its JSON by `{C.command_line()}")
        C.write_section(args.out, args.section or f"overhead-{device.type}", text)
        print(text)
        return
    device = torch.device(args.device)
    start = time.perf_counter()
    torch.manual_seed(0)
    results = []
    for name, model, inp in build_models(PRESETS[args.preset], device):
        if args.models and not any(s in name for s in args.models):
            continue
        results.append(bench_model(name, model, inp, args, device))
        del model
    llama = llama_meta(args.llama_layers, args.llama_hidden)
    first, later = surgery_times(llama)
    desc = f"Llama {args.llama_layers} layers × {args.llama_hidden} (meta device)"
    elapsed = time.perf_counter() - start
    text = render(results, (first, later, desc), args, device, elapsed)
    C.write_section(args.out, args.section or f"overhead-{device.type}", text)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(dict(results=results, llama_surgery=[first, later, desc], command=C.command_line(),
                           elapsed_s=elapsed), f, indent=1)
    print(text)
    if not args.memory_only and any(math.isnan(v[0]) for r in results for v in r["step"].values()):
        sys.exit(1)


def compile_main(args) -> None:
    import json
    device = torch.device(args.device)
    section = args.section or f"overhead-{device.type}-compile"
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        text = render_compile(saved["results"], args, device, saved.get("elapsed_s"),
                              command=f"{saved['command']}`; tables re-rendered from its JSON by `{C.command_line()}")
        C.write_section(args.out, section, text)
        print(text)
        return
    start = time.perf_counter()
    torch.manual_seed(0)
    for backend in args.compile:
        _compile_warmup(backend)
    results = []
    for name, model, inp in build_models(PRESETS[args.preset], device):
        if args.models and not any(s in name for s in args.models):
            continue
        for backend in args.compile:
            results.append(compile_column(name, model, inp, args, device, backend))
            if args.json:  # after every model: a run cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(dict(results=results, command=C.command_line(),
                                   elapsed_s=time.perf_counter() - start), f, indent=1)
        del model
    elapsed = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, command=C.command_line(), elapsed_s=elapsed), f, indent=1)
    text = render_compile(results, args, device, elapsed)
    C.write_section(args.out, section, text)
    print(text)


if __name__ == "__main__":
    main()
