"""The method registry: every registered method passes one battery (parametrised over the registry, so a new
entry is tested without editing this file); run-time and installed (entry-point) methods get what built-in ones
get; ``proxyclip_pl.evaluate`` equals ``proxyclip-test``."""
from __future__ import annotations

import dataclasses

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import BENCHMARKS
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl import MethodSpec, Segmenter, evaluate, register_method
from proxyclip_pl.factory import build_segmenters
from proxyclip_pl.model import MaskCLIP
from proxyclip_pl.native_protocols import DATASETS, PROXYCLIP_PROTOCOLS, protocol_for
from proxyclip_pl.registry import BUILTIN_METHOD_SPECS, TOWERS, method_sources, method_spec, unregister_method
from proxyclip_pl.identity import NOT_ENCODER
from proxyclip_pl.vfm import VFM_RECIPES
from paths import ROOT
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

SCRIPT = ROOT / "scripts" / "test.py"
FIELDS = ("num_images", "mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc")



# ------------------------------------------------------------------------------ the battery, per registered method
@pytest.mark.parametrize("name", sorted(method_sources()))
def test_spec_is_consistent(name):
    spec = method_spec(name)
    assert spec.name == name and issubclass(spec.segmenter, Segmenter)
    assert spec.towers[0] == "clip" and set(spec.towers) <= set(TOWERS)
    geometry = spec.segmenter.default_geometry()  # proxyclip-segment's defaults for an image of no benchmark
    assert set(geometry) == {"short_side", "slide_crop", "slide_stride"} and geometry["short_side"] > 0
    assert set(spec.protocols or {}) <= set(PROXYCLIP_PROTOCOLS) and set(spec.published or {}) <= set(DATASETS)
    for key in DATASETS:  # the native protocol is the spec's row, ProxyCLIP's where it has none
        assert protocol_for(name, key, "native") == (spec.protocols or {}).get(key, PROXYCLIP_PROTOCOLS[key])
        # ProxyCLIP's row; of the native row only the options that describe the data (CorrCLIP's mask folder)
        native = dict((spec.protocols or {}).get(key, PROXYCLIP_PROTOCOLS[key]).options)
        kept = tuple((k, v) for k, v in native.items() if k in spec.segmenter.data_options)
        assert protocol_for(name, key, "proxyclip") == dataclasses.replace(PROXYCLIP_PROTOCOLS[key], options=kept)


@pytest.mark.parametrize("name", sorted(method_sources()))
def test_method_segments_and_batches_exactly_on_tiny_towers(name, towers):
    spec = method_spec(name)
    options = towers if spec.uses_vfm else {k: v for k, v in towers.items() if not k.startswith("vfm")}
    vocabulary = [["sky"], ["cat", "kitten"], ["dog"]]
    protocol = protocol_for(name, "voc20", "native")
    model = build_segmenters(name, {0: (vocabulary, protocol)}, **options)[0]
    assert isinstance(model, spec.segmenter) and model.protocol == protocol
    rgb = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    if spec.segmenter.uses_original_image:  # a whole-image method: windows per encoder call change nothing
        image = model.preprocess(rgb)
        inputs = model.image_inputs(rgb, None)
        model.window_batch_size = 3
        batched = model.slide_logits(image, **inputs)
        model.window_batch_size = 1
        assert batched.shape[:2] == (1, 4) and torch.allclose(batched, model.slide_logits(image, **inputs), atol=1e-5)
    else:
        windows = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
        batched = model.grid_logits(windows)
        single = torch.cat([model.grid_logits(w[None]) for w in windows])
        assert batched.shape[:2] == (3, 4) and torch.allclose(batched, single, atol=1e-5)
    labels = model.predict(rgb)
    assert labels.shape == (50, 70) and 0 <= int(labels.min()) and int(labels.max()) < 3


# -------------------------------------------------------------------------------------------- run-time entries
class EchoCLIP(MaskCLIP):
    """MaskCLIP under another name: a run-time method whose results must equal the built-in's."""


