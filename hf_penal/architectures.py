"""Where residual branches end, per block class: data, not code.

Each entry maps a block class name (the module that performs the residual add, or the layer that owns it) to its
branches. A branch is ``(path, output_index, kind, x_path)``:

* ``path``: submodule (relative to the block) whose output is the branch output z, i.e. the tensor added to the
  skip. ``"a|b|c"`` means the first of these that exists and is not None (timm ResNet's `drop_path` / `se` are
  optional and end the branch when present). ``"a>e"``: one module `e` ends several branches (ViT's one
  `dropout`); z is its output at the call that follows `a`'s return, and the site is named after `a`.
* ``output_index``: None when the module (`e` for ``a>e``) returns z itself, an int when it returns a tuple with z at
  that index.
* ``kind``: "attention", "cross_attention", "mlp" or "conv".
* ``x_path``: where the residual modes (`hf_penal.modes`) find the skip input x, the tensor the block adds to z:
  ``"how@path"`` alternatives separated by ``|`` (the first whose module exists and is not None wins), optionally
  followed by ``~width_path`` naming a module whose size is the feature width (default: the module at ``path``).
  ``how`` is ``input`` (x is the first input of the submodule ``path``; ``""`` is the block itself),
  ``input_tensor`` (x is the ``input_tensor`` argument of ``path``, BERT's ``SelfOutput(hidden_states,
  input_tensor)``) or ``output`` (x is the output of ``path``, e.g. timm ResNet's ``downsample``: that module runs
  after the branch, so there the mode rewrites the shortcut instead of z). In pre-LN blocks x is the input of the
  branch's pre-norm (for the second branch that is x + z of the first). None: modes other than "identity" are not
  supported for that block.

Blocks whose add modifies z in place are listed in `INPLACE_ADD`. Verified against transformers 5.23 and
timm 1.0.31 by the test-suite; architectures not listed go through the generic probe in `hf_penal.discovery`.
"""
from __future__ import annotations

_BERT_LIKE = [
    ("attention.output.dropout", None, "attention", "input_tensor@attention.output~attention.output.dense"),
    ("crossattention.output.dropout", None, "cross_attention",
     "input_tensor@crossattention.output~crossattention.output.dense"),
    ("output.dropout", None, "mlp", "input_tensor@output~output.dense"),
]
_GPT2_LIKE = [
    ("attn", 0, "attention", "input@ln_1"),
    ("crossattention", 0, "cross_attention", "input@ln_cross_attn"),
    ("mlp", None, "mlp", "input@ln_2"),
]
_PRE_NORM_DECODER = [
    ("self_attn", 0, "attention", "input@input_layernorm"),
    ("mlp", None, "mlp", "input@post_attention_layernorm"),
]
_CLIP_LIKE = [  # residual + self_attn(layer_norm1(x))[0], then residual + mlp(layer_norm2(h)): vision/text towers
    ("self_attn", 0, "attention", "input@layer_norm1"),
    ("mlp", None, "mlp", "input@layer_norm2"),
]
_RESNET_BASIC = [("drop_path|se|bn2", None, "conv", "output@downsample|input@~bn2")]
_RESNET_BOTTLENECK = [("drop_path|se|bn3", None, "conv", "output@downsample|input@~bn3")]

