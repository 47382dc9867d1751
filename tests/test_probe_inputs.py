"""Example inputs the probe builds from a transformers model's config for forwards that take more than ids, pixels or
audio: patch grids of Qwen2-VL-style vision towers (`grid_thw` with flattened patches), video clips
(`pixel_values_videos`), vocoder spectrograms, hidden states a tower takes from its parent, NaFlex patches with
`spatial_shapes`, patches with `pixel_position_ids`, an `input_features_mask`, codebook-interleaved ids,
`inputs_embeds` instead of ids, audio features at a feature projection's width / a nested config's mel bins / frames
stacked k per row, and image pairs for keypoint matchers. Each model is built from a tiny config, penalized with no
example inputs given (the probe builds them), and checked against the explicit-penalty oracle (`tests/_oracle.py`) on
the inputs the probe ran, with bit-identical eval outputs."""
import copy
import re
from collections import Counter

import pytest
import torch
import transformers as T
from _models import float_outputs, perturbed
from _oracle import grads, rel_err

import hf_penal
from hf_penal.discovery.inputs import probe_inputs

TAU = 1e-2
L = 2


def _probed(model) -> dict:
    """The first built candidate the model runs on: what the probe ran."""
    model.eval()
    for args, kwargs in probe_inputs(model):
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the probe tries the next candidate too
            continue
        assert not args
        return kwargs
    raise AssertionError("no built candidate runs the model")


def _check(model, kinds: dict | None, select: str = "") -> dict:
    """Sites of the kinds expected, found with inputs the probe built; penalized gradients = explicit-penalty oracle
    on those inputs; eval outputs bit-identical. Returns the inputs the probe ran. `select`: the kinds and the sites
    that must fire are those whose name starts with it (a submodule that the inputs run alone)."""
    torch.manual_seed(0)
    model = perturbed(model)
    kwargs = _probed(model)
    found = hf_penal.sites(model)
    chosen = [s for s in found if s.name.startswith(select)]
    assert chosen and (kinds is None or Counter(s.kind for s in chosen) == kinds)
    penal = hf_penal.apply(copy.deepcopy(model), tau=TAU)  # no example inputs: the probe builds its own

    def loss(m):
        torch.manual_seed(0)
        return sum(t.float().square().mean() for t in float_outputs(m(**kwargs)))
    model.eval(), penal.eval()
    with torch.no_grad():
        a, b = float_outputs(model(**kwargs)), float_outputs(penal(**kwargs))
    assert a and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    zspec = list(dict.fromkeys((re.escape(s.end or s.name), s.output_index) for s in found))
    g_plain, _, _ = grads(model, loss)
    g_oracle, _, fired = grads(model, loss, zspec, TAU)
    assert fired >= len(chosen)
    g_penal, _, _ = grads(penal, loss)
    assert rel_err(g_oracle, g_plain) > 1e-5  # the oracle can tell a no-op apart
    assert rel_err(g_penal, g_oracle) < 1e-5
    return kwargs


