"""Example inputs for the generic probe on a timm (or other image) model (registered with
`hf_penal.discovery.inputs`): an image batch at the size its patch embedding or pretrained config names."""
from __future__ import annotations

import torch
from torch import nn

from ..discovery.inputs import BATCH, generator, size2


def example_inputs(model: nn.Module) -> list[tuple]:
    """Candidate (args, kwargs) for a vision model: one image batch at the patch embedding's image size and channels,
    and one at the pretrained config's ``input_size``. Claims every model (the last builder)."""
    sizes = []
    pe = getattr(model, "patch_embed", None)
    if getattr(pe, "img_size", None) is not None:
        sizes.append((int(getattr(pe, "in_chans", 0) or getattr(getattr(pe, "proj", None), "in_channels", 3)),
                      *size2(pe.img_size, 224)))
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            sizes.append(tuple(cfg["input_size"]))
    g = generator()
    return [((torch.randn(BATCH, *s, generator=g),), {}) for s in dict.fromkeys(sizes)]
