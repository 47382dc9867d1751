"""Tiny transformers models (all dropouts 0) saved to a temp dir, with inputs, loss and the oracle's z modules."""
from __future__ import annotations

import torch
import transformers as T

L = 2
B, S = 2, 8

# arch -> (oracle branch-end modules [(regex, output index)], expected kinds)
SPEC = {
    "bert": ([(r"bert\.encoder\.layer\.\d+\.attention\.output\.dropout", None),
              (r"bert\.encoder\.layer\.\d+\.output\.dropout", None)], {"attention": L, "mlp": L}),
    "roberta": ([(r"roberta\.encoder\.layer\.\d+\.attention\.output\.dropout", None),
                 (r"roberta\.encoder\.layer\.\d+\.output\.dropout", None)], {"attention": L, "mlp": L}),
    "gpt2": ([(r"transformer\.h\.\d+\.attn", 0), (r"transformer\.h\.\d+\.mlp", None)], {"attention": L, "mlp": L}),
    "gpt2_cross": ([(r"transformer\.h\.\d+\.(attn|crossattention)", 0), (r"transformer\.h\.\d+\.mlp", None)],
                   {"attention": L, "cross_attention": L, "mlp": L}),
    "llama": ([(r"model\.layers\.\d+\.self_attn", 0), (r"model\.layers\.\d+\.mlp", None)], {"attention": L, "mlp": L}),
    "mistral": ([(r"model\.layers\.\d+\.self_attn", 0), (r"model\.layers\.\d+\.mlp", None)],
                {"attention": L, "mlp": L}),
    "qwen2": ([(r"model\.layers\.\d+\.self_attn", 0), (r"model\.layers\.\d+\.mlp", None)], {"attention": L, "mlp": L}),
    "t5": ([(r"(encoder|decoder)\.block\.\d+\.layer\.\d+\.dropout", None)],
           {"attention": 2 * L, "cross_attention": L, "mlp": 2 * L}),
    "mixtral": ([(r"model\.layers\.\d+\.self_attn", 0), (r"model\.layers\.\d+\.mlp", None)],
                {"attention": L, "mlp": L}),
    "roberta_prelayernorm": ([(r"roberta_prelayernorm\.encoder\.layer\.\d+\.attention\.output\.dropout", None),
                              (r"roberta_prelayernorm\.encoder\.layer\.\d+\.output\.dropout", None)],
                             {"attention": L, "mlp": L}),
    "vit": ([(r"vit\.layers\.\d+\.attention", 0), (r"vit\.layers\.\d+\.mlp", None)], {"attention": L, "mlp": L}),
}


def build(arch: str):
    """(config, Auto class, inputs dict with labels)."""
    g = torch.Generator().manual_seed(0)
    common = dict(vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch in ("bert", "roberta", "roberta_prelayernorm"):
        C = {"bert": T.BertConfig, "roberta": T.RobertaConfig,
             "roberta_prelayernorm": T.RobertaPreLayerNormConfig}[arch]
        cfg = C(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64, num_labels=3,
                initializer_range=0.12, **common)
        inputs = dict(input_ids=torch.randint(3, 100, (B, S), generator=g),
                      labels=torch.randint(0, 3, (B,), generator=g))
        return cfg, T.AutoModelForSequenceClassification, inputs
    if arch in ("gpt2", "gpt2_cross"):
        cfg = T.GPT2Config(n_embd=32, n_layer=L, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, initializer_range=0.15, add_cross_attention=arch == "gpt2_cross", **common)
        ids = torch.randint(3, 100, (B, S), generator=g)
        inputs = dict(input_ids=ids, labels=ids)
        if arch == "gpt2_cross":
            inputs["encoder_hidden_states"] = torch.randn(B, 5, 32, generator=g)
        return cfg, T.AutoModelForCausalLM, inputs
    if arch in ("llama", "mistral", "qwen2", "mixtral"):
        C = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config,
             "mixtral": T.MixtralConfig}[arch]
        moe = dict(num_local_experts=2, num_experts_per_tok=1) if arch == "mixtral" else {}
        cfg = C(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64, initializer_range=0.12, tie_word_embeddings=False, **moe, **common)
        ids = torch.randint(3, 100, (B, S), generator=g)
        return cfg, T.AutoModelForCausalLM, dict(input_ids=ids, labels=ids)
    if arch == "t5":
        cfg = T.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=L, num_decoder_layers=L, num_heads=4, dropout_rate=0.0,
                         decoder_start_token_id=0, initializer_factor=0.6, **dict(common, bos_token_id=None))
        inputs = dict(input_ids=torch.randint(3, 100, (B, S), generator=g),
                      labels=torch.randint(3, 100, (B, 6), generator=g))
        return cfg, T.AutoModelForSeq2SeqLM, inputs
    if arch == "vit":
        cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2, intermediate_size=64,
                          image_size=16, patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          initializer_range=0.15, num_labels=3)
        inputs = dict(pixel_values=torch.randn(B, 3, 16, 16, generator=g),
                      labels=torch.randint(0, 3, (B,), generator=g))
        return cfg, T.AutoModelForImageClassification, inputs
    raise KeyError(arch)


def saved(arch: str, tmp_path) -> tuple:
    """Save a random tiny model of `arch` to tmp_path/arch; return (dir, Auto class, inputs)."""
    cfg, auto, inputs = build(arch)
    torch.manual_seed(0)
    d = str(tmp_path / arch)
    auto.from_config(cfg).save_pretrained(d)
    return d, auto, inputs


def float_outputs(out) -> list:
    """The floating-point tensors of a model's output (a tensor, a ModelOutput / dict, or nested tuples), in order."""
    if torch.is_tensor(out):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in float_outputs(o)]
    return []


def perturbed(model):
    """`model` with every weight moved a little (in place): zero-initialised branch ends and layer scales would hide
    the penalty."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def hf_loss(inputs):
    return lambda model: model(**inputs).loss


def two_rank_bert_case(num_processes: int, process_index: int, tau: float | None = None):
    """The 2-rank workers' shared case: a random tiny BERT (`vanilla`), a global batch of 8, this rank's half of it,
    and — with `tau` — a penalized copy (tau) and the single-process oracle's gradients (vanilla model, full batch,
    explicit penalty). Returns (vanilla, model or None, batch, local, oracle grads or None)."""
    import copy

    from _oracle import grads

    import hf_penal
    cfg, auto, _ = build("bert")
    torch.manual_seed(0)
    vanilla = auto.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(3, 100, (8, 8), generator=g), labels=torch.randint(0, 3, (8,), generator=g))
    half = 8 // num_processes
    local = {k: v[process_index * half:(process_index + 1) * half] for k, v in batch.items()}
    if tau is None:
        return vanilla, None, batch, local, None
    model = hf_penal.apply(copy.deepcopy(vanilla), tau=tau)
    zspec = [(r"bert\.encoder\.layer\.\d+\.(attention\.)?output\.dropout", None)]
    g_oracle, _, _ = grads(vanilla, lambda m: m(**batch).loss, zspec, tau)
    return vanilla, model, batch, local, g_oracle
