"""Regions that must stay in full precision under mixed-precision autocast."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def autocast_off(device: torch.device) -> ContextManager:
    """Disable autocast for ``device``'s type (a no-op where autocast does not exist, e.g. ``meta``).

    Attention statistics and cosine logits are averaged over windows and scaled by 40 before the softmax;
    bf16's three significant digits there would change labels, so they stay in fp32.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
