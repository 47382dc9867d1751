"""Probe inputs built by argument name for forwards that take neither ids, pixels nor audio: trajectories (``states``
/ ``actions`` at a config's ``state_dim`` / ``act_dim``, with ``returns_to_go`` and ``timesteps``), tokens pooled into
patches (``patch_ids`` with ``num_patches``), retrieved documents (``context_input_ids`` / ``doc_scores`` for the
config's ``n_docs``), required ``*_embeds`` / ``*_hidden_states`` (the latter also at the hidden width times the
number of layers a config list names); and the coverage benchmark's placeholder id for a Q-Former model whose config
leaves it unset. Each model is built from a tiny config, penalized with no example inputs given, and checked against
the explicit-penalty oracle (`test_probe_inputs._check`)."""
import sys
from pathlib import Path

import transformers as T
from test_probe_inputs import _check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

L = 2
SMALL = dict(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64)


def test_a_trajectory_model_gets_states_and_actions_at_the_configs_dims():
    cfg = T.DecisionTransformerConfig(state_dim=5, act_dim=3, hidden_size=32, n_layer=L, n_head=2, n_inner=64,
                                      max_ep_len=16)
    kwargs = _check(T.DecisionTransformerModel(cfg), {"attention": L, "mlp": L})
    assert kwargs["states"].shape == (2, 8, 5) and kwargs["actions"].shape == (2, 8, 3)
    assert kwargs["returns_to_go"].shape == (2, 8, 1) and kwargs["timesteps"].tolist() == [list(range(8))] * 2


def test_a_byte_encoder_pooling_tokens_into_patches_gets_patch_ids():
    cfg = T.BltLocalEncoderConfig(**SMALL, vocab_size=64, hidden_size_global=32, cross_attn_k=2)
    from transformers.models.blt.modeling_blt import BltLocalEncoder
    kwargs = _check(BltLocalEncoder(cfg), {"attention": L, "mlp": L, "cross_attention": 1})
    assert kwargs["patch_ids"].tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 2 and kwargs["num_patches"] == 4


def test_a_retrieval_model_without_a_retriever_gets_context_ids_for_n_docs():
    """Run without a retriever, RAG's question encoder does not run: only the generator's sites (under
    ``generator.``) must fire, and penalized gradients equal the oracle's on them."""
    q = T.BertConfig(**SMALL, vocab_size=64)
    gen = T.BartConfig(vocab_size=64, d_model=32, encoder_layers=L, decoder_layers=L, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)
    cfg = T.RagConfig(question_encoder=q.to_dict(), generator=gen.to_dict(), n_docs=3)
    kwargs = _check(T.RagModel(cfg), {"attention": 2 * L, "cross_attention": L, "mlp": 2 * L}, select="generator.")
    assert kwargs["context_input_ids"].shape == (6, 8) and kwargs["doc_scores"].shape == (2, 3)


def test_required_states_of_another_model_come_at_the_width_of_its_concatenated_layers():
    cfg = T.AutoConfig.for_model("muse_glimmer_assistant", **SMALL, num_key_value_heads=2, head_dim=16,
                                 target_layer_ids=[1, 3, 5])
    model = T.AutoModel.from_config(cfg)
    kwargs = _check(model, {"attention": L, "mlp": L})
    assert kwargs["noise_embeds"].shape == (2, 8, 32) and kwargs["context_hidden_states"].shape == (2, 8, 96)


def test_a_q_former_model_without_a_placeholder_id_gets_one_in_the_benchmark():
    cfg = T.Blip2Config(vision_config=dict(**SMALL, image_size=32, patch_size=8),
                        qformer_config=dict(**SMALL, encoder_hidden_size=32, vocab_size=64),
                        text_config=dict(model_type="opt", hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                         ffn_dim=64, word_embed_proj_dim=32, vocab_size=64),
                        num_query_tokens=4)
    coverage._placeholder_token(cfg)
    assert cfg.image_token_id == 63
    _check(T.Blip2Model(cfg), None)
