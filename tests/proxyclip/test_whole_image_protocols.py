"""Trident's and CorrCLIP's registry entries against their official configs (transcribed here from
YuHengsss/Trident@a93b346 ``configs/`` and zdk258/CorrCLIP@103bc18 ``CorrCLIPv1/configs/``), published numbers and
class-name files."""
from __future__ import annotations

import pytest

from proxyclip_pl.native_protocols import DATASETS, protocol_for
from proxyclip_pl.query_vocabularies import query_vocabulary
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

    from proxyclip_pl.region_masks import InstanceMaskFolder, NoMasks, check_mask_source, mask_source

    (tmp_path / "voc").mkdir()
    assert mask_source(str(tmp_path), "voc") == InstanceMaskFolder(tmp_path / "voc")  # the benchmark's sub-folder
    assert mask_source(str(tmp_path), "ade") == InstanceMaskFolder(tmp_path)  # none: the folder itself (a card)
    assert mask_source("none") == NoMasks() and mask_source("NONE", "voc") == NoMasks()
    with pytest.raises(ValueError, match="--masks DIR .* --masks sam2 .* --masks none"):
        check_mask_source(None)
    with pytest.raises(FileNotFoundError, match="no/such: no such folder"):
        check_mask_source("no/such")
    monkeypatch.setitem(sys.modules, "sam2", None)  # the optional extra is not installed
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(ValueError, match=r"pip install 'proxyclip_pl\[sam2\]'"):
        mask_source("sam2")


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
