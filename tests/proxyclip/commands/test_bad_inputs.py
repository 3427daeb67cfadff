"""Bad-input catalogue: what a user sees for each bad image, vocabulary, dataset key or output path.

Every test is one row of the catalogue: either the input works and the test asserts the conversion
rule (shape, RGB values, rotation), or it fails and the test asserts the error type and that the
message names the offending file / line / flag. The CLI rows run the scripts in a subprocess (exit
code 2, one ``error:`` line, no traceback); they are started together at the module's first test, as
each spends ~8 s importing torch and open_clip. The model rows use tiny random models at a small test
scale (see ``SMALL``), except the size rows, which use the default 336 scale that a user gets.
"""
from __future__ import annotations

import io
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DataFileError, MissingFileError, build_datamodule, read_image, read_label
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl import ProxyCLIP, build_proxyclip
from proxyclip_pl.commands import evaluate as test_script
from proxyclip_pl.commands import segment
from proxyclip_pl.cli import run_cli
from proxyclip_pl.vocabulary import flatten_vocabulary, load_vocabulary
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

SHARED_IMAGES = ROOT.parent / "shared" / "testimages"
VOCAB_DIR = ROOT / "datamodules" / "vocab"


EXIF_ORIENTATION = 0x0112
#: A small test scale: short side 56, and 224-pixel windows without overlap, so that a 24x40 image is one
#: 56x93 window (padded to 56x112) and a 1x2000 image ten 1x224 windows (padded to 56x224).
SMALL = ["--short-side", "56", "--crop", "224", "--stride", "224"]


# ------------------------------------------------------------------------------------------ helpers
def quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """Four flat colours, so that a rotation is unambiguous and survives JPEG."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = 255
    return a


def save_exif_jpeg(arr: np.ndarray, path: Path, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation  # 6: the viewer rotates the stored pixels 90° clockwise
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    return path


def corrupt_files(folder: Path) -> dict[str, Path]:
    """Truncated PNG and JPEG (first half of a valid file), random bytes, and an empty file."""
    base = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        buf = io.BytesIO()
        Image.fromarray(base).save(buf, format=fmt)
        data = buf.getvalue()
        out[f"truncated{suffix}"] = folder / f"truncated{suffix}"
        out[f"truncated{suffix}"].write_bytes(data[: len(data) // 2])
    out["random.png"] = folder / "random.png"
    out["random.png"].write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    out["empty.jpg"] = folder / "empty.jpg"
    out["empty.jpg"].write_bytes(b"")
    return out


@contextmanager
def raises(exc_type: type[BaseException], message: str) -> Iterator[None]:
    """Like ``pytest.raises`` but the message must *start with* ``message`` (plain text, not a regex:
    the paths in it are literal)."""
    with pytest.raises(exc_type) as info:
        yield
    assert str(info.value).startswith(message), str(info.value)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def run_cli_in_process(main, argv: list[str], capsys) -> str:
    """``run_cli`` as the scripts' ``__main__`` calls it; returns stderr, asserts exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "afile").write_text("a regular file: nothing can be created below it, not even by root")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "good.png")
    return d


@pytest.fixture(scope="module")
def model_flags(workdir) -> list[str]:
    return ["--clip", str(write_tiny_clip_config(workdir)), "--clip-weights", "random",
            "--vfm", str(write_tiny_vfm_spec(workdir)), "--vfm-weights", "random", "--seed", "0"]


@pytest.fixture(scope="module")
def model(model_flags) -> ProxyCLIP:
    """The model scripts/segment.py builds for ``--classes a b`` with ``model_flags + SMALL`` (same seed)."""
    return build_proxyclip([["a"], ["b"]], clip=model_flags[1], clip_weights="random", vfm=model_flags[5],
                           vfm_weights="random", seed=0, short_side=56, slide_crop=224, slide_stride=224)


@pytest.fixture(scope="module")
def model336(model) -> ProxyCLIP:
    """The same weights at the default scale (336 short side, 336 windows, stride 112)."""
    return ProxyCLIP(model.clip, model.vfm, model.vocabulary, text_embeddings=model.text_embeddings)