def test_run_time_method_is_listed_built_like_a_builtin_and_clashes_are_refused(towers):
    spec = MethodSpec("echoclip", EchoCLIP, published={"voc21": 1.0}, description="test")
    register_method(spec)
    try:
        assert method_sources()["echoclip"] == "run time" and method_spec("echoclip") is spec
        options = {k: v for k, v in towers.items() if not k.startswith("vfm")}
        jobs = {0: ([["sky"], ["cat"]], PROXYCLIP_PROTOCOLS["voc21"])}
        ours, builtin = (build_segmenters(m, jobs, **options)[0] for m in ("echoclip", "maskclip"))
        windows = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
        assert type(ours) is EchoCLIP and torch.equal(ours.grid_logits(windows), builtin.grid_logits(windows))
        with pytest.raises(ValueError, match="'sclip' is already defined \\(built-in\\)"):
            register_method(MethodSpec("sclip", EchoCLIP))
    finally:
        unregister_method("echoclip")
    assert "echoclip" not in method_sources()
    with pytest.raises(ValueError, match="towers"):
        MethodSpec("x", EchoCLIP, towers=("vfm",))
    with pytest.raises(TypeError, match="Segmenter subclass"):
        MethodSpec("x", dict)


def test_builtin_table_is_read_without_torch():
    code = ("import sys; from proxyclip_pl.registry import method_sources; "
            "print(list(method_sources()), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == f"{list(BUILTIN_METHOD_SPECS)} False", r.stderr


# ------------------------------------------------------------------------- an installed distribution's method
TOY_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]  # PEP 621 metadata; the venv's own setuptools builds it (no network)
build-backend = "setuptools.build_meta"

[project]
name = "proxyclip-toy"
version = "0.1"

[project.entry-points."proxyclip_pl.methods"]
toyclip = "toy_method:SPEC"

[project.entry-points."proxyclip_pl.benchmarks"]
toybench = "toy_method:BENCH"
toyfg = "toy_method:BENCH_FG"

[tool.setuptools]
py-modules = ["toy_method"]
"""
TOY_CARD = {"name": "toybench", "data_root": "toydata", "img_dir": "img", "ann_dir": "ann",
            "classes": [["background", "sky"], "road", "car"], "background": True, "short_side": 64, "crop_size": 48,
            "stride": 32, "prob_thd": 0.1}
#: the same images without the background class (as VOC20 to VOC21): one shared encoder pass serves both
TOY_CARD_FG = {**TOY_CARD, "name": "toyfg", "classes": ["road", "car"], "reduce_zero_label": True,
               "background": False, "prob_thd": 0.0}
TOY_MODULE = f"TOY_CARD = {TOY_CARD!r}\nTOY_CARD_FG = {TOY_CARD_FG!r}\n" + '''
from datamodules import BenchmarkSpec
from proxyclip_pl import MethodSpec
from proxyclip_pl.model import MaskCLIP


class ToyCLIP(MaskCLIP):
    """MaskCLIP's math under a third-party name."""


