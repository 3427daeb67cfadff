"""Bad weights and names: each fails fast with one clear message a user can act on.

Catalogue (README): missing pretrained weights offline -> WeightsNotFoundError naming what to download and
where; a truncated checkpoint file -> CorruptCheckpointError (a ValueError) naming the file; an unknown
CLIP / VFM name -> ValueError with examples. The CLIs print ValueError / FileNotFoundError in one line.
"""
from __future__ import annotations

import socket
import time

import pytest
import torch

from proxyclip_pl import WeightsNotFoundError, build_clip, build_vfm
from proxyclip_pl.cli import USER_ERRORS, run_cli
from proxyclip_pl.weights import CorruptCheckpointError
from tiny_models import TINY_VFMS, tiny_clip, tiny_vfm, write_tiny_clip_config


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every attempt to open a connection or resolve a host name."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """Offline, with an empty Hugging Face cache (huggingface_hub reads these constants at call time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _cli_output(call, capsys) -> str:
    """What the CLIs print for the error raised by ``call`` (run_cli: one line, exit code 2)."""
    with pytest.raises(SystemExit) as info:
        run_cli(lambda _argv: call())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


# ---------------------------------------------------------------- (i) missing weights offline
def test_missing_clip_tag_offline_says_what_to_download_and_where(no_network, empty_hub_cache, capsys):
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        build_clip("ViT-B-16-quickgelu", "openai")
    message = _one_line(info.value)
    assert "HF_HUB_OFFLINE=1" in message and str(empty_hub_cache) in message
    assert "`hf download timm/vit_base_patch16_clip_224.openai`" in message
    assert "local checkpoint file" in message
    with pytest.raises(WeightsNotFoundError, match=r"hf download timm/vit_base_patch16_clip_224\.openai --cache-dir"):
        build_clip("ViT-B-16-quickgelu", "openai", cache_dir=str(empty_hub_cache / "other"))
    assert _cli_output(lambda: build_clip("ViT-B-16-quickgelu", "openai"), capsys) == f"error: {message}"
    assert no_network == [] and time.monotonic() - start < 30


def test_missing_vfm_weights_offline_says_what_to_download_and_where(no_network, empty_hub_cache, capsys):
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        build_vfm("vit_small_patch8_224.dino", "pretrained")
    message = _one_line(info.value)
    assert "HF_HUB_OFFLINE=1" in message and str(empty_hub_cache) in message
    assert "`hf download timm/vit_small_patch8_224.dino`" in message
    assert _cli_output(lambda: build_vfm("vit_small_patch8_224.dino", "pretrained"), capsys) == f"error: {message}"
    assert no_network == [] and time.monotonic() - start < 30


# ---------------------------------------------------------------- (ii) truncated checkpoints
def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _assert_corrupt(call, path, capsys) -> str:
    with pytest.raises(CorruptCheckpointError) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, USER_ERRORS)
    message = _one_line(info.value)
    assert str(path) in message and "corrupt or truncated" in message
    assert _cli_output(call, capsys) == f"error: {message}"
    return message


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "torchscript", "empty"])
def test_truncated_clip_checkpoint_is_one_clear_error(tmp_path, capsys, fmt):
    model, _ = tiny_clip(tmp_path, seed=1)
    path = tmp_path / ("clip.safetensors" if fmt == "safetensors" else "clip.pt")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    elif fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), str(path))
    else:
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=fmt != "legacy")
    _truncate(path, 0.0 if fmt == "empty" else 0.5)
    cfg = str(write_tiny_clip_config(tmp_path))
    _assert_corrupt(lambda: build_clip(cfg, str(path)), path, capsys)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_vfm_checkpoint_is_one_clear_error(tmp_path, capsys, fmt):
    name, kwargs = TINY_VFMS["dino"]
    path = tmp_path / ("dino.safetensors" if fmt == "safetensors" else "dino.pth")
    state = tiny_vfm("dino").state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt != "legacy")
    _truncate(path)
    _assert_corrupt(lambda: build_vfm(name, str(path), **kwargs), path, capsys)


def test_intact_checkpoints_still_load(tmp_path):
    # The readability check must not reject good files of any format.
    name, kwargs = TINY_VFMS["dino"]
    state = tiny_vfm("dino", seed=4).state_dict()
    for fmt in ("zip", "legacy"):
        torch.save(state, tmp_path / f"{fmt}.pth", _use_new_zipfile_serialization=fmt == "zip")
        loaded, _ = build_vfm(name, str(tmp_path / f"{fmt}.pth"), **kwargs)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_checkpoint_that_does_not_fit_the_model_names_both(tmp_path):
    name, kwargs = TINY_VFMS["dino"]
    torch.save(tiny_vfm("dinov2").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"cannot load VFM checkpoint .*other\.pth into vit_small_patch8_224\.dino"):
        build_vfm(name, str(tmp_path / "other.pth"), **kwargs)


# ---------------------------------------------------------------- (iii) unknown names
def test_unknown_clip_name_lists_examples(capsys):
    with pytest.raises(ValueError) as info:
        build_clip("ViT-B-61", "random")
    message = _one_line(info.value)
    assert message.startswith("unknown CLIP model 'ViT-B-61'") and "did you mean" in message
    assert "ViT-B-16-quickgelu" in message and "open_clip.list_models()" in message
    assert _cli_output(lambda: build_clip("ViT-B-61", "random"), capsys) == f"error: {message}"


def test_unknown_vfm_name_and_tag_list_examples(capsys):
    with pytest.raises(ValueError) as info:
        build_vfm("vit_base_patch8_244.dino", "random")
    message = _one_line(info.value)
    assert message.startswith("unknown timm VFM 'vit_base_patch8_244.dino'")
    assert "did you mean 'vit_base_patch8_224.dino'" in message and "vit_base_patch14_reg4_dinov2.lvd142m" in message
    assert _cli_output(lambda: build_vfm("vit_base_patch8_244.dino", "random"), capsys) == f"error: {message}"
    with pytest.raises(ValueError, match=r"unknown pretrained tag in timm VFM 'vit_base_patch8_224\.dinov9'.*"
                                         r"vit_base_patch8_224\.dino\b"):
        build_vfm("vit_base_patch8_224.dinov9", "pretrained")


def test_torch_hub_vfm_name_points_to_the_timm_name():
    with pytest.raises(ValueError, match=r"unknown timm VFM 'dinov2_vitb14' \(a torch.hub name; in timm: "
                                         r"'vit_base_patch14_dinov2\.lvd142m'\)"):
        build_vfm("dinov2_vitb14", "random")
