"""proxyclip-segment (scripts/segment.py): any Pillow-readable image, overlay + label map, one-line errors."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datamodules.io import read_image
from proxyclip_pl import build_proxyclip
from proxyclip_pl.commands import segment
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

SCRIPT = ROOT / "scripts" / "segment.py"
HORSES = ROOT.parent / "shared" / "testimages" / "horses.png"


@pytest.fixture(scope="module")
def model_flags(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return ["--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random",
            "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--seed", "0"]


def _photo() -> np.ndarray:
    if HORSES.exists():
        return read_image(HORSES)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (120, 180, 3), dtype=np.uint8)


def test_overlay_and_labels_equal_the_python_api(tmp_path, model_flags):
    image = _photo()
    Image.fromarray(image).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png"), "--classes", "horse; pony", "grass", "--background", "sky; tree",
            "--prob-thd", "0.2", "--out", str(tmp_path / "ov.png"), "--labels-out", str(tmp_path / "lab.png")]
    assert segment.main(args + model_flags) == 0
    labels = np.asarray(Image.open(tmp_path / "lab.png"))
    model = build_proxyclip([["sky", "tree"], ["horse", "pony"], ["grass"]], clip=model_flags[1], clip_weights="random",
                            vfm=model_flags[5], vfm_weights="random", prob_thd=0.2)
    assert np.array_equal(labels, model.predict(image).numpy())
    overlay = Image.open(tmp_path / "ov.png")
    assert overlay.height >= image.shape[0] and overlay.width > image.shape[1]  # legend on the right
    assert np.array_equal(np.asarray(overlay)[: image.shape[0], : image.shape[1]].shape, image.shape)


def _variants(base: np.ndarray) -> dict[str, bytes]:
    img = Image.fromarray(base)
    out = {}
    for name, im, fmt in [
        ("gray", img.convert("L"), "PNG"), ("rgba", img.convert("RGBA"), "PNG"),
        ("palette", img.convert("P"), "PNG"), ("cmyk", img.convert("CMYK"), "JPEG"),
        ("i16", Image.fromarray((base[:, :, 0].astype(np.uint16) * 257)), "PNG"),
    ]:
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out[name] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out["exif_rot"] = buf.getvalue()
    return out


@pytest.mark.parametrize("variant", ["gray", "rgba", "palette", "cmyk", "i16", "exif_rot"])
def test_any_pillow_image_works(tmp_path, model_flags, variant):
    base = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    path = tmp_path / f"img_{variant}"
    path.write_bytes(_variants(base)[variant])
    args = [str(path), "--classes", "a", "b", "--out", str(tmp_path / "o.png"), "--labels-out", str(tmp_path / "l.png")]
    assert segment.main(args + model_flags) == 0
    labels = np.asarray(Image.open(tmp_path / "l.png"))
    expected = (80, 48) if variant == "exif_rot" else (48, 80)  # EXIF orientation applied
    assert labels.shape == expected and labels.dtype == np.uint8 and labels.max() <= 1


def _run(args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_errors_exit_nonzero_with_one_line(tmp_path, model_flags):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    cases = [
        ([str(tmp_path / "missing.jpg"), "--classes", "a", "--out", str(tmp_path / "o.png")] + model_flags, "missing.jpg"),
        ([str(tmp_path / "corrupt.png"), "--classes", "a", "--out", str(tmp_path / "o.png")] + model_flags, "corrupt.png"),
        ([str(good), "--classes", "a", "--out", str(tmp_path / "o.png"), "--clip", "ViT-Bogus-1", "--clip-weights", "random"], "ViT-Bogus-1"),
        ([str(good), "--classes", "a", "--out", str(tmp_path / "o.png"), "--vfm", "vit_bogus_patch1", "--vfm-weights", "random"]
         + model_flags[:4], "vit_bogus_patch1"),
    ]
    for args, name in cases:
        result = _run(args)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and name in errors[0], result.stderr
