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

Mechanism (no forward is replaced): the model still computes ``x + z'`` itself. A capture hook records x where the
architecture table says it lives (`hf_penal.architectures`: the input of the branch's pre-norm, BERT's
``input_tensor``, timm ResNet's ``downsample`` output, ...), and the site hook (`hf_penal.surgery`) hands the mode
z. Whichever of the two arrives second gets rewritten: usually z, into z' = y − x; where the shortcut is computed
after the branch (timm ResNet ``downsample``, ConvNeXt ``shortcut``) the shortcut's output, into x' = y − z. The
pending tensor is consumed at once, so repeated calls of a block and gradient-checkpointing recomputes see fresh
values.

Each mode is a small module whose ``forward(x, z)`` is the formula above; `MODES` maps config names to classes and
`create_mode` builds one from a `PenalConfig`. Fixed entangled matrices are non-persistent buffers rebuilt from the
config's seed; LayerNorm parameters and a learnable M are ordinary parameters (saved in the state_dict).
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from ._hooks import remove_hooks

__all__ = [
    "MODES",
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
    """Base class: ``forward(x, z) -> y``, plus the rendezvous of x and z used by the hooks.

    channel_dim: the feature dimension LN / M act on (-1 for tokens, 1 for NCHW feature maps).
    """

    _pending: torch.Tensor | None = None  # x (or z) waiting for its partner; never pickled or copied

    def __init__(self, channel_dim: int = -1):
        super().__init__()
        self.channel_dim = channel_dim
        self.x_first = True  # set by `build_mode_modules`: False where the shortcut is computed after the branch
        self.site = ""

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def branch_delta(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """z' with x + z' = y (what the branch must output so that the model's own add gives y)."""
        return self(x, z) - x

    def skip_delta(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x' with x' + z = y (what the shortcut must output)."""
        return self(x, z) - z

    # rendezvous ------------------------------------------------------------------------------------------------
    def take_skip_input(self, x: torch.Tensor) -> None:
        self._pending = x

    def take_branch_output(self, z: torch.Tensor) -> torch.Tensor:
        if not self.x_first:
            self._pending = z
            return z
        x, self._pending = self._pending, None
        if x is None:
            raise RuntimeError(f"hf_penal: residual mode at {self.site!r} got the branch output before its skip input; "
                               f"the block no longer runs as hf_penal.architectures describes")
        return self.branch_delta(x, z)

    def take_shortcut_output(self, x: torch.Tensor) -> torch.Tensor:
        z, self._pending = self._pending, None
        if z is None:
            raise RuntimeError(f"hf_penal: residual mode at {self.site!r} got the shortcut before the branch output; "
                               f"the block no longer runs as hf_penal.architectures describes")
        return self.skip_delta(x, z)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_pending", None)
        return state


class ScaledSkip(ResidualMode):
    """xSkip: y = λ·x + z. ``lambd`` is λ (1.0 is the plain skip)."""

    def __init__(self, lambd: float = 1.0, channel_dim: int = -1):
        super().__init__(channel_dim)
        self.lambd = float(lambd)

    def forward(self, x, z):
        return torch.add(z, x, alpha=self.lambd)

    def branch_delta(self, x, z):
        return torch.add(z, x, alpha=self.lambd - 1.0)  # exact where λ = 1

    def skip_delta(self, x, z):
        return x * self.lambd

    def extra_repr(self) -> str:
        return f"lambd={self.lambd:g}"


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

    def __init__(self, num_features: int, lambd: float = 1.0, eps: float = 1e-5, channel_dim: int = -1):
        super().__init__(channel_dim)
        self.lambd = float(lambd)
        self.norm = ChannelLayerNorm(num_features, eps, channel_dim)

    def forward(self, x, z):
        return self.norm(torch.add(z, x, alpha=self.lambd))

    def extra_repr(self) -> str:
        return f"lambd={self.lambd:g}"


class RecursiveLayerNormSkip(ResidualMode):
    """rSkip+LN: y_1 = LN_1(λ·x + z), y_k = LN_k(λ·x + y_{k-1}) for k = 2..K; y = y_K. One LayerNorm per step.
    K = 1 is `LayerNormSkip`."""

    def __init__(self, num_features: int, K: int = 2, lambd: float = 1.0, eps: float = 1e-5,  # K: the paper's symbol
                 channel_dim: int = -1):
        super().__init__(channel_dim)
        if int(K) < 1:
            raise ValueError(f"PenalConfig field 'recursions' (K) must be an integer >= 1; got {K!r}")
        self.K, self.lambd = int(K), float(lambd)
        self.norms = nn.ModuleList(ChannelLayerNorm(num_features, eps, channel_dim) for _ in range(self.K))

    def forward(self, x, z):
        y = z
        for norm in self.norms:
            y = norm(torch.add(y, x, alpha=self.lambd))
        return y

    def extra_repr(self) -> str:
        return f"K={self.K}, lambd={self.lambd:g}"


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
MODES: dict[str, type | None] = {
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


def create_mode(cfg, num_features: int, channel_dim: int = -1, site: str = "") -> ResidualMode | None:
    """The mode module `cfg` (a PenalConfig) describes, for a site with `num_features` features."""
    if cfg.mode == "identity":
        return None
    if cfg.mode == "scaled":
        return ScaledSkip(cfg.skip_scale, channel_dim)
    if cfg.mode == "layernorm":
        return LayerNormSkip(num_features, cfg.skip_scale, channel_dim=channel_dim)
    if cfg.mode == "recursive_layernorm":
        return RecursiveLayerNormSkip(num_features, cfg.recursions, cfg.skip_scale, channel_dim=channel_dim)
    if cfg.mode == "entangled":
        g = torch.Generator().manual_seed(site_seed(cfg.seed, site))
        if cfg.mapping == "orthogonal":
            M = orthogonal_mapping(num_features, g)
        elif cfg.mapping == "sparse":
            M = sparse_mapping(num_features, cfg.sparsity, g)
        elif cfg.mapping == "structural":
            M = structural_mapping(num_features)
        else:
            raise ValueError(f"PenalConfig field 'mapping' must be one of orthogonal, sparse, structural; "
                             f"got {cfg.mapping!r}")
        return EntangledSkip(M, cfg.learnable, cfg.mapping, channel_dim)
    raise ValueError(f"PenalConfig field 'mode' must be one of {list(MODES)}; got {cfg.mode!r}")


# ------------------------------------------------------------------------------------------------------------ wiring
def _module_at(block: nn.Module, path: str) -> nn.Module | None:
    mod = block
    for part in path.split(".") if path else ():
        mod = getattr(mod, part, None)
        if not isinstance(mod, nn.Module):
            return None
    return mod


def _width(mod: nn.Module) -> int | None:
    for attr in ("num_features", "out_features", "out_channels"):
        v = getattr(mod, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    shape = getattr(mod, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape:
        return int(shape[-1])
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        return int(w.numel())
    return None


def parse_skip(block: nn.Module, spec: str) -> tuple[str, str, int | None]:
    """Resolve an architecture-table skip spec on one block: (how, path relative to the block, feature width)."""
    alts, _, width_paths = spec.partition("~")
    for alt in alts.split("|"):
        how, _, path = alt.partition("@")
        mod = _module_at(block, path)
        if mod is None:
            continue
        width = None
        for wp in width_paths.split("|") if width_paths else [path]:
            wmod = _module_at(block, wp)
            width = _width(wmod) if wmod is not None else None
            if width is not None:
                break
        return how, path, width
    raise ValueError(f"PenalConfig field 'mode': skip input {spec!r} not found in {type(block).__name__}")


def build_mode_modules(model: nn.Module, sites, cfg) -> dict:
    """One mode module per site ({site name: module}); raises ValueError (field 'mode') before touching the model
    when a site's skip input is unknown (sites from the generic probe or given by name)."""
    unknown = [s.name for s in sites if not s.skip]
    if unknown:
        raise ValueError(
            f"PenalConfig field 'mode': mode={cfg.mode!r} rewrites the residual add, so hf_penal must know where each "
            f"site's skip input x comes from; it knows that only for blocks in hf_penal.architectures.BRANCHES, and "
            f"{len(unknown)} site(s) (e.g. {unknown[:3]}) were found by the generic probe or given by name. Use "
            f"mode='identity' (penal only) for this model, or add its block class to the table with an x_path.")
    modules = dict(model.named_modules())
    plan = []
    for s in sites:
        block = modules[s.block]
        how, path, width = parse_skip(block, s.skip)
        if width is None and cfg.mode != "scaled":
            raise ValueError(f"PenalConfig field 'mode': cannot tell the feature width at site {s.name!r} "
                             f"(skip spec {s.skip!r})")
        plan.append((s, how, ".".join(p for p in (s.block, path) if p), width))
    out = {}
    for s, how, at, width in plan:
        mode = create_mode(cfg, width or 0, channel_dim=1 if s.kind == "conv" else -1, site=s.name)
        ref = next((t for t in modules[s.block].parameters() if t.is_floating_point()), None)
        if ref is not None and ref.device.type != "meta":
            mode.to(device=ref.device, dtype=ref.dtype)
        mode.site, mode.x_first = s.name, how != "output"
        mode._capture = (at, how)  # read by attach_skip_capture
        out[s.name] = mode
    return out


class _SkipInputCapture:
    """Forward pre-hook (with kwargs) handing the skip input x to a mode. Picklable."""

    def __init__(self, mode: ResidualMode, how: str):
        self.mode, self.how = mode, how

    def __call__(self, module, args, kwargs):
        if self.how == "input_tensor":
            x = args[1] if len(args) > 1 else kwargs["input_tensor"]
        elif args:
            x = args[0]
        else:
            x = kwargs.get("hidden_states", kwargs.get("x"))
            if x is None:
                x = next(v for v in kwargs.values() if torch.is_tensor(v))
        self.mode.take_skip_input(x)


class _ShortcutCapture:
    """Forward hook on a shortcut module that runs after the branch: rewrites its output x into y − z."""

    def __init__(self, mode: ResidualMode):
        self.mode = mode

    def __call__(self, module, args, output):
        return self.mode.take_shortcut_output(output)


_CAPTURES = (_SkipInputCapture, _ShortcutCapture)


def attach_skip_capture(model: nn.Module, sites, modes: dict) -> None:
    """Register the capture hooks of the mode modules `build_mode_modules` returned."""
    modules = dict(model.named_modules())
    for s in sites:
        mode = modes.get(s.name)
        if mode is None:
            continue
        at, how = mode._capture
        target = modules[at]
        if how == "output":
            target.register_forward_hook(_ShortcutCapture(mode))
        else:
            target.register_forward_pre_hook(_SkipInputCapture(mode, how), with_kwargs=True)


def detach_skip_capture(model: nn.Module) -> None:
    """Remove every capture hook (and any pending tensor) from the model."""
    for mod in model.modules():
        remove_hooks(mod, _CAPTURES)
        if isinstance(mod, ResidualMode):
            mod._pending = None


def mode_settings(cfg) -> tuple:
    """The config fields that determine the mode modules (equal settings → the modules may be kept)."""
    return (cfg.mode, cfg.skip_scale, cfg.recursions, cfg.mapping, cfg.sparsity, cfg.learnable, cfg.seed)