@pytest.fixture(scope="module")
def cli_runs(workdir, model_flags) -> Iterator[dict[str, subprocess.Popen]]:
    """Start every subprocess row at once; each CLI test waits for its own."""
    seg, test = str(ROOT / "scripts" / "segment.py"), str(ROOT / "scripts" / "test.py")
    segment_good = [seg, str(workdir / "good.png"), "--classes", "a", "--out"]
    out = str(workdir / "o.png")
    commands = {
        "data_nope": [test, "--data", "nope"],
        "test_output_dir": [test, "--data", "voc21", "--output-dir", str(workdir / "afile" / "out")],
        "segment_out": segment_good + [str(workdir / "afile" / "o.png")] + model_flags,
        "clip_unknown": segment_good + [out, "--clip", "ViT-Bogus-1", "--clip-weights", "random"],
        "vfm_unknown": segment_good + [out, "--vfm", "vit_bogus_patch1", "--vfm-weights", "random"] + model_flags[:4],
    }
    procs = {name: subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=workdir) for name, args in commands.items()}
    yield procs
    for proc in procs.values():  # a test that failed early may not have waited for its process
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def start_cli_runs_early(request) -> None:
    """When any CLI test is selected, start the subprocesses at the module's first test: their imports
    then overlap the in-process tests instead of adding to the wall time."""
    if any("cli_runs" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("cli_runs")


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    _stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


# ================================================================= datamodules.io: read_image / read_label
def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with raises(MissingFileError, f"image file not found: {path}"):
        read_image(path)
    with raises(FileNotFoundError, f"label file not found: {path}"):  # MissingFileError is also one
        read_label(path)


@pytest.mark.parametrize("name,reason", [
    ("truncated.png", "OSError: image file is truncated"), ("truncated.jpg", "OSError: image file is truncated"),
    ("random.png", "UnidentifiedImageError: cannot identify image file"),
    ("empty.jpg", "UnidentifiedImageError: cannot identify image file"),
])
def test_read_corrupt_file(tmp_path, name, reason):
    path = corrupt_files(tmp_path)[name]
    for read, kind in ((read_image, "image"), (read_label, "label")):
        with raises(DataFileError, f"cannot decode {kind} file {path}: {reason}"):
            read(path)


def test_read_16bit_png_keeps_the_top_byte(tmp_path):
    grey = np.array([[0, 255, 256, 300, 40000, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    expected = [0, 0, 1, 1, 156, 255]  # value >> 8, as OpenCV IMREAD_COLOR
    out = read_image(tmp_path / "grey16.png")
    assert out.shape == (1, 6, 3) and (out == np.array(expected, np.uint8)[None, :, None]).all()
    assert np.array_equal(out, cv2.imread(str(tmp_path / "grey16.png"))[..., ::-1])
    rgb = np.array([[[0, 256, 65535], [300, 40000, 1000]]], np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])
    assert np.array_equal(read_image(tmp_path / "rgb16.png"), (rgb >> 8).astype(np.uint8))
    # Labels: a 16-bit index map is fine while its values fit in uint8, else one clear error.
    Image.fromarray(np.array([[0, 1, 20, 255]], np.uint16)).save(tmp_path / "label16.png")
    assert read_label(tmp_path / "label16.png").tolist() == [[0, 1, 20, 255]]
    with raises(DataFileError, f"label file {tmp_path / 'grey16.png'} has values outside 0..255 (mode I;16)"):
        read_label(tmp_path / "grey16.png")


def test_read_palette_png_looks_up_colours_for_images_and_keeps_indices_for_labels(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    palette[:3] = [(10, 20, 30), (200, 100, 0), (1, 2, 250)]
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette.ravel().tolist())
    img.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), palette[indices])
    assert np.array_equal(read_label(tmp_path / "p.png"), indices)


def test_read_rgba_png_drops_alpha_for_images_and_is_rejected_as_label(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:2, ..., 3] = 255  # alpha 0 on the bottom rows: not composited, RGB kept (as OpenCV)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    with raises(DataFileError, f"label file {tmp_path / 'rgba.png'} has mode 'RGBA'; expected a single-channel "
                               "index map ('P', 'L', or 16-bit 'I;16' / 'I'). Colour-rendered labels cannot be used."):
        read_label(tmp_path / "rgba.png")


def test_read_cmyk_jpeg_converts_with_pillows_rule(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:] = (0, 128, 255, 64)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    # R = (255 - C)(255 - K) / 255 per channel: (191, 95, 0); OpenCV differs by at most 1.
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (16, 16, 3) and tuple(out[8, 8]) == (191, 95, 0)
    assert np.abs(out.astype(int) - cv2.imread(str(tmp_path / "cmyk.jpg"))[..., ::-1]).max() <= 1
    with raises(DataFileError, f"label file {tmp_path / 'cmyk.jpg'} has mode 'CMYK'; expected a single-channel"):
        read_label(tmp_path / "cmyk.jpg")


