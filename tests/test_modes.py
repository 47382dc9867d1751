"""Residual modes (hf_penal.modes): formulas, per-architecture references, penal composition, persistence, bad input.

References are computed independently of hf_penal's capture machinery: hooks on the *vanilla* model take x from the
block input (plus the first branch's output for the second branch) or from the shortcut's output, and rewrite the add
by hand.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hf_penal
from hf_penal import modes
from hf_penal.config import PenalConfig

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def quiet_apply(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_penal.apply(model, **kw)


def close(a, b, atol=1e-5, rtol=1e-4):
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------ module formulas
@pytest.fixture
def xz():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)


def ln_ref(v, dim=-1, eps=1e-5):
    v = v.movedim(dim, -1)
    mu = v.mean(-1, keepdim=True)
    var = v.var(-1, unbiased=False, keepdim=True)
    return ((v - mu) / torch.sqrt(var + eps)).movedim(-1, dim)


def test_scaled_skip_is_lambda_x_plus_z(xz):
    x, z = xz
    m = modes.ScaledSkip(skip_scale=0.3)
    assert close(m(x, z), 0.3 * x + z)
    assert close(x + m.branch_delta(x, z), 0.3 * x + z) and close(m.skip_delta(x, z) + z, 0.3 * x + z)
    assert "skip_scale=0.3" in repr(m)


def test_layernorm_skip_is_ln_of_lambda_x_plus_z(xz):
    x, z = xz
    m = modes.LayerNormSkip(6, skip_scale=0.5)
    assert close(m(x, z), ln_ref(0.5 * x + z))
    assert torch.equal(m.norm.weight, torch.ones(6)) and torch.equal(m.norm.bias, torch.zeros(6))


def test_recursive_layernorm_skip_recursion(xz):
    x, z = xz
    m = modes.RecursiveLayerNormSkip(6, recursions=3)
    y = ln_ref(x + z)
    for _ in range(2):
        y = ln_ref(x + y)
    assert close(m(x, z), y)
    assert len(m.norms) == 3 and "recursions=3" in repr(m)
    assert close(modes.RecursiveLayerNormSkip(6, recursions=1)(x, z), modes.LayerNormSkip(6)(x, z))


def test_entangled_skip_mixes_the_feature_dimension(xz):
    x, z = xz
    M = torch.randn(6, 6)
    m = modes.EntangledSkip(M)
    assert close(m(x, z), torch.einsum("ij,bsj->bsi", M, x) + z)
    xc, zc = torch.randn(2, 6, 3, 4), torch.randn(2, 6, 3, 4)  # NCHW: M is a 1x1 channel mixing
    mc = modes.EntangledSkip(M, channel_dim=1)
    assert close(mc(xc, zc), torch.einsum("ij,bjhw->bihw", M, xc) + zc)
    assert "M" not in m.state_dict() and "M" in modes.EntangledSkip(M, learnable=True).state_dict()


def test_channel_layernorm_on_feature_maps():
    v = torch.randn(2, 6, 3, 4)
    assert close(modes.ChannelLayerNorm(6, channel_dim=1)(v), ln_ref(v, dim=1))


def test_mappings_are_well_conditioned():
    def g():
        return torch.Generator().manual_seed(3)

    q = modes.orthogonal_mapping(16, g())
    assert close(q @ q.T, torch.eye(16), atol=1e-5)
    assert torch.equal(q, modes.orthogonal_mapping(16, g()))  # reproducible from the seed
    p = modes.sparse_mapping(20, 0.5, g())
    assert torch.equal(p @ p.T, torch.eye(20)) and int((p.diagonal() == 0).sum()) == 10
    assert torch.equal(modes.sparse_mapping(20, 0.0, g()), torch.eye(20))
    s = modes.structural_mapping(10)
    ev = torch.linalg.eigvalsh(s)
    assert torch.equal(s.diagonal(), torch.ones(10)) and torch.equal(s, s.T) and ev.min() > 0
    assert ev.max() / ev.min() <= 9 and s[0, 4] == 0 and s[0, 1] == 0.5


def test_mode_table_and_factory():
    assert set(modes.MODE_CLASSES) == {"identity", "scaled", "layernorm", "recursive_layernorm", "entangled"}
    assert modes.create_mode(PenalConfig(), 8) is None
    for mapping in ("orthogonal", "sparse", "structural"):
        m = modes.create_mode(PenalConfig(mode="entangled", mapping=mapping, sparsity=0.5), 8, site="a")
        assert isinstance(m, modes.EntangledSkip) and m.M.shape == (8, 8)


# ------------------------------------------------------------------------------------------------ architectures
def _bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def _llama():
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)).eval()


def _t5():
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=50, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                                   dropout_rate=0.0)).eval()


def _vit():
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              image_size=32, patch_size=8)).eval()


def _timm(name, **kw):
    if name.startswith("resnet"):
        kw.setdefault("zero_init_last", False)  # else z = 0 at init and the penalty is invisible

    def make():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    return make


IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
IMG32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
IMG64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def _hf_out(model, inp):
    return model(inp).last_hidden_state


def _timm_out(model, inp):
    return model(inp)


# name: (builder, input, output fn, site, x = input of this module, + output of this module (index), or
#        x = output of this shortcut module (which the block computes after the branch), channel dim)
ARCHS = {
    "bert_attention": (_bert, IDS, _hf_out, "encoder.layer.0.attention.output.dropout", "encoder.layer.0", None, None,
                       -1),
    "gpt2_mlp": (_gpt2, IDS, _hf_out, "h.0.mlp", "h.0", ("h.0.attn", 0), None, -1),
    "llama_mlp": (_llama, IDS, _hf_out, "layers.1.mlp", "layers.1", ("layers.1.self_attn", 0), None, -1),
    "t5_ff": (_t5, IDS, _hf_out, "encoder.block.0.layer.1.dropout", "encoder.block.0.layer.1", None, None, -1),
    "hf_vit_mlp": (_vit, IMG32, _hf_out, "layers.0.mlp", "layers.0", ("layers.0.attention", 0),
                   None, -1),
    "timm_vit_mlp": (_timm("vit_tiny_patch16_224", img_size=32), IMG32, _timm_out, "blocks.1.drop_path2", "blocks.1",
                     ("blocks.1.drop_path1", None), None, -1),
    "resnet18_identity_skip": (_timm("resnet18"), IMG32, _timm_out, "layer1.1.bn2", "layer1.1", None, None, 1),
    "resnet18_downsample": (_timm("resnet18"), IMG32, _timm_out, "layer2.0.bn2", None, None, "layer2.0.downsample", 1),
    "resnet26_bottleneck": (_timm("resnet26"), IMG32, _timm_out, "layer3.0.bn3", None, None, "layer3.0.downsample", 1),
    "convnext_atto": (_timm("convnext_atto"), IMG64, _timm_out, "stages.1.blocks.1.drop_path", None, None,
                      "stages.1.blocks.1.shortcut", 1),
}


def _first(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("hidden_states", kwargs.get("x"))


def _reference(arch, formula):
    """The vanilla model's output with the add at the site replaced by y = formula(x, z), by hand (every site used
    here returns z itself, not a tuple)."""
    make, inp, out_fn, site, x_in, plus, shortcut, _ = ARCHS[arch]
    model = make()
    mods = dict(model.named_modules())
    st, handles = {}, []

    def take(out, index):
        return out if index is None else out[index]

    if shortcut is None:
        handles.append(mods[x_in].register_forward_pre_hook(
            lambda m, a, k: st.__setitem__("x", _first(a, k)), with_kwargs=True))
        if plus is not None:
            handles.append(mods[plus[0]].register_forward_hook(
                lambda m, a, o: st.__setitem__("x", st["x"] + take(o, plus[1]))))
        handles.append(mods[site].register_forward_hook(lambda m, a, o: formula(st["x"], o) - st["x"]))
    else:
        handles.append(mods[site].register_forward_hook(lambda m, a, o: st.__setitem__("z", o)))
        handles.append(mods[shortcut].register_forward_hook(lambda m, a, o: formula(o, st["z"]) - st["z"]))
    with torch.no_grad():
        out = out_fn(model, inp)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_entangled_matches_hand_computed_reference(arch):
    make, inp, out_fn, site, *_, dim = ARCHS[arch]
    model = quiet_apply(make(), mode="entangled", mapping="orthogonal", sites=[site]).eval()
    M = dict(model.named_modules())[site].residual_mode.M
    with torch.no_grad():
        got = out_fn(model, inp)
    ref = _reference(arch, lambda x, z: F.linear(x.movedim(dim, -1), M).movedim(-1, dim) + z)
    plain = _reference(arch, lambda x, z: x + z)
    assert close(got, ref) and not close(got, plain)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_recursive_layernorm_matches_hand_computed_reference(arch):
    make, inp, out_fn, site, *_, dim = ARCHS[arch]
    model = quiet_apply(make(), mode="recursive_layernorm", recursions=2, sites=[site]).eval()
    with torch.no_grad():
        got = out_fn(model, inp)
    ref = _reference(arch, lambda x, z: ln_ref(x + ln_ref(x + z, dim), dim))
    assert close(got, ref)


@pytest.mark.parametrize("arch", ["gpt2_mlp", "resnet18_downsample", "convnext_atto"])
def test_scaled_matches_hand_computed_reference(arch):
    make, inp, out_fn, site, *_ = ARCHS[arch]
    model = quiet_apply(make(), mode="scaled", skip_scale=0.5, sites=[site]).eval()
    with torch.no_grad():
        got = out_fn(model, inp)
    assert close(got, _reference(arch, lambda x, z: 0.5 * x + z))


@pytest.mark.parametrize("make, inp", [(_bert, IDS), (_gpt2, IDS), (_llama, IDS), (_t5, IDS), (_vit, IMG32),
                                       (_timm("vit_tiny_patch16_224", img_size=32), IMG32),
                                       (_timm("resnet18"), IMG32), (_timm("convnext_atto"), IMG64)])
def test_every_mode_runs_on_every_site(make, inp):
    for kw in ({"mode": "layernorm", "skip_scale": 0.7}, {"mode": "entangled", "mapping": "sparse", "sparsity": 0.5},
               {"mode": "entangled", "mapping": "structural"}):
        model = quiet_apply(make(), **kw)
        assert all(s.skip for s in hf_penal.sites(model))
        with torch.no_grad():
            out = model(inp)
        out = out if torch.is_tensor(out) else out.last_hidden_state
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ penal composition
def _explicit_penalty_grads(make, inp, loss_fn, tau, **kw):
    """Vanilla model with the mode (no penal) + (tau/2)·Σ‖z‖² over the sites' branch outputs z."""
    model = make().train()
    zs = []
    sites = hf_penal.sites(model)
    mods = dict(model.named_modules())
    for s in sites:  # registered before apply: these hooks see z before the mode rewrites it
        mods[s.name].register_forward_hook(
            lambda m, a, o, i=s.output_index: zs.append((o if i is None else o[i]).clone()))  # ResNet: `+=` later
    quiet_apply(model, tau=0.0, **kw)
    model.train()
    loss = loss_fn(model, inp)
    loss = loss + 0.5 * tau * sum(z.float().pow(2).sum() for z in zs)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _penal_grads(make, inp, loss_fn, tau, **kw):
    model = quiet_apply(make(), tau=tau, **kw).train()
    loss_fn(model, inp).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _hf_loss(model, inp):
    return model(inp).last_hidden_state.pow(2).mean()


