"""What a run records about itself: ``results.json``'s ``config`` and the resume fingerprint (what determines
the result), and the resume check before any model is built."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any, Sequence

import proxyclip_pl
from proxyclip_pl.commands.jobs import Job, is_card, registered, uses_vfm


def tower_identities(args: argparse.Namespace) -> dict[str, Any]:
    """The towers of a built-in method as given and as resolved: ``clip_weights`` is the weights source actually
    used (the preset's tag when none is given, ``random`` for a model-config JSON), and every ``*_id`` identifies
    content (a config or checkpoint file by the sha256 of its bytes, ``random`` weights by their seed, a tag by
    name), as the text cache does (:func:`proxyclip_pl.text_cache.weights_identity`)."""
    from proxyclip_pl.towers import resolve_clip_weights
    from proxyclip_pl.text_cache import file_fingerprint, weights_identity

    def config_id(name: str) -> str:
        return f"sha256:{file_fingerprint(name)}" if name.endswith(".json") and Path(name).is_file() else name

    if registered(args.method):
        from proxyclip_pl.cli import resolve_default_towers

        resolve_default_towers(args)
    clip_weights = resolve_clip_weights(args.clip, args.clip_weights)
    towers = {"clip": args.clip, "clip_id": config_id(args.clip), "clip_weights": clip_weights,
              "clip_weights_id": weights_identity(clip_weights, args.seed)}
    if uses_vfm(args):
        from proxyclip_pl.sd_vfm import is_sd_name

        # Stable Diffusion's features depend on the seed of its noise draws, whatever the weights
        seeded = is_sd_name(args.vfm) and args.vfm_weights != "random"
        towers.update(vfm=args.vfm, vfm_id=config_id(args.vfm), vfm_weights=args.vfm_weights,
                      vfm_weights_id=weights_identity(args.vfm_weights, args.seed) + (
                          f"; noise seed {args.seed}" if seeded else ""))
    else:
        towers.update(vfm=None, vfm_id=None, vfm_weights=None, vfm_weights_id=None)
    if registered(args.method):  # Trident's SAM and CorrCLIP's masks: only where the method has them
        from proxyclip_pl.registry import method_spec

        spec_towers = method_spec(args.method).towers
        if "sam" in spec_towers:
            towers.update(sam=args.sam, sam_id=config_id(args.sam), sam_weights=args.sam_weights,
                          sam_weights_id=weights_identity(args.sam_weights, args.seed))
        if "masks" in spec_towers:
            towers.update(masks=None if args.masks is None else str(args.masks))
    return towers


def method_origin(method: str) -> str:
    """``built-in``, ``<distribution> <version>`` of an installed method, ``run time`` or ``module:factory``."""
    from importlib import metadata

    from proxyclip_pl.registry import method_sources

    source = method_sources().get(method)
    if source is None:
        return "module:factory"
    if source in ("built-in", "run time"):
        return source
    try:
        return f"{source} {metadata.version(source)}"
    except metadata.PackageNotFoundError:
        return source


def model_fingerprint(model) -> str | None:
    """A plug-in's own fingerprint of what its outputs depend on (``state_fingerprint()``; every
    :class:`~proxyclip_pl.Segmenter` has one: a hash of its weights; the text side is identified by the
    vocabulary's hash), or ``None``."""
    method = getattr(model, "state_fingerprint", None)
    return str(method()) if callable(method) else None


def configuration(args: argparse.Namespace, job: "Job", world_size: int) -> dict[str, Any]:
    import lightning
    import numpy
    import open_clip
    import timm
    import torch
    import torchmetrics

    builtin = registered(args.method)
    origin = method_origin(args.method)
    model, protocol = job.model, job.protocol

    def attr(name: str, default: Any = None) -> Any:
        return getattr(model, name, default)  # plug-ins may lack them

    towers = tower_identities(args) if builtin else dict.fromkeys(
        ("clip", "clip_id", "clip_weights", "clip_weights_id", "vfm", "vfm_id", "vfm_weights", "vfm_weights_id"))
    return {
        "method": args.method,
        "protocol": args.protocol,
        "protocol_settings": protocol.record(),
        "pamr_steps_override": args.pamr_steps,
        "segmenter": f"{type(model).__module__}.{type(model).__qualname__}",
        **towers,
        # built-in methods are identified by their towers; installed / run-time ones also by their weights and
        # text embeddings and by their distribution's version (its code may change)
        "model_fingerprint": None if origin == "built-in" else model_fingerprint(model),
        "method_source": origin,
        "vfm_kind": attr("vfm_kind"),
        "attention": attr("attention"),
        "seed": args.seed if builtin else None,
        "beta": attr("beta"),
        "gamma": attr("gamma"),
        "logit_scale": attr("logit_scale", protocol.logit_scale),
        "prob_thd": attr("prob_thd", protocol.prob_thd),
        "area_thd": attr("area_thd", protocol.area_thd),
        "pamr_steps": attr("pamr_steps", protocol.pamr_steps),
        "short_side": protocol.short_side,
        "long_side_cap": protocol.long_side_cap,
        "slide_crop": attr("slide_crop", protocol.slide_crop),
        "slide_stride": attr("slide_stride", protocol.slide_stride),
        "vocabulary": job.vocab.record(),
        "window_batch_size": attr("effective_window_batch_size"),
        "precision": "32-true" if args.precision == "32" else args.precision,  # the same setting
        "accelerator": args.accelerator,
        "world_size": world_size,
        "num_nodes": args.num_nodes,
        "versions": {
            "proxyclip_pl": proxyclip_pl.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__,
            "open_clip": open_clip.__version__,
            "timm": timm.__version__,
            "numpy": numpy.__version__,
        },
    }


#: ``configuration()`` fields a resumed run may change: how it is run (process count, windows per encoder call,
#: device; the results do not depend on them: batch invariance and 1-vs-2-process equality are tested) and the
#: names of the towers' files and weights, whose content the ``*_id`` fields identify, and ``--pamr-steps`` as typed
#: (the effective value is in ``protocol_settings``).
NOT_FINGERPRINTED = ("world_size", "num_nodes", "window_batch_size", "accelerator", "clip", "clip_weights", "vfm",
                     "vfm_weights", "sam", "sam_weights", "seed", "pamr_steps_override")


#: Fingerprint fields read from the built segmenter (a resume is checked without them before the model is built).
MODEL_FIELDS = ("segmenter", "model_fingerprint", "vfm_kind", "attention", "beta", "gamma", "logit_scale", "prob_thd",
                "area_thd", "pamr_steps", "slide_crop", "slide_stride")


def fingerprint(args: argparse.Namespace, job: "Job") -> dict[str, Any]:
    """What a resumed run must share with the recorded one: ``configuration()`` less :data:`NOT_FINGERPRINTED`,
    plus the dataset (its image ids) and the metric settings. Records are keyed by image, so the device count
    and the device may change."""
    config = configuration(args, job, 1)
    for name in NOT_FINGERPRINTED:
        config.pop(name, None)  # sam/sam_weights: only where the method has a SAM tower
    ids = dataset_ids(job.dataset)
    key = job.key
    return {**config, "dataset": key if not is_card(key) else str(Path(key).resolve()),
            "data_root": str(job.dm.data_root), "num_images": len(ids),
            "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "ignore_index": job.ignore_index, "mmseg_histc": bool(job.preset.mmseg_histc),
            "class_names_sha256": hashlib.sha256("\n".join(job.dm.class_names).encode()).hexdigest()}


def dataset_ids(dataset) -> list[str]:
    """Image ids of a test dataset or of a ``Subset`` of one, in dataset order."""
    import torch

    if isinstance(dataset, torch.utils.data.Subset):
        base = dataset_ids(dataset.dataset)
        return [base[i] for i in dataset.indices]
    return [str(i) for i in dataset.ids]


def check_resume_early(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Refuse a resume whose records were written under another protocol, vocabulary, weights or dataset before any
    model is built (the fields that need the built model are compared in :func:`evaluate_pass`)."""
    from proxyclip_pl.records import RECORDS_DIR, check_fingerprint, read_records

    if not args.resume:
        return
    for job in jobs:
        headers = read_records(job.out_dir / RECORDS_DIR)[0]
        if headers:
            check_fingerprint(headers, fingerprint(args, job), ignore=MODEL_FIELDS)
