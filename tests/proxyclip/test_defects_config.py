"""Model settings that come from the model's own configuration, not from its name.

* VFM kind (positional-embedding rule): DINOv2 *without* registers follows the DINO rule (offset 0.1, no
  antialias; see docs/method_notes.md, 'VFM features'); only register models use the size rule with antialias.
* QuickGELU: from open_clip's pretrained config of a tag, or from the provenance of a local checkpoint
  (OpenAI TorchScript archive / OpenAI state-dict layout); a warning where the provenance is unknown.
"""
from __future__ import annotations

import json
import warnings

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from proxyclip_pl import VFM_MODELS, build_clip, build_vfm
from proxyclip_pl.towers import QuickGeluWarning, clip_needs_quick_gelu, vfm_kind_for, vfm_kind_of
from proxyclip_pl.vfm import IMAGENET_MEAN, IMAGENET_STD, check_vfm, vfm_features
from tiny_models import TINY_CLIP_CONFIG, TINY_VIT

NO_REGISTER_DINOV2 = (
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_large_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2",  # default tag
)
REGISTER_DINOV2 = ("vit_base_patch14_reg4_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m")


# ---------------------------------------------------------------- defect 4: VFM kind
def test_no_register_dinov2_gets_the_dino_rule_and_register_models_keep_dinov2():
    for name in NO_REGISTER_DINOV2:
        assert vfm_kind_for(name) == "dino", name
    for name in REGISTER_DINOV2:
        assert vfm_kind_for(name) == "dinov2", name


def test_presets_agree_with_the_kind_read_from_the_model_config():
    for name, preset in VFM_MODELS.items():
        with torch.device("meta"):  # architecture only: no memory, no weights
            model = timm.create_model(preset.model_name, pretrained=False)
        assert vfm_kind_of(model) == preset.kind, name
    assert {n for n in NO_REGISTER_DINOV2 if n.endswith(".lvd142m")} <= set(VFM_MODELS)


def _dino_rule_reference(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """DINOv2 hub ``interpolate_pos_encoding`` of the no-register models, written out independently:
    bicubic, scale factor (g + 0.1) / s, align_corners=False, no antialias; then blocks and final norm."""
    mean, std = (torch.tensor(v, dtype=windows.dtype).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    x = model.patch_embed.proj((windows - mean) / std)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = model.pos_embed[0].float()  # the hub model interpolates in fp32, then casts back
    side = int((pos.shape[0] - 1) ** 0.5)
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                         align_corners=False, antialias=False)
    pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)]).to(x.dtype)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
    x = model.norm(model.blocks(x))[:, 1:]
    return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def test_no_register_dinov2_features_follow_the_dino_rule():
    model, kind = build_vfm("vit_small_patch14_dinov2.lvd142m", "random", seed=0, **TINY_VIT)
    assert kind == "dino"
    check_vfm(model, kind)
    model = model.double()
    windows = torch.rand(2, 3, 224, 308, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = vfm_features(model, kind, windows, 224)  # trained grid 37x37 -> 16x22
    want = _dino_rule_reference(model, windows)
    assert got.shape == (2, 48, 16, 22)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # The register rule (size-based, antialias) gives different features: the kind matters here.
    assert (vfm_features(model, "dinov2", windows, 224) - want).abs().max() > 1e-3


def test_register_dinov2_keeps_the_size_rule_with_antialias():
    model, kind = build_vfm("vit_base_patch14_reg4_dinov2.lvd142m", "random", seed=0, **TINY_VIT)
    assert kind == "dinov2" and model.num_reg_tokens == 4


def test_spec_kind_overrides_the_config(tmp_path):
    # A JSON spec's explicit kind wins (e.g. to try another rule on purpose).
    spec = tmp_path / "dinov2_noreg.json"
    name = "vit_small_patch14_dinov2.lvd142m"
    spec.write_text(json.dumps({"model_name": name, "kind": "dinov2", "kwargs": TINY_VIT}))
    assert build_vfm(str(spec), "random")[1] == "dinov2"
    spec.write_text(json.dumps({"model_name": name, "kwargs": TINY_VIT}))
    assert build_vfm(str(spec), "random")[1] == "dino"


# ---------------------------------------------------------------- defect 5: QuickGELU
@pytest.mark.parametrize(
    "name,tag,expected",
    [
        ("ViT-B-16", "openai", True),
        ("ViT-B-16", "metaclip_400m", True),
        ("ViT-B-16", "dfn2b", True),
        ("ViT-H-14", "metaclip_fullcc", True),
        ("ViT-B-16", "laion2b_s34b_b88k", False),
        ("ViT-H-14", "laion2b_s32b_b79k", False),
        ("ViT-B-16-quickgelu", "openai", True),
    ],
)
def test_quick_gelu_of_a_tag_comes_from_open_clip_pretrained_cfg(name, tag, expected):
    assert clip_needs_quick_gelu(name, tag) is expected
    assert bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False)) is expected


