"""Command-line plumbing shared by the commands (:mod:`proxyclip_pl.commands`)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Sequence

from .defaults import DEFAULT_CLIP, DEFAULT_SAM, DEFAULT_VFM, PRETRAINED


#: Launchers whose results are checked identical by the tests; "auto" is "ddp" for several devices.
STRATEGIES = ("auto", "ddp", "ddp_spawn")


def check_strategy(strategy: str) -> None:
    """``--strategy``: one of :data:`STRATEGIES` (a one-line error otherwise)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r} is not supported; use one of {', '.join(STRATEGIES)}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags the model commands share (defaults: the paper's ViT-B/16 OpenAI + DINO ViT-B/8)."""
    g = parser.add_argument_group("model")
    g.add_argument("--clip", default=DEFAULT_CLIP, help="open_clip model name or model-config JSON (default: %(default)s)")
    g.add_argument("--clip-weights", default=None, help="pretrained tag, checkpoint path or 'random' (default: the preset's tag, 'openai')")
    g.add_argument("--vfm", default=None, help="timm model name, sd-2-1 / sd-2-1-base (Stable Diffusion, extra [sd]) or "
                   f"VFM spec JSON; 'none' for the no-VFM baselines (default: the method's, {DEFAULT_VFM} for ProxyCLIP)")
    g.add_argument("--vfm-weights", default=PRETRAINED, help="'pretrained', checkpoint path (SD: a diffusers folder) or "
                   "'random' (default: %(default)s)")
    g.add_argument("--sam", default=None, help=f"Trident's SAM image encoder: timm samvit name or spec JSON (default: {DEFAULT_SAM})")
    g.add_argument("--sam-weights", default=PRETRAINED, help="'pretrained', checkpoint path or 'random' (default: %(default)s)")
    g.add_argument("--masks", default=None, help="CorrCLIP's region masks: the folder of the extracted region_masks.zip "
                   "(Hugging Face dataset dk258/CorrCLIP; one sub-folder per benchmark, <image stem>.npz), a folder of "
                   "<stem>.npz for a dataset card, 'sam2' or 'sam2:CHECKPOINT' (online SAM2 Hiera-L, extra [sam2]; default "
                   "checkpoint ./sam2_hiera_large.pt) or 'none' (no masks: an ablation)")
    g.add_argument("--attention", default="proxy", choices=["proxy", "vfm", "maskclip", "clip"], help="proxy attention, the VFM's raw attention, or a no-VFM baseline")
    g.add_argument("--seed", type=int, default=0, help="seed of 'random' weights and of SD's noise draws (default: %(default)s)")
    g.add_argument("--window-batch-size", type=int, default=None, help="windows per encoder call (default: 8 on GPU, 1 on CPU)")


def resolve_default_towers(args: argparse.Namespace) -> None:
    """Fill the tower flags left unset (``--vfm``, ``--sam``, ``--clip-weights``) with the method's own towers
    (:meth:`proxyclip_pl.registry.MethodSpec.fill_towers`), else the package defaults. Imports the method's
    module (torch): call it after the torch-free checks."""
    from .registry import method_sources, method_spec

    method = getattr(args, "method", "proxyclip")
    given = {flag: getattr(args, flag) for flag in ("clip", "clip_weights", "vfm", "sam")
             if getattr(args, flag, None) is not None}
    filled = method_spec(method).fill_towers(given) if method in method_sources() else given
    for flag, default in (("vfm", DEFAULT_VFM), ("sam", DEFAULT_SAM), ("clip_weights", None)):
        setattr(args, flag, filled.get(flag, default))


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`proxyclip_pl.build_proxyclip` from the shared flags."""
    resolve_default_towers(args)
    return dict(
        clip=args.clip,
        clip_weights=args.clip_weights,
        vfm=None if str(args.vfm).lower() == "none" else args.vfm,
        vfm_weights=args.vfm_weights,
        sam=args.sam,
        sam_weights=args.sam_weights,
        masks=args.masks,
        seed=args.seed,
        attention=args.attention,
        window_batch_size=args.window_batch_size,
    )


def load_plugin(spec: str) -> Callable[..., Any]:
    """``module:factory`` -> the factory (the current directory is importable, as for ``python -m``)."""
    from .registry import method_sources

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--method {spec!r}: expected one of {', '.join(method_sources())} or module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--method {spec}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--method {spec}: module {module_name!r} has no callable {attr!r}")
    return factory


#: Errors a user can fix (bad name, missing file, ...): reported in one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def error_lines(exc: BaseException) -> list[str]:
    """The lines ``run_cli`` prints for a user error, the first prefixed with ``error: ``.

    A message is joined into one line (libraries wrap their text at arbitrary places), unless the exception
    marks it as a deliberate report with ``multiline = True`` (e.g. the datamodules' report of a dataset's
    problems, one kind per line): then its lines are kept as they are.
    """
    text = str(exc)
    if getattr(exc, "multiline", False):
        first, *rest = text.strip().splitlines() or [""]
        return [f"error: {first}", *(line.rstrip() for line in rest)]
    return [f"error: {' '.join(text.split())}"]


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main`` and turn user errors into one line on stderr (a deliberate multi-line report: its lines,
    see :func:`error_lines`) and exit code 2."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        print("\n".join(error_lines(exc)), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
