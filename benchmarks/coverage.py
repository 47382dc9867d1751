"""Coverage sweep of residual-site discovery over the installed transformers model types and timm families.

For each model, built at random init from a small config (transformers: hidden width 32, 2 layers, 2 heads, 1 key/value
head where such fields exist, with the fields derived from them kept consistent, a heterogeneous config's per-layer
overrides (`per_layer_config`) shrunk layer by layer by the same rules; a model that does not build or run at that
config is retried with as many key/value heads as query heads, then with only its depth shrunk, then at its default
config when that has at most 200 M parameters, last with its default head counts at the small head width
(`small-heads`, `_default_heads`); after shrinking, the fields the config class itself derives in its
__init__ from the shrunk ones are computed again by the class, `_rederive`: Zamba2's attention_head_dim =
2·hidden/heads, what BLT's config sets on its sub-configs; COVERAGE_REDERIVE=0 turns this off; a Q-Former model's unset
image placeholder id is set, `_placeholder_token`; widths one sub-config hands another (`_sibling_widths`; a width
list ending in the width a sibling reads, `_sibling_width_lists`; a ``*_features`` twin of a shrunk prefixed width,
`_twin_features`; a sub-config's ``*_dim`` at its parent's hidden size, `_parent_dims`), feature-map
sizes and timm backbone levels (`_feature_sizes`, `_timm_backbone_levels`) kept consistent with the shrunk widths and
image sizes; a field whose default is the sum of the config's and a sub-config's hidden_size follows their shrunk sum,
`_width_sums`; a field the config class derives a shrunk width from is shrunk with it (LightGlue's descriptor_dim,
`_source_fields`); a backbone's reported hidden_sizes stay its stage_out_channels (HGNetV2, `_stage_widths_tied`); a
default config with no feature level (an empty ``*_scale_factors``, num_feature_levels 0: LW-DETR) gets one at scale
1.0, `_one_feature_level`; a list of layer indices (``*layer(s)_indices``) scaled into the shrunk depth,
`_layer_indices`; a tiled-image tower (``max_num_tiles``) at tiles of 4 × 4 patches and 2 ``num_global_layers``,
`_tiled_images`; a model that cuts images into tiles of its ``patch_size`` for sub-models whose image size that is
(DepthPro) at tiles of 4 sub-model patches, its ``*_hook_ids`` within the sub-models' depth, `_tiles`; a timm tower
nested in a composite config gets a 2-layer 32-wide ViT at 32 px through its model_args, `_timm_tower`; timm: the
smallest-named model of each family, img_size 64 where the model takes it, run at 64 px where it runs there), it
records: whether it builds, the sites found (table and/or probe), the residual blocks covered (elements of ModuleLists /
Sequentials whose class ends in Layer/Block/Bottleneck and inside which two same-shape tensors are added: blocks with ≥
1 site / blocks), whether the penalized model's parameter gradients equal the explicit-penalty oracle built from the
found sites (`tests/_oracle.py`: forward hooks capture those sites' outputs and the loss gets + τ/2·Σ‖z‖²), and whether
eval outputs are bit-identical to the plain model's (a float32 gradient comparison that the oracle's own float32
rounding cannot resolve is re-measured in float64, `_float64_recheck`); for an inexact model, how many found sites'
outputs get no gradient from the loss (`_sites_without_grad`: the penalty's backward never runs there, the oracle's
τ/2·‖z‖² still reaches them; a codec's encoder behind its argmin quantizer). Each model runs in a worker process under a
per-model time limit; a worker that dies is replaced and the model recorded as crashed.

Two more config rules: a hierarchical tower's hidden_size stays its prefixed first-stage width × 2^(stages-1) (CLAP's
audio Swin, `_stage_doubled_widths`); and after every other level, a model is retried at the small config with its
default head counts at the small head width (`_default_heads`: a forward that splits heads into a fixed number of
groups, CodeGen's 4). Ties that held in the default config are restored where the shrink broke them
(`_default_ties`: a Mamba-2 mixer's heads × head_dim = expand × hidden_size with n_groups dividing the heads, a latent
attention's head_dim = nope + rope where it was so, routed-expert groups dividing the shrunk expert count, an unset
sliding window on a config with other sliding fields set to max_position_embeddings), and M-RoPE sections follow the
modeling code's fallback where the default config names none and that fallback has equal sections the scaled
[16, 24, 24] breaks (`_mrope_fallback`: Ernie-4.5-VL).
Channel counts (``*_channel(s)``) at the default hidden size follow the shrunk one
(`_channel_widths`); a latent-array model's ``num_<x>_per_block`` depth and ``d_latents`` width shrink too
(`_latent_sizes`). A model whose class defines no forward (a VQ autoencoder used by encode / decode, an omni model by
generate) is measured by its parts, `check_parts`: the outermost submodules with a forward that hold a residual
block, each checked as a model on its own inputs; it is ok only where every part is, and with no such part it has no
site.

The probe's inputs are built from the model's config (`hf_penal.integrations.transformers_inputs`: ids, pixels, audio,
and a forward's other required arguments by name: patch grids with `grid_thw`, video clips, spectrograms, a parent's
hidden states, NaFlex patches), so shrinking the config here (widths, per-stage width lists scaled together, projection
sizes; vision-tower widths tied to them, `_tied_vision_widths`) is the one source of both the model's shapes and its
inputs.

What is not a site (decided, not a probe gap to hide; such a model stays in the denominator as "no site"):
* hyper-connection mixing (DeepSeek-V4's mHC, HY-V4, Qwen4-exp, GLM-5-next): a layer's output is H·x + post ⊗ z, H a
  learned, input-dependent mix of several residual streams and post a per-token gate on the branch output z. No
  operand is the unchanged stream and z enters only through a per-sample gate, so this is not a residual add
  x + c·z (c constant) and the probe finds no site. A user can still penalize z by naming the branch ends
  (`sites=[...]`: the attention and MLP modules).
* I-BERT's quantized add: the skip is added inside the activation quantizer (`QuantAct(x, identity=skip)`: identity + x,
  on re-quantized integer values in quant mode), not by the block, so no add in a numbered layer takes a branch
  output and a skip: no site (in quant mode the add is not of z at all but of its quantized value).

    OMP_NUM_THREADS=1 python benchmarks/coverage.py --library transformers --every 3 --timeout 60 \
        --out benchmarks/results/coverage.md
    OMP_NUM_THREADS=1 python benchmarks/coverage.py --library timm --timeout 60 --out benchmarks/results/coverage.md

Each library owns one section of the output file (a second run of the other library keeps the first one's section).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_BLOCK_CLASS = re.compile(r"(Layer|Block|Bottleneck)$")
_NOT_BLOCK_CLASS = re.compile(r"Norm|ConvLayer$")


# ----------------------------------------------------------------------------------------------------- listing models
def transformers_types() -> list[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    return sorted(CONFIG_MAPPING_NAMES)


_SIZE_WORDS = ("atto", "femto", "pico", "nano", "xxtiny", "xtiny", "tiny", "xxs", "xs", "mini", "small", "s",
               "b0", "10", "18", "base")


def timm_families() -> list[str]:
    """One model per family (name up to the first '_', trailing digits stripped), the smallest-named first."""
    import timm
    fams: dict[str, list[str]] = {}
    for name in timm.list_models():
        fam = re.sub(r"\d+$", "", name.split("_")[0]) or name
        fams.setdefault(fam, []).append(name)

    def rank(n):
        parts = re.split(r"[_.]", n)
        for i, w in enumerate(_SIZE_WORDS):
            if any(p == w or p.endswith(w) and len(w) > 2 for p in parts):
                return i, len(n), n
        return len(_SIZE_WORDS), len(n), n
    return [min(v, key=rank) for _, v in sorted(fams.items())]


def sample(names: list[str], every: int, offset: int = 0) -> list[str]:
    """Every `every`-th name from position `offset` (a held-out sample: an offset other than the one tuned on)."""
    return names[offset::every] if every > 1 else names


# ----------------------------------------------------------------------------------------------------- building
_WIDTH = {"hidden_size": 32, "d_model": 32, "n_embd": 32, "embed_dim": 32, "hidden_dim": 32, "dim": 32,
          "word_embed_proj_dim": 32, "projection_dim": 32, "projection_size": 32, "text_embed_dim": 32,
          "vision_embed_dim": 32}
_DEPTH = {"num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2,
          "decoder_layers": 2, "num_encoder_layers": 2, "num_decoder_layers": 2, "depth": 2}
_HEADS = {"num_attention_heads": 2, "n_head": 2, "n_heads": 2, "encoder_attention_heads": 2,
          "decoder_attention_heads": 2, "num_heads": 2, "num_key_value_heads": 1, "num_kv_heads": 1,
          "multi_query_group_num": 1}
_FFN = {"intermediate_size": 64, "ffn_dim": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "n_inner": 64,
        "d_ff": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "head_dim": 16, "d_kv": 16,
        "rotary_dim": 8, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "kv_lora_rank": 16,
        "q_lora_rank": 16, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "num_experts_per_token": 2}


_PREFIXED = [(re.compile(r"(hidden_size|hidden_dim|embed_dim)$|^hidden_size_|^embedding_(size|dim)$"), 32),
             (re.compile(r"num_attention_heads$"), 2),
             (re.compile(r"num_key_value_heads$"), 2), (re.compile(r"num_hidden_layers$"), 2),
             (re.compile(r"intermediate_size$"), 64)]
_STAGE_WIDTHS = re.compile(r"_per_stage$|channel_list$")  # width lists scaled together (smallest → 32, the width)
_MROPE_TYPES = re.compile(r"vl|glm|omni|video|image")  # text models that may use multimodal RoPE sections
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num")


def _set(cfg, k, v) -> None:
    with contextlib.suppress(Exception):
        setattr(cfg, k, v)


def _shrink(cfg, seen=None, kv_heads: int | None = 1) -> None:
    """Small widths and depths on a config and its sub-configs, where the fields exist (in place), then the fields
    that depend on them made consistent (`_consistent`; kv_heads: key/value heads, None: as many as query heads)."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    layers = _take_layers(cfg)  # a heterogeneous config: its global fields first, then each layer's (_put_layers)
    aliases = getattr(cfg, "attribute_map", {}) or {}
    for table in (_WIDTH, _DEPTH, _HEADS, _FFN):
        for k, v in table.items():
            if aliases.get(k, k) != k:  # an alias of another field (ConvNext: num_hidden_layers = num_stages)
                continue
            cur = getattr(cfg, k, None)
            if isinstance(cur, int) and not isinstance(cur, bool) and cur > v:
                _set(cfg, k, v)
            elif isinstance(cur, (list, tuple)) and cur and all(isinstance(x, int) for x in cur) and k in _HEADS:
                _set(cfg, k, type(cur)(min(x, v) for x in cur))
    for k, cur in list(vars(cfg).items()):  # prefixed twins: a Q-Former's encoder_hidden_size (the vision tower's
        if k in aliases or not isinstance(cur, int) or isinstance(cur, bool):  # width), V-JEPA's predictor sizes
            continue
        for rx, v in _PREFIXED:
            if rx.search(k) and cur > v:
                _set(cfg, k, v)
    for k in ("hidden_sizes", "embed_dims", "embed_dim", "dims", "widths", "channels", "neck_hidden_sizes"):
        cur = getattr(cfg, k, None)
        if isinstance(cur, (list, tuple)) and cur and all(isinstance(x, int) for x in cur):
            _set(cfg, k, type(cur)(min(x, 16 * 2 ** i) for i, x in enumerate(cur)))
    size, patch = getattr(cfg, "image_size", None), _int(cfg, "patch_size") or 1  # 1024 px and over (SAM): a quarter
    big = (isinstance(size, int) and not isinstance(size, bool) and size >= 1024) or (  # (whole patches), with
        isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x >= 1024 for x in size))  # what
    if big:  # is derived from it on the same config
        _set(cfg, "image_size", size // 4 // patch * patch if isinstance(size, int) else [x // 4 for x in size])
        if _int(cfg, "image_embedding_size"):
            _set(cfg, "image_embedding_size", max(1, cfg.image_embedding_size // 4))
    for k, cur in list(vars(cfg).items()):  # per-stage widths that other lists repeat in another order (SAM2's
        if (_STAGE_WIDTHS.search(k) and isinstance(cur, (list, tuple)) and cur  # Hiera stages and its neck's
                and all(isinstance(x, int) and x > 0 for x in cur) and min(cur) > 32):  # channel list, reversed)
            _set(cfg, k, type(cur)(x * 32 // min(cur) for x in cur))  # one scale: the lists stay consistent
    for k in ("depths", "num_layers_per_stage", "layers", "block_repeats"):
        cur = getattr(cfg, k, None)
        if isinstance(cur, (list, tuple)) and cur and all(isinstance(x, int) for x in cur):
            _set(cfg, k, type(cur)(min(x, 1) if x else x for x in cur))
    _consistent(cfg, kv_heads)
    _tiled_images(cfg)
    _tied_vision_widths(cfg)
    _put_layers(cfg, layers, lambda c: _shrink(c, kv_heads=kv_heads))
    for sub in list(vars(cfg).values()):
        if hasattr(sub, "to_dict") and hasattr(sub, "model_type"):
            _timm_tower(sub)
            _shrink(sub, seen, kv_heads)
    _from_backbone(cfg)


def _tiled_images(cfg) -> None:
    """A tower that takes each image as up to ``max_num_tiles`` tiles of ``image_size`` pixels, with layers over all
    tiles at once (``num_global_layers``): tiles of 4 × 4 patches (``patch_size``) and 2 such layers, so that a
    forward over every tile stays small (in place)."""
    tiles, size, patch = _int(cfg, "max_num_tiles"), _int(cfg, "image_size"), _int(cfg, "patch_size")
    if not (tiles and tiles > 1 and size and patch):
        return
    _set(cfg, "image_size", min(size, 4 * patch))
    if (_int(cfg, "num_global_layers") or 0) > 2:
        _set(cfg, "num_global_layers", 2)


def _tied_vision_widths(cfg) -> None:
    """Vision-tower fields tied to the shrunk widths, by field name: a compound-scaled conv net (``width_coefficient``
    × per-stage ``out_channels``): the width multiplier that makes its last stage the benchmark width (32, the width
    a parent's projection is shrunk to) and depth multiplier 1; a pixel-shuffle adapter (``pixel_shuffle_ratio``
    with ``projector_input_dim``): its MLP reads hidden / ratio² features as ``intermediate_size``, projector
    widths at the benchmark width; a VQ autoencoder's latent grid (``num_patches`` per side with
    ``channel_multiplier`` levels, no ``image_size``): 2 latents per side (the probe's images follow from it)."""
    width = _WIDTH["hidden_size"]
    outs = getattr(cfg, "out_channels", None)
    if (isinstance(getattr(cfg, "width_coefficient", None), float) and isinstance(outs, (list, tuple)) and outs
            and all(isinstance(x, int) and x > 0 for x in outs)):
        with contextlib.suppress(Exception):  # a head width the default scales with the multiplier (EfficientNet's
            default = type(cfg)()  # hidden_dim = 1280 × width_coefficient): scaled with it
            if _int(default, "hidden_dim") and isinstance(default.width_coefficient, float) and _int(cfg, "hidden_dim"):
                _set(cfg, "hidden_dim", round(default.hidden_dim * width / outs[-1] / default.width_coefficient))
        _set(cfg, "width_coefficient", width / outs[-1])
        if isinstance(getattr(cfg, "depth_coefficient", None), float):
            _set(cfg, "depth_coefficient", min(cfg.depth_coefficient, 1.0))
    ratio, hidden = getattr(cfg, "pixel_shuffle_ratio", None), _int(cfg, "hidden_size")
    if isinstance(ratio, float) and 0 < ratio < 1 and hidden and _int(cfg, "projector_input_dim"):
        _set(cfg, "intermediate_size", round(hidden / ratio ** 2))
        for k in ("projector_input_dim", "projector_output_dim"):
            if _int(cfg, k):
                _set(cfg, k, width)
    if _int(cfg, "num_patches") and isinstance(getattr(cfg, "channel_multiplier", None), (list, tuple)) and (
            getattr(cfg, "image_size", None) is None):
        _set(cfg, "num_patches", min(cfg.num_patches, 2))


def _take_layers(cfg):
    """A heterogeneous config's per-layer overrides (``per_layer_config``: Gemma 4's head_dim on its full-attention
    layers, Dots3's heads on its sliding-window layers), taken off the config so that its fields read as the global
    values (with them on, reading a per-layer field raises); returned with an unshrunk copy of the config, None for
    a homogeneous config."""
    spec = vars(cfg).pop("_heterogeneity_spec", None)
    return None if spec is None else (copy.deepcopy(cfg), copy.deepcopy(spec.per_layer_overrides))


def _put_layers(cfg, layers, shrink) -> None:
    """The per-layer overrides of `_take_layers` back on the (shrunk) config, each layer shrunk as a config of its
    own: the unshrunk config with the layer's overrides, shrunk by `shrink` (the same rules as the global config), its
    values of the overridden fields the layer's new overrides; layers beyond the shrunk depth dropped, overrides equal
    to the shrunk global value dropped (by the config's own per_layer_config setter)."""
    if layers is None:
        return
    unshrunk, overrides = layers
    depth, new = _int(cfg, "num_hidden_layers"), {}
    for i, over in overrides.items():
        if depth and i >= depth:
            continue
        layer = copy.deepcopy(unshrunk)
        for k, v in over.items():
            if k != "skip":
                _set(layer, k, v)
        shrink(layer)
        new[i] = {k: v if k == "skip" else getattr(layer, k) for k, v in over.items()}
    cfg.per_layer_config = new


# a timm tower inside a composite config (a TimmWrapperConfig: `architecture` + `model_args`, the arguments of
# timm.create_model): a small ViT of its architecture, 32 px (the probe reads img_size from model_args)
_TIMM_SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 16}


def _timm_tower(cfg) -> None:
    """A nested timm tower's `model_args` made small (`_TIMM_SMALL`, over its own) where timm builds its
    architecture with them (checked on the meta device); left as it is otherwise (a CNN that takes no depth). A
    top-level timm_wrapper model is not changed."""
    arch, args = getattr(cfg, "architecture", None), getattr(cfg, "model_args", False)
    if not isinstance(arch, str) or not (args is None or isinstance(args, dict)):
        return
    new = {**(args or {}), **_TIMM_SMALL}
    try:
        import timm
        import torch
        with torch.device("meta"):
            timm.create_model(arch, pretrained=False, num_classes=0, **new)
    except Exception:  # noqa: BLE001 - an architecture without these arguments
        return
    _set(cfg, "model_args", new)


def _from_backbone(cfg) -> None:
    """Fields of a config derived from its shrunk backbone (after the sub-configs are shrunk)."""
    # a detection transformer's encoder reads the backbone's stages at out_indices and feeds its own width to the
    # decoder (RT-DETR, D-FINE): encoder_in_channels / decoder_in_channels derived from the shrunk widths
    bb, enc_in = getattr(cfg, "backbone_config", None), getattr(cfg, "encoder_in_channels", None)
    _stage_widths_tied(bb)
    idx = getattr(bb, "out_indices", None)
    widths = getattr(bb, "stage_out_channels", None) or getattr(bb, "hidden_sizes", None)
    if (isinstance(enc_in, (list, tuple)) and isinstance(idx, (list, tuple)) and isinstance(widths, (list, tuple))
            and len(idx) >= len(enc_in) and all(0 < i <= len(widths) for i in idx)):  # the deepest stages
        _set(cfg, "encoder_in_channels", type(enc_in)(widths[i - 1] for i in idx[len(idx) - len(enc_in):]))
    dec_in, enc_w = getattr(cfg, "decoder_in_channels", None), _int(cfg, "encoder_hidden_dim")
    if isinstance(dec_in, (list, tuple)) and enc_w:
        _set(cfg, "decoder_in_channels", type(dec_in)(enc_w for _ in dec_in))
    _timm_backbone_channels(cfg)


def _timm_backbone_channels(cfg) -> None:
    """A neck's per-level input widths (``backbone_channel_list``) from the timm backbone its config names
    (``backbone_config.architecture`` with ``model_args``, features_only): the widths timm's feature extractor gives at
    those out_indices, in the list's order (deepest first where the list decreases). The defaults of a config can name
    another backbone than the one its channel list was written for (EdgeTAM's: a ResNet-50 feeding a neck for
    RepViT's widths)."""
    chans, bb = getattr(cfg, "backbone_channel_list", None), getattr(cfg, "backbone_config", None)
    arch, args = getattr(bb, "architecture", None), getattr(bb, "model_args", None)
    if not (isinstance(chans, (list, tuple)) and len(chans) > 1 and isinstance(arch, str)
            and isinstance(args, dict) and args.get("features_only")):
        return
    try:
        import timm
        import torch
        with torch.device("meta"):
            widths = list(timm.create_model(arch, pretrained=False, **args).feature_info.channels())
    except Exception:  # noqa: BLE001 - not a timm name, or arguments timm does not take: left as it is
        return
    if len(widths) == len(chans) and widths != list(chans):
        _set(cfg, "backbone_channel_list", type(chans)(widths[::-1] if chans[0] > chans[-1] else widths))


def _sibling_widths(cfg, before, seen=None) -> None:
    """Widths one sub-config of a composite hands to another, kept equal after shrinking (`before`: the config before
    `_shrink`; sub-configs of sub-configs too). A tower's ``output_channels`` that equalled a sibling's hidden_size
    before shrinking takes the sibling's shrunk hidden size (the width its decoder reads: SAM-HQ's vision neck and
    mask decoder), with the tower's ``num_pos_feats`` (positional features added at that width) scaled alike; a
    sibling's ``*_dim`` field that equalled the tower's hidden_size before shrinking and that the shrink left as it
    was (SAM-HQ's ``vit_dim``) takes the tower's shrunk hidden size."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    subs = [(v, getattr(before, k, None)) for k, v in vars(cfg).items() if _is_config(v)]
    subs = [(s, b) for s, b in subs if _is_config(b)]
    for s, b in subs:
        old_out, old_w, w = _int(b, "output_channels"), _int(b, "hidden_size"), _int(s, "hidden_size")
        for t, tb in subs:
            if t is s:
                continue
            old_t, new_t = _int(tb, "hidden_size"), _int(t, "hidden_size")
            if old_out and _int(s, "output_channels") == old_out == old_t and new_t and new_t != old_out:
                _set(s, "output_channels", new_t)
                if _int(s, "num_pos_feats"):
                    _set(s, "num_pos_feats", max(1, s.num_pos_feats * new_t // old_out))
            for k, v in list(vars(t).items()):
                if (k.endswith("_dim") and isinstance(v, int) and not isinstance(v, bool) and old_w and w
                        and v == old_w == getattr(tb, k, None) and w != old_w):
                    _set(t, k, w)
        _sibling_widths(s, b, seen)


def _sibling_width_lists(cfg, before) -> None:
    """A list of widths on one sub-config of a composite whose last entry is the width it hands a sibling (the
    sibling's ``hidden_size`` before shrinking; DeepSeek-OCR-2's SAM ``downsample_channels`` ending in its encoder's
    width) and that shrinking left as it was: the list scaled so that it ends in the sibling's shrunk hidden size
    (in place; sub-configs of sub-configs too)."""
    for c, b in _configs_with(cfg, before):
        subs = [(v, vars(b).get(k)) for k, v in vars(c).items() if _is_config(v)]
        subs = [(s, sb) for s, sb in subs if _is_config(sb)]
        for s, sb in subs:
            for k, v in list(vars(s).items()):
                if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    and x > 0 for x in v)) or v != vars(sb).get(k):
                    continue
                for t, tb in subs:
                    old, new = _int(tb, "hidden_size"), _int(t, "hidden_size")
                    if t is not s and old and new and new < old and v[-1] == old:
                        _set(s, k, type(v)(max(1, x * new // old) for x in v))
                        break


def _twin_features(cfg, before) -> None:
    """A ``*_features`` width on a config that equalled one of its prefixed width fields before shrinking (a
    ``_PREFIXED`` width such as ``fusion_hidden_size``, which `_shrink` shrank) and that shrinking left as it was
    (ZoeDepth's ``bottleneck_features``, the fused map's channels): set to that field's shrunk value (in place; the
    config and its sub-configs)."""
    for c, b in _configs_with(cfg, before):
        for k, v in list(vars(c).items()):
            if not (k.endswith("_features") and _int(c, k) and v == vars(b).get(k)):
                continue
            for f, old in vars(b).items():
                new = _int(c, f)
                if (f != k and new and isinstance(old, int) and old == v and new < old
                        and _PREFIXED[0][0].search(f)):
                    _set(c, k, new)
                    break


def _parent_dims(cfg, before) -> None:
    """A sub-config's ``*_dim`` width that equalled its parent config's ``hidden_size`` before shrinking and that
    shrinking left as it was (the width the sub-model hands its parent: SuperGlue's keypoint detector's
    ``descriptor_decoder_dim``, the descriptors its GNN reads at ``hidden_size``): set to the parent's shrunk hidden
    size (in place; every level of nesting)."""
    for c, b in _configs_with(cfg, before):
        old, new = _int(b, "hidden_size"), _int(c, "hidden_size")
        if not (old and new and new < old):
            continue
        for k, sub in vars(c).items():
            sb = vars(b).get(k)
            if not (_is_config(sub) and _is_config(sb)):
                continue
            for f in list(vars(sub)):
                if f.endswith("_dim") and f not in _TABLE_KEYS and _int(sub, f) == old and vars(sb).get(f) == old:
                    _set(sub, f, new)


def _configs_with(cfg, before) -> list[tuple]:
    """(config, its state before shrinking) for the config and its nested sub-configs, breadth first."""
    out, level = [], [(cfg, before)]
    while level:
        out += level
        level = [(v, getattr(b, k, None)) for c, b in level for k, v in vars(c).items()
                 if _is_config(v) and _is_config(getattr(b, k, None)) and all(v is not o for o, _ in out)]
    return out


def _feature_sizes(cfg, before) -> None:
    """Feature-map sizes a config states for its backbone's levels (``backbone_feature_sizes``: [[h, w], ...], the
    maps at 1/4, 1/8, 1/16 of a 1024-px image) scaled with the image size that `_shrink` quartered on the same config
    or a sub-config of the same composite (SAM2's Hiera and prompt encoder, EdgeTAM's prompt encoder)."""
    pairs = _configs_with(cfg, before)
    ratios = set()
    for c, b in pairs:
        new, old = getattr(c, "image_size", None), getattr(b, "image_size", None)
        new, old = (new[0] if isinstance(new, (list, tuple)) and new else new), (
            old[0] if isinstance(old, (list, tuple)) and old else old)
        if isinstance(new, int) and isinstance(old, int) and 0 < new < old and old % new == 0:
            ratios.add(old // new)
    if len(ratios) != 1:
        return
    r = ratios.pop()
    for c, b in pairs:
        for k, v in list(vars(c).items()):
            if (k.endswith("feature_sizes") and isinstance(v, (list, tuple)) and v and v == getattr(b, k, None)
                    and all(isinstance(x, (list, tuple)) and all(isinstance(y, int) for y in x) for x in v)):
                _set(c, k, type(v)(type(x)(max(1, y // r) for y in x) for x in v))


def _timm_backbone_levels(cfg, before) -> None:
    """A timm backbone's levels (``model_args.out_indices``) where the composite's image size and the feature sizes
    its config states (`before` shrinking) put them: the first stated size at image / reduction, so the levels are
    the consecutive timm levels from that reduction, as many as the neck's ``backbone_channel_list`` (whose widths
    follow). EdgeTAM's ResNet-50 (reductions 2 ... 32) for a neck written for RepViT's 1/4 ... 1/32 levels: out_indices
    1-4, not 0-3, or the maps do not meet the prompt encoder's 1/16 grid."""
    pairs = _configs_with(cfg, before)
    images = {x for _, b in pairs for x in [getattr(b, "image_size", None)] if isinstance(x, int) and x > 0}
    if len(images) != 1:
        return
    image = images.pop()
    for c, b in pairs:
        chans, sizes, bb = (getattr(c, "backbone_channel_list", None), getattr(b, "backbone_feature_sizes", None),
                            getattr(c, "backbone_config", None))
        arch, args = getattr(bb, "architecture", None), getattr(bb, "model_args", None)
        if not (isinstance(chans, (list, tuple)) and isinstance(sizes, (list, tuple)) and sizes and isinstance(
                sizes[0], (list, tuple)) and isinstance(arch, str) and isinstance(args, dict)
                and args.get("features_only") and "out_indices" in args):
            continue
        try:
            import timm
            import torch
            with torch.device("meta"):
                info = timm.create_model(arch, pretrained=False, **{k: v for k, v in args.items()
                                                                   if k != "out_indices"}).feature_info
            reductions, widths = list(info.reduction()), list(info.channels())
        except Exception:  # noqa: BLE001 - not a timm name, or arguments timm does not take
            continue
        r0 = image // int(sizes[0][0])
        if r0 not in reductions:
            continue
        first = reductions.index(r0)
        idx = list(range(first, first + len(chans)))
        if idx[-1] >= len(reductions) or [image // reductions[i] for i in idx[:len(sizes)]] != [
                int(s[0]) for s in sizes[:len(idx)]]:
            continue
        _set(bb, "model_args", {**args, "out_indices": type(args["out_indices"])(idx)})
        ws = [widths[i] for i in idx]
        _set(c, "backbone_channel_list", type(chans)(ws[::-1] if chans[0] > chans[-1] else ws))


def _stage_widths_tied(bb) -> None:
    """A backbone config that builds its stages from ``stage_out_channels`` (not shrunk: its in / mid / out channel
    lists are chained) but reports its output widths to the parent from ``hidden_sizes`` (HGNetV2's feature
    channels, which D-FINE's input projections are built from): hidden_sizes set to the stage widths again, so the
    reported widths are the ones the stages output."""
    outs, sizes = getattr(bb, "stage_out_channels", None), getattr(bb, "hidden_sizes", None)
    if (isinstance(outs, (list, tuple)) and isinstance(sizes, (list, tuple)) and len(outs) == len(sizes)
            and all(isinstance(x, int) for x in outs) and list(outs) != list(sizes)):
        _set(bb, "hidden_sizes", type(sizes)(outs))


_TABLE_KEYS = {*_WIDTH, *_DEPTH, *_HEADS, *_FFN}


def _is_config(v) -> bool:
    return hasattr(v, "to_dict") and hasattr(v, "model_type")


def _fields(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_") and not _is_config(v)}


@contextlib.contextmanager
def _no_class_validators(cls):
    """The class-level checks of a config class (a strict dataclass's `__class_validators__`, run at the end of
    __init__) off for a while: the in-place shrinking path does not run them either (only field types are checked on
    assignment), and a construction from the shrunk fields alone fails them (54 layer types for 2 layers)."""
    saved = [(c, c.__dict__["__class_validators__"]) for c in cls.__mro__ if "__class_validators__" in c.__dict__]
    try:
        for c, _ in saved:
            c.__class_validators__ = []
        yield
    finally:
        for c, v in saved:
            c.__class_validators__ = v


def _rederive(cfg, before, seen=None) -> None:
    """Fields a config class derives in its __init__ from the ones `_shrink` changed (Zamba2's attention_head_dim
    = 2 * hidden / heads and attention_hidden_size = 2 * hidden, a composite's fields set on its sub-configs: BLT's
    encoder_cross_output_size) computed again by the class itself, sub-configs first. `before`: the config as it was
    before shrinking. The derived fields are found on the class: those that differ between its default construction
    and a construction with only the shrunk table fields (_WIDTH, _DEPTH, _HEADS, _FFN); the config is then built from
    all its fields but those (sub-configs: the shrunk ones), and the derived fields, with what its __init__ sets on
    its sub-configs (where `_shrink` did not set them), are copied back. Where a construction raises, the config
    stays as it is."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen or type(cfg) is not type(before):
        return
    seen.add(id(cfg))
    subs = {k: v for k, v in vars(cfg).items() if _is_config(v) and _is_config(getattr(before, k, None))}
    for k, sub in subs.items():
        _rederive(sub, getattr(before, k), seen)
    old, cur = _fields(before), _fields(cfg)
    changed = {k for k, v in cur.items() if k not in old or old[k] != v}
    if not changed and all(_fields(sub) == _fields(getattr(before, k)) for k, sub in subs.items()):
        return
    primary = {k: cur[k] for k in changed if k in _TABLE_KEYS}
    cls = type(cfg)
    try:
        with _no_class_validators(cls):
            base, moved = _fields(cls()), _fields(cls(**copy.deepcopy(primary)))
    except Exception:  # noqa: BLE001 - a class that needs arguments or rejects the shrunk fields alone
        return
    derived = [k for k in cur if k not in primary and k in moved and base.get(k) != moved[k]]
    kwargs = {k: copy.deepcopy(v) for k, v in vars(cfg).items() if not k.startswith("_") and k not in derived}
    try:
        with _no_class_validators(cls):
            new_cfg = cls(**kwargs)
    except Exception:  # noqa: BLE001
        return
    new = _fields(new_cfg)
    for k in derived:
        if k in new and new[k] != cur[k]:
            _set(cfg, k, new[k])
    for k, sub in subs.items():  # what the composite's __init__ sets on its sub-configs
        new_sub, old_sub = getattr(new_cfg, k, None), _fields(getattr(before, k))
        if type(new_sub) is not type(sub):
            continue
        mine = _fields(sub)
        for f, v in _fields(new_sub).items():
            if f in mine and mine[f] != v and old_sub.get(f) == mine[f]:
                _set(sub, f, v)


def _source_fields(cfg, before, seen=None) -> None:
    """Fields from which a config class derives a shrunk table field in its __init__ (LightGlue's hidden_size =
    descriptor_dim), shrunk with it, sub-configs first: an int field, not itself a table field, that equalled the
    table field before shrinking and from which the class, built with it at the shrunk value, sets the table field
    to that value (its default build keeping the old one). Where a construction raises, nothing changes."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen or type(cfg) is not type(before):
        return
    seen.add(id(cfg))
    for k, sub in vars(cfg).items():
        if _is_config(sub) and _is_config(getattr(before, k, None)):
            _source_fields(sub, getattr(before, k), seen)
    old, cur = _fields(before), _fields(cfg)
    shrunk = {k: v for k, v in cur.items() if k in _TABLE_KEYS and _int(cfg, k) and old.get(k) != v}
    cls = type(cfg)
    for k, v in shrunk.items():
        for f, w in old.items():
            if f in _TABLE_KEYS or f == k or w != old[k] or cur.get(f) != w or not _int(before, f):
                continue
            try:
                with _no_class_validators(cls):
                    if getattr(cls(), k, None) == old[k] and getattr(cls(**{f: v}), k, None) == v:
                        _set(cfg, f, v)
            except Exception:  # noqa: BLE001 - a class that needs arguments or rejects the value
                continue


def _stage_doubled_widths(cfg, before) -> None:
    """A hierarchical tower's output width (a ``_WIDTH`` field, ``hidden_size``) that before shrinking was another
    prefixed width field of the same config (``<prefix>_hidden_size`` / ``<prefix>_embed_dim``, not itself a
    ``_WIDTH`` field: the first stage's) doubled at each stage after the first (× 2^(len(depths) - 1): CLAP's audio
    Swin, whose projection reads hidden_size while its last stage outputs patch_embeds_hidden_size × 8), kept so
    after shrinking (in place; sub-configs too). Towers whose first-stage width is a ``_WIDTH`` field (Swin's
    embed_dim) are left as they are."""
    for c, b in _configs_with(cfg, before):
        depths = getattr(b, "depths", None)
        if not (isinstance(depths, (list, tuple)) and len(depths) > 1):
            continue
        r = 2 ** (len(depths) - 1)
        for f in _WIDTH:
            old, new = _int(b, f), _int(c, f)
            if not old or not new or f in (getattr(c, "attribute_map", {}) or {}):
                continue
            for g in vars(b):
                first, now = _int(b, g), _int(c, g)
                if g not in _WIDTH and re.search(r"hidden_size|embed_dim", g) and first and now and old == first * r:
                    if new != now * r:
                        _set(c, f, now * r)
                    break


def _width_sums(cfg, before, seen=None) -> None:
    """A field whose default is the sum of the config's and one sub-config's ``hidden_size`` (a codec's
    quantization_dim over its acoustic and semantic encoders' concatenated features) set to the sum of the shrunk
    widths, where shrinking left it as it was (in place; sub-configs too)."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen or type(cfg) is not type(before):
        return
    seen.add(id(cfg))
    subs = {k: v for k, v in vars(cfg).items() if _is_config(v) and _is_config(getattr(before, k, None))}
    own, own0 = _int(cfg, "hidden_size"), _int(before, "hidden_size")
    for name, sub in subs.items():
        w, w0 = _int(sub, "hidden_size"), _int(getattr(before, name), "hidden_size")
        if own and own0 and w and w0 and (own, w) != (own0, w0):
            for k, v in _fields(cfg).items():
                if k not in _TABLE_KEYS and _int(cfg, k) and v == own0 + w0 and getattr(before, k, None) == v:
                    _set(cfg, k, own + w)
    for name, sub in subs.items():
        _width_sums(sub, getattr(before, name), seen)


_CHANNEL_FIELD = re.compile(r"_channels?$")


def _channel_widths(cfg, before) -> None:
    """A channel count (a field ending in ``_channel`` / ``_channels``) whose default is the config's default
    ``hidden_size`` set to the shrunk hidden size, where shrinking left it as it was (Phi-4-multimodal's audio
    encoder: its convolution module's ``ext_pw_out_channel`` / ``depthwise_separable_out_channel`` and its
    subsampler's ``nemo_conv_channels`` are the model width) (in place; sub-configs too)."""
    for c, b in _configs_with(cfg, before):
        own, own0 = _int(c, "hidden_size"), _int(b, "hidden_size")
        if type(c) is not type(b) or not (own and own0 and own != own0):
            continue
        for k, v in _fields(c).items():
            if (_CHANNEL_FIELD.search(k) and k not in _TABLE_KEYS and _int(c, k) and v == own0
                    and getattr(b, k, None) == v):
                _set(c, k, own)


_PER_BLOCK = re.compile(r"^num_\w+_per_block$")  # layers repeated inside each block: a depth
_LATENT_WIDTH = re.compile(r"^d_latents?$")  # the width of a latent array (Perceiver's d_latents)


def _latent_sizes(cfg) -> None:
    """A latent-array model's own depth and width fields, which the tables do not name: ``num_<x>_per_block``
    (Perceiver's num_self_attends_per_block, 26 self-attention layers per block) at most 2, ``d_latents`` (its
    latent width, 1280) at most the small width 32 (in place; sub-configs too)."""
    for c, _ in _configs_with(cfg, cfg):  # the config and every nested one
        for k, v in _fields(c).items():
            if _int(c, k) and _PER_BLOCK.search(k) and v > 2:
                _set(c, k, 2)
            elif _int(c, k) and _LATENT_WIDTH.search(k) and v > 32:
                _set(c, k, 32)


_LAYER_INDICES = re.compile(r"layers?_ind(ices|exes)$")


def _layer_indices(cfg, before, seen=None) -> None:
    """A list of layer indices whose outputs the model collects (``intermediate_layers_indices``: a name ending in
    ``layer(s)_indices``, 0-based) that names layers beyond the shrunk depth (``num_hidden_layers``): each index
    scaled to the shrunk depth (same count, so widths derived from the count stay as they were; indices may repeat),
    in place and on sub-configs too."""
    seen = seen if seen is not None else set()
    if id(cfg) in seen or type(cfg) is not type(before):
        return
    seen.add(id(cfg))
    depth, depth0 = _int(cfg, "num_hidden_layers"), _int(before, "num_hidden_layers")
    for k, v in _fields(cfg).items():
        if (depth and depth0 and _LAYER_INDICES.search(k) and isinstance(v, (list, tuple)) and v
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v) and max(v) >= depth):
            _set(cfg, k, type(v)(min(depth - 1, round(i * (depth - 1) / max(1, depth0 - 1))) for i in v))
    for name, sub in vars(cfg).items():
        if _is_config(sub) and _is_config(getattr(before, name, None)):
            _layer_indices(sub, getattr(before, name), seen)


def _tiles(cfg, before) -> None:
    """A config that cuts each image into tiles of its ``patch_size`` pixels for sub-models whose ``image_size`` is
    that tile size (DepthPro): the tile size set to 4 of the sub-models' patches a side, on the config and the
    sub-configs alike, and the sub-model layers it hooks (``*_hook_ids``, 0-based) scaled into their shrunk depth
    (in place)."""
    tile = _int(cfg, "patch_size")
    subs = [v for v in vars(cfg).values() if _is_config(v) and _int(v, "image_size") == tile]
    if not tile or not subs:
        return
    p = max(_int(v, "patch_size") or 1 for v in subs)
    if tile > 4 * p:
        _set(cfg, "patch_size", 4 * p)
        for v in subs:
            _set(v, "image_size", 4 * p)
    depth = min(_int(v, "num_hidden_layers") or 0 for v in subs)
    depth0 = max((_int(v, "num_hidden_layers") or 0 for v in vars(before).values() if _is_config(v)), default=0)
    for k, v in _fields(cfg).items():
        if (k.endswith("hook_ids") and depth and depth0 and isinstance(v, (list, tuple)) and v
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v) and max(v) >= depth):
            _set(cfg, k, type(v)(min(depth - 1, round(i * (depth - 1) / max(1, depth0 - 1))) for i in v))



_EXPERTS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
_EXPERT_GROUPS = ("n_group", "num_expert_group")


def _default_ties(cfg, before) -> None:
    """Ties between fields that held in the default config (`before`) and that shrinking broke, restored on the
    config and its sub-configs (in place): a state-space mixer's heads × head width = expand × hidden width (Mamba-2's
    ``num_heads`` × ``head_dim`` = ``expand`` × ``hidden_size``: the heads recomputed at the shrunk head width, its
    B/C ``n_groups`` a divisor of them); a multi-head latent attention's ``head_dim`` that was its whole query-key
    head (``qk_nope_head_dim`` + ``qk_rope_head_dim``, rotated in part by ``partial_rotary_factor``: Mistral-4) rather
    than its rotary part (`_consistent`'s default); routed-expert groups (``n_group`` / ``num_expert_group``, with
    ``topk_group``) that divide the shrunk expert count into groups of at least 2 (the router takes each group's top
    2); and a sliding window left unset (None) on a config that has other sliding-attention fields (its model builds
    a sliding mask whatever its layer types): the whole ``max_position_embeddings``, so the mask is the causal one."""
    for c, b in _configs_with(cfg, before):
        hidden, heads, width, expand = (_int(c, k) for k in ("hidden_size", "num_heads", "head_dim", "expand"))
        h0, n0, w0, e0 = (_int(b, k) or 0 for k in ("hidden_size", "num_heads", "head_dim", "expand"))
        if hidden and heads and width and expand and "num_heads" in vars(c) and n0 * w0 == e0 * h0 > 0 and (
                heads * width != expand * hidden and expand * hidden % width == 0):
            _set(c, "num_heads", expand * hidden // width)
            groups = _int(c, "n_groups")
            if groups and c.num_heads % groups:
                _set(c, "n_groups", math.gcd(groups, c.num_heads))
        rope, nope = _int(c, "qk_rope_head_dim"), _int(c, "qk_nope_head_dim")
        r0, q0 = _int(b, "qk_rope_head_dim") or 0, _int(b, "qk_nope_head_dim") or 0
        if rope and nope and "head_dim" in vars(c) and r0 and q0 and _int(b, "head_dim") == r0 + q0:
            _set(c, "head_dim", rope + nope)
        experts = next((_int(c, k) for k in _EXPERTS if _int(c, k)), None)
        for k in _EXPERT_GROUPS:
            groups = _int(c, k)
            if experts and groups and (experts % groups or experts // groups < 2):
                new = max(g for g in range(1, max(1, experts // 2) + 1) if experts % g == 0 and experts // g >= 2)
                _set(c, k, new)
                if _int(c, "topk_group"):
                    _set(c, "topk_group", max(1, min(c.topk_group, new * c.topk_group // groups)))
        sliding = [k for k in vars(c) if "sliding" in k and k not in ("sliding_window", "use_sliding_window")]
        if "sliding_window" in vars(c) and c.sliding_window is None and sliding and _int(
                c, "max_position_embeddings"):
            _set(c, "sliding_window", c.max_position_embeddings)


_MROPE_FALLBACK = re.compile(r"get\(\s*[\"']mrope_section[\"']\s*,\s*\[([\d,\s]+)\]\s*\)")


def _mrope_fallback(cfg, before) -> None:
    """M-RoPE sections that `_consistent` set on a config whose default names none (a scaled [16, 24, 24]), set
    instead to the sections its modeling code falls back to (``rope_parameters.get("mrope_section", [22, 22, 20])``
    in the source of the config's modeling module: Ernie-4.5-VL's, which stacks the first two sections, so they must
    stay equal) scaled to the same sum, where that scaling keeps the fallback's equal sections equal and the
    `_consistent` sections do not (in place; sub-configs too)."""
    import importlib.util
    for c, b in _configs_with(cfg, before):
        rp, rp0 = getattr(c, "rope_parameters", None), getattr(b, "rope_parameters", None)
        sec = rp.get("mrope_section") if isinstance(rp, dict) else None
        if not isinstance(sec, (list, tuple)) or not isinstance(rp0, dict) or "mrope_section" in rp0:
            continue
        try:
            spec = importlib.util.find_spec(type(c).__module__.replace(".configuration_", ".modeling_"))
            m = _MROPE_FALLBACK.search(Path(spec.origin).read_text()) if spec and spec.origin else None
        except (ImportError, OSError, ValueError):
            m = None
        fallback = [int(x) for x in m.group(1).split(",") if x.strip()] if m else []
        if len(fallback) != len(sec) or not sum(fallback):
            continue
        total = sum(sec)
        exact = [x * total / sum(fallback) for x in fallback]
        new = [int(x) for x in exact]
        for i in sorted(range(len(new)), key=lambda i: new[i] - exact[i])[:total - sum(new)]:
            new[i] += 1
        n = len(fallback)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if fallback[i] == fallback[j]]
        if min(new) > 0 and all(new[i] == new[j] for i, j in pairs) and any(sec[i] != sec[j] for i, j in pairs):
            rp["mrope_section"] = type(sec)(new)

def _int(cfg, k):
    try:
        v = getattr(cfg, k, None)
    except Exception:  # noqa: BLE001 - a heterogeneous config refuses a per-layer field globally (Gemma 4's head_dim)
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _consistent(cfg, kv_heads: int | None = 1) -> None:
    """Fields derived from the shrunk ones, which a config computes once in its __init__: key/value heads (kv_heads,
    None: = heads),
    head_dim = hidden / heads (MLA: the rope part), Mamba heads x head size = expand x hidden, M-RoPE sections
    summing to head_dim / 2."""
    heads, hidden = _int(cfg, "num_attention_heads"), _int(cfg, "hidden_size")
    if heads:
        for k in _KV_HEADS:
            if k in vars(cfg) and (getattr(cfg, k) is None or _int(cfg, k)):
                _set(cfg, k, min(kv_heads or heads, heads))
    rope, nope = _int(cfg, "qk_rope_head_dim"), _int(cfg, "qk_nope_head_dim")
    if rope:  # multi-head latent attention: head_dim is the rotary part, qk_head_dim = nope + rope
        if "head_dim" in vars(cfg):
            _set(cfg, "head_dim", rope)
        if "qk_head_dim" in vars(cfg):
            _set(cfg, "qk_head_dim", rope + (nope or 0))
    elif heads and hidden and "head_dim" in vars(cfg):
        _set(cfg, "head_dim", hidden // heads)
    if _int(cfg, "mamba_n_heads") and hidden:
        d_head = min(_int(cfg, "mamba_d_head") or 16, 16)
        _set(cfg, "mamba_d_head", d_head)
        _set(cfg, "mamba_n_heads", max(1, (_int(cfg, "mamba_expand") or 2) * hidden // d_head))
    if "num_experts_per_tok" in vars(cfg) and cfg.num_experts_per_tok is None and (
            _int(cfg, "n_routed_experts") or _int(cfg, "num_experts")):
        _set(cfg, "num_experts_per_tok", 2)
    head_dim = _int(cfg, "head_dim") or (hidden // heads if heads and hidden else None)
    for k in ("rope_parameters", "rope_scaling"):
        rp = getattr(cfg, k, None)
        sec = rp.get("mrope_section") if isinstance(rp, dict) else None
        partial = (rp.get("partial_rotary_factor") if isinstance(rp, dict) else None) or getattr(
            cfg, "partial_rotary_factor", None)
        rot = head_dim  # M-RoPE sections split the rotary part of a head
        if rot and isinstance(partial, float) and 0 < partial < 1:
            rot = int(rot * partial)
        if isinstance(rp, dict) and sec is None and _MROPE_TYPES.search(str(getattr(cfg, "model_type", ""))):
            sec = [16, 24, 24]  # the modeling code's default, for a head_dim of 128
        if rot and isinstance(sec, (list, tuple)) and sec and sum(sec) != rot // 2:
            half = rot // 2
            new = [max(1, x * half // sum(sec)) for x in sec]
            new[0] += half - sum(new)
            rp["mrope_section"] = type(sec)(new)
    # a backbone whose outputs are taken at layers beyond the shrunk depth (a ViT backbone of a depth or detection
    # model, out_indices [2, 5, 8, 11]): the same number of outputs at the last layers of a depth that has them
    idx, depth, names = getattr(cfg, "out_indices", None), _int(cfg, "num_hidden_layers"), getattr(
        cfg, "stage_names", None)
    stages = getattr(cfg, "depths", None)
    if (isinstance(idx, (list, tuple)) and idx and depth and isinstance(names, list) and names
            and names[0] == "stem" and max(idx) > depth and not isinstance(stages, (list, tuple))):
        # (a stage of a hierarchical backbone with `depths`, Swin's, is not a layer: its stages stay as they are)
        n = max(depth, len(idx))
        _set(cfg, "num_hidden_layers", n)
        _set(cfg, "stage_names", ["stem"] + [f"stage{i}" for i in range(1, n + 1)])
        _set(cfg, "out_indices", list(range(n - len(idx) + 1, n + 1)))
    _last_layers(cfg)


def _last_layers(cfg) -> None:
    """A count of the last layers that do something more (``num_blocks``: EoMT's layers that take the queries and
    predict masks) no larger than the shrunk depth (``num_hidden_layers``): with more, the queries are never added."""
    depth, n = _int(cfg, "num_hidden_layers"), _int(cfg, "num_blocks")
    if depth and n and n > depth and "num_blocks" not in (getattr(cfg, "attribute_map", {}) or {}):
        _set(cfg, "num_blocks", depth)


# a model at the benchmark's small config that fails to build or run is retried at these levels: widths kept, only
# the depth shrunk, then the model type's default config, where that has at most _MAX_PARAMS parameters
_LEVELS = ("small", "small-kv", "shallow", "default", "small-heads")  # small-kv: as many key/value heads as query
# heads; small-heads (last: a model another level runs keeps that level): the default head counts (`_default_heads`)
_MAX_PARAMS = 200_000_000


def _default_heads(cfg, before) -> None:
    """The small config with each (sub-)config's default attention-head counts (`before`: the config before
    shrinking) and its widths grown with them, so the head width stays the small one: widths (``_WIDTH`` fields) ×
    default / small heads (at most their defaults), key/value heads = heads, head_dim recomputed (`_consistent`). For
    a forward that splits heads into a fixed number of groups the shrunk head count does not divide (CodeGen's
    qkv in 4 model-parallel groups): a last retry level, after the default config."""
    for c, b in _configs_with(cfg, before):
        heads = [k for k in _HEADS if k not in _KV_HEADS and _int(c, k) and _int(b, k) and _int(b, k) > _int(c, k)]
        if not heads:
            continue
        r = max(_int(b, k) // _int(c, k) for k in heads)
        for k in heads:
            _set(c, k, _int(b, k))
        aliases = getattr(c, "attribute_map", {}) or {}
        for k in _WIDTH:
            if k not in aliases and _int(c, k) and _int(b, k) and _int(c, k) < _int(b, k):
                _set(c, k, min(_int(c, k) * r, _int(b, k)))
        _consistent(c, None)


def _shallow(cfg, seen=None) -> None:
    seen = seen if seen is not None else set()
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    layers = _take_layers(cfg)
    aliases = getattr(cfg, "attribute_map", {}) or {}
    for k, v in {**_DEPTH, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4}.items():
        cur = getattr(cfg, k, None)
        if k not in aliases and isinstance(cur, int) and not isinstance(cur, bool) and cur > v:
            _set(cfg, k, v)
    _put_layers(cfg, layers, _shallow)
    for sub in list(vars(cfg).values()):
        if hasattr(sub, "to_dict") and hasattr(sub, "model_type"):
            _shallow(sub, seen)


def _placeholder_token(cfg) -> None:
    """A config whose forward scatters a Q-Former's queries (``num_query_tokens``) into image placeholder tokens but
    that leaves the placeholder id unset (``image_token_id`` None: Blip-2's default, whose forward cannot run without
    one) gets the last id of its text vocabulary (in place; a config that sets it keeps its own); likewise an unset
    video placeholder id (``video_token_id``: InstructBlipVideo's)."""
    text = getattr(cfg, "text_config", None)
    vocab = _int(text, "vocab_size") if text is not None else None
    for name in ("image_token_id", "video_token_id"):
        if _int(cfg, "num_query_tokens") and vocab and hasattr(cfg, name) and getattr(cfg, name) is None:
            _set(cfg, name, vocab - 1)


def own_model_class(config_class: type):
    """For a config no auto class maps (a sub-model config: `siglip_text_model`, `clipseg_vision_model`), the model
    class of its modeling module whose ``config_class`` it is: the one named after it (``SiglipTextConfig`` →
    ``SiglipTextModel``) first, then other base models, heads (``...For...``) last; None when there is none."""
    import importlib
    import inspect

    from transformers import PreTrainedModel
    try:
        module = importlib.import_module(config_class.__module__.replace(".configuration_", ".modeling_"))
    except ImportError:
        return None
    own = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, PreTrainedModel)
           and getattr(c, "config_class", None) is config_class and not c.__name__.endswith("PreTrainedModel")]
    named = config_class.__name__.removesuffix("Config") + "Model"
    return min(own, key=lambda c: (c.__name__ != named, "For" in c.__name__, len(c.__name__), c.__name__),
               default=None)


def task_model_class(model_type: str):
    """For a type that neither the base / causal-LM / seq2seq / image-classification / masked-LM auto classes map nor
    has a model class of its own config class (`own_model_class`), the class of the first other auto-class mapping
    (``MODEL_FOR_..._MAPPING_NAMES``, in modeling_auto's order) that maps it: a config-only type whose checkpoints
    load with another type's model (pp_chart2table: image-text-to-text, GotOcr2ForConditionalGeneration); None when
    none maps it."""
    import transformers as T
    from transformers.models.auto import modeling_auto as MA
    for k, mapping in vars(MA).items():
        if k.startswith("MODEL_FOR_") and k.endswith("_MAPPING_NAMES") and isinstance(mapping, dict) and (
                model_type in mapping):
            name = mapping[model_type]
            cls = getattr(T, name[0] if isinstance(name, (list, tuple)) else name, None)
            if cls is not None:
                return cls
    return None


def _one_feature_level(cfg) -> dict:
    """Keyword overrides for a default config with no feature level (LW-DETR's: an empty ``*_scale_factors`` list, so
    ``num_feature_levels`` is 0 and the multi-scale projector concatenates nothing): one level at scale 1.0, passed
    to the config class so that it derives the fields that depend on it (the level count, the projector's channels).
    Empty for any other config."""
    if getattr(cfg, "num_feature_levels", None) != 0:
        return {}
    return {k: [1.0] for k, v in vars(cfg).items() if k.endswith("scale_factors") and isinstance(v, (list, tuple))
            and not v}


def build_transformers(model_type: str, level: str = "small"):
    import torch
    import transformers as T
    from transformers.models.auto import modeling_auto as MA
    cfg = T.AutoConfig.for_model(model_type)
    cfg = T.AutoConfig.for_model(model_type, **_one_feature_level(cfg))
    before = copy.deepcopy(cfg)
    if level in ("small", "small-kv", "small-heads"):
        _shrink(cfg, kv_heads=1 if level == "small" else None)
        _sibling_widths(cfg, before)
        _sibling_width_lists(cfg, before)
        _twin_features(cfg, before)
        _parent_dims(cfg, before)
        _feature_sizes(cfg, before)
        _timm_backbone_levels(cfg, before)
        _width_sums(cfg, before)
        _channel_widths(cfg, before)
        _latent_sizes(cfg)
        _stage_doubled_widths(cfg, before)
        _layer_indices(cfg, before)
        _tiles(cfg, before)
        if level == "small-heads":
            _default_heads(cfg, before)
        _default_ties(cfg, before)
        _mrope_fallback(cfg, before)
    elif level == "shallow":
        _shallow(cfg)
    if level != "default" and os.environ.get("COVERAGE_REDERIVE", "1") == "1":
        _source_fields(cfg, before)
        _rederive(cfg, before)
    _placeholder_token(cfg)
    maps = [MA.MODEL_MAPPING_NAMES, MA.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MA.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, MA.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
            MA.MODEL_FOR_MASKED_LM_MAPPING_NAMES]
    cls_name = next((m[model_type] for m in maps if model_type in m), None)
    if isinstance(cls_name, (list, tuple)):
        cls_name = cls_name[0]
    cls = getattr(T, cls_name) if cls_name else own_model_class(type(cfg)) or task_model_class(model_type)
    if cls is None:
        raise LookupError("no base, causal-LM, seq2seq, image-classification or masked-LM class, no model class "
                          "of its own config class, and no other auto class")
    make = (lambda: cls._from_config(cfg)) if hasattr(cls, "_from_config") else (lambda: cls(cfg))  # noqa: E731
    if level not in ("small", "small-kv"):
        with torch.device("meta"):
            n = sum(p.numel() for p in make().parameters())
        if n > _MAX_PARAMS:
            raise MemoryError(f"{level} config has {n / 1e6:.0f} M parameters (over {_MAX_PARAMS / 1e6:.0f} M)")
    torch.manual_seed(0)
    return make()


def build_timm(name: str):
    """The model at the smallest settings it builds and runs with: img_size=64 (and depth=2) where create_model takes
    them, else the default build, run at 64 px where it runs there (convolutional nets), else at its native size."""
    import timm
    import torch
    last: Exception | None = None
    for kw in (dict(img_size=64, depth=2), dict(img_size=64), {}):
        torch.manual_seed(0)
        try:
            model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
        except Exception as e:  # noqa: BLE001 - a model without these arguments (or that needs its own size)
            last = e
            continue
        native = model.pretrained_cfg.get("input_size", (3, 224, 224))
        for size in dict.fromkeys((kw.get("img_size", 64), native[-1])):
            x = torch.randn(2, native[0], size, size, generator=torch.Generator().manual_seed(0))
            try:
                with torch.no_grad():
                    model.eval()(x)
            except Exception as e:  # noqa: BLE001 - a size this build does not run at
                last = e
                continue
            return model.train(), [((x,), {})]
    raise last if last is not None else AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------- one model
def residual_blocks(model, nested: bool = False) -> list[str]:
    """Elements of ModuleLists / Sequentials whose class name ends in Layer/Block/Bottleneck, the innermost such lists
    where they nest (nested: all of them)."""
    from torch import nn
    blocks = [f"{n}.{i}" if n else i for n, m in model.named_modules() if isinstance(m, (nn.ModuleList,
                                                                                         nn.Sequential))
              for i, c in m.named_children() if _BLOCK_CLASS.search(type(c).__name__)
              and not _NOT_BLOCK_CLASS.search(type(c).__name__)]  # named: a Sequential's children may be named
    return blocks if nested else _innermost(blocks)


def _innermost(blocks: list[str]) -> list[str]:
    return [b for b in blocks if not any(o != b and o.startswith(b + ".") for o in blocks)]


_ADDS = {"add", "__add__", "__radd__", "__iadd__", "add_"}


def _adding_blocks(model, blocks: list[str], args, kwargs) -> set[str]:
    """Run the model once (eval, no grad); the blocks inside whose forward two floating tensors of one shape were
    added."""
    import torch
    from torch.overrides import TorchFunctionMode
    active: list[str] = []
    seen: set[str] = set()
    mods = dict(model.named_modules())

    class _Adds(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if active and getattr(func, "__name__", "") in _ADDS and len(args) >= 2 and all(
                    torch.is_tensor(t) and t.is_floating_point() for t in args[:2]) and args[0].shape == args[1].shape:
                seen.update(active)
            return out
    handles = []
    for b in blocks:
        handles.append(mods[b].register_forward_pre_hook(lambda m, a, b=b: active.append(b)))
        handles.append(mods[b].register_forward_hook(lambda m, a, o, b=b: active.remove(b)))
    try:
        with torch.no_grad(), _Adds():
            model.eval()(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        active.clear()
    return seen


def _seeded(call, *args, **kwargs):
    """`call(*args, **kwargs)` after seeding torch, numpy and random with 0: every run of a model makes the same
    random draws."""
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    return call(*args, **kwargs)


_EXACT = 1e-4  # the largest relative gradient error (penalized vs oracle) that counts as exact


def _seeded_loss(args, kwargs):
    """The check's loss: the mean square of every floating output (in float64 for a float64 model), after the same
    seeds (the same random draws: dropout, SpecAugment masks, LayerDrop) in every run."""
    import torch
    from _models import float_outputs  # the tests' helpers (tests/ is on sys.path in the checks, as for _oracle)

    def loss(m):
        return sum((t.double() if t.dtype == torch.float64 else t.float()).square().mean()
                   for t in float_outputs(_seeded(m, *args, **kwargs)))
    return loss


def _copy_model(model):
    """A deep copy of `model` whose tensors cached in module attributes by an earlier forward (a recurrent layer's
    state kept for decoding: RecurrentGemma's ``recurrent_states``, ``conv1d_state``) are copied detached: torch's
    deepcopy refuses a tensor that is not a graph leaf, and the check copies the model after training forwards."""
    import torch

    memo = {}
    for mod in model.modules():
        for v in vars(mod).values():
            if torch.is_tensor(v) and v.grad_fn is not None:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)


def _float64_recheck(model, args, kwargs, zspec, tau, g_oracle) -> dict:
    """A float32 comparison that missed `_EXACT`, measured again in float64 where float32 cannot resolve it: where the
    oracle's own gradients move by more than a tenth of `_EXACT` when tau moves by 1e-6 (its rounding is amplified
    that much: D-FINE's training-mode BatchNorms over few values divide the backward by small batch deviations), the
    model and inputs are cast to float64 (a transformers MoE's experts run by their eager loop) and the penalized model
    is compared with the oracle there (same tau, same sites; the exactness threshold unchanged). Returns the fields to
    update: the float32 rounding noise and, where re-measured, the float64 error (``precision``: float64)."""
    import torch
    from _oracle import grads, rel_err

    import hf_penal
    g_moved, _, _ = grads(model, _seeded_loss(args, kwargs), zspec, tau * (1 + 1e-6))
    noise = rel_err(g_moved, g_oracle)
    out = {"f32_noise": noise}
    if not noise > _EXACT / 10:
        return out

    def wide(v):
        return v.double() if torch.is_tensor(v) and v.is_floating_point() else v
    try:
        m64 = _copy_model(model).double()
        if hasattr(m64, "set_experts_implementation"):  # grouped-GEMM experts take no float64: the eager loop
            with contextlib.suppress(Exception):
                m64.set_experts_implementation("eager")
        a64, k64 = tuple(wide(a) for a in args), {k: wide(v) for k, v in kwargs.items()}
        loss = _seeded_loss(a64, k64)
        g_oracle64, _, _ = grads(m64, loss, zspec, tau)
        g_penal64, _, _ = grads(hf_penal.apply(_copy_model(m64), tau=tau, example_inputs=(a64, k64)), loss)
    except Exception as e:  # noqa: BLE001 - a model that does not run in float64: the float32 result stands
        out["f64_cause"] = _cause(e)
        return out
    err = rel_err(g_penal64, g_oracle64)
    return dict(out, rel_err=err, grad_exact=err < _EXACT, precision="float64")


def check(model, inputs_candidates, example_inputs=None, _perturbed=False) -> dict:
    """Sites, coverage, gradient oracle and eval identity for one built model (`example_inputs`: passed to the
    probe; None: the probe builds its own). Where the chosen inputs run in eval but not in a training forward (a
    speech synthesizer that requires its targets in training), the check runs again on the first later candidate
    that does (`_training_inputs`)."""
    import torch

    import hf_penal
    sys.path.insert(0, str(ROOT / "tests"))
    from _models import float_outputs
    from _oracle import grads, rel_err

    rec: dict = {"builds": True, "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():  # zero-initialised branch ends (ResNet's last BN, layer scales) would hide the penalty
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.is_floating_point() and not _perturbed:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.02)
        if not any(p.requires_grad for p in model.parameters()):  # a config that freezes the whole model (FLAVA's
            for p in model.parameters():  # image codebook, freeze=True) leaves no gradient to compare; a part frozen
                p.requires_grad_(p.is_floating_point())  # by design (BLT's entropy patcher) stays frozen
    t0 = time.time()
    try:
        found = hf_penal.sites(model, example_inputs[0] if example_inputs else None)
    except hf_penal.ProbeFailedError as e:
        rec.update(status="probe failed", cause=_named_input_cause(model, inputs_candidates, e.__cause__ or e))
        return rec
    rec["probe_s"] = round(time.time() - t0, 2)
    rec["sites"] = len(found)
    rec["source"] = "+".join(x for x in ("table", "probe", "user") if any(s.source == x for s in found)) or "-"
    rec["notes"] = sorted({s.note.split(":")[0] for s in found if s.note})
    nested = residual_blocks(model, nested=True)
    blocks = _innermost(nested)
    covered = [b for b in blocks if any(s.name.startswith(b + ".") or s.block == b for s in found)]
    rec["blocks"], rec["covered"] = len(blocks), len(covered)
    rec["layers"] = len({s.layer for s in found})
    rec["uncovered"] = [b for b in blocks if b not in covered][:3]
    if not found:
        rec.update(status="no site")
        from hf_penal.discovery import branch_candidates
        cands = branch_candidates(model, example_inputs[0] if example_inputs else None)[:3]
        rec["cause"] = "probe ran, no residual add seen; candidates: " + (", ".join(cands) or "none")
        return rec
    # inputs: the first candidate the model runs on; blocks inside which no two same-shape tensors are added there
    # have no residual connection to find (CSPNeXt's SPP bottleneck, HGNet's layers without residual=True)
    inputs = None
    for args, kwargs in inputs_candidates:
        try:
            adding = _adding_blocks(model, nested, args, kwargs)
            inputs = (args, kwargs)
            break
        except Exception:  # noqa: BLE001
            continue
    if inputs is None:
        rec.update(status="inputs failed", cause="no candidate input runs the model")
        return rec
    args, kwargs = inputs
    blocks = _innermost([b for b in nested if b in adding])
    rec["blocks_without_add"] = len([b for b in _innermost(nested) if b not in adding])
    covered = [b for b in blocks if any(s.name.startswith(b + ".") or s.block == b for s in found)]
    rec["blocks"], rec["covered"] = len(blocks), len(covered)
    rec["uncovered"] = [b for b in blocks if b not in covered][:3]
    model.eval()
    eval_penal = hf_penal.apply(_copy_model(model), tau=0.1, example_inputs=(args, kwargs)).eval()
    with torch.no_grad():  # the same random draws in both (a VAE tokenizer samples its latent in eval too)
        a, b = (float_outputs(_seeded(m, *args, **kwargs)) for m in (model, eval_penal))
    rec["eval_identical"] = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))

    loss = _seeded_loss(args, kwargs)  # the same random draws (dropout, SpecAugment masks, LayerDrop) in every run

    # tau chosen so that the penalty moves the gradient by ~30 %: the comparison then sees the penalty's part
    # (layer-scaled branches are ~1e-6 at init, a fixed tau would be invisible there)
    # a site with an `end` takes z at a module shared by several branches (Phi's resid_dropout): every call of that
    # module is one of the found branches (discovery checks it), so the oracle captures all its calls once
    zspec = list(dict.fromkeys((re.escape(s.end or s.name), s.output_index) for s in found))
    try:
        g_plain, _, _ = grads(model, loss)
    except Exception:
        later = _training_inputs(model, inputs_candidates, inputs)
        if later is None:
            raise
        return check(model, [later], None, _perturbed=True)
    g_unit, _, fired = grads(model, loss, zspec, 1.0)
    shift = rel_err(g_unit, g_plain)
    rec["fired"] = fired
    if not shift > 0:
        rec.update(status="inexact", cause="the penalty on the found sites does not change any gradient")
        return rec
    tau = min(max(0.3 / shift, 1e-6), 1e8)
    g_oracle, _, _ = grads(model, loss, zspec, tau)
    penal = hf_penal.apply(_copy_model(model), tau=tau, example_inputs=(args, kwargs))
    g_penal, _, _ = grads(penal, loss)
    rec["tau"] = tau
    rec["oracle_vs_plain"] = rel_err(g_oracle, g_plain)
    rec["rel_err"] = rel_err(g_penal, g_oracle)
    rec["grad_exact"] = rec["rel_err"] < _EXACT
    if not rec["grad_exact"]:
        rec["f32_rel_err"] = rec["rel_err"]
        rec.update(_float64_recheck(model, args, kwargs, zspec, tau, g_oracle))
        if rec.get("precision"):
            rec["notes"] = rec.get("notes", []) + [f"gradients compared in float64 (float32: error "
                                                   f"{rec['f32_rel_err']:.1e}, rounding noise {rec['f32_noise']:.1e})"]
    full = rec["covered"] == rec["blocks"]  # 0 == 0: no listed blocks to check
    rec["status"] = ("ok" if full else "partial") if rec["grad_exact"] and rec["eval_identical"] else "inexact"
    if rec["status"] == "inexact":
        rec["sites_no_grad"] = _sites_without_grad(model, loss, found)
        if rec["sites_no_grad"]:
            rec["cause"] = f"{rec['sites_no_grad']} of {len(found)} site outputs get no gradient from the loss"
    return rec


def _no_forward(model) -> bool:
    """Whether the model's class defines no forward of its own (torch's ``_forward_unimplemented``): a composite
    whose entry points are other methods (a VQ autoencoder's encode / decode, an omni model's generate)."""
    from torch import nn
    return type(model).forward is nn.Module.forward


def _parts(model) -> list[tuple[str, object]]:
    """The parts a model with no forward of its own is measured by (`check_parts`): its outermost submodules whose
    class defines a forward and that hold a residual block (`residual_blocks`); submodules without a forward are
    looked into."""
    out = []

    def walk(prefix, mod):
        for n, c in mod.named_children():
            name = f"{prefix}.{n}" if prefix else n
            if not _no_forward(c):
                if residual_blocks(c):
                    out.append((name, c))
            else:
                walk(name, c)
    walk("", model)
    return out


def _part_inputs(part, cfg) -> list[tuple]:
    """Candidate inputs for one part: the probe's own where a builder claims it (a sub-model with its own config),
    else its forward's required arguments built by name from the parent's config
    (`transformers_inputs.inputs_with_config`), with those at batch 1 after them."""
    from hf_penal.discovery.inputs import batch_one, probe_inputs
    from hf_penal.integrations.transformers_inputs import inputs_with_config
    if hasattr(part, "config") and hasattr(part.config, "to_dict"):
        return probe_inputs(part)
    cands = inputs_with_config(part, cfg)
    return cands + batch_one(cands)


def check_parts(model) -> dict:
    """`check` for a model whose class defines no forward (`_no_forward`): each of its parts (`_parts`) checked as a
    model of its own, on inputs built for it (`_part_inputs`; passed to the probe as the first candidate that runs);
    the record sums their sites and blocks and is "ok" only where every part is (else the first other part's status,
    its cause prefixed with the part's name); a model with no such part has no residual block to find: "no site"."""
    import torch
    parts = _parts(model)
    rec: dict = {"builds": True, "params": sum(p.numel() for p in model.parameters()), "parts": [n for n, _ in parts]}
    if not parts:
        rec.update(status="no site", sites=0, blocks=0, covered=0,
                   cause="no forward of its own, and no submodule with a forward holds a residual block")
        return rec
    subs = []
    for name, part in parts:
        cands = _part_inputs(part, model.config)
        first = None
        for args, kwargs in cands:
            try:
                with torch.no_grad():
                    _seeded(part.eval(), *args, **kwargs)
            except Exception:  # noqa: BLE001 - the next candidate may fit
                continue
            first = (args, kwargs)
            break
        if first is None:
            sub = {"status": "inputs failed", "cause": "no candidate input runs it"}
        else:
            sub = check(part.train(), [first] + [c for c in cands if c is not first], [first])
        subs.append((name, sub))
    for k in ("sites", "blocks", "covered", "blocks_without_add"):
        rec[k] = sum(sub.get(k, 0) for _, sub in subs)
    errs = [sub["rel_err"] for _, sub in subs if "rel_err" in sub]
    if errs:
        rec["rel_err"] = max(errs)
    rec["eval_identical"] = all(sub.get("eval_identical", False) for _, sub in subs)
    rec["source"] = "+".join(dict.fromkeys(sub["source"] for _, sub in subs if sub.get("source"))) or "-"
    bad = [(n, sub) for n, sub in subs if sub["status"] != "ok"]
    if not bad:
        rec["status"] = "ok"
        rec["notes"] = [f"measured by its parts: {', '.join(rec['parts'])}"]
    else:
        n, sub = bad[0]
        rec["status"] = sub["status"]
        rec["cause"] = f"part {n}: {sub.get('cause', sub['status'])}"
    return rec


def _named_input_cause(model, inputs_candidates, e: BaseException) -> str:
    """The cause of a failed probe: the probe reports its first candidate's error; where that is a required
    argument the candidate lacks (or one it says to specify: "You have to specify bbox") and a later candidate gives
    it, that candidate's own error instead (a config inconsistency there is worth a retry at another config level,
    a missing input is not: `_NO_RETRY`)."""
    import torch
    m = re.search(r"missing \d+ required positional argument: '(\w+)'|You have to specify `?(\w+)", str(e))
    for args, kwargs in inputs_candidates if m else []:
        if (m.group(1) or m.group(2)) in kwargs:
            try:
                with torch.no_grad():
                    model.eval()(*args, **kwargs)
            except Exception as later:  # noqa: BLE001
                return _cause(later)
            break
    return _cause(e)


def _training_inputs(model, inputs_candidates, chosen):
    """The first candidate after `chosen` on which the model runs a training forward (seeded, no gradient kept),
    or None."""
    import torch
    after = False
    for args, kwargs in inputs_candidates:
        if not after:
            after = args is chosen[0] and kwargs is chosen[1]
            continue
        try:
            with torch.no_grad():
                _seeded(model.train(), *args, **kwargs)
        except Exception:  # noqa: BLE001 - the next candidate may fit
            continue
        return args, kwargs
    return None


def _sites_without_grad(model, loss, found) -> int:
    """The number of found sites whose output z receives no gradient from the loss in a plain backward (a hook on
    each call's z; a site counts as reached when every call's z gets one). The penalty's backward runs only where a
    gradient reaches z, while the explicit-penalty oracle's τ/2·‖z‖² term gives z a gradient anyway: sites behind
    a non-differentiable step (a codec's argmin quantizer between encoder and decoder), or a call whose output the
    model discards (PEGASUS-X's last encoder layer updates its global tokens, which the encoder does not return),
    make such a model inexact."""
    import torch
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    reached: dict[str, int] = {}
    handles = []

    def hook(name, index):
        def on_output(mod, args, out):
            z = out if index is None else out[index]
            calls[name] = calls.get(name, 0) + 1
            if torch.is_tensor(z) and z.requires_grad:
                z.register_hook(lambda g: reached.__setitem__(name, reached.get(name, 0) + 1))
        return on_output
    names = {(s.end or s.name, s.output_index) for s in found}
    for name, index in names:
        handles.append(mods[name].register_forward_hook(hook(name, index)))
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss(model).backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return sum(1 for s in found if reached.get(s.end or s.name, 0) < calls.get(s.end or s.name, 1))


def _cause(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"


class _Timeout(BaseException):  # not an Exception: the code under test must not swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _run_level(library: str, name: str, level: str, timeout: float) -> dict:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    rec = {"library": library, "name": name}
    if library == "transformers":
        rec["config"] = level
    t0 = time.time()
    try:
        try:
            if library == "transformers":
                model, given = build_transformers(name, level), None
            else:
                model, given = build_timm(name)
        except Exception as e:  # noqa: BLE001
            rec.update(builds=False, status="does not build", cause=_cause(e))
            return rec
        rec["builds"] = True
        if library == "transformers":
            rec["class"] = type(model).__name__
        from hf_penal.discovery.inputs import probe_inputs
        if given is None and _no_forward(model):
            rec.update(check_parts(model))
            return rec
        cands = given or probe_inputs(model)
        rec.update(check(model, cands, given))
    except _Timeout:
        rec.update(status="timeout", cause=f"over {timeout:g} s")
    except Exception as e:  # noqa: BLE001
        rec.update(status="error", cause=_cause(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        rec["seconds"] = round(time.time() - t0, 1)
    return rec


_RETRY = ("does not build", "probe failed", "inputs failed", "error")
# causes no other config changes: the forward needs inputs the probe does not build, a missing library
_NO_RETRY = re.compile(r"missing \d+ required|You (have|must) to specify|You must specify|requires the \w+ library|"
                       r"no base, causal-LM")


def run_one(library: str, name: str, timeout: float) -> dict:
    """One model; a transformers model that fails at the small config (the benchmark's shrinking can make a config
    inconsistent) is retried with as many key/value heads as query heads, then at the shallow, then the default
    config, then with the default head counts (`_default_heads`). The record is the first level that runs, or
    the small level's failure with the later levels' causes appended."""
    first = rec = _run_level(library, name, "small", timeout)
    if library != "transformers" or _NO_RETRY.search(rec.get("cause", "")):
        return rec
    tried = []
    for level in _LEVELS[1:]:
        if rec["status"] not in _RETRY:
            break
        tried.append(f"{rec['config']}: {rec['status']}")
        rec = _run_level(library, name, level, timeout)
    if rec is first:  # not retried (a timeout at the small config: a retry would time out too)
        return rec
    if rec["status"] in _RETRY or rec["status"] == "timeout":
        first = dict(first, cause=first.get("cause", "") + " [retried: " + "; ".join(
            tried[1:] + [f"{rec['config']}: {rec['status']} {rec.get('cause', '')[:80]}"]) + "]")
        return first
    rec["retried"] = tried
    return rec


def worker(library: str, names: list[str], timeout: float) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    import hf_penal  # noqa: F401 - installs the penal= keyword
    with contextlib.suppress(Exception):
        from transformers.utils import logging
        logging.set_verbosity_error()
    for name in names:
        print("@@" + json.dumps(run_one(library, name, timeout)), flush=True)


def sweep(library: str, names: list[str], timeout: float) -> list[dict]:
    """Run the models in a worker process; a worker that dies is replaced and its model recorded as crashed."""
    done: dict[str, dict] = {}
    todo = list(names)
    while todo:
        cmd = [sys.executable, __file__, "--worker", library, "--timeout", str(timeout), "--names", *todo]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT),
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        for line in proc.stdout:
            if line.startswith("@@"):
                rec = json.loads(line[2:])
                done[rec["name"]] = rec
                print(f"{library} {rec['name']}: {rec['status']} {rec.get('cause', '')}"[:200], flush=True)
        proc.wait()
        todo = [n for n in todo if n not in done]
        if todo:
            done[todo[0]] = {"library": library, "name": todo[0], "status": "crash",
                             "cause": f"worker exited with code {proc.returncode}"}
            todo = todo[1:]
    return [done[n] for n in names]


# ----------------------------------------------------------------------------------------------------- report
def summarize(recs: list[dict]) -> dict:
    built = [r for r in recs if r.get("builds")]
    ran = [r for r in built if r["status"] not in ("timeout", "crash")]  # an error in the checks is a failure
    ok = [r for r in ran if r["status"] == "ok"]
    some = [r for r in ran if r["status"] in ("ok", "partial")]
    plain = [r for r in ran if r["status"] == "no site" and r.get("cause", "").endswith("candidates: none")]
    residual = len(ran) - len(plain)  # the probe saw no add of a module's output to an older tensor anywhere
    return dict(total=len(recs), built=len(built), measured=len(ran), ok=len(ok), some=len(some),
                no_residual=len(plain), residual=residual)


def table(title: str, recs: list[dict], command: str, rule: str) -> str:
    s = summarize(recs)
    pct = (lambda a, b: f"{100 * a / b:.0f} %" if b else "-")  # noqa: E731
    lines = [f"## {title}", "", f"Command: `{command}`  ", f"Sample: {rule}", "",
             f"- models tried: {s['total']}; built (small config, or a fallback config for transformers): "
             f"{s['built']}; measured (built, ran within the time limit): {s['measured']}",
             f"- **coverage: {s['ok']} / {s['measured']} = {pct(s['ok'], s['measured'])}** of measured models have a "
             f"site in every residual block, exact gradients (penalized = explicit-penalty oracle) and bit-identical "
             f"eval outputs; {s['some']} / {s['measured']} = {pct(s['some'], s['measured'])} have ≥ 1 site with "
             f"exact gradients",
             f"- {s['no_residual']} measured models have no residual add at all (the probe saw no submodule output "
             f"added to an older tensor: concatenating or plain nets); among the {s['residual']} others: "
             f"**{s['ok']} / {s['residual']} = {pct(s['ok'], s['residual'])}**", "",
             "| model | status | source | sites | blocks covered | grad rel. err | eval identical | s "
             "| cause / notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else ""
        cov = f"{r['covered']}/{r['blocks']}" if "blocks" in r else ""
        ev = {True: "yes", False: "**no**"}.get(r.get("eval_identical"), "")
        cause = r.get("cause", "")
        if r.get("status") == "partial":
            cause = "uncovered: " + ", ".join(r.get("uncovered", []))
        if r.get("status") == "inexact":
            cause = f"oracle vs plain {r.get('oracle_vs_plain', 0):.1e}, sites fired {r.get('fired')}"
            if r.get("sites_no_grad"):
                cause += f", {r['sites_no_grad']} site outputs get no gradient from the loss"
        if r.get("notes"):
            cause = (cause + "; " if cause else "") + "; ".join(r["notes"])
        if r.get("config", "small") != "small":
            cause = (cause + "; " if cause else "") + f"{r['config']} config ({', '.join(r.get('retried', []))})"
        cause = cause.replace("|", "\\|")
        lines.append(f"| {r['name']} | {r['status']} | {r.get('source', '')} | {r.get('sites', '')} | {cov} | {err} "
                     f"| {ev} | {r.get('seconds', '')} | {cause} |")
    fails = [r for r in recs if r["status"] not in ("ok",)]
    lines += ["", f"{len(fails)} models not fully covered are listed above with their cause (status other than ok)."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, name: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else (
        "# Residual-site discovery coverage\n\nGenerated by `benchmarks/coverage.py` (see its docstring for what is "
        "measured). Statuses: ok (a site in every residual block, exact gradients, eval bit-identical), partial (some "
        "blocks without a site), inexact (gradients or eval differ), no site, probe failed, inputs failed, error, "
        "does not build, timeout, crash.\n")
    section = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", choices=["transformers", "timm"], default="transformers")
    p.add_argument("--every", type=int, default=1, help="deterministic sample: every N-th name in sorted order")
    p.add_argument("--offset", type=int, default=0,
                   help="with --every N: start at this position (0 to N-1); 1 or 2 give samples disjoint from 0's")
    p.add_argument("--names", nargs="*", help="these model types / timm names only")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per model (build + probe + checks)")
    p.add_argument("--out", default=None, help="markdown file to (re)write this library's section of")
    p.add_argument("--json", default=None, help="also write the raw records here")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="no sweep: tabulate these saved records (a later file's record of a model replaces an "
                        "earlier one, unless it is a timeout)")
    p.add_argument("--note", default="", help="a line for the table (how the records were made)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker, a.names, a.timeout)
        return []
    if a.names:
        names, rule = a.names, f"the {len(a.names)} named models"
    else:
        every = transformers_types() if a.library == "transformers" else timm_families()
        if not 0 <= a.offset < max(a.every, 1):
            raise SystemExit(f"--offset must be in 0..{max(a.every, 1) - 1}; got {a.offset}")
        names = sample(every, a.every, a.offset)
        rule = (f"{len(names)} of {len(every)} " + ("model types in sorted order" if a.library == "transformers"
                                                     else "timm families (smallest-named model each)")
                + (f", every {a.every}-th (deterministic, evenly spaced)" if a.every > 1 else ", all")
                + (f", from position {a.offset}" if a.offset else ""))
    if a.from_json:
        merged: dict[str, dict] = {}
        for f in a.from_json:
            for r in json.loads(Path(f).read_text()):
                if r["status"] == "error":
                    r.setdefault("builds", True)  # recorded after the build (records before 666b465 lack the key)
                old = merged.get(r["name"])
                if old is None or r["status"] != "timeout" or old["status"] == "timeout":
                    merged[r["name"]] = r  # a re-run's timeout (a busy machine) keeps the earlier measurement
        recs = [merged[n] for n in names if n in merged]
        rule += f" ({len(recs)} with records)"
    else:
        recs = sweep(a.library, names, a.timeout)
    if a.note:
        rule += f"  \n{a.note}"
    command = "OMP_NUM_THREADS=1 python benchmarks/coverage.py " + " ".join(shlex.quote(x) for x in
                                                                           (argv if argv is not None else sys.argv[1:]))
    if a.json:
        Path(a.json).write_text(json.dumps(recs, indent=1))
    if a.out:  # a sample from another offset (disjoint from offset 0's): its own section
        key, title = a.library, a.library
        if a.offset and not a.names:
            key, title = f"{a.library}-offset{a.offset}", f"{a.library}, sample from position {a.offset}"
        write_section(Path(a.out), key, table(title, recs, command, rule))
    s = summarize(recs)
    print(json.dumps(s))
    return recs


if __name__ == "__main__":
    main()
