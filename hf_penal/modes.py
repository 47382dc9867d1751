"""Residual modes: rewire the residual add y = x + z itself (design §1 "Other residual rewirings").

With the site's skip input x (what the block adds: the identity or the shortcut's output) and branch output
z = F(x), each mode computes y:

* ``identity``             y = x + z                                    (the model's own add; penal only)
* ``scaled``               y = λ·x + z                                  (xSkip, Liu et al.)
* ``layernorm``            y = LN(λ·x + z)                              (xSkip+LN; a fresh LN, γ=1, β=0)
* ``recursive_layernorm``  y_1 = LN_1(λ·x + z), y_k = LN_k(λ·x + y_{k-1}), y = y_K      (rSkip+LN, K steps)
* ``entangled``            y = M·x + z, M acting on the feature / channel dimension     (Lechner et al.)

LN and M act on the feature dimension: the hidden size for token sites, channels (per pixel, a 1×1 mixing) for
convolutional sites.

Mechanism (no forward is replaced; the hooks live in `hf_penal.hooks`): the model still computes ``x + z'`` itself.
A capture hook records x where the architecture table says it lives (`hf_penal.architectures`: the input of the
branch's pre-norm, BERT's ``input_tensor``, timm ResNet's ``downsample`` output, ...), and the site hook hands z to
the same rendezvous. Whichever of the two arrives second gets rewritten: usually z, into z' = y − x
(`branch_delta`); where the shortcut is computed after the branch (timm ResNet ``downsample``, ConvNeXt
``shortcut``) the shortcut's output, into x' = y − z (`skip_delta`). The modules here are pure layers.

Each mode is a small module whose ``forward(x, z)`` is the formula above; `MODE_CLASSES` maps config names to classes;
`create_mode` builds one from a `PenalConfig`. Fixed entangled matrices are non-persistent buffers rebuilt from the
config's seed; LayerNorm parameters and a learnable M are ordinary parameters (saved in the state_dict).
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAPPING_BUILDERS",
    "MODE_CLASSES",
    "ChannelLayerNorm",
    "EntangledSkip",
    "LayerNormSkip",
    "RecursiveLayerNormSkip",
    "ResidualMode",
    "ScaledSkip",
    "create_mode",
    "orthogonal_mapping",
    "sparse_mapping",
    "structural_mapping",
]


# ------------------------------------------------------------------------------------------------------------ modules
class ResidualMode(nn.Module):
    """Base class: ``forward(x, z) -> y``, and the two rewrites the hooks use to make the model's own add give y.

    channel_dim: the feature dimension LN / M act on (-1 for tokens, 1 for NCHW feature maps).
    """

    def __init__(self, channel_dim: int = -1):
        super().__init__()
        self.channel_dim = channel_dim

    @classmethod
    def from_config(cls, cfg, num_features: int, channel_dim: int = -1, site: str = "") -> ResidualMode:
        """The module a PenalConfig `cfg` describes at `site` (`num_features` wide); each mode reads its fields."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def branch_delta(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """z' with x + z' = y (what the branch must output so that the model's own add gives y)."""
        return self(x, z) - x

    def skip_delta(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x' with x' + z = y (what the shortcut must output)."""
        return self(x, z) - z


class ScaledSkip(ResidualMode):
    """xSkip: y = λ·x + z. ``skip_scale`` is λ (1.0 is the plain skip)."""

    def __init__(self, skip_scale: float = 1.0, channel_dim: int = -1):
        super().__init__(channel_dim)
        self.skip_scale = float(skip_scale)

    @classmethod
    def from_config(cls, cfg, num_features, channel_dim=-1, site=""):
        return cls(cfg.skip_scale, channel_dim)

    def forward(self, x, z):
        return torch.add(z, x, alpha=self.skip_scale)

    def branch_delta(self, x, z):
        return torch.add(z, x, alpha=self.skip_scale - 1.0)  # exact where λ = 1

    def skip_delta(self, x, z):
        return x * self.skip_scale

    def extra_repr(self) -> str:
        return f"skip_scale={self.skip_scale:g}"


class ChannelLayerNorm(nn.Module):
    """LayerNorm over one dimension (the last for tokens, channels for NCHW maps), affine γ=1, β=0 at init."""

    def __init__(self, num_features: int, eps: float = 1e-5, channel_dim: int = -1):
        super().__init__()
        self.num_features, self.eps, self.channel_dim = int(num_features), float(eps), channel_dim
        self.weight = nn.Parameter(torch.empty(self.num_features))
        self.bias = nn.Parameter(torch.empty(self.num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.channel_dim in (-1, v.dim() - 1):
            return F.layer_norm(v, (self.num_features,), self.weight, self.bias, self.eps)
        v = v.movedim(self.channel_dim, -1)
        v = F.layer_norm(v, (self.num_features,), self.weight, self.bias, self.eps)
        return v.movedim(-1, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}" + (f", channel_dim={self.channel_dim}" if self.channel_dim != -1
                                                          else "")


class LayerNormSkip(ResidualMode):
    """xSkip+LN: y = LN(λ·x + z), with a fresh LayerNorm (γ=1, β=0) over the feature dimension."""

    def __init__(self, num_features: int, skip_scale: float = 1.0, eps: float = 1e-5, channel_dim: int = -1):
        super().__init__(channel_dim)
        self.skip_scale = float(skip_scale)
        self.norm = ChannelLayerNorm(num_features, eps, channel_dim)

    @classmethod
    def from_config(cls, cfg, num_features, channel_dim=-1, site=""):
        return cls(num_features, cfg.skip_scale, channel_dim=channel_dim)

    def forward(self, x, z):
        return self.norm(torch.add(z, x, alpha=self.skip_scale))

    def extra_repr(self) -> str:
        return f"skip_scale={self.skip_scale:g}"


class RecursiveLayerNormSkip(ResidualMode):
    """rSkip+LN: y_1 = LN_1(λ·x + z), y_k = LN_k(λ·x + y_{k-1}) for k = 2..K; y = y_K. One LayerNorm per step.
    ``recursions`` is the paper's K; K = 1 is `LayerNormSkip`."""

    def __init__(self, num_features: int, recursions: int = 2, skip_scale: float = 1.0, eps: float = 1e-5,
                 channel_dim: int = -1):
        super().__init__(channel_dim)
        if int(recursions) < 1:
            raise ValueError(f"PenalConfig field 'recursions' (K) must be an integer >= 1; got {recursions!r}")
        self.recursions, self.skip_scale = int(recursions), float(skip_scale)
        self.norms = nn.ModuleList(ChannelLayerNorm(num_features, eps, channel_dim) for _ in range(self.recursions))

    @classmethod
    def from_config(cls, cfg, num_features, channel_dim=-1, site=""):
        return cls(num_features, cfg.recursions, cfg.skip_scale, channel_dim=channel_dim)

    def forward(self, x, z):
        y = z
        for norm in self.norms:
            y = norm(torch.add(y, x, alpha=self.skip_scale))
        return y

    def extra_repr(self) -> str:
        return f"recursions={self.recursions}, skip_scale={self.skip_scale:g}"


class EntangledSkip(ResidualMode):
    """Entangled residual mapping: y = M·x + z, M (n × n) mixing the feature / channel dimension.

    M: the matrix (see `orthogonal_mapping`, `sparse_mapping`, `structural_mapping`). Kept as a non-persistent buffer
    (rebuilt from the config's seed) unless ``learnable``, then a parameter initialised to M and saved.
    """

    def __init__(self, M: torch.Tensor, learnable: bool = False, mapping: str = "", channel_dim: int = -1):
        super().__init__(channel_dim)
        if M.dim() != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(f"entangled mapping M must be a square matrix; got shape {tuple(M.shape)}")
        self.mapping, self.learnable = mapping, bool(learnable)
        if self.learnable:
            self.M = nn.Parameter(M.clone())
        else:
            self.register_buffer("M", M.clone(), persistent=False)

    @classmethod
    def from_config(cls, cfg, num_features, channel_dim=-1, site=""):
        """M from ``cfg.mapping`` (`MAPPING_BUILDERS`), reproducible from ``cfg.seed`` and the site's name."""
        g = torch.Generator().manual_seed(site_seed(cfg.seed, site))
        return cls(MAPPING_BUILDERS[cfg.mapping](num_features, cfg, g), cfg.learnable, cfg.mapping, channel_dim)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """M·x along the feature dimension."""
        M = self.M.to(x.dtype)
        if self.channel_dim in (-1, x.dim() - 1):
            return F.linear(x, M)
        if x.dim() == 4 and self.channel_dim == 1:
            return F.conv2d(x, M[:, :, None, None])  # 1×1 channel mixing
        return F.linear(x.movedim(self.channel_dim, -1), M).movedim(-1, self.channel_dim)

    def forward(self, x, z):
        return self.mix(x) + z

    def branch_delta(self, x, z):
        return self.mix(x) - x + z

    def skip_delta(self, x, z):
        return self.mix(x)

    def extra_repr(self) -> str:
        return f"{self.M.shape[0]}, mapping={self.mapping!r}, learnable={self.learnable}"


#: config name → module class ("identity" keeps the model's own add and builds no module)
MODE_CLASSES: dict[str, type | None] = {
    "identity": None,
    "scaled": ScaledSkip,
    "layernorm": LayerNormSkip,
    "recursive_layernorm": RecursiveLayerNormSkip,
    "entangled": EntangledSkip,
}


# ------------------------------------------------------------------------------------------------------------ matrices
def orthogonal_mapping(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal n × n matrix (QR of a Gaussian matrix, signs fixed by diag(R)): all eigenvalues on
    the unit circle, every singular value 1, so ‖M·x‖ = ‖x‖ like the identity."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)).float()


def sparse_mapping(n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Identity with a fraction ``sparsity`` of its rows permuted among themselves: round(sparsity·n) randomly
    chosen features are each sent to another chosen feature (a random cyclic shift of the chosen set, so every
    chosen row moves), the rest stay put. The result is a permutation matrix: n non-zeros, orthogonal, condition
    number 1. sparsity = 0 is the identity."""
    k = round(sparsity * n)
    m = torch.eye(n)
    if k < 2:
        return m
    chosen = torch.randperm(n, generator=generator)[:k]
    target = torch.roll(chosen, 1)
    perm = torch.arange(n)
    perm[chosen] = target
    return m[perm]


def structural_mapping(n: int, rho: float = 0.5, block_size: int = 4) -> torch.Tensor:
    """A block-diagonal correlation matrix with unit diagonal: blocks of ``block_size`` neighbouring features with
    M_ij = ρ^|i−j| inside a block (Kac–Murdock–Szegő), 0 across blocks. Symmetric positive definite; eigenvalues in
    [(1−ρ)/(1+ρ), (1+ρ)/(1−ρ)] (cond ≤ 9 at ρ = 0.5)."""
    idx = torch.arange(n)
    same_block = (idx[:, None] // block_size) == (idx[None, :] // block_size)
    dist = (idx[:, None] - idx[None, :]).abs().to(torch.float64)
    return torch.where(same_block, rho ** dist, torch.zeros((), dtype=torch.float64)).float()


def site_seed(seed: int, site: str) -> int:
    """Seed of one site's matrix: reproducible from the config's seed and the site's name."""
    return (int(seed) * 1_000_003 + zlib.crc32(site.encode())) % (2 ** 63 - 1)


#: config name → builder of the entangled mode's matrix M: (n, PenalConfig, generator) → n × n matrix
MAPPING_BUILDERS = {
    "orthogonal": lambda n, cfg, g: orthogonal_mapping(n, g),
    "sparse": lambda n, cfg, g: sparse_mapping(n, cfg.sparsity, g),
    "structural": lambda n, cfg, g: structural_mapping(n),
}


def create_mode(cfg, num_features: int, channel_dim: int = -1, site: str = "") -> ResidualMode | None:
    """The mode module `cfg` (a PenalConfig) describes, for a site with `num_features` features (None for
    ``"identity"``), through `MODE_CLASSES`."""
    if cfg.mode not in MODE_CLASSES:
        raise ValueError(f"PenalConfig field 'mode' must be one of {list(MODE_CLASSES)}; got {cfg.mode!r}")
    cls = MODE_CLASSES[cfg.mode]
    return None if cls is None else cls.from_config(cfg, num_features, channel_dim=channel_dim, site=site)


def mode_settings(cfg) -> tuple:
    """The config fields that determine the mode modules (equal settings → the modules may be kept)."""
    return (cfg.mode, cfg.skip_scale, cfg.recursions, cfg.mapping, cfg.sparsity, cfg.learnable, cfg.seed)