BRANCHES: dict[str, list] = {
    # --- transformers: post-LN encoders, LayerNorm(dropout(dense(h)) + input_tensor)
    **{f"{p}Layer": _BERT_LIKE for p in (
        "Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "Data2VecText", "RobertaPreLayerNorm", "Ernie")},
    # --- transformers: GPT-2 style pre-LN blocks
    "GPT2Block": _GPT2_LIKE,
    # --- transformers: Llama-family decoder layers (pre-norm, no post-branch norm)
    **{f"{p}DecoderLayer": _PRE_NORM_DECODER for p in (
        "Llama", "Mistral", "Qwen2", "Qwen3", "Mixtral", "Olmo")},
    # Granite scales z by residual_multiplier m after the branch (no module returns m·z): the penalty is on z, so on
    # the residual step m·z its strength is tau/m² (see NOTES); residual modes would be off by m and are refused
    "GraniteDecoderLayer": [(p, i, k, None) for p, i, k, _ in _PRE_NORM_DECODER],
    # --- transformers: CLIP-style encoder layers, the vision towers of many vision-language models (LLaVA's CLIP,
    #     Gemma 3's SigLIP, SmolVLM / Idefics3); without them the table's text-tower entry leaves the tower bare
    **{f"{p}EncoderLayer": _CLIP_LIKE for p in ("CLIP", "Siglip", "SmolVLM", "Idefics3")},
    # --- transformers: T5 sub-layers, each `hidden + dropout(branch)`
    "T5LayerSelfAttention": [("dropout", None, "attention", "input@layer_norm")],
    "T5LayerCrossAttention": [("dropout", None, "cross_attention", "input@layer_norm")],
    "T5LayerFF": [("dropout", None, "mlp", "input@layer_norm")],
    # --- transformers ViT (5.x): ViTLayer adds both branches itself and one `dropout` module serves both: z is that
    #     dropout's output at the call after each branch module (`a>e`, see above)
    "ViTLayer": [("attention>dropout", None, "attention", "input@layernorm_before"),
                 ("mlp>dropout", None, "mlp", "input@layernorm_after")],
    # --- timm
    "Block": [("drop_path1", None, "attention", "input@norm1"), ("drop_path2", None, "mlp", "input@norm2")],  # ViT, ...
    "BasicBlock": _RESNET_BASIC,
    "Bottleneck": _RESNET_BOTTLENECK,
    "ConvNeXtBlock": [("drop_path", None, "conv", "output@shortcut~norm")],
    # DLA's tree leaves: `out += shortcut` where the shortcut is an argument (the tree's projection, or x), outside
    # numbered layers, so the probe only suggests them; residual modes are not supported there
    "DlaBasic": [("bn2", None, "conv", None)],
    "DlaBottleneck": [("bn3", None, "conv", None)],
    "DlaBottle2neck": [("bn3", None, "conv", None)],
}

#: where a table site's penalty is not exactly (tau/2)·‖what the block adds‖²: the site's `note`
NOTES = {
    "GraniteDecoderLayer": "scaled by config.residual_multiplier m after the site: the penalty is on the unscaled "
                           "branch output, i.e. tau/m² on the residual step",
}

#: blocks whose residual add writes into z's storage (timm ResNet: `x += shortcut` then ReLU(inplace)); the op keeps
#: its own copy of z there
INPLACE_ADD = {"BasicBlock", "Bottleneck", "DlaBasic", "DlaBottleneck", "DlaBottle2neck"}

#: generic class names that only count when defined by these packages (a "Block" elsewhere may be anything)
VISION_BLOCKS = {"Block": ("timm.",), "BasicBlock": ("timm.", "torchvision."), "Bottleneck": ("timm.", "torchvision."),
                 "ConvNeXtBlock": ("timm.",), "DlaBasic": ("timm.",), "DlaBottleneck": ("timm.",),
                 "DlaBottle2neck": ("timm.",)}
#: ... except in these modules: timm's SAM ViT `Block` un-partitions its windows (dropping the padding) *after*
#: drop_path1, so no module returns what is added; the generic probe takes drop_path1 and notes the padding
NOT_TABLE_MODULES = ("timm.models.vision_transformer_sam",)


def branches_for(block_cls: type):
    """The branch table entry for a block class (looked up by class name, then by base classes' names), as
    ``(class name, branches)`` or ``(None, None)``."""
    for klass in block_cls.__mro__:
        entry = BRANCHES.get(klass.__name__)
        if entry is None:
            continue
        owners = VISION_BLOCKS.get(klass.__name__)
        if owners and (not klass.__module__.startswith(owners) or klass.__module__.startswith(NOT_TABLE_MODULES)):
            continue
        return klass.__name__, entry
    return None, None
