"""apply / remove / sites / set_tau on any nn.Module: selection, generic probe, idempotence, exact undo."""
import pytest
import torch
from _models import SPEC, hf_loss, saved
from _oracle import grads, rel_err
from torch import nn

import hf_penal
from hf_penal.discovery import probe_sites

TAU = 1e-2


def fingerprint(model):
    fp = {name: (type(m).__name__, len(m._forward_hooks), len(m._forward_pre_hooks), tuple(sorted(m._buffers)),
                 tuple(sorted(m._parameters)), "forward" in m.__dict__) for name, m in model.named_modules()}
    fp["<penal>"] = getattr(getattr(model, "config", None), "penal", None)
    return fp


@pytest.fixture
def bert(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    return lambda **kw: auto.from_pretrained(d, **kw), inputs


@pytest.mark.parametrize("spec,kinds", [("all", ["attention", "mlp"] * 2), ("attention", ["attention"] * 2),
                                        ("mlp", ["mlp"] * 2), (r"layer\.1\.", ["attention", "mlp"])])
def test_sites_selection(bert, spec, kinds):
    load, _ = bert
    model = hf_penal.apply(load(), tau=TAU, sites=spec)
    assert [s.kind for s in hf_penal.sites(model)] == kinds
    assert sum(1 for m in model.modules() if isinstance(m, hf_penal.PenalConnection)) == len(kinds)


def test_site_list_penalizes_exactly_those_sites(bert):
    load, inputs = bert
    name = "bert.encoder.layer.1.output.dropout"
    model = hf_penal.apply(load(), tau=TAU, sites=[name])
    assert [s.name for s in hf_penal.sites(model)] == [name]
    g_oracle, _, _ = grads(load(), hf_loss(inputs), [(name.replace(".", r"\."), None)], TAU)
    assert rel_err(grads(model, hf_loss(inputs))[0], g_oracle) < 1e-5


@pytest.mark.parametrize("arch", ["bert", "gpt2_cross", "llama", "t5"])
def test_generic_probe_agrees_with_the_table(arch, tmp_path):
    d, auto, inputs = saved(arch, tmp_path)
    model = auto.from_pretrained(d)
    table = [(s.name, s.kind) for s in hf_penal.sites(model)]
    probed = [(s["name"], s["kind"]) for s in probe_sites(model, inputs)]
    assert probed == table


class _ToyBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.ffn(self.norm(x))


class _ToyNet(nn.Module):
    """An architecture hf_penal's table does not know."""

    def __init__(self, d=8, n=3):
        super().__init__()
        self.blocks = nn.ModuleList(_ToyBlock(d) for _ in range(n))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x).sum()


def test_unknown_architecture_goes_through_the_generic_probe():
    torch.manual_seed(0)
    vanilla = _ToyNet()
    x = torch.randn(4, 8)
    model = hf_penal.apply(_ToyNet().requires_grad_(), tau=TAU, example_inputs=x)
    model.load_state_dict(vanilla.state_dict())
    found = hf_penal.sites(model)
    assert [(s.name, s.block, s.source) for s in found] == [(f"blocks.{i}.ffn", f"blocks.{i}", "probe")
                                                           for i in range(3)]
    g_oracle, _, _ = grads(vanilla, lambda m: m(x), [(r"blocks\.\d\.ffn", None)], 0.3)
    hf_penal.set_tau(model, 0.3)
    assert rel_err(grads(model, lambda m: m(x))[0], g_oracle) < 1e-6


def test_no_residual_site_raises_and_says_what_to_pass():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    before = fingerprint(model)
    with pytest.raises(hf_penal.NoResidualSiteError, match=r"sites=\["):
        hf_penal.apply(model, example_inputs=torch.randn(2, 4))
    assert fingerprint(model) == before


def test_explicit_site_names_work_where_discovery_cannot():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    vanilla = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    vanilla.load_state_dict(model.state_dict())
    hf_penal.apply(model, tau=0.5, sites=["0"])
    x = torch.randn(3, 4)
    g_oracle, _, _ = grads(vanilla, lambda m: m(x).sum(), [("0", None)], 0.5)
    assert rel_err(grads(model, lambda m: m(x).sum())[0], g_oracle) < 1e-6


