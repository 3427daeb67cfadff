"""Trident's and CorrCLIP's registry entries against their official configs (transcribed here from
YuHengsss/Trident@a93b346 ``configs/`` and zdk258/CorrCLIP@103bc18 ``CorrCLIPv1/configs/``), published numbers and
class-name files."""
from __future__ import annotations

import importlib.util
from importlib.util import find_spec

import numpy as np
import pytest

from proxyclip_pl.native_protocols import DATASETS, protocol_for
from proxyclip_pl.query_vocabularies import query_vocabulary
from proxyclip_pl.region_masks import check_mask_source, mask_source
from proxyclip_pl.registry import method_spec

# cfg_<dataset>.py: Resize short side, then the model=dict(...) values on the class / base_config defaults
# (Trident base_config: slide_crop 336, slide_stride 224, cos_fac 1.2, refine_neg_cos True; logit_scale 40)
TRIDENT = {
    "voc21": (448, dict(prob_thd=0.2)),
    "context60": (576, dict(prob_thd=0.15)),
    "coco_object": (448, dict(prob_thd=0.25)),
    "voc20": (336, dict(slide_stride=112, cos_fac=0.0)),
    "context59": (576, {}),
    "coco_stuff": (448, {}),
    "cityscapes": (688, dict(dataset_type="CityscapesDataset", cos_fac=3.0, refine_neg_cos=False)),
    "ade20k": (576, dict(refine_neg_cos=False)),
}
TRIDENT_DEFAULTS = dict(slide_crop=336, slide_stride=224, prob_thd=0.0, cos_fac=1.2, refine_neg_cos=True,
                        dataset_type="PascalVOCDataset")
# CorrCLIPSegmentation defaults: slide_crop 336, slide_stride 112, prob_thd 0, logit_scale 40
CORRCLIP = {
    "voc21": (336, dict(prob_thd=0.2, mask_folder="voc")),
    "context60": (336, dict(prob_thd=0.15, mask_folder="context")),
    "coco_object": (336, dict(prob_thd=0.25, mask_folder="coco")),
    "voc20": (336, dict(mask_folder="voc")),
    "context59": (336, dict(mask_folder="context")),
    "coco_stuff": (336, dict(mask_folder="coco")),
    "cityscapes": (448, dict(slide_crop=224, mask_folder="city")),
    "ade20k": (448, dict(mask_folder="ade")),
}
CORRCLIP_DEFAULTS = dict(slide_crop=336, slide_stride=112, prob_thd=0.0)
PUBLISHED = {  # README tables, ViT-B/16 (CorrCLIP: SAM2 masks, 32 points per side)
    "trident": (67.1, 38.6, 41.1, 84.5, 42.2, 28.3, 42.9, 21.9),
    "corrclip": (74.8, 44.2, 43.7, 88.8, 48.8, 31.6, 49.4, 26.9),
}


@pytest.mark.parametrize("method, table, defaults", [("trident", TRIDENT, TRIDENT_DEFAULTS),
                                                     ("corrclip", CORRCLIP, CORRCLIP_DEFAULTS)])
@pytest.mark.parametrize("key", DATASETS)
def test_native_protocol_is_the_official_config(method, table, defaults, key):
    short, overrides = table[key]
    config = {**defaults, **overrides}
    protocol = protocol_for(method, key, "native")
    assert (protocol.short_side, protocol.long_side_cap, protocol.logit_scale) == (short, 2048, 40.0)
    assert (protocol.slide_crop, protocol.slide_stride, protocol.prob_thd) == (
        config["slide_crop"], config["slide_stride"], config["prob_thd"])
    assert protocol.area_thd is None and protocol.pamr_steps == 0
    options = dict(protocol.options)
    assert options == {k: config[k] for k in options} and set(options) == set(config) - set(CORRCLIP_DEFAULTS)


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_published_row_and_official_towers(method):
    spec = method_spec(method)
    assert tuple(spec.published[key] for key in DATASETS) == PUBLISHED[method]
    assert spec.default_towers["vfm"] == {"trident": "vit_base_patch16_224.dino",
                                          "corrclip": "vit_base_patch8_224.dino"}[method]
    assert spec.default_towers["clip_weights"] == {"trident": "openai", "corrclip": "metaclip_fullcc"}[method]


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_native_vocabulary_reads_the_official_files_split_on_semicolons(method):
    vocab = query_vocabulary(method, "voc21", "native")
    assert len(vocab.vocabulary) == 21 and len(vocab.vocabulary[0]) > 1  # background's synonyms
    assert all(len(names) == 1 for names in vocab.vocabulary[1:])
    assert vocab.vocabulary[1] == ["aeroplane"]
    assert len(query_vocabulary(method, "context59", "native").vocabulary) == 59
    assert vocab.source.startswith({"trident": "YuHengsss/Trident@a93b346", "corrclip": "zdk258/CorrCLIP@103bc18"}[method])


