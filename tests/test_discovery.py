"""Discovery beyond the architecture table, on real architectures from tiny configs, saved and reloaded through
`from_pretrained(..., penal=True)` / `timm.create_model(..., penal=True)`: parallel residual blocks give a site per
branch, windowed-attention blocks that reshape / pad / roll / crop around the branch keep their sites, a probe that
cannot run the model says so (and what to pass), and probe inputs are built from the model's main input and config.
Each checks gradients against the explicit-penalty oracle (`tests/_oracle.py`) and bit-identical eval outputs."""
import copy
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers as T
from _models import float_outputs, perturbed
from _oracle import grads, rel_err
from torch import nn

import hf_penal

timm = pytest.importorskip("timm")
import hf_penal.discovery as S  # noqa: E402

TAU = 1e-2
L = 2


def _loss(args=(), kwargs=None):
    kwargs = kwargs or {}

    def loss(m):
        torch.manual_seed(0)
        return sum(t.float().square().mean() for t in float_outputs(m(*args, **kwargs)))
    return loss


def _hf_pair(cls, cfg, tmp_path, **penal):
    torch.manual_seed(0)
    d = str(tmp_path / "m")
    perturbed(cls(cfg)).save_pretrained(d)
    return cls.from_pretrained(d), cls.from_pretrained(d, penal=True, penal_tau=TAU, **penal)


def _check_oracle(vanilla, model, zspec, n_sites, args=(), kwargs=None):
    """Penalized gradients == explicit penalty on the oracle's z modules; eval outputs bit-identical."""
    loss = _loss(args, kwargs)
    vanilla.eval(), model.eval()
    with torch.no_grad():
        a, b = float_outputs(vanilla(*args, **(kwargs or {}))), float_outputs(model(*args, **(kwargs or {})))
    assert a and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    g_plain, l_plain, _ = grads(vanilla, loss)
    g_oracle, _, fired = grads(vanilla, loss, zspec, TAU)
    assert n_sites is None or fired == n_sites  # None: a site called several times (a shared module)
    g_penal, l_penal, _ = grads(model, loss)
    assert torch.allclose(l_penal, l_plain, rtol=1e-6, atol=0)
    assert rel_err(g_oracle, g_plain) > 1e-4  # the oracle can tell a no-op apart
    assert rel_err(g_penal, g_oracle) < 1e-5


_IDS = dict(input_ids=torch.arange(3, 3 + 16).reshape(2, 8) % 90 + 3)


# ------------------------------------------------------------------------------------------ parallel residual blocks
PARALLEL = {
    # attn_out + mlp_out + residual in one expression
    "gptj": (T.GPTJModel, lambda: T.GPTJConfig(n_embd=32, n_layer=L, n_head=2, rotary_dim=8, vocab_size=100,
                                               n_positions=64),
             [(r"h\.\d\.attn", 0), (r"h\.\d\.mlp", None)]),
    # mlp_output + attn_output + hidden_states (use_parallel_residual)
    "gpt_neox": (T.GPTNeoXModel, lambda: T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=100,
                                                         use_parallel_residual=True),
                 [(r"layers\.\d\.post_attention_dropout", None), (r"layers\.\d\.post_mlp_dropout", None)]),
    # residual + attn_out + mlp_out
    "cohere": (T.CohereModel, lambda: T.CohereConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                                     num_key_value_heads=2, intermediate_size=64, vocab_size=100),
               [(r"layers\.\d\.self_attn", 0), (r"layers\.\d\.mlp", None)]),
}


@pytest.mark.parametrize("arch", list(PARALLEL))
def test_parallel_blocks_get_a_site_per_branch_with_exact_gradients(arch, tmp_path):
    cls, cfg, zspec = PARALLEL[arch]
    vanilla, model = _hf_pair(cls, cfg(), tmp_path)
    found = hf_penal.sites(model)
    assert Counter(s.kind for s in found) == {"attention": L, "mlp": L}
    assert {s.source for s in found} == {"probe"} and len({s.layer for s in found}) == L
    _check_oracle(vanilla, model, zspec, 2 * L, kwargs=_IDS)


