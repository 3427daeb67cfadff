"""The command-line programs (console entry points ``proxyclip-*``; ``scripts/*.py`` run the same code).

* :mod:`.evaluate`: ``proxyclip-test`` / ``python scripts/test.py``: benchmark evaluation on any number of devices.
* :mod:`.segment`: ``proxyclip-segment`` / ``python scripts/segment.py``: one image, free-form class names.
* :mod:`.prepare`: ``proxyclip-prepare`` / ``python scripts/prepare_data.py``: a benchmark from its official download.
* :mod:`.benchmark`: ``proxyclip-benchmark`` / ``python scripts/benchmark.py``: ``predict``'s speed against the
  one-window-at-a-time reference.
* :mod:`.compare`: ``proxyclip-compare`` / ``python scripts/compare_results.py``: two or more runs, per class and
  per image.
* :mod:`.miniature`: ``proxyclip-miniature`` / ``python scripts/make_miniature.py``: synthetic miniature datasets
  in the real on-disk layouts.

:mod:`.run_folder` (a run's output folder) and :mod:`.suite` (the full-table timing) serve these commands.
"""
