"""Official archives of the benchmarks: URLs, checksums, resumable download and safe extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .prepare import PreparationError

try:  # tqdm ships with timm/huggingface; fall back silently if absent.
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None = None  # None: not verified offline -> skipped with a warning
    sha256: str | None = None
    extract_to: str = ""  # sub-folder of --src to extract into; "" = --src itself
    extract: bool = True

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


OFFICIAL_ARCHIVES: dict[str, list[Archive]] = {
    "voc": [Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd")],
    "context": [Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                        md5="da459979d0c395079b5c75ee67908abb"),
                Archive("https://codalabuser.blob.core.windows.net/public/trainval_merged.json", extract=False)],
    "coco_stuff": [Archive("http://images.cocodataset.org/zips/val2017.zip", extract_to="images"),
                   Archive("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                           "stuffthingmaps_trainval2017.zip", extract_to="annotations")],
    "ade20k": [Archive("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip")],
    # Cityscapes needs a login: https://www.cityscapes-dataset.com/downloads/ (packages 1 and 3).
    "cityscapes": [],
    "ade847": [],  # registration required
    "context459": [],  # VOC2010 (see "context") + trainval.tar.gz of PASCAL Context: download by hand
}
OFFICIAL_ARCHIVES["coco_object"] = OFFICIAL_ARCHIVES["coco_stuff"]

MANUAL_DOWNLOADS = {
    "ade847": "register at https://groups.csail.mit.edu/vision/datasets/ADE20K/, download ADE20K_2021_17_01.zip "
              "and extract it; pass the ADE20K_2021_17_01 folder as --src",
    "context459": "extract VOCtrainval_03-May-2010.tar and PASCAL Context's trainval.tar.gz (459-label .mat "
                  "maps + labels.txt, https://cs.stanford.edu/~roozbeh/pascal-context/) into the VOC2010 folder",
}


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, md5: str | None, sha256: str | None) -> bool:
    """True if the checksums match; True with a warning when none is known."""
    if md5 is None and sha256 is None:
        warnings.warn(f"no known checksum for {path.name}; integrity not verified", stacklevel=3)
        return True
    if sha256 is not None and file_digest(path, "sha256") != sha256.lower():
        return False
    if md5 is not None and file_digest(path, "md5") != md5.lower():
        return False
    return True


def download(url: str, dest: Path, md5: str | None = None, sha256: str | None = None,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``; resume a partial ``dest.part`` with an HTTP Range request.

    Idempotent: an existing ``dest`` with a matching checksum is kept.  A server that
    ignores the Range header (status 200) restarts the file.  Accepts ``file://`` URLs and
    local paths.  Raises :class:`PreparationError` on a checksum mismatch.
    """
    dest = Path(dest)
    if dest.is_file():
        if _check_digest(dest, md5, sha256):
            return dest
        raise PreparationError(f"{dest} exists but its checksum does not match {url}; delete it and retry")
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "datamodules-prepare/1.0"})
    if offset and url.startswith(("http://", "https://")):
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already complete
            resp = None
        else:
            raise PreparationError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise PreparationError(f"download of {url} failed: {exc.reason}") from exc
    if resp is not None:
        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            if offset and status != 206:
                offset = 0  # Range ignored: start over
            length = resp.headers.get("Content-Length")
            total = (int(length) + offset) if length is not None else None
            bar = (_tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr)
                   if (_tqdm is not None and progress) else None)
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    chunk = resp.read(chunk_size)
                    if not chunk:
                        break
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
    if not _check_digest(part, md5, sha256):
        bad = part.with_name(part.name + ".corrupt")
        os.replace(part, bad)
        raise PreparationError(f"checksum mismatch for {url} (moved the file to {bad})")
    os.replace(part, dest)
    return dest


def extract(archive: Path, out_dir: Path) -> Path:
    """Extract a tar/zip archive into ``out_dir`` once (a marker file makes reruns no-ops)."""
    archive, out_dir = Path(archive), Path(out_dir)
    marker = out_dir / f".extracted-{archive.name}"
    if marker.is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir.resolve()

    def _safe(name: str) -> None:
        target = (out_dir / name).resolve()
        if base != target and base not in target.parents:
            raise PreparationError(f"{archive} contains a path outside the target folder: {name}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                _safe(n)
            zf.extractall(out_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                _safe(m.name)
            try:
                tf.extractall(out_dir, filter="data")
            except TypeError:  # Python without extraction filters; members were checked above
                tf.extractall(out_dir)
    else:
        raise PreparationError(f"{archive} is neither a zip nor a tar archive")
    marker.write_text("ok\n")
    return out_dir


def fetch_official(dataset: str, src: Path, archives: Sequence[Archive] | None = None,
                   progress: bool = True) -> None:
    """Download (resumably) and extract the official archives of ``dataset`` into ``src``."""
    archives = OFFICIAL_ARCHIVES[dataset] if archives is None else archives
    if not archives and dataset in MANUAL_DOWNLOADS:
        raise PreparationError(f"{dataset} cannot be downloaded automatically; {MANUAL_DOWNLOADS[dataset]}")
    if not archives:
        raise PreparationError(f"{dataset} cannot be downloaded automatically (login required); download "
                               "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                               "https://www.cityscapes-dataset.com/downloads/ and extract them into --src")
    src = Path(src)
    for a in archives:
        path = download(a.url, src / "downloads" / a.filename, md5=a.md5, sha256=a.sha256, progress=progress)
        if a.extract:
            extract(path, src / a.extract_to)
        elif not (src / a.filename).exists():
            shutil.copy2(path, src / a.filename)
