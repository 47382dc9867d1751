"""Round-3 inputs and benchmark rules: a list main_input_name with token ids of a config's ``<prefix>_seq_len``,
hidden states for an encoder-decoder over continuous values, a waveform encoder's samples as channels-first
``hidden_states``, every modality at once, a required optional argument given None, 128-bin features where no config
field names a width; the benchmark's channel counts that follow the hidden size and latent-array depth / width, and a
model with no forward of its own measured by its parts. Tiny configs; penalized gradients = explicit-penalty oracle
(`test_probe_inputs._check`, or the benchmark's own `coverage.check`)."""
import sys
from pathlib import Path

import transformers as T
from test_probe_inputs import L, _check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def _ok(model) -> dict:
    from hf_penal.discovery.inputs import probe_inputs
    rec = coverage.check(model, probe_inputs(model))
    assert rec["status"] == "ok", rec
    return rec


def test_a_list_main_input_and_task_tokens_of_the_configs_task_seq_len():
    """OneFormer: main_input_name is [pixel_values, task_inputs] (it crashed the builder); task_inputs are token ids
    (batch, task_seq_len), which its task MLP reads as one vector."""
    model = coverage.build_transformers("oneformer")
    kwargs = _check(model, None)
    assert kwargs["task_inputs"].shape == (2, model.config.task_seq_len)


def test_an_encoder_decoder_over_continuous_values_gets_hidden_states_for_both():
    cfg = T.SpeechT5Config(hidden_size=32, encoder_layers=L, decoder_layers=L, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64,
                           hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                           encoder_layerdrop=0.0, decoder_layerdrop=0.0)
    kwargs = _check(T.SpeechT5Model(cfg), {"attention": 2 * L, "cross_attention": L, "mlp": 2 * L})
    assert kwargs["input_values"].shape == kwargs["decoder_input_values"].shape == (2, 8, 32)


def test_a_waveform_encoder_gets_samples_channels_first_in_whole_latent_frames():
    cfg = T.VibeVoiceAcousticTokenizerEncoderConfig(hidden_size=16, num_filters=8, downsampling_ratios=[2, 3],
                                                    depths=[1, 1, 1])
    kwargs = _check(T.VibeVoiceAcousticTokenizerEncoderModel(cfg), None)
    assert kwargs["hidden_states"].shape == (2, 1, 12)


def test_a_model_that_needs_two_modalities_gets_all_it_names():
    """PE audio-video: at least two of text, video and audio, and its text + video path alone breaks."""
    kwargs = _check(coverage.build_transformers("pe_audio_video"), None)
    assert {"input_ids", "pixel_values_videos", "input_values"} <= set(kwargs)


def test_channel_counts_at_the_default_hidden_size_follow_the_shrunk_one_and_a_required_optional_mask_is_none():
    """Phi-4-multimodal's audio encoder: its convolution channels are the model width (1024 by default), and its
    required `mask: Tensor | None` is built by the model itself when None."""
    model = coverage.build_transformers("phi4_multimodal_audio")
    assert model.config.ext_pw_out_channel == model.config.depthwise_separable_out_channel == 32
    from hf_penal.discovery.inputs import probe_inputs
    cands = probe_inputs(model)
    assert any("mask" in kw and kw["mask"] is None for _, kw in cands)
    _ok(model)


def test_features_at_128_mel_bins_where_no_config_field_names_a_width():
    cfg = T.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, output_proj_dims=32)
    kwargs = _check(T.Gemma4AudioModel(cfg), None)
    assert kwargs["input_features"].shape == (2, 64, 128)


def test_a_latent_array_models_depth_and_width_shrink():
    model = coverage.build_transformers("perceiver")
    assert model.config.num_self_attends_per_block == 2 and model.config.d_latents == 32
    assert sum(p.numel() for p in model.parameters()) < 5e6


def test_a_model_with_no_forward_of_its_own_is_measured_by_its_parts():
    """A VQ autoencoder whose entry points are encode / decode: its encoder (the part with residual blocks) is
    checked on pixels built from the parent's config; one with no such part (a quantizer and 1×1 convolutions)
    has no site."""
    cfg = T.ChameleonVQVAEConfig(embed_dim=8, num_embeddings=16, latent_channels=8, base_channels=32,
                                 channel_multiplier=[1, 2], num_res_blocks=1, resolution=16)
    rec = coverage.check_parts(T.ChameleonVQVAE(cfg))
    assert rec["status"] == "ok" and rec["parts"] == ["encoder"] and rec["covered"] == rec["blocks"] > 0, rec
    rec = coverage.check_parts(coverage.build_transformers("glm_image_vqmodel"))
    assert rec["status"] == "no site" and rec["parts"] == [], rec


def test_one_denoising_step_of_a_code_conditioned_mel_generator():
    """Qwen2.5-Omni's token-to-wave DiT: step times, codec ids, noisy and reference mel frames and a per-frame speaker
    embedding, by name at the config's widths. Its transformer blocks add the branch under a gate computed from the
    step time (adaLN-Zero: a per-sample gate, not a site); the speaker encoder's SE blocks are found."""
    cfg = T.Qwen2_5OmniDiTConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, head_dim=16, emb_dim=16,
                                 mel_dim=16, enc_emb_dim=8, enc_dim=16, enc_channels=[16, 16, 16, 16, 48],
                                 enc_attention_channels=8, enc_se_channels=8, num_embeds=32, dropout=0.0,
                                 look_ahead_layers=[1], look_backward_layers=[0])
    kwargs = _check(T.Qwen2_5OmniToken2WavDiTModel(cfg), None)
    assert kwargs["hidden_states"].shape == kwargs["condition_vector"].shape == (2, 16, 16)
    assert kwargs["speaker_embedding"].shape == (2, 16, 8) and kwargs["quantized_code"].shape == (2, 8)
