"""How proxyclip-benchmark measures: wall time, FLOPs, the device's matmul peak, peak memory and the machine."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from proxyclip_pl.resources import MIB


#: ``--precision`` -> autocast dtype (None: plain fp32, autocast disabled).
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device_type: str, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], Any], device: torch.device, warmup: int, runs: int) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def timing_summary(times: list[float], num_windows: int, flops: int | None, peak_gflops: float | None) -> dict:
    median = statistics.median(times)
    out = {
        "times_s": times,
        "median_s": median,
        "images_per_s": 1.0 / median,
        "windows_per_s": num_windows / median,
        "achieved_gflops": None,
        "fraction_of_peak": None,
    }
    if flops:
        out["achieved_gflops"] = flops / median / 1e9
        if peak_gflops:
            out["fraction_of_peak"] = out["achieved_gflops"] / peak_gflops
    return out


def _mha_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """``aten._native_multi_head_attention`` (batch-first fast path of ``nn.MultiheadAttention``)."""
    batch, len_q, dim = query
    len_k = key[1]
    proj = 2 * batch * (len_q + 2 * len_k) * dim * embed_dim + 2 * batch * len_q * embed_dim * embed_dim
    return proj + 2 * 2 * batch * len_q * len_k * embed_dim


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def flop_counter():
    """``FlopCounterMode`` that also counts the CPU attention kernels torch's registry misses."""
    aten = torch.ops.aten
    custom = {aten._native_multi_head_attention: _mha_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    counter = flop_counter()
    with counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: Sequence[int], repeats: int = 5,
                max_seconds_per_call: float = 5.0) -> dict:
    """Dense ``torch.mm`` GFLOP/s (median of ``repeats`` after one warm-up) for each n x n size; best overall."""
    per_size = {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if time.perf_counter() - start > max_seconds_per_call:  # too slow: measure once more and stop
            per_size[str(n)] = 2 * n ** 3 / statistics.median(time_runs(lambda: torch.mm(a, b), device, 0, 1)) / 1e9
            break
        times = time_runs(lambda: torch.mm(a, b), device, 0, repeats)
        per_size[str(n)] = 2 * n ** 3 / statistics.median(times) / 1e9
        a = b = None  # freed before the next (larger) size is allocated
    return {"dtype": str(dtype).replace("torch.", ""), "repeats": repeats, "gflops_by_size": per_size,
            "gflops": max(per_size.values()) if per_size else None}


def combine_peaks(*peaks: dict) -> dict:
    """Best GFLOP/s per size over several :func:`matmul_peak` measurements."""
    by_size: dict[str, float] = {}
    for peak in peaks:
        for n, gflops in peak["gflops_by_size"].items():
            by_size[n] = max(by_size.get(n, 0.0), gflops)
    return {"dtype": peaks[0]["dtype"], "repeats": peaks[0]["repeats"], "measurements": len(peaks),
            "gflops_by_size": by_size, "gflops": max(by_size.values()) if by_size else None,
            "gflops_each_measurement": [peak["gflops"] for peak in peaks]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import open_clip
    import timm

    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "open_clip_version": getattr(open_clip, "__version__", None),
        "timm_version": timm.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": cpu_model(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_version": torch.version.cuda,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        props = torch.cuda.get_device_properties(device)
        info["device_total_memory_mib"] = props.total_memory / MIB
    return info