def test_read_exif_rotated_jpeg_is_rotated_but_labels_are_not(tmp_path):
    arr = quadrants()
    out = read_image(save_exif_jpeg(arr, tmp_path / "e6.jpg"))
    assert out.shape == (60, 40, 3)  # transposed: the displayed size
    clockwise, anticlockwise = np.rot90(arr, k=-1).astype(int), np.rot90(arr, k=1).astype(int)
    assert np.abs(out - clockwise).mean() < 8 < 100 < np.abs(out - anticlockwise).mean()
    assert np.array_equal(out, cv2.imread(str(tmp_path / "e6.jpg"))[..., ::-1])  # same as IMREAD_COLOR
    # Labels are decoded 'unchanged' (MMSegmentation's rule): an EXIF tag on a label PNG is ignored.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(arr[..., 0]).save(tmp_path / "l6.png", exif=exif.tobytes())
    assert Image.open(tmp_path / "l6.png").getexif().get(EXIF_ORIENTATION) == 6
    assert np.array_equal(read_label(tmp_path / "l6.png"), arr[..., 0])


def test_dataset_with_exif_rotated_image_needs_a_label_in_the_displayed_orientation(tmp_path):
    root = make_fake_benchmark("voc21", tmp_path, 1, sizes=((40, 60),))
    dm = build_datamodule("voc21", data_root=root, num_workers=0)
    with pytest.warns(Warning, match="found 1 of the 1449"):
        dm.setup("test")
    ds = dm.test_dataset
    _sid, img_path, ann_path = ds.samples[0]
    save_exif_jpeg(quadrants(40, 60), img_path)  # stored 40x60, displayed 60x40; label still 40x60
    with raises(DataFileError, f"image {img_path} is 40x60 (after EXIF orientation) but its label {ann_path} is 60x40"):
        ds[0]
    label = np.asarray(Image.open(ann_path))
    Image.fromarray(np.ascontiguousarray(np.rot90(label, k=-1)), mode="L").save(ann_path)
    assert ds[0]["ori_size"] == (60, 40)


@pytest.mark.parametrize("hw", [(1, 1), (1, 2000), (2000, 3)])
def test_read_tiny_and_extreme_aspect_images_exactly(tmp_path, hw):
    arr = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    assert np.array_equal(read_image(tmp_path / "x.png"), arr)


def test_read_uniform_image(tmp_path):
    Image.fromarray(np.full((5, 7, 3), (200, 120, 40), np.uint8)).save(tmp_path / "u.png")
    assert (read_image(tmp_path / "u.png") == (200, 120, 40)).all()
    if (SHARED_IMAGES / "uniform.png").exists():
        shared = read_image(SHARED_IMAGES / "uniform.png")
        assert len(np.unique(shared.reshape(-1, 3), axis=0)) == 1


# ================================================================= ProxyCLIP.predict on numpy arrays
def test_predict_given_a_path_says_to_decode_it(model, tmp_path):
    with raises(TypeError, f"expected a decoded image array, got the path '{tmp_path / 'photo.jpg'}'; decode files "
                           "with datamodules.io.read_image(path)"):
        model.predict(tmp_path / "photo.jpg")
    with raises(TypeError, "expected a decoded image array, got the path 'photo.jpg'"):
        model.predict("photo.jpg")


def test_predict_16bit_array_keeps_the_top_byte(model):
    image = np.random.default_rng(1).integers(0, 65536, (24, 40, 3), dtype=np.uint16)
    labels = model.predict(image)
    assert labels.shape == (24, 40)
    assert torch.equal(labels, model.predict((image >> 8).astype(np.uint8)))


def test_predict_palette_indices_are_taken_as_grey(model):
    # np.asarray(Image.open("palette.png")) gives indices; predict cannot know the palette.
    indices = np.random.default_rng(2).integers(0, 21, (24, 40), dtype=np.uint8)
    assert torch.equal(model.predict(indices), model.predict(np.repeat(indices[..., None], 3, axis=2)))


