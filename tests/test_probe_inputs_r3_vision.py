"""Round-3 vision fixes, each on the coverage benchmark's small config (hidden width 32, 2 layers) against the
explicit-penalty oracle (`_check` of tests/test_probe_inputs.py): inputs built last of all by argument name and config
fields (`_patch_layouts_r3`: rows of flattened patches, a grid's patches as patch images, merged-token patch images
with a required ``<prefix>_grid_thw``, images for a pixel model's required ``hidden_states``, ``flattened_patches``
where the main input is another, a required ``num_<x>`` count, an ``<x>_embeds_position_mask``, a head's features at
its ``*_out_channels``); SuperGlue's table record; and the benchmark's config rules for widths one config hands another
(`_sibling_width_lists`, `_twin_features`, `_parent_dims`)."""
import copy
import sys
from pathlib import Path

import torch
import transformers as T
from test_probe_inputs import _check

import hf_penal
from hf_penal.discovery.inputs import probe_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def _small(model_type):
    return coverage.build_transformers(model_type)


def test_rows_of_flattened_patches_at_the_image_size():
    """Molmo2's vision tower embeds (batch, patches, channels · patch²) with a linear layer and adds a fixed
    position table of (image size / patch)² rows."""
    model = _small("molmo2_vision")
    kwargs = _check(model, None)
    p, (h, w) = model.config.patch_size, model.config.image_size
    assert kwargs["pixel_values"].shape == (2, (h // p) * (w // p), 3 * p * p)


def test_a_required_grid_thw_with_its_patches_as_a_batch_of_patch_images():
    """Kimi-K2.5's vision tower: forward(pixel_values, grid_thw), a conv patch embedding over (patches, 3, p, p)."""
    model = _small("kimi_k25_vision")
    kwargs = _check(model, None)
    p = model.config.patch_size
    assert kwargs["pixel_values"].shape[1:] == (3, p, p) and kwargs["grid_thw"].shape == (2, 3)


def test_a_grid_counted_in_merged_tokens_with_channels_last_token_images():
    """Inkling2's vision tower: forward(pixel_values, image_grid_thw), the grid in language-model tokens (merge ×
    merge patches each) and the pixels (tokens, merge · p, merge · p, channels)."""
    model = _small("inkling2_vision")
    kwargs = _check(model, None)
    m, p = model.config.spatial_merge_size, model.config.patch_size
    assert kwargs["image_grid_thw"].tolist() == [[1, 2, 2]] * 2
    assert kwargs["pixel_values"].shape == (2 * 2 * 2, m * p, m * p, 3)


def test_a_pixel_models_required_hidden_states_are_images():
    """PP-OCRv5's mobile detector (main input pixel_values) names its images hidden_states."""
    kwargs = _check(_small("pp_ocrv5_mobile_det"), None)
    assert kwargs["hidden_states"].dim() == 4 and kwargs["hidden_states"].shape[1] == 3


def test_flattened_patches_where_the_main_input_is_another():
    """Kosmos-2.5's vision tower: main_input_name input_ids, forward(flattened_patches, attention_mask)."""
    kwargs = _check(_small("kosmos_2_5_vision_model"), None)
    assert kwargs["flattened_patches"].shape[:2] == (2, 16)


def test_a_required_count_of_leading_tokens():
    """DeepSeek-OCR-2's vision encoder: forward(inputs_embeds, num_patches: int), the patches before the queries."""
    kwargs = _check(_small("deepseek_ocr2_encoder"), None)
    assert kwargs["num_patches"] == 4 and kwargs["inputs_embeds"].shape == (2, 8, 32)


def test_image_embeddings_placed_by_their_position_mask():
    """Kosmos-2 writes its latent_query_num image embeddings where image_embeds_position_mask is set (without it the
    text model reads a None mask): ids lengthened to hold them, after one token."""
    model = _small("kosmos-2")
    kwargs = _check(model, None)
    k = model.config.latent_query_num
    mask = kwargs["image_embeds_position_mask"]
    assert mask.shape == kwargs["input_ids"].shape and mask.sum(1).tolist() == [k, k] and not mask[:, 0].any()


def test_a_head_reads_features_at_its_out_channels_and_has_no_site():
    """SLANet's table head (a GRU decoder, no residual add) takes hidden_states at post_conv_out_channels: the probe
    runs it and finds no site."""
    model = _small("slanet")
    assert hf_penal.sites(model) == []  # the probe ran (else ProbeFailedError)
    width = model.config.post_conv_out_channels
    kwargs = next(kw for _, kw in probe_inputs(model) if kw["hidden_states"].shape[-1] == width)
    assert kwargs["hidden_states"].shape == (2, 8, width) and width != 32


def test_superglue_gnn_layers_from_the_table():
    """SuperGlue's GNN adds each propagation layer's message (mlp.1's output) to the descriptors in its own loop,
    outside the numbered layers: the table names it in every layer."""
    model = _small("superglue")
    kwargs = _check(model, None)
    assert kwargs["pixel_values"].shape[:2] == (2, 2)
    names = sorted(s.name for s in hf_penal.sites(model))
    assert names == sorted(f"gnn.layers.{i}.mlp.1" for i in range(len(model.gnn.layers)))


def _shrunk(model_type, rule):
    cfg = T.AutoConfig.for_model(model_type)
    before = copy.deepcopy(cfg)
    coverage._shrink(cfg)
    rule(cfg, before)
    return cfg


def test_a_width_list_ending_in_a_siblings_width_ends_in_its_shrunk_width():
    cfg = _shrunk("unlimited_ocr_vision", coverage._sibling_width_lists)
    assert cfg.sam_config.downsample_channels[-1] == cfg.encoder_config.hidden_size == 32


def test_a_features_twin_of_a_shrunk_width_follows_it():
    cfg = _shrunk("zoedepth", coverage._twin_features)
    assert cfg.bottleneck_features == cfg.fusion_hidden_size == 32


def test_a_sub_configs_dim_at_its_parents_width_follows_it():
    cfg = _shrunk("superglue", coverage._parent_dims)
    assert cfg.keypoint_detector_config.descriptor_decoder_dim == cfg.hidden_size == 32


def test_the_small_configs_run():
    """The models the three rules fix run at the small config (before them they did not)."""
    for name in ("zoedepth", "unlimited_ocr_vision"):
        model = _small(name).eval()
        kw = next(iter(probe_inputs(model)))[1]
        with torch.no_grad():
            model(**kw)
