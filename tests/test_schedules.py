"""τ schedules: values at chosen steps, computed by hand from the documented formulas."""
import math

import pytest

from hf_penal import schedules as S

TAU = 1e-3


def test_constant_is_tau_after_a_linear_warmup_that_starts_at_zero():
    assert [S.constant(s, 100, TAU, warmup_steps=4) for s in (0, 1, 2, 3, 4, 50, 99, 150)] == pytest.approx(
        [0.0, 0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    assert S.constant(0, 100, TAU) == TAU  # no warmup: step 0 already uses tau


def test_linear_goes_from_tau_at_the_end_of_warmup_to_final_tau_at_the_last_step():
    # warmup 10, then 90 steps from 1e-3 to 1e-4
    f = [S.linear(s, 100, TAU, final_tau=1e-4, warmup_steps=10) for s in (5, 10, 55, 100, 200)]
    assert f == pytest.approx([0.5e-3, 1e-3, 1e-4 + 0.9e-3 * 0.5, 1e-4, 1e-4])


def test_cosine_is_half_a_cosine_from_tau_to_final_tau():
    w, T = 4, 20
    assert S.cosine(2, T, TAU, warmup_steps=w) == pytest.approx(0.5e-3)
    assert S.cosine(4, T, TAU, warmup_steps=w) == pytest.approx(1e-3)
    assert S.cosine(12, T, TAU, warmup_steps=w) == pytest.approx(0.5e-3)  # half-way through the decay
    assert S.cosine(8, T, TAU, warmup_steps=w) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert S.cosine(20, T, TAU, final_tau=2e-4, warmup_steps=w) == pytest.approx(2e-4)
    assert S.cosine(12, T, TAU, final_tau=2e-4, warmup_steps=w) == pytest.approx(6e-4)


def test_step_multiplies_by_gamma_at_each_milestone():
    vals = [S.step_decay(s, 100, TAU, milestones="30, 60", gamma=0.5) for s in (0, 29, 30, 59, 60, 99)]
    assert vals == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert S.step_decay(1, 100, TAU, milestones=[60, 30], gamma=0.1, warmup_steps=2) == pytest.approx(0.5e-3)


def test_milestones_parse_from_string_or_list_and_reject_garbage():
    assert S.parse_milestones("200,100") == [100, 200]
    assert S.parse_milestones([3, 1]) == [1, 3]
    assert S.parse_milestones(None) == [] and S.parse_milestones("") == []
    for bad in ("10,x", [1.5], [-1]):
        with pytest.raises(ValueError, match="milestones"):
            S.parse_milestones(bad)


def test_depth_profiles_spread_tau_linearly_over_layers_like_timm_drop_path():
    n = 5
    assert [S.depth_factor(d, n, "uniform") for d in range(n)] == [1.0] * n
    assert [S.depth_factor(d, n, "increasing") for d in range(n)] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert [S.depth_factor(d, n, "decreasing") for d in range(n)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert S.depth_factor(0, 1, "increasing") == 1.0  # a single layer keeps the full tau
    with pytest.raises(ValueError, match="uniform"):
        S.depth_factor(0, 2, "quadratic")


def test_warmup_steps_win_over_ratio_which_rounds_up():
    assert S.warmup_steps_for(20, 0, 0.2) == 4
    assert S.warmup_steps_for(21, 0, 0.2) == 5  # ceil, like TrainingArguments.get_warmup_steps
    assert S.warmup_steps_for(20, 3, 0.5) == 3


def test_tau_schedule_object_dispatches_and_validates():
    sch = S.TauSchedule("cosine", tau=TAU, warmup_ratio=0.2, depth_profile="increasing")
    assert sch(12, 20) == pytest.approx(S.cosine(12, 20, TAU, warmup_steps=4))
    assert sch.factor(1, 3) == pytest.approx(0.5)
    assert S.TauSchedule("step", tau=TAU, milestones="5", gamma=0.1)(5, 10) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="constant"):
        S.TauSchedule("exponential")
