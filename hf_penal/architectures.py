"""Where residual branches end, per block class: data, not code.

`BLOCKS` maps a block class name (the module that performs the residual add, or the layer that owns it) to one
`Block` record; each of its branches is a `Branch`. Paths are submodule paths relative to the block (``""`` is the
block itself); a tuple of paths lists alternatives, the first that exists (and is not None) wins. Where a tensor of
the block's forward is taken (the skip input x, the sum x + z) is a `Take`: the first input of a submodule, its
``input_tensor`` argument, or its output.

Verified against transformers 5.23 and timm 1.0.31 by the test-suite; architectures not listed go through the
generic probe in `hf_penal.discovery`.

To add an architecture: one `Block` entry under its class name, and a test against the explicit-penalty oracle
(``tests/_oracle.py``).
"""
from __future__ import annotations

import dataclasses

KINDS = ("attention", "cross_attention", "mlp", "conv")
HOWS = ("input", "input_tensor", "output")


@dataclasses.dataclass(frozen=True)
class Take:
    """A tensor of the block's forward: ``how`` is "input" (the first input of the submodule at ``path``),
    "input_tensor" (its ``input_tensor`` argument, BERT's ``SelfOutput(hidden_states, input_tensor)``) or "output"
    (its output, element 0 of a tuple)."""

    how: str
    path: str = ""

    def __post_init__(self):
        if self.how not in HOWS:
            raise ValueError(f"Take.how must be one of {HOWS}; got {self.how!r}")


def input_of(path: str = "") -> Take:
    return Take("input", path)


def input_tensor_of(path: str) -> Take:
    return Take("input_tensor", path)


def output_of(path: str = "") -> Take:
    return Take("output", path)


