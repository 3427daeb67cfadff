"""SCLIP, NACLIP, ClearCLIP, MaskCLIP and CLIP as segmenters of the shared core; protocols; the plug-in path.

Window logits are checked against direct, unbatched float64 transcriptions (the per-item references of
tests/proxyclip/test_methods_math.py plus a hand-written stem, normalisation, padding and cosine logits), on a tiny
random open_clip ViT.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import BENCHMARKS
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl import (
    CLIP,
    NACLIP,
    NATIVE_PROTOCOLS,
    PROXYCLIP_PROTOCOLS,
    SCLIP,
    ClearCLIP,
    MaskCLIP,
    Protocol,
    ProxyCLIP,
    Segmenter,
    build_segmenter,
    protocol_for,
)
from proxyclip_pl.correlative_attention import sclip_labels
from proxyclip_pl.evaluation import ProxyCLIPEvaluator, SegmenterEvaluator, check_segmenter
from proxyclip_pl.native_protocols import BUILTIN_METHODS, DATASETS, OFFICIAL_MEAN, OFFICIAL_STD
from proxyclip_pl.pamr import pamr
from proxyclip_pl.postprocess import logits_to_labels
from proxyclip_pl.sliding_window import window_grid
from test_methods_math import (
    ref_clearclip_item,
    ref_naclip_item,
    ref_official_pos_embed,
    ref_sclip_item,
    ref_sclip_postprocess,
)
from tiny_models import tiny_clip, write_tiny_clip_config
from paths import ROOT

VOCAB = [["sky", "cloud"], ["cat"], ["dog", "puppy"], ["grass"]]
TOL = 1e-10
METHOD_CLASSES = {"sclip": SCLIP, "naclip": NACLIP, "clearclip": ClearCLIP}
REFERENCE_ITEMS = {
    "sclip": lambda visual, x, grid: ref_sclip_item(visual, x),
    "naclip": lambda visual, x, grid: ref_naclip_item(visual, x, grid),
    "clearclip": lambda visual, x, grid: ref_clearclip_item(visual, x),
}
PAD = {"sclip": 1, "naclip": 1, "clearclip": 16}


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    model, _ = tiny_clip(tmp_path_factory.mktemp("tiny_clip_segmenters"))
    return model


@pytest.fixture(scope="module")
def text(clip_model):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(sum(map(len, VOCAB)), clip_model.text_projection.shape[1], generator=gen)


def make(name, clip_model, text, dtype=torch.float32, **kwargs):
    import copy

    cls = {**METHOD_CLASSES, "maskclip": MaskCLIP, "clip": CLIP}[name]
    model = cls(copy.deepcopy(clip_model), VOCAB, text_embeddings=text, **kwargs)
    return model.to(dtype)


def rand_images(shape, seed, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# Direct transcription: one window, float64
# --------------------------------------------------------------------------------------------------------


def ref_window_logits(model, window, method):
    """[3, h, w] in [0, 1] -> [Q, h, w]: official mmseg normalisation (0-255 constants), ClearCLIP's padding
    to 16 (zero in normalised space, left/top = total // 2), stem with the official positional rule, the
    method's last block, cosine logits, bilinear to the (padded) window, cropped back."""
    visual = model.clip.visual
    mean = torch.tensor(OFFICIAL_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(OFFICIAL_STD, dtype=torch.float64).view(3, 1, 1)
    x = (window * 255.0 - mean) / std
    height, width = window.shape[-2:]
    ph, pw = -height % PAD[method], -width % PAD[method]
    left, top = pw // 2, ph // 2
    x = F.pad(x, (left, pw - left, top, ph - top))  # zeros after normalisation
    x = visual.conv1(x[None])
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1), x], dim=1)
    x = visual.ln_pre(x + ref_official_pos_embed(visual.positional_embedding, *grid))
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    emb = REFERENCE_ITEMS[method](visual, x[0], grid)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    text = model.text_embeddings
    logits = (emb @ text.T).T.reshape(-1, *grid)
    logits = F.interpolate(logits[None], size=(height + ph, width + pw), mode="bilinear", align_corners=False)[0]
    return logits[:, top:top + height, left:left + width]