@pytest.mark.parametrize("name,tag,expected", [("ViT-B-16", "openai", True), ("ViT-B-16", "metaclip_400m", True),
                                               ("ViT-B-16", "laion2b_s34b_b88k", False)])
def test_build_clip_passes_the_tags_quick_gelu_to_open_clip(monkeypatch, name, tag, expected):
    seen = {}

    def fake_create_model(model_name, **kwargs):
        seen.update(kwargs, model_name=model_name)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    build_clip(name, tag)
    assert seen["model_name"] == name and seen["pretrained"] == tag
    assert bool(seen.get("force_quick_gelu")) is expected


def _gelu_config(folder) -> str:
    """The tiny CLIP config with plain GELU (like the ``ViT-B-16`` name)."""
    path = folder / "tiny_gelu.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "quick_gelu": False}))
    return str(path)


def _activations(model: torch.nn.Module) -> set[type]:
    return {type(b.mlp.gelu) for tower in (model.visual.transformer, model.transformer) for b in tower.resblocks}


def _openai_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """OpenAI's checkpoint layout: open_clip's CLIP keys plus three scalar entries."""
    sd = dict(model.state_dict())
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return sd


def test_local_openai_state_dict_gets_quick_gelu(tmp_path):
    cfg = _gelu_config(tmp_path)
    source, _ = build_clip(cfg, "random", seed=5)
    assert _activations(source) == {torch.nn.GELU}
    torch.save(_openai_state_dict(source), tmp_path / "ViT-B-16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuickGeluWarning)  # provenance is known: no warning
        model, _ = build_clip(cfg, str(tmp_path / "ViT-B-16.pt"))
    assert _activations(model) == {QuickGELU}
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in source.state_dict().items())


def test_local_openai_torchscript_archive_gets_quick_gelu(tmp_path):
    cfg = _gelu_config(tmp_path)
    source, _ = build_clip(cfg, "random", seed=6)
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(source, key):
            delattr(source, key)  # open_clip keeps these as plain ints
        source.register_buffer(key, torch.tensor(value))  # OpenAI's archives carry them as state entries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        torch.jit.save(torch.jit.script(source), str(tmp_path / "ViT-B-16.pt"))
    model, _ = build_clip(cfg, str(tmp_path / "ViT-B-16.pt"))
    assert _activations(model) == {QuickGELU}
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in source.state_dict().items() if k in sd)


def test_local_file_of_unknown_provenance_warns_under_a_gelu_config(tmp_path):
    cfg = _gelu_config(tmp_path)
    source, _ = build_clip(cfg, "random", seed=7)
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    with pytest.warns(QuickGeluWarning, match=r"clip\.pt.*OpenAI-trained weights need QuickGELU.*quick_gelu"):
        model, _ = build_clip(cfg, str(tmp_path / "clip.pt"))
    assert _activations(model) == {torch.nn.GELU}  # unknown provenance: the config decides


def test_local_file_under_a_quick_gelu_config_does_not_warn(tmp_path):
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))  # quick_gelu: true
    source, _ = build_clip(str(path), "random", seed=8)
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuickGeluWarning)
        model, _ = build_clip(str(path), str(tmp_path / "clip.pt"))
    assert _activations(model) == {QuickGELU}


def test_quick_gelu_decision_for_local_checkpoints():
    sd = {"visual.conv1.weight": torch.zeros(1)}
    assert clip_needs_quick_gelu("ViT-B-16", "/ckpt/ViT-B-16.pt", sd) is None  # unknown provenance
    openai = {**sd, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    assert clip_needs_quick_gelu("ViT-B-16", "/ckpt/ViT-B-16.pt", openai) is True
    # An open_clip timm-trunk layout is not OpenAI's, whatever extra entries it has.
    assert clip_needs_quick_gelu("ViT-B-16", "/ckpt/x.pt", {**openai, "visual.trunk.cls_token": torch.zeros(1)}) is None
    assert clip_needs_quick_gelu("ViT-B-16", "random") is False
