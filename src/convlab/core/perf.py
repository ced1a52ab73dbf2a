"""Process-level speed settings that the training loop applies for its device."""

from __future__ import annotations

import contextlib
import ctypes
import os
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

    def __init__(self, kind: str = "fp32", device: torch.device | str = "cpu", reason: str = "") -> None:
        self.kind, self.device_type, self.dtype = kind, torch.device(device).type, PRECISIONS[kind]
        self.reason = reason  # why this kind, for the run's first line
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

    def describe(self) -> str:
        """The kind and why it was chosen: "fp32 (auto: ... has no native bf16 ...)"."""
        return f"{self.kind} ({self.reason})" if self.reason else self.kind

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty without one)."""
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        if self.scaler and state:
            self.scaler.load_state_dict(state)


NATIVE_BF16 = {"x86_64": ("avx512_bf16", "amx_bf16"), "aarch64": ("bf16", "sve_bf16"), "arm64": ("bf16", "sve_bf16")}
# Tests (and anyone comparing machines) can make `auto` decide as on the other kind of CPU:
# CONVLAB_CPU_BF16=1 treats this CPU as having native bf16, 0 as not having it.
CPU_BF16_ENV = "CONVLAB_CPU_BF16"


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why (from torch's own CPU feature detection)."""
    caps = torch.cpu.get_capabilities()
    features = NATIVE_BF16.get(caps.get("architecture", ""), ())
    found = [f for f in features if caps.get(f)]
    name = caps.get("cpu_name") or caps.get("architecture", "this CPU")
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced in ("0", "1"):
        return (
            forced == "1",
            f"{CPU_BF16_ENV}={forced} treats {name} as {'having' if forced == '1' else 'lacking'} native bf16",
        )
    if found:
        return True, f"{name} has native bf16 ({', '.join(found)})"
    wanted = " or ".join(features) or "a bf16 instruction set"
    return False, f"{name} has no native bf16 ({wanted}); emulated bf16 is slower than fp32"


def cuda_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether this GPU computes bf16 natively (compute capability 8.0 and later: Ampere, Ada, Hopper...), and why."""
    major, minor = torch.cuda.get_device_capability(device)
    name = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if major >= 8:
        return True, f"{name} has native bf16"
    return (
        False,
        f"{name} has no native bf16 (it needs 8.0 or later); fp16 with loss scaling is its fast mixed precision",
    )


def resolve_precision(requested: str, device: torch.device, no_fp16: str = "") -> tuple[str, str]:
    """`trainer.precision` with `auto` resolved for the device, and the reason for the choice.

    auto: bf16 on GPUs (compute capability >= 8.0) and CPUs (AVX512-BF16, AMX, Arm BF16) with native
    bf16; fp16 with loss scaling on older GPUs (T4, V100, RTX 20xx), or fp32 there when the task
    cannot scale its losses (`no_fp16` says why); fp32 on other CPUs, where emulated bf16 is far slower
    (~10x on an AVX2-only CPU: docs/BENCHMARKS.md).
    """
    if requested != "auto":
        return requested, "set by trainer.precision"
    if device.type == "cuda":
        native, why = cuda_bf16(device)
        if native:
            return "bf16", f"auto: {why}"
        if no_fp16:
            return "fp32", f"auto: {why}, but {no_fp16}"
        return "fp16", f"auto: {why}"
    if device.type == "cpu":
        native, why = cpu_bf16()
        return ("bf16" if native else "fp32"), f"auto: {why}"
    return "fp32", f"auto: {device.type}"


def resolve_speed_settings(trainer_cfg: Any, device: torch.device, no_fp16: str = "") -> tuple[str, str, bool]:
    """`trainer.precision` (with its reason) and `trainer.channels_last`, `auto` resolved for the device.

    channels_last auto: true on CUDA (cuDNN's NHWC kernels); on the CPU NCHW measured as fast or
    faster for the classifiers (docs/BENCHMARKS.md).
    """
    precision, why = resolve_precision(trainer_cfg.get("precision", "auto"), device, no_fp16)
    channels_last = trainer_cfg.get("channels_last", "auto")
    return precision, why, device.type == "cuda" if channels_last == "auto" else channels_last


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (for honest timings); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
