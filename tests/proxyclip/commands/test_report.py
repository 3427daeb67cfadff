"""proxyclip-report (scripts/report.py): leaderboard, per-class and diagnostics tables, plots and refusals, on
hand-made run folders (fast) and on two real tiny runs (slow)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paths import ROOT
from proxyclip_pl import report
from proxyclip_pl.cli import run_cli
from proxyclip_pl.commands.report import FILES, main, write_report
from script_runs import run_test_script

EIGHT = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
CLASSES = ["background", "cat", "dog"]


def write_result(folder: Path, dataset: str, miou: float, *, classes=CLASSES, ious=None, method="mine:factory",
                 protocol="native", clip="ViT-B-16", vfm=None, speed=None, aacc=50.0, confusion=None) -> Path:
    """A results.json as proxyclip-test writes it (``speed``: seconds, num_images, shared_pass, peak MiB, device,
    and optionally resumed_images), with confusion.npy beside it when given."""
    folder.mkdir(parents=True, exist_ok=True)
    res = {"dataset": dataset, "num_images": 3, "mIoU": miou, "aAcc": aacc,
           "per_class_iou": dict(zip(classes, ious if ious is not None else [miou] * len(classes))),
           "config": {"method": method, "protocol": protocol, "clip": clip, "vfm": vfm}}
    if speed is not None:
        seconds, images, shared, peak, device, *resumed = speed
        res.update(seconds=seconds, num_images=images, images_per_second=images / seconds, shared_pass=shared,
                   peak_memory_mib=peak, device=device, **({"resumed_images": resumed[0]} if resumed else {}))
    (folder / "results.json").write_text(json.dumps(res))
    if confusion is not None:
        np.save(folder / "confusion.npy", np.asarray(confusion, dtype=np.int64))
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def no_lookup(method):
    return None


def table(runs, published=no_lookup):
    columns, rows, _ = report.leaderboard(runs, published)
    return columns, rows


def load(*folders):
    return report.load_runs(list(folders))


def test_leaderboard_cells_equal_the_results_rounded_and_avg_needs_all_eight(tmp_path):
    rng = np.random.default_rng(0)
    full = {k: float(rng.uniform(0, 90)) for k in (*EIGHT, "ade847")}
    for key, value in full.items():
        write_result(tmp_path / "full" / key, key, value)
    for key, value in (("voc20", 33.333), ("voc21", 12.3456), ("my_card", 7.005001)):
        write_result(tmp_path / "seven" / key, key, value)
    columns, rows = table(load(tmp_path / "seven", tmp_path / "full"))
    # the eight in paper order, avg, then the others in order of first appearance (runs, then folder names)
    assert columns[:6] == ["run", "method", "clip", "vfm", "protocol", "kind"]
    assert columns[6:17] == [*EIGHT, "avg", "my_card", "ade847"]
    assert {"images_per_second", "peak_memory_mib", "device"} <= set(columns)
    by_run = {r["run"]: r for r in rows}
    for key, value in full.items():
        assert by_run["full"][key] == f"{round(value, 2):.2f}"
        assert float(by_run["full"][key]) == round(value, 2)
    assert float(by_run["full"]["avg"]) == round(sum(full[k] for k in EIGHT) / 8, 2)
    assert by_run["seven"]["avg"] == "" and by_run["seven"]["context60"] == ""
    seven = by_run["seven"]
    assert (seven["voc21"], seven["voc20"], seven["my_card"]) == ("12.35", "33.33", "7.01")
    assert by_run["full"]["method"] == "mine:factory" and by_run["full"]["vfm"] == ""  # none -> empty


def test_images_per_second_counts_a_shared_pass_once(tmp_path):
    run = tmp_path / "fast"
    write_result(run / "voc21", "voc21", 10, speed=(10.0, 30, ["voc21", "voc20"], 100.0, "cpu"))
    write_result(run / "voc20", "voc20", 10, classes=CLASSES[1:], speed=(10.0, 30, ["voc21", "voc20"], 300.5, "cpu"))
    write_result(run / "context60", "context60", 10, speed=(20.0, 40, ["context60", "context59"], 200.0, "cpu"))
    write_result(run / "context59", "context59", 10, speed=(20.0, 40, ["context60", "context59"], 200.0, "cpu"))
    write_result(run / "cityscapes", "cityscapes", 10, speed=(5.0, 10, ["cityscapes"], 150.0, "cpu"))
    resumed = tmp_path / "resumed"  # the pass evaluated 30 - 10 images in its 10 seconds
    write_result(resumed / "voc21", "voc21", 10, speed=(10.0, 30, ["voc21"], 64.0, "NVIDIA H100", 10))
    write_result(tmp_path / "old" / "voc21", "voc21", 10)  # an older run: no speed, memory or device
    rows = {r["run"]: r for r in table(load(run, resumed, tmp_path / "old"))[1]}
    hand = (30 + 40 + 10) / (10.0 + 20.0 + 5.0)  # 2.2857: a per-benchmark sum would give 80 / 65 or 9.5 img/s
    assert rows["fast"]["images_per_second"] == f"{hand:.2f}" == "2.29"
    assert rows["fast"]["peak_memory_mib"] == "300.50" and rows["fast"]["device"] == "cpu"
    assert rows["resumed"]["images_per_second"] == "2.00" and rows["resumed"]["device"] == "NVIDIA H100"
    assert [rows["old"][c] for c in ("images_per_second", "peak_memory_mib", "device")] == ["", "", ""]


def test_rows_by_avg_descending_then_command_line_order(tmp_path):
    folders = []
    for name, value in (("r1", None), ("r2", 40.0), ("r3", 50.0), ("r4", 40.0), ("r5", None)):
        for key in EIGHT if value is not None else ("voc21",):
            write_result(tmp_path / name / key, key, value if value is not None else 99.0)
        folders.append(tmp_path / name)
    assert [r["run"] for r in table(load(*folders))[1]] == ["r3", "r2", "r4", "r1", "r5"]


def test_published_and_delta_rows_follow_a_native_run(tmp_path):
    published = {k: 10.0 + i for i, k in enumerate(EIGHT)}
    lookup = {"pub": (published, "paper Table 1"), "partial": ({"voc20": 80.9, "ade20k": 16.7}, "README")}.get
    runs = {"native": ("pub", "native"), "other_protocol": ("pub", "proxyclip"), "part": ("partial", "native"),
            "unpublished": ("mine:factory", "native")}
    for i, (name, (method, protocol)) in enumerate(runs.items()):
        for j, key in enumerate(EIGHT if name != "part" else ("voc21", "voc20")):
            write_result(tmp_path / name / key, key, 20.0 + 5 * i + j * 1.234, method=method, protocol=protocol)
    loaded = load(*(tmp_path / n for n in runs))
    columns, rows = table(loaded, lookup)
    kinds = [(r["run"], r["kind"]) for r in rows]
    # avg order: unpublished (35+) > other_protocol > native; part has no avg: last
    assert kinds == [("unpublished", "run"), ("other_protocol", "run"), ("native", "run"), ("native", "published"),
                     ("native", "delta"), ("part", "run"), ("part", "published"), ("part", "delta")]
    run, pub, delta = rows[2:5]
    for key in EIGHT:
        assert float(pub[key]) == published[key]
        assert float(delta[key]) == round(float(run[key]) - published[key], 2)
    assert float(pub["avg"]) == round(sum(published.values()) / 8, 2)
    assert float(delta["avg"]) == round(loaded[0].avg - sum(published.values()) / 8, 2)
    assert pub["method"] == "pub" and pub["published_source"] == "paper Table 1"
    prun, ppub, pdelta = rows[5:]
    assert (ppub["voc20"], ppub["voc21"], ppub["ade20k"], ppub["avg"]) == ("80.90", "", "16.70", "")
    assert pdelta["voc20"] == f"{float(prun['voc20']) - 80.9:.2f}" and pdelta["voc21"] == pdelta["ade20k"] == ""


def test_registry_published_only_for_the_four_vit_b16_openai_rows():
    from proxyclip_pl.registry import method_spec

    assert report.registry_published("mine:factory") is None  # unregistered: no spec is loaded
    for method in ("proxyclip", "sclip", "naclip", "clearclip"):
        numbers, source = report.registry_published(method)
        assert numbers == {k: v for k, v in method_spec(method).published.items() if v is not None} and source
    # published with SAM refinement (Trident) or MetaCLIP weights and SAM2 masks (CorrCLIP): not this setting
    for method in ("trident", "corrclip"):
        assert method_spec(method).published and report.registry_published(method) is None


def test_markdown_and_latex_have_the_rows_and_values_of_the_csv(tmp_path):
    for name, method in (("pxc_b16", "pub"), ("100%_{x}", "mine:factory")):
        for key in EIGHT:
            write_result(tmp_path / name / key, key, (40.0 if method == "pub" else 30.0) + EIGHT.index(key),
                         method=method)
    write_result(tmp_path / "pxc_b16" / "ade847", "ade847", 5.0, method="pub")
    lookup = {"pub": ({k: 40.0 for k in EIGHT}, "paper & README")}.get
    texts = report.build(load(tmp_path / "pxc_b16", tmp_path / "100%_{x}"), lookup)
    rows = list(csv.DictReader(io.StringIO(texts["leaderboard.csv"])))
    md = [line for line in texts["leaderboard.md"].splitlines() if line.startswith("|")]
    md_cells = [[c.strip() for c in line.strip("|").split("|")] for line in md]
    head, body = md_cells[0], md_cells[2:]
    tex = texts["leaderboard.tex"]
    lines = tex[tex.index("\\midrule") + len("\\midrule"):tex.index("\\bottomrule")].strip().splitlines()
    tex_cells = [[c.strip() for c in line.removesuffix("\\\\").split(" & ")] for line in lines]
    assert len(body) == len(tex_cells) == len(rows) == 4
    numbers = [*EIGHT, "avg", "ade847"]
    for row, m, t in zip(rows, body, tex_cells):
        for key in numbers:
            assert m[head.index(key)] == t[head.index(key)] == row[key]
        if row["kind"] == "run":
            assert m[0] == row["run"]
        else:
            assert row["kind"] in m[0] and row["kind"] in t[0]
    assert "pxc\\_b16" in tex and "pxc_b16" not in tex and "100\\%\\_\\{x\\}" in tex
    assert "coco\\_object" in tex and "paper \\& README" in tex
    assert [row["run"] for row in rows] == ["pxc_b16", "pxc_b16", "pxc_b16", "100%_{x}"]
    assert rows[1]["kind"] == "published" and rows[2]["kind"] == "delta"


def test_per_class_rows_are_runs_by_benchmarks_by_classes_in_label_order(tmp_path):
    voc20 = ["aeroplane", "bicycle", "bird", "boat"]
    for run, shift in (("a", 0.0), ("b", 1.005)):
        write_result(tmp_path / run / "voc21", "voc21", 1.0, ious=[10.123 + shift, None, 0.0])
        write_result(tmp_path / run / "voc20", "voc20", 1.0, classes=voc20, ious=[4.0, 3.0, 2.0 + shift, 1.0])
    rows = read_csv_text(report.build(load(tmp_path / "a", tmp_path / "b"), no_lookup)["per_class.csv"])
    assert len(rows) == 2 * (3 + 4)
    expected = [(run, key, c) for run in "ab" for key, names in (("voc21", CLASSES), ("voc20", voc20)) for c in names]
    assert [(r["run"], r["benchmark"], r["class"]) for r in rows] == expected
    assert [r["iou"] for r in rows[:3]] == ["10.12", "", "0.00"]
    assert rows[7]["iou"] == f"{round(10.123 + 1.005, 2):.2f}"


def test_diagnostics_from_a_hand_made_confusion_matrix(tmp_path):
    classes = [f"c{i}" for i in range(7)]
    m = np.zeros((7, 7), dtype=np.int64)
    m[0, 0], m[0, 1], m[0, 2] = 5, 1, 1  # c1 and c2 are predicted but never right: IoU 0
    m[1, 0] = 2
    m[3, 3] = 4
    m[5, 5], m[6, 6] = 3, 2  # c4: neither in the ground truth nor predicted (union 0: not counted)
    write_result(tmp_path / "r" / "voc21", "voc21", 1.0, classes=classes, ious=[0.0] * 7, aacc=81.81818, confusion=m)
    write_result(tmp_path / "r" / "voc20", "voc20", 1.0, aacc=12.0)  # no confusion.npy
    rows = {r["benchmark"]: r for r in read_csv_text(report.build(load(tmp_path / "r"), no_lookup)["diagnostics.csv"])}
    d = rows["voc21"]
    # union > 0: c0, c1, c2, c3, c5, c6 (6); intersection 0 among them: c1, c2 -> 2 / 6
    assert (d["classes"], d["zero_iou_rate"], d["never_predicted"], d["pixel_acc"]) == ("7", "33.33", "1", "81.82")
    assert (d["present_classes"], d["zero_iou_classes"]) == ("6", "2")
    e = rows["voc20"]
    assert (e["classes"], e["zero_iou_rate"], e["never_predicted"], e["pixel_acc"]) == ("3", "", "", "12.00")
    assert list(rows) == ["voc21", "voc20"]  # paper order, not folder order


def read_csv_text(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def small_runs(tmp_path):
    """Two runs with speed, for the files and plots."""
    for name, base in (("one", 20.0), ("two", 30.0)):
        for i, key in enumerate(EIGHT):
            write_result(tmp_path / name / key, key, base + i, ious=[base, base + i, None],
                         speed=(2.0 + i, 10, [key], 500.0, "cpu"), confusion=np.eye(3, dtype=np.int64))
    return tmp_path


def test_files_are_written_byte_identical_and_overwritten(small_runs, capsys):
    out = small_runs / "report"
    out.mkdir()
    (out / "leaderboard.csv").write_text("stale")
    argv = [str(small_runs / "one"), str(small_runs / "two"), "--output-dir", str(out)]
    assert main(argv) == 0
    first = {name: (out / name).read_bytes() for name in FILES}
    assert main(argv) == 0
    assert main([*argv[:2], "--output-dir", str(small_runs / "new" / "dir")]) == 0  # created if missing
    for name in FILES:
        if not name.endswith(".png"):
            assert (out / name).read_bytes() == first[name] == (small_runs / "new" / "dir" / name).read_bytes()
    assert first["leaderboard.csv"].startswith(b"run,method,")
    assert "| two |" in capsys.readouterr().out


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.width >= 300 and image.height >= 200
    return np.asarray(image.convert("RGB"))


def test_plots_are_not_blank_and_change_with_the_runs(small_runs):
    from proxyclip_pl.report_plots import figures

    first = figures(load(small_runs / "one", small_runs / "two"))
    write_result(small_runs / "two" / "voc21", "voc21", 90.0, ious=[90.0, 80.0, 70.0],
                 speed=(0.5, 10, ["voc21"], 500.0, "cpu"), confusion=np.eye(3, dtype=np.int64))
    second = figures(load(small_runs / "one", small_runs / "two"))
    for name in ("pareto.png", "per_class.png"):
        a, b = png_pixels(first[name]), png_pixels(second[name])
        assert len(np.unique(a.reshape(-1, 3), axis=0)) > 10  # not blank
        assert a.shape != b.shape or not np.array_equal(a, b)


def test_pareto_front_keeps_the_undominated_runs():
    from proxyclip_pl.report_plots import pareto_front

    points = [("slow_good", 1.0, 50.0), ("fast_bad", 10.0, 30.0), ("dominated", 2.0, 20.0), ("mid", 5.0, 40.0)]
    assert [p[0] for p in pareto_front(points)] == ["fast_bad", "mid", "slow_good"]


def refusal_case(kind: str, d: Path) -> list[str]:
    """Run folders that the report must refuse, by kind."""
    if kind == "missing dir":
        return [str(d / "nowhere")]
    if kind == "no results.json":
        (d / "empty" / "voc21").mkdir(parents=True)
        return [str(d / "empty")]
    if kind == "bad JSON":
        write_result(d / "bad", "voc21", 1.0)
        (d / "bad" / "results.json").write_text("{not json")
        return [str(d / "bad")]
    if kind == "missing keys":
        write_result(d / "ok" / "voc21", "voc21", 1.0)
        res = json.loads((d / "ok" / "voc21" / "results.json").read_text())
        del res["config"], res["dataset"]
        write_result(d / "partial" / "voc20", "voc20", 1.0)
        (d / "partial" / "voc20" / "results.json").write_text(json.dumps(res))
        return [str(d / "ok"), str(d / "partial")]
    if kind == "duplicate names":
        write_result(d / "a" / "run", "voc21", 1.0)
        write_result(d / "b" / "run", "voc21", 2.0)
        return [str(d / "a" / "run"), str(d / "b" / "run")]
    if kind == "different label sets":
        write_result(d / "x", "voc21", 1.0)
        write_result(d / "y", "voc21", 1.0, classes=["background", "dog", "cat"])  # same names, another order
        return [str(d / "x"), str(d / "y")]
    raise AssertionError(kind)


REFUSALS = {"missing dir": "not found", "no results.json": "holds no results.json", "bad JSON": "is not JSON",
            "missing keys": "lacks dataset, config", "duplicate names": "two runs are named run",
            "different label sets": "different label sets for benchmark voc21"}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_refusals_exit_2_with_one_error_line_and_write_nothing(kind, tmp_path, capsys):
    dirs = refusal_case(kind, tmp_path / "in")
    out = tmp_path / "out"
    if kind != "missing dir":
        out.mkdir()  # an existing DIR stays empty; a missing one is not created
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [*dirs, "--output-dir", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and REFUSALS[kind] in err
    assert (not out.exists()) if kind == "missing dir" else list(out.iterdir()) == []


@pytest.mark.slow
def test_script_refuses_in_one_line_and_imports_nothing_heavy_for_help(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path / "nowhere"),
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert not (tmp_path / "out").exists()
    code = ("import sys; import proxyclip_pl.commands.report as r; r.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'lightning') if m in sys.modules))")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == "[]", probe.stderr


TINY = ["--data", "voc21,voc20", "--clip", "configs/tiny_clip.json", "--clip-weights", "random",
        "--vfm", "configs/tiny_dino.json", "--vfm-weights", "random", "--num-workers", "0"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two real proxyclip-test runs on a 3-image VOC21/VOC20 miniature: ProxyCLIP and SCLIP (native protocol)."""
    d = tmp_path_factory.mktemp("report_runs")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_miniature.py"), "--dst", str(d / "mini"),
                           "--benchmarks", "voc21", "voc20", "--num-images", "3"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    runs = (d / "pxc_tiny", d / "sclip_tiny")
    for out, method in zip(runs, ("proxyclip", "sclip")):
        proc = run_test_script([*TINY, "--data-root", str(d / "mini"), "--output-dir", str(out), "--method", method])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return runs