def test_mask_sources_and_their_one_line_errors(tmp_path, monkeypatch):
    import sys

    from proxyclip_pl.region_masks import InstanceMaskFolder, NoMasks

    (tmp_path / "voc").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither .*voc/ nor .* holds <image stem>.npz masks \(.*extract "
                       r"region_masks.zip"):  # before the model is built, not on the first image
        check_mask_source(str(tmp_path), ["voc", "ade"])
    np.savez(tmp_path / "voc" / "2007_000033.npz", instance_mask=np.zeros((2, 2), np.int64))
    check_mask_source(str(tmp_path), ["voc"])
    with pytest.raises(FileNotFoundError, match=r"neither .*ade/ nor"):
        check_mask_source(str(tmp_path), ["voc", "ade"])
    np.savez(tmp_path / "ADE_val_00000001.npz", instance_mask=np.zeros((2, 2), np.int64))
    check_mask_source(str(tmp_path), ["voc", "ade", None])
    assert mask_source(str(tmp_path), "voc") == InstanceMaskFolder(tmp_path / "voc")  # the benchmark's sub-folder
    assert mask_source(str(tmp_path), "ade") == InstanceMaskFolder(tmp_path)  # none: the folder itself (a card)
    assert mask_source("none") == NoMasks() and mask_source("NONE", "voc") == NoMasks()
    with pytest.raises(ValueError, match="--masks DIR .* --masks sam2 .* --masks none"):
        check_mask_source(None)
    with pytest.raises(FileNotFoundError, match="no/such: no such folder"):
        check_mask_source("no/such")
    monkeypatch.setitem(sys.modules, "sam2", None)  # the optional extra is not installed
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sam2" else find_spec(name, *a))
    for masks in ("sam2", "SAM2:x.pt"):
        with pytest.raises(ValueError, match=r"pip install 'proxyclip_pl\[sam2\]'"):
            check_mask_source(masks)
        with pytest.raises(ValueError, match=r"pip install 'proxyclip_pl\[sam2\]'"):
            mask_source(masks)


