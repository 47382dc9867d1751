"""Vision towers whose inputs or small config need more than pixels at the config's image size: images with their
patch grid sizes (``target_sizes``) packed into one row of patches, patch volumes of a tower that embeds each patch
itself (``temporal_patch_size`` without ``grid_thw``), a parent's feature map (``patch_embeds``), a VQ autoencoder's
images at the size its latent grid implies; and the coverage benchmark's small config keeping vision-tower widths
tied (`coverage._tied_vision_widths`: compound-scaled conv nets, pixel-shuffle adapters, VQ latent grids). Each model
is built from a tiny config (or the benchmark's small config), penalized with no example inputs given (the probe
builds them) and checked against the explicit-penalty oracle on the inputs the probe ran (`_check`)."""
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from test_probe_inputs import L, _check, _probed

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402
from test_coverage_shrink import _small_rederived as _small  # noqa: E402


def test_images_with_target_sizes_packed_into_one_row_of_patches():
    """MiniCPM-OCR's tower adds one position embedding per patch of all images (batch 1): BATCH images of 4 × 4
    patches packed into (1, channels, patch, 2 · 16 · patch), with their (h, w) grid sizes."""
    from transformers.models.minicpm_ocr.modeling_minicpm_ocr import MiniCPMOcrVisionModel
    cfg = T.AutoConfig.for_model("minicpm_ocr_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=L,
                                 num_attention_heads=2, image_size=32, patch_size=4, insert_layer_id=0)
    kwargs = _check(MiniCPMOcrVisionModel(cfg), None)
    assert kwargs["target_sizes"].tolist() == [[4, 4]] * 2
    assert kwargs["pixel_values"].shape == (1, 3, 4, 2 * 16 * 4)


def test_a_tower_fed_its_parents_feature_map_gets_patch_embeds_at_its_width():
    from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrVisionEncoder
    cfg = T.AutoConfig.for_model("unlimited_ocr_vision_encoder", hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=L, num_attention_heads=2, image_size=32, patch_size=8)
    kwargs = _check(UnlimitedOcrVisionEncoder(cfg), {"attention": L, "mlp": L})
    assert kwargs["patch_embeds"].shape == (2, 32, 4, 4)


def test_a_tower_embedding_each_patch_volume_gets_channels_last_patch_volumes():
    """Inkling's hierarchical patch MLP folds (patches, temporal patch, patch, patch, channels): it runs on the built
    inputs; it has no residual add, so no site (not a probe failure)."""
    from transformers.models.inkling.modeling_inkling import InklingVisionModel
    cfg = T.AutoConfig.for_model("inkling_vision", hidden_size=32, text_hidden_size=32, n_layers=L, patch_size=4,
                                 temporal_patch_size=2)
    model = InklingVisionModel(cfg)
    assert _probed(model)["pixel_values"].shape == (2, 2, 4, 4, 3)
    assert hf_penal.sites(model) == []


def test_a_vq_autoencoder_gets_images_at_the_size_its_latent_grid_implies():
    """Janus' VQ-VAE quantizes to num_patches² tokens: images of num_patches · 2^(levels - 1) pixels per side."""
    cfg = T.AutoConfig.for_model("janus_vqgan", base_channels=32, channel_multiplier=[1, 1], num_patches=2,
                                 latent_channels=32, embed_dim=8, num_embeddings=64, projection_dim=32,
                                 image_token_embed_dim=32, num_res_blocks=2)
    kwargs = _check(T.JanusVQVAE(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 3, 4, 4)


@pytest.mark.parametrize("model_type", ["align", "efficientnet"])
def test_a_compound_scaled_net_ends_at_the_benchmark_width(model_type):
    """ALIGN's text projection (projection_dim, shrunk to 32) meets the EfficientNet tower's last stage, whose width
    is out_channels[-1] × width_coefficient: the multiplier is set so that it is 32; EfficientNet's head width
    (hidden_dim) scales with it; depth multiplier 1."""
    cfg = _small(model_type)
    vision = getattr(cfg, "vision_config", cfg)
    assert vision.depth_coefficient == 1.0
    model = coverage.build_transformers(model_type).eval()
    with torch.no_grad():
        out = model(**_probed(model))
    if model_type == "align":
        assert out.image_embeds.shape == out.text_embeds.shape == (2, cfg.projection_dim)
    else:
        assert out.pooler_output.shape == (2, vision.hidden_dim)


def test_a_pixel_shuffle_adapter_reads_hidden_over_ratio_squared_features():
    cfg = _small("llama4_vision_model")
    assert cfg.intermediate_size == round(cfg.hidden_size / cfg.pixel_shuffle_ratio ** 2)
    assert cfg.projector_input_dim == cfg.projector_output_dim == 32
    model = coverage.build_transformers("llama4_vision_model").eval()
    with torch.no_grad():
        assert model(**_probed(model)).last_hidden_state.shape[-1] == 32


def test_a_vq_latent_grid_shrinks_and_the_images_follow():
    cfg = _small("janus_vqgan")
    assert cfg.num_patches == 2
    model = coverage.build_transformers("janus_vqgan").eval()
    assert _probed(model)["pixel_values"].shape[-2:] == (32, 32)  # 2 · 2^(5 - 1)
