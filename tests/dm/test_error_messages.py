"""Error messages a new user meets first: each names the file and says what to do.

* A weights file that is no checkpoint (text, an image, random bytes, a pickle of Python objects) -> one line naming
  the file, "not a PyTorch or safetensors checkpoint" (or "pickled Python objects"), and what to pass instead; never
  PyTorch's multi-paragraph ``weights_only`` text.
* The problems of a dataset's files -> one ``DatasetLayoutError``: a summary line, then one line per kind of problem;
  ``run_cli`` keeps those lines (and still joins every other message into one line).
* A corrupt image in a dataset -> its problem line holds the decoder's reason (exception type and message).
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DatasetLayoutError, build_datamodule
from datamodules.synthetic import make_fake_benchmark, random_image
from proxyclip_pl import build_clip, build_vfm
from proxyclip_pl.cli import run_cli
from tiny_models import TINY_VFMS, write_tiny_clip_config


class _Opaque:
    """An arbitrary Python object: tensors-only loading refuses to unpickle it."""


def _cli_stderr(call, capsys) -> str:
    """What ``run_cli`` prints on stderr for the error raised by ``call`` (exit code 2)."""
    with pytest.raises(SystemExit) as info:
        run_cli(lambda _argv: call())
    assert info.value.code == 2
    return capsys.readouterr().err


# ================================================================= 1. weights files that are no checkpoint
def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


#: name -> (writer of the file, words the message must hold).
NOT_CHECKPOINTS = {
    "text.pt": (lambda p: p.write_text("model weights go here\n"), "not a PyTorch or safetensors checkpoint"),
    "photo.pth": (lambda p: p.write_bytes(_jpeg_bytes()), "not a PyTorch or safetensors checkpoint (a JPEG image"),
    "random.bin": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
                   "not a PyTorch or safetensors checkpoint"),
    "objects.pt": (lambda p: p.write_bytes(pickle.dumps({"model": [1, 2], "note": "x"})),
                   "not a PyTorch or safetensors checkpoint (a Python pickle"),
    "saved_objects.pt": (lambda p: torch.save({"model": _Opaque()}, p), "holds pickled Python objects"),
    "text.safetensors": (lambda p: p.write_text("not the safetensors header\n"),
                         "not a PyTorch or safetensors checkpoint"),
}


def _assert_one_clear_line(message: str, path: Path, needle: str, instead: str) -> None:
    assert "\n" not in message, message
    assert str(path) in message and needle in message, message
    assert "weights_only" not in message and "file an issue" not in message, message
    assert instead in message and "'random'" in message, message


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
def test_vfm_weights_that_are_no_checkpoint_give_one_line_naming_the_file(tmp_path, capsys, name):
    write, needle = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    write(path)
    model_name, kwargs = TINY_VFMS["dino"]
    with pytest.raises(ValueError) as info:
        build_vfm(model_name, str(path), **kwargs)
    _assert_one_clear_line(str(info.value), path, needle, "'pretrained'")
    assert _cli_stderr(lambda: build_vfm(model_name, str(path), **kwargs), capsys) == f"error: {info.value}\n"


@pytest.mark.parametrize("name", ["text.pt", "photo.pth", "objects.pt", "saved_objects.pt"])
def test_clip_weights_that_are_no_checkpoint_give_one_line_naming_the_file(tmp_path, capsys, name):
    write, needle = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    write(path)
    cfg = str(write_tiny_clip_config(tmp_path))
    with pytest.raises(ValueError) as info:
        build_clip(cfg, str(path))
    _assert_one_clear_line(str(info.value), path, needle, "pretrained tag")
    assert _cli_stderr(lambda: build_clip(cfg, str(path)), capsys) == f"error: {info.value}\n"


def test_pickled_objects_are_named(tmp_path):
    torch.save({"state_dict": {}, "extra": _Opaque()}, tmp_path / "objects.pt")
    model_name, kwargs = TINY_VFMS["dino"]
    with pytest.raises(ValueError, match=r"holds pickled Python objects \(e\.g\. [\w.]*_Opaque\)"):
        build_vfm(model_name, str(tmp_path / "objects.pt"), **kwargs)


def test_a_saved_list_is_not_a_state_dict(tmp_path):
    # open_clip used to fail on it with an AttributeError (a traceback, not a user error).
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt is not a PyTorch or safetensors checkpoint \(a torch\.save "
                                         r"file of a list, not a state dict"):
        build_clip(str(write_tiny_clip_config(tmp_path)), str(tmp_path / "list.pt"))


# ================================================================= 2. one line per kind of dataset problem
def write_custom_dataset(root: Path, n: int = 4, size: tuple[int, int] = (20, 30)) -> list[str]:
    """``n`` image/label pairs (``size`` + (i, 0) pixels, classes 0..2) in ``img/`` and ``ann/``, and a card."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    ids = [f"s{i}" for i in range(n)]
    for i, sid in enumerate(ids):
        h, w = size[0] + i, size[1]
        Image.fromarray(random_image(h, w, rng)).save(root / "img" / f"{sid}.jpg")
        Image.fromarray(rng.integers(0, 3, (h, w)).astype(np.uint8)).save(root / "ann" / f"{sid}.png")
    (root / "mine.json").write_text(json.dumps({"data_root": ".", "classes": ["a", "b", "c"], "img_dir": "img",
                                                "ann_dir": "ann", "seg_suffix": ".png"}))
    return ids


