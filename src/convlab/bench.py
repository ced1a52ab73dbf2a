"""`convlab bench`: training images/s of convlab's loop against a bare loop and a typical DataLoader loop."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from convlab.config import build
from convlab.errors import ConvlabError
from convlab.perf import Precision
from convlab.schema import validate
from convlab.tasks.classification import ClassificationTask
from convlab.train import Run, setup
from convlab.trainer import sync

LOOPS = {
    "convlab": "1 convlab train loop",
    "bare": "2 bare PyTorch loop, data on device",
    "reference": "3 DataLoader + PIL transforms",
}


class PILImages(Dataset):
    """Images as a torchvision CIFAR-style dataset serves them: a PIL image per item, then transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), as torchvision's CIFAR10 keeps them
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), self.labels[i]


def _fresh_model_step(run: Run) -> Callable[[torch.Tensor, torch.Tensor], int]:
    """One plain training step (returning its batch size) of a new model and optimizer like the run's."""
    info, cfg, task = run.task.info, run.cfg, run.task
    model = build(cfg.model, "model", num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size)
    model.to(run.device, memory_format=run.trainer.memory_format)
    if cfg.trainer.compile:
        model.compile()
    opt = build(cfg.optim, "optim")(model.parameters())
    amp = Precision(task.precision.kind, run.device)

    def step(x: torch.Tensor, y: torch.Tensor) -> int:
        with amp.autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, opt)
        return len(y)

    return step


def _timed(step: Callable[[], int], warmup: int, steps: int, device: torch.device) -> float:
    """images/s of `steps` calls of step() (each returns its batch size) after `warmup` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    sync(device)
    return images / (time.perf_counter() - start)


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Measure the three loops `cfg.bench.repeats` times, interleaved; returns medians, spreads and ratios."""
    b = cfg.bench
    validate(cfg, "bench")
    steps, warmup, repeats = b.steps, b.warmup, b.repeats
    workers = b.workers if b.workers is not None else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        with open_dict(cfg):
            cfg.out_dir = tmp
        run = setup(cfg, write=False)
        if not isinstance(run.task, ClassificationTask):
            raise ConvlabError(f"convlab bench measures classifiers; model={cfg.model.get('name')} is not one")
        loader, device, fmt = run.loaders["train"], run.device, run.trainer.memory_format
        steps = min(steps, len(loader))
        bs, info = cfg.batch_size, run.task.info

        def convlab_loop() -> float:
            run.trainer.train_epoch(1, max_steps=warmup + 1)
            return run.trainer.train_epoch(2, max_steps=steps + 1)[1]["perf/images_per_s"]  # its first step is untimed

        bare_step = _fresh_model_step(run)
        x = torch.randn(bs, info.in_channels, info.image_size, info.image_size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, info.num_classes, (bs,), device=device)

        def bare_loop() -> float:
            return _timed(lambda: bare_step(x, y), warmup, steps, device)

        ref_step = _fresh_model_step(run)
        x_train, y_train = run.data.splits()["train"]
        transform = T.Compose(
            [T.RandomCrop(info.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(info.mean, info.std)]
        )
        reference = DataLoader(
            PILImages(x_train, y_train, transform), bs, shuffle=True, drop_last=True, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        )  # fmt: skip
        batches = iter(())

        def ref_batch() -> int:
            nonlocal batches
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(reference)
                xb, yb = next(batches)
            return ref_step(xb.to(device, non_blocking=True, memory_format=fmt), yb.to(device, non_blocking=True))

        def reference_loop() -> float:
            return _timed(ref_batch, warmup, steps, device)

        loops = {"convlab": convlab_loop, "bare": bare_loop, "reference": reference_loop}
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(repeats):
            for name, loop in loops.items():
                rates[name].append(loop())
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "config": {
            "model": cfg.model.get("name"), "data": cfg.data.get("name"), "device": str(device), "batch_size": bs,
            "precision": run.task.precision.kind, "channels_last": fmt == torch.channels_last, "compile": bool(cfg.trainer.compile),
            "steps": steps, "warmup": warmup, "repeats": repeats, "workers": workers,
        },  # fmt: skip
        "machine": {
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },  # fmt: skip
        "images_per_s": med,
        "runs": rates,
        "ratios": {"1/2": med["convlab"] / med["bare"], "1/3": med["convlab"] / med["reference"]},
    }


def format_table(r: dict[str, Any]) -> str:
    """The benchmark as a text table."""
    c, m = r["config"], r["machine"]
    where = m["gpu"] or f"{m['cpu_threads']} CPU threads"
    lines = [
        f"convlab bench: {c['model']} on {c['data']}, {c['device']} ({where}), batch {c['batch_size']}, {c['precision']}, "
        f"channels_last={c['channels_last']}, compile={c['compile']}, torch {m['torch']}",
        f"{c['steps']} timed steps after {c['warmup']} warm-up, median of {c['repeats']}; loop 3 with {c['workers']} workers",
        "",
        f"{'loop':<40}{'images/s':>10}   runs",
    ]
    for name, title in LOOPS.items():
        runs = ", ".join(f"{v:.0f}" for v in r["runs"][name])
        lines.append(f"{title:<40}{r['images_per_s'][name]:>10.0f}   {runs}")
    lines += ["", f"ratio 1/2 = {r['ratios']['1/2']:.3f}    ratio 1/3 = {r['ratios']['1/3']:.2f}"]
    return "\n".join(lines)


def write_json(r: dict[str, Any], path: str) -> None:
    """The benchmark as JSON at `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(r, indent=2) + "\n")
