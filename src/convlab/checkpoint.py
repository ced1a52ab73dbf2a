"""Checkpoints: atomic writes, safe (weights-only) reads, one-line errors for bad files."""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from convlab.errors import ConvlabError

FORMAT = "convlab-checkpoint/1"
CKPT_DIR = "checkpoints"
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, write: Any) -> None:
    """Run write(tmp_path) in the target folder, then rename over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` (tensors, numbers, strings, containers only) atomically to `path`."""
    write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file atomically (used for best.pt)."""
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A .pt file as given, or `checkpoints/last.pt` inside a run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_DIR / "last.pt"
    if not p.is_file():
        raise ConvlabError(f"checkpoint {path} not found (expected a .pt file or a run directory holding {CKPT_DIR}/last.pt)")
    return p


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint was written into, if it sits in one."""
    return ckpt.parent.parent if ckpt.parent.name == CKPT_DIR else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a convlab checkpoint with weights_only=True; bad or foreign files raise ConvlabError."""
    p = find_checkpoint(path)
    if not zipfile.is_zipfile(p):
        raise ConvlabError(f"checkpoint {p} is not a PyTorch checkpoint file (truncated, or some other file)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = re.search(r"WeightsUnpickler error: ([^\n]+)", str(e))
        reason = f"weights_only loading refuses what it holds: {unsafe.group(1).split(' was not')[0]}" if unsafe else f"{type(e).__name__}: {str(e).strip()[:200]}"
        raise ConvlabError(f"checkpoint {p} is corrupt or not a convlab checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConvlabError(f"checkpoint {p} is not a convlab checkpoint (format {FORMAT} expected)")
    return state


def rng_state() -> dict[str, Any]:
    """The global RNG states that dropout and initialisation draw from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