def _per_call_oracle(model, loss, layers, shared, calls):
    """Explicit penalty on the calls (per layer forward, counted from 0) of each layer's `shared` module: the
    oracle of a module that ends several branches, independent of how hf_penal tells the calls apart."""
    captured, handles = [], []
    for layer in layers:
        count = [0]
        handles.append(layer.register_forward_pre_hook(lambda m, a, c=count: c.__setitem__(0, 0)))

        def capture(m, a, out, c=count):
            if c[0] in calls:
                captured.append(out)
            c[0] += 1
        handles.append(getattr(layer, shared).register_forward_hook(capture))
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        (loss(model) + TAU / 2 * sum(z.square().sum() for z in captured)).backward()
    finally:
        for h in handles:
            h.remove()
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return g, len(captured)


@pytest.mark.parametrize("select, calls", [("all", {0, 1}), ("attention", {0}), ("mlp", {1})])
def test_a_shared_module_ending_both_parallel_branches_gives_one_site_per_branch(select, calls, tmp_path):
    """Phi applies one `resid_dropout` to the attention output and to the MLP output: two sites per layer, named after
    each branch's own module with its kind, z taken at the shared dropout's call after that module (exact with
    dropout on: resid_pdrop 0.2), and `sites=` selects the right branch."""
    cfg = T.PhiConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                      vocab_size=100, resid_pdrop=0.2)
    vanilla, model = _hf_pair(T.PhiModel, cfg, tmp_path, penal_sites=select)
    found = hf_penal.sites(model)
    want = {"all": ("self_attn", "mlp"), "attention": ("self_attn",), "mlp": ("mlp",)}[select]
    assert [(s.name, s.kind, s.end) for s in found] == [
        (f"layers.{i}.{b}", "attention" if b == "self_attn" else "mlp", f"layers.{i}.resid_dropout")
        for i in range(L) for b in want]
    loss = _loss(kwargs=_IDS)
    g_oracle, fired = _per_call_oracle(vanilla, loss, vanilla.layers, "resid_dropout", calls)
    assert fired == len(found)
    g_plain = grads(vanilla, loss)[0]
    assert rel_err(g_oracle, g_plain) > 1e-4
    for m in (model, copy.deepcopy(model)):  # a copy's hooks point at the copy's own connections
        assert rel_err(grads(m, loss)[0], g_oracle) < 1e-5
    hf_penal.remove(model)
    assert not any(layer.resid_dropout._forward_hooks or layer.self_attn._forward_hooks for layer in model.layers)
    assert rel_err(grads(model, loss)[0], g_plain) < 1e-6


def test_inspect_lists_each_branch_of_a_shared_module_on_a_model_outside_the_table(tmp_path, capsys):
    """The probe runs the model, so `hf-penal inspect` builds a model outside the table on the CPU."""
    from hf_penal import cli

    cfg = T.PhiConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                      vocab_size=100)
    T.PhiForCausalLM(cfg).save_pretrained(tmp_path)
    assert cli.main(["inspect", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:-1]] == [
        [f"model.layers.{i}.{b}", f"model.layers.{i}", k] for i in range(L)
        for b, k in (("self_attn", "attention"), ("mlp", "mlp"))]
    assert lines[-1] == f"{2 * L} residual sites in PhiForCausalLM (attention: {L}, mlp: {L})"


# ------------------------------------------------------------------------------------ windowed-attention vision blocks
def test_swin_pads_rolls_and_crops_around_the_branch_and_keeps_exact_sites(tmp_path):
    # a 10x10 patch grid with window 4: padded to 12, cyclically shifted in the second block, cropped back
    cfg = T.SwinConfig(image_size=40, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4,
                       num_labels=3)
    vanilla, model = _hf_pair(T.SwinForImageClassification, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert Counter(s.kind for s in found) == {"attention": 4, "mlp": 4}
    # Swin's one `dropout` serves both branches, the attention one inside a longer chain: not a site
    assert not any(s.name.endswith(".dropout") for s in found)
    assert all(s.note == "" for s in found if s.kind == "attention")
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    zspec = [(r"swin\.encoder\.layers\.\d\.blocks\.\d\.drop_path", None),
             (r"swin\.encoder\.layers\.\d\.blocks\.\d\.mlp", None)]  # == what is added: hidden_dropout_prob is 0
    _check_oracle(vanilla, model, zspec, 8, kwargs=dict(pixel_values=pixels))


def _sam_cfg(window):
    return T.SamVisionConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, image_size=64, patch_size=8,
                             window_size=window, global_attn_indexes=[1], output_channels=16, mlp_dim=64)


