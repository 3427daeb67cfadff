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
* :mod:`.report`: ``proxyclip-report`` / ``python scripts/report.py``: a leaderboard (CSV, Markdown, LaTeX),
  per-class IoU, diagnostics and plots from run folders.
* :mod:`.demo`: ``proxyclip-demo`` / ``python scripts/demo.py``: a web page on ``proxyclip-segment``'s code path
  (extra ``[demo]``).
* :mod:`.analyze`: ``proxyclip-analyze`` / ``python scripts/analyze.py``: the paper's Section 3.1 analyses
  (coherence AP, attention maps, similarity statistics).

:mod:`.run_folder` (a run's output folder) and :mod:`.suite` (the full-table timing) serve these commands.
"""
