"""The web demo behind ``proxyclip-demo``: upload an image, type class names, pick a method, see the segmentation.

Every request runs :mod:`proxyclip_pl.commands.segment`'s code path: its argument parser (with the demo's model
flags), its class parsing, its model builder, its prediction and its writers of the overlay + legend PNG and the
label map. So the page, the API endpoint ``/segment`` and ``proxyclip-segment IMAGE --classes ... --method M
<same model flags> --out OUT --labels-out LABELS`` give identical files.

gradio is imported inside the functions (:func:`import_gradio`): the package imports and works without the
``demo`` extra. Nothing here needs the network: analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` before
gradio is imported), there is no share link, and the page uses system fonts (no web-font request).
"""
from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

#: What to install when gradio is missing (the one error line of ``proxyclip-demo``).
INSTALL_HINT = "pip install 'proxyclip_pl[demo]'"
#: The class list of the model built at start-up (it checks the model flags before the page is served).
WARM_UP_CLASSES = ("object",)
#: Request folders (overlay + label map) kept on disk; older ones are deleted (gradio serves its own copies).
KEEP_REQUESTS = 16
#: Seconds after SIGINT/SIGTERM before the process ends even if a request still runs (the contract: 10 s).
EXIT_DEADLINE_S = 8.0
#: System font stacks: the default theme's Google web fonts would be fetched from a CDN.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
                "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")

CLASS_HELP = ("One class per line or comma-separated; synonyms of a class separated by ';' (its first name is "
              "shown), e.g.\ncat; kitten\ndog\ngrass, sky")


class MissingDemoExtra(ImportError):
    """gradio is not installed (or cannot be imported): the message says to install the ``demo`` extra."""