def test_sam_window_unpartition_between_attention_and_add_keeps_the_site(tmp_path):
    """SAM's vision layer reshapes the attention output back from windows with no module in between."""
    vanilla, model = _hf_pair(T.SamVisionModel, _sam_cfg(window=4), tmp_path)
    found = hf_penal.sites(model)
    assert [(s.name, s.kind, s.note) for s in found] == [
        (f"vision_encoder.layers.{i}.{b}", k, "") for i in range(L) for b, k in (("attn", "attention"), ("mlp", "mlp"))]
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    zspec = [(r"vision_encoder\.layers\.\d\.attn", 0), (r"vision_encoder\.layers\.\d\.mlp", None)]
    _check_oracle(vanilla, model, zspec, 2 * L,
                  kwargs=dict(pixel_values=pixels))


def test_padded_windows_are_noted_on_the_site():
    """With an 8x8 grid and window 3 the attention runs on a 9x9 padded grid: the site notes that its penalty also
    covers the padding (no module returns the cropped tensor)."""
    torch.manual_seed(0)
    found = hf_penal.sites(T.SamVisionModel(_sam_cfg(window=3)))
    padded = [s for s in found if s.note]
    assert [s.name for s in padded] == ["vision_encoder.layers.0.attn"]  # layer 1 is global attention
    assert "81" in padded[0].note or "padding" in padded[0].note


def _samvit(tmp_path, **penal):
    from safetensors.torch import save_file
    kw = dict(img_size=64, depth=L, embed_dim=32, num_heads=2, window_size=4, global_attn_indexes=(1,),
              neck_chans=16)
    path = tmp_path / "samvit.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_file(perturbed(timm.create_model("samvit_base_patch16", num_classes=0, **kw)).state_dict(), str(path))
    return timm.create_model("samvit_base_patch16", pretrained=True, num_classes=0,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=0), **kw, **penal)


def test_timm_sam_vit_windowed_blocks_go_through_the_probe(tmp_path):
    vanilla, model = _samvit(tmp_path), _samvit(tmp_path, penal=True, penal_tau=TAU)
    found = hf_penal.sites(model)
    assert [(s.name, s.source) for s in found] == [(f"blocks.{i}.drop_path{j}", "probe") for i in range(L)
                                                   for j in (1, 2)]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _check_oracle(vanilla, model, [(r"blocks\.\d\.drop_path[12]", None)], 2 * L, args=(x,))


# ------------------------------------------------------------------------------ gates and in-place ops near branches
def _penalized_copy(model, x):
    """(model, penalized deepcopy) with perturbed weights, the sites the probe finds on x, and their oracle spec."""
    import copy
    vanilla = perturbed(model)
    penal = hf_penal.apply(copy.deepcopy(vanilla), tau=TAU, example_inputs=((x,), {}))
    found = hf_penal.sites(vanilla, (x,))
    return vanilla, penal, found, [(re.escape(s.name), s.output_index) for s in found]


def test_a_branch_times_a_per_sample_gate_is_not_a_residual_site():
    """FocalNet's modulation sums focal levels, each times a gate computed from the input (`ctx_all + ctx *
    gates[:, l:l+1]`): an accumulation, not a residual branch. Only the block's two residual branches are sites (a
    site inside the modulation's ModuleList also broke the penalized model's forward)."""
    from timm.models.focalnet import FocalNet
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vanilla, model, found, zspec = _penalized_copy(
        FocalNet(depths=(1, 1, 1, 1), embed_dim=16, focal_levels=(3, 3, 3, 3), num_classes=3), x)
    assert [s.name for s in found] == [f"layers.{i}.blocks.0.drop_path{j}" for i in range(4) for j in (1, 2)]
    _check_oracle(vanilla, model, zspec, 8, args=(x,))


