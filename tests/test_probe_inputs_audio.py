"""Probe inputs for audio forwards whose arguments are tied to each other or to config fields, and the coverage
benchmark's small-config rules they need: a mel spectrogram by name with its paired mask (``audio_mel`` +
``audio_mel_mask``), codebook ids (``audio_input_ids``), features packed with their per-sample lengths
(``feature_lens``), features at one frame per hop of samples beside the samples (codecs with a semantic encoder),
a video clip beside audio (``pixel_values_videos``) at a nested timm tower's size; and in the benchmark, a field
summing two shrunk widths (a codec's ``quantization_dim``) and a nested timm tower's ``model_args``. Models are
built at the benchmark's small config (tiny: width 32, 2 layers), penalized with no example inputs given, and checked
against the explicit-penalty oracle on the inputs the probe ran (`test_probe_inputs._check`)."""
import copy
import sys
from pathlib import Path

import torch
import transformers as T
from test_probe_inputs import _check, _probed

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def _small(model_type):
    return coverage.build_transformers(model_type, "small")


def _small_config(model_type):
    cfg = T.AutoConfig.for_model(model_type)
    before = copy.deepcopy(cfg)
    coverage._shrink(cfg)
    coverage._width_sums(cfg, before)
    coverage._rederive(cfg, before)
    return cfg


def test_a_named_mel_spectrogram_gets_its_width_and_a_paired_mask_of_its_frames():
    """Gemma3n's audio encoder: forward(audio_mel, audio_mel_mask) both required; (batch, frames, input_feat_size)
    and a bool mask (annotated BoolTensor) three quarters 1, so frames are kept under either padding convention."""
    model = _small("gemma3n_audio")
    kwargs = _check(model, None)
    assert kwargs["audio_mel"].shape == (2, 64, model.config.input_feat_size)
    mask = kwargs["audio_mel_mask"]
    assert mask.dtype == torch.bool and mask.shape == (2, 64) and mask[:, :48].all() and not mask[:, 48:].any()


def test_features_with_feature_lens_come_packed_with_their_lengths():
    """Qwen2.5-Omni's audio encoder: input_features (mel, total frames) split by feature_lens (batch,)."""
    model = _small("qwen2_5_omni_audio_encoder")
    kwargs = _check(model, None)
    f, n = kwargs["input_features"], kwargs["feature_lens"]
    assert f.dim() == 2 and f.shape[0] == model.config.num_mel_bins and n.tolist() == [f.shape[1] // 2] * 2


def test_a_codec_with_a_semantic_encoder_gets_one_feature_frame_per_hop_of_samples():
    """XCodec2: the semantic (w2v-BERT) features and the acoustic encoder's frames are concatenated: 16000 samples,
    16000 // hop_length frames at the feature projection's width; quantization_dim = the two widths' sum."""
    cfg = _small_config("xcodec2")
    assert cfg.quantization_dim == cfg.hidden_size + cfg.semantic_model_config.hidden_size
    cfg.encoder_hidden_size = 4  # the acoustic encoder doubles it per downsampling stage: 128 channels (fast)
    cfg.semantic_model_config.apply_spec_augment = False  # its masks draw from numpy, which `_check` does not seed
    torch.manual_seed(0)
    model = T.Xcodec2Model(cfg)
    kwargs = _check(model, None)
    assert kwargs["input_values"].shape == (2, 1, 16000)
    assert kwargs["input_features"].shape == (2, 16000 // cfg.hop_length,
                                              cfg.semantic_model_config.feature_projection_input_dim)
    assert kwargs["input_features_mask"].shape == (2, 16000 // cfg.hop_length)


def test_a_codec_whose_frames_are_trimmed_runs_once_its_quantizer_width_is_the_sum():
    """NeuCodec trims the semantic and acoustic frames to the shorter: an earlier feature layout (at the feature
    projection's width) runs it, once quantization_dim follows the two shrunk widths."""
    cfg = _small_config("neucodec")
    assert cfg.quantization_dim == cfg.hidden_size + cfg.semantic_model_config.hidden_size
    cfg.encoder_hidden_size = 4
    torch.manual_seed(0)
    kwargs = _probed(T.NeuCodecModel(cfg))
    assert kwargs["input_features"].shape[-1] == cfg.semantic_model_config.feature_projection_input_dim


def test_a_clip_for_a_timm_tower_takes_the_img_size_of_its_model_args():
    cfg = _small_config("pe_audio_video_encoder")
    cfg.video_config.vision_config.model_args["img_size"] = 48
    torch.manual_seed(0)
    kwargs = _probed(T.PeAudioVideoEncoder(cfg))
    assert kwargs["pixel_values_videos"].shape[-2:] == (48, 48)


def test_an_audio_video_encoder_gets_a_clip_at_its_timm_towers_size():
    """PE audio-video: the video tower is a timm ViT (a nested timm_wrapper config): shrunk through model_args to
    2 layers at 32 px, and the probe's clip is at that size beside (batch, 1, samples) audio."""
    model = _small("pe_audio_video_encoder")
    args = model.config.video_config.vision_config.model_args
    assert args["depth"] == 2 and args["img_size"] == 32
    assert sum(p.numel() for p in model.parameters()) < 20_000_000
    kwargs = _check(model, None)
    assert kwargs["input_values"].shape == (2, 1, 16000)
    assert kwargs["pixel_values_videos"].shape[-2:] == (32, 32)


def test_a_top_level_timm_wrapper_keeps_its_model_args():
    assert _small("timm_wrapper").config.model_args is None


def test_codebook_ids_by_name_run_an_embedding_only_audio_model_with_no_site():
    """Inkling's audio model embeds (batch, frames, codebooks) ids and norms them: no residual add, so no site."""
    model = _small("inkling_audio")
    kwargs = _probed(model)
    ids = kwargs["audio_input_ids"]
    assert ids.shape == (2, 8, model.config.num_codebooks) and int(ids.max()) < model.config.codebook_size
    assert hf_penal.sites(model) == []


def test_width_sums_leave_a_config_without_such_a_field_alone():
    cfg = T.AutoConfig.for_model("bert")
    before = T.AutoConfig.for_model("bert")
    coverage._shrink(cfg)
    shrunk = cfg.to_dict()
    coverage._width_sums(cfg, before)
    assert cfg.to_dict() == shrunk
