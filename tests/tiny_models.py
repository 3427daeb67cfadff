"""Tiny, seeded, random-initialised models with the real architectures (open_clip ViT, timm ViTs/SAM).

Every process that calls these gets identical weights, so they also serve the DDP tests.
"""
from __future__ import annotations

import json
from pathlib import Path

from proxyclip_pl.factory import build_clip, build_vfm

# open_clip config: ViT-B/16-like tower (patch 16, trained 224 grid of 14x14, so 336 crops interpolate
# the positional embedding) shrunk to 3 blocks of width 64 with 2 heads.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

TINY_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 2}

#: timm name -> overrides that keep the architecture family but make it tiny.
TINY_VFMS = {
    "dino": ("vit_small_patch8_224.dino", TINY_VIT),
    "dinov2": ("vit_base_patch14_reg4_dinov2.lvd142m", TINY_VIT),
    "mae": ("vit_base_patch16_224.mae", TINY_VIT),
    "sam": ("samvit_base_patch16.sa1b", {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "neck_chans": 32}),
}


def write_tiny_clip_config(folder: Path) -> Path:
    path = Path(folder) / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def write_tiny_vfm_spec(folder: Path, kind: str = "dino") -> Path:
    name, kwargs = TINY_VFMS[kind]
    path = Path(folder) / f"tiny_{kind}.json"
    path.write_text(json.dumps({"model_name": name, "kind": kind, "kwargs": kwargs}))
    return path


def tiny_clip(folder: Path, seed: int = 0):
    return build_clip(str(write_tiny_clip_config(folder)), "random", seed=seed)


def tiny_vfm(kind: str = "dino", seed: int = 0):
    name, kwargs = TINY_VFMS[kind]
    model, resolved = build_vfm(name, "random", seed=seed, **kwargs)
    assert resolved == kind
    return model
