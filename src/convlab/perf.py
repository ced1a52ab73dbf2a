"""Process-level speed settings that the training loop applies for its device."""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Stop glibc from unmapping large freed blocks, so CPU training steps stop page-faulting.

    glibc serves allocations above its mmap threshold (32 MiB at most by default) with fresh
    mmap()s and unmaps them when freed, so every step re-faults the pages of its activations
    (plain_cnn at batch 128: 44 MB per layer). Raising the mmap and trim thresholds to 1 GiB
    keeps freed blocks for reuse: +45 % images/s for plain_cnn on 2 cores (docs/BENCHMARKS.md),
    for a resident size that stays at its peak. Returns whether the setting took effect.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
