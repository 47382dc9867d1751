"""τ across depth: the depth profiles and the factor they give a site.

A profile multiplies a site's τ by a factor of its layer index ``depth`` (0 = nearest the input) out of ``n_layers``,
the way timm spreads its drop-path rate over blocks (``torch.linspace(0, rate, depth)``): ``uniform`` 1 everywhere,
``increasing`` ``depth / (n_layers - 1)`` (0 at the first layer, 1 at the last), ``decreasing`` the reverse.

Below both the surgery (which writes the factor into each connection, once per profile) and the training schedules.
"""
from __future__ import annotations

DEPTH_PROFILES = ("uniform", "increasing", "decreasing")


def check_depth_profile(profile: str) -> str:
    if profile not in DEPTH_PROFILES:
        raise ValueError(f"depth profile must be one of {list(DEPTH_PROFILES)}; got {profile!r}")
    return profile


def depth_factor(depth: int, n_layers: int, profile: str = "uniform") -> float:
    """Multiplier of τ for the layer at index ``depth`` (0-based, model order) out of ``n_layers``."""
    check_depth_profile(profile)
    if profile == "uniform" or n_layers <= 1:
        return 1.0
    frac = min(1.0, max(0.0, depth / (n_layers - 1)))
    return frac if profile == "increasing" else 1.0 - frac
