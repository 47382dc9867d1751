"""Example inputs for the generic probe on a transformers model (registered with `hf_penal.discovery.inputs`).

They are read from the model's config: token ids below its vocabulary size that avoid its special tokens, pixels at
its image size and channel count (frames for video models), audio features at its mel-bin / feature width or raw
samples, decoder ids for encoder-decoders.
"""
from __future__ import annotations

import inspect

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
    h, w = size2(getattr(v, "image_size", None) or getattr(cfg, "image_size", None), 32)
    c = int(getattr(v, "num_channels", None) or getattr(cfg, "num_channels", None) or 3)
    frames = getattr(v, "num_frames", None)
    shape = (BATCH, int(frames), c, h, w) if isinstance(frames, int) and frames > 0 else (BATCH, c, h, w)
    return torch.randn(shape, generator=generator())


def _audio_alternatives(cfg, name: str) -> list[torch.Tensor]:
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
    return [torch.randn(BATCH, mel, frames, generator=g), torch.randn(BATCH, frames, width, generator=g)]


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
    text = _sub(cfg, "text_config", "decoder", "text_encoder")
    make = {"input_ids": lambda: [_token_ids(text)], "pixel_values": lambda: [_pixels(cfg)],
            "input_features": lambda: _audio_alternatives(cfg, "input_features"),
            "input_values": lambda: _audio_alternatives(cfg, "input_values")}
    extra = {}
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        extra["decoder_input_ids"] = _token_ids(_sub(cfg, "decoder", "text_config"), 4)
    if "use_cache" in params:  # no cache objects: hybrid (linear-attention) caches refuse some queries
        extra["use_cache"] = False
    mains = make[main]() if main in make else []
    others = {n: make[n]()[0] for n in ("input_ids", "pixel_values") if n != main and n in params}
    cands = [{main: m, **others, **extra} for m in mains] if others else []
    cands += [{main: m, **extra} for m in mains]
    cands += [{n: v, **extra} for n, v in others.items()]
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, dict) and dummy:  # the model's own (token ids, plus whatever it adds)
        cands.append(dict(dummy))
    return cands


def example_inputs(model: nn.Module) -> list[tuple] | None:
    """Candidate (args, kwargs) for a transformers model (one with a config and a `main_input_name`); None for any
    other model."""
    if not (hasattr(model, "config") and hasattr(model.config, "to_dict") and hasattr(model, "main_input_name")):
        return None
    return [((), kw) for kw in _keyword_candidates(model)]
