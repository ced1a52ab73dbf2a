"""Process-level speed settings that the training loop applies for its device."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys
from typing import Any

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Stop glibc from unmapping large freed blocks, so CPU training steps stop page-faulting.

    glibc serves allocations above its mmap threshold (32 MiB at most by default) with fresh
    mmap()s and unmaps them when freed, so every step re-faults the pages of its activations
    (plain_cnn at batch 128: 44 MB per layer). Raising the mmap and trim thresholds to 1 GiB
    keeps freed blocks for reuse: +30 % images/s for plain_cnn on 2 cores (docs/BENCHMARKS.md),
    for a resident size that stays at its peak. Returns whether the setting took effect.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast dtype and (for fp16) loss scaling on one device; Tasks run their steps through it.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (GradScaler).
    """

    def __init__(self, kind: str = "fp32", device: torch.device | str = "cpu") -> None:
        self.kind, self.device_type, self.dtype = kind, torch.device(device).type, PRECISIONS[kind]
        self.scaler = torch.amp.GradScaler(self.device_type) if kind == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes and losses (not for backward)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and optimizer.step(), with loss scaling for fp16."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty without one)."""
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def resolve_speed_settings(trainer_cfg: Any, device: torch.device) -> tuple[str, bool]:
    """`trainer.precision` and `trainer.channels_last`, with `auto` resolved for the device.

    auto: bf16 and channels_last on CUDA (tensor cores, cuDNN's NHWC kernels); fp32 and NCHW elsewhere.
    """
    cuda = device.type == "cuda"
    precision = trainer_cfg.get("precision", "auto")
    precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
    channels_last = trainer_cfg.get("channels_last", "auto")
    return precision, cuda if channels_last == "auto" else channels_last
