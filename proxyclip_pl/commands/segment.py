"""Segment one image with ProxyCLIP (or another method) and free-form class names.

    proxyclip-segment photo.jpg --classes "cat; kitten" "dog" --background "sky; wall; floor" \
        --prob-thd 0.2 --out overlay.png --labels-out labels.png
    proxyclip-segment photo.jpg --classes cat dog --method naclip --pamr-steps 10 --out overlay.png

``python scripts/segment.py ...`` runs the same. ``--method``: proxyclip (default), maskclip, clip, sclip,
naclip, clearclip, trident (with its SAM tower, --sam), corrclip (needs --masks sam2 or none), an installed method or
``module:factory`` (called as ``factory(vocabulary=..., protocol=...)``, see proxyclip-test). Windows:
--short-side/--crop/--stride (default: the method's own constructor defaults, 336/336/112 for proxyclip, maskclip,
clip, trident and corrclip, 336/224/112 for sclip, naclip and clearclip; --crop 0 = whole image).

Class ids: with --background, 0 is the background and the --classes follow from 1; without it the
--classes are 0..N-1. Synonyms are separated by '; '.

--out: the image with each class's colour blended over it at 60 % (OVERLAY_ALPHA), and a legend whose
swatches are those colours blended the same way over mid-grey: a swatch looks like its class in the
overlay (over a bright or dark part of the photo the class looks a little lighter or darker).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

import proxyclip_pl
from datamodules.io import read_image
from proxyclip_pl.cli import add_model_arguments, load_plugin, model_kwargs, run_cli
from proxyclip_pl.native_protocols import Protocol
from proxyclip_pl.registry import method_sources, method_spec
from proxyclip_pl.visualize import add_legend, overlay

#: Weight of the class colour in --out (the photo keeps 1 - OVERLAY_ALPHA); the legend uses the same.
OVERLAY_ALPHA = 0.6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxyclip-segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="any image file Pillow reads (EXIF orientation is applied)")
    p.add_argument("--classes", nargs="+", required=True, help="one argument per class, synonyms separated by '; '")
    p.add_argument("--background", default=None, help="background synonyms ('; '-separated): becomes class 0")
    p.add_argument("--prob-thd", type=float, default=0.0, help="pixels below this probability become background")
    p.add_argument("--out", required=True, help="overlay PNG with a legend (class colours at 60 %%)")
    p.add_argument("--labels-out", default=None, help="optional uint8 label-map PNG")
    p.add_argument("--method", default="proxyclip",
                   help="a registered method (proxyclip, maskclip, clip, sclip, naclip, clearclip, trident, corrclip, "
                   "installed ones: proxyclip-test --list) or module:factory")
    p.add_argument("--short-side", type=int, default=None, help="default: the method's (336)")
    p.add_argument("--crop", type=int, default=None,
                   help="window side (official slide_crop): default the method's, 224 (sclip, naclip, clearclip) or "
                   "336; 0: whole image")
    p.add_argument("--stride", type=int, default=None, help="default: the method's (112)")
    p.add_argument("--logit-scale", type=float, default=40.0)
    p.add_argument("--area-thd", type=float, default=None, help="SCLIP's foreground-area filter (default: off)")
    p.add_argument("--pamr-steps", type=int, default=0, help="PAMR steps (default: off)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    add_model_arguments(p)
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch  # here: importing this module needs no torch

    return torch.cuda.is_available()


def check_output(path: str, flag: str) -> None:
    """Fail early, naming the path, if ``path`` cannot be written as an image by PIL.

    os.access is the check for ordinary users; root passes it even for read-only folders, which
    then fail at save time with PermissionError (also one line through ``run_cli``).
    """
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise IsADirectoryError(f"{flag} {target} is a folder; give a file name such as {target / 'out.png'}")
    if not folder.exists():
        raise FileNotFoundError(f"{flag} {target}: output folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{flag} {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {target}: output folder {folder} is not writable")
    if Image.registered_extensions().get(target.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"{flag} {target}: unknown image extension {target.suffix!r}; use e.g. .png")


def build_model(args: argparse.Namespace, vocabulary):
    """The segmenter of ``--method`` with the window / threshold flags."""
    # the method's own constructor defaults (plug-ins: the core's)
    segmenter = method_spec(args.method).segmenter if args.method in method_sources() else proxyclip_pl.Segmenter
    geometry = segmenter.default_geometry()
    short_side = args.short_side or geometry["short_side"]
    window_size = args.crop if args.crop is not None else geometry["slide_crop"]
    stride = args.stride or geometry["slide_stride"]
    if args.method == "proxyclip":
        return proxyclip_pl.build_proxyclip(
            vocabulary, prob_thd=args.prob_thd, short_side=short_side, slide_crop=window_size, slide_stride=stride,
            logit_scale=args.logit_scale, area_thd=args.area_thd, pamr_steps=args.pamr_steps, device=args.device,
            **model_kwargs(args),
        )
    protocol = Protocol(short_side, max(2048, short_side), window_size, stride, args.logit_scale, args.prob_thd, args.area_thd,
                        args.pamr_steps)
    if args.method not in method_sources():
        return load_plugin(args.method)(vocabulary=vocabulary, protocol=protocol).to(args.device)
    kwargs = model_kwargs(args)
    if kwargs.pop("attention") != "proxy":
        raise ValueError(f"--attention is a ProxyCLIP option; --method {args.method} has none")
    if not method_spec(args.method).uses_vfm:
        kwargs.pop("vfm"), kwargs.pop("vfm_weights")
    return proxyclip_pl.build_segmenter(args.method, vocabulary, protocol, device=args.device, **kwargs)


def class_vocabulary(classes: Sequence[str], background: str | None = None) -> list[list[str]]:
    """The vocabulary of ``--classes`` (and ``--background``, class 0): one entry per class, synonyms split on
    ``'; '``, the first name of an entry its display name. ``ValueError`` for an empty entry, a line break, an
    entry given twice or more than 256 classes (the label maps are uint8)."""
    from proxyclip_pl.vocabulary import parse_vocabulary  # here: open_clip, only once the arguments are valid

    lines = ([background] if background else []) + list(classes)
    if any(len(line.splitlines()) != 1 or not line.strip() for line in lines):
        raise ValueError("every --classes / --background entry needs at least one name (and no line break)")
    source = "class list (--background first, then --classes; one entry per line)"
    vocabulary = parse_vocabulary("\n".join(lines), source=source)
    if len(vocabulary) > 256:
        raise ValueError(f"{len(vocabulary)} classes: the label maps are uint8 images, at most 256 classes")
    return vocabulary


def display_names(vocabulary: Sequence[Sequence[str]]) -> list[str]:
    """Each class's display name: the first of its synonyms."""
    return [names[0] for names in vocabulary]


