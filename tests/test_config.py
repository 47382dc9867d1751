"""PenalConfig validation and dict round trip."""
import math

import pytest
import torch

from hf_penal import PenalConfig


def test_defaults_calibrate_tau_and_the_papers_absolute_tau_is_one_keyword_away():
    cfg = PenalConfig()
    assert cfg.tau == "auto" and cfg.tau_ratio is None and cfg.tau_calibrated is None
    assert cfg.sites == "all" and cfg.storage_dtype is None and cfg.mode == "identity"
    assert PenalConfig(tau=3e-4).tau == 3e-4 and not PenalConfig(tau=3e-4).auto


def test_dict_round_trip_is_exact():
    cfg = PenalConfig(tau=1e-3, sites=["a.b", "c.d"], storage_dtype=torch.bfloat16)
    d = cfg.to_dict()
    assert d["storage_dtype"] == "bfloat16" and d["sites"] == ["a.b", "c.d"]
    assert PenalConfig.from_dict(d) == cfg
    assert cfg.torch_storage_dtype is torch.bfloat16


@pytest.mark.parametrize("field,value", [
    ("tau", -1.0), ("tau", math.nan), ("tau", math.inf), ("tau", "big"), ("tau", True),
    ("sites", ""), ("sites", "[unclosed"), ("sites", []), ("sites", 3),
    ("storage_dtype", "int8"), ("storage_dtype", torch.int64),
    ("mode", "teleport"), ("recursions", 0), ("sparsity", 1.0), ("sparsity", -0.1), ("mapping", "dense"),
    ("skip_scale", math.inf), ("learnable", "yes"),
])
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"'{field}'"):
        PenalConfig(**{field: value})


def test_unknown_keys_in_a_dict_are_named():
    with pytest.raises(ValueError, match="taus"):
        PenalConfig.from_dict({"taus": 1e-3})
    with pytest.raises(TypeError):
        PenalConfig.from_dict("tau=1e-3")


def test_any_string_that_is_not_a_keyword_is_a_regex():
    assert PenalConfig(sites="attn").sites == "attn"  # GPT-2's `h.N.attn`: plain words are regexes too
    assert PenalConfig(sites=r"layer\.[01]\.").sites == r"layer\.[01]\."
