"""Example inputs for the generic probe on a transformers model (registered with `hf_penal.discovery.inputs`).

They are read from the model's config, never from its name: token ids below its vocabulary size that avoid its special
tokens, pixels at its image size (or the size a VQ autoencoder's latent grid implies) and channel count (frames for
video models), audio features at its mel-bin / feature width or raw samples, decoder ids for encoder-decoders, and the
encoder's main input where the model's is a generic `inputs`. Pixel inputs take the layout the forward names: flattened
patches with their grid for NaFlex (``spatial_shapes``) and position-id (``pixel_position_ids``) towers, Pix2Struct's
``flattened_patches``. A forward's other required arguments are built by their name (`_required_alternatives`): patch
grids of Qwen2-VL-style vision towers (``grid_thw``, the patches flattened to channels × temporal patch × patch² as
``hidden_states`` / ``pixel_values``, whole merge windows), video clips (``pixel_values_videos``: frames × channels ×
image size), vocoder spectrograms, the hidden states / context a tower takes from its parent model (at the config's
input or hidden width), a parent's feature map (``patch_embeds``), other required ``*_embeds`` / ``*_hidden_states``
(`_named_states`: those widths, then the hidden width times the layers a config list names, concatenated), time-series
context. Last-resort candidates: codebook-interleaved ids, audio features beside the ids, ``inputs_embeds`` instead of
ids, 224-pixel images for nets that pool a small default image away; after all of those (so a model an earlier candidate
runs keeps its inputs), audio features in further (frames, width) layouts (`_feature_layouts`: the width of a feature
projection, the mel bins of a nested audio config with frames in whole stacking windows, frames stacked 2 or 4 per row)
and image pairs (batch, 2, channels, height, width) for keypoint matchers; then images with their patch grid sizes
(``target_sizes``), as a batch and packed into one row of patches, and patch volumes (patches, temporal patch, patch,
patch, channels) (`_late_patch_layouts`); last, inputs built from optional arguments the forward names (`_named_late`):
trajectories (``states`` / ``actions`` at the config's ``state_dim`` / ``act_dim``, ``returns_to_go``, ``timesteps``),
tokens pooled into patches (``patch_ids`` with ``num_patches``), retrieved documents (``context_input_ids``,
``doc_scores`` for ``n_docs``); also after the image pairs, images at the image sizes of nested configs
(`_nested_pixels`: a composite whose backbone or prompt encoder states the size); and, for a tower fed its parent's
features (required arguments no rule builds by name), those arguments by their annotation at the config's width, lists
as a feature pyramid, with the optional ``*_features`` and position embeddings beside them (`_tower_inputs`). Audio by
argument name (`_named_audio`): a mel spectrogram (a name with ``mel``) at the config's ``input_feat_size`` / mel bins
with its paired mask (``<input>_mask``, `_paired_masks`), codebook ids (``..._input_ids``, (batch, SEQ,
``num_codebooks``)); among the last resorts (`_timed_audio`, `_with_video`): features packed (mel, batch × frames) with
their ``feature_lens``, features at one frame per ``hop_length`` of 16000 samples beside the samples, and each candidate
again with a video clip where the forward also takes ``pixel_values_videos`` (at a nested timm tower's ``model_args``
img_size where the config names no image size). After every other candidate, images whose patch grid splits into whole
attention windows with a patch per query (`_windowed_pixels`: ``patch_size`` × ``num_windows`` per side,
``num_queries``; a windowed detector backbone). Then pixels at the frame size a config names (``max_img_size``,
with its ``num_frames`` frames: `_max_size_pixels`); then each candidate with optional cross-attention states at the
config's ``encoder_hidden_size`` (a Q-Former alone, `_cross_states`); then images as one-image sets (batch, 1,
channels, h, w) with an all-ones ``image_attention_mask`` where the forward takes one (`_image_sets`); last of all,
inputs beside the ids or from config fields (`_side_inputs`): ids into a list a config field names (``lang_ids`` for
``languages``), a parent's ``last_hidden_state``, layout ``bbox``, ids with a column per codebook channel
(``num_codebooks`` / ``num_channels``, with ``encoder_hidden_states`` at ``cross_hidden_size``), audio features with a
channel axis (``patch_embed_input_channels``), ``past_values`` at ``context_length`` × ``num_input_channels``. A
required ``<prefix>_input_ids`` gets ids of the ``<prefix>_config`` vocabulary (``qformer_input_ids``,
`_sub_vocab_ids`). After those, audio in the whole units a config names (`_whole_audio`: features in
whole ``n_window`` chunks, samples in whole ``samples_per_token`` / ``patch_sizes`` tokens, features with their
``*_sample_lengths`` at ``hop_length``); the stacked-frame feature layouts include ``num_stacked_frames``; then the
first candidate with a required ``hidden_states`` / mel argument, that argument channels first (`_channels_first`: a
convolutional decoder's latents, a vocoder's mel bins); then token ids with the targets a training forward requires,
by name (`_step_labels`: ``*_labels`` arguments as per-token frame counts, the spectrogram frames they give,
per-token scalars); then, by argument name: images cut into the config's ``max_num_tiles`` tiles with their
``aspect_ratio_ids`` / ``aspect_ratio_mask`` (`_tiled_pixels`), the image and its required prompt images and masks
(``<p>_pixel_values``, ``<p>_masks``; built at the image size among the required arguments too) at half height each,
stacked along the height by the model (`_prompt_images`), a clip's frames folded into the batch (`_frames_in_batch`),
patches as one row of patch images with an optional ``grid_thw`` (`_grid_patches`), and hidden states partitioned into
the config's ``num_windows`` windows (`_windowed_states`). After all of those, each text candidate with optional inputs
beside the tokens (`_beside_text`: zero ``*token_type_ids``, per-object features at a config's ``<name>_dim``:
``visual_feats`` / ``visual_pos``, other ``*_embeds`` beside ``inputs_embeds`` at the hidden or ``hidden_size_*``
widths), then the first one with token ids and the forward's required integer arguments as ones (`_index_args`:
``marks``, ``num_options``, ``question_type_ids``). A required ``<input>_padding`` is zeros like its input and a
required argument with a config ``<name>_size`` a (BATCH, 1) code 0 (`_paddings_and_codes`: ``past_values_padding``,
``freq``). Then (`_patch_layouts_r3`): images as rows of flattened patches (batch, patches, channels · patch²); a
required ``grid_thw``'s patches as a batch of patch images; for a required ``<prefix>_grid_thw`` (a grid in merged
tokens) its tokens as channels-last patch images (tokens, merge · patch, merge · patch, channels); images for a pixel
model's required ``hidden_states``; ``flattened_patches`` where the main input is another; a required int ``num_<x>``
count of leading tokens; an ``<x>_embeds_position_mask`` for the config's ``latent_query_num`` image embeddings; a
head's only required ``hidden_states`` at the config's ``*_out_channels`` widths. Then: ``input_values`` and
``decoder_input_values`` as hidden states for an encoder-decoder over continuous values (`_decoder_values`), a waveform
encoder's samples as a channels-first ``hidden_states`` in whole latent frames of its ``downsampling_ratios``
(`_waveform_states`), every modality input the forward names at once (`_all_modalities`), required arguments annotated
optional given None (`_optional_none`), features at 128 mel bins where no config field names a feature width
(`_common_mel`), and one denoising step of a code-conditioned mel generator (`_flow_step`). A required
``<prefix>_inputs`` is token ids of the config's ``<prefix>_seq_len`` (`_seq_len_ids`); a list ``main_input_name``
counts by its first entry. `inputs_with_config` builds a config-less submodule's required arguments from its parent's
config. `hf_penal.discovery.inputs` then adds every candidate again at batch 1.
"""
from __future__ import annotations

import inspect
import re

import torch
from torch import nn

from ..discovery.inputs import BATCH, SEQ, generator, size2


def _sub(cfg, *names):
    for n in names:
        sub = getattr(cfg, n, None)
        if sub is not None and not isinstance(sub, (int, float, str, list, dict)):
            return sub
    return cfg


def _token_ids(cfg, n: int = SEQ) -> torch.Tensor:
    vocab = int(getattr(cfg, "vocab_size", None) or 100)
    special = {v for k, v in vars(cfg).items() if isinstance(v, int) and ("token" in k or k.endswith("_index"))}
    pool = [i for i in range(3, min(vocab, 3 + n * BATCH + len(special) + 8)) if i not in special] or [0]
    return torch.tensor([pool[i % len(pool)] for i in range(BATCH * n)]).reshape(BATCH, n)


def _pixels(cfg) -> torch.Tensor:
    v = _sub(cfg, "vision_config", "backbone_config", "encoder")
    h, w = size2(getattr(v, "image_size", None) or getattr(cfg, "image_size", None), _latent_pixels(v) or 32)
    c = int(getattr(v, "num_channels", None) or getattr(cfg, "num_channels", None) or 3)
    frames = getattr(v, "num_frames", None)
    shape = (BATCH, int(frames), c, h, w) if isinstance(frames, int) and frames > 0 else (BATCH, c, h, w)
    return torch.randn(shape, generator=generator())


