"""Rebuild a run from its checkpoint: `convlab eval` scores a data split, `convlab sample` draws images."""

from __future__ import annotations

import io
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from convlab.core.build import build, resolve_device
from convlab.core.errors import ConfigError, ConvlabError
from convlab.core.io import write_atomic
from convlab.core.perf import Precision, resolve_precision
from convlab.data.base import DataInfo
from convlab.data.loader import batches_on
from convlab.run.checkpoint import find_checkpoint, load_checkpoint
from convlab.run.rundir import BEST, RunDir
from convlab.run.schema import validate
from convlab.run.stopping import EarlyStop
from convlab.tasks.base import Task, numbers_only

log = logging.getLogger("convlab")


def data_info(state: dict[str, Any]) -> DataInfo:
    """The data description a (checked) checkpoint holds: classes, channels, image size, normalisation."""
    return DataInfo(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in state["data_info"].items()})


# Where a dataset's files are read from, cached or downloaded to: this machine's business, never a checkpoint's.
PATH_KEYS = ("root", "cache_dir", "download")


def _conf_paths(target: str) -> dict[str, Any]:
    """convlab's own defaults of PATH_KEYS for the dataset class `target` (conf/data/), {} for a user's own class."""
    for file in (resources.files("convlab.conf") / "data").iterdir():
        node = OmegaConf.create(file.read_text()) if file.name.endswith(".yaml") else None
        if node is not None and node.get("_target_") == target:
            return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k in PATH_KEYS}
    return {}


def local_data(saved: DictConfig, root: str | None) -> DictConfig:
    """A checkpoint's data config with its file locations from the command line (data.root) or convlab's defaults."""
    data = saved.copy()
    with open_dict(data):
        for key in PATH_KEYS:
            data.pop(key, None)
        data.update(_conf_paths(str(saved.get("_target_"))) | ({"root": root} if root is not None else {}))
    if data.get("root") is not None:
        how = "data.root" if root is not None else "convlab's default; data.root=DIR reads another folder"
        log.info("data: %s read from %s (%s)", data.get("name"), data.root, how)
    return data


