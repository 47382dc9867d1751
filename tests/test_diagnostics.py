"""Markov efficiency ε: what the probes report equals an independent computation on the vanilla model.

The independent side never touches hf_penal: forward hooks on the vanilla BERT capture each branch output z (the
dropout ending the branch) and the node output x_l = x + z (the input of the LayerNorm that follows the add), a tensor
hook captures ∂L/∂x_l, the loss carries the explicit penalty τ/2·Σ‖z‖², and ε = cos(z, −∂L/∂x_l) per sample.
"""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

import hf_penal
from hf_penal import ops
from hf_penal.diagnostics import efficiency_metrics, markov_efficiency, track_efficiency

SITE = re.compile(r"bert\.encoder\.layer\.(\d+)\.(attention\.output|output)\.dropout")


def _tiny_bert(layers=3):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, initializer_range=0.2)
    return BertForSequenceClassification(cfg)


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (n, 8), generator=g), torch.randint(0, 3, (n,), generator=g)


def _independent(model, batches, tau):
    """{site name: (per-sample cosines, per-sample ‖z‖)} over all batches, from hooks on the vanilla model."""
    out = {}
    modules = dict(model.named_modules())
    for ids, labels in batches:
        zs, xs, handles = {}, {}, []
        for name, mod in modules.items():
            if SITE.fullmatch(name):
                parent = name.rsplit(".", 1)[0]
                handles.append(mod.register_forward_hook(lambda m, a, o, n=name, zs=zs: zs.__setitem__(n, o)))
                handles.append(modules[parent + ".LayerNorm"].register_forward_pre_hook(
                    lambda m, a, n=name, xs=xs: xs.__setitem__(n, a[0])))
        model.train()
        model.zero_grad()
        logits = model(input_ids=ids).logits
        for h in handles:
            h.remove()
        for x in xs.values():
            x.retain_grad()
        loss = F.cross_entropy(logits, labels) + tau / 2 * sum((z ** 2).sum() for z in zs.values())
        loss.backward()
        for name, z in zs.items():
            zf, gf = z.detach().flatten(1), xs[name].grad.flatten(1)
            cos = F.cosine_similarity(zf, -gf, dim=1)
            prev = out.get(name, (torch.empty(0), torch.empty(0)))
            out[name] = (torch.cat([prev[0], cos]), torch.cat([prev[1], zf.norm(dim=1)]))
    return out


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_site_efficiency_equals_cosine_of_z_and_negative_node_gradient(tau):
    vanilla = _tiny_bert()
    penal = hf_penal.apply(copy.deepcopy(vanilla), tau=tau)
    assert track_efficiency(penal) == 6
    batches = [_batch(3, 1), _batch(5, 2)]  # statistics accumulate per sample over backward passes
    for ids, labels in batches:
        penal.train()
        penal.zero_grad()
        F.cross_entropy(penal(input_ids=ids).logits, labels).backward()
    want = _independent(vanilla, batches, tau)
    got = markov_efficiency(penal, reset=False, per="site")
    assert list(got) == [s.name for s in hf_penal.sites(penal)]  # model order
    assert set(got) == set(want)
    for name, (cos, zn) in want.items():
        assert cos.numel() == 8
        assert got[name]["efficiency"] == pytest.approx(cos.mean().item(), abs=2e-5)
        assert got[name]["z_norm"] == pytest.approx(zn.mean().item(), rel=1e-5)
    # not a placeholder: the sites differ, and every value is a cosine
    effs = [v["efficiency"] for v in got.values()]
    assert len(set(effs)) == len(effs) and all(-1 <= e <= 1 for e in effs)

    layers = markov_efficiency(penal, reset=False)  # per layer: mean of that layer's sites
    assert list(layers) == [f"bert.encoder.layer.{i}" for i in range(3)]
    for i, (lname, v) in enumerate(layers.items()):
        sites = [want[f"{lname}.attention.output.dropout"][0].mean(), want[f"{lname}.output.dropout"][0].mean()]
        assert v["efficiency"] == pytest.approx(sum(sites).item() / 2, abs=2e-5) and v["depth"] == i

    flat = efficiency_metrics(penal)  # resets
    assert list(flat)[:3] == [f"penal/efficiency/layer_{i:02d}" for i in range(3)]
    assert flat["penal/efficiency/layer_01"] == pytest.approx(layers["bert.encoder.layer.1"]["efficiency"])
    assert flat["penal/z_norm/layer_02"] == pytest.approx(layers["bert.encoder.layer.2"]["z_norm"])
    assert flat["penal/efficiency"] == pytest.approx(sum(v["efficiency"] for v in layers.values()) / 3)
    assert markov_efficiency(penal) == {}  # read with reset: nothing left


