"""The ProxyCLIP paper's Section 3.1 analyses on any benchmark (docs/analyses.md).

    proxyclip-analyze coherence --data coco_stuff --data-root data --devices 4        # Fig. 1: AP per scorer
    proxyclip-analyze attention --data coco_stuff --limit 4 --points 0.5,0.5          # Fig. 2: attention maps
    proxyclip-analyze similarity-stats --data coco_stuff --devices 4                  # Fig. 4: S before / after

coherence: how well each scorer's patch-to-patch scores tell same-label patch pairs from the others (AP over every
ordered pair of labelled patches of every image): CLIP's last-block attention (clip_qk, clip_qq, clip_kk, clip_vv,
mean over heads) and the cosine similarities of each VFM's features (vfm:<name>). Writes coherence.json,
pr_curves.json and pr_curves.png. attention: the seed patch's CLIP attention (head 0) and VFM similarities for a few
images and points (attention.npz, attention.png). similarity-stats: each VFM's similarities before and after
ProxyCLIP's normalisation gamma (S - beta mean S) (similarity_stats.json and .png).

Every image is the benchmark's test image stretched to --image-size squared. coherence and similarity-stats run
one process per device (Lightning); their results do not depend on the number of devices. Defaults: CLIP ViT-B/16
(OpenAI) and the paper's DINO ViT-B/16, SAM ViT-B/16 and MAE ViT-B/16.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from proxyclip_pl.cli import STRATEGIES, check_strategy, run_cli
from proxyclip_pl.defaults import DEFAULT_CLIP, PRETRAINED

#: the paper's VFMs of Section 3.1: DINO ViT-B/16, SAM ViT-B/16, MAE ViT-B/16
DEFAULT_VFMS = ("vit_base_patch16_224.dino", "samvit_base_patch16.sa1b", "vit_base_patch16_224.mae")
#: the default seeds of ``attention`` (y, x)
DEFAULT_POINTS = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75))
ANALYSES = ("coherence", "attention", "similarity-stats")
#: a coherence AP whose certified error exceeds this is reported with a warning
CERTIFIED_WARNING = 1e-3


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data")
    g.add_argument("--data", default="coco_stuff", help="benchmark key or dataset card .json (default: %(default)s)")
    g.add_argument("--data-root", default=None, help="dataset folder, or the data folder holding its standard "
                   "sub-path (default: $PROXYCLIP_DATA, else data/)")
    g.add_argument("--limit", type=int, default=None, help="only the first N images in dataset order "
                   "(default: all; attention: 4)")
    g.add_argument("--num-workers", type=int, default=2)
    g = common.add_argument_group("models")
    g.add_argument("--clip", default=DEFAULT_CLIP,
                   help="open_clip model name or model-config JSON (default: %(default)s)")
    g.add_argument("--clip-weights", default=None, help="pretrained tag, checkpoint path or 'random' "
                   "(default: the preset's tag, 'openai')")
    g.add_argument("--vfm", action="append", default=None, metavar="NAME",
                   help="VFM (repeatable): timm name or VFM spec JSON; 'none' for no VFM "
                   f"(default: {', '.join(DEFAULT_VFMS)})")
    g.add_argument("--vfm-weights", action="append", default=None, metavar="W",
                   help="'pretrained', checkpoint path or 'random' (repeatable: one for every --vfm, or one per "
                   "--vfm in order; default: pretrained)")
    g.add_argument("--seed", type=int, default=0, help="seed of 'random' weights (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=336, help="images are stretched to S x S; a multiple of the "
                   "CLIP and ViT-VFM patch sizes (default: %(default)s)")
    g = common.add_argument_group("run")
    g.add_argument("--output-dir", default="outputs/analysis", help="default: %(default)s")
    g.add_argument("--devices", type=int, default=1, help="processes, one per device (coherence, similarity-stats)")
    g.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "cuda", "auto"])
    g.add_argument("--strategy", default="auto", help=f"one of {', '.join(STRATEGIES)}; 'auto' is 'ddp' for "
                   "several devices")

    p = argparse.ArgumentParser(prog="proxyclip-analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="analysis", required=True, metavar="{coherence,attention,similarity-stats}")
    sub.add_parser("coherence", parents=[common], help="AP of same-label patch pairs per scorer (Fig. 1)",
                   description="AP of same-label patch pairs per scorer (paper Fig. 1).")
    attention = sub.add_parser("attention", parents=[common], help="CLIP attention and VFM similarity maps (Fig. 2)",
                               description="The seed patch's CLIP attention and VFM similarities (paper Fig. 2); "
                               "one process.")
    attention.add_argument("--points", action="append", default=None, metavar="Y,X",
                           help="seed point as fractions of the height and width in [0, 1) (repeatable; default: "
                           + " ".join(f"{y},{x}" for y, x in DEFAULT_POINTS) + ")")
    attention.set_defaults(limit=4)
    stats = sub.add_parser("similarity-stats", parents=[common], help="VFM similarities before / after (Fig. 4)",
                           description="VFM similarities before / after ProxyCLIP's normalisation (paper Fig. 4).")
    stats.add_argument("--beta", type=float, default=1.2, help="default: %(default)s")
    stats.add_argument("--gamma", type=float, default=3.0, help="default: %(default)s")
    return p


def scorer_name(vfm: str) -> str:
    """``vfm:<stem>`` of a .json spec, else ``vfm:<name as given>``."""
    return f"vfm:{Path(vfm).stem}" if vfm.endswith(".json") else f"vfm:{vfm}"


def parse_point(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--points {text!r}: expected Y,X (two numbers separated by a comma)") from None
    if not (0.0 <= y < 1.0 and 0.0 <= x < 1.0):
        raise ValueError(f"--points {text!r}: both fractions must lie in [0, 1)")
    return y, x


def validate(args: argparse.Namespace) -> None:
    """The checks that need no model and no dataset scan (one-line user errors); fills ``args.vfms``
    (``[(vfm, weights)]``) and ``args.point_list``."""
    from datamodules import BENCHMARKS
    from proxyclip_pl.commands.jobs import data_root_for, is_card
    from proxyclip_pl.commands.run_folder import check_writable
    from proxyclip_pl.towers import check_clip_name, check_vfm_name

    if is_card(args.data):
        from datamodules.custom import read_card

        read_card(args.data)
        if args.data_root is not None and not Path(args.data_root).is_dir():
            raise FileNotFoundError(f"--data-root {args.data_root} does not exist")
    elif args.data not in BENCHMARKS:
        from proxyclip_pl.commands.table import benchmark_keys

        raise ValueError(f"unknown --data {args.data!r}; expected one of {', '.join(benchmark_keys())} or a dataset "
                         "card (.json)")
    else:
        data_root_for(args.data, args)
    for flag, value, least in (("--limit", args.limit, 1), ("--image-size", args.image_size, 1),
                               ("--devices", args.devices, 1), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    check_strategy(args.strategy)
    for flag in ("beta", "gamma"):
        if getattr(args, flag, 1.0) <= 0:
            raise ValueError(f"--{flag} must be positive, got {getattr(args, flag)}")
    names = list(args.vfm or DEFAULT_VFMS)
    if any(n.lower() == "none" for n in names):
        if len(names) > 1:
            raise ValueError("--vfm none means no VFM: do not combine it with other --vfm")
        names = []
    weights = list(args.vfm_weights or [PRETRAINED])
    if len(weights) not in (1, len(names)) and names:
        raise ValueError(f"--vfm-weights: give one value for every --vfm or one per --vfm ({len(names)}), "
                         f"got {len(weights)}")
    seen: dict[str, str] = {}
    for name in names:
        key = scorer_name(name)
        if key in seen:
            raise ValueError(f"--vfm {name} and --vfm {seen[key]} have the same name {key!r}; rename a spec file")
        seen[key] = name
    if args.analysis == "similarity-stats" and not names:
        raise ValueError("similarity-stats compares VFM similarities: give at least one --vfm (not 'none')")
    check_clip_name(args.clip)
    for name in names:
        check_vfm_name(name)
    args.vfms = [(name, weights[0] if len(weights) == 1 else weights[i]) for i, name in enumerate(names)]
    args.point_list = [parse_point(t) for t in args.points] if getattr(args, "points", None) else list(DEFAULT_POINTS)
    check_writable(Path(args.output_dir))


def load_dataset(args: argparse.Namespace):
    """The benchmark's datamodule (set up) and its first ``--limit`` test images."""
    import torch

    from datamodules import build_datamodule
    from proxyclip_pl.commands.jobs import data_root_for, is_card

    root = args.data_root if is_card(args.data) else data_root_for(args.data, args)
    dm = build_datamodule(args.data, data_root=root, num_workers=args.num_workers)
    dm.setup("test")
    if args.limit is not None and args.limit < len(dm.test_dataset):
        dm.test_dataset = torch.utils.data.Subset(dm.test_dataset, range(args.limit))
    return dm