@pytest.mark.parametrize("values,needle", [
    (np.full((8, 8, 3), 200.0), r"\[200, 200\] \(a 0..255 image: divide by 255"),
    (np.full((8, 8, 3), -0.5), r"\[-0.5, -0.5\]"),
    (np.array([[[np.nan, 0.2, 0.3]]]), "NaN or infinite"),
])
def test_float_arrays_outside_unit_range_are_refused_not_clipped(values, needle):
    from datamodules.io import array_to_rgb_uint8

    with pytest.raises(ValueError, match=needle):
        array_to_rgb_uint8(values)
    assert (array_to_rgb_uint8(np.full((2, 2, 3), 0.5)) == 128).all()  # in range: rint(x * 255)


def test_predict_rgba_array_drops_alpha(model):
    rgba = np.random.default_rng(3).integers(0, 256, (24, 40, 4), dtype=np.uint8)
    rgba[:12, :, 3] = 0  # fully transparent pixels keep their RGB
    assert torch.equal(model.predict(rgba), model.predict(rgba[..., :3]))


def test_predict_cmyk_array_is_read_as_rgba(model):
    # An HxWx4 array is RGBA; np.asarray of a CMYK image is therefore misread (C, M, Y taken as R, G, B).
    cmyk = np.asarray(Image.fromarray(np.random.default_rng(4).integers(0, 256, (24, 40, 3), dtype=np.uint8))
                      .convert("CMYK"))
    assert cmyk.shape == (24, 40, 4)
    assert torch.equal(model.predict(cmyk), model.predict(cmyk[..., :3]))


def test_predict_exif_array_is_not_rotated_but_read_image_is(model, tmp_path):
    path = save_exif_jpeg(quadrants(24, 40), tmp_path / "e6.jpg")
    assert model.predict(np.asarray(Image.open(path))).shape == (24, 40)  # stored orientation
    assert model.predict(read_image(path)).shape == (40, 24)  # displayed orientation


@pytest.mark.parametrize("shape", [(1, 1, 3), pytest.param((1, 2000, 3), marks=pytest.mark.slow),
                                   pytest.param((2000, 3, 3), marks=pytest.mark.slow)])
def test_predict_tiny_and_extreme_aspect_keep_their_size(model336, shape):
    # 1x1 -> 336x336, 1x2000 -> 1x2048, 2000x3 -> 2048x3 (mmcv rescale, long side capped at 2048);
    # the 1- and 3-pixel-thin windows are padded to 56 with the CLIP mean; labels come back at HxW.
    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    labels = model336.predict(image)
    assert labels.shape == shape[:2] and 0 <= int(labels.min()) and int(labels.max()) < 2


def test_predict_uniform_image_gives_one_class_everywhere(model):
    images = [np.full((30, 50, 3), (200, 120, 40), np.uint8), np.zeros((30, 50, 3), np.uint8)]
    if (SHARED_IMAGES / "uniform.png").exists():
        images.append(read_image(SHARED_IMAGES / "uniform.png"))
    for image in images:
        # Every window sees the same flat content, and the degenerate proxy attention falls back to
        # uniform weights (no NaN), so the logits, hence the labels, are constant.
        logits = model.slide_logits(model.preprocess(image))
        assert torch.isfinite(logits).all()
        labels = model.predict(image)
        assert labels.shape == image.shape[:2] and labels.unique().numel() == 1


# ================================================================= scripts/segment.py on files
def test_segment_missing_or_corrupt_image_is_one_error_line(tmp_path, model_flags, capsys):
    files = {"missing.jpg": tmp_path / "missing.jpg", **corrupt_files(tmp_path)}
    for name, path in files.items():
        argv = [str(path), "--classes", "a", "--out", str(tmp_path / "o.png")] + model_flags
        stderr = run_cli_in_process(segment.main, argv, capsys)
        expected = f"error: image file not found: {path}" if name == "missing.jpg" else \
            f"error: cannot decode image file {path}: "
        assert stderr.startswith(expected) and len(stderr.splitlines()) == 1, stderr


def _segment_inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(6)
    base = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    paths = {}
    for name, im, suffix in [
        ("16bit", Image.fromarray(base[..., 0].astype(np.uint16) * 257), ".png"), ("palette", img.convert("P"), ".png"),
        ("rgba", img.convert("RGBA"), ".png"), ("cmyk", img.convert("CMYK"), ".jpg"),
        ("1x1", Image.fromarray(base[:1, :1]), ".png"),
        ("1x2000", Image.fromarray(rng.integers(0, 256, (1, 2000, 3), dtype=np.uint8)), ".png"),
        ("2000x3", Image.fromarray(rng.integers(0, 256, (2000, 3, 3), dtype=np.uint8)), ".png"),
        ("uniform", Image.fromarray(np.full((24, 40, 3), 77, np.uint8)), ".png"),
    ]:
        paths[name] = folder / f"{name}{suffix}"
        im.save(paths[name])
    paths["exif6"] = save_exif_jpeg(base, folder / "exif6.jpg")
    return paths