def test_an_in_place_activation_is_not_a_pass_through_and_in_place_modified_sites_are_copied():
    """Res2Net: `sp = relu(bns[i](conv(sp + spx[i])))` with one in-place ReLU for every split. The ReLU computes a
    new value, so the batch norm before it is not a branch end seen through an 'identity'; the sites whose output
    the model later modifies in place are marked so (the connection keeps a copy: no view+inplace error)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vanilla, model, found, zspec = _penalized_copy(timm.create_model("res2net50_14w_8s", layers=(2, 1, 1, 1),
                                                                     num_classes=3), x)
    assert not [s.name for s in found if ".bns." in s.name]
    assert all(s.inplace for s in found if s.name.endswith(".bn3"))  # `out += shortcut`
    _check_oracle(vanilla, model, zspec, None, args=(x,))


def test_a_container_branch_inside_module_lists_keeps_its_connection_outside_them():
    """HRNet's fuse layers: `y = y + fuse_layers[i][j](x[j])` iterates ModuleLists whose elements are Sequential
    branches. A connection added to one of those lists became an extra element (IndexError); it lives on the nearest
    ancestor that is not a container. Gradients equal the oracle's, and `remove` restores the module tree."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vanilla, model, found, zspec = _penalized_copy(timm.create_model("hrnet_w18_small", num_classes=3), x)
    fused = [s.name for s in found if ".fuse_layers." in s.name]
    assert fused and all(isinstance(vanilla.get_submodule(n), nn.Sequential) for n in fused)
    host, _, _ = fused[0].partition(".fuse_layers.")
    suffix = fused[0][len(host) + 1:].replace(".", "_")
    assert isinstance(model.get_submodule(f"{host}.penal_connection_{suffix}"), hf_penal.PenalConnection)
    _check_oracle(vanilla, model, zspec, None, args=(x,))
    hf_penal.remove(model)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in vanilla.named_modules()]


def test_a_parallel_branch_whose_output_the_block_adds_into_in_place_is_copied():
    """MobileOne: `out = conv_scale(x); for ck in conv_kxk: out += ck(x)`: the scale branch's output is modified in
    place by the next branch's add, so its site is marked in place and gradients stay exact."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vanilla, model, found, zspec = _penalized_copy(timm.create_model("mobileone_s0", num_classes=3), x)
    scale = [s for s in found if s.name.endswith("conv_scale")]
    assert scale and all(s.inplace for s in scale)
    _check_oracle(vanilla, model, zspec, len(found), args=(x,))


def test_a_site_output_scaled_in_place_before_a_scaled_add_is_copied():
    """NF-Net with skipinit: `out.mul_(skipinit_gain)` on the branch output, then `out * alpha + shortcut`: the add
    sees a scaled copy, but the site's own output was modified in place, so the connection keeps a copy (else:
    "Output 0 of _PenalFunction is a view and is being modified inplace")."""
    from timm.models.nfnet import NfCfg, NormFreeNet
    cfg = NfCfg(depths=(1, 1), channels=(32, 64), stem_chs=16, group_size=8, bottle_ratio=0.5, extra_conv=True,
                skipinit=True, num_features=0, attn_layer="se", attn_kwargs=dict(rd_ratio=0.5), act_layer="gelu",
                gamma_in_act=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vanilla, model, found, zspec = _penalized_copy(NormFreeNet(cfg, num_classes=3), x)
    assert [(s.name, s.inplace) for s in found] == [("stages.0.0.drop_path", True), ("stages.1.0.drop_path", True)]
    _check_oracle(vanilla, model, zspec, 2, args=(x,))


# ------------------------------------------------------------------------------------------------ honest probe errors
def _botnet(tmp_path, **penal):
    """BoTNet built at 64 px: its attention asserts the feature size, the model's pretrained_cfg says 256 px."""
    from safetensors.torch import save_file
    path = tmp_path / "botnet.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_file(perturbed(timm.create_model("botnet26t_256", img_size=64, num_classes=3)).state_dict(), str(path))
    return timm.create_model("botnet26t_256", pretrained=True, img_size=64, num_classes=3,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=3), **penal)


