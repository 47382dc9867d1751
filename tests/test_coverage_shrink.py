"""The coverage benchmark's small configs stay consistent: fields that a config derives from the ones it shrinks are
derived again (the probe's inputs read the same config, so the model's shapes and its inputs have one source)."""
import sys
from pathlib import Path

import pytest
import transformers as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def _small(model_type):
    cfg = T.AutoConfig.for_model(model_type)
    coverage._shrink(cfg)
    return cfg


def test_per_stage_widths_and_the_channel_list_that_repeats_them_shrink_together():
    cfg = _small("sam2_vision_model")
    stages = cfg.backbone_config.embed_dim_per_stage
    assert list(reversed(stages)) == list(cfg.backbone_channel_list) and min(stages) == 32
    assert cfg.backbone_config.image_size == [256, 256]  # 1024 px: a quarter


def test_a_detection_encoder_reads_the_backbone_stages_and_feeds_its_width_to_the_decoder():
    cfg = _small("rt_detr")
    widths, idx = cfg.backbone_config.hidden_sizes, cfg.backbone_config.out_indices
    assert list(cfg.encoder_in_channels) == [widths[i - 1] for i in idx]
    assert list(cfg.decoder_in_channels) == [cfg.encoder_hidden_dim] * 3


@pytest.mark.parametrize("model_type", ["depth_anything", "rf_detr"])
def test_backbone_outputs_stay_within_the_shrunk_depth(model_type):
    bb = _small(model_type).backbone_config
    assert max(bb.out_indices) <= bb.num_hidden_layers and len(bb.out_indices) == len(
        T.AutoConfig.for_model(model_type).backbone_config.out_indices)


def test_mrope_sections_split_the_rotary_part_of_a_head():
    text = _small("glm4v_moe").text_config
    rp = text.rope_parameters
    head = text.hidden_size // text.num_attention_heads
    assert sum(rp["mrope_section"]) == int(head * rp["partial_rotary_factor"]) // 2


def test_experts_per_token_never_exceed_the_shrunk_experts():
    cfg = _small("kimi_linear")
    assert cfg.num_experts_per_token <= cfg.num_experts


def test_a_hierarchical_backbones_stages_are_not_taken_for_layers():
    """Swin's out_indices count stages (its `depths`), not layers: the small config keeps them."""
    bb = _small("grounding-dino").backbone_config
    assert list(bb.out_indices) == list(T.AutoConfig.for_model("grounding-dino").backbone_config.out_indices)


def _small_rederived(model_type):
    import copy
    cfg = T.AutoConfig.for_model(model_type)
    before = copy.deepcopy(cfg)
    coverage._shrink(cfg)
    coverage._rederive(cfg, before)
    return cfg


def test_fields_the_config_class_derives_from_the_shrunk_ones_are_derived_again():
    """Zamba2's __init__ sets attention_head_dim = 2 * hidden / heads and attention_hidden_size = 2 * hidden: the
    class itself computes them again from the small widths (they are found by construction, not named here)."""
    cfg = _small_rederived("zamba2")
    assert cfg.attention_head_dim == 2 * cfg.hidden_size // cfg.num_attention_heads
    assert cfg.attention_hidden_size == 2 * cfg.hidden_size


def test_what_a_composite_config_sets_on_its_sub_configs_is_derived_again():
    """BLT's __init__ sets the global transformer's encoder_cross_output_size from the local encoder's width."""
    cfg = _small_rederived("blt")
    assert cfg.global_config.encoder_cross_output_size == cfg.encoder_config.hidden_size * cfg.cross_attn_k


def test_rederiving_leaves_the_shrunk_fields_and_a_consistent_config_alone():
    cfg = _small_rederived("llama")
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 2, 1, 16)