@pytest.mark.parametrize("name", ["16bit", "palette", "rgba", "cmyk", "exif6", "1x1", pytest.param("1x2000", marks=pytest.mark.slow),
                                  pytest.param("2000x3", marks=pytest.mark.slow), "uniform",
                                  "shared_uniform"])
def test_segment_converts_image_files(tmp_path, model, model_flags, name):
    if name == "shared_uniform":
        if not (SHARED_IMAGES / "uniform.png").exists():
            pytest.skip(f"{SHARED_IMAGES} not present")
        path = SHARED_IMAGES / "uniform.png"
    else:
        path = _segment_inputs(tmp_path)[name]
    argv = [str(path), "--classes", "a", "b", "--out", str(tmp_path / "o.png"), "--labels-out", str(tmp_path / "l.png")]
    assert segment.main(argv + model_flags + SMALL) == 0
    labels = np.asarray(Image.open(tmp_path / "l.png"))
    image = read_image(path)  # the documented conversion of each kind, tested above
    assert labels.shape == image.shape[:2]
    assert np.array_equal(labels, model.predict(image).numpy())
    if name == "exif6":
        assert labels.shape == (40, 24)
    if "uniform" in name:
        assert len(np.unique(labels)) == 1


# ================================================================= vocabularies
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_vocabulary_empty_line_in_the_middle(tmp_path):
    path = write(tmp_path / "v.txt", "sky; cloud\n\ncat\n")
    with raises(ValueError, f"vocabulary file {path} line 2 is empty; every line up to the last one must name a "
                            "class (class ids are line numbers)"):
        load_vocabulary(path)
    path = write(tmp_path / "w.txt", "sky\n   \ncat\n")  # whitespace only is empty too
    with raises(ValueError, f"vocabulary file {path} line 2 is empty"):
        load_vocabulary(path)


def test_vocabulary_trailing_blank_lines_are_fine(tmp_path):
    assert load_vocabulary(write(tmp_path / "v.txt", "sky; cloud\ncat\n\n  \n")) == [["sky", "cloud"], ["cat"]]


def test_vocabulary_duplicate_class(tmp_path):
    path = write(tmp_path / "v.txt", "cat; kitten\ndog\ncat;  kitten \n")  # equal after stripping each name
    with raises(ValueError, f"vocabulary file {path} lines 1 and 3 are the same class 'cat;  kitten'"):
        load_vocabulary(path)


def test_vocabulary_empty_synonym(tmp_path):
    path = write(tmp_path / "v.txt", "sky\ncat; ; kitten\n")
    with raises(ValueError, f"vocabulary file {path} line 2 has an empty synonym: 'cat; ; kitten'"):
        load_vocabulary(path)


def test_vocabulary_same_synonym_in_two_classes_is_allowed(tmp_path):
    vocab = load_vocabulary(write(tmp_path / "v.txt", "cat; pet\ndog; pet\n"))
    queries, query_to_class = flatten_vocabulary(vocab)
    assert queries == ["cat", "pet", "dog", "pet"] and query_to_class.tolist() == [0, 0, 1, 1]


def test_shipped_vocabularies_load_and_one_repeats_a_synonym_across_classes():
    files = sorted(VOCAB_DIR.glob("*.txt"))
    assert len(files) == 10  # the eight of Table 1, ADE-847 and PC-459
    vocabs = {f.stem: load_vocabulary(f) for f in files}
    # The official COCO-Object list has 'bed' as a background synonym and as class 61: cross-class
    # repeats must stay legal.
    coco = vocabs["coco_object"]
    assert "bed" in coco[0] and coco[60] == ["bed"]


def test_segment_duplicate_or_empty_class_arguments(tmp_path, capsys):
    base = [str(tmp_path / "unused.png"), "--out", str(tmp_path / "o.png")]
    stderr = run_cli_in_process(segment.main, base + ["--classes", "cat", "dog", "cat"], capsys)
    assert stderr == ("error: class list (--background first, then --classes; one entry per line) lines 1 and 3 "
                      "are the same class 'cat'\n")
    stderr = run_cli_in_process(segment.main, base + ["--classes", "cat", " "], capsys)
    assert stderr.startswith("error: every --classes / --background entry needs at least one name")


