"""The benchmarks of a ``proxyclip-test`` run as jobs: data, protocol, vocabulary, output folder and segmenter,
and their grouping into shared encoder passes."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from datamodules import BENCHMARKS
from proxyclip_pl.cli import load_plugin, model_kwargs
from proxyclip_pl.native_protocols import DATASETS, protocol_for, proxyclip_protocol_of
from proxyclip_pl.registry import method_sources


def folder_name(key: str) -> str:
    """A benchmark's sub-folder in a run of several: its key, or a dataset card's file stem (not its path)."""
    return Path(key).stem if is_card(key) else key


def is_card(key: str) -> bool:
    """``--data path/to/dataset.json``: a user dataset described by a dataset card."""
    return key.endswith(".json")


def resolve_protocol(args: argparse.Namespace, key: str, preset=None):
    """The Protocol of ``--method`` on ``key`` under ``--protocol``, with ``--pamr-steps`` applied.

    A plug-in factory may carry ``native_protocols`` (dataset key -> Protocol) for its native protocol.
    A dataset card (``preset`` given) has one protocol for every method: its short side, windows and
    ``prob_thd`` with ProxyCLIP's logit scale, no area filter and no PAMR."""
    if is_card(key):
        protocol = proxyclip_protocol_of(preset)
    else:
        protocol = protocol_for(args.method, key, args.protocol)
    if not is_card(key) and args.protocol == "native" and not registered(args.method):
        protocol = (getattr(load_plugin(args.method), "native_protocols", None) or {}).get(key, protocol)
    if args.pamr_steps is not None:
        protocol = dataclasses.replace(protocol, pamr_steps=args.pamr_steps)
    return protocol


def check_devices(args: argparse.Namespace) -> str:
    """Resolve the accelerator and reject more devices than this node has, before Lightning starts processes."""
    import torch

    accelerator = {"cuda": "gpu", "auto": "gpu" if torch.cuda.is_available() else "cpu"}.get(args.accelerator, args.accelerator)
    available = torch.cuda.device_count() if accelerator == "gpu" else (os.cpu_count() or 1)
    if args.devices > available:
        kind = "GPUs" if accelerator == "gpu" else "CPU cores"
        raise ValueError(f"--devices {args.devices} requested but only {available} {kind} are available on this node")
    return accelerator


