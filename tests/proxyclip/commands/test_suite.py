"""scripts/benchmark.py --suite (proxyclip_pl.commands.suite): the miniatures mirror the real window counts, the
projection arithmetic, and an end-to-end run with tiny models (``--data all`` identical to eight separate runs)."""
from __future__ import annotations

import pytest

from proxyclip_pl.commands import suite
from proxyclip_pl.native_protocols import DATASETS
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec


def test_miniatures_have_the_real_number_of_windows_per_image():
    real = {key: suite.windows_per_image(key, size) for key, (size, _) in suite.REAL_IMAGES.items()}
    assert real == {"voc21": 2, "context60": 2, "coco_object": 2, "voc20": 2, "context59": 2, "coco_stuff": 2,
                    "cityscapes": 21, "ade20k": 8}
    assert {key: suite.windows_per_image(key, suite.MINI_SIZES[key]) for key in DATASETS} == real


def test_projection_counts_each_shared_pass_once():
    passes = [["voc21", "voc20"], ["context60", "context59"], ["coco_object", "coco_stuff"], ["cityscapes"], ["ade20k"]]
    p = suite.projection(passes, {k: 1.0 for k in DATASETS})
    separate = 2 * (2 * 1449 + 2 * 5105 + 2 * 5000) + 21 * 500 + 8 * 2000
    shared = 2 * (1449 + 5105 + 5000) + 21 * 500 + 8 * 2000
    assert (p["windows_separate"], p["windows_shared"]) == (separate, shared)
    assert p["window_ratio"] == p["time_weighted_ratio"] == round(separate / shared, 3) == 1.466
    # one pass per benchmark: no saving
    assert suite.projection([[k] for k in DATASETS], {k: 2.0 for k in DATASETS})["time_weighted_ratio"] == 1.0


@pytest.mark.slow
def test_suite_with_tiny_models_finds_identical_results_and_fewer_windows(tmp_path):
    report = suite.run_suite(tmp_path / "suite", num_images=1, clip=str(write_tiny_clip_config(tmp_path)),
                             vfm=str(write_tiny_vfm_spec(tmp_path)), text_queries=0, kill_fractions=(0.5,))
    side = report["image_side"]
    assert side["identical_results_and_predictions"], side["differences"]
    assert side["windows_all"] == 2 * 3 + 21 + 8 < side["windows_separate"] == 2 * 6 + 21 + 8
    assert side["passes"][0] == ["voc21", "voc20"] and side["all_peak_rss_mib"] > 0
    kills = report["kill_and_resume"]
    assert kills["identical_to_uninterrupted"] and kills["records"] == kills["expected_records"] == 8
    assert len(kills["attempts"]) == 2 and kills["attempts"][-1]["records_after"] == 8