def test_a_vision_tower_taking_a_patch_grid_gets_grid_thw_and_flattened_patches():
    """Qwen2-VL's vision tower: forward(hidden_states, grid_thw); patches flattened to channels × temporal patch ×
    patch², two images of 2 × 2 merge windows each."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
    cfg = T.Qwen2VLVisionConfig(depth=L, embed_dim=32, hidden_size=32, num_heads=2, patch_size=4,
                                temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
    kwargs = _check(Qwen2VisionTransformerPretrainedModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["grid_thw"].tolist() == [[1, 4, 4]] * 2
    assert kwargs["hidden_states"].shape == (32, 3 * 2 * 4 * 4)


def test_a_video_model_gets_pixel_values_videos_at_its_frames_and_crop_size():
    cfg = T.VJEPA2Config(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, mlp_ratio=2, crop_size=32,
                         patch_size=8, frames_per_clip=4, tubelet_size=2, pred_hidden_size=16,
                         pred_num_hidden_layers=1, pred_num_attention_heads=2, pred_num_mask_tokens=2)
    kwargs = _check(T.VJEPA2Model(cfg), {"attention": L + 1, "mlp": L + 1})  # + the predictor's layer
    assert kwargs["pixel_values_videos"].shape == (2, 4, 3, 32, 32)


def test_a_vocoder_gets_a_spectrogram_at_its_mel_width():
    cfg = T.SpeechT5HifiGanConfig(model_in_dim=16, upsample_initial_channel=16, upsample_rates=[2, 2],
                                  upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
                                  resblock_dilation_sizes=[[1, 3]])
    kwargs = _check(T.SpeechT5HifiGan(cfg), {"conv": 4})  # 2 upsampling stages × 1 resblock × 2 dilated convs
    assert kwargs["spectrogram"].shape == (2, 8, 16)


def test_a_tower_taking_its_parents_hidden_states_gets_them_at_its_width():
    cfg = T.FlavaMultimodalConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                  intermediate_size=64)
    kwargs = _check(T.FlavaMultimodalModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["hidden_states"].shape == (2, 8, 32)


def test_a_naflex_tower_gets_flattened_patches_with_spatial_shapes():
    cfg = T.Siglip2VisionConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                                patch_size=4, num_patches=16)
    kwargs = _check(T.Siglip2VisionModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["pixel_values"].shape == (2, 16, 3 * 4 * 4) and kwargs["spatial_shapes"].tolist() == [[4, 4]] * 2


def test_patches_with_position_ids_cover_whole_pooling_windows():
    cfg = T.Gemma4VisionConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, num_key_value_heads=2,
                               head_dim=16, intermediate_size=64, patch_size=4, pooling_kernel_size=2,
                               position_embedding_size=16)
    kwargs = _check(T.Gemma4VisionModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["pixel_values"].shape == (2, 16, 48) and kwargs["pixel_position_ids"].shape == (2, 16, 2)


def test_an_audio_encoder_reading_its_feature_mask_gets_an_all_ones_mask():
    cfg = T.AudioFlamingo3EncoderConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                        intermediate_size=64, num_mel_bins=16, max_source_positions=16)
    kwargs = _check(T.AudioFlamingo3Encoder(cfg), {"attention": L, "mlp": L})
    assert kwargs["input_features_mask"].shape == (2, 32) and bool(kwargs["input_features_mask"].all())


def test_a_codebook_decoder_gets_one_row_of_ids_per_codebook_and_sample():
    cfg = T.MusicgenDecoderConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, ffn_dim=64,
                                  vocab_size=50, num_codebooks=4)
    kwargs = _check(T.MusicgenModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["input_ids"].shape == (2 * 4, 8)


@pytest.mark.parametrize("name", ["grid_thw", "pixel_values_videos"])
def test_required_inputs_are_built_from_config_fields_not_model_names(name):
    """The same config fields give the same inputs whatever the model is called: a patch grid reads patch_size,
    temporal_patch_size / patch_temporal, in_channels / num_channels and spatial_merge_size / merge_size."""
    from hf_penal.integrations import transformers_inputs as TI
    a = T.PretrainedConfig(patch_size=4, temporal_patch_size=2, in_channels=3, spatial_merge_size=2, image_size=16,
                           num_frames=4)
    b = T.PretrainedConfig(patch_size=4, patch_temporal=2, num_channels=3, merge_size=2, image_size=16, num_frames=4)
    got = [TI._required_alternatives(c, name, [name])[0] for c in (a, b)]
    assert got[0].shape == got[1].shape


@pytest.mark.parametrize("model_type", ["deepseek_v4", "ibert"])
def test_hyper_connection_mixing_and_quantized_adds_are_no_site_and_stay_in_the_denominator(model_type):
    """Decided (coverage.py's docstring): a hyper-connection layer's H·x + post ⊗ z (DeepSeek-V4's mHC) and I-BERT's
    add inside its activation quantizer are not residual adds x + c·z; the sweep records such a model as "no site",
    built and measured, not covered: it stays in the denominator."""
    import sys
    from pathlib import Path
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import coverage
    rec = coverage.run_one("transformers", model_type, timeout=900)
    assert rec["status"] == "no site" and rec["builds"] and rec["blocks"] > 0
    s = coverage.summarize([rec])
    assert (s["measured"], s["residual"], s["ok"]) == (1, 1, 0)


def test_a_pix2struct_encoder_gets_flattened_patches_with_row_and_column():
    cfg = T.Pix2StructConfig(
        text_config=dict(hidden_size=32, d_kv=16, d_ff=64, num_layers=L, num_heads=2, vocab_size=100),
        vision_config=dict(hidden_size=32, patch_embed_hidden_size=48, d_kv=16, d_ff=64, num_hidden_layers=L,
                           num_attention_heads=2))
    kwargs = _check(T.Pix2StructForConditionalGeneration(cfg),
                    {"attention": 2 * L, "cross_attention": L, "mlp": 2 * L})
    patches = kwargs["flattened_patches"]
    assert patches.shape == (2, 16, 2 + 48) and patches[0, :, :2].tolist()[5] == [1.0, 1.0]


def test_a_net_that_pools_below_a_small_image_runs_at_224_pixels():
    """PP-OCRv5's recognizer names no image size and pools the 32-pixel default to nothing: the last candidate."""
    cfg = T.PPOCRV5MobileRecConfig(hidden_size=32, num_attention_heads=2, head_out_channels=50)
    kwargs = _check(T.PPOCRV5MobileRecModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 3, 224, 224)


def test_audio_features_at_the_width_a_feature_projection_names():
    """Wav2Vec2-BERT projects (batch, frames, feature_projection_input_dim) features: the probe reads that width
    (after the mel-bin layouts, which it does not match) and makes the frames the longer axis."""
    cfg = T.Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                               feature_projection_input_dim=24, output_hidden_size=32, apply_spec_augment=False,
                               layerdrop=0.0)
    kwargs = _check(T.Wav2Vec2BertModel(cfg), None)
    assert kwargs["input_features"].shape == (2, 48, 24)


def test_audio_features_at_a_nested_configs_mel_bins_in_whole_stacking_windows():
    """A model whose mel bins sit in a nested config (`asr_config`) and that stacks `subsampling_factor` frames per
    row gets (batch, frames, mel) with frames a multiple of the factor, and a frame mask at those frames."""
    asr = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
               num_key_value_heads=2, num_mel_bins=12, subsampling_factor=5)
    dia = dict(audio_config=dict(asr), head_config=dict(hidden_size=32, audio_hidden_size=32, subsampling_factor=5),
               streaming_config=dict(subsampling_factor=5))
    cfg = T.Nemotron3_5TranscribeAudioConfig(asr_config=asr, diarization_config=dia)
    kwargs = _check(T.Nemotron3_5TranscribeAudioModel(cfg), None)
    assert kwargs["input_features"].shape == (2, 25, 12) and kwargs["input_features_mask"].shape == (2, 25)


def test_audio_features_with_frames_stacked_k_per_row():
    """Granite Speech 5 delta-expands and stacks its mel frames (width 4 × mel bins, no config field says so): a
    last-resort layout of width mel × 2 / mel × 4."""
    cfg = T.GraniteSpeech5EncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=L,
                                        num_attention_heads=2, num_key_value_heads=2, head_dim=16, num_mel_bins=8,
                                        context_size=8, vocab_size=40)
    kwargs = _check(T.GraniteSpeech5Encoder(cfg), None)
    assert kwargs["input_features"].shape == (2, 64, 32)


def test_a_keypoint_matcher_gets_image_pairs():
    """EfficientLoFTR takes both images of a pair at once, (batch, 2, channels, height, width): a last resort after
    the 4-D images, built from them (the second image of each pair the first mirrored)."""
    cfg = T.EfficientLoFTRConfig(stage_num_blocks=[1, 1, 1, 1], out_features=[16, 16, 32, 64], hidden_size=64,
                                 fine_fusion_dims=[64, 32, 16], num_attention_layers=L, num_attention_heads=8,
                                 num_key_value_heads=8, intermediate_size=64)
    kwargs = _check(T.EfficientLoFTRModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 2, 3, 32, 32)
