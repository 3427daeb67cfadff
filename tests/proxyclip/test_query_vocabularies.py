"""Each method's query vocabulary per protocol: the baselines' native runs read their official class-name files,
parsed as their official code parses them (issue: SCLIP/NACLIP VOC21 has 56 queries, ClearCLIP's 21, ours 46)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.commands.evaluate import parse_args
from proxyclip_pl.commands.jobs import make_job
from proxyclip_pl.commands.table import publishes
from proxyclip_pl.native_protocols import DATASETS, METHODS
from proxyclip_pl.query_vocabularies import NATIVE_VOCAB_DIR, OFFICIAL_FILES, query_vocabulary
from proxyclip_pl.vocabulary import flatten_vocabulary

#: sha256 over (file name, sha256 of the bytes) of each shipped folder, sorted by name; recorded after checking the
#: files byte for byte against the official ``configs/cls_*.txt`` at the commits of ``METHODS`` (NACLIP's files are
#: SCLIP's, unchanged).
FOLDER_DIGESTS = {
    "sclip": "e1af4bb37aa0cfc9138d1431dc070177a3b32d6e11f0179cf2dbaf246ee41755",
    "naclip": "e1af4bb37aa0cfc9138d1431dc070177a3b32d6e11f0179cf2dbaf246ee41755",
    "clearclip": "4f257950462044b439732c5385bee5745206731ab7707f97ffdbd1f9a446bdb8",
    "trident": "2f368c8f50a7d19bd6ffb9558605d590b8480452bc52391f6410ad5ecad8e82b",
    "corrclip": "d6e93bd8fc1bf60bfed8762c83e107955a5a31cbe409dc3cb5a0a3ca02df6876",
}
#: (classes, queries) of the official files that differ from ProxyCLIP's in count; every other file of the three
#: methods has one query per class.
COUNTS = {
    ("sclip", "voc21"): (21, 56), ("sclip", "voc20"): (20, 30), ("sclip", "coco_object"): (81, 113),
    ("naclip", "voc21"): (21, 56), ("naclip", "voc20"): (20, 30), ("naclip", "coco_object"): (81, 113),
    ("trident", "voc21"): (21, 46), ("trident", "coco_object"): (81, 97),
    ("corrclip", "voc21"): (21, 46), ("corrclip", "coco_object"): (81, 96),
}


def official_get_cls_idx(path: Path, separator: str) -> tuple[list[str], list[int]]:
    """Transcription of the official ``get_cls_idx`` (SCLIP ``clip_segmentor.py``, NACLIP ``naclip.py``: split on
    ``', '``; ClearCLIP ``clearclip_segmentor.py``: on ``','``): lines as read, split, newline removed."""
    with open(path) as f:
        name_sets = f.readlines()
    names, indices = [], []
    for idx, line in enumerate(name_sets):
        parts = line.split(separator)
        names += parts
        indices += [idx] * len(parts)
    return [n.replace("\n", "") for n in names], indices


@pytest.mark.parametrize("method", sorted(FOLDER_DIGESTS))
def test_shipped_files_are_the_official_ones(method):
    folder = NATIVE_VOCAB_DIR / method
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        digest.update(name.encode())
        digest.update(hashlib.sha256((folder / name).read_bytes()).digest())
    assert digest.hexdigest() == FOLDER_DIGESTS[method]
    assert sorted(os.listdir(folder)) == sorted(Path(OFFICIAL_FILES[k]).name for k in DATASETS)


@pytest.mark.parametrize("method", sorted(FOLDER_DIGESTS))
@pytest.mark.parametrize("key", DATASETS)
def test_native_queries_equal_the_official_parse(method, key):
    vocab = query_vocabulary(method, key, "native")
    names, indices = official_get_cls_idx(NATIVE_VOCAB_DIR / method / Path(OFFICIAL_FILES[key]).name,
                                          METHODS[method].synonym_separator)
    queries, query_to_class = flatten_vocabulary(vocab.vocabulary)
    # names are stripped (Context60's "wood "): CLIP's tokenizer yields the same tokens for both spellings
    assert queries == [n.strip() for n in names] and query_to_class.tolist() == indices
    assert vocab.owner == method and METHODS[method].repository in vocab.source
    classes = max(indices) + 1
    assert (len(vocab.vocabulary), len(queries)) == COUNTS.get((method, key), (classes, classes))
    record = vocab.record()
    assert (record["num_classes"], record["num_queries"]) == (classes, len(queries))


def test_native_vocabularies_differ_from_proxyclips_as_published():
    sclip, clearclip, ours = (query_vocabulary(m, "voc21") for m in ("sclip", "clearclip", "proxyclip"))
    assert sclip.vocabulary[15][:3] == ["person", "person in shirt", "person in jeans"]
    assert clearclip.vocabulary[0] == ["background"] and len(ours.vocabulary[0]) == 26
    assert query_vocabulary("naclip", "voc21").vocabulary == sclip.vocabulary
    assert len({v.record()["sha256"] for v in (sclip, clearclip, ours)}) == 3
    coco = query_vocabulary("clearclip", "coco_object")
    assert coco.vocabulary[0] == ["background"] and coco.vocabulary[10] == ["traffic light"]


@pytest.mark.parametrize("method", ["sclip", "naclip", "clearclip", "proxyclip", "maskclip"])
def test_proxyclip_protocol_and_extra_benchmarks_read_proxyclips_files(method):
    for key in ("voc21", "ade847"):
        vocab = query_vocabulary(method, key, "proxyclip")
        assert vocab.owner == "proxyclip" and vocab.source.startswith("mc-lan/ProxyCLIP@e7b767f")
    assert query_vocabulary(method, "context459", "native").owner == "proxyclip"  # no native file there


def test_a_run_reads_the_protocols_vocabulary_and_publishes_only_with_it(tmp_path):
    make_fake_benchmark("voc21", tmp_path / "data", 2)

    def job(method, protocol):
        args = parse_args(["--data", "voc21", "--data-root", str(tmp_path / "data"), "--method", method,
                           "--protocol", protocol, "--num-workers", "0"])
        return args, make_job("voc21", args, tmp_path / "out")

    args, native = job("sclip", "native")
    assert len(flatten_vocabulary(native.vocabulary)[0]) == 56 and publishes(args, [native])
    args, rerun = job("sclip", "proxyclip")
    assert len(flatten_vocabulary(rerun.vocabulary)[0]) == 46 and not publishes(args, [rerun])
    args_native, _ = job("sclip", "native")
    assert not publishes(args_native, [native, rerun])  # one benchmark on ProxyCLIP's vocabulary: no published row
    args, ours = job("proxyclip", "native")
    assert publishes(args, [ours])  # the paper's Table 1 row, with ProxyCLIP's own vocabulary
    args, maskclip = job("maskclip", "native")
    assert not publishes(args, [maskclip])  # no published row