def clip_config_patch_size(name: str) -> tuple[int, int] | None:
    """(ph, pw) from an open_clip model config (name or JSON) without building it; ``None`` where the config does
    not say (a timm-backed tower)."""
    import open_clip

    from proxyclip_pl.towers import check_clip_name

    check_clip_name(name)  # registers a JSON config under its stem
    config = open_clip.get_model_config(Path(name).stem if name.endswith(".json") else name) or {}
    patch = config.get("vision_cfg", {}).get("patch_size")
    if patch is None:
        return None
    return (int(patch), int(patch)) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


def build_towers(args: argparse.Namespace, need_clip: bool):
    """CLIP (``None`` when not needed; text tower freed) and ``[(scorer, model, kind)]``; ``--image-size`` checked
    against their patch sizes."""
    from proxyclip_pl.analysis.scores import clip_patch_size, vfm_patch_constraint
    from proxyclip_pl.factory import build_clip, release_text_tower
    from proxyclip_pl.towers import build_vfm

    size = args.image_size
    clip_model = None
    if need_clip:
        clip_model = build_clip(args.clip, args.clip_weights, seed=args.seed)[0]
        release_text_tower(clip_model)
        patch = clip_patch_size(clip_model)
    else:  # not built, but the flags mean the same for every analysis: checked from its config
        patch = clip_config_patch_size(args.clip)
    if patch is not None and (size % patch[0] or size % patch[1]):
        raise ValueError(f"--image-size {size} is not a multiple of CLIP {args.clip}'s patch size {patch[0]}")
    vfms = []
    for name, weights in args.vfms:
        model, kind = build_vfm(name, weights, seed=args.seed)
        patch = vfm_patch_constraint(model, kind, size)
        if patch is not None and (size % patch[0] or size % patch[1]):
            raise ValueError(f"--image-size {size} is not a multiple of VFM {name}'s patch size {patch[0]}")
        vfms.append((scorer_name(name), model, kind))
    return clip_model, vfms