@pytest.mark.parametrize("method", list(METHOD_CLASSES))
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (224, 224), (112, 448), (50, 70)])
def test_window_logits_match_unbatched_float64_reference(clip_model, text, method, size):
    """Square and non-square windows; 112x448 has the table's token count (no resampling officially);
    50x70 is not a multiple of 16 (floored grid for SCLIP/NACLIP, padding for ClearCLIP)."""
    model = make(method, clip_model, text, torch.float64)
    windows = rand_images((2, 3, *size), seed=size[0] + size[1])
    ours = model.window_logits(windows)
    assert ours.shape == (2, len(model.queries), *size) and ours.dtype == torch.float64
    for b in range(2):
        assert (ours[b] - ref_window_logits(model, windows[b], method)).abs().max().item() < TOL


@pytest.mark.parametrize("method", list(METHOD_CLASSES) + ["maskclip", "clip"])
def test_window_logits_batched_equal_one_at_a_time(clip_model, text, method):
    model = make(method, clip_model, text, torch.float64)
    windows = rand_images((3, 3, 96, 64), seed=1)
    batched = model.window_logits(windows)
    single = torch.cat([model.window_logits(windows[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max().item() < 1e-12


@pytest.mark.parametrize("method", list(METHOD_CLASSES))
def test_whole_image_path(clip_model, text, method):
    """slide_crop=0: the whole resized image in one forward, equal to window_logits of the image."""
    model = make(method, clip_model, text, torch.float64, slide_crop=0)
    image = rand_images((1, 3, 80, 120), seed=2)
    whole = model.slide_logits(image)
    assert whole.shape == (1, len(model.queries), 80, 120)
    expected = ref_window_logits(model, image[0], method)
    assert (whole[0] - expected).abs().max().item() < 1e-6  # the window average accumulates in float32


@pytest.mark.parametrize("method", list(METHOD_CLASSES))
def test_slide_logits_average_the_window_logits(clip_model, text, method):
    model = make(method, clip_model, text, torch.float64, slide_crop=64, slide_stride=40)
    image = rand_images((1, 3, 90, 150), seed=6)
    total = torch.zeros(len(model.queries), 90, 150, dtype=torch.float64)
    count = torch.zeros(90, 150, dtype=torch.float64)
    for y1, y2, x1, x2 in window_grid(90, 150, 64, 40):
        total[:, y1:y2, x1:x2] += ref_window_logits(model, image[0, :, y1:y2, x1:x2], method)
        count[y1:y2, x1:x2] += 1
    assert (model.slide_logits(image)[0] - total / count).abs().max().item() < 1e-6


@pytest.mark.parametrize("name,attention", [("maskclip", "maskclip"), ("clip", "clip")])
def test_baseline_classes_equal_proxyclip_attention_variants(clip_model, text, name, attention):
    import copy

    model = make(name, clip_model, text)
    old = ProxyCLIP(copy.deepcopy(clip_model), None, VOCAB, attention=attention, text_embeddings=text)
    windows = rand_images((2, 3, 112, 168), seed=7, dtype=torch.float32)
    assert torch.equal(model.window_logits(windows), old.window_logits(windows))
    image = rand_images((1, 3, 150, 200), seed=8, dtype=torch.float32)
    assert torch.equal(model.slide_logits(image), old.slide_logits(image))
    rgb = (rand_images((70, 90, 3), seed=9, dtype=torch.float32) * 255).to(torch.uint8).numpy()
    assert torch.equal(model.predict(rgb), old.predict(rgb))


# --------------------------------------------------------------------------------------------------------
# Post-processing: SCLIP's area_thd, PAMR
# --------------------------------------------------------------------------------------------------------


def test_sclip_area_thd_through_segment_resized_and_predict(clip_model, text):
    kwargs = dict(logit_scale=65.0, prob_thd=0.05, slide_crop=64, slide_stride=32, short_side=48)
    model = make("sclip", clip_model, text, area_thd=0.3, **kwargs)
    plain = make("sclip", clip_model, text, **kwargs)
    image = rand_images((1, 3, 48, 72), seed=12, dtype=torch.float32)
    size = (30, 45)
    labels = model.segment_resized(image, size)
    logits = F.interpolate(model.slide_logits(image), size=size, mode="bilinear", align_corners=False)[0]
    assert torch.equal(labels, sclip_labels(logits, model.query_to_class, 4, 65.0, 0.05, 0.3))
    ref = ref_sclip_postprocess(logits.double(), model.query_to_class.tolist(), 4, 65.0, 0.05, 0.3)
    assert torch.equal(labels, ref)
    assert not torch.equal(labels, plain.segment_resized(image, size))  # the filter did drop a class
    # predict = preprocess + segment_resized at the original size
    rgb = (rand_images((40, 60, 3), seed=13, dtype=torch.float32) * 255).to(torch.uint8).numpy()
    resized = model.preprocess(rgb)
    assert resized.shape[-2:] == (48, 72)
    by_hand = F.interpolate(model.slide_logits(resized), size=(40, 60), mode="bilinear", align_corners=False)[0]
    assert torch.equal(model.predict(rgb), sclip_labels(by_hand, model.query_to_class, 4, 65.0, 0.05, 0.3))


@pytest.mark.parametrize("method", ["naclip", "sclip", "maskclip"])
def test_pamr_through_segment_resized_equals_pamr_by_hand(clip_model, text, method):
    kwargs = dict(prob_thd=0.1, slide_crop=64, slide_stride=32)
    model = make(method, clip_model, text, pamr_steps=3, **kwargs)
    image = rand_images((1, 3, 64, 96), seed=14, dtype=torch.float32)
    size = (70, 100)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    guide = F.interpolate((image - mean) / std, size=size, mode="bilinear", align_corners=False)
    logits = F.interpolate(model.slide_logits(image), size=size, mode="bilinear", align_corners=False)
    refined = pamr(guide, logits, 3, (8, 16))
    labels = model.segment_resized(image, size)
    assert torch.equal(labels, logits_to_labels(refined[0], model.query_to_class, model.logit_scale, 0.1))
    assert not torch.equal(labels, make(method, clip_model, text, **kwargs).segment_resized(image, size))


def test_naclip_rejects_unsupported_settings(clip_model, text):
    with pytest.raises(ValueError, match="reduced"):
        make("naclip", clip_model, text, arch="vanilla")
    with pytest.raises(ValueError, match="naclip"):
        make("naclip", clip_model, text, attn_strategy="csa")
    with pytest.raises(ValueError, match="slide_crop"):
        make("sclip", clip_model, text, slide_crop=-1)


def test_default_keywords_and_text_embeddings(clip_model, text):
    model = make("sclip", clip_model, text)
    assert (model.logit_scale, model.prob_thd, model.slide_crop, model.slide_stride, model.short_side) == (40.0, 0.0, 224, 112, 336)
    assert (model.area_thd, model.pamr_steps) == (None, 0)
    assert model.text_embeddings.shape == (6, text.shape[1])
    assert torch.allclose(model.text_embeddings.norm(dim=-1), torch.ones(6))
    assert model.query_to_class.tolist() == [0, 0, 1, 2, 2, 3] and model.num_classes == 4
    assert isinstance(model, Segmenter) and model.method == "sclip"


# --------------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sclip", "naclip", "clearclip", "maskclip", "clip"])
def test_segmenters_built_on_meta_keep_everything_there(clip_model, text, method):
    import copy

    meta = torch.device("meta")
    cls = {**METHOD_CLASSES, "maskclip": MaskCLIP, "clip": CLIP}[method]
    model = cls(copy.deepcopy(clip_model).to(meta), VOCAB, text_embeddings=text, short_side=112, slide_crop=112,
                slide_stride=56)
    behind = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.device != meta]
    assert not behind and model.device == meta
    assert model.window_logits(torch.rand(2, 3, 112, 168)).device == meta
    assert model.slide_logits(torch.rand(1, 3, 112, 200)).device == meta
    labels = model.predict(np.zeros((90, 130, 3), np.uint8))
    assert labels.shape == (90, 130) and labels.dtype == torch.long and labels.device == meta


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_build_segmenter_on_meta(tmp_path, method):
    protocol = dataclasses.replace(NATIVE_PROTOCOLS[method]["voc21"], short_side=112)
    kwargs = dict(clip=str(write_tiny_clip_config(tmp_path)), clip_weights="random", text_cache_dir=str(tmp_path / "c"))
    cpu = build_segmenter(method, VOCAB, protocol, **kwargs)  # warms the text cache
    model = build_segmenter(method, VOCAB, protocol, device="meta", **kwargs)
    assert model.device.type == "meta" and model.text_embeddings.device.type == "meta"
    assert model.protocol == protocol == cpu.protocol


# --------------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
def test_protocol_for_rows(dataset):
    preset = BENCHMARKS[dataset]
    proxy = PROXYCLIP_PROTOCOLS[dataset]
    assert proxy == Protocol(preset.short_side, 2048, preset.crop_size, preset.stride, 40.0, preset.prob_thd, None, 0)
    for method in ("sclip", "naclip", "clearclip"):
        assert protocol_for(method, dataset, "native") == NATIVE_PROTOCOLS[method][dataset]
        assert protocol_for(method, dataset) == NATIVE_PROTOCOLS[method][dataset]
    for method in BUILTIN_METHODS + ("mymod:factory",):  # ProxyCLIP's, with only the data options kept (CorrCLIP's masks)
        other = protocol_for(method, dataset, "proxyclip")
        assert dataclasses.replace(other, options=()) == proxy
        assert {k for k, _ in other.options} <= {"mask_folder"}
    for method in ("proxyclip", "maskclip", "clip", "mymod:factory"):
        assert protocol_for(method, dataset, "native") == proxy
    with pytest.raises(ValueError, match="protocol"):
        protocol_for("sclip", dataset, "paper")
    with pytest.raises(ValueError, match="dataset"):
        protocol_for("sclip", "kitti")


def test_build_segmenter_follows_the_protocol(tmp_path):
    kwargs = dict(clip=str(write_tiny_clip_config(tmp_path)), clip_weights="random", text_cache_dir=str(tmp_path / "c"))
    for method in ("naclip", "clearclip", "maskclip"):
        protocol = protocol_for(method, "voc21")
        model = build_segmenter(method, VOCAB, protocol, **kwargs)
        assert model.protocol == protocol and type(model).method == method
    proxy = build_segmenter("proxyclip", VOCAB, protocol_for("proxyclip", "cityscapes"), vfm=None, attention="maskclip", **kwargs)
    assert isinstance(proxy, ProxyCLIP) and proxy.protocol == PROXYCLIP_PROTOCOLS["cityscapes"]
    with pytest.raises(ValueError, match="unknown method"):
        build_segmenter("segformer", VOCAB, protocol, **kwargs)


def test_evaluator_accepts_any_segmenter_and_keeps_its_old_name():
    assert ProxyCLIPEvaluator is SegmenterEvaluator

    class NotASegmenter(torch.nn.Module):
        num_classes = 2

    with pytest.raises(ValueError, match="segment_resized"):
        check_segmenter(NotASegmenter())


# --------------------------------------------------------------------------------------------------------
# scripts/test.py: --method / --protocol / --pamr-steps, results.json, the plug-in path
# --------------------------------------------------------------------------------------------------------


def test_script_resolves_protocols():
    from proxyclip_pl.cli import load_plugin
    from proxyclip_pl.commands.evaluate import parse_args
    from proxyclip_pl.commands.jobs import resolve_protocol

    args = parse_args(["--data", "voc21", "--method", "naclip"])
    assert resolve_protocol(args, "voc21") == NATIVE_PROTOCOLS["naclip"]["voc21"]
    args = parse_args(["--data", "voc21", "--method", "naclip", "--protocol", "proxyclip", "--pamr-steps", "4"])
    assert resolve_protocol(args, "ade20k") == dataclasses.replace(PROXYCLIP_PROTOCOLS["ade20k"], pamr_steps=4)
    with pytest.raises(ValueError, match="cannot import"):
        load_plugin("no_such_module_xyz:factory")
    with pytest.raises(ValueError, match="module:factory"):
        load_plugin("sclipp")


def run_script(args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "test.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("methods_e2e")
    make_fake_benchmark("voc21", d / "data", 4, sizes=((60, 80), (50, 70)))
    return d


@pytest.mark.slow
def test_builtin_method_records_method_and_protocol(bench):
    out = bench / "out_sclip"
    result = run_script(["--data", "voc21", "--data-root", str(bench / "data"), "--method", "sclip", "--limit", "2",
                         "--pamr-steps", "1", "--clip", str(write_tiny_clip_config(bench)), "--clip-weights", "random",
                         "--accelerator", "cpu", "--num-workers", "0", "--text-cache-dir", str(bench / "cache"),
                         "--output-dir", str(out)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = json.loads((out / "results.json").read_text())["config"]
    expected = dataclasses.replace(NATIVE_PROTOCOLS["sclip"]["voc21"], pamr_steps=1)
    assert (cfg["method"], cfg["protocol"], cfg["pamr_steps_override"]) == ("sclip", "native", 1)
    assert cfg["protocol_settings"] == expected.record()
    assert (cfg["short_side"], cfg["slide_crop"], cfg["logit_scale"], cfg["area_thd"], cfg["pamr_steps"]) == (336, 224, 65.0, 0.1, 1)
    assert cfg["vfm"] is None and cfg["segmenter"] == "proxyclip_pl.methods.SCLIP"


@pytest.mark.slow
@pytest.mark.ddp
def test_plugin_method_from_the_docs_example_one_and_two_processes(bench):
    """docs/plugin_example.py, copied verbatim as mymod.py into a folder used as the working directory."""
    plugin_dir = bench / "plugin"
    plugin_dir.mkdir()
    shutil.copy(ROOT / "docs" / "plugin_example.py", plugin_dir / "mymod.py")
    env = {"PLUGIN_CLIP": str(write_tiny_clip_config(bench)), "PLUGIN_CLIP_WEIGHTS": "random"}
    outs = {}
    for devices in (1, 2):
        out = bench / f"out_plugin_{devices}"
        result = run_script(["--data", "voc21", "--data-root", str(bench / "data"), "--method", "mymod:factory",
                             "--devices", str(devices), "--accelerator", "cpu", "--num-workers", "0",
                             "--output-dir", str(out), "--save-predictions"], cwd=plugin_dir, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        outs[devices] = json.loads((out / "results.json").read_text())
    one, two = outs[1], outs[2]
    assert one["num_images"] == two["num_images"] == 4
    for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
        assert one[field] == two[field], field
    cfg = one["config"]
    assert (cfg["method"], cfg["protocol"], cfg["world_size"], two["config"]["world_size"]) == ("mymod:factory", "native", 1, 2)
    assert cfg["protocol_settings"] == PROXYCLIP_PROTOCOLS["voc21"].record()
    assert cfg["segmenter"] == "mymod.ValueValueCLIP"
    preds = sorted((bench / "out_plugin_2" / "predictions").glob("*.png"))
    assert len(preds) == 4


@pytest.mark.parametrize("method", ["naclip", "clearclip"])
def test_segment_script_takes_a_method(tmp_path, method):
    from PIL import Image

    from proxyclip_pl.commands import segment

    image = tmp_path / "x.png"
    Image.fromarray((rand_images((40, 50, 3), seed=3).numpy() * 255).astype(np.uint8)).save(image)
    argv = [str(image), "--classes", "cat", "dog", "--out", str(tmp_path / "o.png"), "--labels-out",
            str(tmp_path / "l.png"), "--method", method, "--short-side", "64", "--crop", "0", "--pamr-steps", "2",
            "--clip", str(write_tiny_clip_config(tmp_path)), "--clip-weights", "random", "--device", "cpu"]
    assert segment.main(argv) == 0
    labels = np.asarray(Image.open(tmp_path / "l.png"))
    assert labels.shape == (40, 50) and labels.max() <= 1
    args = segment.parse_args(argv)
    model = segment.build_model(args, [["cat"], ["dog"]])
    assert type(model).method == method and model.protocol == Protocol(64, 2048, 0, 112, 40.0, 0.0, None, 2)
