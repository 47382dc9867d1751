"""Audio inputs in the whole units a config names (samples in whole tokens, features in whole encoder windows,
frames stacked as the config says), and the coverage check's copy of a model that caches a recurrent state from a
training forward. Tiny configs; penalized gradients = explicit-penalty oracle (`test_probe_inputs._check`)."""
import sys
from pathlib import Path

import torch
import transformers as T
from test_probe_inputs import L, _check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def test_samples_come_in_whole_tokens_of_the_configs_patch_sizes():
    cfg = T.MuseSparkAudioConfig(patch_sizes=[16, 6], hidden_sizes=[16, 32], depths=[1, 1], num_hidden_layers=2,
                                 out_hidden_size=32)
    kwargs = _check(T.MuseSparkAudioModel(cfg), None)
    assert kwargs["input_values"].shape == (2, 16032)  # 16000 rounded up to a multiple of 16 · 6


def test_features_come_in_whole_encoder_windows_with_their_mask():
    cfg = T.Qwen3ASREncoderConfig(num_mel_bins=16, encoder_layers=L, encoder_attention_heads=2, encoder_ffn_dim=64,
                                  d_model=32, downsample_hidden_size=8, output_dim=32, n_window=50)
    kwargs = _check(T.Qwen3ASREncoder(cfg), {"attention": L, "mlp": L})
    assert kwargs["input_features"].shape == (2, 16, 100) and kwargs["input_features_mask"].shape == (2, 100)


def test_features_stack_as_many_frames_a_row_as_the_config_says():
    cfg = T.FunAsrNanoEncoderConfig(num_mel_bins=16, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                    num_hidden_layers=L, num_stacked_frames=7, hidden_dropout=0.0,
                                    attention_dropout=0.0)
    kwargs = _check(T.FunAsrNanoEncoder(cfg), None)
    assert kwargs["input_features"].shape[-1] == 16 * 7


def test_the_check_copies_a_model_that_keeps_its_recurrent_state_from_a_training_forward():
    """RecurrentGemma stores its recurrent and convolution states (non-leaf tensors after a training forward) in
    module attributes; the check copies the model after its training forwards (torch's deepcopy refuses those)."""
    cfg = T.RecurrentGemmaConfig(num_hidden_layers=2, vocab_size=64, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, lru_width=32,
                                 attention_window_size=8, block_types=["recurrent", "attention"])
    from hf_penal.discovery.inputs import probe_inputs
    model = T.RecurrentGemmaModel(cfg)
    rec = coverage.check(model, probe_inputs(model))
    assert rec["status"] == "ok", rec
    assert any(torch.is_tensor(v) and v.grad_fn is not None for m in model.modules() for v in vars(m).values())


def test_a_convolutional_decoder_gets_its_latents_channels_first():
    cfg = T.VibeVoiceAcousticTokenizerDecoderConfig(hidden_size=16, num_filters=8, downsampling_ratios=[2, 2],
                                                    depths=[1, 1, 1])
    kwargs = _check(T.VibeVoiceAcousticTokenizerDecoderModel(cfg), None)
    assert kwargs["hidden_states"].shape == (2, 16, 8)


def test_a_vocoder_gets_its_mel_bins_as_channels():
    cfg = T.Qwen2_5OmniBigVGANConfig(mel_dim=16, upsample_initial_channel=16, resblock_kernel_sizes=[3],
                                     resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[2, 2],
                                     upsample_kernel_sizes=[4, 4])
    kwargs = _check(T.Qwen2_5OmniToken2WavBigVGANModel(cfg), None)
    assert kwargs["mel_spectrogram"].shape == (2, 16, 8)


def test_a_site_call_whose_output_the_model_discards_is_reported_as_getting_no_gradient():
    """PEGASUS-X's last encoder layer updates its global tokens with the same out_proj / fc2 as its local tokens, and
    the encoder returns only the local ones: those calls get no gradient, so the penalty (in the backward) skips
    them while the explicit-penalty oracle does not. The check says so (per call, not per site)."""
    cfg = T.PegasusXConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, block_size=8,
                           num_global_tokens=4, stagger_local_blocks=False, dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0, max_position_embeddings=64)
    from hf_penal.discovery.inputs import probe_inputs
    model = T.PegasusXModel(cfg)
    rec = coverage.check(model, probe_inputs(model))
    assert rec["status"] == "inexact" and rec["sites_no_grad"] == 2, rec


def test_a_synthesizer_that_requires_its_targets_in_training_is_checked_on_inputs_with_them():
    """FastSpeech2 runs in eval on token ids alone but requires its targets in a training forward: the probe builds
    them by name (`_step_labels`: durations 2 per token, 2 · tokens spectrogram frames at num_mel_bins, a pitch and
    an energy per token), and the check trains on the first candidate that runs in training."""
    model_cfg = T.FastSpeech2ConformerConfig(
        hidden_size=32, vocab_size=40, num_mel_bins=16, encoder_num_attention_heads=2, encoder_layers=L,
        encoder_linear_units=64, decoder_layers=L, decoder_num_attention_heads=2, decoder_linear_units=64,
        speech_decoder_postnet_layers=2, speech_decoder_postnet_units=16, duration_predictor_channels=16,
        energy_predictor_channels=16, pitch_predictor_channels=16, pitch_predictor_layers=2)
    voc_cfg = T.FastSpeech2ConformerHifiGanConfig(model_in_dim=16, upsample_initial_channel=16, upsample_rates=[2, 2],
                                                  upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
                                                  resblock_dilation_sizes=[[1, 3]])
    cfg = T.FastSpeech2ConformerWithHifiGanConfig(model_config=model_cfg.to_dict(), vocoder_config=voc_cfg.to_dict())
    from hf_penal.discovery.inputs import probe_inputs
    model = T.FastSpeech2ConformerWithHifiGan(cfg)
    rec = coverage.check(model, probe_inputs(model))
    assert rec["status"] == "ok", rec


def _dots3(**kw):
    return T.Dots3NoteAudioConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
                                  feature_size=16, downsample_hidden_size=8, adapter_input_size=32,
                                  adapter_out_dim=32, **kw)


def test_features_come_with_the_waveform_samples_behind_them():
    kwargs = _check(T.Dots3NoteAudioModel(_dots3()), {"attention": L, "mlp": L})
    assert kwargs["input_features"].shape == (2, 16, 64) and kwargs["chunk_sample_lengths"].tolist() == [64 * 160] * 2


def test_a_failed_probe_reports_the_error_of_the_candidate_that_gives_the_missing_argument():
    """The probe reports its first candidate's error (a missing required argument: no retry at another config
    level); the check reports the error of the candidate that gives that argument instead (here a config
    inconsistency: adapter_input_size ≠ hidden_size, which a retry at another level can fix)."""
    from hf_penal.discovery.inputs import probe_inputs
    cfg = _dots3()
    cfg.adapter_input_size = 48
    model = T.Dots3NoteAudioModel(cfg)
    rec = coverage.check(model, probe_inputs(model))
    assert rec["status"] == "probe failed" and not coverage._NO_RETRY.search(rec["cause"]), rec
