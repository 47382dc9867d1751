"""hf_penal: penal connections for Hugging Face Transformers and timm.

A penal connection leaves a residual block's forward pass x + z unchanged and, in training, adds τ·z to the gradient
that reaches the branch output z: the gradient of an extra loss (τ/2)·Σ‖z‖² over every residual branch
(Chen et al., ICLR 2023). Importing this package adds the ``penal=`` keyword to transformers' ``from_pretrained`` /
``from_config`` and to ``timm.create_model``.
"""
from .calibration import calibrate
from .config import PenalConfig
from .discovery import NoResidualSiteError, ProbeFailedError, ResidualSite
from .ops import PenalConnection, penal
from .surgery import apply, penal_config, remove, set_loss_scale, set_tau, set_tau_factor, sites

__version__ = "0.1.0"

__all__ = [
    "PenalConfig", "PenalConnection", "penal", "ResidualSite", "NoResidualSiteError", "ProbeFailedError",
    "apply", "remove", "sites", "set_tau", "set_tau_factor", "set_loss_scale", "penal_config", "calibrate",
    "PenalTrainingArguments", "PenalTrainer", "PenalCallback", "markov_efficiency", "track_efficiency",
]

_LAZY = {"PenalTrainingArguments": "trainer", "PenalTrainer": "trainer", "PenalCallback": "trainer",
         "markov_efficiency": "diagnostics", "track_efficiency": "diagnostics"}


def __getattr__(name):  # the trainer pulls in transformers.Trainer/accelerate: load it on first use
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_penal' has no attribute {name!r}")


from .hooks import guard_hooks_under_compile as _guard_hooks_under_compile  # noqa: E402
from .integrations import install_all as _install_all  # noqa: E402

_install_all()
_guard_hooks_under_compile()  # a compiled graph must not be reused across different penal hooks