def import_gradio() -> Any:
    """``import gradio`` with analytics off; :class:`MissingDemoExtra` (one line) when it cannot be imported."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError as exc:
        why = "is not installed" if exc.name == "gradio" else f"cannot be imported ({' '.join(str(exc).split())})"
        raise MissingDemoExtra(f"proxyclip-demo needs gradio, which {why}: {INSTALL_HINT}") from None
    return gradio


# ------------------------------------------------------------------------------------------ class names
def split_class_text(text: str | None) -> list[str]:
    """The page's class names -> ``proxyclip-segment --classes`` entries, in the order typed.

    One entry per line or per comma; an entry's synonyms are separated by ``;`` (spaces around it do not matter:
    ``cat;kitten`` is ``cat; kitten``). Blank lines and empty comma parts are skipped. ``ValueError`` (naming
    the problem) for no class at all, an empty synonym, or a name given to two classes (compared ignoring case
    and repeated spaces, as CLIP's tokenizer does).
    """
    entries: list[str] = []
    for line in (text or "").splitlines():
        for part in line.split(","):
            names = [name.strip() for name in part.split(";")]
            if not any(names):
                continue
            if not all(names):
                raise ValueError(f"class entry {part.strip()!r} has an empty synonym; separate the names of one "
                                 "class with ';' (e.g. 'cat; kitten')")
            entries.append("; ".join(names))
    if not entries:
        raise ValueError("no class names: type at least one class, one per line or comma-separated")
    first: dict[str, tuple[int, str]] = {}
    for number, entry in enumerate(entries, start=1):
        for name in entry.split("; "):
            key = " ".join(name.lower().split())
            if key in first and first[key][0] != number:
                raise ValueError(f"class name {name!r} is given twice (classes {first[key][0]} and {number}: "
                                 f"{entries[first[key][0] - 1]!r} and {entry!r}); give each class its own names")
            first.setdefault(key, (number, name))
    return entries


# ------------------------------------------------------------------------------------------ the segmenter
@dataclass
class DemoResult:
    """One request's results: the files written by ``proxyclip-segment``'s writers and what the page shows."""

    overlay: Path
    labels: Path
    shares: dict[str, float]
    command: str


def _file_stem(name: str | None) -> str:
    stem = Path(name or "image").stem
    return re.sub(r"[^\w.-]+", "_", stem)[:64] or "image"


class SegmentService:
    """Runs ``proxyclip-segment``'s code path for the demo's requests, one at a time.

    Args:
        model_argv: the model flags given to ``proxyclip-demo``, as ``proxyclip-segment`` flags (``--clip X ...
            --device D``); every request is parsed by ``proxyclip-segment``'s own parser with them.
        methods: the methods the picker offers (a request naming another one is refused).
        workdir: where the request folders go (removed by :meth:`close`).

    The last model built is kept (key: method and class list), so a new image with the same classes and method
    costs no rebuild; another class list or method builds the model again, as ``proxyclip-segment`` does.
    """

    def __init__(self, model_argv: Sequence[str], methods: Sequence[str], workdir: str | os.PathLike | None = None):
        self.model_argv = list(model_argv)
        self.methods = list(methods)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="proxyclip-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._model_key: tuple | None = None
        self._model: Any = None
        self._requests: list[Path] = []

    def segment_args(self, image: str, entries: Sequence[str], method: str, out: Path, labels_out: Path):
        """``proxyclip-segment``'s parsed arguments for one request (its parser, its defaults)."""
        from .commands import segment

        argv = [image, "--classes", "placeholder", "--method", method, "--out", str(out),
                "--labels-out", str(labels_out), *self.model_argv]
        try:
            args = segment.parse_args(argv)
        except SystemExit:  # argparse already printed why on stderr; the flags were checked at start-up
            raise ValueError(f"proxyclip-segment refuses the arguments {shlex.join(argv)}") from None
        args.classes = list(entries)  # not through argparse: a class name may start with '-'
        return args

    def command(self, image_name: str, entries: Sequence[str], method: str) -> str:
        """The ``proxyclip-segment`` command that writes the same overlay and label map."""
        return shlex.join(["proxyclip-segment", image_name, "--classes", *entries, "--method", method,
                           *self.model_argv, "--out", "overlay.png", "--labels-out", "labels.png"])

    def model(self, args, vocabulary):
        """The segmenter of ``args`` and ``vocabulary`` (``proxyclip-segment``'s builder; the last one is kept)."""
        from .commands import segment

        key = (args.method, tuple(tuple(names) for names in vocabulary))
        if key != self._model_key:
            self._model_key, self._model = None, None  # free the previous model before building the next
            self._model = segment.build_model(args, vocabulary)
            self._model_key = key
        return self._model

    def warm_up(self, method: str) -> None:
        """Build ``method``'s model once (a one-word class list) so that bad model flags fail before serving."""
        from .commands import segment

        with self._lock:
            args = self.segment_args("warm-up.png", WARM_UP_CLASSES, method, self.workdir / "o.png",
                                     self.workdir / "l.png")
            self.model(args, segment.class_vocabulary(args.classes))

    def segment(self, image: str | None, class_text: str | None, method: str | None,
                image_name: str | None = None) -> DemoResult:
        """Segment the image file ``image`` with the classes of ``class_text`` (:func:`split_class_text`) and
        ``method``; ``image_name``: the uploaded file's own name (messages, file names). ``ValueError`` /
        ``FileNotFoundError`` with a message for the user."""
        from datamodules.io import DataFileError, decoder_reason, read_image

        from .commands import segment

        if not image:
            raise ValueError("no image: upload an image first")
        name = image_name or Path(image).name
        entries = split_class_text(class_text)
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(self.methods)}")
        try:
            picture = read_image(image)  # as proxyclip-segment reads it: EXIF orientation applied, RGB
        except DataFileError as exc:
            reason = decoder_reason(exc).replace(str(image), name)  # the server's copy of the file: its name
            raise ValueError(f"the upload {name!r} is not an image Pillow can read ({reason}); upload a PNG, "
                             "JPEG, ... image") from None
        with self._lock:
            folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))
            self._forget_old_requests(folder)
            stem = _file_stem(name)
            out, labels_out = folder / f"{stem}_overlay.png", folder / f"{stem}_labels.png"
            args = self.segment_args(image, entries, method, out, labels_out)
            vocabulary = segment.class_vocabulary(args.classes, args.background)
            labels = segment.predict_labels(self.model(args, vocabulary), picture)
            names = segment.display_names(vocabulary)
            segment.write_results(picture, labels, names, out, labels_out)
        counts = segment.pixel_counts(labels, names)
        shares = {class_name: round(100.0 * n / labels.size, 4) for class_name, n in counts.items()}
        return DemoResult(out, labels_out, shares, self.command(name, entries, method))

    def _forget_old_requests(self, folder: Path) -> None:
        self._requests.append(folder)
        while len(self._requests) > KEEP_REQUESTS:
            shutil.rmtree(self._requests.pop(0), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def picker_methods(method: str, masks: str | None = None, attention: str = "proxy") -> list[str]:
    """The methods the page offers: every registered method that segments an uploaded image on its own.

    CorrCLIP (any method with the ``masks`` tower) needs each image's region masks: it is offered with
    ``--masks sam2`` (computed online) or ``--masks none`` (no masks, an ablation), not with a folder of cached
    masks (they are looked up by a benchmark image's id, which an upload does not have). With ``--attention``
    other than ``proxy`` only ProxyCLIP is offered (the other methods have no such option). ``method`` (the one
    picked when the page opens) must be among them or be a ``module:factory`` plug-in, which is added; otherwise
    ``ValueError`` says why.
    """
    from .cli import load_plugin
    from .registry import method_sources, method_spec

    from .region_masks import sam2_checkpoint

    online_masks = masks is not None and (masks.lower() == "none" or sam2_checkpoint(masks) is not None)
    offered = []
    for name in method_sources():
        if attention != "proxy" and name != "proxyclip":
            continue
        if name != method:
            try:
                spec = method_spec(name)
            except (ValueError, ImportError) as exc:  # a broken installed method: the others still work
                print(f"warning: method {name} is left out of the picker: {' '.join(str(exc).split())}",
                      file=sys.stderr)
                continue
        else:
            spec = method_spec(name)
        if "masks" in spec.towers and not online_masks:
            continue
        offered.append(name)
    if method not in offered:
        if method in method_sources():
            if attention != "proxy":
                raise ValueError(f"--attention is a ProxyCLIP option; --method {method} has none")
            raise ValueError(f"--method {method} needs each image's region masks; an uploaded image has no cached "
                             "masks: use --masks sam2 (online SAM2, extra [sam2]) or --masks none (no masks, an "
                             "ablation)")
        load_plugin(method)  # ValueError naming the module or factory
        offered.insert(0, method)
    return offered


# ------------------------------------------------------------------------------------------ the page
def segment_handler(service: SegmentService) -> Callable[[Any, Any, Any], tuple]:
    """The ``/segment`` function: raw gradio payloads in (``preprocess=False``: the uploaded file is read by
    ``proxyclip-segment``'s reader, not re-encoded by gradio), (overlay PNG, shares, label-map PNG, command) out.
    A user error becomes ``gr.Error`` (shown on the page and returned to API clients); the server goes on."""
    from .cli import USER_ERRORS

    gr = import_gradio()

    def segment(image: Any, class_text: Any, method: Any) -> tuple:
        path, name = image, None
        if isinstance(image, dict):  # gradio's FileData
            path, name = image.get("path"), image.get("orig_name")
        try:
            result = service.segment(path, class_text if isinstance(class_text, str) else None,
                                     method if isinstance(method, str) else None, name)
        except USER_ERRORS as exc:
            # gr.Error's message is HTML on the page: the user's class names are escaped
            raise gr.Error(html.escape(" ".join(str(exc).split()), quote=False), print_exception=False) from None
        return str(result.overlay), result.shares, str(result.labels), result.command

    return segment


def build_app(service: SegmentService, method: str) -> Any:
    """The gradio Blocks page; its endpoint ``/segment`` takes (image file, class names, method) and returns
    (overlay PNG, pixel share JSON ``{name: percent}``, label-map PNG, the equivalent proxyclip-segment command)."""
    gr = import_gradio()
    with gr.Blocks(title="proxyclip_pl demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("## Open-vocabulary segmentation\nUpload an image, name the classes, pick a method. Every "
                    "pixel goes to one of the classes (no implicit background: name one, e.g. *background; sky*).")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"])
                classes = gr.Textbox(label="Class names", lines=4, placeholder=CLASS_HELP, info=(
                    "one per line or comma-separated; synonyms separated by ';'"))
                picker = gr.Dropdown(choices=service.methods, value=method, label="Method")
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                overlay = gr.Image(label="Overlay with legend", type="filepath", format="png", interactive=False)
                shares = gr.JSON(label="Pixel share per class (%)")
                labels = gr.File(label="Label map (single-channel uint8 PNG, class ids 0..N-1 in the order typed)")
                command = gr.Textbox(label="The same result with proxyclip-segment", interactive=False)
        button.click(segment_handler(service), inputs=[image, classes, picker],
                     outputs=[overlay, shares, labels, command], api_name="segment", preprocess=False)
    return app


def theme() -> Any:
    """gradio's default theme with system fonts (no web-font download)."""
    gr = import_gradio()
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def serve(app: Any, host: str, port: int, allowed_paths: Sequence[str] = (),
          ready: Callable[[str], None] | None = None) -> int:
    """Serve ``app`` on ``host:port`` until SIGINT (Ctrl-C) or SIGTERM, then close the server (freeing the port)
    and return the signal number. If closing takes longer than :data:`EXIT_DEADLINE_S` (a request still
    running), the process ends anyway. ``ValueError`` (one line) when the port cannot be taken."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                       show_error=True, quiet=True, ssr_mode=False, mcp_server=False, enable_monitoring=False,
                       allowed_paths=list(allowed_paths), theme=theme())
        except OSError as exc:
            raise ValueError(f"cannot serve on {host}:{port} ({' '.join(str(exc).split())}); is another server "
                          "using the port? Choose another with --port") from None
        if ready is not None:  # every interface: the address to open on this machine
            ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}/")
        while not stop.wait(0.5) and getattr(app, "is_running", True):
            pass
        deadline = threading.Timer(EXIT_DEADLINE_S, os._exit, (0,))
        deadline.daemon = True
        deadline.start()
        app.close(verbose=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else 0