def test_a_model_the_probe_cannot_run_raises_with_the_cause_and_what_to_pass(tmp_path):
    plain = _botnet(tmp_path)
    with pytest.raises(hf_penal.NoResidualSiteError, match="probe failed") as info:
        hf_penal.sites(plain)
    msg = str(info.value)
    assert "example_inputs=" in msg and "sites=[" in msg and "AssertionError" in msg
    assert isinstance(info.value.__cause__, AssertionError)  # the model's own exception, chained
    with pytest.raises(S.ProbeFailedError):
        _botnet(tmp_path, penal=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = _botnet(tmp_path, penal=True, penal_tau=TAU, penal_example_inputs=x)
    found = hf_penal.sites(model)
    assert len(found) > 0 and all(s.source in ("probe", "table") for s in found)
    vanilla = _botnet(tmp_path).train()
    # BatchNorm: compare in train mode (batch statistics) from the same state
    zspec = [(rf"{s.name.replace('.', chr(92) + '.')}", s.output_index) for s in found]
    g_oracle, _, fired = grads(vanilla, _loss((x,)), zspec, TAU)
    assert fired == len(found)
    assert rel_err(grads(model, _loss((x,)))[0], g_oracle) < 1e-5


def test_explicit_site_names_need_no_probe(tmp_path):
    """sites=[...] works on a model the probe cannot run (the probe's failure is not an error then)."""
    names = ["stages.0.0.shortcut", "stages.1.0.conv3_1x1.bn"]
    model = _botnet(tmp_path, penal={"tau": TAU, "sites": names})
    assert [s.name for s in hf_penal.sites(model)] == names


class _RenamedDT(T.DecisionTransformerModel):
    """Decision Transformer whose forward names its inputs in words no config field gives a width for (the probe
    builds ``states`` / ``actions`` from ``state_dim`` / ``act_dim``)."""

    def forward(self, observations=None, moves=None, returns_to_go=None, timesteps=None, attention_mask=None):
        return super().forward(states=observations, actions=moves, returns_to_go=returns_to_go, timesteps=timesteps,
                               attention_mask=attention_mask)


def test_transformers_model_without_buildable_inputs_names_example_inputs(tmp_path):
    """A forward that needs observations, moves, returns and timesteps: the probe says so, and runs with the user's
    inputs, through from_pretrained(..., penal_example_inputs=...)."""
    cfg = T.DecisionTransformerConfig(state_dim=5, act_dim=3, hidden_size=32, n_layer=L, n_head=2, max_ep_len=20,
                                      n_positions=64)
    torch.manual_seed(0)
    d = str(tmp_path / "dt")
    perturbed(_RenamedDT(cfg)).save_pretrained(d)
    with pytest.raises(S.ProbeFailedError, match="example_inputs="):
        _RenamedDT.from_pretrained(d, penal=True)
    g = torch.Generator().manual_seed(1)
    inputs = dict(observations=torch.randn(2, 4, 5, generator=g), moves=torch.randn(2, 4, 3, generator=g),
                  returns_to_go=torch.randn(2, 4, 1, generator=g), timesteps=torch.arange(4).repeat(2, 1),
                  attention_mask=torch.ones(2, 4, dtype=torch.long))
    model = _RenamedDT.from_pretrained(d, penal=True, penal_tau=TAU, penal_example_inputs=inputs)
    found = hf_penal.sites(model)
    assert Counter(s.kind for s in found) == {"attention": L, "mlp": L}
    vanilla = _RenamedDT.from_pretrained(d)
    zspec = [(r"encoder\.h\.\d\.attn", 0), (r"encoder\.h\.\d\.mlp", None)]
    _check_oracle(vanilla, model, zspec, 2 * L, kwargs=inputs)


class _Branch(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.ffn(self.norm(x))


class _UnnumberedNet(nn.Module):
    """Residual blocks held as named attributes: no numbered layer, so discovery does not call them sites."""

    def __init__(self):
        super().__init__()
        self.first, self.second = _Branch(), _Branch()

    def forward(self, x):
        return self.second(self.first(x)).sum()


def test_suggested_site_names_are_branch_ends_that_work():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    model = _UnnumberedNet()
    with pytest.raises(hf_penal.NoResidualSiteError, match=r"sites=\[") as info:
        hf_penal.apply(model, example_inputs=x)
    assert "sites=['first.ffn', 'second.ffn']" in str(info.value)
    vanilla = _UnnumberedNet()
    vanilla.load_state_dict(model.state_dict())
    hf_penal.apply(model, tau=0.3, sites=["first.ffn", "second.ffn"])
    g_oracle, _, _ = grads(vanilla, lambda m: m(x), [(r"(first|second)\.ffn", None)], 0.3)
    assert rel_err(grads(model, lambda m: m(x))[0], g_oracle) < 1e-6


def test_probe_without_inputs_for_a_plain_module_says_what_to_pass():
    with pytest.raises(S.ProbeFailedError, match="cannot build example inputs"):
        hf_penal.sites(nn.Sequential(nn.Linear(4, 4)))


# ------------------------------------------------------------------------------------ example inputs from the config
def test_vision_model_outside_the_table_gets_pixel_values_from_its_config(tmp_path):
    cfg = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 1], num_stages=2, image_size=32, num_labels=3,
                           layer_scale_init_value=0.5)
    vanilla, model = _hf_pair(T.ConvNextForImageClassification, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert [s.name for s in found] == [f"convnext.encoder.stages.{i}.layers.{j}.drop_path"
                                       for i, j in ((0, 0), (0, 1), (1, 0))]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _check_oracle(vanilla, model, [(r"convnext\.encoder\.stages\.\d\.layers\.\d\.drop_path", None)], 3,
                  kwargs=dict(pixel_values=pixels))


def test_audio_model_gets_input_values(tmp_path):
    cfg = T.Wav2Vec2Config(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                           conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=2, mask_time_prob=0.0)
    vanilla, model = _hf_pair(T.Wav2Vec2Model, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert Counter(s.kind for s in found) == {"attention": L, "mlp": L}
    wave = torch.randn(2, 800, generator=torch.Generator().manual_seed(1))
    zspec = [(r"encoder\.layers\.\d\.dropout", None), (r"encoder\.layers\.\d\.feed_forward", None)]
    _check_oracle(vanilla, model, zspec, 2 * L, kwargs=dict(input_values=wave))


def test_audio_codec_gets_input_values_with_a_channel_dimension(tmp_path):
    """EnCodec takes input_values as (batch, channels, samples): the probe's last audio candidate; its residual units
    (`shortcut(x) + block(x)`) get a site each. The oracle covers the decoder's: no gradient flows back through the
    quantizer's codes to the encoder, so a penalty applied in the backward pass never reaches the encoder's sites
    (the explicit penalty would)."""
    cfg = T.EncodecConfig(hidden_size=32, num_filters=8, num_residual_layers=1, upsampling_ratios=[2, 2],
                          codebook_size=16, codebook_dim=32, num_lstm_layers=1)
    vanilla, model = _hf_pair(T.EncodecModel, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert [s.name for s in found] == ["encoder.layers.1.block.3", "encoder.layers.4.block.3",
                                       "decoder.layers.4.block.3", "decoder.layers.7.block.3"]
    wave = torch.randn(2, 1, 800, generator=torch.Generator().manual_seed(1))
    _check_oracle(vanilla, model, [(r"decoder\.layers\.\d\.block\.3", None)], 2, kwargs=dict(input_values=wave))


def test_speech_encoder_decoder_gets_input_features_and_decoder_ids():
    cfg = T.WhisperConfig(d_model=32, encoder_layers=L, decoder_layers=L, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                          max_source_positions=16, max_target_positions=32, vocab_size=100, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    found = hf_penal.sites(T.WhisperModel(cfg))
    assert Counter(s.kind for s in found) == {"attention": 2 * L, "cross_attention": L, "mlp": 2 * L}


def test_multimodal_model_gets_ids_and_pixels_and_both_towers_are_covered(tmp_path):
    cfg = T.CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                        intermediate_size=64, vocab_size=100),
                       vision_config=dict(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                          intermediate_size=64, image_size=32, patch_size=8), projection_dim=16)
    vanilla, model = _hf_pair(T.CLIPModel, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert Counter(s.name.split(".")[0] for s in found) == {"text_model": 2 * L, "vision_model": 2 * L}
    # the probe (ids and pixels built from the config) finds what the table says
    assert [(s["name"], s["kind"]) for s in S.probe_sites(model)] == [(s.name, s.kind) for s in found]
    inputs = dict(input_ids=_IDS["input_ids"], pixel_values=torch.randn(2, 3, 32, 32))
    zspec = [(r"(text|vision)_model\.encoder\.layers\.\d\.self_attn", 0),
             (r"(text|vision)_model\.encoder\.layers\.\d\.mlp", None)]
    _check_oracle(vanilla, model, zspec, 4 * L, kwargs=inputs)


def test_a_tower_outside_the_table_next_to_one_in_it_goes_through_the_probe(tmp_path):
    """LLaVA with a CLIP vision tower (in the table) and a GPT-NeoX text model (not in it, parallel residual): the
    table's sites alone would leave the text layers bare; the probe adds theirs, one per parallel branch."""
    cfg = T.LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=L,
                                           num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8),
                        text_config=dict(model_type="gpt_neox", hidden_size=32, num_hidden_layers=L,
                                         num_attention_heads=2, intermediate_size=64, vocab_size=100),
                        image_token_index=99, vision_feature_layer=-1)
    vanilla, model = _hf_pair(T.LlavaForConditionalGeneration, cfg, tmp_path)
    found = hf_penal.sites(model)
    vision = [s for s in found if ".vision_tower." in s.name or s.name.startswith("vision_tower.")]
    text = [s for s in found if s not in vision]
    assert len(vision) == 2 * L and {s.source for s in vision} == {"table"}
    assert len(text) == 2 * L and {s.source for s in text} == {"probe"}
    assert {s.name.rsplit(".", 1)[-1] for s in text} == {"post_attention_dropout", "post_mlp_dropout"}
    zspec = [(re.escape(s.name), s.output_index) for s in text]  # token ids only: the vision tower does not run
    _check_oracle(vanilla, model, zspec, 2 * L, kwargs=dict(input_ids=_IDS["input_ids"]))


def test_a_branch_returning_a_list_keeps_it_a_list(tmp_path):
    """OpenAI GPT's Attention returns a list and its Block does `[h] + attn_outputs[1:]`: the site hook (and the
    oracle's capture) must hand back a list, not a tuple."""
    cfg = T.OpenAIGPTConfig(n_embd=32, n_layer=L, n_head=2, vocab_size=100, n_positions=16)
    vanilla, model = _hf_pair(T.OpenAIGPTModel, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert [(s.name, s.output_index) for s in found] == [(f"h.{i}.{m}", j) for i in range(L)
                                                         for m, j in (("attn", 0), ("mlp", None))]
    _check_oracle(vanilla, model, [(r"h\.\d\.attn", 0), (r"h\.\d\.mlp", None)], 2 * L, kwargs=_IDS)


def test_shared_experts_added_to_routed_experts_are_not_a_residual_branch(tmp_path):
    """Ernie 4.5 MoE adds its always-on shared experts to the routed experts' output inside the MLP (shared first,
    then `+ experts(..)`): that sum is the MLP's own. Sites: self_attn and mlp per layer, nothing inside the MLP."""
    cfg = T.Ernie4_5_MoeConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
                               num_key_value_heads=1, vocab_size=100, moe_intermediate_size=32, moe_k=2,
                               moe_num_experts=4, moe_num_shared_experts=1, moe_layer_start_index=0,
                               moe_layer_end_index=L - 1)
    vanilla, model = _hf_pair(T.Ernie4_5_MoeModel, cfg, tmp_path)
    found = hf_penal.sites(model)
    assert [s.name for s in found] == [f"layers.{i}.{m}" for i in range(L) for m in ("self_attn", "mlp")]
    _check_oracle(vanilla, model, [(r"layers\.\d\.self_attn", 0), (r"layers\.\d\.mlp", None)], 2 * L,
                  kwargs=_IDS)


def test_table_sites_that_are_not_exactly_what_is_added_say_so():
    cfg = T.GraniteConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=64, vocab_size=100, residual_multiplier=0.5)
    found = hf_penal.sites(T.GraniteModel(cfg))
    assert len(found) == 2 and all("residual_multiplier" in s.note for s in found)


