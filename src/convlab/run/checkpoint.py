"""Checkpoints: atomic writes, safe (weights-only) reads, one-line errors for bad files."""

from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from convlab.core.errors import ConvlabError
from convlab.core.io import write_atomic
from convlab.run import trust
from convlab.run.rundir import CKPT_DIR, LAST
from convlab.run.schema import validate

FORMAT = "convlab-checkpoint/1"
# What every convlab checkpoint holds, by type; loaded files that differ are refused.
LAYOUT = {
    "config": dict,
    "data_info": dict,
    "task": dict,
    "epoch": int,
    "history": list,
    "best": dict,
    "elapsed": (float, int),
    "rng": list,
    "precision": dict,
}
# torch.load's advice around the reason it refused a file (the advice is to trust the file: not ours to give).
TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "In PyTorch")
INFO_FIELDS = {"num_classes", "in_channels", "image_size", "class_names", "mean", "std"}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` (tensors, numbers, strings, containers only) atomically to `path`."""
    write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A .pt file as given, or `checkpoints/last.pt` inside a run directory (or its checkpoints/ folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST if p.name == CKPT_DIR and (p / LAST).exists() else p / CKPT_DIR / LAST
    if Path(path).is_dir() and (Path(path) / "multirun.yaml").is_file():
        raise ConvlabError(f"{path} is a sweep folder: continue the sweep with: convlab train -m resume={path}")
    if not p.is_file():  # also refuses FIFOs and devices, which could block or never end
        raise ConvlabError(
            f"checkpoint {path} not found (expected a .pt file or a run directory holding {CKPT_DIR}/last.pt)"
        )
    return p


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint was written into, if it sits in one."""
    return ckpt.parent.parent if ckpt.parent.name == CKPT_DIR else None


def _refusal(e: Exception) -> str:
    """torch.load's reason in one line: the unpickler's own sentence when it refused a pickle, not its advice."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return (
                "weights-only loading refused it: "
                + line.split("WeightsUnpickler error:", 1)[1].split(" Please use")[0].strip()
            )
    if lines and lines[0].startswith("Weights only load failed"):
        reason = next((line for line in lines[1:] if not line.startswith(TORCH_ADVICE)), lines[0])
        return f"weights-only loading refused it: {reason[:300]}"
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a convlab checkpoint as untrusted data: weights_only, its layout checked, its config's targets allowed.

    This is the one way convlab reads a checkpoint (eval, sample, resume, bench); bad or foreign
    files raise one ConvlabError line naming the file.
    """
    p = find_checkpoint(path)
    if not zipfile.is_zipfile(p):
        raise ConvlabError(f"checkpoint {p} is not a PyTorch checkpoint file (truncated, or some other file)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvlabError(f"checkpoint {p} is corrupt or not a convlab checkpoint ({_refusal(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConvlabError(f"checkpoint {p} is not a convlab checkpoint (format {FORMAT} expected)")
    problem = _layout_problem(state)
    if problem:
        raise ConvlabError(f"checkpoint {p} is damaged or not a convlab checkpoint: {problem}")
    trust.check_config(trust.upgrade(state["config"]), f"checkpoint {p}")
    try:  # the same value checks as a command line
        validate(OmegaConf.create(state["config"]))
    except ConvlabError as e:
        raise ConvlabError(f"checkpoint {p}: its config is not valid ({e})") from None
    return state


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _layout_problem(state: dict[str, Any]) -> str | None:
    """What is missing or mistyped in a loaded checkpoint's layout (None when it is whole)."""
    unknown = sorted(set(state) - set(LAYOUT) - {"format"})
    if unknown:
        return f"it holds keys a convlab checkpoint does not ({', '.join(map(str, unknown[:3]))})"
    for key, kind in LAYOUT.items():
        if not isinstance(state.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__ if isinstance(kind, type) else kind[0].__name__}"
    config = state["config"]
    for key in ("model", "data", "optim", "sched", "task"):
        if not isinstance(config.get(key), dict):
            return f"its config has no {key} section"
    epochs, epoch = config.get("epochs"), state["epoch"]
    if (
        not isinstance(epochs, int)
        or isinstance(epochs, bool)
        or not isinstance(epoch, int)
        or not 0 <= epoch <= epochs
    ):
        return f"epoch {epoch!r} of epochs {epochs!r} is out of range"
    history = state["history"]
    if len(history) != epoch or not all(
        isinstance(r, dict) and all(_is_number(v) for v in r.values()) for r in history
    ):
        return f"its history does not hold {epoch} rows of numbers"
    if [r.get("epoch") for r in history] != list(range(1, epoch + 1)):
        return f"its history rows are not epochs 1 to {epoch} in order"
    info = state["data_info"]
    if set(info) != INFO_FIELDS or not all(
        isinstance(info[k], int) and info[k] >= 1 for k in ("num_classes", "in_channels", "image_size")
    ):
        return f"data_info must hold {', '.join(sorted(INFO_FIELDS))} with positive sizes"
    if not all(isinstance(info[k], (list, tuple)) and all(_is_number(v) for v in info[k]) for k in ("mean", "std")):
        return "data_info mean and std must be lists of numbers"
    if not isinstance(info["class_names"], (list, tuple)) or not all(isinstance(c, str) for c in info["class_names"]):
        return "data_info class_names must be a list of strings"
    if not all(isinstance(state["task"].get(k), dict) for k in ("models", "optimizers", "schedulers")):
        return "its task state lacks models, optimizers or schedulers"
    best = state["best"]
    if (
        set(best) != {"metric", "mode", "value", "epoch"}
        or best.get("mode") not in ("min", "max")
        or not isinstance(best.get("metric"), str)
        or not (best.get("value") is None or _is_number(best.get("value")))
    ):
        return "its best-epoch record is malformed"
    return None


def rng_state() -> dict[str, Any]:
    """The global RNG states that dropout and initialisation draw from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA states only where CUDA is present); a malformed state is one line."""
    try:
        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConvlabError(
            "the checkpoint's random-number state is malformed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
