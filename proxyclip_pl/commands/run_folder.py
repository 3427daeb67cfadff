"""The output folder of a ``proxyclip-test`` run: its default name, the checks before anything runs, and the
command that resumes it. Nothing here imports torch, so a mistake is reported in the time ``--help`` takes."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from proxyclip_pl.console import is_launcher
from proxyclip_pl.records import RECORDS_DIR

#: Where the launching process puts the default folder it chose, for the ranks Lightning starts (they re-run the
#: command and must write to the same folder, although their clock says another time).
RUN_DIR_ENV = "PROXYCLIP_RUN_DIR"
OUTPUTS = Path("outputs")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "run"


def free_output_dir(method: str, keys: Sequence[str], root: Path = OUTPUTS) -> Path:
    """``outputs/<method>_<benchmarks>_<YYYYmmdd-HHMMSS>``, or the next free name (``-2``, ``-3``, ...)."""
    data = "+".join(Path(k).stem if k.endswith(".json") else k for k in keys)
    if len(keys) > 3:
        data = f"{len(keys)}benchmarks"
    base = root / f"{_slug(method.replace(':', '.'))}_{_slug(data)}_{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def default_output_dir(method: str, keys: Sequence[str], root: Path = OUTPUTS) -> Path:
    """The output folder of a run without ``--output-dir``: a free one (:func:`free_output_dir`), so two runs never
    share a folder and neither is refused or overwritten. The ranks Lightning starts read the launcher's choice
    from :data:`RUN_DIR_ENV` (their clocks say another time)."""
    if not is_launcher() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    folder = free_output_dir(method, keys, root)
    os.environ[RUN_DIR_ENV] = str(folder)
    return folder


def check_writable(folder: Path) -> None:
    """``PermissionError`` naming the folder unless it can be created and written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"output dir {folder} is not writable: {exc.strerror or exc}") from None


def previous_run(out_dir: Path) -> list[str]:
    """What in ``out_dir`` belongs to a previous run (results.json, record files)."""
    found = ["results.json"] if (out_dir / "results.json").exists() else []
    records = out_dir / RECORDS_DIR
    if records.is_dir() and any(records.iterdir()):
        found.append(f"{RECORDS_DIR}/")
    return found


def prepare_output_dir(out_dir: Path, resume: bool, overwrite: bool, suggestion: Path) -> None:
    """Refuse to mix with a previous run unless ``resume``; ``overwrite`` removes it. Only the launching process
    acts: the processes Lightning starts for the other ranks re-run the command and must neither refuse nor delete.

    Args:
        suggestion: a free folder the refusal proposes for a new run.
    """
    if not is_launcher():
        return
    found = previous_run(out_dir)
    if not found or resume:
        return
    if not overwrite:
        raise ValueError(f"output dir {out_dir} holds a previous run ({', '.join(found)}); pass --output-dir "
                         f"{suggestion} (or omit --output-dir) for a new run, --resume to continue that one, or "
                         "--overwrite to delete it and start afresh")
    (out_dir / "results.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / RECORDS_DIR, ignore_errors=True)


def resume_command(argv: Sequence[str], out_dir: Path) -> str:
    """The command line that continues this run: the same arguments, ``--resume`` and the output folder."""
    args = [a for a in argv if a not in ("--resume", "--overwrite")]
    if not any(a == "--output-dir" or a.startswith("--output-dir=") for a in args):
        args += ["--output-dir", str(out_dir)]
    program = "proxyclip-test" if Path(sys.argv[0]).name == "proxyclip-test" else f"python {sys.argv[0]}"
    return " ".join([program, *map(shlex.quote, args), "--resume"])
