"""Tiny, seeded, random-initialised models with the real architectures (open_clip ViT, timm ViTs/SAM).

Every process that calls these gets identical weights, so they also serve the DDP tests.
"""
from __future__ import annotations

import json
from pathlib import Path

from proxyclip_pl.towers import build_clip, build_vfm

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The shipped demo configs: an open_clip ViT-B/16-like tower (patch 16, trained 224 grid of 14x14, so 336
# windows interpolate the positional embedding) shrunk to 3 blocks of width 64, and a 2-block DINO ViT/8.
TINY_CLIP_CONFIG = json.loads((CONFIGS / "tiny_clip.json").read_text())
_TINY_DINO = json.loads((CONFIGS / "tiny_dino.json").read_text())

TINY_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 2}

#: timm name -> overrides that keep the architecture family but make it tiny.
TINY_VFMS = {
    "dino": (_TINY_DINO["model_name"], _TINY_DINO["kwargs"]),
    "dinov2": ("vit_base_patch14_reg4_dinov2.lvd142m", TINY_VIT),
    "mae": ("vit_base_patch16_224.mae", TINY_VIT),
    "sam": ("samvit_base_patch16.sa1b", {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "neck_chans": 32}),
}
#: Stable Diffusion (extra [sd]): the shipped spec, SD-2.1's block layout shrunk (4 VAE levels, 4 UNet levels,
#: widths 8-16, a 1-layer text encoder); no timm name: the spec file is the name.
TINY_SD_SPEC = CONFIGS / "tiny_sd.json"
TINY_VFMS["sd"] = (str(TINY_SD_SPEC), {})


#: Trident's SAM tower (the shipped configs/tiny_sam.json): the VFM's tiny samvit with a 256 input (16 x 16 tokens;
#: SAM's own is 1024).
_TINY_SAM = json.loads((CONFIGS / "tiny_sam.json").read_text())
TINY_SAM = (_TINY_SAM["model_name"], _TINY_SAM["kwargs"])


def write_tiny_sam_spec(folder: Path) -> Path:
    path = Path(folder) / "tiny_sam_encoder.json"
    path.write_text(json.dumps({"model_name": TINY_SAM[0], "kind": "sam", "kwargs": TINY_SAM[1]}))
    return path


def tiny_sam(seed: int = 0):
    """Tiny SAM image encoder as Trident's tower (SAM's LayerNorm eps, :func:`proxyclip_pl.towers.build_sam`)."""
    from proxyclip_pl.towers import build_sam

    return build_sam(TINY_SAM[0], "random", seed=seed, **TINY_SAM[1])


def write_tiny_clip_config(folder: Path) -> Path:
    path = Path(folder) / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def write_tiny_vfm_spec(folder: Path, kind: str = "dino") -> Path:
    name, kwargs = TINY_VFMS[kind]
    path = Path(folder) / f"tiny_{kind}.json"
    if kind == "sd":  # an SD spec is its own format
        path.write_text(TINY_SD_SPEC.read_text())
        return path
    path.write_text(json.dumps({"model_name": name, "kind": kind, "kwargs": kwargs}))
    return path


def tiny_clip(folder: Path, seed: int = 0):
    return build_clip(str(write_tiny_clip_config(folder)), "random", seed=seed)


def tiny_vfm(kind: str = "dino", seed: int = 0):
    if kind == "sd":
        import pytest

        pytest.importorskip("diffusers", reason="Stable Diffusion VFMs need the extra [sd]")
    name, kwargs = TINY_VFMS[kind]
    model, resolved = build_vfm(name, "random", seed=seed, **kwargs)
    assert resolved == kind
    return model


# ------------------------------------------------------------------------------------------- Stable Diffusion
def tiny_sd_components(seed: int = 0) -> dict:
    """The tiny SD's unet, vae, text_encoder and scheduler, with the weights ``build_vfm(TINY_SD_SPEC, "random",
    seed=seed)`` has (decoder included)."""
    from proxyclip_pl.sd_vfm import _random_components, read_sd_spec

    unet, vae, text_encoder, _, scheduler = _random_components(read_sd_spec(str(TINY_SD_SPEC)), "tiny", seed)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def sd2_tokenizer(folder: Path):
    """SD-2.x's CLIP tokenizer (pad token ``!``) built offline from open_clip's copy of CLIP's BPE vocabulary."""
    import gzip

    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(SimpleTokenizer().encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77)


def write_tiny_sd_folder(folder: Path, seed: int = 0) -> Path:
    """The random tiny SD saved in the diffusers layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)."""
    folder = Path(folder)
    for name, component in tiny_sd_components(seed).items():
        component.save_pretrained(folder / name)
    sd2_tokenizer(folder / "bpe").save_pretrained(folder / "tokenizer")
    return folder
