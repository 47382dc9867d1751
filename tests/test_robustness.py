"""The compatibility matrix: gradient checkpointing, torch.compile, mixed precision, DDP, PEFT/LoRA, export,
state (copy/pickle/state_dict), malformed settings and checkpoints, and a security scan of the repository."""
import copy
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from _models import SPEC, hf_loss, saved
from _oracle import grads, rel_err, saved_bytes_and_grads
from _two_ranks import launch_two_ranks

import hf_penal

TAU = 1e-2
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bert(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    return d, auto, inputs


def _oracle(auto, d, inputs, tau=TAU):
    return grads(auto.from_pretrained(d), hf_loss(inputs), SPEC["bert"][0], tau)[0]


# ---------------------------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("reentrant", [False, True])
def test_hf_gradient_checkpointing_exact_and_still_active(bert, reentrant):
    d, auto, inputs = bert
    model = auto.from_pretrained(d, penal_tau=TAU)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    runs = []
    h = model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *a: runs.append(1))
    g, _, _ = grads(model, hf_loss(inputs))
    h.remove()
    assert len(runs) == 2  # forward + recompute in backward: checkpointing is active
    assert rel_err(g, _oracle(auto, d, inputs)) < 1e-5  # and the penalty is applied once per site


def test_timm_grad_checkpointing_exact_and_active():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, depth=2, num_classes=3)
    vanilla = timm.create_model("vit_tiny_patch16_224", **kw)
    model = timm.create_model("vit_tiny_patch16_224", **kw, penal_tau=TAU)
    model.load_state_dict(vanilla.state_dict())
    model.set_grad_checkpointing(True)
    runs = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda *a: runs.append(1))
    x = torch.randn(2, 3, 32, 32)
    loss = lambda m: m(x).square().mean()  # noqa: E731
    g, _, _ = grads(model, loss)
    assert len(runs) == 2
    g_oracle, _, _ = grads(vanilla, loss, [(r"blocks\.\d+\.drop_path[12]", None)], TAU)
    assert rel_err(g, g_oracle) < 1e-5


# ---------------------------------------------------------------------------------------------- compile
def test_compile_exact_no_recompile_on_tau_change_no_graph_break(bert):
    import torch._dynamo
    d, auto, inputs = bert
    counts = {}

    def run(model, taus, key):
        torch._dynamo.reset()
        n = [0]

        def backend(gm, ex):
            n[0] += 1
            return gm.forward

        cm = torch.compile(model, backend=backend)
        model.train()
        out = []
        for tau in taus:
            if tau is not None:
                hf_penal.set_tau(model, tau)
            model.zero_grad(set_to_none=True)
            cm(**inputs).loss.backward()
            out.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
            counts.setdefault(key, []).append(n[0])
        return out

    run(auto.from_pretrained(d), [None, None, None], "vanilla")
    g = run(auto.from_pretrained(d, penal_tau=TAU), [None, None, 2e-3, 3e-3], "penal")
    assert rel_err(g[0], _oracle(auto, d, inputs)) < 1e-5
    assert rel_err(g[3], _oracle(auto, d, inputs, 3e-3)) < 1e-5
    assert counts["penal"][-1] == counts["penal"][1]  # tau changes: no recompile
    assert counts["penal"][1] == counts["vanilla"][1]  # the op adds no graph break


def test_compile_aot_eager_tau_and_factor_changes_do_not_recompile(bert):
    # τ and its factor are 0-dim buffers that the AOTAutograd graph reads as inputs: set_tau / set_tau_factor after
    # compilation reuse the compiled graph (counted by a backend wrapping aot_eager) and the new τ takes effect. A τ
    # held as a Python number would either recompile (dynamo guards on its value) or keep the old τ (oracle check)
    import torch._dynamo
    from torch._dynamo.backends.debugging import aot_eager
    d, auto, inputs = bert
    torch._dynamo.reset()
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(gm)
        return aot_eager(gm, example_inputs)

    model = auto.from_pretrained(d, penal_tau=TAU)
    cm = torch.compile(model, backend=backend)

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        cm(**inputs).loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    step()
    step()  # BERT's classifier sets config.problem_type in its first forward: dynamo may recompile once here
    n = len(compiled)
    assert n >= 1
    changes = [(lambda: hf_penal.set_tau(model, 3 * TAU), 3 * TAU),
               (lambda: hf_penal.set_tau_factor(model, 0.5), 1.5 * TAU),
               (lambda: hf_penal.set_tau_factor(model, 0.0), 0.0),
               (lambda: (hf_penal.set_tau(model, TAU), hf_penal.set_tau_factor(model, 1.0)), TAU)]
    for change, tau in changes:
        change()
        assert rel_err(step(), _oracle(auto, d, inputs, tau)) < 1e-5, tau
    assert len(compiled) == n, f"recompiled after a τ change: {len(compiled) - n} more graph(s)"


def _compiled_grads(cm, inputs):
    mod = getattr(cm, "_orig_mod", cm)
    mod.train()
    mod.zero_grad(set_to_none=True)
    cm(**inputs).loss.backward()
    return {k: p.grad for k, p in mod.named_parameters() if p.grad is not None}


