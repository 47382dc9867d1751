"""Round-2 vision / discovery fixes, each on a tiny config against the explicit-penalty oracle (`_check` of
tests/test_probe_inputs.py): ZAYA's layers, whose residual adds happen inside a helper module (its table entry);
inputs by name, last of all: tiled images with aspect-ratio ids and mask, prompt images stacked with the image,
frames folded into the batch, patch images with an optional ``grid_thw``, hidden states split into windows; and the
coverage benchmark's small configs for tiled towers (layer-index lists within the shrunk depth, small tiles) and for a
model that tiles scaled images (DepthPro)."""
import sys
from pathlib import Path

import transformers as T
from test_probe_inputs import L, _check

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def test_zaya_layers_get_both_branches_from_the_table_not_the_qk_projections_inner_adds():
    """ZAYA adds each branch as (z + b)·s + (x + b')·s' inside ZayaResidualScaling, a module taking both z and the
    skip; the probe alone sees only the attention's q/k projection adds (conv output sliced into q and k, each added
    to a linear projection) and the router's state. The table names self_attn and the MoE mlp (a tuple: z first)."""
    cfg = T.ZayaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, moe_intermediate_size=32, num_experts=2,
                       router_hidden_size=8, layer_types=["hybrid"] * L, max_position_embeddings=64)
    model = T.ZayaModel(cfg)
    _check(model, {"attention": L, "mlp": L})
    names = sorted(s.name for s in hf_penal.sites(model))
    assert names == sorted(f"layers.{i}.{m}" for i in range(L) for m in ("self_attn", "mlp"))


def test_a_tiled_image_tower_gets_tiles_with_aspect_ratio_ids_and_mask():
    """Mllama's vision tower: forward(pixel_values, aspect_ratio_ids, aspect_ratio_mask), images as max_num_tiles
    tiles; the id of the first supported aspect ratio that uses every tile ([1, 4]: id 4)."""
    cfg = T.MllamaVisionConfig(hidden_size=32, num_hidden_layers=L, num_global_layers=1, attention_heads=2,
                               intermediate_size=64, image_size=28, patch_size=7, intermediate_layers_indices=[0, 1],
                               vision_output_dim=96)
    kwargs = _check(T.MllamaVisionModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 1, 4, 3, 28, 28)
    assert kwargs["aspect_ratio_ids"].tolist() == [[4], [4]] and kwargs["aspect_ratio_mask"].all()


def test_prompt_images_stacked_with_the_image_come_at_half_height():
    """SegGPT stacks the prompt image over the image (and the prompt mask over itself) into one picture at the
    config's image size: each of pixel_values, prompt_pixel_values, prompt_masks at half the height."""
    cfg = T.SegGptConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, mlp_dim=64, image_size=[64, 32],
                         patch_size=8, pretrain_image_size=32, merge_index=0, intermediate_hidden_state_indices=[0, 1],
                         decoder_hidden_size=16)
    kwargs = _check(T.SegGptModel(cfg), {"attention": L, "mlp": L})
    assert {k: tuple(v.shape) for k, v in kwargs.items()} == {
        k: (2, 3, 32, 32) for k in ("pixel_values", "prompt_pixel_values", "prompt_masks")}


def test_a_frame_tower_gets_the_frames_folded_into_the_batch():
    """X-CLIP's vision tower: num_frames in its config, frames as (batch · frames, channels, h, w)."""
    cfg = T.XCLIPVisionConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                              mit_hidden_size=32, mit_intermediate_size=64, mit_num_attention_heads=2,
                              mit_num_hidden_layers=1, image_size=32, patch_size=8, num_frames=2)
    kwargs = _check(T.XCLIPVisionModel(cfg), None)
    assert kwargs["pixel_values"].shape == (4, 3, 32, 32)


def test_patch_images_with_an_optional_grid_thw():
    """PaddleOCR-VL's vision tower: pixel_values (1, patches, channels, patch, patch) with grid_thw (optional)."""
    from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRVisionModel
    cfg = T.PaddleOCRVisionConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=4)
    kwargs = _check(PaddleOCRVisionModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["pixel_values"].shape == (1, 2 * 4 * 4, 3, 4, 4) and kwargs["grid_thw"].tolist() == [[1, 4, 4]] * 2


def test_a_tiled_towers_small_config_reads_layers_within_its_depth_at_small_tiles():
    cfg = T.AutoConfig.for_model("mllama_vision_model")
    before = T.AutoConfig.for_model("mllama_vision_model")
    coverage._shrink(cfg)
    coverage._layer_indices(cfg, before)
    assert len(cfg.intermediate_layers_indices) == len(before.intermediate_layers_indices)
    assert max(cfg.intermediate_layers_indices) < cfg.num_hidden_layers == 2
    assert cfg.image_size == 4 * cfg.patch_size and cfg.num_global_layers == 2


def test_a_windowed_encoder_gets_its_states_partitioned_into_its_windows():
    """LW-DETR's ViT encoder: forward(hidden_states) with the rows already split into num_windows windows (its
    global layers fold them back: batch // num_windows), so BATCH · num_windows rows."""
    from transformers.models.lw_detr.modeling_lw_detr import LwDetrViTEncoder
    cfg = T.LwDetrViTConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, mlp_ratio=2, image_size=32,
                            patch_size=8, num_windows=4, window_block_indices=[0])
    kwargs = _check(LwDetrViTEncoder(cfg), {"attention": L, "mlp": L})
    assert kwargs["hidden_states"].shape[0] == 2 * 4


def test_a_tiling_model_runs_at_its_small_config_with_the_probes_own_pixels():
    """DepthPro cuts the image, scaled by each of scaled_images_ratios (0.25 the smallest), into patch_size tiles
    (384 px: its sub-models' image size): at the benchmark's small config (tiles of 4 sub-model patches) the probe's
    224-pixel candidate is large enough."""
    kwargs = _check(coverage.build_transformers("depth_pro"), None)
    assert kwargs["pixel_values"].shape[-1] * 0.25 >= 56


def test_a_tiling_models_small_config_has_small_tiles_and_hooks_within_the_sub_models_depth():
    cfg, before = T.AutoConfig.for_model("depth_pro"), T.AutoConfig.for_model("depth_pro")
    coverage._shrink(cfg)
    coverage._tiles(cfg, before)
    subs = (cfg.image_model_config, cfg.patch_model_config)
    assert cfg.patch_size == 4 * subs[0].patch_size and all(s.image_size == cfg.patch_size for s in subs)
    assert len(cfg.intermediate_hook_ids) == 2 and max(cfg.intermediate_hook_ids) < subs[1].num_hidden_layers