def test_apply_twice_updates_instead_of_stacking(bert):
    load, inputs = bert
    model = hf_penal.apply(load(), tau=1e-3)
    hf_penal.apply(model, tau=TAU)
    assert sum(1 for m in model.modules() if isinstance(m, hf_penal.PenalConnection)) == 4
    assert all(len(m._forward_hooks) <= 1 for m in model.modules())
    g_oracle, _, _ = grads(load(), hf_loss(inputs), SPEC["bert"][0], TAU)
    assert rel_err(grads(model, hf_loss(inputs))[0], g_oracle) < 1e-5
    hf_penal.apply(model, sites="mlp")  # keywords update the current settings
    assert hf_penal.penal_config(model).tau == TAU and len(hf_penal.sites(model)) == 2


def test_remove_is_an_exact_undo(bert):
    load, inputs = bert
    plain = load()
    model = hf_penal.apply(load(), tau=TAU)
    assert "PenalConnection(tau=0.01)" in repr(model)
    hf_penal.remove(model)
    assert repr(model) == repr(plain)
    assert fingerprint(model) == fingerprint(plain)
    assert rel_err(grads(model, hf_loss(inputs))[0], grads(plain, hf_loss(inputs))[0]) == 0.0


@pytest.mark.parametrize("kw", [dict(tau=-1.0), dict(tau=float("nan")), dict(tau="big"), dict(sites="everything"),
                                dict(sites=r"^nope\.\d+$"), dict(sites=["no.such.module"])])
def test_bad_input_leaves_plain_and_penalized_models_untouched(bert, kw):
    load, _ = bert
    for model in (load(), hf_penal.apply(load(), tau=1e-3)):
        before, text = fingerprint(model), repr(model)
        field = "tau" if "tau" in kw else "sites"
        with pytest.raises((ValueError, TypeError), match=field):
            hf_penal.apply(model, **kw)
        assert fingerprint(model) == before and repr(model) == text


def test_set_tau_changes_the_penalty_and_the_recorded_config(bert):
    load, inputs = bert
    model = load(penal=True, penal_tau=1e-4)
    hf_penal.set_tau(model, TAU)
    assert model.config.penal["tau"] == TAU
    g_oracle, _, _ = grads(load(), hf_loss(inputs), SPEC["bert"][0], TAU)
    assert rel_err(grads(model, hf_loss(inputs))[0], g_oracle) < 1e-5
    with pytest.raises(ValueError, match="tau"):
        hf_penal.set_tau(model, -1)
    with pytest.raises(ValueError, match="no penal connections"):
        hf_penal.set_tau(load(), TAU)


def test_sites_of_a_plain_model_are_listed_without_changing_it(bert):
    load, _ = bert
    model = load()
    before = fingerprint(model)
    assert len(hf_penal.sites(model)) == 4
    assert fingerprint(model) == before


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_connections_with_tau_zero_train_bit_identically_to_plain(arch):
    """The quality study's τ=0 control: connections attached with τ = 0 change nothing in training (dropout's
    random stream included), so any difference between an arm and plain comes from τ."""
    import transformers as T
    if arch == "bert":
        cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                           num_labels=3)
        auto = T.BertForSequenceClassification
    else:
        cfg = T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2)
        auto = T.LlamaForCausalLM
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 100, (4, 12), generator=g) for _ in range(4)]
    labels = [torch.randint(0, 3, (4,), generator=g) if arch == "bert" else b for b in batches]

    def train(tau0: bool):
        torch.manual_seed(0)
        model = auto(cfg)
        if tau0:
            hf_penal.apply(model, tau=0.0)
            assert len(hf_penal.sites(model)) == 4
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for ids, y in zip(batches, labels):
            loss = model(input_ids=ids, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain, with_connections = train(False), train(True)
    assert plain.keys() == with_connections.keys()
    first = next(iter(plain))
    assert not torch.equal(plain[first], auto(cfg).state_dict()[first])  # it did train
    assert all(torch.equal(plain[k], with_connections[k]) for k in plain)
