"""Last-resort probe inputs for forwards that run on one sample only (`hf_penal.discovery.inputs.batch_one`: every
candidate again at batch 1, after all others) and for configs that name the frame size the forward needs
(``max_img_size``, with ``num_frames`` frames); and the coverage benchmark's count of sites whose output gets no
gradient from the loss (a codec's encoder behind its argmin quantizer), recorded for inexact models. Each model is
built from a tiny config; the probe-input tests penalize it with no example inputs given and check it against the
explicit-penalty oracle (`test_probe_inputs._check`)."""
import sys
from pathlib import Path

import torch
import transformers as T
from test_probe_inputs import _check

from hf_penal.discovery.inputs import BATCH, probe_inputs
from hf_penal.integrations.transformers_inputs import example_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

L = 2


def _tvp():
    backbone = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                              layer_type="basic", out_features=["stage4"])
    cfg = T.TvpConfig(backbone_config=backbone.to_dict(), hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                      intermediate_size=64, max_img_size=64, visual_prompt_size=8, num_frames=2, vocab_size=64)
    return T.TvpModel(cfg)


def test_a_model_that_runs_on_one_sample_gets_frames_at_its_max_img_size_at_batch_one():
    kwargs = _check(_tvp(), None)
    assert kwargs["pixel_values"].shape == (1, 2, 3, 64, 64) and kwargs["input_ids"].shape == (1, 8)


def test_batch_one_candidates_come_after_every_other_candidate():
    model = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=64))
    built = example_inputs(model)
    cands = probe_inputs(model)
    batched = [kw for _, kw in built if any(v.shape[0] == BATCH for v in kw.values() if torch.is_tensor(v))]
    assert len(cands) == len(built) + len(batched) > len(built)
    same = (lambda x, y: torch.equal(x, y) if torch.is_tensor(x) else x == y)  # noqa: E731
    assert all(a.keys() == b.keys() and all(same(a[k], b[k]) for k in a) for (_, a), (_, b) in zip(cands, built))
    for full, (args, one) in zip(batched, cands[len(built):]):
        assert not args and full.keys() == one.keys()
        for k, v in full.items():
            assert same(one[k], v[:1] if torch.is_tensor(v) and v.shape[0] == BATCH else v)

def test_an_inexact_codec_records_its_encoder_sites_behind_the_quantizer_as_getting_no_gradient():
    model = coverage.build_transformers("encodec", "small")
    rec = coverage.check(model, probe_inputs(model))
    enc = [s for s in __import__("hf_penal").sites(model) if s.name.startswith("encoder.")]
    assert rec["status"] == "inexact" and enc and rec["sites_no_grad"] == len(enc) < rec["sites"]