def _timm_loss(model, inp):
    return F.cross_entropy(model(inp), torch.tensor([1, 3]))


@pytest.mark.parametrize("make, inp, loss_fn, kw", [
    (_bert, IDS, _hf_loss, {"mode": "layernorm", "skip_scale": 0.5}),
    (_gpt2, IDS, _hf_loss, {"mode": "entangled", "mapping": "orthogonal", "learnable": True}),
    (_timm("resnet18"), IMG32, _timm_loss, {"mode": "recursive_layernorm", "recursions": 2}),
    (_timm("resnet18"), IMG32, _timm_loss, {"mode": "scaled", "skip_scale": 0.5}),
])
def test_penal_with_mode_equals_explicit_penalty(make, inp, loss_fn, kw):
    tau = 0.05
    got = _penal_grads(make, inp, loss_fn, tau, **kw)
    want = _explicit_penalty_grads(make, inp, loss_fn, tau, **kw)
    plain = _penal_grads(make, inp, loss_fn, 0.0, **kw)
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values())
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    moved = max((plain[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-4 * scale and moved > 100 * worst


def test_mode_alone_has_no_penalty_unless_tau_given():
    m = quiet_apply(_bert(), mode="recursive_layernorm", recursions=2)
    assert hf_penal.penal_config(m).tau == 0.0 and not any("penal_connection" in n for n, _ in m.named_modules())
    m = quiet_apply(_bert(), mode="entangled", mapping="orthogonal", tau=3e-4)
    assert hf_penal.penal_config(m).tau == 3e-4 and any("penal_connection" in n for n, _ in m.named_modules())
    assert hf_penal.penal_config(quiet_apply(_bert())).tau == "auto"  # identity: the calibrated default


# ------------------------------------------------------------------------------------------------ checkpointing, reuse
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_with_mode_is_exact(reentrant):
    def grads(ckpt):
        torch.manual_seed(0)
        from transformers import BertConfig, BertForSequenceClassification
        cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        m = quiet_apply(BertForSequenceClassification(cfg), mode="layernorm", skip_scale=0.5, tau=0.01).train()
        if ckpt:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        calls = []
        m.bert.encoder.layer[0].attention.output.dropout.register_forward_hook(lambda *a: calls.append(1))
        m(IDS, labels=torch.tensor([0, 1])).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, len(calls)

    ref, n_ref = grads(False)
    got, n_got = grads(True)
    assert n_ref == 1 and n_got == 2  # the layer really was recomputed
    assert all(close(got[k], ref[k], atol=1e-6) for k in ref)


def test_block_called_several_times_uses_fresh_skip_inputs():
    m = quiet_apply(_timm("resnet18")(), mode="layernorm")
    a, b = IMG32, IMG32.flip(0) * 2
    with torch.no_grad():
        alone = m(b)
        m(a)
        again = m(b)
    assert torch.equal(alone, again)


def test_deepcopy_and_pickle_of_a_model_with_modes():
    import copy
    import pickle
    m = quiet_apply(_gpt2(), mode="entangled", learnable=True)
    with torch.no_grad():
        ref = m(IDS).last_hidden_state
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with torch.no_grad():
            assert torch.equal(clone(IDS).last_hidden_state, ref)


# ------------------------------------------------------------------------------------------------ remove, persistence
def _fingerprint(model):
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_pre_hooks_with_kwargs),
                 len(m._forward_hooks_with_kwargs)) for n, m in model.named_modules()}
    return (repr(model), [n for n, _ in model.named_parameters()], [n for n, _ in model.named_buffers()],
            list(model.state_dict()), hooks, "penal" in model.config.__dict__)