def _verify_error(card: Path) -> str:
    with pytest.raises(DatasetLayoutError) as info:
        build_datamodule(str(card), num_workers=0).verify()
    assert info.value.multiline
    return str(info.value)


def test_custom_dataset_problems_are_one_line_per_kind(tmp_path):
    write_custom_dataset(tmp_path)
    (tmp_path / "ann" / "s1.png").unlink()  # missing label
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "ann" / "s2.png")  # size mismatch
    lines = _verify_error(tmp_path / "mine.json").splitlines()
    assert lines[0] == f"mine: 2 problems under {tmp_path}:"
    kinds = [line for line in lines[1:] if line.startswith("  - ")]
    assert len(kinds) == 2, lines
    assert kinds[0].startswith("  - missing label (1): ") and str(tmp_path / "ann" / "s1.png") in kinds[0]
    assert kinds[1].startswith("  - size mismatch (1): ") and "s2.jpg is 30x22 but label" in kinds[1]
    assert "data_root" in lines[-1] and not lines[-1].startswith("  - ")  # how to fix


def test_report_lists_the_first_files_of_each_kind_and_counts_the_rest(tmp_path):
    ids = write_custom_dataset(tmp_path, n=8)
    for sid in ids[1:]:
        (tmp_path / "ann" / f"{sid}.png").unlink()
    lines = _verify_error(tmp_path / "mine.json").splitlines()
    assert lines[0] == f"mine: 7 problems under {tmp_path}:"
    assert lines[1].startswith("  - missing label (7): ") and lines[1].endswith("; ... and 2 more")
    assert [f"{sid}.png" in lines[1] for sid in ids[1:]] == [True] * 5 + [False] * 2


def test_benchmark_reports_missing_images_and_labels_together(tmp_path):
    root = make_fake_benchmark("voc21", tmp_path, 3, sizes=((20, 30),))
    split = root / "ImageSets/Segmentation/val.txt"
    sids = split.read_text().split()
    split.write_text(split.read_text() + "2008_999999\n")  # listed, no image and no label
    (root / "SegmentationClass" / f"{sids[0]}.png").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        build_datamodule("voc21", data_root=root).verify()
    lines = str(info.value).splitlines()
    assert lines[0] == f"voc21: 3 problems under {root}:"
    assert lines[1] == f"  - missing image (1): {root / 'JPEGImages/2008_999999.jpg'}"
    assert lines[2].startswith("  - missing label (2): ") and f"{sids[0]}.png" in lines[2]
    assert "prepare_data.py voc" in lines[3]


def test_run_cli_keeps_the_lines_of_a_report_and_joins_other_messages(tmp_path, capsys):
    write_custom_dataset(tmp_path)
    (tmp_path / "ann" / "s1.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "ann" / "s2.png")
    card = tmp_path / "mine.json"
    with pytest.raises(DatasetLayoutError) as info:
        build_datamodule(str(card), num_workers=0).verify()
    report = str(info.value).splitlines()
    err = _cli_stderr(lambda: build_datamodule(str(card), num_workers=0).verify(), capsys)
    assert err.splitlines() == [f"error: {report[0]}", *report[1:]]
    # Any other message is still one line, whatever line breaks it holds.
    err = _cli_stderr(lambda: build_datamodule("voc21", data_root=tmp_path / "nowhere").verify(), capsys)
    assert err.count("\n") == 1 and err.startswith("error: [voc21] data root does not exist")

    def wrapped():
        raise ValueError("first part\n   second part")

    assert _cli_stderr(wrapped, capsys) == "error: first part second part\n"


# ================================================================= 3. corrupt images: the decoder's reason
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def _pil_reason(path: Path) -> str:
    """What PIL (the datamodules' decoder) says when it decodes ``path``."""
    with pytest.raises(Exception) as info:
        Image.open(path).load()
    return f"{type(info.value).__name__}: {info.value}"


def test_corrupt_images_are_reported_with_the_decoders_reason(tmp_path):
    write_custom_dataset(tmp_path, size=(120, 160))  # big enough for the header to survive the truncation
    _truncate(tmp_path / "img" / "s0.jpg")
    (tmp_path / "img" / "s3.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    with Image.open(tmp_path / "img" / "s0.jpg") as im:
        assert im.size == (160, 120)  # the header is intact: only decoding the pixels fails
    lines = _verify_error(tmp_path / "mine.json").splitlines()
    assert lines[0] == f"mine: 2 problems under {tmp_path}:"
    (line,) = [line for line in lines if line.startswith("  - unreadable image (2): ")]
    truncated, random_bytes = _pil_reason(tmp_path / "img" / "s0.jpg"), _pil_reason(tmp_path / "img" / "s3.jpg")
    assert truncated.startswith("OSError: ") and random_bytes.startswith("UnidentifiedImageError: ")
    assert f"{tmp_path / 'img' / 's0.jpg'} ({truncated})" in line, line
    assert f"{tmp_path / 'img' / 's3.jpg'} ({random_bytes})" in line, line


def test_corrupt_label_is_reported_with_the_decoders_reason(tmp_path):
    write_custom_dataset(tmp_path)
    _truncate(tmp_path / "ann" / "s2.png")
    lines = _verify_error(tmp_path / "mine.json").splitlines()
    (line,) = [line for line in lines if line.startswith("  - unreadable label (1): ")]
    assert f"{tmp_path / 'ann' / 's2.png'} ({_pil_reason(tmp_path / 'ann' / 's2.png')})" in line, line
