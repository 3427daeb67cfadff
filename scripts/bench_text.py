#!/usr/bin/env python
r"""Time the prompt-ensembled text encoding: full-length ``encode_text`` against the truncated forward.

Each path runs in a fresh subprocess (so that its peak RSS is its own): build the CLIP model and encode the
vocabulary's 80 x Q prompts. Paths: ``legacy``, the encoding loop before issue #11, verbatim (all 77 token
positions per prompt, per-batch tokenization, a list of per-batch outputs); ``full``,
:func:`proxyclip_pl.vocabulary.encode_text_embeddings` with ``truncate=False`` (all 77 positions, same
batches as ``legacy``, the new allocation pattern); ``truncated``, the default ``truncate=True`` (prompts
sorted by EOT position, each batch stops at its longest one). Reported per path: wall and CPU seconds
(``time.process_time``; use it when the machine is shared, with ``--threads 1``), peak RSS before and
after the encoding (``ru_maxrss``), and against the first path the speedups and the max |difference| of
the [Q, d] embeddings. Weights may be ``random``: the speed does not depend on them.

Examples::

    python scripts/bench_text.py                                   # COCO-Stuff, ViT-B-16-quickgelu, random
    python scripts/bench_text.py --paths legacy,full,truncated --queries 12 --threads 1
    python scripts/bench_text.py --queries 40 --threads 1 --json bench/text_coco_stuff_40.json
    python scripts/bench_text.py --vocabulary ade20k --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PROBE_MARKER = "BENCH_TEXT_PROBE "
PATHS = {"legacy": None, "full": False, "truncated": True}


def legacy_encode_text_embeddings(clip_model, tokenizer, queries, templates=None, batch_size=None):
    """The encoding loop before issue #11, verbatim: tokenizes per batch and keeps a list of per-batch
    outputs (the allocation pattern that grew glibc's heap by ~5 MB per batch); full-length prompts."""
    import torch
    import torch.nn.functional as F

    from proxyclip_pl.vocabulary import TEMPLATES

    templates = templates or TEMPLATES
    device = next(clip_model.parameters()).device
    batch_size = batch_size or (256 if device.type == "cuda" else 16)
    prompts = [template(query) for query in queries for template in templates]
    chunks = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start:start + batch_size]).to(device)
            chunks.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(queries), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def vocabulary_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    from datamodules.presets import VOCAB_DIR

    key = VOCAB_DIR / f"{name}.txt"
    if key.is_file():
        return key
    raise SystemExit(f"vocabulary {name!r} is neither a file nor a key of datamodules/vocab/")


def select_queries(queries: list[str], limit: int | None) -> list[str]:
    """All queries, or ``limit`` of them evenly spaced over the vocabulary (a representative subset)."""
    if not limit or limit >= len(queries):
        return queries
    step = len(queries) / limit
    return [queries[int(i * step)] for i in range(limit)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="ViT-B-16-quickgelu", help="open_clip model name or config JSON")
    p.add_argument("--clip-weights", default="random", help="pretrained tag, checkpoint file or random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocabulary", default="coco_stuff", help="vocabulary file or datamodules/vocab key")
    p.add_argument("--queries", type=int, default=None, help="encode only this many queries, evenly spaced")
    p.add_argument("--batch-size", type=int, default=None, help="encode_text_embeddings batch_size (default: its own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--paths", default="legacy,truncated",
                   help="comma-separated, the first is the baseline: legacy (the loop before issue #11), full "
                        "(encode_text_embeddings(truncate=False)), truncated (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the report to this JSON file")
    p.add_argument("--_probe", dest="probe", default=None, choices=list(PATHS), help=argparse.SUPPRESS)
    p.add_argument("--_out", dest="out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def probe(args: argparse.Namespace) -> None:
    """One path in this (fresh) process; prints its figures and saves the embeddings to ``--_out``."""
    import torch

    from proxyclip_pl.towers import build_clip
    from proxyclip_pl.vocabulary import encode_text_embeddings, flatten_vocabulary, load_vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    queries = select_queries(flatten_vocabulary(load_vocabulary(vocabulary_path(args.vocabulary)))[0], args.queries)
    model, tokenizer = build_clip(args.clip, args.clip_weights, seed=args.seed)
    model.to(args.device)
    rss_before = max_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    if args.probe == "legacy":
        embeddings = legacy_encode_text_embeddings(model, tokenizer, queries, batch_size=args.batch_size)
    else:
        embeddings = encode_text_embeddings(model, tokenizer, queries, batch_size=args.batch_size,
                                            truncate=PATHS[args.probe])
    if embeddings.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.save(embeddings.cpu(), args.out)
    print(PROBE_MARKER + json.dumps({
        "path": args.probe, "num_queries": len(queries), "num_prompts": 80 * len(queries), "wall_s": wall,
        "cpu_s": cpu, "peak_rss_before_encoding_mib": rss_before, "peak_rss_mib": max_rss_mib(),
        "torch_num_threads": torch.get_num_threads(),
    }), flush=True)


def run_probe(args: argparse.Namespace, path: str, out: Path) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--_probe", path, "--_out", str(out), "--clip", args.clip,
            "--clip-weights", args.clip_weights, "--seed", str(args.seed), "--vocabulary", args.vocabulary,
            "--device", args.device]
    for flag, value in (("--queries", args.queries), ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None:
            argv += [flag, str(value)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PROBE_MARKER):
            return json.loads(line[len(PROBE_MARKER):])
    raise RuntimeError(f"{path} probe failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        probe(args)
        return 0
    import torch

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise SystemExit(f"--paths must name some of {', '.join(PATHS)}, got {args.paths!r}")
    results, embeddings = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            out = Path(tmp) / f"{path}.pt"
            results[path] = run_probe(args, path, out)
            embeddings[path] = torch.load(out, weights_only=True)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average": list(os.getloadavg())},
        "config": {k: getattr(args, k) for k in ("clip", "clip_weights", "seed", "vocabulary", "queries",
                                                  "batch_size", "device", "threads")},
        "results": results,
    }
    base = paths[0]
    for path in paths[1:]:
        report.setdefault("versus_" + base, {})[path] = {
            "max_abs_difference": (embeddings[base] - embeddings[path]).abs().max().item(),
            "speedup_wall": results[base]["wall_s"] / results[path]["wall_s"],
            "speedup_cpu": results[base]["cpu_s"] / results[path]["cpu_s"],
        }
    for path, r in results.items():
        print(f"{path:>9}: {r['num_prompts']} prompts, wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, peak RSS "
              f"{r['peak_rss_before_encoding_mib']:.0f} -> {r['peak_rss_mib']:.0f} MiB "
              f"(+{r['peak_rss_mib'] - r['peak_rss_before_encoding_mib']:.0f})")
    for path, r in report.get("versus_" + base, {}).items():
        print(f"{path} vs {base}: speedup wall {r['speedup_wall']:.2f}x, cpu {r['speedup_cpu']:.2f}x; "
              f"max |delta| {r['max_abs_difference']:.3g}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
