"""τ schedules: pure functions of the optimizer step (and of a site's depth).

Every schedule maps ``(step, total_steps)`` to τ, where ``step`` counts optimizer steps from 0 (the value is the τ used
*during* that step) and ``total_steps`` is the run's number of optimizer steps. Being pure functions of the step, they
resume exactly from a checkpoint. Warmup follows transformers' ``get_*_schedule_with_warmup``: during the first
``warmup_steps`` steps τ rises linearly, ``tau * step / warmup_steps`` (so step 0 uses τ = 0), then the schedule
proper starts from the peak ``tau``.

=============  ==========================================================================================
``constant``   ``tau`` after warmup
``linear``     linear from ``tau`` (end of warmup) to ``final_tau`` (at ``total_steps``)
``cosine``     half a cosine from ``tau`` (end of warmup) to ``final_tau`` (at ``total_steps``)
``step``       ``tau * gamma ** k`` after warmup, k = number of ``milestones`` (optimizer steps) ≤ step
=============  ==========================================================================================

A per-depth profile (`hf_penal.depth`) multiplies τ by a factor of the site's layer index.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .depth import DEPTH_PROFILES, depth_factor

__all__ = ["SCHEDULES", "DEPTH_PROFILES", "TauSchedule", "ScheduleFieldError", "constant", "linear", "cosine",
           "step_decay", "parse_milestones", "depth_factor", "warmup_steps_for"]

SCHEDULES = ("constant", "linear", "cosine", "step")

Milestones = str | Sequence[int] | None


def _warmup(step: int, warmup_steps: int) -> float:
    """Warmup multiplier: step / warmup_steps inside the warmup, 1 after it."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return 1.0


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    """Fraction of the post-warmup phase done at `step`, clamped to [0, 1]."""
    span = total_steps - warmup_steps
    if span <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - warmup_steps) / span))


def constant(step: int, total_steps: int, tau: float, warmup_steps: int = 0) -> float:
    """τ = ``tau`` after a linear warmup."""
    return tau * _warmup(step, warmup_steps)


def linear(step: int, total_steps: int, tau: float, final_tau: float = 0.0, warmup_steps: int = 0) -> float:
    """Linear warmup to ``tau``, then linear to ``final_tau`` at ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return tau * _warmup(step, warmup_steps)
    return final_tau + (tau - final_tau) * (1.0 - _progress(step, total_steps, warmup_steps))


def cosine(step: int, total_steps: int, tau: float, final_tau: float = 0.0, warmup_steps: int = 0) -> float:
    """Linear warmup to ``tau``, then half a cosine to ``final_tau`` at ``total_steps`` (held there after)."""
    if step < warmup_steps:
        return tau * _warmup(step, warmup_steps)
    p = _progress(step, total_steps, warmup_steps)
    return final_tau + (tau - final_tau) * 0.5 * (1.0 + math.cos(math.pi * p))


def step_decay(step: int, total_steps: int, tau: float, milestones: Milestones = (), gamma: float = 0.1,
               warmup_steps: int = 0) -> float:
    """Linear warmup to ``tau``, then ``tau * gamma ** k`` with k the number of milestones ≤ ``step``."""
    k = sum(1 for m in parse_milestones(milestones) if step >= m)
    return tau * _warmup(step, warmup_steps) * gamma ** k


def parse_milestones(milestones: Milestones) -> list[int]:
    """Milestones as a sorted list of non-negative ints, from ``"100,200"``, a list of ints, or None/""."""
    if milestones is None:
        return []
    if isinstance(milestones, str):
        parts = [p.strip() for p in milestones.split(",") if p.strip()]
    else:
        parts = list(milestones)
    out = []
    for p in parts:
        try:
            v = int(p)
        except (TypeError, ValueError):
            raise ValueError(f"milestones must be optimizer-step integers (e.g. '100,200'); got {p!r}") from None
        if isinstance(p, float) and p != v or isinstance(p, bool) or v < 0:
            raise ValueError(f"milestones must be optimizer-step integers >= 0; got {p!r}")
        out.append(v)
    return sorted(out)


def warmup_steps_for(total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    """Warmup length in optimizer steps: ``warmup_steps`` if > 0, else ``ceil(warmup_ratio * total_steps)``
    (transformers' TrainingArguments convention)."""
    return warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * total_steps)


