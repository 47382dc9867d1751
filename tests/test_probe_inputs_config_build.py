"""Heterogeneous configs (``per_layer_config``: fields that differ per layer, Gemma 4's head_dim on its full-attention
layers). Reading such a field on the global config raises transformers' AmbiguousGlobalPerLayerAttributeError, a
RuntimeError (so ``getattr(cfg, name, default)`` raises too). The product loads, probes and penalizes such a model
with the explicit-penalty oracle's gradients; the coverage benchmark shrinks the global fields and then each layer's
overrides by the same rules (a layer's config: the unshrunk config with its overrides, shrunk), so these models build
at the small config."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from _oracle import grads, rel_err

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

TAU = 1e-2
_TYPES = ["sliding_attention", "full_attention"]


def _tiny_gemma4(**kw):
    """A 2-layer Gemma 4 text config whose full-attention layer (layer 1) has head_dim 32, the other 16."""
    return T.Gemma4TextConfig(**{**dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=32, vocab_size_per_layer_input=64,
        hidden_size_per_layer_input=8, sliding_window=8, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        layer_types=list(_TYPES)), **kw})


def test_penal_from_pretrained_on_a_heterogeneous_config_gives_the_oracle_gradients(tmp_path):
    cfg = _tiny_gemma4()
    assert cfg.per_layer_config[0].head_dim == 16 and cfg.per_layer_config[1].head_dim == 32
    with pytest.raises(RuntimeError):  # the global value of a per-layer field is ambiguous
        getattr(cfg, "head_dim", None)
    torch.manual_seed(0)
    T.Gemma4ForCausalLM(cfg).save_pretrained(tmp_path)
    vanilla = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path, penal=True, penal_tau=TAU)
    found = hf_penal.sites(model)
    assert {s.block for s in found} == {"model.layers.0", "model.layers.1"}  # the probe: a site in every layer
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))

    def loss(m):
        return m(input_ids=ids, labels=ids).loss
    zspec = [(s.name.replace(".", r"\."), None) for s in found]
    g_plain, loss_plain, _ = grads(vanilla, loss)
    g_oracle, _, fired = grads(vanilla, loss, zspec, TAU)
    g_penal, loss_penal, _ = grads(model, loss)
    assert fired == len(found)
    assert torch.allclose(loss_penal, loss_plain, rtol=1e-6, atol=0)
    assert rel_err(g_oracle, g_plain) > 1e-2
    assert rel_err(g_penal, g_oracle) < 1e-5


def test_the_small_config_shrinks_each_layer_by_the_global_rules():
    """Layer 1's head_dim 512 / key-value heads 4 (of 8 heads) are shrunk as a config of their own is: head_dim =
    hidden / heads, one key/value head, as on the global config; layer 3 is beyond the shrunk depth (2)."""
    cfg = T.Gemma4TextConfig(num_hidden_layers=4, layer_types=_TYPES * 2, vocab_size=64,
                             vocab_size_per_layer_input=64, attention_k_eq_v=True, num_global_key_value_heads=2,
                             global_head_dim=512)
    assert set(cfg.per_layer_attributes) == {"head_dim", "num_key_value_heads"}
    coverage._shrink(cfg)
    assert cfg.num_hidden_layers == 2
    for layer in cfg.per_layer_config:
        assert layer.head_dim == layer.hidden_size // layer.num_attention_heads == 16
        assert layer.num_key_value_heads == 1
    model = T.Gemma4ForCausalLM(cfg)
    with torch.no_grad():
        assert model(input_ids=torch.randint(3, 64, (2, 5))).logits.shape == (2, 5, 64)


def test_an_override_the_rules_leave_alone_stays_on_its_layer():
    cfg = _tiny_gemma4(num_hidden_layers=4, layer_types=_TYPES * 2, hidden_size=64,
                       per_layer_config={1: {"head_dim": 64, "sliding_window": 4}, 3: {"head_dim": 64}})
    coverage._shrink(cfg)
    assert cfg.per_layer_config[1].sliding_window == 4 and cfg.per_layer_config[0].sliding_window == 8
    assert cfg.per_layer_config[1].head_dim == cfg.per_layer_config[0].head_dim == 16


@pytest.mark.parametrize("model_type", ["gemma4_text", "dots3_note_vision_encoder"])
def test_default_heterogeneous_configs_shrink_and_build(model_type):
    """The types' own defaults (per-layer head_dim; Dots3's per-layer expert counts) shrink at the small and shallow
    levels, and the benchmark builds them at the small one."""
    cfg = T.AutoConfig.for_model(model_type)
    shallow = copy.deepcopy(cfg)
    coverage._shrink(cfg)
    coverage._shallow(shallow)
    for c in (cfg, shallow):
        assert c.num_hidden_layers == 2
        assert all(i < 2 for i in c._heterogeneity_spec.per_layer_overrides)
    model = coverage.build_transformers(model_type)
    assert len(coverage.residual_blocks(model)) == 2


def test_a_config_only_type_is_built_with_the_auto_class_that_maps_it():
    """pp_chart2table has no modeling module of its own and is in none of the base / LM / classification maps; the
    image-text-to-text auto class maps it to GOT-OCR2's model, which the benchmark now builds. LayoutXLM, whose
    checkpoints load with LayoutLMv2's model, is mapped by no auto class: still no class."""
    assert coverage.task_model_class("pp_chart2table") is T.GotOcr2ForConditionalGeneration
    assert coverage.task_model_class("layoutxlm") is None
    model = coverage.build_transformers("pp_chart2table")
    assert type(model) is T.GotOcr2ForConditionalGeneration and coverage.residual_blocks(model)