def test_remove_restores_model_exactly():
    m = _bert()
    before = _fingerprint(m)
    with torch.no_grad():
        ref = m(IDS).last_hidden_state
    quiet_apply(m, mode="recursive_layernorm", recursions=2, tau=1e-3)
    assert _fingerprint(m) != before
    hf_penal.remove(m)
    assert _fingerprint(m) == before
    with torch.no_grad():
        assert torch.equal(m(IDS).last_hidden_state, ref)


def test_reapply_with_same_mode_keeps_trained_mode_weights():
    m = quiet_apply(_bert(), mode="layernorm")
    ln = m.encoder.layer[0].output.dropout.residual_mode.norm
    with torch.no_grad():
        ln.weight.fill_(2.0)
    quiet_apply(m, tau=1e-3)  # only tau changes
    assert m.encoder.layer[0].output.dropout.residual_mode.norm.weight[0] == 2.0


def test_save_pretrained_round_trip_restores_layernorm_parameters(tmp_path):
    from transformers import AutoModel
    m = quiet_apply(_bert(), mode="recursive_layernorm", recursions=2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "residual_mode" in n:
                p.normal_()
        ref = m(IDS).last_hidden_state
    m.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert hf_penal.penal_config(loaded).mode == "recursive_layernorm"
    assert not [w for w in caught if "hf_penal" in str(w.message)]  # saved with this mode: nothing changes
    with torch.no_grad():
        assert torch.equal(loaded(IDS).last_hidden_state, ref)


def test_learnable_and_fixed_matrices_round_trip_through_state_dict():
    make = _timm("resnet18")
    m = quiet_apply(make(), mode="entangled", mapping="structural", learnable=True)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("residual_mode.M"):
                p.add_(0.01 * torch.randn_like(p))
        ref = m(IMG32)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    assert any(k.endswith("residual_mode.M") for k in sd)
    m2 = quiet_apply(make(), mode="entangled", mapping="structural", learnable=True)
    m2.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(m2(IMG32), ref)
    fixed = quiet_apply(make(), mode="entangled", mapping="sparse", sparsity=0.5, seed=7)
    assert not any("residual_mode" in k for k in fixed.state_dict())  # rebuilt from the seed, not stored
    again = quiet_apply(make(), mode="entangled", mapping="sparse", sparsity=0.5, seed=7)
    other = quiet_apply(make(), mode="entangled", mapping="sparse", sparsity=0.5, seed=8)
    assert torch.equal(fixed.layer1[0].bn2.residual_mode.M, again.layer1[0].bn2.residual_mode.M)
    assert not torch.equal(fixed.layer1[0].bn2.residual_mode.M, other.layer1[0].bn2.residual_mode.M)


def test_from_pretrained_with_mode_warns_once(tmp_path):
    from transformers import AutoModel
    _bert().save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoModel.from_pretrained(tmp_path, penal={"mode": "layernorm"})
    assert len([w for w in caught if "changes the forward function" in str(w.message)]) == 1


def test_mode_warning_only_for_models_loaded_with_weights(tmp_path):
    """from_config builds random weights (even from a config read out of a checkpoint folder, which sets
    _name_or_path): a mode changes no checkpoint's function there, so no warning; timm warns only with weights."""
    from transformers import AutoConfig, AutoModel
    _bert().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config._name_or_path  # what the old heuristic took for "pretrained"

    def mode_warnings(build):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build()
        mine = [w for w in caught if "changes the forward function" in str(w.message)]
        assert all(w.filename == __file__ for w in mine)  # points at the caller's line, not inside hf_penal
        return len(mine)

    assert mode_warnings(lambda: AutoModel.from_config(config, penal={"mode": "layernorm"})) == 0
    assert mode_warnings(lambda: AutoModel.from_pretrained(tmp_path, penal={"mode": "layernorm"})) == 1
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    save_file(timm.create_model("resnet18", num_classes=4).state_dict(), str(tmp_path / "r.safetensors"))
    assert mode_warnings(lambda: timm.create_model("resnet18", num_classes=4, penal={"mode": "scaled"})) == 0
    overlay = dict(file=str(tmp_path / "r.safetensors"))
    assert mode_warnings(lambda: timm.create_model("resnet18", num_classes=4, pretrained=True,
                                                   pretrained_cfg_overlay=overlay, penal={"mode": "scaled"})) == 1


def test_mode_applied_later_warns_only_for_a_model_an_integration_loaded_with_weights(tmp_path):
    """A model loaded plain and given a mode later by `hf_penal.apply` (no ``pretrained=``): neither transformers
    (`from_config` of a config read from a checkpoint sets ``_name_or_path`` too) nor timm (``pretrained_cfg`` is set
    either way) records whether weights were loaded, so the integrations' record (`persistence.mark_pretrained`)
    decides."""
    from transformers import AutoConfig, AutoModel
    _bert().save_pretrained(tmp_path)

    def mode_warnings(model, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf_penal.apply(model, **kw)
        return len([w for w in caught if "changes the forward function" in str(w.message)])

    assert mode_warnings(AutoModel.from_config(AutoConfig.from_pretrained(tmp_path)), mode="layernorm") == 0
    assert mode_warnings(AutoModel.from_pretrained(tmp_path), mode="layernorm") == 1
    assert mode_warnings(AutoModel.from_pretrained(tmp_path), mode="layernorm", pretrained=False) == 0
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    save_file(timm.create_model("resnet18", num_classes=4).state_dict(), str(tmp_path / "r.safetensors"))
    assert mode_warnings(timm.create_model("resnet18", num_classes=4), mode="scaled") == 0
    loaded = timm.create_model("resnet18", num_classes=4, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "r.safetensors")))
    assert mode_warnings(loaded, mode="scaled") == 1


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, field", [
    ({"mode": "teleport"}, "mode"), ({"mode": "entangled", "mapping": "dense"}, "mapping"),
    ({"mode": "recursive_layernorm", "recursions": 0}, "recursions"),
    ({"mode": "entangled", "mapping": "sparse", "sparsity": 1.0}, "sparsity"),
    ({"mode": "entangled", "mapping": "sparse", "sparsity": -0.1}, "sparsity"),
    ({"mode": "scaled", "skip_scale": float("nan")}, "skip_scale"),
    ({"mode": "layernorm", "sites": ["encoder.layer.0.output.dense"]}, "mode"),  # a user-given site: x unknown
])
def test_bad_input_raises_and_leaves_model_untouched(kw, field):
    m = quiet_apply(_bert(), mode="layernorm")
    before = _fingerprint(m)
    with pytest.raises(ValueError, match=field):
        hf_penal.apply(m, **kw)
    assert _fingerprint(m) == before and hf_penal.penal_config(m).mode == "layernorm"


def test_probe_sites_refuse_modes_before_touching_the_model():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    model = torch.nn.Sequential(Block(), Block())
    assert hf_penal.sites(model, example_inputs=torch.zeros(1, 4))  # the probe finds them
    with pytest.raises(ValueError, match="mode"):
        hf_penal.apply(model, mode="scaled", skip_scale=0.5, example_inputs=torch.zeros(1, 4))
    assert hf_penal.penal_config(model) is None and not model[0].fc._forward_hooks