def _tested_weights(last: Path, state: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """An early-stopped run folder's tested weights: best.pt; last.pt, said in one line, when best.pt is gone."""
    best = last.parent / BEST
    if best.is_file():
        return best, load_checkpoint(best)
    run = RunDir(last.parent.parent)
    if (run.read_summary().get("test_weights") or {}).get("which") == "best":  # it was there for the test pass
        log.warning(
            "%s was tested on its best weights, but %s is gone; using %s (epoch %d) instead",
            run.path, best, last, state["epoch"],
        )  # fmt: skip
    return last, state  # (a run that never wrote best.pt was tested on last.pt too)


def load_task(
    cfg: DictConfig, device: torch.device, precision: Precision | None = None
) -> tuple[Task, DictConfig, dict[str, Any], Path]:
    """The task of checkpoint `cfg.ckpt` with its trained weights on `device`; also its config, state and path.

    A run folder means the weights its test pass used: last.pt, or best.pt when the run stopped early.

    The checkpoint is untrusted: `load_checkpoint` reads weights only and checks its layout, its
    `_target_`s and its config's values before anything here is built.
    """
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("ckpt=PATH is required: a .pt file or a run directory")
    path = find_checkpoint(cfg.ckpt)
    state = load_checkpoint(path)
    if Path(cfg.ckpt).is_dir() and EarlyStop.of_checkpoint(state).verdict(state["history"]):
        path, state = _tested_weights(path, state)
    saved = OmegaConf.create(state["config"])
    info = data_info(state)
    parts = {k: OmegaConf.to_container(saved[k]) for k in ("model", "optim", "sched")}
    task = build(
        saved.task, "task", **parts, info=info, device=device, total_steps=1, steps_per_epoch=1, precision=precision
    )
    try:
        task.load_state_dict(state["task"])
    except ConvlabError as e:
        raise ConvlabError(f"checkpoint {path}: {e}") from None
    return task, saved, state, path


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on `cfg.data.split`: the task's final evaluation (numbers only), source and metric names."""
    validate(cfg, "eval")
    device = resolve_device(cfg.device)
    kind, why = resolve_precision(cfg.precision, device)
    task, saved, state, path = load_task(cfg, device, Precision(kind, device, why))
    saved.data = local_data(saved.data, cfg.data.root)
    saved.data.split = cfg.data.split
    data = build(saved.data, "data")
    loaders = data.loaders(cfg.batch_size, device)
    task.attach(loaders)
    result = task.evaluate(batches_on(loaders[saved.data.split], device), final=True)
    meta = {"checkpoint": str(path), "epoch": state["epoch"], "model": saved.model.get("name"),
            "data": saved.data.get("name"), "precision": task.precision.describe(),
            "metric_names": dict(task.metric_names)}  # fmt: skip
    return numbers_only(result) | meta | {"split": saved.data.split, "images": len(loaders[saved.data.split].labels)}


def format_result(r: dict[str, Any]) -> str:
    """The evaluation as a small text report (metrics named as the task names them), with any per-class table."""
    lines = [
        f"checkpoint  {r['checkpoint']}  ({r['model']} on {r['data']}, after epoch {r['epoch']})",
        f"split       {r['split']} ({r['images']} images), precision {r['precision']}",
    ]
    names = r.get("metric_names") or {}
    lines += [f"{names.get(k, k):<11} {v:.4f}" for k, v in r.items() if isinstance(v, float)]
    if "per_class_acc" in r:
        width = max(len(name) for name in r["per_class_acc"])
        lines += ["", f"{'class':<{width}}  accuracy  correct/images"]
        for i, (name, acc) in enumerate(r["per_class_acc"].items()):
            row = r["confusion"][i]
            lines.append(f"{name:<{width}}  {acc:8.4f}  {row[i]:>7}/{sum(row)}")
    return "\n".join(lines)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two latent points for each t in [0, 1]: (T, z_dim)."""
    omega = torch.arccos((z0 / z0.norm() * z1 / z1.norm()).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return torch.lerp(z0, z1, t[:, None])
    return (torch.sin((1 - t) * omega)[:, None] * z0 + torch.sin(t * omega)[:, None] * z1) / torch.sin(omega)


def _writes_rgb(fmt: str | None) -> bool:
    """Whether PIL can write an RGB picture in format `fmt` ("PNG"), tried on a tiny one in memory."""
    from PIL import Image

    if fmt not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (2, 2)).save(io.BytesIO(), format=fmt)
    except Exception:  # formats for other modes, or needing options, fail in plugin-specific ways
        return False
    return True


def _check_image_name(out: str) -> None:
    """Refuse a file name whose extension PIL cannot write an RGB picture to: one line listing some that work."""
    from PIL import Image

    Image.init()  # registers every format plugin, so registered_extensions() is complete
    extensions = Image.registered_extensions()
    suffix = Path(out).suffix.lower()
    if _writes_rgb(extensions.get(suffix)):
        return
    some = [e for e in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff", ".gif") if _writes_rgb(extensions.get(e))]
    problem = (
        f"PIL cannot write a colour image as {suffix}"
        if suffix
        else "it has no extension to choose the image format by"
    )
    raise ConfigError(
        f"out={out}: {problem}; end the file name in {', '.join(some)} "
        "(or give a folder, out=DIR/, for one PNG per image)"
    )


def sample_checkpoint(cfg: DictConfig) -> list[Path]:
    """Write `cfg.n` generated images: one grid, one PNG each (out=DIR/), or an interpolation strip."""
    from torchvision.utils import save_image

    validate(cfg, "sample")
    out = Path(str(cfg.out))
    to_folder = str(cfg.out).endswith("/") or out.is_dir()
    if not to_folder:
        _check_image_name(str(cfg.out))  # before the checkpoint is read or anything is written
    device = resolve_device(cfg.device)
    task, saved, _, path = load_task(cfg, device)
    if not task.samples:
        raise ConvlabError(
            f"checkpoint {path} holds a {saved.model.get('name')} {task.kind}; "
            "convlab sample needs a generator (model=dcgan)"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.interpolate:
        z0, z1 = torch.randn(2, task.z_dim, generator=g)
        z = slerp(z0, z1, torch.linspace(0, 1, cfg.n))
    else:
        z = torch.randn(cfg.n, task.z_dim, generator=g)
    images = task.generate(z.to(device)).cpu()
    # Every image through write_atomic, as every command writes its outputs: a link at `out` is replaced,
    # never written through, and a full disk is one line.
    if to_folder:
        files = [out / f"sample_{i:04d}.png" for i in range(cfg.n)]
        for image, file in zip(images, files, strict=True):  # one image per latent point, n of each
            write_atomic(file, lambda tmp, image=image: save_image(image, tmp, format="png"))
        return files
    nrow = cfg.n if cfg.interpolate else math.ceil(math.sqrt(cfg.n))
    write_atomic(out, lambda tmp: save_image(images, tmp, format="png", nrow=nrow, padding=2))
    return [out]
