"""proxyclip-demo (scripts/demo.py): the page and its ``/segment`` endpoint give what proxyclip-segment writes.

The server rows start ``scripts/demo.py`` in a subprocess on 127.0.0.1 (a free port) with tiny random towers,
call ``/segment`` with ``gradio_client`` and compare the files with ``proxyclip-segment``'s (same flags). The
server runs with every non-loopback connection and name lookup refused and reported (the demo is offline).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.io import read_image
from paths import ROOT
from proxyclip_pl.commands import demo as demo_command
from proxyclip_pl.commands import segment
from proxyclip_pl.demo import INSTALL_HINT, SegmentService, picker_methods, split_class_text
from tiny_models import write_tiny_sam_spec

SCRIPT = ROOT / "scripts" / "demo.py"
SHARED_IMAGES = ROOT.parent / "shared" / "testimages"
#: Seconds a server may take to import torch + gradio and build its model (two busy CPUs).
START_TIMEOUT_S = 240
#: The contract: after SIGINT / SIGTERM the process has exited (and the port is free) within this.
EXIT_LIMIT_S = 10

# Runs the demo's CLI with every connection or name lookup other than the loopback's refused and reported on
# stderr as "NETWORK ATTEMPT": the demo must work offline (no analytics, no version check, no share link).
OFFLINE_LAUNCHER = r"""
import socket, sys
LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", None)
def _report(what):
    sys.stderr.write(f"NETWORK ATTEMPT {what}\n"); sys.stderr.flush()
    raise OSError(f"network disabled in this test: {what}")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def _local(sock, address):
    return sock.family not in (socket.AF_INET, socket.AF_INET6) or address[0] in LOCAL
def connect(self, address):
    return _connect(self, address) if _local(self, address) else _report(address)
def connect_ex(self, address):
    return _connect_ex(self, address) if _local(self, address) else _report(address)