def predict_labels(model, image: np.ndarray, image_id: str | None = None) -> np.ndarray:
    """[H, W] uint8 class ids of ``image`` (uint8 RGB as :func:`datamodules.io.read_image` returns it); ``image_id``
    (the file stem) for methods that look up inputs by it (CorrCLIP's cached masks)."""
    if getattr(model, "uses_original_image", False):
        return model.predict(image, image_id=image_id).cpu().numpy().astype("uint8")
    return model.predict(image).cpu().numpy().astype("uint8")


def overlay_picture(image: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Image.Image:
    """The ``--out`` picture: the class colours blended over ``image`` at OVERLAY_ALPHA, the legend on the right."""
    return add_legend(overlay(image, labels, OVERLAY_ALPHA), labels, names, alpha=OVERLAY_ALPHA)


def label_picture(labels: np.ndarray) -> Image.Image:
    """The ``--labels-out`` picture: the class ids as a single-channel uint8 image."""
    return Image.fromarray(labels, mode="L")


def pixel_counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """Display name -> number of pixels of that class, in class order (every class, also those with none)."""
    return {names[c]: int((labels == c).sum()) for c in range(len(names))}


def write_results(image: np.ndarray, labels: np.ndarray, names: Sequence[str], out: str | os.PathLike,
                  labels_out: str | os.PathLike | None = None) -> None:
    """Save the overlay with its legend to ``out`` and, when given, the label map to ``labels_out``."""
    overlay_picture(image, labels, names).save(out)
    if labels_out:
        label_picture(labels).save(labels_out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    vocabulary = class_vocabulary(args.classes, args.background)
    if args.prob_thd > 0 and not args.background:
        raise ValueError("--prob-thd needs --background: low-confidence pixels go to the background class 0")
    image = read_image(args.image)
    # Before the model runs, so that a bad output path costs nothing.
    check_output(args.out, "--out")
    if args.labels_out:
        check_output(args.labels_out, "--labels-out")

    model = build_model(args, vocabulary)
    labels = predict_labels(model, image, Path(args.image).stem)
    names = display_names(vocabulary)
    write_results(image, labels, names, args.out, args.labels_out)
    counts = pixel_counts(labels, names)
    print(" ".join(f"{name}={n}" for name, n in counts.items() if n))
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-segment`` (and ``python scripts/segment.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