def run_distributed(args: argparse.Namespace, accelerator: str) -> dict[str, Any] | None:
    """coherence / similarity-stats under Lightning; the written JSON on the launching process."""
    import lightning.pytorch as pl

    from proxyclip_pl.analysis.lightning_module import AnalysisModule
    from proxyclip_pl.analysis.outputs import COHERENCE_FILE, STATS_FILE
    from proxyclip_pl.console import phase
    from proxyclip_pl.result_files import ImagesPerSecondBar, read_results

    dm = load_dataset(args)
    num = len(dm.test_dataset)
    if args.devices > num:
        # a process without images never reaches the reductions: the others would wait for it until the timeout
        raise ValueError(f"{num} image(s) for {args.devices} processes (--devices {args.devices}); every process "
                         f"needs at least one image: use at most {num} device(s)")
    with phase("building the towers", "towers ready"):
        clip_model, vfms = build_towers(args, need_clip=args.analysis == "coherence")
    module = AnalysisModule(args.analysis, clip_model, vfms, args.image_size, num, args.output_dir,
                            ignore_index=dm.preset.ignore_index, num_classes=dm.num_classes,
                            beta=getattr(args, "beta", 1.2), gamma=getattr(args, "gamma", 3.0))
    strategy = "ddp" if args.strategy == "auto" and args.devices > 1 else args.strategy
    out = Path(args.output_dir)
    target = out / (COHERENCE_FILE if args.analysis == "coherence" else STATS_FILE)
    target.unlink(missing_ok=True)  # never report a previous run's numbers
    trainer = pl.Trainer(accelerator=accelerator, devices=args.devices, strategy=strategy, precision="32-true",
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[ImagesPerSecondBar()], inference_mode=False)
    trainer.test(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return None
    return read_results(target)


def run_attention(args: argparse.Namespace, accelerator: str) -> None:
    """attention: one process, the first ``--limit`` images."""
    import numpy as np
    import torch

    from proxyclip_pl.analysis.attention import attention_maps
    from proxyclip_pl.analysis.outputs import write_attention
    from proxyclip_pl.analysis.scores import analysis_input
    from proxyclip_pl.console import phase

    dm = load_dataset(args)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    with phase("building the towers", "towers ready"):
        clip_model, vfms = build_towers(args, need_clip=True)
    clip_model.to(device)
    vfms = [(name, model.to(device), kind) for name, model, kind in vfms]
    samples = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    images = torch.cat([analysis_input(s["image"], args.image_size) for s in samples]).to(device)
    maps = attention_maps(clip_model, vfms, images, args.point_list)
    pictures = [(x.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for x in images]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_attention(out, [str(s["id"]) for s in samples], np.asarray(args.point_list), maps, pictures)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in maps.items())
    print(f"attention maps of {len(samples)} image(s) x {len(args.point_list)} point(s): {shapes}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    validate(args)
    from proxyclip_pl.commands.jobs import check_devices
    from proxyclip_pl.console import note, quiet_libraries

    note(f"proxyclip-analyze {args.analysis} on {args.data}; output: {args.output_dir}")
    quiet_libraries()
    accelerator = args.accelerator = check_devices(args)
    if args.analysis == "attention":
        run_attention(args, accelerator)
    else:
        payload = run_distributed(args, accelerator)
        if payload is None:
            return 0
        from proxyclip_pl.analysis.outputs import BOUNDS_FILE, format_coherence, format_similarity_stats

        if args.analysis == "coherence":
            bounds = json.loads((Path(args.output_dir) / BOUNDS_FILE).read_text())
            print(format_coherence(payload, bounds))
            for name, bound in bounds.items():
                if bound["max_error"] is not None and bound["max_error"] > CERTIFIED_WARNING:
                    note(f"warning: {name}: the binned AP is certified within +-{bound['max_error']:.4f} only "
                         f"(interval {bound['ap_low']:.4f} .. {bound['ap_high']:.4f}, see {BOUNDS_FILE})")
        else:
            print(format_similarity_stats(payload))
    note(f"done in {time.perf_counter() - start:.1f} s; results in {args.output_dir}")
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-analyze`` (and ``python scripts/analyze.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
