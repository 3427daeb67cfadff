"""A web page (and API) that segments uploaded images: ``proxyclip-segment`` in a browser.

    proxyclip-demo                                     # ProxyCLIP (ViT-B/16 + DINO ViT-B/8) on http://127.0.0.1:7860
    proxyclip-demo --method naclip --port 8000
    proxyclip-demo --clip configs/tiny_clip.json --clip-weights random \\
        --vfm configs/tiny_dino.json --vfm-weights random       # seconds to start, no download

``python scripts/demo.py ...`` runs the same. Needs the extra ``demo`` (``pip install 'proxyclip_pl[demo]'``).

The page: an image upload, the class names (one per line or comma-separated; synonyms of a class separated by
';', its first name shown), a method picker (--method is picked when it opens) and a button. It shows the overlay
with its legend, each class's share of the pixels and the label map to download. The same as a call of the API
endpoint ``/segment`` (``gradio_client``: inputs image file, class names, method; outputs overlay PNG, pixel
share JSON {name: percent}, label-map PNG, the equivalent proxyclip-segment command).

Every request runs proxyclip-segment's code path with the model flags below: the overlay and the label map are
the files ``proxyclip-segment IMAGE --classes C1 ... Cn --method M <model flags> --out OUT --labels-out LABELS``
writes (classes 0..N-1 in the order typed, no implicit background, the method's default windows and thresholds).
The picker offers the registered methods that run on an uploaded image alone: CorrCLIP only with --masks sam2 or
--masks none (cached masks belong to benchmark images).

It needs no network with local or 'random' weights (no analytics, no share link, no web font). It serves until
Ctrl-C or SIGTERM and then exits within 10 s, freeing the port. Serve on --host 0.0.0.0 only on a network you
trust: the page has no login.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from proxyclip_pl.cli import add_model_arguments, run_cli


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxyclip-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="proxyclip",
                   help="the method picked when the page opens: a registered method (proxyclip-test --list) or "
                   "module:factory (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s; 0.0.0.0: every "
                   "interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available, else cpu)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port}: expected a port number in 1..65535")
    return args


def segment_flags(args: argparse.Namespace) -> list[str]:
    """The model flags given to proxyclip-demo (those not at their default) as proxyclip-segment flags."""
    probe = argparse.ArgumentParser(add_help=False)
    add_model_arguments(probe)
    argv: list[str] = []
    for dest, default in vars(probe.parse_args([])).items():
        value = getattr(args, dest)
        if value is not None and value != default:
            argv += ["--" + dest.replace("_", "-"), str(value)]
    if args.device is not None:
        argv += ["--device", args.device]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from proxyclip_pl.console import phase
    from proxyclip_pl.demo import MissingDemoExtra, SegmentService, build_app, import_gradio, picker_methods, serve

    try:
        import_gradio()  # before torch: a missing extra is reported at once
    except MissingDemoExtra as exc:
        raise ValueError(str(exc)) from None
    methods = picker_methods(args.method, args.masks, args.attention)
    service = SegmentService(segment_flags(args), methods)
    try:
        with phase(f"loading the model of {args.method}", "model ready"):
            service.warm_up(args.method)
        app = build_app(service, args.method)

        def ready(url: str) -> None:
            print(f"proxyclip-demo: serving {url} (methods: {', '.join(methods)}); Ctrl-C stops it", flush=True)

        serve(app, args.host, args.port, allowed_paths=[str(service.workdir)], ready=ready)
    finally:
        service.close()
    print("proxyclip-demo: stopped", file=sys.stderr, flush=True)
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-demo`` (and ``python scripts/demo.py``)."""
    try:
        run_cli(main)
    except KeyboardInterrupt:  # Ctrl-C before the page is served (while the model loads)
        print("proxyclip-demo: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