# ================================================================= dataset keys, output paths, model names
def test_build_datamodule_unknown_key():
    with raises(ValueError, "unknown benchmark 'nope'; known benchmarks: voc21, voc20, context60, "):
        build_datamodule("nope")


@pytest.mark.slow
def test_test_script_unknown_data_key(cli_runs):
    code, stderr = finished(cli_runs["data_nope"])
    assert code == 2
    assert stderr == ("error: unknown --data 'nope'; expected one of voc21, context60, coco_object, voc20, "
                      "context59, coco_stuff, cityscapes, ade20k, ade847, context459, 'all', a dataset card (.json) or a "
                      "comma-separated list\n")


@pytest.mark.slow
def test_test_script_unwritable_output_dir(cli_runs, workdir):
    code, stderr = finished(cli_runs["test_output_dir"])
    assert code == 2
    assert stderr == f"error: output dir {workdir / 'afile' / 'out'} is not writable: Not a directory\n"


@pytest.mark.slow
def test_segment_unwritable_output(cli_runs, workdir):
    code, stderr = finished(cli_runs["segment_out"])
    target = workdir / "afile" / "o.png"
    assert code == 2
    assert error_lines(stderr) == [f"error: --out {target}: {workdir / 'afile'} is not a folder"], stderr
    assert "Traceback" not in stderr


def test_segment_bad_output_paths_fail_before_the_model_runs(tmp_path, workdir, capsys):
    good = str(workdir / "good.png")
    cases = {
        "--labels-out": (["--out", str(tmp_path / "o.png"), "--labels-out", str(tmp_path / "none" / "l.png")],
                         f"error: --labels-out {tmp_path / 'none' / 'l.png'}: output folder {tmp_path / 'none'} "
                         "does not exist"),
        "folder": (["--out", str(tmp_path)], f"error: --out {tmp_path} is a folder; give a file name"),
        "extension": (["--out", str(tmp_path / "o.xyz")],
                      f"error: --out {tmp_path / 'o.xyz'}: unknown image extension '.xyz'; use e.g. .png"),
    }
    for argv, expected in cases.values():
        # '--clip ViT-Bogus-1' would fail when the model is built: the output check must come first.
        stderr = run_cli_in_process(segment.main, [good, "--classes", "a", *argv, "--clip", "ViT-Bogus-1"], capsys)
        assert stderr.startswith(expected) and len(stderr.splitlines()) == 1, stderr


@pytest.mark.slow
def test_unknown_clip_name_through_the_cli(cli_runs):
    code, stderr = finished(cli_runs["clip_unknown"])
    assert code == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: unknown CLIP model 'ViT-Bogus-1'"), stderr
    assert "open_clip model-config .json" in stderr  # says what a valid value is


@pytest.mark.slow
def test_unknown_vfm_name_through_the_cli(cli_runs):
    code, stderr = finished(cli_runs["vfm_unknown"])
    assert code == 2 and "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: unknown timm VFM 'vit_bogus_patch1'"), stderr
    assert "vit_base_patch8_224.dino" in lines[0]  # lists valid names


@pytest.mark.slow
def test_unknown_vfm_name_is_the_only_stderr_line(cli_runs):
    """The VFM name is checked before CLIP is built, so no CLIP loading output precedes the error."""
    _code, stderr = finished(cli_runs["vfm_unknown"])
    assert len(stderr.splitlines()) == 1, stderr


def test_test_script_unknown_clip_name(tmp_path, capsys):
    # scripts/test.py shares segment.py's model flags (proxyclip_pl.cli); the name is refused before the data are
    # scanned (no dataset-count warning) and before anything is built. In process: a subprocess would cost
    # another ~10 s of imports.
    make_fake_benchmark("voc21", tmp_path / "data", 1, sizes=((20, 30),))
    argv = ["--data", "voc21", "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"),
            "--accelerator", "cpu", "--num-workers", "0", "--clip", "ViT-Bogus-1", "--clip-weights", "random"]
    stderr = run_cli_in_process(test_script.main, argv, capsys)
    lines = stderr.splitlines()
    assert lines[0].startswith("proxyclip-test: proxyclip") and "building" not in stderr, stderr  # the status line
    assert len(lines) == 2 and lines[1].startswith("error: unknown CLIP model 'ViT-Bogus-1'"), stderr
