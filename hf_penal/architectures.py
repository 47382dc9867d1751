"""Where residual branches end, per block class: data, not code.

Each entry maps a block class name (the module that performs the residual add, or the layer that owns it) to its
branches. A branch is ``(path, output_index, kind, x_path)``:

* ``path``: submodule (relative to the block) whose output is the branch output z, i.e. the tensor added to the
  skip. ``"a|b|c"`` means the first of these that exists and is not None (timm ResNet's `drop_path` / `se` are
  optional and end the branch when present).
* ``output_index``: None when the module returns z itself, an int when it returns a tuple with z at that index.
* ``kind``: "attention", "cross_attention", "mlp" or "conv".
* ``x_path``: where the residual modes find the skip input x (see `hf_penal.modes`): ``"input"`` (the block's
  first positional input), ``"input_tensor"`` (the second positional input of the module owning the add, as in
  BERT's ``SelfOutput(hidden_states, input_tensor)``), ``"previous"`` (x + z of the branch before it in the same
  block), or ``"shortcut"`` (timm ResNet: ``downsample(x)`` or x).

Blocks whose add modifies z in place are listed in `INPLACE_ADD`. Verified against transformers 5.23 and
timm 1.0.31 by the test-suite; architectures not listed go through the generic probe in `hf_penal.sites`.
"""
from __future__ import annotations

_BERT_LIKE = [
    ("attention.output.dropout", None, "attention", "input"),
    ("crossattention.output.dropout", None, "cross_attention", "previous"),
    ("output.dropout", None, "mlp", "previous"),
]
_GPT2_LIKE = [
    ("attn", 0, "attention", "input"),
    ("crossattention", 0, "cross_attention", "previous"),
    ("mlp", None, "mlp", "previous"),
]
_PRE_NORM_DECODER = [
    ("self_attn", 0, "attention", "input"),
    ("mlp", None, "mlp", "previous"),
]
_RESNET_BASIC = [("drop_path|se|bn2", None, "conv", "shortcut")]
_RESNET_BOTTLENECK = [("drop_path|se|bn3", None, "conv", "shortcut")]

BRANCHES: dict[str, list] = {
    # --- transformers: post-LN encoders, LayerNorm(dropout(dense(h)) + input_tensor)
    **{f"{p}Layer": _BERT_LIKE for p in (
        "Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "Data2VecText", "RobertaPreLayerNorm", "Ernie")},
    # --- transformers: GPT-2 style pre-LN blocks
    "GPT2Block": _GPT2_LIKE,
    # --- transformers: Llama-family decoder layers (pre-norm, no post-branch norm)
    **{f"{p}DecoderLayer": _PRE_NORM_DECODER for p in (
        "Llama", "Mistral", "Qwen2", "Qwen3", "Mixtral", "Olmo", "Granite")},
    # --- transformers: T5 sub-layers, each `hidden + dropout(branch)`
    "T5LayerSelfAttention": [("dropout", None, "attention", "input")],
    "T5LayerCrossAttention": [("dropout", None, "cross_attention", "input")],
    "T5LayerFF": [("dropout", None, "mlp", "input")],
    # --- transformers ViT (5.x): ViTLayer adds both branches itself and one `dropout` module serves both; we take z
    #     at the branch modules, which equals the added tensor whenever hidden_dropout_prob == 0 (ViT's default).
    "ViTLayer": [("attention", 0, "attention", "input"), ("mlp", None, "mlp", "previous")],
    # --- timm
    "Block": [("drop_path1", None, "attention", "input"), ("drop_path2", None, "mlp", "previous")],  # ViT, DeiT, ...
    "BasicBlock": _RESNET_BASIC,
    "Bottleneck": _RESNET_BOTTLENECK,
    "ConvNeXtBlock": [("drop_path", None, "conv", "shortcut")],
}

#: blocks whose residual add writes into z's storage (timm ResNet: `x += shortcut` then ReLU(inplace)); the op keeps
#: its own copy of z there
INPLACE_ADD = {"BasicBlock", "Bottleneck"}

#: generic class names that only count when defined by these packages (a "Block" elsewhere may be anything)
VISION_BLOCKS = {"Block": ("timm.",), "BasicBlock": ("timm.", "torchvision."), "Bottleneck": ("timm.", "torchvision."),
                 "ConvNeXtBlock": ("timm.",)}


def branches_for(block_cls: type):
    """The branch table entry for a block class (looked up by class name, then by base classes' names), as
    ``(class name, branches)`` or ``(None, None)``."""
    for klass in block_cls.__mro__:
        entry = BRANCHES.get(klass.__name__)
        if entry is None:
            continue
        owners = VISION_BLOCKS.get(klass.__name__)
        if owners and not klass.__module__.startswith(owners):
            continue
        return klass.__name__, entry
    return None, None
