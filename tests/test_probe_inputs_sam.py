"""Segmentation towers and composites (SAM-HQ, EoMT, EdgeTAM, SAM3's DETR towers): the coverage benchmark's small
config keeps the widths one sub-config hands another consistent (`coverage._sibling_widths`), a neck's channel list
equal to its timm backbone's feature widths (`coverage._timm_backbone_channels`), the query layers within the shrunk
depth (`coverage._last_layers`); and the probe builds the inputs of a tower fed its parent's features
(`transformers_inputs._tower_inputs`). Each model is built from a tiny config, penalized with no example inputs given
(the probe builds them) and checked against the explicit-penalty oracle with bit-identical eval outputs
(`test_probe_inputs._check`)."""
import copy
import sys
from pathlib import Path

import torch
import transformers as T
from test_probe_inputs import _check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def _small(model_type, cfg=None, **fields):
    """The benchmark's small config of `model_type` (or of `cfg`, its default config changed: shrunk, sibling widths
    tied, feature sizes and timm levels placed, re-derived), then `fields`."""
    cfg = cfg if cfg is not None else T.AutoConfig.for_model(model_type)
    before = copy.deepcopy(cfg)
    coverage._shrink(cfg)
    coverage._sibling_widths(cfg, before)
    coverage._feature_sizes(cfg, before)
    coverage._timm_backbone_levels(cfg, before)
    coverage._rederive(cfg, before)
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


def test_a_towers_output_width_follows_the_decoder_that_reads_it():
    """SAM-HQ: the vision neck's output_channels (256) is the mask decoder's hidden size (256) and the shared
    positional embedding has num_pos_feats = half of it; the mask decoder's vit_dim is the vision tower's width.
    Shrinking the decoders to 32 takes those along."""
    cfg = _small("sam_hq")
    v, dec = cfg.vision_config, cfg.mask_decoder_config
    assert v.output_channels == dec.hidden_size == cfg.prompt_encoder_config.hidden_size == 32
    assert 2 * v.num_pos_feats == v.output_channels
    assert dec.vit_dim == v.hidden_size
    torch.manual_seed(0)
    _check(T.SamHQModel(cfg), None)


def test_the_query_layers_of_a_segmenter_stay_within_the_shrunk_depth():
    """EoMT: the last num_blocks layers take the queries; with more than the depth the queries are never added."""
    cfg = _small("eomt_dinov3", image_size=64)
    assert cfg.num_blocks <= cfg.num_hidden_layers == 2
    torch.manual_seed(0)
    _check(T.EomtDinov3ForUniversalSegmentation(cfg), None)


def test_a_necks_channel_list_is_its_timm_backbones_feature_widths():
    """EdgeTAM's default backbone config names ResNet-50 while its channel list was written for RepViT: the small
    config takes the widths timm's feature extractor gives (deepest first, as the list was)."""
    import timm
    cfg = _small("edgetam_vision_model")
    bb = cfg.backbone_config
    with torch.device("meta"):
        widths = timm.create_model(bb.architecture, pretrained=False, **bb.model_args).feature_info.channels()
    assert list(cfg.backbone_channel_list) == list(reversed(widths))
    torch.manual_seed(0)
    _check(T.EdgeTamVisionModel(cfg), None)


def test_a_detr_encoder_fed_its_parents_features_gets_a_feature_pyramid_with_its_position_embeddings():
    """SAM3's DETR encoder: forward(vision_features: list[Tensor], text_features: Tensor, vision_pos_embeds=None, ...);
    the position embeddings (optional, but zipped with the features) come in the features' shapes."""
    from transformers.models.sam3.modeling_sam3 import Sam3DetrEncoder
    cfg = _small("sam3_detr_encoder")
    kwargs = _check(Sam3DetrEncoder(cfg), None)
    feats, pos = kwargs["vision_features"], kwargs["vision_pos_embeds"]
    assert [f.shape for f in feats] == [p.shape for p in pos] == [(2, 32, 4, 4), (2, 32, 2, 2)]
    assert kwargs["text_features"].shape == (2, 8, 32)


def test_a_detr_decoder_fed_its_parents_features_gets_them_at_its_width():
    from transformers.models.sam3_lite_text.modeling_sam3_lite_text import Sam3LiteTextDetrDecoder
    cfg = _small("sam3_lite_text_detr_decoder", num_queries=4)
    kwargs = _check(Sam3LiteTextDetrDecoder(cfg), None)
    assert {k: tuple(v.shape) for k, v in kwargs.items()} == {
        "vision_features": (2, 8, 32), "text_features": (2, 8, 32), "vision_pos_encoding": (2, 8, 32)}


def test_a_mask_decoder_head_whose_encoder_states_cross_attend_to_the_prompt_has_its_table_site():
    """SAM3-LiteText's mask decoder: decoder_queries, backbone_features (a pyramid whose coarsest level the encoder
    states replace) and encoder_hidden_states built by the probe, prompt_features too (an optional ``*_features``);
    its one residual add (encoder states + cross-attention to the prompt) is in no numbered layer: a table site."""
    from transformers.models.sam3_lite_text.modeling_sam3_lite_text import Sam3LiteTextMaskDecoder
    cfg = _small("sam3_lite_text_mask_decoder")
    kwargs = _check(Sam3LiteTextMaskDecoder(cfg), {"cross_attention": 1})
    assert kwargs["prompt_features"].shape == kwargs["encoder_hidden_states"].shape == (2, 8, 32)


def test_feature_sizes_follow_the_quartered_image_and_the_probe_feeds_a_sub_configs_image_size():
    """SAM2: the 1024-px image sizes (Hiera's, the prompt encoder's) are quartered, so are the feature-map sizes the
    vision config states (1/4, 1/8, 1/16 of the image); the probe feeds images at the sub-configs' image size (after
    its other candidates: the composite's config names none)."""
    cfg = _small("sam2")
    assert cfg.prompt_encoder_config.image_size == 256
    assert [list(x) for x in cfg.vision_config.backbone_feature_sizes] == [[64, 64], [32, 32], [16, 16]]
    torch.manual_seed(0)
    kwargs = _check(T.Sam2Model(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 3, 256, 256)


def test_a_timm_backbones_levels_are_where_the_image_and_feature_sizes_put_them():
    """EdgeTAM: feature sizes 256, 128, 64 of a 1024-px image are levels at 1/4 ... (and a fourth at 1/32): a ResNet's
    levels 1-4 (reductions 4 ... 32), with their widths in the neck's channel list (ResNet-18 here for speed; the
    default names ResNet-50)."""
    cfg = T.AutoConfig.for_model("edgetam")
    cfg.vision_config.backbone_config.architecture = "resnet18"
    cfg = _small("edgetam", cfg)
    v = cfg.vision_config
    assert list(v.backbone_config.model_args["out_indices"]) == [1, 2, 3, 4]
    assert list(v.backbone_channel_list) == [512, 256, 128, 64]
    torch.manual_seed(0)
    kwargs = _check(T.EdgeTamModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 3, 256, 256)
