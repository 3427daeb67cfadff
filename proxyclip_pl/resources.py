"""What an evaluation used: peak memory and the device, as ``results.json`` records them (mmsegmentation's model-zoo
columns)."""
from __future__ import annotations

import resource
import sys

import torch

MIB = 2 ** 20


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak on a CUDA device (on the CPU the process's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on a CUDA device, else :func:`max_rss_mib`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return max_rss_mib()


def max_rss_mib() -> float:
    """Peak resident set size of this process so far in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


def device_name(device: torch.device) -> str:
    """``"cpu"`` or the CUDA device's name (e.g. ``"NVIDIA H100 80GB HBM3"``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