def getaddrinfo(host, *args, **kwargs):
    host_name = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo(host, *args, **kwargs) if host_name in LOCAL else _report(f"lookup {host_name}")
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
sys.argv = ["proxyclip-demo", *sys.argv[1:]]
from proxyclip_pl.commands.demo import cli
cli()
"""


# ------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` and a new server can bind it (with SO_REUSEADDR, as uvicorn and gradio do)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 10) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(url, timeout=timeout) as response:
        return response.read()


def server_env() -> dict[str, str]:
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the demo must switch analytics off itself
    return env


class DemoServer:
    """``proxyclip-demo FLAGS --port P`` in a subprocess (stdout and stderr to files, read on failure)."""

    def __init__(self, flags: list[str], folder: Path, offline: bool = True, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.out, self.err = folder / f"demo_{self.port}.out", folder / f"demo_{self.port}.err"
        launcher = [sys.executable, "-c", OFFLINE_LAUNCHER] if offline else [sys.executable, str(SCRIPT)]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*launcher, *flags, "--port", str(self.port)], stdout=out, stderr=err,
                                         cwd=ROOT, env={**server_env(), **env})

    def logs(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def wait_ready(self) -> "DemoServer":
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"proxyclip-demo exited with {self.proc.returncode} before serving\n{self.logs()}")
            try:
                http_get(self.url, timeout=5)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"proxyclip-demo did not serve {self.url} within {START_TIMEOUT_S} s\n{self.logs()}")

    def signal_and_wait(self, sig: signal.Signals, during: str = "") -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds until the exit). Fails the test past :data:`EXIT_LIMIT_S`."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_LIMIT_S} s after {sig.name}{during}\n{self.logs()}")
        return code, time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def model_flags(tmp_path_factory) -> list[str]:
    """Tiny random towers (the shipped configs), Trident's tiny SAM and CorrCLIP without masks (so that every
    built-in method is on the page)."""
    d = tmp_path_factory.mktemp("demo_models")
    return ["--clip", str(ROOT / "configs" / "tiny_clip.json"), "--clip-weights", "random",
            "--vfm", str(ROOT / "configs" / "tiny_dino.json"), "--vfm-weights", "random", "--seed", "0",
            "--sam", str(write_tiny_sam_spec(d)), "--sam-weights", "random", "--masks", "none"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A photo (the shared horses, else noise) and an EXIF-rotated JPEG of it (the demo must apply the rotation
    as proxyclip-segment does, not gradio's re-encoding)."""
    d = tmp_path_factory.mktemp("demo_images")
    horses = SHARED_IMAGES / "horses.png"
    if horses.exists():
        photo = read_image(horses)[::2, ::2]  # 240 x 160: quick on two CPUs
    else:
        photo = np.random.default_rng(0).integers(0, 256, (120, 180, 3), dtype=np.uint8)
    Image.fromarray(photo).save(d / "photo.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates the stored pixels 90 degrees clockwise
    Image.fromarray(photo).save(d / "rotated.jpg", quality=90, exif=exif.tobytes())
    (d / "notes.txt").write_text("not an image\n")
    return {"photo": d / "photo.png", "rotated": d / "rotated.jpg", "text": d / "notes.txt"}


def segment_outputs(folder: Path, image: Path, entries: list[str], method: str, flags: list[str]):
    """(overlay, label map) PIL images that ``proxyclip-segment IMAGE --classes ... --method M FLAGS`` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    out, labels = folder / "overlay.png", folder / "labels.png"
    argv = [str(image), "--classes", *entries, "--method", method, "--out", str(out), "--labels-out", str(labels)]
    assert segment.main(argv + flags) == 0
    return Image.open(out), Image.open(labels)


def assert_same_picture(got_path: str | Path, expected: Image.Image) -> None:
    got = Image.open(got_path)
    assert got.format == "PNG" and got.mode == expected.mode and got.size == expected.size
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def assert_shares_match(shares: dict, labels: np.ndarray, names: list[str]) -> None:
    assert list(shares) == names
    assert abs(sum(shares.values()) - 100.0) < 1e-3
    for c, name in enumerate(names):
        assert shares[name] == pytest.approx(100.0 * (labels == c).sum() / labels.size, abs=1e-4)


# ------------------------------------------------------------------------------------------ no server
def test_class_text_lines_commas_and_synonyms():
    assert split_class_text("cat; kitten\ndog, grass\n\n sky ;  clouds ,") == ["cat; kitten", "dog", "grass",
                                                                               "sky; clouds"]
    assert split_class_text("traffic light;stop light") == ["traffic light; stop light"]


@pytest.mark.parametrize("text, words", [
    ("", ["no class names"]), (" ,\n ; ", ["no class names"]), (None, ["no class names"]),
    ("cat; ; kitten", ["empty synonym", "cat; ; kitten"]),
    ("cat\ndog, Cat", ["'Cat'", "twice", "classes 1 and 3"]),
    ("cat; kitten\nkitten", ["'kitten'", "twice"]),
    ("traffic  light, Traffic light", ["twice"]),
])
def test_class_text_errors_name_the_problem(text, words):
    with pytest.raises(ValueError) as info:
        split_class_text(text)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_model_flags_are_passed_on_as_proxyclip_segment_flags():
    args = demo_command.parse_args(["--clip", "c.json", "--clip-weights", "random", "--vfm", "none", "--seed", "3",
                                    "--window-batch-size", "2", "--port", "8000"])
    assert demo_command.segment_flags(args) == ["--clip", "c.json", "--clip-weights", "random", "--vfm", "none",
                                                "--seed", "3", "--window-batch-size", "2"]
    defaults = demo_command.parse_args([])
    assert (defaults.host, defaults.port, defaults.method) == ("127.0.0.1", 7860, "proxyclip")
    assert demo_command.segment_flags(defaults) == []
    assert demo_command.segment_flags(demo_command.parse_args(["--device", "cpu"])) == ["--device", "cpu"]


def test_the_picker_offers_the_methods_that_run_on_an_upload(tmp_path):
    everything = picker_methods("proxyclip", masks="none")
    assert {"proxyclip", "maskclip", "clip", "sclip", "naclip", "clearclip", "trident", "corrclip"} <= set(everything)
    assert "corrclip" not in picker_methods("proxyclip")  # no masks: CorrCLIP cannot run
    assert "corrclip" in picker_methods("proxyclip", masks="sam2:weights/sam2_hiera_large.pt")
    assert "corrclip" not in picker_methods("proxyclip", masks=str(tmp_path))  # cached masks: not for uploads
    with pytest.raises(ValueError, match="--masks sam2"):
        picker_methods("corrclip", masks=str(tmp_path))
    assert picker_methods("proxyclip", attention="vfm") == ["proxyclip"]
    with pytest.raises(ValueError, match="--attention"):
        picker_methods("naclip", attention="vfm")
    with pytest.raises(ValueError, match="nosuchmethod"):
        picker_methods("nosuchmethod")


@pytest.mark.parametrize("method", ["proxyclip", "naclip"])
def test_a_request_writes_what_proxyclip_segment_writes(tmp_path, model_flags, images, method):
    # The service alone (no gradio): the same files, the shares of the label map, and the command it shows.
    service = SegmentService(model_flags, picker_methods(method, masks="none"), tmp_path / "work")
    try:
        result = service.segment(str(images["rotated"]), "horse;pony, grass\nsky", method, "rotated.jpg")
        expected_overlay, expected_labels = segment_outputs(tmp_path / "cli", images["rotated"],
                                                            ["horse; pony", "grass", "sky"], method, model_flags)
        assert_same_picture(result.overlay, expected_overlay)
        assert_same_picture(result.labels, expected_labels)
        labels = np.asarray(expected_labels)
        assert labels.shape == read_image(images["rotated"]).shape[:2]  # EXIF orientation applied
        assert_shares_match(result.shares, labels, ["horse", "grass", "sky"])
        assert result.command.startswith("proxyclip-segment rotated.jpg --classes 'horse; pony' grass sky "
                                         f"--method {method} --clip ")
    finally:
        service.close()
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_the_package_imports_without_gradio():
    code = ("import sys; sys.modules['gradio'] = None; import proxyclip_pl.demo, proxyclip_pl.commands.demo; "
            "assert 'gradio_client' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------ subprocess rows
@pytest.mark.slow
def test_without_gradio_the_cli_prints_one_line_naming_the_extra():
    code = ("import sys; sys.modules['gradio'] = None; sys.argv = ['proxyclip-demo', '--port', '7999']; "
            "from proxyclip_pl.commands.demo import cli; cli()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: proxyclip-demo needs gradio, which is not installed: {INSTALL_HINT}"]
    assert proc.stdout == ""


@pytest.mark.slow
def test_help_of_the_program_and_its_script(tmp_path):
    program = Path(sys.executable).parent / "proxyclip-demo"
    runs = [subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
            for argv in ([str(program), "--help"], [sys.executable, str(SCRIPT), "--help"])]
    assert runs[0].returncode == 0 and runs[0].stdout.startswith("usage: proxyclip-demo "), runs[0].stderr
    assert (runs[1].returncode, runs[1].stdout) == (0, runs[0].stdout)
    for flag in ("--method", "--clip", "--clip-weights", "--vfm", "--vfm-weights", "--seed", "--attention",
                 "--window-batch-size", "--device", "--host", "--port"):
        assert flag in runs[0].stdout


@pytest.mark.slow
def test_bad_flags_fail_in_one_line_before_serving(tmp_path, model_flags):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = {
        "ViT-Bogus-1": ["--clip", "ViT-Bogus-1", "--clip-weights", "random"],
        "--masks sam2": [*model_flags[:-2], "--method", "corrclip", "--masks", str(tmp_path)],
        "nosuchmodule": [*model_flags, "--method", "nosuchmodule:factory"],
        str(busy.getsockname()[1]): [*model_flags, "--port", str(busy.getsockname()[1])],
    }
    # Started together: each spends seconds importing torch and gradio.
    procs = {word: subprocess.Popen([sys.executable, str(SCRIPT), *flags], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT, env=server_env())
             for word, flags in cases.items()}
    try:
        for word, proc in procs.items():
            _, err = proc.communicate(timeout=START_TIMEOUT_S)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert proc.returncode == 2 and "Traceback" not in err, (word, err)
            assert len(errors) == 1 and word in errors[0], (word, err)
    finally:
        busy.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


# ------------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(tmp_path_factory, model_flags):
    running = DemoServer(model_flags, tmp_path_factory.mktemp("demo_server")).wait_ready()
    yield running
    running.stop()
    assert "NETWORK ATTEMPT" not in running.err.read_text(), running.logs()


@pytest.fixture(scope="module")
def client(server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(server.url, verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("image, method", [("photo", "proxyclip"), ("rotated", "proxyclip"), ("photo", "naclip"),
                                           ("photo", "trident"), ("photo", "corrclip")])
def test_segment_endpoint_gives_the_files_of_proxyclip_segment(tmp_path, client, model_flags, images, image, method):
    from gradio_client import handle_file

    overlay, shares, labels, command = client.predict(handle_file(str(images[image])), "horse; pony\ngrass, sky",
                                                      method, api_name="/segment")
    expected_overlay, expected_labels = segment_outputs(tmp_path, images[image], ["horse; pony", "grass", "sky"],
                                                        method, model_flags)
    assert_same_picture(overlay, expected_overlay)
    assert_same_picture(labels, expected_labels)
    assert Image.open(labels).mode == "L"
    assert_shares_match(shares, np.asarray(expected_labels), ["horse", "grass", "sky"])
    assert command.startswith(f"proxyclip-segment {images[image].name} --classes 'horse; pony' grass sky --method "
                              f"{method} ")


@pytest.mark.slow
def test_bad_inputs_are_errors_on_the_page_and_the_server_goes_on(client, images):
    from gradio_client import handle_file

    photo = handle_file(str(images["photo"]))
    cases = [
        ((None, "cat", "proxyclip"), ["image"]),
        ((handle_file(str(images["text"])), "cat", "proxyclip"), ["notes.txt", "not an image"]),
        ((photo, "  \n , ", "proxyclip"), ["class"]),
        ((photo, "cat\ndog, cat", "proxyclip"), ["'cat'", "twice"]),
        ((photo, "cat", "nosuchmethod"), ["nosuchmethod"]),
        ((photo, ", ".join(f"thing {i}" for i in range(257)), "proxyclip"), ["257 classes", "at most 256"]),
    ]
    for inputs, words in cases:
        with pytest.raises(Exception) as info:
            client.predict(*inputs, api_name="/segment")
        message = str(info.value)
        assert all(word in message for word in words), (words, message)
        assert "/tmp" not in message  # the server's copy of an upload is not shown
    overlay, shares, labels, _ = client.predict(photo, "horse, grass", "proxyclip", api_name="/segment")
    assert list(shares) == ["horse", "grass"] and Path(overlay).is_file() and Path(labels).is_file()


@pytest.mark.slow
def test_the_page_needs_nothing_from_outside(server):
    import re

    page = http_get(server.url).decode()
    assets = re.findall(r"<(?:script|link|img)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)", page)
    assert assets and all(not re.match(r"(https?:)?//", url) or url.startswith(server.url) for url in assets), assets
    config = json.loads(http_get(server.url + "config"))
    assert [s for s in config.get("stylesheets", []) if "//" in s] == []  # no web fonts from a CDN
    theme_css = http_get(server.url + "theme.css").decode()
    assert "@import" not in theme_css and "googleapis" not in theme_css
    names = [c.get("props", {}).get("label") for c in config["components"]]
    assert {"Image", "Class names", "Method"} <= set(names)
    picker = next(c for c in config["components"] if c.get("props", {}).get("label") == "Method")
    assert [choice[1] for choice in picker["props"]["choices"]][:1] == ["proxyclip"]


def browser() -> tuple[str, str] | None:
    """("playwright", "") when Playwright and its Chromium are installed, else ("binary", path) of a Chrome,
    Chromium or Firefox on PATH, else None."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            if Path(p.chromium.executable_path).exists():
                return "playwright", ""
    except Exception:  # not installed, or no browser downloaded
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "firefox"):
        path = shutil.which(name)
        if path:
            return "binary", path
    return None