@dataclasses.dataclass(frozen=True)
class Branch:
    """One residual branch of a block.

    module: the submodule whose output is the branch output z, the tensor added to the skip; alternatives in order
        (timm ResNet's optional `drop_path` / `se` end the branch when present). The site is named after it.
    kind: "attention", "cross_attention", "mlp" or "conv".
    index: None when the module that returns z returns it itself, an int when it returns a tuple with z there.
    end: "" when z is `module`'s output; else the one module that ends several branches (ViT's `dropout`): z is its
        output at the call that follows `module`'s return.
    x: where the residual modes (`hf_penal.modes`) find the skip input x, the tensor the block adds to z
        (alternatives); in pre-LN blocks the input of the branch's pre-norm (for the second branch that is x + z of
        the first); ``output_of(shortcut)`` where the shortcut runs after the branch (timm ResNet's `downsample`:
        there the mode rewrites the shortcut instead of z). Empty: modes other than "identity" are refused.
    width: module(s) whose size is the feature width the modes act on; empty: the module where x is taken.
    sum: where the block consumes y = x + z (alternatives), for ``storage_dtype="recompute"`` (z = y − x): the first
        input of the norm that follows the add, or the block's output. Empty: recompute is not valid here (z is
        stored); it needs x taken from an input, and y consumed where no other tensor is added first.
    """

    module: tuple[str, ...]
    kind: str
    index: int | None = None
    end: str = ""
    x: tuple[Take, ...] = ()
    width: tuple[str, ...] = ()
    sum: tuple[Take, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Branch.kind must be one of {KINDS}; got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Block:
    """One block class: its branches, and what holds for all of them.

    inplace_add: the residual add writes into z's storage (timm ResNet: ``x += shortcut`` then ReLU(inplace)); the op
        keeps its own copy of z there, and recompute is not valid.
    owners: for generic class names (``Block``): the packages whose class of that name counts (module prefixes);
        empty: any. excluded: modules whose class of that name does not count.
    note: "" when the penalty is exactly (tau/2)·‖what the block adds‖²; otherwise how it differs (the sites' `note`).
    """

    branches: tuple[Branch, ...]
    inplace_add: bool = False
    owners: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    note: str = ""

    def counts_for(self, cls: type) -> bool:
        """Whether `cls` (a class of this record's name) is the block this record describes."""
        mod = cls.__module__
        owned = not self.owners or mod.startswith(self.owners)
        return owned and not (self.excluded and mod.startswith(self.excluded))


def _bert_like(sum_ok: bool = True) -> tuple[Branch, ...]:
    """BERT-style post-LN layers, ``LayerNorm(dropout(dense(h)) + input_tensor)`` in each `*Output` module; the
    pre-LN variant (RobertaPreLayerNorm) returns the sum from the `*Output` module instead."""
    def branch(prefix, kind):
        out = f"{prefix}output" if prefix else "output"
        y = input_of(f"{out}.LayerNorm") if sum_ok else output_of(out)
        return Branch((f"{out}.dropout",), kind, x=(input_tensor_of(out),), width=(f"{out}.dense",), sum=(y,))
    return (branch("attention.", "attention"), branch("crossattention.", "cross_attention"), branch("", "mlp"))


_BERT_LIKE = _bert_like()
_GPT2_LIKE = (
    Branch(("attn",), "attention", index=0, x=(input_of("ln_1"),),
           sum=(input_of("ln_cross_attn"), input_of("ln_2"))),
    Branch(("crossattention",), "cross_attention", index=0, x=(input_of("ln_cross_attn"),), sum=(input_of("ln_2"),)),
    Branch(("mlp",), "mlp", x=(input_of("ln_2"),), sum=(output_of(),)),
)
_PRE_NORM_DECODER = (
    Branch(("self_attn",), "attention", index=0, x=(input_of("input_layernorm"),),
           sum=(input_of("post_attention_layernorm"),)),
    Branch(("mlp",), "mlp", x=(input_of("post_attention_layernorm"),), sum=(output_of(),)),
)
# residual + self_attn(layer_norm1(x))[0], then residual + mlp(layer_norm2(h)): vision/text towers (recompute not
# described for them: z is stored)
_CLIP_LIKE = (
    Branch(("self_attn",), "attention", index=0, x=(input_of("layer_norm1"),)),
    Branch(("mlp",), "mlp", x=(input_of("layer_norm2"),)),
)


def _resnet(last_bn: str) -> Block:
    # `x += shortcut` in place then ReLU(inplace); the shortcut (`downsample`, when present) runs after the branch
    return Block((Branch(("drop_path", "se", last_bn), "conv", x=(output_of("downsample"), input_of()),
                         width=(last_bn,)),), inplace_add=True, owners=("timm.", "torchvision."))


def _dla(last_bn: str) -> Block:
    # DLA's tree leaves: `out += shortcut` where the shortcut is an argument (the tree's projection, or x), outside
    # numbered layers, so the probe only suggests them; residual modes are not supported there
    return Block((Branch((last_bn,), "conv"),), inplace_add=True, owners=("timm.",))


BLOCKS: dict[str, Block] = {
    # --- transformers: post-LN encoders, LayerNorm(dropout(dense(h)) + input_tensor)
    **{f"{p}Layer": Block(_BERT_LIKE) for p in (
        "Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "Data2VecText", "Ernie")},
    # pre-LN: the `*Output` modules return dropout(dense(h)) + input_tensor, consumed by the next pre-norm
    "RobertaPreLayerNormLayer": Block(_bert_like(sum_ok=False)),
    # --- transformers: GPT-2 style pre-LN blocks
    "GPT2Block": Block(_GPT2_LIKE),
    # --- transformers: Llama-family decoder layers (pre-norm, no post-branch norm)
    **{f"{p}DecoderLayer": Block(_PRE_NORM_DECODER) for p in ("Llama", "Mistral", "Qwen2", "Qwen3", "Mixtral", "Olmo")},
    # Granite scales z by residual_multiplier m after the branch (no module returns m·z): the penalty is on z, so on
    # the residual step m·z its strength is tau/m²; residual modes would be off by m and are refused, and the add is
    # of m·z, so recompute is not valid
    "GraniteDecoderLayer": Block(
        tuple(dataclasses.replace(b, x=(), sum=()) for b in _PRE_NORM_DECODER),
        note="scaled by config.residual_multiplier m after the site: the penalty is on the unscaled branch output, "
             "i.e. tau/m² on the residual step"),
    # ZAYA adds each branch inside a helper module that takes both z and the skip x as arguments,
    # `(z + b)·s + (x + b')·s'` (ZayaResidualScaling, learned per-channel b, s): no add in the layer itself takes a
    # branch output (the probe finds only adds inside the attention's q/k projection and the router); the MoE `mlp`
    # returns (z, router state); the skip is shifted and scaled too, so residual modes and recompute are refused
    "ZayaDecoderLayer": Block(
        (Branch(("self_attn",), "attention", index=0), Branch(("mlp",), "mlp", index=0)),
        note="added as (z + b)·s + (x + b')·s' with learned per-channel b, s (ZayaResidualScaling): the penalty is on "
             "the unshifted, unscaled branch output z"),
    # --- transformers: CLIP-style encoder layers, the vision towers of many vision-language models (LLaVA's CLIP,
    #     Gemma 3's SigLIP, SmolVLM / Idefics3); without them the table's text-tower entry leaves the tower bare
    **{f"{p}EncoderLayer": Block(_CLIP_LIKE) for p in ("CLIP", "Siglip", "SmolVLM", "Idefics3")},
    # --- transformers: T5 sub-layers, each `hidden + dropout(branch)`
    "T5LayerSelfAttention": Block((Branch(("dropout",), "attention", x=(input_of("layer_norm"),),
                                          sum=(output_of(),)),)),
    "T5LayerCrossAttention": Block((Branch(("dropout",), "cross_attention", x=(input_of("layer_norm"),),
                                           sum=(output_of(),)),)),
    "T5LayerFF": Block((Branch(("dropout",), "mlp", x=(input_of("layer_norm"),), sum=(output_of(),)),)),
    # --- transformers ViT (5.x): ViTLayer adds both branches itself and one `dropout` module serves both: z is that
    #     dropout's output at the call after each branch module
    "ViTLayer": Block((
        Branch(("attention",), "attention", end="dropout", x=(input_of("layernorm_before"),),
               sum=(input_of("layernorm_after"),)),
        Branch(("mlp",), "mlp", end="dropout", x=(input_of("layernorm_after"),), sum=(output_of(),)),
    )),
    # --- timm ViT and other `Block`s: x + drop_path1(ls1(attn(norm1(x)))), then the MLP likewise. timm's SAM ViT
    #     `Block` un-partitions its windows (dropping the padding) *after* drop_path1, so no module returns what is
    #     added: excluded, the generic probe takes drop_path1 and notes the padding
    "Block": Block((
        Branch(("drop_path1",), "attention", x=(input_of("norm1"),), sum=(input_of("norm2"),)),
        Branch(("drop_path2",), "mlp", x=(input_of("norm2"),), sum=(output_of(),)),
    ), owners=("timm.",), excluded=("timm.models.vision_transformer_sam",)),
    "BasicBlock": _resnet("bn2"),
    "Bottleneck": _resnet("bn3"),
    # drop_path(x) + shortcut(shortcut): the shortcut runs after the branch
    "ConvNeXtBlock": Block((Branch(("drop_path",), "conv", x=(output_of("shortcut"),), width=("norm",)),),
                           owners=("timm.",)),
    "DlaBasic": _dla("bn2"),
    "DlaBottleneck": _dla("bn3"),
    "DlaBottle2neck": _dla("bn3"),
    # --- transformers: SAM3-LiteText's mask decoder, a head (no numbered layers, so the probe does not look there)
    #     whose encoder states cross-attend to the prompt: residual + prompt_cross_attn_dropout(attn(norm(residual)))
    "Sam3LiteTextMaskDecoder": Block((Branch(("prompt_cross_attn_dropout",), "cross_attention",
                                             x=(input_of("prompt_cross_attn_norm"),)),)),
    # --- transformers SuperGlue: its GNN adds each propagation layer's output (the message MLP's last linear, mlp.1,
    #     returned unchanged as the layer's element 0) to the descriptors in its own loop, outside the numbered
    #     layers where the probe looks: descriptors + layer(descriptors, ...)[0]
    "SuperGlueAttentionalPropagation": Block((Branch(("mlp.1",), "mlp", x=(input_of(),)),)),
}


def block_record(block_cls: type) -> tuple[str | None, Block | None]:
    """The record for a block class (looked up by class name, then by base classes' names), as
    ``(class name, Block)`` or ``(None, None)``."""
    for klass in block_cls.__mro__:
        record = BLOCKS.get(klass.__name__)
        if record is not None and record.counts_for(klass):
            return klass.__name__, record
    return None, None