class ScheduleFieldError(ValueError):
    """A bad `TauSchedule` field: `field`, what is `allowed`, the `value` given."""

    def __init__(self, field: str, allowed: str, value):
        self.field, self.allowed, self.value = field, allowed, value
        super().__init__(f"TauSchedule field '{field}' must be {allowed}; got {value!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite_nonneg(x) -> bool:
    return _is_number(x) and math.isfinite(x) and x >= 0


@dataclasses.dataclass(frozen=True)
class TauSchedule:
    """A τ schedule with its settings; ``schedule(step, total_steps)`` is the τ of that optimizer step.

    name: one of ``constant``, ``linear``, ``cosine``, ``step``. tau: the peak τ. final_tau: the end value of
    ``linear``/``cosine``. warmup_steps / warmup_ratio: warmup length (steps win when > 0). milestones, gamma: the
    ``step`` schedule (which needs at least one milestone). depth_profile: ``uniform``, ``increasing`` or
    ``decreasing`` (see `factor`). A bad field raises `ScheduleFieldError` (a ValueError naming it).
    """

    name: str = "constant"
    tau: float = 3e-4
    final_tau: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    milestones: tuple = ()
    gamma: float = 0.1
    depth_profile: str = "uniform"

    def __post_init__(self):
        checks = (
            ("name", self.name in SCHEDULES, f"one of {list(SCHEDULES)}"),
            ("tau", _finite_nonneg(self.tau), "a finite number >= 0"),
            ("final_tau", _finite_nonneg(self.final_tau), "a finite number >= 0"),
            ("warmup_steps", isinstance(self.warmup_steps, int) and not isinstance(self.warmup_steps, bool)
             and self.warmup_steps >= 0, "an integer >= 0"),
            ("warmup_ratio", _is_number(self.warmup_ratio) and 0.0 <= self.warmup_ratio <= 1.0, "a number in [0, 1]"),
            ("gamma", _finite_nonneg(self.gamma), "a finite number >= 0"),
            ("depth_profile", self.depth_profile in DEPTH_PROFILES, f"one of {list(DEPTH_PROFILES)}"),
        )
        for field, ok, allowed in checks:
            if not ok:
                raise ScheduleFieldError(field, allowed, getattr(self, field))
        try:
            steps = parse_milestones(self.milestones)
        except (ValueError, TypeError):
            raise ScheduleFieldError("milestones", "comma-separated optimizer steps ('100,200') or a list of ints >= 0",
                                     self.milestones) from None
        if self.name == "step" and not steps:
            raise ScheduleFieldError("milestones", "non-empty when the schedule is 'step' (e.g. '100,200')",
                                     self.milestones)
        object.__setattr__(self, "milestones", tuple(steps))

    def __call__(self, step: int, total_steps: int) -> float:
        warm = warmup_steps_for(total_steps, self.warmup_steps, self.warmup_ratio)
        if self.name == "constant":
            return constant(step, total_steps, self.tau, warm)
        if self.name == "linear":
            return linear(step, total_steps, self.tau, self.final_tau, warm)
        if self.name == "cosine":
            return cosine(step, total_steps, self.tau, self.final_tau, warm)
        return step_decay(step, total_steps, self.tau, self.milestones, self.gamma, warm)

    def factor(self, depth: int, n_layers: int) -> float:
        """Per-depth multiplier (see `depth_factor`)."""
        return depth_factor(depth, n_layers, self.depth_profile)