@pytest.mark.slow
def test_a_headless_browser_renders_the_page(server, tmp_path):
    found = browser()
    if found is None:
        pytest.skip("no headless browser installed (Playwright with Chromium, chromium, chrome or firefox)")
    kind, path = found
    if kind == "playwright":
        from playwright.sync_api import sync_playwright

        outside: list[str] = []
        with sync_playwright() as p:
            chromium = p.chromium.launch()
            page = chromium.new_page()
            page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:")) else
                    outside.append(r.url))
            page.goto(server.url)
            page.get_by_text("Class names").first.wait_for(timeout=60_000)
            page.get_by_role("button", name="Segment").wait_for(timeout=60_000)
            chromium.close()
        assert [url for url in outside if "fonts." not in url] == []  # web fonts may fall back
    elif Path(path).name == "firefox":
        shot = tmp_path / "page.png"
        subprocess.run([path, "--headless", "--window-size=1280,900", "--screenshot", str(shot), server.url],
                       capture_output=True, timeout=120)
        assert shot.is_file() and len(np.unique(np.asarray(Image.open(shot).convert("L")))) > 2  # not blank
    else:
        # The networking flags keep Chromium from dialling out (refused here, and slow to give up on).
        quiet = ["--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
        proc = subprocess.run([path, "--headless=new", "--no-sandbox", "--disable-gpu", *quiet,
                               "--virtual-time-budget=30000", "--dump-dom", server.url],
                              capture_output=True, text=True, timeout=180)
        assert "Class names" in proc.stdout and "Segment" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_server_within_10_s_and_frees_the_port(tmp_path, model_flags, images, sig):
    running = DemoServer(model_flags, tmp_path).wait_ready()
    try:
        http_get(running.url + "config")  # a connection was served
        code, took = running.signal_and_wait(sig)
    finally:
        running.stop()
    assert code == 0, running.logs()
    assert took < EXIT_LIMIT_S and port_is_free(running.port), (took, running.logs())
    assert "Traceback" not in running.err.read_text() and "NETWORK ATTEMPT" not in running.err.read_text()


SLOW_PLUGIN = """
import pathlib, time
import torch

class Slow:  # a plug-in method whose segmentation takes a minute
    def __init__(self, vocabulary):
        self.num_classes = len(vocabulary)

    def to(self, device):
        return self

    def predict(self, image):
        pathlib.Path(__file__).with_name("started").touch()
        time.sleep(60)
        return torch.zeros(image.shape[:2], dtype=torch.long)

def factory(vocabulary, protocol):
    return Slow(vocabulary)
"""


@pytest.mark.slow
def test_a_signal_stops_the_server_within_10_s_while_a_request_runs(tmp_path, images):
    from gradio_client import Client, handle_file

    (tmp_path / "slow_method.py").write_text(SLOW_PLUGIN)
    running = DemoServer(["--method", "slow_method:factory"], tmp_path, PYTHONPATH=str(tmp_path)).wait_ready()
    try:
        client = Client(running.url, verbose=False)
        client.submit(handle_file(str(images["photo"])), "a, b", "slow_method:factory", api_name="/segment")
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline, running.logs()
            time.sleep(0.2)
        code, took = running.signal_and_wait(signal.SIGTERM, " during a request")
    finally:
        running.stop()
    assert code == 0 and took < EXIT_LIMIT_S and port_is_free(running.port), (code, took, running.logs())
    assert "NETWORK ATTEMPT" not in running.err.read_text()
