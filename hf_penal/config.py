"""`PenalConfig`: the one validated description of what the surgery does to a model.

The dict form (`to_dict()`) is what `save_pretrained` writes into `config.json` as `config.penal`, and what
`from_pretrained(..., penal={...})` and `timm.create_model(..., penal={...})` accept.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import torch

from .modes import MAPPING_BUILDERS, MODE_CLASSES

DEFAULT_TAU = 3e-4  # the paper's reference value (an absolute τ: tau=3e-4)

#: ρ of ``tau="auto"`` when none is given — one value for every model, built from a config or loaded with weights.
#: Chosen by the rule of `benchmarks/quality.py` (best worst case, against plain at its best learning rate, over the
#: selection tasks bbc / seq2seq / lm_gpt2; ρ 0.01, 0.03 and 0.1 tied within 0.005 and the tie goes to the smaller):
#: +0.21 / +0.08 accuracy and −37 % perplexity there; held out: −37 % perplexity on a Llama decoder, +0.10 on a ViT
#: (not beyond Holm), no difference on an MNIST ResNet and a MiniLM fine-tune (BENCHMARKS.md "Quality").
DEFAULT_TAU_RATIO = 0.01

#: keywords accepted by `sites=` besides a regex or a list of site names; each selects site kinds
SITE_KEYWORDS = {
    "all": ("attention", "cross_attention", "mlp", "conv"),
    "attention": ("attention", "cross_attention"),
    "self_attention": ("attention",),
    "cross_attention": ("cross_attention",),
    "mlp": ("mlp",),
    "conv": ("conv",),
}

#: residual modes and the entangled mode's matrices: the names of `hf_penal.modes`' tables ("identity" keeps the
#: model's own add)
MODES = tuple(MODE_CLASSES)
MAPPINGS = tuple(MAPPING_BUILDERS)

#: storage_dtype names → the dtype z is saved in for backward (the one table of storage options)
STORAGE_DTYPES = {
    None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    # 8 bits per element plus one fp32 scale per tensor (see hf_penal.ops)
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
    # no copy: z = (x + z) − x in backward from tensors the block keeps anyway (hf_penal.recompute)
    "recompute": None,
}
_DTYPE_NAMES = {v: k for k, v in STORAGE_DTYPES.items() if v is not None}
STORAGE_NAMES = tuple(k for k in STORAGE_DTYPES if k)  # what users may write (besides None)

SitesSpec = str | list | tuple


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclasses.dataclass
class PenalConfig:
    """What `hf_penal.apply` does to a model.

    tau: ``"auto"`` (the default with mode "identity") or an absolute penalty strength τ ≥ 0 (the paper's formula:
        the gradient reaching each residual branch output z becomes ``grad + tau * z`` in training; its reference
        value is 3e-4). ``"auto"`` calibrates one τ_l per site on the first training backward:
        τ_l = tau_ratio · ‖∂L/∂z_l‖ / ‖z_l‖ (that backward adds no penalty), then holds it fixed. With a mode other
        than "identity" the default is 0 (no penalty) unless given.
    tau_ratio: ρ of ``tau="auto"`` (> 0). None: `DEFAULT_TAU_RATIO` (0.01, for every model), resolved by
        `hf_penal.apply`.
    tau_calibrated: the calibrated τ_l per site name (written by `save_pretrained` / `penal_config`; a model loaded
        with them does not recalibrate). None: not calibrated yet.
    sites: which residual sites get the connection: ``"all"``, ``"attention"`` (self + cross), ``"self_attention"``,
        ``"cross_attention"``, ``"mlp"``, ``"conv"``, a regex matched (``re.search``) against site names, or a list
        of site names.
    storage_dtype: dtype in which z is kept for the backward pass (``None``: the activation's own dtype;
        ``"bfloat16"`` / ``"float16"`` halve the memory the penalty costs; ``"float8_e4m3fn"`` / ``"float8_e5m2"``
        quarter it, with a per-tensor power-of-two scale so small activations do not underflow; ``"recompute"``
        saves nothing where the block keeps x and x + z anyway and recomputes z = (x + z) − x in backward, storing z
        in its own dtype elsewhere — see `hf_penal.recompute`).
    mode: residual rewiring (``"identity"``: the model's own add; see README "Residual modes").
    skip_scale: λ of the ``scaled`` and ``layernorm`` modes (y = λ·x + z).
    recursions: K of ``recursive_layernorm`` (≥ 1).
    mapping, sparsity, learnable, seed: the ``entangled`` mode's matrix M (kind, fraction of permuted entries,
        whether M is trained, the seed it is built from).
    """

    tau: float | str | None = None  # None: "auto" with mode "identity", else 0 (see __post_init__)
    tau_ratio: float | None = None
    tau_calibrated: dict | None = None
    sites: SitesSpec = "all"
    storage_dtype: str | None = None
    mode: str = "identity"
    skip_scale: float = 1.0
    recursions: int = 1
    mapping: str = "orthogonal"
    sparsity: float = 0.1
    learnable: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.tau is None:  # a residual mode alone is not a penal connection: penal only when tau is asked for
            self.tau = "auto" if self.mode == "identity" else 0.0
        self.tau = check_tau(self.tau, "PenalConfig field 'tau'")
        if self.tau_ratio is not None:
            self.tau_ratio = _check_ratio(self.tau_ratio, "PenalConfig field 'tau_ratio'")
        if self.tau_calibrated is not None:
            if self.tau != "auto":
                raise ValueError("PenalConfig field 'tau_calibrated' is only meaningful with tau='auto'; "
                                 f"got tau={self.tau!r}")
            if not (isinstance(self.tau_calibrated, dict) and all(
                    isinstance(k, str) and _is_number(v) and math.isfinite(v) and v >= 0
                    for k, v in self.tau_calibrated.items())):
                raise ValueError("PenalConfig field 'tau_calibrated' must be a dict {site name: tau >= 0} or None; "
                                 f"got {self.tau_calibrated!r}")
            self.tau_calibrated = {k: float(v) for k, v in self.tau_calibrated.items()}
        self.sites = _validate_sites(self.sites)
        if isinstance(self.storage_dtype, torch.dtype):
            if self.storage_dtype not in _DTYPE_NAMES:
                raise ValueError(f"PenalConfig field 'storage_dtype' must be one of {sorted(_DTYPE_NAMES.values())} "
                                 f"or None; got {self.storage_dtype!r}")
            self.storage_dtype = _DTYPE_NAMES[self.storage_dtype]
        if isinstance(self.storage_dtype, str) and self.storage_dtype.startswith("torch."):
            self.storage_dtype = self.storage_dtype[len("torch."):]
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"PenalConfig field 'storage_dtype' must be one of "
                             f"{list(STORAGE_NAMES)} or None; got {self.storage_dtype!r}")
        if self.mode not in MODES:
            raise ValueError(f"PenalConfig field 'mode' must be one of {list(MODES)}; got {self.mode!r}")
        if not _is_number(self.skip_scale) or not math.isfinite(self.skip_scale):
            raise ValueError(f"PenalConfig field 'skip_scale' (λ) must be a finite number; got {self.skip_scale!r}")
        self.skip_scale = float(self.skip_scale)
        if not isinstance(self.recursions, int) or isinstance(self.recursions, bool) or self.recursions < 1:
            raise ValueError(f"PenalConfig field 'recursions' (K) must be an integer >= 1; got {self.recursions!r}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"PenalConfig field 'mapping' must be one of {list(MAPPINGS)}; got {self.mapping!r}")
        if not _is_number(self.sparsity) or not (0.0 <= self.sparsity < 1.0):
            raise ValueError(f"PenalConfig field 'sparsity' must be a number in [0, 1); got {self.sparsity!r}")
        self.sparsity = float(self.sparsity)
        if not isinstance(self.learnable, bool):
            raise ValueError(f"PenalConfig field 'learnable' must be True or False; got {self.learnable!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"PenalConfig field 'seed' must be an integer; got {self.seed!r}")

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def auto(self) -> bool:
        """τ is calibrated per site (``tau="auto"``)."""
        return self.tau == "auto"

    @property
    def torch_storage_dtype(self) -> torch.dtype | None:
        return STORAGE_DTYPES[self.storage_dtype]

    def to_dict(self) -> dict:
        """JSON-ready dict (the `config.penal` entry of config.json)."""
        d = dataclasses.asdict(self)
        if isinstance(d["sites"], tuple):
            d["sites"] = list(d["sites"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PenalConfig:
        if not isinstance(d, dict):
            raise TypeError(f"penal settings must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown penal setting(s) {unknown}; allowed fields: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> PenalConfig:
        return PenalConfig.from_dict({**self.to_dict(), **changes})


def check_tau(tau: Any, label: str) -> float | str:
    """``"auto"`` or a finite float >= 0 (also from a string such as ``"3e-4"``, as a command line gives it)."""
    if isinstance(tau, str):
        if tau.strip().lower() == "auto":
            return "auto"
        try:
            tau = float(tau)
        except ValueError:
            pass
    if not _is_number(tau) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"{label} must be 'auto' or a finite number >= 0 (e.g. 3e-4, the paper's absolute tau); "
                         f"got {tau!r}")
    return float(tau)


def _check_ratio(ratio: Any, label: str) -> float:
    if not _is_number(ratio) or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"{label} (rho of tau='auto') must be a finite number > 0 (e.g. 0.03); got {ratio!r}")
    return float(ratio)


def _validate_sites(sites: Any) -> SitesSpec:
    if isinstance(sites, str):
        if sites in SITE_KEYWORDS:
            return sites
        if not sites:
            raise ValueError(f"PenalConfig field 'sites' must be one of {list(SITE_KEYWORDS)}, a regex searched in "
                             f"site names or a list of site names; got an empty string")
        try:  # any other string is a regex searched in site names ("attn" selects GPT-2's `h.N.attn`)
            re.compile(sites)
        except re.error as e:
            raise ValueError(f"PenalConfig field 'sites': {sites!r} is not a valid regex ({e})") from None
        return sites
    if isinstance(sites, (list, tuple)) and sites and all(isinstance(s, str) for s in sites):
        return list(sites)
    raise ValueError(f"PenalConfig field 'sites' must be one of {list(SITE_KEYWORDS)}, a regex over site names or a "
                     f"non-empty list of site names; got {sites!r}")


def resolve_config(config: PenalConfig | dict | bool | None = None, **fields) -> PenalConfig:
    """Normalise everything users may pass (`True`, a dict, a PenalConfig, field keywords) into one PenalConfig.
    Keyword fields override the config's."""
    if config is None or config is True:
        base = {}
    elif isinstance(config, PenalConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = dict(config)
    else:
        raise TypeError(f"penal must be True, a dict or a PenalConfig; got {type(config).__name__}")
    if {"tau", "tau_ratio"} & set(fields) and "tau_calibrated" not in fields:
        base.pop("tau_calibrated", None)  # a new strength: the old calibration no longer applies
    base.update({k: v for k, v in fields.items()})
    return PenalConfig.from_dict(base)


def effective_config(given: PenalConfig | dict | bool | None = None, fields: dict | None = None, *,
                     saved: PenalConfig | dict | None = None) -> PenalConfig:
    """The settings a model gets, decided in this one place (the integrations, `apply` and so the trainer call it).

    saved: the settings the model already carries (a checkpoint's ``config.penal``, or the active config), used
    when the caller passes no config of its own (`given` None or True); given: the caller's PenalConfig / dict;
    fields: the caller's field keywords, which override either (a new τ or ρ drops the old calibration). A
    ``tau="auto"`` left without ρ gets `DEFAULT_TAU_RATIO`, whether the model was built from a config or loaded
    with weights. Raises ValueError / TypeError naming the field on bad input."""
    base = saved if saved is not None and (given is None or given is True) else given
    cfg = resolve_config(base, **(fields or {}))
    if cfg.auto and cfg.tau_ratio is None:
        cfg = cfg.replace(tau_ratio=DEFAULT_TAU_RATIO)
    return cfg
