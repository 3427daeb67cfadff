"""Names the commands need before any heavy library is imported (parsing arguments costs no torch import)."""

#: weight sources besides a checkpoint path or a pretrained tag
RANDOM = "random"
PRETRAINED = "pretrained"

#: the paper's main setting: CLIP ViT-B/16 (OpenAI weights, QuickGELU) + DINO ViT-B/8
DEFAULT_CLIP = "ViT-B-16-quickgelu"
DEFAULT_VFM = "vit_base_patch8_224.dino"
#: Trident's SAM tower: SAM ViT-B's image encoder
DEFAULT_SAM = "samvit_base_patch16.sa1b"
