"""Storage of z for backward: 8-bit floats with a per-tensor scale, against independent computations.

The oracle for fp8 storage is written here from the format's definition (a power-of-two scale that maps max|z| to the
format's largest finite value, then a cast): grad + τ·dequant(z) must be exactly what the op produces, the penalty
term's error against fp32 storage is bounded by the format's precision, and the bytes autograd saves are measured
with `saved_tensors_hooks`, not assumed.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from _models import SPEC, build, hf_loss, saved
from _oracle import grads, rel_err, saved_bytes_and_grads

import hf_penal
from hf_penal import PenalConfig, PenalConnection
from hf_penal.ops import _pack_z, _unpack_z

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
# worst relative rounding error of a normal number: half an ulp, 2^-(mantissa bits + 1)
HALF_ULP = {torch.float8_e4m3fn: 2.0 ** -4, torch.float8_e5m2: 2.0 ** -3}


def _dequant_oracle(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    z = z.double()
    amax = z.abs().max().item()
    e = math.ceil(math.log2(amax / torch.finfo(dtype).max)) if amax > 0 else 0
    scale = 2.0 ** e
    return (z / scale).float().to(dtype).double() * scale


@pytest.mark.parametrize("dtype", FP8)
def test_fp8_pack_keeps_8_bits_and_a_scale_and_unpacks_to_the_oracle(dtype):
    torch.manual_seed(0)
    z = torch.randn(4, 16, 8) * 3.0
    packed = _pack_z(z, dtype)
    assert [t.dtype for t in packed] == [dtype, torch.float32] and packed[1].numel() == 1
    got = _unpack_z(packed, torch.float32)
    torch.testing.assert_close(got.double(), _dequant_oracle(z, dtype), rtol=0, atol=0)
    # every element within half an ulp of the format, relative to itself (all normal: max|z| fills the range)
    big = z.abs() > z.abs().max() * 2.0 ** -6
    assert ((got - z).abs()[big] <= HALF_ULP[dtype] * z.abs()[big] * (1 + 1e-6)).all()


@pytest.mark.parametrize("dtype", FP8)
def test_fp8_scale_keeps_small_activations_from_underflowing(dtype):
    torch.manual_seed(0)
    z = torch.randn(64, 32)
    tiny = z * 2.0 ** -40  # |z| ~ 1e-12: a plain cast to fp8 gives all zeros
    assert tiny.to(dtype).float().count_nonzero() == 0
    # a power-of-two scale makes the codes independent of the magnitude: same relative error at every scale
    assert torch.equal(_unpack_z(_pack_z(tiny, dtype), torch.float32), _unpack_z(_pack_z(z, dtype), torch.float32)
                       * 2.0 ** -40)
    zero = torch.zeros(3, 5)
    assert torch.equal(_unpack_z(_pack_z(zero, dtype), torch.float32), zero)


@pytest.mark.parametrize("dtype", FP8)
@pytest.mark.parametrize("zdtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_connection_gradient_is_grad_plus_tau_dequantized_z(dtype, zdtype):
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=zdtype, requires_grad=True)
    x = torch.randn(5, 6, dtype=zdtype) * 1e-3
    conn = PenalConnection(tau=0.5, storage_dtype=dtype)
    z = x @ w
    up = torch.randn(5, 6, dtype=zdtype)
    conn(z).backward(up)
    want = x.double().T @ (up.double() + 0.5 * _dequant_oracle(z.detach(), dtype).to(zdtype).double())
    if zdtype == torch.float32:
        torch.testing.assert_close(w.grad.double(), want, rtol=1e-6, atol=1e-9)
    else:  # the matmul and the add round to 8 (bf16) / 11 (fp16) bits
        torch.testing.assert_close(w.grad.double(), want, rtol=0, atol=2e-2 * want.abs().max().item())


def _saved_bytes_and_grads(model, inputs):
    return saved_bytes_and_grads(model, hf_loss(inputs))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit"])
def test_fp8_storage_quarters_saved_bytes_with_bounded_gradient_error(arch, tmp_path):
    tau = 1e-2
    d, auto, inputs = saved(arch, tmp_path)
    b_plain, g_plain = _saved_bytes_and_grads(auto.from_pretrained(d), inputs)
    b_fp32, g_fp32 = _saved_bytes_and_grads(auto.from_pretrained(d, penal_tau=tau), inputs)
    # the fp32-storage path is the explicit-penalty oracle
    g_oracle = grads(auto.from_pretrained(d), hf_loss(inputs), SPEC[arch][0], tau)[0]
    assert rel_err(g_fp32, g_oracle) < 1e-5
    penalty = {k: g_fp32[k] - g_plain[k] for k in g_plain}
    for name in ("float8_e4m3fn", "float8_e5m2"):
        dtype = getattr(torch, name)
        b, g = _saved_bytes_and_grads(auto.from_pretrained(d, penal={"tau": tau, "storage_dtype": name}), inputs)
        n_sites = len(hf_penal.sites(auto.from_pretrained(d, penal_tau=tau)))
        # 8 bits per element, plus one 4-byte scale (and the op's 0-dim coefficients) per site
        assert b - b_plain <= 0.25 * (b_fp32 - b_plain) + 16 * n_sites
        # error of the penalty term: ≤ half an ulp of the format relative to τ·z (elementwise bound, so in norm too)
        err_penalty = rel_err({k: g[k] - g_plain[k] for k in g_plain}, penalty)
        assert 1e-4 < err_penalty <= HALF_ULP[dtype], (name, err_penalty)
        assert rel_err(g, g_fp32) <= HALF_ULP[dtype] * rel_err(g_fp32, g_plain) * 1.01


def test_fp8_storage_is_a_config_value_saved_and_restored(tmp_path):
    for name in ("float8_e4m3fn", "float8_e5m2"):
        cfg = PenalConfig(storage_dtype=name)
        assert cfg.torch_storage_dtype is getattr(torch, name)
        assert PenalConfig(storage_dtype=getattr(torch, name)).storage_dtype == name
        assert PenalConfig(storage_dtype=f"torch.{name}").storage_dtype == name
    d, auto, inputs = saved("bert", tmp_path)
    model = auto.from_pretrained(d, penal={"storage_dtype": "float8_e5m2"})
    assert "storage_dtype=torch.float8_e5m2" in repr(model)
    model.save_pretrained(tmp_path / "again")
    again = auto.from_pretrained(tmp_path / "again")
    assert hf_penal.penal_config(again).storage_dtype == "float8_e5m2"
    with pytest.raises(ValueError, match="storage_dtype.*float8_e4m3fn"):
        PenalConfig(storage_dtype="float8")


def test_fp8_storage_under_torch_compile_equals_eager():
    torch._dynamo.reset()
    cfg, auto, inputs = build("gpt2")
    torch.manual_seed(0)
    model = hf_penal.apply(auto.from_config(cfg), tau=1e-2, storage_dtype="float8_e4m3fn")
    eager = grads(model, hf_loss(inputs))[0]
    compiled = torch.compile(model, backend="aot_eager")
    got = grads(compiled, hf_loss(inputs))[0]
    got = {k.removeprefix("_orig_mod."): v for k, v in got.items()}
    assert rel_err(got, eager) < 1e-5


# ---------------------------------------------------------------------------------------------- recompute
def _counts(model):
    states = [c.sum_site for _, c in hf_penal.surgery.connections(model) if c.sum_site is not None]
    return len(states), sum(s.recomputed for s in states), sum(s.stored for s in states)


# Mixtral and RobertaPreLayerNorm: their records name the sum (a decision of the table, checked here like the rest)
@pytest.mark.parametrize("arch", ["bert", "gpt2", "gpt2_cross", "llama", "vit", "t5", "mixtral",
                                  "roberta_prelayernorm"])
def test_recompute_equals_stored_z_to_fp32_rounding_and_saves_no_activation(arch, tmp_path):
    tau = 1e-2
    d, auto, inputs = saved(arch, tmp_path)
    b_plain, g_plain = _saved_bytes_and_grads(auto.from_pretrained(d), inputs)
    b_stored, g_stored = _saved_bytes_and_grads(auto.from_pretrained(d, penal_tau=tau), inputs)
    assert rel_err(g_stored, grads(auto.from_pretrained(d), hf_loss(inputs), SPEC[arch][0], tau)[0]) < 1e-5
    model = auto.from_pretrained(d, penal={"tau": tau, "storage_dtype": "recompute"})
    b, g = _saved_bytes_and_grads(model, inputs)
    n_sites = len(hf_penal.sites(model))
    assert _counts(model) == (n_sites, n_sites, 0)  # every site recomputed z, none fell back
    assert rel_err(g_stored, g_plain) > 0.1  # the penalty is a large part of the gradient ...
    assert rel_err(g, g_stored) < 1e-6  # ... and recompute gives it to fp32 rounding
    # saved storages (deduplicated): only the 0-dim coefficient per site beyond plain; stored z costs an activation
    assert b - b_plain <= 4 * n_sites < b_stored - b_plain
    states = [c.sum_site for _, c in hf_penal.surgery.connections(model)]
    assert all(s.x is None and s.pending is None for s in states)  # nothing held between steps


def test_recompute_falls_back_to_stored_z_under_gradient_checkpointing(tmp_path):
    tau = 1e-2
    d, auto, inputs = saved("bert", tmp_path)
    oracle = grads(auto.from_pretrained(d), hf_loss(inputs), SPEC["bert"][0], tau)[0]
    model = auto.from_pretrained(d, penal={"tau": tau, "storage_dtype": "recompute"})
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    runs = []
    h = model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *a: runs.append(1))
    g = grads(model, hf_loss(inputs))[0]
    h.remove()
    assert len(runs) == 2  # checkpointing still recomputes the layer
    assert _counts(model)[1:] == (0, 0)  # the stored path ran, not recompute
    assert rel_err(g, oracle) < 1e-5
    model.gradient_checkpointing_disable()
    assert rel_err(grads(model, hf_loss(inputs))[0], oracle) < 1e-5 and _counts(model)[1] > 0


def test_vit_with_dropout_is_exact_and_recompute_falls_back_when_the_add_is_not_x_plus_z(tmp_path):
    """ViT's one dropout serves both branches and is each site's end, so with hidden dropout on the penalty is on
    exactly what is added (the oracle: every call of the dropout) and recompute applies. A hook that changes z after
    the site (here it doubles the dropout's output) makes the add x + 2z: the graph check sees it and the stored z is
    used (same gradient as the stored path)."""
    cfg, auto, inputs = build("vit")
    cfg.hidden_dropout_prob = 0.1
    torch.manual_seed(0)
    base = auto.from_config(cfg)

    def loss(m):
        torch.manual_seed(1)  # the same dropout masks in every run
        return hf_loss(inputs)(m)
    oracle = grads(base, loss, [(r"vit\.layers\.\d+\.dropout", None)], 1e-2)[0]
    assert rel_err(oracle, grads(base, loss)[0]) > 1e-4
    for doubled in (False, True):
        out = {}
        for storage in (None, "recompute"):
            model = hf_penal.apply(auto.from_config(cfg), tau=1e-2, storage_dtype=storage)
            model.load_state_dict(base.state_dict())
            if doubled:
                for layer in model.vit.layers:
                    layer.dropout.register_forward_hook(lambda m, a, o: 2 * o)
            out[storage] = grads(model, loss)[0]
        n = len(hf_penal.sites(model))
        assert _counts(model) == ((n, 0, n) if doubled else (n, n, 0))
        assert rel_err(out["recompute"], out[None]) < 1e-6
        if not doubled:
            assert rel_err(out[None], oracle) < 1e-5


def test_recompute_plan_names_the_sites_that_store_z(tmp_path):
    timm = pytest.importorskip("timm")
    from hf_penal import recompute

    resnet = hf_penal.apply(timm.create_model("resnet18", pretrained=False, num_classes=3), tau=1e-2,
                            storage_dtype="recompute")
    assert set(recompute.plan(resnet, hf_penal.sites(resnet)).values()) == {"stored (in-place add)"}
    assert _counts(resnet) == (0, 0, 0) and "storage=recompute" not in repr(resnet)
    vit = hf_penal.apply(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
                                           depth=2), tau=1e-2, storage_dtype="recompute")
    assert set(recompute.plan(vit, hf_penal.sites(vit)).values()) == {"recompute"}
    assert "PenalConnection(tau=0.01, storage=recompute)" in repr(vit)
    vit.set_grad_checkpointing(True)  # timm's switch: the stored path
    F.cross_entropy(vit(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert _counts(vit)[1:] == (0, 0)
    vit.set_grad_checkpointing(False)
    F.cross_entropy(vit(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert _counts(vit)[1:] == (4, 0)

    d, auto, inputs = saved("bert", tmp_path)
    named = auto.from_pretrained(d, penal={"storage_dtype": "recompute",
                                           "sites": ["bert.encoder.layer.0.output.dense"]})
    assert _counts(named) == (0, 0, 0)  # a user-named site: z stored
    mode = auto.from_pretrained(d, penal={"storage_dtype": "recompute", "mode": "scaled", "tau": 1e-2})
    assert _counts(mode) == (0, 0, 0)  # a residual mode rewrites the add: z stored
    hf_penal.remove(mode)
    assert not any(type(h).__module__.startswith("hf_penal") for m in mode.modules()
                   for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])


def test_recompute_uses_stored_z_under_compile_and_with_efficiency_probes(tmp_path):
    from hf_penal.diagnostics import markov_efficiency, track_efficiency

    tau = 1e-2
    d, auto, inputs = saved("gpt2", tmp_path)
    stored = grads(auto.from_pretrained(d, penal_tau=tau), hf_loss(inputs))[0]
    model = auto.from_pretrained(d, penal={"tau": tau, "storage_dtype": "recompute"})
    track_efficiency(model)
    assert rel_err(grads(model, hf_loss(inputs))[0], stored) < 1e-6
    assert _counts(model)[1] == 0 and len(markov_efficiency(model)) == 2
    track_efficiency(model, enabled=False)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    got = {k.removeprefix("_orig_mod."): v for k, v in grads(compiled, hf_loss(inputs))[0].items()}
    assert rel_err(got, stored) < 1e-5
    assert _counts(model)[1] == 0


def test_recompute_holds_nothing_in_eval_or_without_grad(tmp_path):
    d, auto, inputs = saved("llama", tmp_path)
    model = auto.from_pretrained(d, penal={"storage_dtype": "recompute"})
    states = [c.sum_site for _, c in hf_penal.surgery.connections(model)]
    model.eval()
    model(input_ids=inputs["input_ids"])
    model.train()
    with torch.no_grad():
        model(input_ids=inputs["input_ids"])
    assert all(s.x is None and s.pending is None for s in states) and _counts(model)[1:] == (0, 0)


def test_inspect_shows_which_sites_recompute_z(tmp_path):
    import io

    from hf_penal.cli import inspect

    d, _, _ = saved("gpt2", tmp_path)
    buf = io.StringIO()
    assert inspect(d, out=buf) == 0
    lines = buf.getvalue().splitlines()
    assert lines[0].split()[-1] == "storage_dtype='recompute'"
    assert [ln.split()[-1] for ln in lines[1:5]] == ["recompute"] * 4
    timm = pytest.importorskip("timm")
    assert timm.is_model("resnet18")
    buf = io.StringIO()
    inspect("resnet18", out=buf)
    assert buf.getvalue().splitlines()[1].endswith("stored (in-place add)")
