"""Which query vocabulary a method reads on a benchmark, and where it comes from.

The vocabulary is part of a method's protocol: the published numbers of SCLIP, NACLIP and ClearCLIP were
obtained with their own class-name files, which differ from ProxyCLIP's (SCLIP/NACLIP VOC21: 56 queries,
e.g. ``person in shirt``; ClearCLIP VOC21: 21, its background the single word ``background``). So:

* ``--protocol native``: each of those baselines reads its repository's ``configs/cls_<dataset>.txt``, shipped
  byte for byte in ``proxyclip_pl/native_vocab/<method>/`` and parsed with its own separator
  (:attr:`~proxyclip_pl.native_protocols.MethodInfo.synonym_separator`: ``', '`` for SCLIP / NACLIP, ``','``
  for ClearCLIP). ProxyCLIP, MaskCLIP, CLIP and plug-ins read ProxyCLIP's files.
* ``--protocol proxyclip``: every method reads ProxyCLIP's files (``datamodules/vocab/<key>.txt``, the official
  ``mc-lan/ProxyCLIP`` ``configs/cls_*.txt``, split on ``'; '``).

A dataset card brings its own classes. :meth:`QueryVocabulary.record` is what ``results.json`` and the resume
fingerprint keep: the source, the counts and the sha256 of the parsed classes and synonyms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from datamodules.presets import BUILTIN_BENCHMARKS

from .registry import method_sources, method_spec
from .vocabulary import SYNONYM_SEPARATOR, Vocabulary, flatten_vocabulary, load_vocabulary, vocabulary_sha256

#: Where the shipped official class-name files of the baselines live: ``<NATIVE_VOCAB_DIR>/<method>/cls_*.txt``.
NATIVE_VOCAB_DIR = Path(__file__).resolve().parent / "native_vocab"

#: ProxyCLIP's repository and the commit its class-name files (``datamodules/vocab/<key>.txt``) were read at.
PROXYCLIP_REPOSITORY = "mc-lan/ProxyCLIP"
PROXYCLIP_COMMIT = "e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1"

#: Benchmark key -> official class-name file (the same name in ProxyCLIP, SCLIP, NACLIP and ClearCLIP; the last
#: two exist in ProxyCLIP's repository only): the presets' ``official_classes``.
OFFICIAL_FILES: Mapping[str, str] = MappingProxyType({key: preset.official_classes
                                                      for key, preset in BUILTIN_BENCHMARKS.items()})


@dataclass(frozen=True)
class QueryVocabulary:
    """The classes' query strings of one benchmark run, with their provenance.

    Attributes:
        vocabulary: one list of synonyms per class, in label order.
        source: where it was read (repository@commit and file, or the dataset card).
        owner: the method whose official file it is (``proxyclip``, ``sclip``, ...); ``""`` for a dataset card.
    """

    vocabulary: Vocabulary
    source: str
    owner: str

    def record(self) -> dict[str, Any]:
        """What ``results.json`` (``config.vocabulary``) and the resume fingerprint keep."""
        return {"source": self.source, "num_classes": len(self.vocabulary),
                "num_queries": len(flatten_vocabulary(self.vocabulary)[0]),
                "sha256": vocabulary_sha256(self.vocabulary)}


def native_vocabulary_file(method: str, key: str) -> Path | None:
    """The shipped official class-name file of ``method`` on benchmark ``key`` (``None``: the method has none and
    reads ProxyCLIP's)."""
    if key not in OFFICIAL_FILES or method not in method_sources() or method_spec(method).info is None:
        return None
    path = NATIVE_VOCAB_DIR / method / Path(OFFICIAL_FILES[key]).name
    return path if path.is_file() else None


def query_vocabulary(method: str, key: str, protocol: str = "native") -> QueryVocabulary:
    """The query vocabulary ``method`` reads on benchmark ``key`` under ``protocol`` (module docstring); a registered
    benchmark without an official file brings its own classes or vocabulary file."""
    from datamodules import BENCHMARKS

    if key not in OFFICIAL_FILES:  # a registered benchmark: its spec's classes or vocabulary file
        if key not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {key!r}; expected one of {', '.join(BENCHMARKS)}")
        spec = BENCHMARKS[key]
        if spec.vocabulary is not None:
            return QueryVocabulary([list(names) for names in spec.vocabulary], f"benchmark {key}: its classes", "")
        return QueryVocabulary(load_vocabulary(spec.vocabulary_file), f"benchmark {key}: {spec.vocabulary_file}", "")
    native = native_vocabulary_file(method, key) if protocol == "native" else None
    if native is not None:
        info = method_spec(method).info
        separator, owner = info.synonym_separator, method
        vocabulary = load_vocabulary(native, separator=separator)
        repository, commit = info.repository, info.commit
    else:
        separator, owner = SYNONYM_SEPARATOR, "proxyclip"
        vocabulary = load_vocabulary(BENCHMARKS[key].vocabulary_file)
        repository, commit = PROXYCLIP_REPOSITORY, PROXYCLIP_COMMIT
    source = f"{repository}@{commit[:7]} {OFFICIAL_FILES[key]} (synonyms split on {separator!r})"
    return QueryVocabulary(vocabulary, source, owner)


def card_vocabulary(vocabulary: Sequence[Sequence[str]], card: str | Path) -> QueryVocabulary:
    """A dataset card's own classes and synonyms."""
    return QueryVocabulary([list(names) for names in vocabulary], f"dataset card {Path(card).resolve()}", "")
