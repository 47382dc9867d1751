"""Probe inputs for Q-Former models and image sets: a Q-Former run alone gets its optional cross-attention states at
the config's ``encoder_hidden_size``; a required ``<prefix>_input_ids`` gets ids of the ``<prefix>_config`` vocabulary
(InstructBLIP's ``qformer_input_ids``); a forward that takes a number-of-images / frames axis gets one-image sets
(batch, 1, C, H, W), with an all-ones ``image_attention_mask`` where it takes one; the coverage benchmark sets a
Q-Former model's unset video placeholder id; and the probe counts a branch scaled by a gate computed from parameters
alone (Idefics' ``tanh(alpha)`` of an ``nn.Tanh`` module) as scaled by a constant. Each model is built from a tiny
config, penalized with no example inputs given, and checked against the explicit-penalty oracle
(`test_probe_inputs._check`)."""
import sys
from pathlib import Path

import transformers as T
from test_probe_inputs import L, _check

import hf_penal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64)
TEXT = dict(model_type="opt", hidden_size=32, num_hidden_layers=L, num_attention_heads=2, ffn_dim=64,
            word_embed_proj_dim=32, vocab_size=64)


def test_a_q_former_alone_gets_cross_attention_states_at_the_encoder_width():
    cfg = T.Blip2QFormerConfig(**SMALL, encoder_hidden_size=16, vocab_size=64, cross_attention_frequency=1)
    kwargs = _check(T.Blip2QFormerModel(cfg), None)
    assert kwargs["encoder_hidden_states"].shape == (2, 8, 16)


def _instructblip(cls_cfg, **kw):
    return cls_cfg(vision_config=dict(**SMALL, image_size=32, patch_size=8),
                   qformer_config=dict(**SMALL, encoder_hidden_size=32, vocab_size=48),
                   text_config=TEXT, num_query_tokens=4, **kw)


def test_a_q_former_instruction_gets_ids_of_the_q_formers_own_vocabulary():
    cfg = _instructblip(T.InstructBlipConfig)
    coverage._placeholder_token(cfg)
    kwargs = _check(T.InstructBlipModel(cfg), None)
    ids = kwargs["qformer_input_ids"]
    assert ids.shape == (2, 8) and int(ids.max()) < 48


def test_a_video_q_former_model_gets_frames_and_its_video_placeholder_id():
    cfg = _instructblip(T.InstructBlipVideoConfig)
    coverage._placeholder_token(cfg)
    assert cfg.video_token_id == 63
    kwargs = _check(T.InstructBlipVideoModel(cfg), None)
    assert kwargs["pixel_values"].shape == (2, 1, 3, 32, 32) and "qformer_input_ids" in kwargs


def _idefics():
    cfg = T.IdeficsConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
                          vocab_size=64, additional_vocab_size=2, cross_layer_interval=1, use_resampler=False,
                          vision_config=dict(embed_dim=32, image_size=32, patch_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    return T.IdeficsModel(cfg)


def test_an_image_set_model_gets_one_image_a_sample_with_an_image_attention_mask():
    kwargs = _check(_idefics(), None)
    assert kwargs["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert kwargs["image_attention_mask"].shape == (2, 8, 1)


def test_a_branch_gated_by_a_module_of_a_parameter_is_a_site():
    """Idefics' gated cross-attention layer: x + tanh(alpha) · mlp(x), tanh an nn.Tanh module applied to the
    parameter alpha: a learned constant gate, so the MLP is a site in each such layer (its cross-attention output
    goes through a per-token masked_fill first: not a site)."""
    model = _idefics()
    _check(model, None)
    names = {s.name for s in hf_penal.sites(model)}
    assert {f"gated_cross_attn_layers.{i}.mlp" for i in range(L)} <= names