def _plain(auto, d, inputs):
    return grads(auto.from_pretrained(d), hf_loss(inputs))[0]


def test_import_makes_compile_guard_on_module_hooks():
    import torch._dynamo
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False


@pytest.mark.parametrize("order", ["apply_after_compile", "plain_compiled_first", "penal_compiled_first"])
def test_compiled_graph_is_never_reused_across_penal_hooks(bert, order):
    """dynamo reuses a graph for any module of the same class unless it guards on hooks: without hf_penal turning
    those guards on, each order below silently gives plain gradients to the penalized model."""
    import torch._dynamo
    d, auto, inputs = bert
    torch._dynamo.reset()
    try:
        plain_model, pen_model = auto.from_pretrained(d), auto.from_pretrained(d)
        if order == "apply_after_compile":
            cm = torch.compile(pen_model, backend="aot_eager")
            for _ in range(2):  # the second call recompiles once (config.problem_type set by the first)
                _compiled_grads(cm, inputs)
            hf_penal.apply(pen_model, tau=TAU)
            assert rel_err(_compiled_grads(cm, inputs), _oracle(auto, d, inputs)) < 1e-5
            hf_penal.remove(pen_model)
            assert rel_err(_compiled_grads(cm, inputs), _plain(auto, d, inputs)) < 1e-5
            return
        hf_penal.apply(pen_model, tau=TAU)
        first, second = (plain_model, pen_model) if order == "plain_compiled_first" else (pen_model, plain_model)
        c1, c2 = (torch.compile(m, backend="aot_eager") for m in (first, second))
        for _ in range(2):
            _compiled_grads(c1, inputs)
        _compiled_grads(c2, inputs)
        cp, cq = (c1, c2) if first is plain_model else (c2, c1)
        assert rel_err(_compiled_grads(cq, inputs), _oracle(auto, d, inputs)) < 1e-5
        assert rel_err(_compiled_grads(cp, inputs), _plain(auto, d, inputs)) < 1e-5
    finally:
        torch._dynamo.reset()


def test_compile_aot_eager_backend_matches_eager(bert):
    d, auto, inputs = bert
    model = auto.from_pretrained(d, penal_tau=TAU)
    cm = torch.compile(model, backend="aot_eager")
    g, _, _ = grads(cm, hf_loss(inputs))
    g = {k.removeprefix("_orig_mod."): v for k, v in g.items()}
    assert rel_err(g, _oracle(auto, d, inputs)) < 1e-5


# ---------------------------------------------------------------------------------------------- precision
def test_bf16_autocast_matches_the_oracle_under_the_same_autocast(bert):
    d, auto, inputs = bert
    model = auto.from_pretrained(d, penal_tau=TAU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g, _, _ = grads(model, hf_loss(inputs))
        g_oracle = _oracle(auto, d, inputs)
        g_plain, _, _ = grads(auto.from_pretrained(d), hf_loss(inputs))
    assert rel_err(g, g_oracle) < 2e-2 < rel_err(g_plain, g_oracle)


def test_fp16_grad_scaler_needs_and_gets_the_scale_aware_term(bert):
    d, auto, inputs = bert
    scale = 2.0 ** 12

    def scaled_grads(model, tell_scale):
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        if tell_scale:
            hf_penal.set_loss_scale(model, scaler.get_scale())
        model.train()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(**inputs).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        return {k: p.grad.float() for k, p in model.named_parameters() if p.grad is not None}

    with torch.autocast("cpu", dtype=torch.float16):
        g_oracle = _oracle(auto, d, inputs)
    g_plain = scaled_grads(auto.from_pretrained(d), False)
    ok = scaled_grads(auto.from_pretrained(d, penal_tau=TAU), True)
    naive = scaled_grads(auto.from_pretrained(d, penal_tau=TAU), False)
    assert rel_err(ok, g_oracle) < 1e-2
    assert rel_err(naive, g_plain) < 1e-2 * rel_err(g_oracle, g_plain) * 10  # penalty /S: nearly a no-op
    assert rel_err(naive, g_oracle) > 10 * rel_err(ok, g_oracle)


def test_bf16_storage_halves_saved_bytes_with_negligible_error(bert):
    d, auto, inputs = bert

    b_plain, _ = saved_bytes_and_grads(auto.from_pretrained(d), hf_loss(inputs))
    b_fp32, _ = saved_bytes_and_grads(auto.from_pretrained(d, penal_tau=TAU), hf_loss(inputs))
    b_bf16, g = saved_bytes_and_grads(auto.from_pretrained(d, penal={"tau": TAU, "storage_dtype": "bfloat16"}),
                                      hf_loss(inputs))
    assert b_fp32 > b_plain
    assert (b_bf16 - b_plain) <= 0.5 * (b_fp32 - b_plain) + 64
    assert rel_err(g, _oracle(auto, d, inputs)) < 1e-3


# ---------------------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_data_parallel_on_cpu_equals_single_process_oracle(tmp_path, mode):
    pytest.importorskip("accelerate")
    metas = launch_two_ranks("_ddp_worker.py", tmp_path, mode)
    for rank, meta in enumerate(metas):
        assert meta == dict(world=2, rank=rank, wrapped=True, sites=4)
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert rel_err(res["ddp"], res["oracle"]) < 1e-5


# ---------------------------------------------------------------------------------------------- PEFT
def test_lora_on_top_of_penal_trains_adapters_with_the_penalty_and_round_trips(bert, tmp_path):
    peft = pytest.importorskip("peft")
    d, auto, inputs = bert
    lcfg = dict(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS")
    torch.manual_seed(0)
    model = peft.get_peft_model(auto.from_pretrained(d, penal_tau=TAU), peft.LoraConfig(**lcfg))
    torch.manual_seed(0)
    vanilla = peft.get_peft_model(auto.from_pretrained(d), peft.LoraConfig(**lcfg))
    for m in (model, vanilla):  # non-zero B so the adapters' gradients depend on the penalty through z
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(len(n)))
    assert len(hf_penal.sites(model.base_model.model)) == 4
    g, _, _ = grads(model, hf_loss(inputs))
    zspec = [(r".*bert\.encoder\.layer\.\d+\.(attention\.)?output\.dropout", None)]
    g_oracle, _, _ = grads(vanilla, hf_loss(inputs), zspec, TAU)
    g_plain, _, _ = grads(vanilla, hf_loss(inputs))
    lora = [k for k in g if "lora_" in k]
    assert lora and all(g[k].abs().sum() > 0 for k in lora)
    sub = lambda x: {k: x[k] for k in lora}  # noqa: E731
    assert rel_err(sub(g), sub(g_oracle)) < 1e-5 < rel_err(sub(g_plain), sub(g_oracle))
    model.save_pretrained(tmp_path / "adapter")
    model.base_model.model.save_pretrained(tmp_path / "base")
    base = auto.from_pretrained(tmp_path / "base")
    assert hf_penal.penal_config(base).tau == TAU
    again = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    for k, v in model.state_dict().items():
        if "lora_" in k:
            assert torch.equal(again.state_dict()[k], v)
    assert len(hf_penal.sites(again.base_model.model)) == 4


# ---------------------------------------------------------------------------------------------- export
def test_export_in_eval_has_no_trace_of_the_op(bert):
    d, auto, inputs = bert
    ids = inputs["input_ids"]

    def ops(model):
        ep = torch.export.export(model.eval(), (ids,), strict=False)
        return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]

    assert ops(auto.from_pretrained(d, penal_tau=TAU)) == ops(auto.from_pretrained(d))