def test_sam2_provider_checks_its_checkpoint_and_moves_with_its_segmenter(tmp_path, monkeypatch):
    """SAM2 is built on the CPU and follows ``.to()`` of the module holding the provider (Lightning's per-process
    device), and ``--masks sam2:PATH`` names its checkpoint (default ./sam2_hiera_large.pt)."""
    import sys
    import types

    import torch
    from torch import nn

    from proxyclip_pl import region_masks

    built = []

    class Generator:
        def __init__(self, model, **settings):
            self.predictor, self.settings = types.SimpleNamespace(model=model), settings

        def generate(self, rgb):
            return [{"segmentation": np.ones(rgb.shape[:2], bool), "area": rgb.shape[0] * rgb.shape[1]}]

    def build_sam2(config, checkpoint, device, apply_postprocessing):
        built.append((config, checkpoint, device, apply_postprocessing))
        return nn.Linear(2, 2)

    monkeypatch.setitem(sys.modules, "sam2", types.ModuleType("sam2"))
    monkeypatch.setitem(sys.modules, "sam2.build_sam", types.SimpleNamespace(build_sam2=build_sam2))
    monkeypatch.setitem(sys.modules, "sam2.automatic_mask_generator",
                        types.SimpleNamespace(SAM2AutomaticMaskGenerator=Generator))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "sam2" else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    for masks, missing in (("sam2", "sam2_hiera_large.pt"), ("sam2:w/h.pt", "w/h.pt")):
        with pytest.raises(FileNotFoundError, match=f"checkpoint {missing} not found: download .* --masks sam2:PATH"):
            check_mask_source(masks)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "h.pt").write_bytes(b"")
    check_mask_source("sam2:w/h.pt")
    region_masks.sam2_mask_provider.cache_clear()
    provider = mask_source("sam2:w/h.pt", "voc")
    region_masks.sam2_mask_provider.cache_clear()
    assert built == [("sam2_hiera_l.yaml", "w/h.pt", "cpu", False)]
    assert provider.generator.settings == region_masks.SAM2_SETTINGS
    holder = nn.Module()
    holder.mask_provider = provider
    holder.to(torch.float64)  # as Lightning's .to(device): SAM2's parameters move with the segmenter
    assert provider.model.weight.dtype == torch.float64
    assert np.array_equal(provider(np.zeros((3, 4, 3), np.uint8), "x"), np.ones((3, 4), np.int64))


def test_sam_tower_has_sams_layer_norm_and_names_its_own_flag(tmp_path):
    from torch import nn

    from proxyclip_pl.towers import build_sam
    from proxyclip_pl.weights import WeightsNotFoundError
    from tiny_models import tiny_sam

    norms = [m for m in tiny_sam().modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)  # SAM's _build_sam, not timm's 1e-5
    with pytest.raises(WeightsNotFoundError, match=r"^--sam-weights: SAM checkpoint not found: .*missing\.pth$"):
        build_sam("samvit_base_patch16.sa1b", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not a SAM image encoder"):
        build_sam("vit_small_patch16_224.dino", "random", embed_dim=48, depth=1, num_heads=2)


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_the_method_towers_fill_only_what_the_user_left_unset_in_the_cli_and_in_python(method):
    import argparse

    from proxyclip_pl.cli import add_model_arguments, resolve_default_towers
    from proxyclip_pl.factory import _split_tower_options

    spec = method_spec(method)
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)

    def resolved(*flags: str) -> argparse.Namespace:
        args = parser.parse_args(list(flags))
        args.method = method
        resolve_default_towers(args)
        return args

    args = resolved()
    assert (args.vfm, args.clip_weights) == (spec.default_towers["vfm"], spec.default_towers["clip_weights"])
    # another CLIP has its own tags: the method's tag would be "unknown pretrained tag" (Trident's ViT-H/14 row)
    for clip in ("configs/tiny_clip.json", "ViT-H-14"):
        assert resolved("--clip", clip).clip_weights is None
    args = resolved("--vfm", "vit_small_patch16_224.dino", "--clip-weights", "random")
    assert (args.vfm, args.clip_weights) == ("vit_small_patch16_224.dino", "random")

    towers, rest = _split_tower_options(method, {"seed": 3, "beta": 1.0})
    assert (towers.vfm, towers.clip_weights, towers.seed, rest) == (
        spec.default_towers["vfm"], spec.default_towers["clip_weights"], 3, {"beta": 1.0})
    towers, _ = _split_tower_options(method, {"clip": "configs/tiny_clip.json", "vfm": "configs/tiny_dino.json"})
    assert (towers.vfm, towers.clip_weights) == ("configs/tiny_dino.json", None)


def test_the_proxyclip_protocol_keeps_only_the_data_options_of_the_native_row():
    for key in DATASETS:
        assert dict(protocol_for("corrclip", key, "proxyclip").options) == {"mask_folder": CORRCLIP[key][1]["mask_folder"]}
        assert protocol_for("trident", key, "proxyclip") == protocol_for("proxyclip", key, "proxyclip")
