"""Round-3 text-model rules. The benchmark's small config keeps ties that held in the default config
(`coverage._default_ties`: Mamba-2's heads × head width = expand × hidden width, a latent attention's head_dim =
nope + rope, expert groups that divide the shrunk expert count, an unset sliding window on a config with sliding
fields; `coverage._mrope_fallback`: the modeling code's fallback M-RoPE sections where they must stay equal), and a
failed probe whose first candidate lacks an input it is told to specify reports the error of a candidate that gives it
(so the model is retried at another config level). Last-resort probe inputs: ``*token_type_ids`` beside the ids,
per-object features at a config's ``<name>_dim``, other ``*_embeds`` beside ``inputs_embeds`` (`_beside_text`); a
required ``<input>_padding`` and a code below a config's ``<name>_size`` (`_paddings_and_codes`); required integer
arguments as ones (`_index_args`). Each model is built from a tiny config (or the benchmark's small one) and checked
by `test_probe_inputs._check` (sites found with the inputs the probe built, penalized gradients = explicit-penalty
oracle, bit-identical eval)."""
import copy
import re
import sys
from pathlib import Path

import torch
import transformers as T
from _models import float_outputs, perturbed
from _oracle import grads, rel_err
from test_probe_inputs import TAU, L, _check

import hf_penal
from hf_penal.discovery.inputs import probe_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402


def test_a_mamba2_mixer_keeps_heads_times_head_width_at_expand_times_hidden():
    model = coverage.build_transformers("mamba2")
    cfg = model.config
    assert cfg.num_heads * cfg.head_dim == cfg.expand * cfg.hidden_size and cfg.num_heads % cfg.n_groups == 0
    _check(model, None)


def test_a_latent_attention_whose_head_dim_was_its_whole_query_key_head_keeps_it_so():
    """Mistral-4: head_dim = nope + rope, its rotary part a partial_rotary_factor of it (DeepSeek-V3 keeps rope)."""
    model = coverage.build_transformers("mistral4")
    cfg = model.config
    assert cfg.head_dim == cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    assert coverage.build_transformers("deepseek_v3").config.head_dim == 8  # the rotary part, as before
    _check(model, None)


def test_expert_groups_divide_the_shrunk_expert_count():
    model = coverage.build_transformers("axk1")
    cfg = model.config
    assert cfg.n_routed_experts % cfg.n_group == 0 and cfg.n_routed_experts // cfg.n_group >= 2
    assert 1 <= cfg.topk_group <= cfg.n_group
    _check(model, None)


def test_an_unset_sliding_window_on_a_config_with_sliding_fields_spans_the_positions():
    model = coverage.build_transformers("step3p5")
    assert model.config.sliding_window == model.config.max_position_embeddings
    assert coverage.build_transformers("qwen2").config.sliding_window is None  # no other sliding field: unset
    _check(model, None)


def test_mrope_sections_follow_the_modeling_fallback_where_it_stacks_equal_sections():
    """Ernie-4.5-VL stacks its first two M-RoPE sections (its fallback [22, 22, 20]); Qwen2-VL keeps [2, 3, 3]."""
    model = coverage.build_transformers("ernie4_5_vl_moe_text")
    assert model.config.rope_parameters["mrope_section"] == [3, 3, 2]
    assert coverage.build_transformers("qwen2_vl_text").config.rope_parameters["mrope_section"] == [2, 3, 3]
    _check(model, None)


def _trained(model) -> dict:
    """The first built candidate the model runs a training forward on (the probe's own candidate may run only in
    eval: the benchmark then takes this one for the gradients, `coverage._training_inputs`)."""
    for _, kwargs in probe_inputs(model):
        try:
            with torch.no_grad():
                model.train()(**kwargs)
        except Exception:  # noqa: BLE001 - the next candidate may fit
            continue
        return kwargs
    raise AssertionError("no built candidate runs a training forward")


def test_a_multimodal_forward_that_requires_token_types_in_training_gets_text_types():
    """Molmo2 refuses a training forward without mm_token_type_ids: the penalized training gradients on the candidate
    with them equal the oracle's."""
    model = perturbed(coverage.build_transformers("molmo2"))
    found = hf_penal.sites(model)
    assert found
    kwargs = _trained(model)
    penal = hf_penal.apply(copy.deepcopy(model), tau=TAU)

    def loss(m):
        torch.manual_seed(0)
        return sum(t.float().square().mean() for t in float_outputs(m(**kwargs)))
    zspec = list(dict.fromkeys((re.escape(s.end or s.name), s.output_index) for s in found))
    g_plain, _, _ = grads(model, loss)
    g_oracle, _, _ = grads(model, loss, zspec, TAU)
    g_penal, _, _ = grads(penal, loss)
    assert rel_err(g_oracle, g_plain) > 1e-5 and rel_err(g_penal, g_oracle) < 1e-5
    assert kwargs["mm_token_type_ids"].shape == kwargs["input_ids"].shape
    assert not kwargs["mm_token_type_ids"].any()


def test_a_time_series_forward_gets_its_padding_and_a_frequency_code():
    cfg = T.TimesFmConfig(patch_length=4, context_length=16, horizon_length=4, hidden_size=32, intermediate_size=32,
                          num_hidden_layers=L, num_attention_heads=2, head_dim=16, freq_size=3)
    kwargs = _check(T.TimesFmModel(cfg), None)
    assert kwargs["past_values_padding"].shape == kwargs["past_values"].shape
    assert not kwargs["past_values_padding"].any() and kwargs["freq"].tolist() == [[0], [0]]


def test_a_cross_modal_encoder_gets_object_features_and_positions_at_their_config_widths():
    cfg = T.LxmertConfig(vocab_size=64, hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=L,
                         x_layers=1, r_layers=1, visual_feat_dim=24, visual_pos_dim=4, max_position_embeddings=16)
    kwargs = _check(T.LxmertModel(cfg), None)
    assert kwargs["visual_feats"].shape == (2, 8, 24) and kwargs["visual_pos"].shape == (2, 8, 4)


def test_a_probe_told_to_specify_an_input_a_later_candidate_gives_reports_that_candidates_error():
    """BROS at the small config: the first candidate lacks bbox ("You have to specify bbox", not worth a retry); the
    bbox candidates fail on the config (its box embedding width hidden // 4 // dim_bbox is 1: worth a retry)."""
    model = coverage.build_transformers("bros")
    cause = coverage._named_input_cause(model, probe_inputs(model), ValueError("You have to specify bbox"))
    assert "specify" not in cause and not coverage._NO_RETRY.search(cause)


def test_a_local_decoder_gets_its_parents_patch_embeddings_beside_its_embeddings():
    from transformers.models.blt.modeling_blt import BltLocalDecoder
    cfg = T.BltLocalDecoderConfig(vocab_size=64, hidden_size=32, hidden_size_global=24, num_hidden_layers=L,
                                  num_attention_heads=2, intermediate_size=64, cross_attn_k=2,
                                  max_position_embeddings=32)
    kwargs = _check(BltLocalDecoder(cfg), None)
    assert kwargs["inputs_embeds"].shape == (2, 8, 32) and kwargs["patch_embeds"].shape[-1] == 24


def test_a_decision_head_gets_its_integer_arguments_as_ones():
    model = coverage.build_transformers("jev")
    kwargs = _check(model, None)
    for n in ("marks", "num_options", "question_type_ids"):
        assert torch.equal(kwargs[n], torch.ones(kwargs[n].shape[0], 1, dtype=torch.long))
