"""proxyclip-compare (scripts/compare_results.py) on hand-made runs, and proxyclip-miniature (scripts/make_miniature.py)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from proxyclip_pl.cli import run_cli
from proxyclip_pl.commands import compare, miniature
from paths import ROOT

PER_IMAGE_HEADER = "id,pixels,pixel_acc,miou,classes\n"


def write_run(folder: Path, method: str, miou: float, ious: dict, per_image: dict | None) -> Path:
    """A run folder as proxyclip-test leaves it: results.json and (with ``per_image``) per_image.csv."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"dataset": "voc21", "mIoU": miou, "config": {"method": method},
                                                     "per_class_iou": ious}))
    if per_image is not None:
        rows = "".join(f"{i},100,50.0000,{'nan' if m is None else f'{m:.4f}'},0\n" for i, m in per_image.items())
        (folder / "per_image.csv").write_text(PER_IMAGE_HEADER + rows)
    return folder / "results.json"


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "baseline" / "voc21", "maskclip", 40.0, {"sky": 50.0, "cat": 20.0, "dog": None},
                  {"img1": 40.0, "img2": 60.0, "img3": 10.0, "img4": None, "only_a": 5.0})
    b = write_run(tmp_path / "tuned" / "voc21", "proxyclip", 45.0, {"sky": 55.5, "cat": 10.0, "dog": 3.0},
                  {"img1": 45.5, "img2": 20.0, "img3": 30.25, "img4": 12.0})
    return tmp_path, a, b


def test_plot_title_names_both_runs(two_runs, capsys):
    d, a, b = two_runs
    assert compare.main([str(a), str(b), "--out", str(d / "diff.png")]) == 0
    title = Image.open(d / "diff.png").text["Title"]
    assert "baseline/voc21 (maskclip, voc21)" in title and "tuned/voc21 (proxyclip, voc21)" in title
    assert title.index("baseline") < title.index("tuned")  # A vs B: the reference first
    assert "mIoU 45.00 vs 40.00" in capsys.readouterr().out


def test_per_image_table_has_the_deltas_sorted(two_runs, capsys):
    d, a, b = two_runs
    assert compare.main([str(a.parent), str(b.parent), "--out", str(d / "diff.png"), "--top-images", "1"]) == 0
    with (d / "diff_per_image.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["id", "miou_a", "miou_b", "delta"],
                    ["img3", "10.0000", "30.2500", "20.2500"],
                    ["img1", "40.0000", "45.5000", "5.5000"],
                    ["img2", "60.0000", "20.0000", "-40.0000"],
                    ["img4", "nan", "12.0000", "nan"]]  # undefined last; only_a is in run A only
    out = capsys.readouterr().out
    assert "4 images compared, 1 in one run only" in out
    assert "img3" in out and "img2" in out and "\nimg1 " not in out  # --top-images 1: best and worst only


def test_per_image_skipped_with_a_note_when_one_run_has_none(two_runs, capsys):
    d, a, b = two_runs
    (b.parent / "per_image.csv").unlink()
    assert compare.main([str(a), str(b), "--out", str(d / "diff.png")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "per-image comparison" in line]
    assert len(notes) == 1 and "skipped" in notes[0] and not (d / "diff_per_image.csv").exists()


def test_missing_results_is_one_line_error(two_runs, capsys):
    d, a, _b = two_runs
    with pytest.raises(SystemExit) as exc:
        run_cli(compare.main, [str(a), str(d / "nope.json"), "--out", str(d / "diff.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.json" in err


def test_miniature_keeps_its_flags_and_writes_a_benchmark(tmp_path, capsys):
    flags = {s for action in miniature.build_parser()._actions for s in action.option_strings}
    assert flags == {"-h", "--help", "--dst", "--benchmarks", "--num-images", "--seed"}
    assert miniature.main(["--dst", str(tmp_path), "--num-images", "2"]) == 0
    assert "voc21: 2 images under" in capsys.readouterr().out
    assert len((tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()) == 2


@pytest.mark.slow
def test_installed_commands_and_launchers_print_the_same_help():
    pairs = {"proxyclip-compare": "compare_results.py", "proxyclip-miniature": "make_miniature.py"}
    for name, launcher in pairs.items():
        program = Path(sys.executable).parent / name
        assert program.exists(), f"{name} not installed: pip install -e ."
        installed = subprocess.run([str(program), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        script = subprocess.run([sys.executable, str(ROOT / "scripts" / launcher), "--help"], capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
        assert installed.returncode == 0 and installed.stdout.startswith(f"usage: {name} "), installed.stderr
        assert (script.returncode, script.stdout) == (0, installed.stdout)