@pytest.mark.slow
def test_report_of_two_real_tiny_runs(tiny_runs, tmp_path):
    from proxyclip_pl.registry import method_spec

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), *map(str, tiny_runs),
                           "--output-dir", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    results = {run.name: {k: json.loads((run / k / "results.json").read_text()) for k in ("voc21", "voc20")}
               for run in tiny_runs}
    rows = read_csv(out / "leaderboard.csv")
    assert [r["kind"] for r in rows] == ["run", "published", "delta"] * 2  # both native, both published
    for i, row in enumerate(rows):
        if row["kind"] != "run":
            continue
        res = results[row["run"]]
        assert row["method"] == res["voc21"]["config"]["method"] and row["avg"] == ""
        for key in ("voc21", "voc20"):
            assert float(row[key]) == round(res[key]["mIoU"], 2)
            published = method_spec(row["method"]).published[key]
            assert float(rows[i + 1][key]) == published
            assert float(rows[i + 2][key]) == round(res[key]["mIoU"] - published, 2)
        one_pass = res["voc21"]  # VOC21 and VOC20 share their pass: counted once
        assert one_pass["shared_pass"] == ["voc21", "voc20"]
        assert row["images_per_second"] == f"{one_pass['num_images'] / one_pass['seconds']:.2f}"
    assert (out / "leaderboard.md").read_text().count("\n| published (") == 2
    per_class = read_csv(out / "per_class.csv")
    assert len(per_class) == 2 * (21 + 20)
    for row in read_csv(out / "diagnostics.csv"):
        m = np.load(tiny_runs[0].parent / row["run"] / row["benchmark"] / "confusion.npy")
        inter, union = np.diag(m), m.sum(0) + m.sum(1) - np.diag(m)
        rate = 100 * np.sum((union > 0) & (inter == 0)) / np.sum(union > 0)
        assert row["zero_iou_rate"] == f"{rate:.2f}" and int(row["never_predicted"]) == int(np.sum(m.sum(0) == 0))
        assert float(row["pixel_acc"]) == round(results[row["run"]][row["benchmark"]]["aAcc"], 2)
    for name in ("pareto.png", "per_class.png"):
        assert len(np.unique(png_pixels((out / name).read_bytes()).reshape(-1, 3), axis=0)) > 10
    before = (out / "leaderboard.csv").read_bytes()
    assert write_report(list(tiny_runs), out)["leaderboard.csv"].encode() == before