def data_root_for(key: str, args: argparse.Namespace) -> Path | None:
    if args.data_root is None:
        return None  # the datamodule's default: $PROXYCLIP_DATA/<sub path> or data/<sub path>
    root = Path(args.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    nested = root / BENCHMARKS[key].sub_path
    if is_multi(args) or (nested.is_dir() and not (root / BENCHMARKS[key].img_dir).is_dir()):
        return nested  # a data folder holding the standard sub-path
    return root


@dataclasses.dataclass
class Job:
    """One benchmark of the run: its data, protocol, vocabulary, output folder and (once built) segmenter."""

    key: str
    preset: Any
    protocol: Any
    dm: Any  # the benchmark's datamodule (set up)
    dataset: Any  # its test dataset, first --limit images
    vocab: Any  # its QueryVocabulary (classes' synonyms and their source)
    ignore_index: int
    out_dir: Path
    model: Any = None

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def vocabulary(self) -> list[list[str]]:
        return self.vocab.vocabulary


def data_keys(args: argparse.Namespace) -> list[str]:
    """``--data``: 'all' (Table 1), one key or card, or a comma-separated list of them."""
    return list(DATASETS) if args.data == "all" else [k.strip() for k in args.data.split(",") if k.strip()]


def is_multi(args: argparse.Namespace) -> bool:
    """Several benchmarks: each gets OUT/<key>/ and --data-root is the data folder holding the standard sub-paths."""
    return args.data == "all" or len(data_keys(args)) > 1


def make_job(key: str, args: argparse.Namespace, out_dir: Path) -> Job:
    """Data, protocol and vocabulary of one benchmark (no model yet)."""
    import torch

    from datamodules import build_datamodule
    from proxyclip_pl.query_vocabularies import card_vocabulary, query_vocabulary

    preset = build_datamodule(key, data_root=args.data_root).preset if is_card(key) else BENCHMARKS[key]
    protocol = resolve_protocol(args, key, preset)
    # the datamodule resizes with the protocol's short side and long-side cap
    dm = build_datamodule(key, data_root=args.data_root if is_card(key) else data_root_for(key, args),
                          num_workers=args.num_workers, short_side=protocol.short_side,
                          long_side_cap=protocol.long_side_cap)
    dm.setup("test")
    dataset = dm.test_dataset
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    if is_card(key):  # a user dataset: the card's classes and synonyms
        from proxyclip_pl.vocabulary import validate_vocabulary

        vocab = card_vocabulary(preset.vocabulary, key)
        validate_vocabulary(vocab.vocabulary)
    else:  # the vocabulary is part of the protocol: native baselines read their official class-name files
        vocab = query_vocabulary(args.method, key, args.protocol)
    ignore_index = preset.ignore_index if args.ignore_index is None else args.ignore_index
    return Job(key, preset, protocol, dm, dataset, vocab, ignore_index, out_dir)


def build_models(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Every job's segmenter. Registered methods (built-in or installed): CLIP (and the VFM) built once for the
    whole run, shared by all segmenters. A ``module:factory`` plug-in is called once per benchmark (what it shares
    is up to it)."""
    from proxyclip_pl.factory import build_segmenters

    if not registered(args.method):
        for job in jobs:
            job.model = load_plugin(args.method)(vocabulary=job.vocabulary, protocol=job.protocol)
        return
    kwargs = model_kwargs(args)
    if args.method != "proxyclip" and kwargs.pop("attention") != "proxy":
        raise ValueError(f"--attention is a ProxyCLIP option; --method {args.method} has none")
    if not uses_vfm(args, spec_only=True):
        kwargs.pop("vfm"), kwargs.pop("vfm_weights")
    models = build_segmenters(args.method, {job.key: (job.vocabulary, job.protocol) for job in jobs},
                              text_cache_dir=args.text_cache_dir, **kwargs)
    for job in jobs:
        job.model = models[job.key]


def shared_passes(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped into passes, in order of first appearance: a job joins a pass when it has the same image files,
    the same test resize and a segmenter sharing the first one's encoder (same towers and windows), so one
    encoder pass per window serves the whole group. Anything else (e.g. a plug-in that does not expose its
    window embeddings) gets its own pass."""
    from datamodules.shared import image_list
    from proxyclip_pl.shared_pass import shares_encoder

    groups: list[list[Job]] = []
    for job in jobs:
        for group in groups:
            lead = group[0]
            if ((lead.protocol.short_side, lead.protocol.long_side_cap)
                    == (job.protocol.short_side, job.protocol.long_side_cap)
                    and shares_encoder(lead.model, job.model)
                    and image_list(lead.dataset) == image_list(job.dataset)):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


def registered(method: str) -> bool:
    """A method of the registry (built-in, installed through an entry point, or registered at run time)."""
    return method in method_sources()


def uses_vfm(args: argparse.Namespace, spec_only: bool = False) -> bool:
    """Whether the run builds a VFM: the method's spec asks for one (and ``--vfm`` is not ``none``)."""
    if not registered(args.method):
        return False
    from proxyclip_pl.registry import method_spec

    return method_spec(args.method).uses_vfm and (spec_only or args.vfm is None or str(args.vfm).lower() != "none")


def describe_model(args: argparse.Namespace) -> str:
    """``CLIP <name> (<weights>)`` and, for ProxyCLIP, ``+ VFM <name> (<weights>)``; a plug-in by its factory."""
    if not registered(args.method):
        return f"the plug-in {args.method}"
    from proxyclip_pl.towers import resolve_clip_weights

    text = f"{args.method}: CLIP {args.clip} ({resolve_clip_weights(args.clip, args.clip_weights)})"
    if uses_vfm(args):
        text += f" + VFM {args.vfm} ({args.vfm_weights})"
    from proxyclip_pl.registry import method_spec

    towers = method_spec(args.method).towers
    if "sam" in towers:
        text += f" + SAM {args.sam} ({args.sam_weights})"
    if "masks" in towers:
        text += f" + masks {args.masks}"
    return text