# ------------------------------------------------------------------------------------------------ coverage sweep smoke
def _coverage():
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import coverage
    return coverage


def test_coverage_sweep_runs_on_three_model_types(tmp_path):
    coverage = _coverage()
    out = tmp_path / "coverage.md"
    recs = [coverage.run_one("transformers", n, timeout=900) for n in ("bert", "gptj", "swin")]  # in this process
    coverage.write_section(out, "transformers", coverage.table("transformers", recs, "(smoke)", "3 named types"))
    assert [(r["name"], r["status"]) for r in recs] == [("bert", "ok"), ("gptj", "ok"), ("swin", "ok")]
    assert [r["source"] for r in recs] == ["table", "probe", "probe"]
    assert all(r["rel_err"] < 1e-4 and r["eval_identical"] for r in recs)
    text = out.read_text()
    assert "coverage: 3 / 3 = 100 %" in text and "| gptj | ok | probe |" in text


@pytest.mark.parametrize("model_type, cls", [("siglip_text_model", "SiglipTextModel"),
                                             ("clipseg_vision_model", "CLIPSegVisionModel")])
def test_sub_model_configs_are_measured_through_their_own_model_class(model_type, cls):
    """A config no auto class maps (a tower of a multimodal model) is built through the model class of its own config
    class, not counted as "does not build"; its sites pass the sweep's oracle (gradients, eval outputs)."""
    coverage = _coverage()
    config_class = type(T.AutoConfig.for_model(model_type))
    assert coverage.own_model_class(config_class) is getattr(T, cls)
    rec = coverage.run_one("transformers", model_type, timeout=900)
    assert (rec["status"], rec["class"], rec["config"]) == ("ok", cls, "small")
    assert rec["rel_err"] < 1e-4 and rec["eval_identical"] and rec["covered"] == rec["blocks"] > 0


class _Ffn(nn.Module):
    def __init__(self, w=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(w, 2 * w), nn.Linear(2 * w, w)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _LoopOfFfns(nn.Module):
    def __init__(self):
        super().__init__()
        self.ffns = nn.ModuleList(_Ffn() for _ in range(2))

    def forward(self, x):
        for f in self.ffns:
            x = x + f(x)
        return x


def test_a_table_record_whose_branch_is_the_block_itself_names_the_site_after_it(monkeypatch):
    from hf_penal import architectures as A
    monkeypatch.setitem(A.BLOCKS, "_Ffn", A.Block((A.Branch(("",), "mlp"),)))
    torch.manual_seed(0)
    model, x = perturbed(_LoopOfFfns()), torch.randn(2, 3, 8)
    found = hf_penal.sites(model, x)
    assert [(s.name, s.block, s.source) for s in found] == [(f"ffns.{i}", f"ffns.{i}", "table") for i in range(2)]
    penal = hf_penal.apply(copy.deepcopy(model), tau=0.3)
    loss = lambda m: m(x).square().mean()  # noqa: E731
    want, _, n = grads(model, loss, [(r"ffns\.\d", None)], tau=0.3)
    assert n == 2 and rel_err(grads(penal, loss)[0], want) < 1e-5
