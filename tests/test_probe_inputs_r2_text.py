"""Last-resort probe inputs beside the ids and from config fields (`_side_inputs`), and the benchmark's config rules
for towers whose small config the shrink made inconsistent: ids into a config's list field (``lang_ids`` for
``languages``), a parent's ``last_hidden_state``, layout ``bbox``, ids with a column per codebook channel (with the
encoder states a decoder cross-attends to), ``past_values`` at ``context_length`` × ``num_input_channels``, audio
features with a channel axis (``patch_embed_input_channels``); a hierarchical tower's hidden_size kept at its
first-stage width × 2^(stages-1) (`_stage_doubled_widths`) and the default head counts at the small head width
(`_default_heads`). Each model is built from a tiny config and checked by `test_probe_inputs._check` (sites found with
the inputs the probe built, penalized gradients = explicit-penalty oracle, bit-identical eval)."""
import sys
from pathlib import Path

import transformers as T
from test_probe_inputs import L, _check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def test_ids_into_a_config_list_field_pick_the_language_adapter():
    cfg = T.XmodConfig(vocab_size=64, hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                       intermediate_size=64, languages=["en_XX", "de_DE"], max_position_embeddings=32)
    kwargs = _check(T.XmodModel(cfg), None)
    assert kwargs["lang_ids"].tolist() == [0, 1]


def test_a_depth_decoder_gets_its_parents_last_hidden_state_at_the_input_width():
    from transformers.models.moshi.modeling_moshi import MoshiDepthDecoder
    cfg = T.MoshiDepthConfig(vocab_size=64, hidden_size=32, input_size=24, num_hidden_layers=L,
                             num_attention_heads=2, num_key_value_heads=2, head_dim=16, ffn_dim=64,
                             audio_vocab_size=64, num_codebooks=8, max_position_embeddings=9)
    kwargs = _check(MoshiDepthDecoder(cfg), None)
    assert kwargs["last_hidden_state"].shape == (2, 8, 24)


def test_a_codebook_decoder_gets_ids_with_a_column_per_channel_and_encoder_states():
    from transformers.models.dia.modeling_dia import DiaDecoder
    cfg = T.DiaDecoderConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=L,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, cross_num_attention_heads=2,
                             cross_head_dim=16, cross_num_key_value_heads=2, cross_hidden_size=24, num_channels=3,
                             pad_token_id=37, eos_token_id=38, bos_token_id=39)
    kwargs = _check(DiaDecoder(cfg), None)
    assert kwargs["input_ids"].shape == (2, 8, 3) and kwargs["encoder_hidden_states"].shape == (2, 8, 24)


def test_a_time_series_mixer_gets_its_context_length_times_its_channels():
    cfg = T.PatchTSMixerConfig(context_length=16, patch_length=4, patch_stride=4, num_input_channels=2, d_model=8,
                               num_layers=L)
    kwargs = _check(T.PatchTSMixerModel(cfg), None)
    assert kwargs["past_values"].shape == (2, 16, 2)


def test_a_layout_model_gets_normalised_boxes_per_token():
    cfg = T.UdopConfig(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=L, num_decoder_layers=L,
                       num_heads=2, image_size=32, patch_size=16)  # its 2-D relative biases read the boxes
    kwargs = _check(T.UdopModel(cfg), None)
    box = kwargs["bbox"]
    assert box.shape == (2, 8, 4) and bool((box[..., :2] < box[..., 2:]).all()) and bool((box <= 1).all())


def test_a_spectrogram_tower_gets_features_with_a_channel_axis():
    audio = dict(hidden_size=64, patch_embeds_hidden_size=16, depths=[1, 1, 1], num_attention_heads=[2, 2, 2],
                 num_mel_bins=16, spec_size=64, window_size=4, patch_size=4, patch_stride=[4, 4],
                 projection_dim=32)
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                projection_dim=32)
    cfg = T.ClapConfig(text_config=text, audio_config=audio, projection_dim=32)
    kwargs = _check(T.ClapModel(cfg), None)
    assert kwargs["input_features"].shape == (2, 1, 32, 16)


def test_a_hierarchical_towers_width_stays_its_first_stage_doubled_per_stage():
    """CLAP's audio Swin: hidden_size (what its projection reads) = patch_embeds_hidden_size × 2^(stages-1)."""
    audio = coverage.build_transformers("clap").config.audio_config
    assert audio.hidden_size == audio.patch_embeds_hidden_size * 2 ** (len(audio.depths) - 1)


def test_the_small_heads_level_keeps_the_default_heads_at_the_small_head_width():
    """CodeGen splits qkv in 4 model-parallel groups: 2 heads do not divide; its default 16 heads at 16 wide do."""
    cfg = coverage.build_transformers("codegen", "small-heads").config
    assert cfg.n_head == T.CodeGenConfig().n_head and cfg.n_embd // cfg.n_head == 16 and cfg.n_layer == 2
    assert coverage._LEVELS[-1] == "small-heads"  # last: a model another level runs keeps that level