def test_probes_off_do_no_extra_work_in_backward(monkeypatch):
    model = hf_penal.apply(_tiny_bert(2), tau=1e-3)
    track_efficiency(model)
    track_efficiency(model, enabled=False)

    def boom(*a, **k):
        raise AssertionError("the efficiency probe ran with diagnostics off")

    monkeypatch.setattr(ops, "_efficiency_", boom)
    ids, labels = _batch(2, 0)
    F.cross_entropy(model(input_ids=ids).logits, labels).backward()
    assert markov_efficiency(model) == {}


def test_track_efficiency_needs_penal_connections():
    with pytest.raises(ValueError, match="apply"):
        track_efficiency(_tiny_bert(1))


# ---------------------------------------------------------------------------------------------- numerical range
def _probe_stats(z, up, storage_dtype=None):
    """(sum of cosines, sum of ‖z‖, n) the probe accumulates for branch output z and incoming gradient `up`."""
    conn = hf_penal.PenalConnection(tau=0.0, storage_dtype=storage_dtype)
    conn.track_efficiency(True)
    z = z.clone().requires_grad_(True)
    conn(z).backward(up)
    return conn.stats.double()


def _fp64_reference(z, up):
    zd, gd = z.double().flatten(1), up.double().flatten(1)
    return F.cosine_similarity(zd, -gd, dim=1, eps=0.0), zd.norm(dim=1)


@pytest.mark.parametrize("z_scale, g_scale", [
    (1e4, 1.0), (1e6, 1.0), (1e6, 1e-6),   # exploding activations (the −6e4 seen in training)
    (1e20, 1e20),                           # fp32 products and squares overflow (3e38)
    (1e-12, 1e-22),                         # ‖z‖·‖g‖ < 1e-30: the old clamp inflated the cosine
])
def test_efficiency_stays_a_cosine_and_matches_fp64_for_any_magnitude(z_scale, g_scale):
    g = torch.Generator().manual_seed(0)
    n = 6
    # per-sample magnitudes spread over two decades; z partly aligned with −g so cosines are far from 0
    mags = torch.logspace(0, 2, n).reshape(n, 1, 1)
    up = torch.randn(n, 16, 32, generator=g) * g_scale
    z = (-0.7 * up / g_scale + torch.randn(n, 16, 32, generator=g)) * mags * z_scale
    cos, zn = _fp64_reference(z, up)
    assert cos.abs().min() > 0.3
    stats = _probe_stats(z, up)
    assert stats[2] == n
    assert -1.0 <= stats[0] / n <= 1.0
    assert stats[0].item() == pytest.approx(cos.sum().item(), abs=1e-5)
    assert stats[1].item() == pytest.approx(zn.sum().item(), rel=1e-5)


def test_efficiency_of_exactly_aligned_huge_vectors_is_one_not_more():
    up = torch.full((2, 4096), -3e18)
    stats = _probe_stats(-up * 1e2, up)  # z = −g·1e2 ≈ 3e20: ⟨z, g⟩ summed in fp32 is −inf
    assert stats[0].item() / 2 == pytest.approx(1.0, abs=1e-6) and stats[0].item() / 2 <= 1.0
    assert stats[1].item() / 2 == pytest.approx(3e20 * 64, rel=1e-5)


def test_efficiency_of_a_zero_branch_or_gradient_is_zero():
    z, up = torch.randn(3, 8), torch.randn(3, 8)
    z[0] = 0
    up[1] = 0
    stats = _probe_stats(z, up)
    want, zn = _fp64_reference(z, up)
    assert stats[0].item() == pytest.approx(want[2].item(), abs=1e-6)
    assert stats[1].item() == pytest.approx(zn.sum().item(), rel=1e-6)


@pytest.mark.parametrize("storage", ["bfloat16", "float8_e4m3fn"])
def test_efficiency_with_low_precision_storage_is_close_to_full_precision(storage):
    g = torch.Generator().manual_seed(1)
    up = torch.randn(4, 64, generator=g)
    z = (-0.5 * up + torch.randn(4, 64, generator=g)) * 1e5
    cos, zn = _fp64_reference(z, up)
    stats = _probe_stats(z, up, storage_dtype=getattr(torch, storage))
    assert stats[0].item() == pytest.approx(cos.sum().item(), abs=4 * 0.03)
    assert stats[1].item() == pytest.approx(zn.sum().item(), rel=0.03)