# ---------------------------------------------------------------------------------------------- state
def test_deepcopy_and_pickle_keep_the_penalty_and_state_dict_keys_are_unchanged(bert):
    d, auto, inputs = bert
    model = auto.from_pretrained(d, penal_tau=TAU)
    g_oracle = _oracle(auto, d, inputs)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert rel_err(grads(clone, hf_loss(inputs))[0], g_oracle) < 1e-5
        hf_penal.set_tau(clone, 0.0)  # a clone is independent of its source
    assert rel_err(grads(model, hf_loss(inputs))[0], g_oracle) < 1e-5
    assert list(model.state_dict()) == list(auto.from_pretrained(d).state_dict())


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("penal,match", [({"tau": "high"}, "'tau'"), ({"tau": -1}, "'tau'"),
                                         ({"taux": 1e-3}, "taux"), ({"sites": 7}, "'sites'"), ("yes", "penal")])
def test_malformed_config_penal_in_config_json_is_named(bert, tmp_path, penal, match):
    d, auto, _ = bert
    conf = json.loads(Path(d, "config.json").read_text())
    conf["penal"] = penal
    Path(d, "config.json").write_text(json.dumps(conf))
    with pytest.raises((ValueError, TypeError), match=match):
        auto.from_pretrained(d)


def test_missing_or_corrupt_timm_checkpoint_gives_one_clear_error(tmp_path):
    timm = pytest.importorskip("timm")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises((FileNotFoundError, OSError, RuntimeError), match="nope"):
        timm.create_model("resnet18", pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(missing), num_classes=3), penal=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(Exception) as err:  # noqa: PT011 - safetensors' own error type
        timm.create_model("resnet18", pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(bad), num_classes=3), penal=True)
    assert not isinstance(err.value, (AttributeError, KeyError, NameError))


# ---------------------------------------------------------------------------------------------- security
def test_no_unsafe_loading_anywhere_in_the_repository():
    offenders = []
    for path in list(ROOT.glob("hf_penal/**/*.py")) + list(ROOT.glob("recipes/**/*.py")) + \
            list(ROOT.glob("benchmarks/**/*.py")) + list(ROOT.glob("tests/**/*.py")):
        text = path.read_text()
        if path.name == "test_robustness.py":
            continue
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path}: {m.group(0)}")
        if re.search(r"trust_remote_code\s*=\s*True", text) or re.search(r"(?<![.\w])(eval|exec)\(", text):
            offenders.append(f"{path}: trust_remote_code/eval/exec")
    assert not offenders, offenders