SPEC = MethodSpec("toyclip", ToyCLIP, description="a toy method from an installed distribution")
BENCH = BenchmarkSpec.from_card(TOY_CARD)
BENCH_FG = BenchmarkSpec.from_card(TOY_CARD_FG)
'''


def run(args, env, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=cwd)


@pytest.mark.slow
def test_installed_distribution_method_runs_like_a_builtin(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(TOY_PYPROJECT)
    (dist / "toy_method.py").write_text(textwrap.dedent(TOY_MODULE))
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(dist)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}

    listed = run(["--list"], env, tmp_path)
    for name in ("toyclip", "toybench"):
        assert listed.returncode == 0 and any(line.split()[:2] == [name, "proxyclip-toy"]
                                              for line in listed.stdout.splitlines()), listed.stdout

    make_fake_benchmark("voc21", tmp_path / "data", 3, sizes=((60, 80), (50, 70)))
    make_fake_benchmark("voc20", tmp_path / "data", 3, sizes=((60, 80), (50, 70)))
    flags = ["--data", "voc21,voc20", "--data-root", str(tmp_path / "data"), "--clip",
             str(write_tiny_clip_config(tmp_path)), "--accelerator", "cpu", "--num-workers", "0",
             "--text-cache-dir", str(tmp_path / "cache")]
    first = run([*flags, "--method", "toyclip", "--output-dir", str(tmp_path / "toy")], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "text embeddings, 46 queries" in first.stderr  # encoded once, into the cache
    again = run([*flags, "--method", "toyclip", "--output-dir", str(tmp_path / "toy_again")], env, tmp_path)
    assert again.returncode == 0 and "text embeddings," not in again.stderr  # the cache served it
    builtin = run([*flags, "--method", "maskclip", "--output-dir", str(tmp_path / "maskclip")], env, tmp_path)
    assert builtin.returncode == 0, builtin.stderr[-3000:]
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["passes"] == [["voc21", "voc20"]]  # one shared encoder pass
    windows = json.loads((tmp_path / "maskclip" / "summary.json").read_text())["windows_encoded"]
    assert summary["windows_encoded"] == windows  # each window encoded once for both benchmarks
    for key in ("voc21", "voc20"):
        toy, ref = (json.loads((tmp_path / run_dir / key / "results.json").read_text())
                    for run_dir in ("toy", "maskclip"))
        assert toy["config"]["segmenter"] == "toy_method.ToyCLIP"
        # an installed method is identified by its weights and its distribution's version too (resume)
        assert toy["config"]["method_source"] == "proxyclip-toy 0.1" and toy["config"]["model_fingerprint"]
        for field in FIELDS:
            assert toy[field] == ref[field], (key, field)

    # the installed benchmarks (relative data_root: a sub-folder of --data-root) in one shared pass, equal to the
    # same datasets as dataset cards under the built-in method
    write_card_dataset(tmp_path / "toydata")
    for card in (TOY_CARD, TOY_CARD_FG):
        (tmp_path / "toydata" / f"{card['name']}.json").write_text(json.dumps({**card, "data_root": "."}))
    common = ["--clip", str(write_tiny_clip_config(tmp_path)), "--accelerator", "cpu", "--num-workers", "0",
              "--text-cache-dir", str(tmp_path / "cache")]
    toy = run(["--method", "toyclip", "--data", "toybench,toyfg", "--data-root", str(tmp_path), *common,
               "--output-dir", str(tmp_path / "toybench")], env, tmp_path)
    cards = ",".join(str(tmp_path / "toydata" / f"{name}.json") for name in ("toybench", "toyfg"))
    card = run(["--method", "maskclip", "--data", cards, *common, "--output-dir", str(tmp_path / "cards")], env,
               tmp_path)
    assert toy.returncode == 0 and card.returncode == 0, toy.stderr[-3000:] + card.stderr[-3000:]
    summary = json.loads((tmp_path / "toybench" / "summary.json").read_text())
    assert summary["passes"] == [["toybench", "toyfg"]]
    assert summary["windows_encoded"] == json.loads((tmp_path / "cards" / "summary.json").read_text())["windows_encoded"]
    for key in ("toybench", "toyfg"):
        got, want = (json.loads((tmp_path / d / key / "results.json").read_text()) for d in ("toybench", "cards"))
        assert got["dataset"] == key and got["config"]["protocol_settings"] == want["config"]["protocol_settings"]
        assert got["config"]["vocabulary"]["source"] == f"benchmark {key}: its classes"  # not a dataset card
        assert got["config"]["vocabulary"]["sha256"] == want["config"]["vocabulary"]["sha256"]
        for field in FIELDS:
            assert got[field] == want[field], (key, field)


def write_card_dataset(root: Path, n: int = 3) -> None:
    from PIL import Image

    from datamodules.synthetic import random_image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(n):
        Image.fromarray(random_image(50, 60, rng)).save(root / "img" / f"s{i}.jpg")
        Image.fromarray(rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(50, 60))).save(root / "ann" / f"s{i}.png")


# ------------------------------------------------------------------------------------------ evaluate() vs CLI
@pytest.mark.slow
def test_evaluate_returns_what_the_cli_writes(tmp_path):
    make_fake_benchmark("voc21", tmp_path / "data", 3, sizes=((60, 80), (50, 70)))
    options = dict(clip=str(write_tiny_clip_config(tmp_path)), vfm=str(write_tiny_vfm_spec(tmp_path)),
                   vfm_weights="random", accelerator="cpu", num_workers=0, text_cache_dir=str(tmp_path / "cache"))
    got = evaluate("proxyclip", "voc21", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "api"),
                   **options)
    argv = ["--method", "proxyclip", "--data", "voc21", "--data-root", str(tmp_path / "data"), "--output-dir",
            str(tmp_path / "cli")]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    r = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert got == json.loads((tmp_path / "api" / "results.json").read_text())
    for field in (*FIELDS, "shared_pass", "windows_encoded"):
        assert got[field] == cli[field], field
    assert got["config"]["vocabulary"] == cli["config"]["vocabulary"]
    with pytest.raises(TypeError, match="unknown option 'clip_weight'"):
        evaluate("proxyclip", "voc21", clip_weight="random")


# --------------------------------------------------------------------------- the battery, per registered benchmark
@pytest.mark.parametrize("key", sorted(BENCHMARKS))
def test_benchmark_spec_is_consistent(key):
    from datamodules import build_datamodule
    from proxyclip_pl.native_protocols import proxyclip_protocol
    from proxyclip_pl.query_vocabularies import query_vocabulary

    spec = BENCHMARKS[key]
    assert spec.key == key and len(set(spec.class_names)) == spec.num_classes
    assert len(query_vocabulary("proxyclip", key, "proxyclip").vocabulary) == spec.num_classes
    protocol = proxyclip_protocol(key)
    assert (protocol.short_side, protocol.slide_crop, protocol.slide_stride, protocol.prob_thd) == (
        spec.short_side, spec.crop_size, spec.stride, spec.prob_thd)
    assert build_datamodule(key, num_workers=0).preset == spec


def test_run_time_benchmark_is_built_and_clashes_are_refused(tmp_path):
    from datamodules import BenchmarkSpec, DatasetCardError, benchmark_sources, build_datamodule, register_benchmark
    from datamodules.registry import unregister_benchmark
    from proxyclip_pl.native_protocols import proxyclip_protocol

    write_card_dataset(tmp_path)
    spec = BenchmarkSpec.from_card({**TOY_CARD, "name": "mybench", "data_root": str(tmp_path)})  # absolute
    register_benchmark(spec)
    try:
        assert benchmark_sources()["mybench"] == "run time" and BENCHMARKS["mybench"] is spec
        dm = build_datamodule("mybench", num_workers=0)
        dm.setup("test")
        assert len(dm.test_dataset) == 3 and dm.class_names == ["background", "road", "car"]
        assert proxyclip_protocol("mybench").slide_crop == 48
        with pytest.raises(ValueError, match="'voc21' is already defined \\(built-in\\)"):
            register_benchmark(BenchmarkSpec.from_card({**TOY_CARD, "name": "voc21"}))
    finally:
        unregister_benchmark("mybench")
    assert "mybench" not in BENCHMARKS
    with pytest.raises(DatasetCardError, match="needs 'name'"):
        BenchmarkSpec.from_card({k: v for k, v in TOY_CARD.items() if k != "name"})


# ------------------------------------------------------------------------------ the battery, per VFM recipe
@pytest.mark.parametrize("kind", sorted(VFM_RECIPES))
def test_vfm_recipe_claims_its_models_and_reads_them(kind):
    from proxyclip_pl.vfm import check_vfm, recipe_of, vfm_features, vfm_raw_attention
    from tiny_models import tiny_vfm

    model = tiny_vfm(kind)  # a tiny model of the family (tests/tiny_models.py: TINY_VFMS)
    assert recipe_of(model) is VFM_RECIPES[kind]
    check_vfm(model, kind)
    windows = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    features = vfm_features(model, kind, windows, 64)
    single = torch.cat([vfm_features(model, kind, w[None], 64) for w in windows])
    assert features.dim() == 4 and features.shape[0] == 2 and torch.allclose(features, single, atol=1e-5)
    recipe = VFM_RECIPES[kind]
    assert len(recipe.mean) == len(recipe.std) == 3  # the recipe owns its normalisation
    if not recipe.has_raw_attention:  # e.g. SD's UNet: refused, ProxyCLIP's attention="vfm" too
        with pytest.raises(ValueError, match="raw attention"):
            vfm_raw_attention(model, kind, windows, 64)
        return
    attn, (h, w) = vfm_raw_attention(model, kind, windows, 64)
    assert attn.shape == (2, h * w, h * w) and torch.allclose(attn.sum(-1), torch.ones(2, h * w), atol=1e-5)


#: ProxyCLIP's rows as literals (the paper's protocol: short side, window, stride, prob_thd), written before the
#: table was derived from the benchmark presets: deriving it must not change a number.
PROXYCLIP_ROWS = {
    "voc21": (336, 336, 112, 0.2), "context60": (336, 336, 112, 0.15), "coco_object": (336, 336, 112, 0.25),
    "voc20": (336, 336, 112, 0.0), "context59": (336, 336, 112, 0.0), "coco_stuff": (336, 336, 112, 0.0),
    "cityscapes": (448, 224, 112, 0.0), "ade20k": (448, 336, 112, 0.0), "ade847": (448, 336, 112, 0.0),
    "context459": (448, 336, 112, 0.0),
}


def test_derived_proxyclip_protocols_keep_the_papers_rows():
    from proxyclip_pl.native_protocols import EXTRA_DATASETS, OFFICIAL_CONFIGS, Protocol

    assert set(PROXYCLIP_PROTOCOLS) == set(PROXYCLIP_ROWS) and EXTRA_DATASETS == ("ade847", "context459")
    for key, (short, crop, stride, thd) in PROXYCLIP_ROWS.items():
        assert PROXYCLIP_PROTOCOLS[key] == Protocol(short, 2048, crop, stride, 40.0, thd, None, 0), key
    assert OFFICIAL_CONFIGS["coco_stuff"] == "configs/cfg_coco_stuff164k.py" and set(OFFICIAL_CONFIGS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(method_sources()))
def test_encoder_config_declares_every_setting_and_is_hashable(name, towers):
    """The explicit encoder configuration must cover what the former compare-every-attribute rule covered: a
    setting a method forgets to declare would let two different encoders share a pass."""
    spec = method_spec(name)
    options = towers if spec.uses_vfm else {k: v for k, v in towers.items() if not k.startswith("vfm")}
    model = build_segmenters(name, {0: ([["sky"], ["cat"]], protocol_for(name, "voc21"))}, **options)[0]
    if model.encoder_settings is not None:  # None: every attribute is compared (identity.NOT_ENCODER aside)
        undeclared = {k for k in vars(model) if not k.startswith("_")} - NOT_ENCODER - set(model.encoder_settings)
        assert not undeclared, f"{name}: declare {sorted(undeclared)} in encoder_settings (or they do not encode)"
        assert not set(model._buffers) - {"text_embeddings", "query_to_class"}
    hash(model.encoder_config())


def test_a_plugin_that_declares_no_encoder_settings_is_compared_on_every_attribute(towers):
    from proxyclip_pl.shared_pass import shares_encoder

    options = {k: v for k, v in towers.items() if not k.startswith("vfm")}
    a, b = build_segmenters("maskclip", {0: ([["sky"]], PROXYCLIP_PROTOCOLS["voc21"]),
                                         1: ([["cat"]], PROXYCLIP_PROTOCOLS["voc20"])}, **options).values()
    a.__class__ = b.__class__ = EchoCLIP  # a plug-in class: encoder_settings None
    assert EchoCLIP.encoder_settings is None and shares_encoder(a, b)
    a.temperature = 0.5  # a setting its author did not declare
    b.temperature = 0.7
    assert not shares_encoder(a, b)
    b.temperature = 0.5
    a.register_buffer("bias", torch.zeros(3))
    b.register_buffer("bias", torch.ones(3))
    assert not shares_encoder(a, b)