def _latent_pixels(v) -> int | None:
    """The image side a VQ autoencoder's latent grid implies where its config names no image size: ``num_patches``
    latents per side, the image halved once per level of ``channel_multiplier`` after the first."""
    side, levels = getattr(v, "num_patches", None), getattr(v, "channel_multiplier", None)
    if isinstance(side, int) and side > 0 and isinstance(levels, (list, tuple)) and levels:
        return side * 2 ** (len(levels) - 1)
    return None


def _windowed_pixels(cfg) -> torch.Tensor | None:
    """Pixels whose patch grid fits a windowed, two-stage detector: each side at the config's image size rounded to
    a multiple of ``patch_size`` × ``num_windows`` (a windowed ViT backbone that partitions the patch grid into
    whole windows per side, with interpolated position embeddings), and grown (by whole windows) to at least
    ``num_queries`` patches in all where the config has queries (a two-stage detector picks its queries top-k among
    the patch tokens). None where the config has no patch size, or neither windows nor queries, or its own image size
    already fits."""
    v = _sub(cfg, "vision_config", "backbone_config", "encoder")
    p, k = _first_int([v], "patch_size"), _first_int([v], "num_windows", default=1)
    queries = _first_int([cfg], "num_queries", default=0)
    if not p or (k == 1 and not queries):
        return None
    x = _pixels(cfg)
    step = p * k
    h, w = (max(1, round(n / step)) * step for n in x.shape[-2:])
    while (h // p) * (w // p) < queries:
        h, w = h + step, w + step
    if (h, w) == tuple(x.shape[-2:]):
        return None
    return torch.randn(*x.shape[:-2], h, w, generator=generator())


def _audio_alternatives(cfg, name: str, layouts: bool = True) -> list[torch.Tensor]:
    """Audio inputs by name: raw samples (``input_values``) or features (``input_features``: (mel, frames) and
    (frames, mel), then, where `layouts`, the last-resort layouts of `_feature_layouts`)."""
    a = _sub(cfg, "audio_config", "encoder_config")
    g = generator()
    if name == "input_values":
        out = [torch.randn(BATCH, 16000, generator=g)]  # 1 s at 16 kHz: long enough for masking
        mel = getattr(a, "num_mel_bins", None)
        if mel:  # spectrogram transformers (AST) take input_values as (batch, frames, mel bins)
            out.insert(0, torch.randn(BATCH, int(getattr(a, "max_length", 0) or 64), int(mel), generator=g))
        chans = int(getattr(a, "audio_channels", None) or 1)  # codecs (EnCodec, DAC): (batch, channels, samples)
        out.append(torch.randn(BATCH, chans, 16000, generator=g))
        return out
    mel = int(getattr(a, "num_mel_bins", None) or getattr(a, "feature_size", None) or 80)
    frames = 2 * int(getattr(a, "max_source_positions", 0) or 32)
    per_channel = getattr(a, "input_feat_per_channel", None)
    width = int(per_channel) * int(getattr(a, "input_channels", 1) or 1) if per_channel else mel
    return [torch.randn(BATCH, mel, frames, generator=g), torch.randn(BATCH, frames, width, generator=g)] + [
        torch.randn(BATCH, t, w, generator=g) for t, w in (_feature_layouts(cfg, mel, width) if layouts else [])]


def _configs(cfg, depth: int = 3) -> list:
    """The config and its nested sub-configs (any config-valued attribute: ``audio_config``, ``asr_config``,
    ``semantic_model_config``, ...), breadth first."""
    out, level = [cfg], [cfg]
    for _ in range(depth):
        level = [v for c in level for v in vars(c).values() if hasattr(v, "to_dict") and hasattr(v, "model_type")]
        out += [c for c in level if all(c is not o for o in out)]
    return out


def _feature_layouts(cfg, mel: int, width: int) -> list[tuple[int, int]]:
    """Last-resort (frames, width) layouts of audio features, after the (mel, frames) / (frames, mel) pair: the
    width a feature projection names (``feature_projection_input_dim``), the mel bins of a nested audio config
    (``asr_config``, ...), and frames stacked k per row (width mel × k, k = 2, 4: stacked or delta-expanded frames).
    Frames: twice the width (so the frames are the longer axis), rounded up to a multiple of the config's
    subsampling / stacking factor."""
    cs = _configs(cfg)
    widths = [_first_int(cs, "feature_projection_input_dim"), _first_int(cs, "num_mel_bins", "feature_size")]
    widths += [mel * k for k in (2, 4)]
    widths += [mel * k for k in [_first_int(cs, "num_stacked_frames")] if k]  # frames stacked as the config says
    factor = _first_int(cs, "subsampling_factor", "stacking_factor", "frame_stacking", default=1)
    out = []
    for w in dict.fromkeys(x for x in widths if x and x not in (mel, width)):
        t = -(-2 * w // factor) * factor
        out.append((t, w))
    return out


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_ints(cfg) -> dict:
    """A config's own fields that hold a positive int, by name."""
    return {k: v for k, v in vars(cfg).items() if _positive_int(v)}


def _required_names(params) -> list[str]:
    """The forward's required arguments (no default; not ``*args`` / ``**kwargs``), in order."""
    return [n for n, p in params.items() if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _first_int(cfgs, *names, default: int | None = None) -> int | None:
    """The first positive int (or the first element of a list of ints) among `names` on the configs, in order."""
    for c in cfgs:
        for n in names:
            v = getattr(c, n, None)
            if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) for x in v):
                v = v[0]
            if _positive_int(v):
                return v
    return default


def _vision_cfgs(cfg) -> list:
    return [c for c in (_sub(cfg, "vision_config"), cfg) if c is not None]


def _patch_grid(cfg) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A Qwen2-VL-style vision tower's inputs for BATCH images: the patches flattened to (patches, channels ×
    temporal patch × patch²) and grid_thw (BATCH, 3) = (1, h, w) each, h = w = 2 merge windows; and the merge size."""
    cs = _vision_cfgs(cfg)
    p = _first_int(cs, "patch_size", default=14)
    tp = _first_int(cs, "temporal_patch_size", "patch_temporal", default=1)
    ch = _first_int(cs, "in_channels", "num_channels", "in_chans", default=3)
    merge = _first_int(cs, "spatial_merge_size", "merge_size", default=1)
    side = 2 * merge
    grid = torch.tensor([[1, side, side]] * BATCH)
    patches = torch.randn(BATCH * side * side, ch * tp * p * p, generator=generator())
    return patches, grid, merge


def _video(cfg) -> torch.Tensor:
    """(BATCH, frames, channels, height, width): the config's frame count (2 temporal tubelets when it has none or
    more than 16) at its image / crop size (or a nested timm tower's img_size)."""
    cs = _vision_cfgs(cfg)
    tube = getattr(cs[0], "tubelet_size", None)
    tube = tube[0] if isinstance(tube, (list, tuple)) and tube else tube
    tube = tube if isinstance(tube, int) and tube > 0 else 1
    frames = _first_int(cs, "num_frames", "frames_per_clip")
    frames = frames if frames and frames <= 16 else 2 * tube
    size = next((getattr(c, k) for c in cs for k in ("image_size", "crop_size") if getattr(c, k, None)), None)
    h, w = size2(size or _timm_size(cfg), 32)
    ch = _first_int(cs, "num_channels", "in_chans", "in_channels", default=3)
    return torch.randn(BATCH, frames, ch, h, w, generator=generator())


def _timm_size(cfg):
    """The image size a nested timm tower is built at (``model_args["img_size"]`` of a config with
    ``architecture``), or None."""
    for c in _configs(cfg):
        args = getattr(c, "model_args", None)
        if isinstance(getattr(c, "architecture", None), str) and isinstance(args, dict) and args.get("img_size"):
            return args["img_size"]
    return None


def _states(cfg) -> list[torch.Tensor]:
    """Hidden states a tower takes from its parent model: (BATCH, SEQ, width) at the config's input width
    (`input_dim`, `encoder_hidden_size`, ...) and at its hidden size."""
    widths = [_first_int([cfg], n) for n in ("input_dim", "input_size", "hidden_size", "hidden_dim", "d_model")]
    return [torch.randn(BATCH, SEQ, w, generator=generator()) for w in dict.fromkeys(x for x in widths if x)]


def _required_alternatives(cfg, name: str, required: list[str]) -> list | None:
    """Alternatives for a required forward argument, by its name; None for a name this module does not build."""
    grid = "grid_thw" in required
    if name == "grid_thw":
        return [_patch_grid(cfg)[1]]
    if name == "merge_sizes":
        return [torch.full((BATCH,), _patch_grid(cfg)[2])]
    if grid and name in ("hidden_states", "pixel_values") and name == next(
            n for n in required if n in ("hidden_states", "pixel_values")):
        return [_patch_grid(cfg)[0]]
    if name == "pixel_values_videos":
        return [_video(cfg)]
    if name == "pixel_values":
        return [_pixels(cfg)]
    if name.endswith("_pixel_values") or (name.endswith("_masks") and name[:-6] + "_pixel_values" in required):
        return [_pixels(cfg)]  # prompt images and their mask images, at the image size (`_prompt_images`)
    if name in ("input_values", "input_features"):
        return _audio_alternatives(cfg, name, layouts=False)
    if name == "spectrogram":  # a vocoder's mel frames: (batch, frames, mel bins)
        mel = _first_int([cfg], "model_in_dim", "num_mel_bins", default=80)
        return [torch.randn(BATCH, SEQ, mel, generator=generator())]
    if name in ("hidden_states", "context", "encoder_hidden_states", "inputs_embeds"):
        return _states(cfg)
    if name == "past_values":  # a time-series model's context: (batch, 4 patches)
        n = 4 * _first_int([cfg], "patch_length", "patch_len", default=8)
        return [torch.randn(BATCH, n, generator=generator())]
    if name == "attention_mask":
        return [torch.ones(BATCH, SEQ, dtype=torch.long)]
    if name == "input_ids":
        return [_token_ids(_sub(cfg, "text_config", "decoder", "text_encoder"))]
    if name == "patch_embeds":  # a tower fed its parent's feature map: (batch, hidden size, grid side, grid side)
        cs = _vision_cfgs(cfg)
        side = _first_int(cs, "image_size", default=64) // _first_int(cs, "patch_size", default=16) or 4
        return [torch.randn(BATCH, _first_int(cs, "hidden_size", default=32), side, side, generator=generator())]
    return (_named_states(cfg, name) or _named_audio(cfg, name, required) or _sub_vocab_ids(cfg, name)
            or _seq_len_ids(cfg, name) or _paddings_and_codes(cfg, name, required))


def _seq_len_ids(cfg, name: str) -> list | None:
    """Token ids for a required ``<prefix>_inputs`` where the config names its length ``<prefix>_seq_len``
    (OneFormer's ``task_inputs``: the tokenized task prompt, (batch, ``task_seq_len``)), below the config's
    ``text_encoder_vocab_size`` / ``vocab_size``; None otherwise."""
    if not name.endswith("_inputs"):
        return None
    n = _first_int([cfg], name[:-len("_inputs")] + "_seq_len")
    if not n:
        return None
    vocab = _first_int([cfg], "text_encoder_vocab_size", "vocab_size", default=100)
    return [torch.randint(3, max(4, min(vocab, 100)), (BATCH, n), generator=generator())]



def _paddings_and_codes(cfg, name: str, required: list[str]) -> list | None:
    """Last, for required arguments no other name rule builds: a padding indicator of another required input
    (``<input>_padding``, 1 where padded: zeros in that input's shape and dtype, one per alternative of it, so nothing
    is padded: ``past_values_padding``); a code into a table whose size the config names (``<name>_size``: ``freq``
    for ``freq_size``, an embedding index: (BATCH, 1) zeros). None otherwise."""
    if name.endswith("_padding") and name[:-len("_padding")] in required:
        alts = _required_alternatives(cfg, name[:-len("_padding")], required)
        return [torch.zeros_like(x) for x in alts if torch.is_tensor(x)] or None if alts else None
    if _first_int([cfg], name + "_size"):
        return [torch.zeros(BATCH, 1, dtype=torch.long)]
    return None

def _sub_vocab_ids(cfg, name: str) -> list | None:
    """Token ids of a sub-model's own vocabulary, for a required ``<prefix>_input_ids`` where the config has a
    ``<prefix>_config`` with a ``vocab_size`` (``qformer_input_ids`` of ``qformer_config``: a Q-Former's instruction
    ids); None otherwise."""
    if not name.endswith("_input_ids"):
        return None
    sub = getattr(cfg, name[:-len("_input_ids")] + "_config", None)
    return [_token_ids(sub)] if _first_int([sub], "vocab_size") else None


def _named_states(cfg, name: str) -> list | None:
    """Other embeddings / hidden states a forward requires by a name ending in ``_embeds`` (``noise_embeds``: at
    the widths of `_states`) or ``_hidden_states`` (``context_hidden_states``, another model's states: at those
    widths, then at the hidden width times the number of layers a config list names, ``target_layer_ids`` /
    ``vision_feature_layer``: those layers' states concatenated); None for other names."""
    if name.endswith("_embeds"):
        return _states(cfg) or None
    if not name.endswith("_hidden_states"):
        return None
    hidden = _first_int([cfg], "hidden_size", "hidden_dim", "d_model")
    layers = [len(v) for k, v in vars(cfg).items() if re.search(r"layer_ids$|feature_layers?$", k)
              and isinstance(v, (list, tuple)) and len(v) > 1 and all(isinstance(x, int) for x in v)]
    extra = [torch.randn(BATCH, SEQ, hidden * n, generator=generator()) for n in dict.fromkeys(layers) if hidden]
    return (_states(cfg) + extra) or None


_PAIRED = object()  # placeholder for a mask built from the input it pairs with (`_paired_masks`)


def _named_audio(cfg, name: str, required: list[str]) -> list | None:
    """Audio arguments by name, after the other names: a mel spectrogram (a name with ``mel``: (batch, frames, the
    config's ``input_feat_size`` / ``num_mel_bins`` / ``mel_dim``), frames 64), codebook ids (a name ending in
    ``_input_ids`` on a config with ``num_codebooks``: (batch, SEQ, codebooks) below ``codebook_size``), and a mask
    of another required input (``<input>_mask``: built by `_paired_masks`)."""
    cs = _configs(cfg)
    if name.endswith("_mask") and name[:-len("_mask")] in required:
        return [_PAIRED]
    if "mel" in name.split("_"):
        width = _first_int(cs, "input_feat_size", "num_mel_bins", "mel_dim", "n_mel_bins", default=80)
        return [torch.randn(BATCH, 64, width, generator=generator())]
    books, size = _first_int(cs, "num_codebooks"), _first_int(cs, "codebook_size")
    if name.endswith("_input_ids") and books and size:
        return [torch.randint(0, size, (BATCH, SEQ, books), generator=generator())]
    return None


def _paired_masks(params, cand: dict) -> dict:
    """`_PAIRED` placeholders replaced by a frame mask of the input they pair with (``audio_mel_mask`` of
    ``audio_mel``: (batch, frames)), in the forward's annotated dtype (bool where it says so, else long). Its first
    three quarters of frames are 1 and the rest 0, so frames are kept whichever value the model reads as padding."""
    out = dict(cand)
    for k, v in cand.items():
        if v is _PAIRED:
            x = cand[k[:-len("_mask")]]
            n = x.shape[1]
            m = torch.zeros(BATCH, n, dtype=torch.long)
            m[:, :max(1, 3 * n // 4)] = 1
            out[k] = m.bool() if "bool" in str(params[k].annotation).lower() else m
    return out


def _patchified(cfg, params, cands: list[dict]) -> list[dict]:
    """Towers that take pixel values as flattened patches with their grid (a forward with ``spatial_shapes``:
    NaFlex; or with ``pixel_position_ids``: (x, y) per patch): (BATCH, side², channels × patch²) on a side × side
    grid, side = 4 (twice the pooling kernel where the config pools patches), with the grid and an all-ones patch
    mask where the forward takes one."""
    if "spatial_shapes" not in params and "pixel_position_ids" not in params:
        return cands
    cs = _vision_cfgs(cfg)
    p = _first_int(cs, "patch_size", default=16)
    ch = _first_int(cs, "num_channels", "in_channels", default=3)
    side = max(4, 2 * _first_int(cs, "pooling_kernel_size", default=1))
    extra = {"pixel_values": torch.randn(BATCH, side * side, ch * p * p, generator=generator())}
    if "spatial_shapes" in params:
        extra["spatial_shapes"] = torch.tensor([[side, side]] * BATCH)
    if "pixel_position_ids" in params:
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        extra["pixel_position_ids"] = torch.stack([xs, ys], -1).reshape(1, -1, 2).repeat(BATCH, 1, 1)
    if "pixel_attention_mask" in params:
        extra["pixel_attention_mask"] = torch.ones(BATCH, side * side, dtype=torch.long)
    done = [{**c, **extra} for c in cands if "pixel_values" in c and not extra.keys() <= c.keys()]
    return done + [c for c in cands if "pixel_values" not in c] if done else cands


def _late_patch_layouts(cfg, params) -> list[dict]:
    """Last-resort pixel layouts, by the forward's argument names and config fields: images with their patch grid
    sizes (a forward with ``target_sizes`` / ``tgt_sizes``: (h, w) = side × side patches per image, side = 4), as
    BATCH images and packed into one row of patches (1, channels, patch, BATCH · side² · patch); patch volumes
    (BATCH, temporal patch, patch, patch, channels) for a tower that embeds each patch itself (a config with
    ``temporal_patch_size`` and a forward that takes ``pixel_values`` but no ``grid_thw``)."""
    cs = _vision_cfgs(cfg)
    p = _first_int(cs, "patch_size", default=16)
    ch = _first_int(cs, "num_channels", "in_channels", default=3)
    g, out = generator(), []
    sizes = next((n for n in ("target_sizes", "tgt_sizes") if n in params), None)
    if sizes and "pixel_values" in params:
        side = 4
        grid = torch.tensor([[side, side]] * BATCH)
        out.append({"pixel_values": torch.randn(BATCH, ch, side * p, side * p, generator=g), sizes: grid})
        out.append({"pixel_values": torch.randn(1, ch, p, BATCH * side * side * p, generator=g), sizes: grid})
    tp = _first_int(cs, "temporal_patch_size")
    if tp and "pixel_values" in params and "grid_thw" not in params:
        out.append({"pixel_values": torch.randn(BATCH, tp, p, p, ch, generator=g)})
    return out


def _flattened_patches(cfg) -> torch.Tensor:
    """Pix2Struct-style patches: (BATCH, 16, 2 + patch width), each row's first two entries its (row, column) on a
    4 × 4 grid, the patch width the config's ``patch_embed_hidden_size`` (or channels × patch²)."""
    cs = _vision_cfgs(cfg)
    width = _first_int(cs, "patch_embed_hidden_size") or (
        _first_int(cs, "num_channels", default=3) * _first_int(cs, "patch_size", default=16) ** 2)
    x = torch.randn(BATCH, 16, 2 + width, generator=generator())
    x[:, :, 0] = (torch.arange(16) // 4).float()
    x[:, :, 1] = (torch.arange(16) % 4).float()
    return x


def _feature_masks(params, cands: list[dict]) -> list[dict]:
    """An all-ones frame mask (BATCH, frames: the longer of the features' two inner axes) for audio features where
    the forward takes one by name (``input_features_mask``), which some encoders read unconditionally."""
    if "input_features_mask" not in params:
        return cands
    out = []
    for c in cands:
        f = c.get("input_features")
        if torch.is_tensor(f) and f.dim() == 3 and "input_features_mask" not in c:
            c = {**c, "input_features_mask": torch.ones(BATCH, max(f.shape[1], f.shape[2]), dtype=torch.long)}
        out.append(c)
    return out


def _fill_required(cfg, params, cands: list[dict]) -> list[dict]:
    """Each candidate completed with the forward's required arguments it lacks (one candidate per alternative of
    the built ones, aligned: the i-th alternative of each); a forward none of whose candidates covers its required
    arguments gets candidates of those arguments alone."""
    required = _required_names(params)
    if not required:
        return cands
    grid = "grid_thw" in required
    patches = next((n for n in required if n in ("hidden_states", "pixel_values")), None) if grid else None
    out, late = [], []
    for base in cands or [{}]:
        base = {k: v for k, v in base.items() if k != patches}  # a grid's patches come flattened, not as images
        missing = [n for n in required if n not in base]
        alts = {n: _required_alternatives(cfg, n, required) for n in missing}
        if any(v is None for v in alts.values()):
            continue
        n_alt = max((len(v) for v in alts.values()), default=1)
        for i in range(n_alt):
            cand = _paired_masks(params, {**{n: v[min(i, len(v) - 1)] for n, v in alts.items()}, **base})
            if all(cand.keys() != c.keys() or any(cand[k] is not c[k] for k in c) for c in out):
                out.append(cand)
        if "input_features" in missing:  # the last-resort feature layouts, after every aligned candidate
            late += [_paired_masks(params, {**{n: v[0] for n, v in alts.items()}, "input_features": f, **base})
                     for f in _audio_alternatives(cfg, "input_features")[2:]]
    return out + late or cands


_POS = re.compile(r"pos_(embed|encod)")  # position embeddings / encodings given beside features


def _tower_inputs(cfg, params) -> list[dict]:
    """Last resort for a tower fed its parent's features (a forward with required arguments no other rule builds:
    ``vision_features``, ``decoder_queries``, ``backbone_features``): each required floating-tensor argument by its
    annotation at the config's width, a tensor (BATCH, SEQ, width) or a list of tensors as a feature pyramid
    [(BATCH, width, 4, 4), (BATCH, width, 2, 2)] (fine to coarse; the coarsest has no more positions than SEQ);
    optional ``*_features`` arguments (prompt features a decoder cross-attends to) likewise, and optional position
    embeddings (``*pos_embed*``, ``*pos_encoding*``) in the shapes of the features they go with (the same annotation).
    Arguments the other rules build (``encoder_hidden_states``, ...) take those rules' first alternative. [] where
    the forward has no such argument, or one that is neither built by name nor a floating tensor."""
    width = _first_int([cfg], "hidden_size", "d_model", "hidden_dim")
    named = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = _required_names(params)
    alts = {n: _required_alternatives(cfg, n, required) for n in required}
    unbuilt = [n for n in required if alts[n] is None]
    if not width or not unbuilt:
        return []

    def kind(p) -> str | None:  # "list" / "tensor": a (list of) floating tensor(s) by the annotation
        a = re.sub(r"<class '([\w.]+)'>", r"\1", str(p.annotation)).replace("typing.", "")
        if re.search(r"Long|Bool|Int", a):
            return None
        if re.match(r"(list|List|tuple|Tuple)\[torch\.(Float)?Tensor", a):
            return "list"
        return "tensor" if re.match(r"torch\.(Float)?Tensor", a) else None

    g = generator()
    made = {"list": [torch.randn(BATCH, width, s, s, generator=g) for s in (4, 2)],
            "tensor": torch.randn(BATCH, SEQ, width, generator=g)}
    out = {}
    for n in required:
        if n in unbuilt:
            if kind(named[n]) is None:
                return []
            out[n] = made[kind(named[n])]
        else:
            out[n] = alts[n][0]
    for n, p in named.items():
        if n not in out and kind(p) and (n.endswith("_features") or _POS.search(n)):
            out[n] = made[kind(p)]
    return [out]


def _nested_pixels(cfg, first: torch.Tensor) -> list[torch.Tensor]:
    """Images (BATCH, channels, h, w) at the image sizes its nested configs state (``image_size`` of a backbone or a
    prompt encoder: SAM2's Hiera, EdgeTAM's prompt encoder), each size once, other than `first`'s."""
    sizes = [size2(getattr(c, "image_size", None), 0) for c in _configs(cfg)[1:]]
    sizes = [hw for hw in dict.fromkeys(sizes) if hw[0] > 0 and hw != tuple(first.shape[-2:])]
    return [torch.randn(BATCH, first.shape[1], h, w, generator=generator()) for h, w in sizes]


def _keyword_candidates(model: nn.Module) -> list[dict]:
    """Candidate keyword inputs for a transformers model, most complete first: its main input (token ids, pixels at
    the config's image size and channels, audio features or samples), with pixel values and token ids too where
    the forward takes them (multimodal models), and decoder ids for encoder-decoders."""
    cfg = model.config
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    main = getattr(model, "main_input_name", "input_ids") or "input_ids"
    if isinstance(main, (list, tuple)):  # several main inputs (OneFormer's pixels and task tokens): the first
        main = main[0] if main else "input_ids"
    enc_main = getattr(getattr(model, "encoder", None), "main_input_name", None)
    if main not in ("input_ids", "pixel_values", "input_features", "input_values") and enc_main in params:
        main = enc_main  # an encoder-decoder whose main input is `inputs`: the encoder's (input_values)
    text = _sub(cfg, "text_config", "decoder", "text_encoder")
    make = {"input_ids": lambda: [_token_ids(text)], "pixel_values": lambda: [_pixels(cfg)],
            "input_features": lambda: _audio_alternatives(cfg, "input_features", layouts=False),
            "input_values": lambda: _audio_alternatives(cfg, "input_values"),
            "pixel_values_videos": lambda: [_video(cfg)], "flattened_patches": lambda: [_flattened_patches(cfg)]}
    extra = {}
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        extra["decoder_input_ids"] = _token_ids(_sub(cfg, "decoder", "text_config"), 4)
    if "use_cache" in params:  # no cache objects: hybrid (linear-attention) caches refuse some queries
        extra["use_cache"] = False
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    # a main input the forward does not name (a tower whose config says input_ids, whose forward takes patches)
    mains = make[main]() if main in make and (main in params or not named) else []
    others = {n: make[n]()[0] for n in ("input_ids", "pixel_values") if n != main and n in params}
    cands = [{main: m, **others, **extra} for m in mains] if others else []
    cands += [{main: m, **extra} for m in mains]
    cands += [{n: v, **extra} for n, v in others.items()]
    dummy = getattr(model, "dummy_inputs", None)
    dummy = {k: v for k, v in dummy.items() if k in params or not named} if isinstance(dummy, dict) else {}
    if dummy:  # the model's own (token ids, plus whatever it adds), where the forward names them
        cands.append(dummy)
    # last resorts: codebook-interleaved ids (one row per codebook and sample), audio features where the forward
    # takes them besides its main input, embeddings instead of ids (a forward that refuses ids)
    books = _first_int([text], "num_codebooks")
    if main == "input_ids" and mains and books and books > 1:
        cands.append({"input_ids": _token_ids(text).repeat_interleave(books, 0), **extra})
    if main != "input_features" and "input_features" in params:
        feats = _audio_alternatives(cfg, "input_features", layouts=False)
        cands += [{main: mains[0], "input_features": f, **extra} for f in feats if mains]
        cands += [{"input_features": f, **extra} for f in feats]
    if main == "pixel_values" and mains and mains[0].dim() == 4 and mains[0].shape[-2:] != (224, 224):
        # a convolutional net whose config names no image size and that pools below the default (OCR heads)
        cands.append({"pixel_values": torch.randn(BATCH, mains[0].shape[1], 224, 224, generator=generator()),
                      **extra})
    width = _first_int([text], "hidden_size", "d_model")
    if "inputs_embeds" in params and width:
        cands.append({"inputs_embeds": torch.randn(BATCH, SEQ, width, generator=generator()), **extra})
    # after every earlier candidate (a model one of those runs gets the same inputs as before): audio features in
    # the layouts of `_feature_layouts`, image pairs
    late = _audio_alternatives(cfg, "input_features")[2:] if "input_features" in (main, *params) else []
    if main == "input_features" and mains:
        cands += [{main: f, **others, **extra} for f in late] if others else []
        cands += [{main: f, **extra} for f in late]
    elif main != "input_features" and "input_features" in params:
        cands += [{main: mains[0], "input_features": f, **extra} for f in late if mains]
        cands += [{"input_features": f, **extra} for f in late]
    if main == "pixel_values" and mains and mains[0].dim() == 4:
        # image pairs (batch, 2, channels, height, width): keypoint matchers take both images of a pair at once
        cands.append({"pixel_values": torch.stack([mains[0], mains[0].flip(-1)], 1), **extra})
    cands += [{**c, **extra} for c in _late_patch_layouts(cfg, params)]
    if main == "pixel_values" and mains and mains[0].dim() == 4:  # after those: the image sizes of sub-configs
        cands += [{"pixel_values": p, **extra} for p in _nested_pixels(cfg, mains[0])]
    filled = _fill_required(cfg, params, _patchified(cfg, params, cands))
    out = _feature_masks(params, _with_video(cfg, params, _timed_audio(cfg, params, filled)))
    # after all of those: images in whole attention windows with a patch per query (a windowed detector backbone)
    windowed = _windowed_pixels(cfg) if main == "pixel_values" and mains else None
    last = [{"pixel_values": windowed, **others, **extra}] if windowed is not None else []
    out = out + _named_late(cfg, params, out) + _tower_inputs(cfg, params) + last
    out = out + _max_size_pixels(cfg, out)
    out = out + _cross_states(cfg, params, out)
    out = out + _image_sets(params, out)
    out = out + _side_inputs(cfg, params, out) + _whole_audio(cfg, params)
    out = out + _channels_first(params, out) + _step_labels(cfg, params, out)
    tail = _tiled_pixels(cfg, params) + _prompt_images(cfg, params) + _frames_in_batch(cfg, params)
    out = out + tail + _grid_patches(cfg, params) + _windowed_states(cfg, params)
    later = _decoder_values(cfg, params) + _waveform_states(cfg, params) + _all_modalities(cfg, params)
    later = later + _optional_none(params, out + later) + _common_mel(cfg, params) + _flow_step(cfg, params)
    return (out + _beside_text(cfg, params, out) + _index_args(params, out) + _patch_layouts_r3(cfg, params, main, out)
            + later)



def _beside_text(cfg, params, cands: list[dict]) -> list[dict]:
    """Last of all (a model an earlier candidate runs keeps its inputs), each text candidate (``input_ids`` /
    ``inputs_embeds``, one per layout) again with optional inputs beside the tokens, by the forward's argument names
    and config fields: zero (text) token types for an argument ending in ``token_type_ids`` it lacks
    (``mm_token_type_ids``, which a multimodal forward requires in training); per-object features for an argument
    whose config names its width (``<name>_dim``, or ``<stem>_dim`` of a plural ``<stem>s``: ``visual_feats`` at
    ``visual_feat_dim``, ``visual_pos`` at ``visual_pos_dim``: (BATCH, SEQ objects, width)); and beside
    ``inputs_embeds``, the other ``*_embeds`` arguments at the widths of `_states`, then at the config's
    ``hidden_size_*`` widths (a decoder fed its parent's patch embeddings, ``patch_embeds`` at
    ``hidden_size_global``)."""
    g, out = generator(), []
    texts = [c for c in cands if torch.is_tensor(c.get("input_ids", c.get("inputs_embeds")))]
    texts = [c for i, c in enumerate(texts) if all(c.keys() != d.keys() or any(
        c[k].shape != d[k].shape for k in c if torch.is_tensor(c[k])) for d in texts[:i])]  # one per layout
    types = [n for n in params if n.endswith("token_type_ids")]
    feats = {n: _first_int([cfg], n + "_dim", n[:-1] + "_dim" if n.endswith("s") else n + "_dim") for n in params
             if n not in ("input_ids", "inputs_embeds") and not n.endswith(("_ids", "_mask"))}
    feats = {n: d for n, d in feats.items() if d}
    for c in texts:
        ids = c.get("input_ids", c.get("inputs_embeds"))
        b, n = ids.shape[:2]
        if any(t not in c for t in types):
            out.append({**c, **{t: torch.zeros(b, n, dtype=torch.long) for t in types if t not in c}})
        if feats and not feats.keys() <= c.keys():
            out.append({**c, **{k: torch.randn(b, SEQ, d, generator=g) for k, d in feats.items() if k not in c}})
        embeds = [k for k in params if k.endswith("_embeds") and k != "inputs_embeds" and k not in c]
        if "inputs_embeds" in c and embeds:
            widths = [x.shape[-1] for x in _states(cfg)] + [v for k, v in _positive_ints(cfg).items()
                                                            if k.startswith("hidden_size_")]
            out += [{**c, **{k: torch.randn(b, SEQ, w, generator=g) for k in embeds}} for w in dict.fromkeys(widths)]
    return out


_INDEX = re.compile(r"Long|Int")


def _index_args(params, cands: list[dict]) -> list[dict]:
    """Last of all, for a forward with required integer arguments that no rule builds (annotated ``LongTensor`` /
    ``IntTensor``: positions, counts, type ids of a decision head: ``marks``, ``num_options``,
    ``question_type_ids``): the first candidate with token ids, with each of them (BATCH, 1) ones: position 1, one
    item, type 1 (valid in any table of two or more entries)."""
    first = next((c for c in cands if torch.is_tensor(c.get("input_ids"))), None)
    required = _required_names(params)
    missing = [n for n in required if first is not None and n not in first]
    if not missing or not all(_INDEX.search(str(params[n].annotation)) for n in missing):
        return []
    return [{**first, **{n: torch.ones(BATCH, 1, dtype=torch.long) for n in missing}}]

def _image_sets(params, cands: list[dict]) -> list[dict]:
    """Last of all, for a forward that takes ``pixel_values``: each candidate with images (BATCH, channels, h, w)
    again as one-image sets (BATCH, 1, channels, h, w): a model that takes a number-of-images (or frames) axis;
    with an all-ones ``image_attention_mask`` (BATCH, text length, 1) where the forward takes one and the candidate
    has token ids (each token attends to the sample's image)."""
    if "pixel_values" not in params:
        return []
    out = []
    for c in cands:
        x = c.get("pixel_values")
        if not torch.is_tensor(x) or x.dim() != 4:
            continue
        c = {**c, "pixel_values": x.unsqueeze(1)}
        ids = c.get("input_ids")
        if "image_attention_mask" in params and "image_attention_mask" not in c and torch.is_tensor(ids):
            c["image_attention_mask"] = torch.ones(*ids.shape[:2], 1, dtype=torch.long)
        out.append(c)
    return out


def _cross_states(cfg, params, cands: list[dict]) -> list[dict]:
    """Last of all, for a forward whose cross-attention states are optional (``encoder_hidden_states``, not
    required) on a config that states their width (``encoder_hidden_size``: a Q-Former run alone, whose
    cross-attention layers need the vision tower's states): each candidate without them again, with them (BATCH,
    SEQ, that width)."""
    p = params.get("encoder_hidden_states")
    width = _first_int([cfg], "encoder_hidden_size")
    if p is None or p.default is inspect.Parameter.empty or not width:
        return []
    states = torch.randn(BATCH, SEQ, width, generator=generator())
    return [{**c, "encoder_hidden_states": states} for c in cands if "encoder_hidden_states" not in c]


_NOT_STEP_INPUT = re.compile(r"mask$|ids$|^output_|^return_|^use_")


def _named_late(cfg, params, cands: list[dict]) -> list[dict]:
    """Last-resort candidates, after all others (a model one of those runs keeps its inputs), from optional
    arguments the forward names: trajectories (an argument whose first word starts with the stem of a config
    ``<stem>_dim`` field: ``states`` / ``actions`` at ``state_dim`` / ``act_dim``, (BATCH, SEQ, dim); with per-step
    scalars ``returns_to_go`` / ``rewards`` (BATCH, SEQ, 1) and ``timesteps`` 0..SEQ-1); tokens pooled into patches
    (``patch_ids`` with ``num_patches``: two tokens a patch); retrieved documents (``context_input_ids``: the
    config's ``n_docs`` rows of generator ids per sample, with ``context_attention_mask`` and ``doc_scores``)."""
    g, out = generator(), []
    stems = {k[:-4]: v for k, v in _positive_ints(cfg).items() if k.endswith("_dim") and len(k) > 6}
    steps = {n: torch.randn(BATCH, SEQ, d, generator=g) for n in params if not _NOT_STEP_INPUT.search(n)
             for stem, d in stems.items() if n.split("_")[0].startswith(stem)}
    if steps:
        scalars = [n for n in ("returns_to_go", "rewards") if n in params]  # one number a step
        steps.update({n: torch.randn(BATCH, SEQ, 1, generator=g) for n in scalars})
        if "timesteps" in params:
            steps["timesteps"] = torch.arange(SEQ).repeat(BATCH, 1)
        out.append(steps)
    texts = [c for c in cands if torch.is_tensor(c.get("input_ids", c.get("inputs_embeds")))]
    if "patch_ids" in params and "num_patches" in params:
        for c in texts:
            n = c.get("input_ids", c.get("inputs_embeds")).shape[1]
            out.append({**c, "patch_ids": (torch.arange(n) // 2).repeat(BATCH, 1), "num_patches": -(-n // 2)})
    if "context_input_ids" in params:
        docs = _first_int([cfg], "n_docs", default=1)
        gen = _sub(cfg, "generator", "text_config")
        ctx = {"context_input_ids": _token_ids(gen).repeat_interleave(docs, 0)}
        if "context_attention_mask" in params:
            ctx["context_attention_mask"] = torch.ones(BATCH * docs, SEQ, dtype=torch.long)
        if "doc_scores" in params:
            ctx["doc_scores"] = torch.randn(BATCH, docs, generator=g)
        out += [{**c, **ctx} for c in cands if "input_ids" in c] or [ctx]
    return out


def _with_video(cfg, params, cands: list[dict]) -> list[dict]:
    """Last resorts for a forward that takes a video clip beside its other inputs (``pixel_values_videos``, not
    required: an audio-video encoder): each candidate without one again, with the clip of `_video`."""
    if "pixel_values_videos" not in params:
        return cands
    clip = _video(cfg)
    return cands + [{**c, "pixel_values_videos": clip} for c in cands if "pixel_values_videos" not in c]


_LENS = ("feature_lens", "feature_lengths")


def _timed_audio(cfg, params, cands: list[dict]) -> list[dict]:
    """Last-resort audio candidates whose lengths are tied (after every other candidate): features with their
    per-sample frame counts where the forward takes them (``feature_lens``: the features packed as (mel, batch ×
    frames), then batched (batch, mel, frames)); and where it takes samples and features together (codecs with a
    semantic encoder beside the acoustic one), features at one frame per hop of samples (the config's
    ``hop_length``: 16000 samples, 16000 // hop frames) in each (frames, width) layout,
    with an all-ones frame mask where the forward takes one."""
    out = list(cands)
    a, cs = _sub(cfg, "audio_config", "encoder_config"), _configs(cfg)
    mel = int(getattr(a, "num_mel_bins", None) or getattr(a, "feature_size", None) or 80)
    lens = next((n for n in _LENS if n in params), None)
    if lens and "input_features" in params:
        t = 2 * int(getattr(a, "max_source_positions", 0) or 32)
        g = generator()
        n = torch.full((BATCH,), t, dtype=torch.long)
        out += [{"input_features": torch.randn(mel, BATCH * t, generator=g), lens: n},
                {"input_features": torch.randn(BATCH, mel, t, generator=g), lens: n}]
    hop = _first_int(cs, "hop_length")
    if hop and "input_values" in params and "input_features" in params and 16000 // hop > 0:
        t = 16000 // hop
        widths = dict.fromkeys([mel] + [w for _, w in _feature_layouts(cfg, mel, mel)])
        samples = [v for v in _audio_alternatives(cfg, "input_values") if v.shape[-1] == 16000]
        mask = ({"input_features_mask": torch.ones(BATCH, t, dtype=torch.long)} if "input_features_mask" in params
                else {})
        out += [{"input_values": v, "input_features": torch.randn(BATCH, t, w, generator=generator()), **mask}
                for w in widths for v in samples]
    return out


def _max_size_pixels(cfg, cands: list[dict]) -> list[dict]:
    """Last-resort pixels, after all others, for a config that names the frame size its forward needs
    (``max_img_size``: a visual prompt laid over each frame at that size): pixel values at that size, with the
    config's ``num_frames`` frames where it names them (BATCH, frames, channels, size, size), in the first candidate
    with pixel values only (the most complete: each failed try at that size is slow)."""
    cs = _vision_cfgs(cfg)
    size = _first_int(cs, "max_img_size")
    if not size:
        return []
    frames = _first_int(cs, "num_frames")
    ch = _first_int(cs, "num_channels", "in_channels", default=3)
    shape = (BATCH, frames, ch, size, size) if frames else (BATCH, ch, size, size)
    pixels = torch.randn(shape, generator=generator())
    first = next((c for c in cands if "pixel_values" in c), None)
    return [{**first, "pixel_values": pixels}] if first else []


def _side_inputs(cfg, params, cands: list[dict]) -> list[dict]:
    """Last of all (a model an earlier candidate runs keeps its inputs), inputs beside the ids or from config fields,
    by the forward's argument names: each text candidate (``input_ids`` / ``inputs_embeds``) with ids into a list a
    config field names (`_listed_ids`: ``lang_ids`` for ``languages``), with the states of a parent model (an
    optional ``last_hidden_state``: (BATCH, tokens, width) at the widths of `_states`), and with layout boxes
    (``bbox``: (BATCH, tokens, 4) as normalised x0 < x1, y0 < y1); ids with one column per channel (BATCH, SEQ, n)
    where the config names ``num_codebooks`` / ``num_channels`` and no image size (codebook ids by channel), also
    with ``encoder_hidden_states`` at the config's ``cross_hidden_size`` and the widths of `_states`; audio features
    with a channel axis where the (audio) config names ``patch_embed_input_channels`` (a spectrogram embedded as an
    image: (BATCH, channels, 2 × mel, mel), in the first candidate with features); and a
    time series' context at the config's ``context_length`` × ``num_input_channels`` (``past_values``)."""
    g, out = generator(), []
    texts = [c for c in cands if torch.is_tensor(c.get("input_ids", c.get("inputs_embeds")))]
    texts = [c for i, c in enumerate(texts) if all(c.keys() != d.keys() or any(
        c[k].shape != d[k].shape for k in c if torch.is_tensor(c[k])) for d in texts[:i])]  # one per layout
    listed = _listed_ids(cfg, params)
    for c in texts:
        ids = c.get("input_ids", c.get("inputs_embeds"))
        n, b = ids.shape[1], ids.shape[0]
        if listed:
            out.append({**c, **{k: v[:b] if len(v) >= b else v.repeat(b)[:b] for k, v in listed.items()}})
        if "last_hidden_state" in params and "last_hidden_state" not in c:
            out += [{**c, "last_hidden_state": torch.randn(b, n, w.shape[-1], generator=g)} for w in _states(cfg)]
        if "bbox" in params and "bbox" not in c:
            lo, hi = torch.rand(b, n, 2, generator=g) * 0.5, 0.5 + torch.rand(b, n, 2, generator=g) * 0.5
            out.append({**c, "bbox": torch.stack([lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]], -1)})
    text = _sub(cfg, "text_config", "decoder", "text_encoder")
    books = _first_int([text], "num_codebooks", "num_channels")
    if "input_ids" in params and books and books > 1 and not _first_int([text], "image_size"):
        extra = {"use_cache": False} if "use_cache" in params else {}
        ids = {"input_ids": torch.stack([_token_ids(text)] * books, -1), **extra}
        out.append(ids)
        if "encoder_hidden_states" in params:  # a decoder that cross-attends unconditionally: its encoder's states
            cross = _first_int([cfg], "cross_hidden_size", "encoder_hidden_size")
            widths = dict.fromkeys(([cross] if cross else []) + [x.shape[-1] for x in _states(cfg)])
            out += [{**ids, "encoder_hidden_states": torch.randn(BATCH, SEQ, w, generator=g)} for w in widths]
    a = _sub(cfg, "audio_config", "encoder_config")
    chans = _first_int([a], "patch_embed_input_channels")
    first = next((c for c in cands if torch.is_tensor(c.get("input_features"))), None)
    if chans and first is not None:  # spectrogram crops as image channels: (BATCH, crops, frames, mel bins)
        mel = _first_int([a], "num_mel_bins", "feature_size", default=80)
        out.append({**first, "input_features": torch.randn(BATCH, chans, 2 * mel, mel, generator=g)})
    ctx = _first_int([cfg], "context_length")
    if "past_values" in params and ctx:
        chans = _first_int([cfg], "num_input_channels", default=1)
        out.append({"past_values": torch.randn(BATCH, ctx, chans, generator=g)})
    return out


def _listed_ids(cfg, params) -> dict:
    """Ids into a list a config field names, for an optional ``<stem>_ids`` argument whose stem starts the name of a
    config field holding a list of strings (``lang_ids`` and ``languages``: one adapter per language): (BATCH,),
    sample i the i-th entry (cycling)."""
    out = {}
    for n in params:
        stem = n[:-len("_ids")] if n.endswith("_ids") else ""
        if len(stem) < 3 or stem in ("input", "position", "token_type", "decoder_input"):
            continue
        for k, v in vars(cfg).items():
            if k.startswith(stem) and isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
                out[n] = torch.arange(BATCH) % len(v)
                break
    return out


def _whole_audio(cfg, params) -> list[dict]:
    """Last-resort audio, after all others, in the whole units a config names: features (BATCH, mel, 2 ·
    ``n_window`` frames: one encoder chunk) with an all-ones frame mask where the forward takes
    ``input_features_mask``; samples in whole tokens (``input_values`` (BATCH, 16000 rounded up to a multiple of the
    config's ``samples_per_token``, else of the product of its ``patch_sizes``)); features (BATCH, mel, 64 frames)
    with the waveform samples behind them where the forward requires a ``*_sample_lengths`` argument (64 frames ×
    the config's ``hop_length`` per sample)."""
    cs, g, out = _configs(cfg), generator(), []
    a = _sub(cfg, "audio_config", "encoder_config")
    mel = int(getattr(a, "num_mel_bins", None) or getattr(a, "feature_size", None) or 80)
    window = _first_int(cs, "n_window")
    if window and "input_features" in params:
        t = 2 * window
        mask = ({"input_features_mask": torch.ones(BATCH, t, dtype=torch.long)} if "input_features_mask" in params
                else {})
        out.append({"input_features": torch.randn(BATCH, mel, t, generator=g), **mask})
    sizes = next((c.patch_sizes for c in cs if isinstance(getattr(c, "patch_sizes", None), (list, tuple))
                  and all(isinstance(x, int) and x > 0 for x in c.patch_sizes)), None)
    unit = _first_int(cs, "samples_per_token") or (int(torch.tensor(sizes).prod()) if sizes else None)
    if unit and "input_values" in params:
        out.append({"input_values": torch.randn(BATCH, -(-16000 // unit) * unit, generator=g)})
    lengths = [n for n, p in params.items() if n.endswith("sample_lengths") and p.default is inspect.Parameter.empty]
    hop = _first_int(cs, "hop_length")
    if lengths and hop and "input_features" in params:
        out.append({"input_features": torch.randn(BATCH, mel, 64, generator=g),
                    **{n: torch.full((BATCH,), 64 * hop, dtype=torch.long) for n in lengths}})
    return out


def _channels_first(params, cands: list[dict]) -> list[dict]:
    """Last of all: the first candidate that gives a required ``hidden_states`` or mel-spectrogram argument (a name
    with ``mel``) as a (batch, frames, width) tensor, again with those tensors channels first (batch, width,
    frames), at most SEQ frames: a convolutional decoder or vocoder that reads latents / mel bins as its input
    channels (and upsamples each frame hundreds of times)."""
    names = [n for n, p in params.items() if p.default is inspect.Parameter.empty
             and (n == "hidden_states" or "mel" in n.split("_"))]
    for c in cands:
        hit = [n for n in names if torch.is_tensor(c.get(n)) and c[n].dim() == 3 and c[n].is_floating_point()]
        if hit:
            return [{**c, **{n: c[n][:, :SEQ].transpose(1, 2).contiguous() for n in hit}}]
    return []


def _step_labels(cfg, params, cands: list[dict]) -> list[dict]:
    """Last of all, for a forward that takes several ``<name>_labels`` arguments (the targets a training forward
    requires: a speech synthesizer's): the first candidate with token ids, with each of them by its name and
    annotation: an integer one as per-token frame counts (2 per token, (batch, tokens)), a ``spectrogram`` / ``mel``
    one as the frames those counts give (batch, 2 · tokens, the config's ``num_mel_bins``), other ones as a scalar per
    token (batch, tokens, 1)."""
    names = [n for n in params if n.endswith("_labels") and n != "labels"]
    first = next((c for c in cands if torch.is_tensor(c.get("input_ids"))), None)
    if len(names) < 2 or first is None:
        return []
    n = first["input_ids"].shape[1]
    mel = _first_int(_configs(cfg), "num_mel_bins", default=80)
    g, out = generator(), {}
    for name in names:
        words = name.split("_")
        if re.search(r"Long|Int", str(params[name].annotation)):
            out[name] = torch.full((BATCH, n), 2, dtype=torch.long)
        elif "spectrogram" in words or "mel" in words:
            out[name] = torch.randn(BATCH, 2 * n, mel, generator=g)
        else:
            out[name] = torch.randn(BATCH, n, 1, generator=g)
    return [{**first, **out}]


def _prompt_images(cfg, params) -> list[dict]:
    """Last resort, after every other candidate, for a forward that requires prompt images beside its pixels (a
    ``<prompt>_pixel_values`` argument, with its ``<prompt>_masks`` mask images where it takes them) and stacks them
    with the image along the height into one picture at the config's image size: each of them at half its height."""
    prompts = [n for n, p in params.items() if n.endswith("_pixel_values") and p.default is inspect.Parameter.empty]
    if "pixel_values" not in params or not prompts:
        return []
    x = _pixels(cfg)
    h = x.shape[-2] // 2
    if h < 1:
        return []
    names = ["pixel_values", *prompts, *(n[:-13] + "_masks" for n in prompts if n[:-13] + "_masks" in params)]
    g = generator()
    return [{n: torch.randn(*x.shape[:-2], h, x.shape[-1], generator=g) for n in names}]


def _frames_in_batch(cfg, params) -> list[dict]:
    """Last resort, after every other candidate, for a frame tower whose config names ``num_frames`` (so `_pixels`
    builds clips (BATCH, frames, channels, h, w)) but whose forward takes the frames folded into the batch:
    (BATCH · frames, channels, h, w)."""
    x = _pixels(cfg) if "pixel_values" in params else None
    return [{"pixel_values": x.flatten(0, 1)}] if x is not None and x.dim() == 5 else []


def _grid_patches(cfg, params) -> list[dict]:
    """Last resort, after every other candidate, for a tower that takes its patches as images with an optional patch
    grid (``grid_thw`` not required, so `_fill_required` does not build it): the patches of `_patch_grid`, packed into
    one row of patch images (1, patches, channels, patch, patch), with their ``grid_thw``."""
    if "grid_thw" not in params or "pixel_values" not in params:
        return []
    cs = _vision_cfgs(cfg)
    p = _first_int(cs, "patch_size", default=14)
    patches, grid, _ = _patch_grid(cfg)
    if patches.shape[1] % (p * p):
        return []
    return [{"pixel_values": patches.reshape(1, patches.shape[0], -1, p, p), "grid_thw": grid}]


def _windowed_states(cfg, params) -> list[dict]:
    """Last resort, after every other candidate, for a windowed encoder fed its hidden states already partitioned
    into the config's ``num_windows`` attention windows (its global layers fold the windows back into each sample):
    the states of `_states` with BATCH · num_windows rows."""
    k = _first_int([cfg], "num_windows", default=1)
    if k == 1 or "hidden_states" not in params:
        return []
    return [{"hidden_states": x.repeat(k, 1, 1)} for x in _states(cfg)]


def _tiled_pixels(cfg, params) -> list[dict]:
    """Last resort, after every other candidate, for a forward that takes images cut into tiles with their aspect
    ratios (``aspect_ratio_ids``): one image a sample in the config's ``max_num_tiles`` tiles at its image size,
    (BATCH, 1, tiles, channels, size, size), the id (1-based) of the first ``supported_aspect_ratios`` entry that
    uses every tile (else the first), and ``aspect_ratio_mask`` (BATCH, 1, tiles) marking the tiles it uses."""
    if "aspect_ratio_ids" not in params:
        return []
    cs = _vision_cfgs(cfg)
    tiles = _first_int(cs, "max_num_tiles", default=1)
    ratios = next((getattr(c, "supported_aspect_ratios", None) for c in cs
                   if getattr(c, "supported_aspect_ratios", None)), None) or [[1, 1]]
    used = [int(torch.tensor(r).prod()) for r in ratios]
    i = next((k for k, n in enumerate(used) if n == tiles), 0)
    size = _first_int(cs, "image_size", default=32)
    ch = _first_int(cs, "num_channels", "in_channels", default=3)
    out = {"pixel_values": torch.randn(BATCH, 1, tiles, ch, size, size, generator=generator()),
           "aspect_ratio_ids": torch.full((BATCH, 1), i + 1, dtype=torch.long)}
    if "aspect_ratio_mask" in params:
        mask = torch.zeros(BATCH, 1, tiles, dtype=torch.long)
        mask[..., :min(used[i], tiles)] = 1
        out["aspect_ratio_mask"] = mask
    return [out]


def example_inputs(model: nn.Module) -> list[tuple] | None:
    """Candidate (args, kwargs) for a transformers model (one with a config and a `main_input_name`); None for any
    other model."""
    if not (hasattr(model, "config") and hasattr(model.config, "to_dict") and hasattr(model, "main_input_name")):
        return None
    return [((), kw) for kw in _keyword_candidates(model)]


def _patch_layouts_r3(cfg, params, main: str, cands: list[dict]) -> list[dict]:
    """Last of all (a model an earlier candidate runs keeps its inputs), pixel layouts by the forward's argument
    names and config fields: images as rows of flattened patches (BATCH, (h / p)·(w / p), channels · p²) at the
    image size (``patch_size`` p; a tower whose patch embedding is a linear layer over whole rows); a patch grid's
    patches as a batch of patch images (patches, channels · temporal patch, p, p) with a required ``grid_thw``;
    for a required ``<prefix>_grid_thw`` (a grid counted in merged tokens, ``spatial_merge_size`` m): one (1, 2, 2)
    grid per image and its tokens as channels-last patch images (tokens, m·p, m·p, channels); images for a required
    ``hidden_states`` where the model's main input is ``pixel_values`` and the forward takes none (a convolutional
    backbone whose forward names its images so) and where no earlier candidate gives it; a head's required
    ``hidden_states`` (its only required argument) at each int ``*_out_channels`` width of the config (the channels
    of the features it reads: ``post_conv_out_channels``), (BATCH, SEQ, width); Pix2Struct-style
    ``flattened_patches`` where the forward takes them but its main input is another (`_flattened_patches`); a
    required int ``num_<x>`` count of the sequence's leading tokens (SEQ // 2) beside the first candidate that
    lacks only it; and the first text-and-image candidate with an ``<x>_embeds_position_mask`` marking where the
    config's ``latent_query_num`` image embeddings go (after one token), its ids lengthened to hold them."""
    g, out = generator(), []
    cs = _vision_cfgs(cfg)
    p = _first_int(cs, "patch_size")
    ch = _first_int(cs, "num_channels", "in_channels", default=3)
    required = _required_names(params)
    if p and "pixel_values" in params and not any(n.endswith("grid_thw") for n in params):
        h, w = _pixels(cfg).shape[-2:]
        if h >= p and w >= p:
            out.append({"pixel_values": torch.randn(BATCH, (h // p) * (w // p), ch * p * p, generator=g)})
    if "grid_thw" in required and "pixel_values" in params and p:
        patches, grid, _ = _patch_grid(cfg)
        if patches.shape[1] % (p * p) == 0:
            out.append({"pixel_values": patches.reshape(patches.shape[0], -1, p, p), "grid_thw": grid})
    grids = [n for n in required if n.endswith("_grid_thw")]
    if grids and "pixel_values" in params and p:
        m = _first_int(cs, "spatial_merge_size", "merge_size", default=1)
        tokens = BATCH * 2 * 2
        out.append({"pixel_values": torch.randn(tokens, m * p, m * p, ch, generator=g),
                    **{n: torch.tensor([[1, 2, 2]] * BATCH) for n in grids}})
    if (main == "pixel_values" and "pixel_values" not in params and "hidden_states" in required
            and not any("hidden_states" in c for c in cands)):
        out.append({"hidden_states": _pixels(cfg)})
    if "hidden_states" in required and set(required) <= {"hidden_states"}:  # a head fed another net's features
        widths = [v for k, v in _positive_ints(cfg).items() if k.endswith("_out_channels")]
        out += [{"hidden_states": torch.randn(BATCH, SEQ, w, generator=g)} for w in dict.fromkeys(widths)]
    if "flattened_patches" in params and main != "flattened_patches" and not any(
            "flattened_patches" in c for c in cands):
        out.append({"flattened_patches": _flattened_patches(cfg)})
    counts = [n for n in required if n.startswith("num_") and "int" in str(params[n].annotation)]
    if counts:
        base = next((c for c in cands if set(required) - set(c) == set(counts)), None)
        if base is None:
            alts = {n: _required_alternatives(cfg, n, required) for n in required if n not in counts}
            base = {n: v[0] for n, v in alts.items() if v} if all(alts.values()) else None
        if base is not None:
            out.append({**base, **{n: SEQ // 2 for n in counts}})
    masks = [n for n in params if n.endswith("_embeds_position_mask")]
    k = _first_int([cfg], "latent_query_num")
    first = next((c for c in cands if torch.is_tensor(c.get("input_ids")) and "pixel_values" in c), None)
    if masks and k and first is not None:
        ids = _token_ids(_sub(cfg, "text_config"), k + SEQ)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        mask[:, 1:k + 1] = 1
        extra = {"attention_mask": torch.ones(ids.shape, dtype=torch.long)} if "attention_mask" in first else {}
        out.append({**first, "input_ids": ids, **extra, **{n: mask for n in masks}})
    return out


def _decoder_values(cfg, params) -> list[dict]:
    """Last of all, for an encoder-decoder over continuous values (a forward that takes ``decoder_input_values``:
    SpeechT5's model without its pre-nets, whose encoder and decoder read hidden states): ``input_values`` and
    ``decoder_input_values`` both as hidden states at the widths of `_states` (the config's input / hidden width),
    one candidate per width. [] for any other forward."""
    if "decoder_input_values" not in params or "input_values" not in params:
        return []
    extra = {"use_cache": False} if "use_cache" in params else {}
    return [{"input_values": x, "decoder_input_values": x.flip(1), **extra} for x in _states(cfg)]


def _waveform_states(cfg, params) -> list[dict]:
    """Last of all, for a waveform encoder whose forward takes the samples as a required ``hidden_states`` (a
    convolutional codec encoder: VibeVoice's acoustic tokenizer encoder): (BATCH, the config's ``channels`` /
    ``audio_channels``, samples) with the samples two whole latent frames of the product of the config's
    ``downsampling_ratios``. [] where the forward takes no required ``hidden_states`` or the config names no ratios."""
    p = params.get("hidden_states")
    ratios = getattr(cfg, "downsampling_ratios", None)
    if p is None or p.default is not inspect.Parameter.empty or not (
            isinstance(ratios, (list, tuple)) and ratios and all(isinstance(r, int) and r > 0 for r in ratios)):
        return []
    chans = _first_int([cfg], "channels", "audio_channels", default=1)
    hop = int(torch.tensor(ratios).prod())
    return [{"hidden_states": torch.randn(BATCH, chans, 2 * hop, generator=generator())}]


_MODALITIES = ("input_ids", "pixel_values", "pixel_values_videos", "input_values", "input_features")


def _all_modalities(cfg, params) -> list[dict]:
    """Last of all, for a forward that takes several modalities by name and requires a combination of them (a
    tri-modal contrastive model, PE audio-video: at least two of text, video and audio; its text + video path alone
    breaks): every modality input it names at once, each by `_required_alternatives` (the i-th alternative of each,
    aligned: audio samples flat, then with a channel axis). [] where it names fewer than three of them."""
    names = [n for n in _MODALITIES if n in params]
    if len(names) < 3:
        return []
    alts = {n: _required_alternatives(cfg, n, []) or [] for n in names}
    alts = {n: v for n, v in alts.items() if v}
    if len(alts) < 3:
        return []
    extra = {"use_cache": False} if "use_cache" in params else {}
    n_alt = max(len(v) for v in alts.values())
    return [{**{n: v[min(i, len(v) - 1)] for n, v in alts.items()}, **extra} for i in range(n_alt)]


def _optional_none(params, cands: list[dict]) -> list[dict]:
    """Last of all: each candidate that gives a tensor for a required argument annotated as optional (``mask:
    torch.Tensor | None`` with no default: Phi-4-multimodal's audio encoder, which builds its own streaming mask
    where it gets None) again with None there (a tensor built for it by its annotation alone rarely has the shape
    the forward wants). [] where the forward has no such argument."""
    names = [n for n in _required_names(params) if re.search(r"None|Optional", str(params[n].annotation))]
    out = []
    for c in cands:
        hit = [n for n in names if torch.is_tensor(c.get(n))]
        if hit:
            out.append({**c, **{n: None for n in hit}})
    return out


_MEL_FIELDS = ("num_mel_bins", "feature_size", "input_feat_size", "input_feat_per_channel", "n_mels", "mel_bins",
               "num_mels", "input_dim", "model_in_dim")


def _common_mel(cfg, params) -> list[dict]:
    """Last of all, for a forward that takes ``input_features`` on a config (nested ones included) that names no
    feature width (none of `_MEL_FIELDS`): features (BATCH, 64 frames, 128 mel bins), the other common mel count
    beside the 80 the earlier candidates assume (Gemma-4's audio encoder: its feature extractor's 128 bins, which its
    config does not state; its subsampler's projection is sized for them). [] otherwise."""
    if "input_features" not in params or _first_int(_configs(cfg), *_MEL_FIELDS):
        return []
    return [{"input_features": torch.randn(BATCH, 64, 128, generator=generator())}]


def inputs_with_config(module: nn.Module, cfg) -> list[tuple]:
    """Candidate (args, kwargs) for a submodule with no config of its own (a composite's encoder), from its
    forward's required arguments built by name (`_required_alternatives`) with its parent model's config `cfg`;
    [] where one of them is not built."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return []
    required = _required_names(params)
    if not required:
        return []
    return [((), c) for c in _fill_required(cfg, params, [])]


def _flow_step(cfg, params) -> list[dict]:
    """Last of all, one denoising step of a code-conditioned mel generator (a forward that requires ``time_step``
    and a ``<x>_code``: Qwen2.5-Omni's token-to-wave DiT), each required argument by name and the config's widths:
    the step times (BATCH,) in [0, 1), the codes (BATCH, SEQ) below ``num_embeds``, the frames (BATCH, SEQ ×
    ``repeats``, width) at ``mel_dim`` for ``hidden_states`` and a ``*_vector`` (the reference mel), at
    ``enc_emb_dim`` for a ``*_embedding`` (the speaker embedding per frame). [] where the forward or the config lacks
    them, or requires another argument."""
    required = _required_names(params)
    codes = [n for n in required if n.endswith("_code")]
    mel, emb, books = (_first_int([cfg], k) for k in ("mel_dim", "enc_emb_dim", "num_embeds"))
    if "time_step" not in required or len(codes) != 1 or not (mel and emb and books):
        return []
    g = generator()
    frames = SEQ * _first_int([cfg], "repeats", default=1)
    out = {"time_step": torch.rand(BATCH, generator=g), codes[0]: torch.randint(0, books, (BATCH, SEQ), generator=g)}
    for n in required:
        if n in out:
            continue
        if n == "hidden_states" or n.endswith("_vector"):
            out[n] = torch.randn(BATCH, frames, mel, generator=g)
        elif n.endswith("_embedding"):
            out[n] = torch.randn(BATCH, frames, emb, generator=g)
        else:
            return []
    return [out]
