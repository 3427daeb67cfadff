"""What the commands print besides their results: progress lines on stderr, and the libraries kept quiet.

Only the launching process prints (Lightning's other ranks re-run the command; their lines would repeat it).
A phase slower than a few seconds reports itself: on a terminal one line updated in place, elsewhere (logs, CI)
at most one line every few seconds, and always a closing line with the count and the time taken.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator


def is_launcher() -> bool:
    """True in the process the user started (global rank 0 of node 0), False in the ranks Lightning starts and in
    the other tasks of a SLURM or torchrun launch."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def note(message: str) -> None:
    """One progress or status line on stderr, from the launching process only."""
    if is_launcher():
        print(message, file=sys.stderr, flush=True)


class Progress:
    """``label: done/total`` on stderr for a loop of ``total`` steps (launching process only).

    Args:
        label: what is counted, e.g. ``"text embeddings (prompts)"``.
        total: the number of steps (> 0).
        every: seconds between lines when stderr is not a terminal (a terminal is updated every 0.2 s in place).
    """

    def __init__(self, label: str, total: int, every: float = 5.0) -> None:
        self.label, self.total, self.done = label, max(int(total), 1), 0
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else every
        self.start = self.last = time.perf_counter()
        self.enabled = is_launcher()

    def update(self, steps: int = 1) -> None:
        self.done += steps
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._print(f"{self.label}: {self.done}/{self.total} ({100 * self.done // self.total}%)", final=False)

    def close(self, suffix: str = "") -> float:
        """Print the closing line (``label: total/total in S s``); returns the seconds taken."""
        seconds = time.perf_counter() - self.start
        if self.enabled:
            self._print(f"{self.label}: {self.done}/{self.total} in {seconds:.1f} s{suffix}", final=True)
        return seconds

    def _print(self, line: str, final: bool) -> None:
        if self.tty:
            print(f"\r\033[K{line}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


@contextmanager
def phase(start: str, done: str) -> Iterator[None]:
    """``start ...`` before a slow step and ``done in S s`` after it (launching process only)."""
    note(f"{start} ...")
    begin = time.perf_counter()
    yield
    note(f"{done} in {time.perf_counter() - begin:.1f} s")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 (warnings API)
    # A user can act on the message, not on the library line that raised it.
    return f"warning: {' '.join(str(message).split())}\n"


def quiet_libraries() -> None:
    """Keep the libraries' output a user cannot act on off the console (our own warnings stay, on one line each).

    * Lightning's "GPU available / TPU available" lines and its logging advertisement (INFO): the device used is
      printed by the command and recorded in ``results.json``.
    * Lightning's advice to pass ``sync_dist=True``: the metric states are reduced exactly by this package
      (``proxyclip_pl.metrics``), not by ``self.log``.
    * torch/Lightning deprecation notices about ``_pytree``, and the "does not have many workers" hint (the
      worker count is the user's ``--num-workers``).
    """
    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO when imported: import it first)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (".*sync_dist=True.*", ".*does not have many workers.*", r".*isinstance\(treespec, LeafSpec\).*",
                    ".*_pytree.*"):
        warnings.filterwarnings("ignore", pattern)
    warnings.formatwarning = _one_line_warning
