"""Durable per-image evaluation records: what makes ``scripts/test.py --resume`` possible.

Every evaluating process appends one record per image to its own file ``<output dir>/records/<host>-<pid>-<ns>.jsonl``
(a fresh file per process and run, so no process ever appends after another's torn line), then flushes and
``os.fsync``-s it before the next image.

Format: one line per record, ``<crc32 of the JSON text, 8 hex digits> <JSON>\\n``. The first line of a file is the
header ``{"kind": "header", "fingerprint": {...}}`` (the run configuration); each further line is an image::

    {"kind": "image", "index": 3, "id": "2007_000033",
     "states": {"intersect": [[class, count], ...], "pred_area": [...], "label_area": [...], "num_images": [[0, 1]],
                "seen": [[3, 1]], "confusion": [[flat index, count], ...], "unlabeled_pred": [...]},
     "row": {... per_image.csv row ...} | null}

``states`` is the exact increment this image added to every int64 state of
:class:`~proxyclip_pl.metrics.SegmentationIoU` (flattened, non-zero entries only), so summing the records of all
images reproduces the metric of an uninterrupted run bit for bit. A line without its final newline, or whose
checksum / JSON does not match (a process killed mid-write), is dropped: that image is simply evaluated again.
"""
from __future__ import annotations

import json
import os
import socket
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # torch is imported where it is used: checking a run folder costs no torch import
    import torch

__all__ = ["RecordWriter", "read_records", "check_fingerprint", "sparse", "RECORDS_DIR", "sum_states"]

#: Folder (inside the output dir) holding the record files.
RECORDS_DIR = "records"


def _line(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    return f"{zlib.crc32(text.encode()):08x} {text}\n".encode()


def _parse(line: bytes) -> dict[str, Any] | None:
    """One complete line (newline included) -> payload, or ``None`` if torn / corrupt."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    text = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(text):
            return None
        return json.loads(text)
    except ValueError:
        return None


def sparse(t: torch.Tensor) -> list[list[int]]:
    """Non-zero entries of an integer tensor, flattened: ``[[flat index, value], ...]``."""
    import torch

    flat = t.detach().reshape(-1).cpu()
    nz = torch.nonzero(flat).flatten()
    return [list(e) for e in zip(nz.tolist(), flat[nz].tolist())]


class RecordWriter:
    """Appends image records for one process; the file (and its header) is created at the first record.

    Args:
        folder: the ``records`` folder of the output dir.
        fingerprint: the run configuration stored in the header (see :func:`check_fingerprint`).
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self._fh = None

    def _open(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.jsonl"
        self._fh = open(path, "ab")
        self._write({"kind": "header", "fingerprint": self.fingerprint})
        try:  # make the new directory entry durable too
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def _write(self, payload: dict[str, Any]) -> None:
        self._fh.write(_line(payload))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, index: int, sid: str, states: dict[str, list[list[int]]], row: dict[str, Any] | None) -> None:
        """Durably record one image: returns once the line is on disk."""
        if self._fh is None:
            self._open()
        self._write({"kind": "image", "index": int(index), "id": str(sid), "states": states, "row": row})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self) -> dict[str, Any]:  # pickled into ddp_spawn workers: never an open file
        return {**self.__dict__, "_fh": None}


def read_records(folder: str | Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], int]:
    """Read every record file of ``folder``.

    Returns:
        ``(headers, images, dropped)``: each file's header payload (with ``"file"`` added), the image records by
        dataset index (the first one wins if an image was recorded twice, e.g. by a crash between its record and
        the next), and the number of torn / corrupt lines skipped.
    """
    folder = Path(folder)
    headers: list[dict[str, Any]] = []
    images: dict[int, dict[str, Any]] = {}
    dropped = 0
    if not folder.is_dir():
        return headers, images, dropped
    for path in sorted(folder.glob("*.jsonl")):
        lines = path.read_bytes().splitlines(keepends=True)
        header = _parse(lines[0]) if lines else None
        if header is None or header.get("kind") != "header":
            dropped += len(lines)  # torn while writing its header: it holds no image
            continue
        headers.append({**header, "file": path.name})
        for line in lines[1:]:
            rec = _parse(line)
            if rec is None or rec.get("kind") != "image":
                dropped += 1
                continue
            images.setdefault(int(rec["index"]), rec)
    return headers, images, dropped


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: recorded {old!r}, now {new!r}"]


def check_fingerprint(headers: list[dict[str, Any]], fingerprint: dict[str, Any], ignore: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming the differing fields if a record file was written under another configuration
    (top-level fields in ``ignore`` are not compared)."""
    current = json.loads(json.dumps(fingerprint))  # the JSON view, as stored
    ignore = set(ignore)
    for h in headers:
        recorded = {k: v for k, v in h["fingerprint"].items() if k not in ignore}
        diff = _differences(recorded, {k: v for k, v in current.items() if k not in ignore})
        if diff:
            shown = "; ".join(d if len(d) < 300 else d[:300] + "..." for d in diff[:5])
            raise ValueError(f"cannot resume: the records in {h['file']} come from a different configuration "
                             f"({shown}); rerun with --overwrite to start afresh")


def sum_states(images: Iterable[dict[str, Any]], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum the recorded state increments of ``images`` into int64 CPU tensors shaped like ``like``."""
    import torch

    sums = {name: torch.zeros(t.numel(), dtype=torch.int64) for name, t in like.items()}
    for rec in images:
        for name, entries in rec["states"].items():
            if name not in sums:
                raise ValueError(f"cannot resume: a record holds the unknown metric state {name!r}")
            if entries:
                pairs = torch.tensor(entries, dtype=torch.int64).view(-1, 2)
                sums[name].index_add_(0, pairs[:, 0], pairs[:, 1])
    return {name: s.view(like[name].shape) for name, s in sums.items()}
