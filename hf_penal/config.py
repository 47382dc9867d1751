"""`PenalConfig`: the one validated description of what the surgery does to a model.

The dict form (`to_dict()`) is what `save_pretrained` writes into `config.json` as `config.penal`, and what
`from_pretrained(..., penal={...})` and `timm.create_model(..., penal={...})` accept.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Union

import torch

DEFAULT_TAU = 3e-4  # the paper's reference value

#: keywords accepted by `sites=` besides a regex or a list of site names; each selects site kinds
SITE_KEYWORDS = {
    "all": ("attention", "cross_attention", "mlp", "conv"),
    "attention": ("attention", "cross_attention"),
    "self_attention": ("attention",),
    "cross_attention": ("cross_attention",),
    "mlp": ("mlp",),
    "conv": ("conv",),
}

#: residual modes (see `hf_penal.modes`); "identity" keeps the model's own add
MODES = ("identity", "scaled", "layernorm", "recursive_layernorm", "entangled")
MAPPINGS = ("orthogonal", "sparse", "structural")

_STORAGE_DTYPES = {
    None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {v: k for k, v in _STORAGE_DTYPES.items() if k}

SitesSpec = Union[str, list, tuple]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclasses.dataclass
class PenalConfig:
    """What `hf_penal.apply` does to a model.

    tau: penalty strength τ ≥ 0 (default 3e-4, the paper's, with mode "identity"; 0 — no penalty — with any other
        mode unless given). The gradient reaching each residual branch output z becomes ``grad + tau * z`` in
        training.
    sites: which residual sites get the connection: ``"all"``, ``"attention"`` (self + cross), ``"self_attention"``,
        ``"cross_attention"``, ``"mlp"``, ``"conv"``, a regex matched (``re.search``) against site names, or a list
        of site names.
    storage_dtype: dtype in which z is kept for the backward pass (``None``: the activation's own dtype;
        ``"bfloat16"`` / ``"float16"`` halve the memory the penalty costs).
    mode: residual rewiring (``"identity"``: the model's own add; see README "Residual modes").
    skip_scale: λ of the ``scaled`` and ``layernorm`` modes (y = λ·x + z).
    recursions: K of ``recursive_layernorm`` (≥ 1).
    mapping, sparsity, learnable, seed: the ``entangled`` mode's matrix M (kind, fraction of permuted entries,
        whether M is trained, the seed it is built from).
    """

    tau: float | None = None  # None: DEFAULT_TAU with mode "identity", else 0 (see __post_init__)
    sites: SitesSpec = "all"
    storage_dtype: Union[str, None] = None
    mode: str = "identity"
    skip_scale: float = 1.0
    recursions: int = 1
    mapping: str = "orthogonal"
    sparsity: float = 0.1
    learnable: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.tau is None:  # a residual mode alone is not a penal connection: penal only when tau is asked for
            self.tau = DEFAULT_TAU if self.mode == "identity" else 0.0
        if not _is_number(self.tau) or not math.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"PenalConfig field 'tau' must be a finite number >= 0 (e.g. 3e-4); got {self.tau!r}")
        self.tau = float(self.tau)
        self.sites = _validate_sites(self.sites)
        if isinstance(self.storage_dtype, torch.dtype):
            if self.storage_dtype not in _DTYPE_NAMES:
                raise ValueError(f"PenalConfig field 'storage_dtype' must be one of {sorted(_DTYPE_NAMES.values())} "
                                 f"or None; got {self.storage_dtype!r}")
            self.storage_dtype = _DTYPE_NAMES[self.storage_dtype]
        if isinstance(self.storage_dtype, str) and self.storage_dtype.startswith("torch."):
            self.storage_dtype = self.storage_dtype[len("torch."):]
        if self.storage_dtype not in _STORAGE_DTYPES:
            raise ValueError(f"PenalConfig field 'storage_dtype' must be one of "
                             f"{[k for k in _STORAGE_DTYPES if k]} or None; got {self.storage_dtype!r}")
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
    def torch_storage_dtype(self) -> Union[torch.dtype, None]:
        return _STORAGE_DTYPES[self.storage_dtype]

    def to_dict(self) -> dict:
        """JSON-ready dict (the `config.penal` entry of config.json)."""
        d = dataclasses.asdict(self)
        if isinstance(d["sites"], tuple):
            d["sites"] = list(d["sites"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PenalConfig":
        if not isinstance(d, dict):
            raise TypeError(f"penal settings must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown penal setting(s) {unknown}; allowed fields: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "PenalConfig":
        return PenalConfig.from_dict({**self.to_dict(), **changes})


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


def resolve_config(config: Union["PenalConfig", dict, bool, None] = None, **fields) -> PenalConfig:
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
    base.update({k: v for k, v in fields.items()})
    return PenalConfig.from_dict(base)
