"""Round-2 vision / discovery fixes, each on a tiny config against the explicit-penalty oracle (`_check` of
tests/test_probe_inputs.py): ZAYA's layers, whose residual adds happen inside a helper module (its table entry)."""
import transformers as T
from test_probe_inputs import L, _check

import hf_penal


def test_zaya_layers_get_both_branches_from_the_table_not_the_qk_projections_inner_adds():
    """ZAYA adds each branch as (z + b)·s + (x + b')·s' inside ZayaResidualScaling, a module taking both z and the
    skip; the probe alone sees only the attention's q/k projection adds (conv output sliced into q and k, each added
    to a linear projection) and the router's state. The table names self_attn and the MoE mlp (a tuple: z first)."""
    cfg = T.ZayaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, moe_intermediate_size=32, num_experts=2,
                       router_hidden_size=8, layer_types=["hybrid"] * L, max_position_embeddings=64)
    model = T.ZayaModel(cfg)
    _check(model, {"attention": L, "mlp": L})
    names = sorted(s.name for s in hf_penal.sites(model))
    assert names == sorted(f"layers.{i}.{m}" for i in range(L) for m in ("self_attn", "mlp"))
