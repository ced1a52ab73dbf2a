"""`convlab bench`: training images/s of convlab's loop against a bare loop and a user's own DataLoader script."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict

from convlab.core.build import build, to_dict
from convlab.core.errors import ConvlabError
from convlab.core.io import write_atomic
from convlab.core.perf import Precision, sync
from convlab.run.prepare import prepare_config
from convlab.run.runner import Run, setup
from convlab.run.schema import validate

LOOPS = {
    "convlab": "1 convlab train loop",
    "bare": "2 bare PyTorch loop, data on device",
    "reference": "3 plain script, own process",
}


def _fresh_model_step(run: Run) -> Callable[[torch.Tensor, torch.Tensor], int]:
    """One plain training step (returning its batch size) of a new model and optimizer like the run's."""
    info, cfg, task = run.task.info, run.cfg, run.task
    model = build(
        cfg.model, "model", num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size
    )
    model.to(run.device, memory_format=run.trainer.settings.memory_format)
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


def _plain_script(run: Run, tmp: Path, workers: int, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Loop 3: convlab.app.baseline (scripts/plain_torch_baseline.py) timing the same model in its own process.

    A user's script gets what that process gets: glibc's default allocator settings, per-image
    PIL transforms in its own DataLoader workers, the default thread count. The run's training
    images go to it as an .npz; it times `repeats` measurements of `steps` steps itself and
    returns {"images_per_s": [...], "pid": ...}.
    """
    x, y = run.data.splits()["train"]
    info, cfg = run.task.info, run.cfg
    data = tmp / "train.npz"
    np.savez(data, images=x.numpy(), labels=y.numpy(), mean=np.array(info.mean), std=np.array(info.std))
    cmd = [
        sys.executable, "-m", "convlab.app.baseline", "--data", str(data), "--model", json.dumps(to_dict(cfg.model)),
        "--batch-size", str(cfg.batch_size), "--workers", str(workers), "--device", str(run.device),
        "--precision", run.task.precision.kind, "--bench", f"{steps},{warmup},{repeats}",
        "--out", str(tmp / "unused.pt"),
        *(["--channels-last"] if run.trainer.settings.memory_format == torch.channels_last else []),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConvlabError(
            f"bench loop 3 (python -m convlab.app.baseline) failed with exit code {proc.returncode}: {last}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Measure the three loops `cfg.bench.repeats` times, interleaved; returns medians, spreads and ratios."""
    b = cfg.bench
    validate(cfg, "bench")
    steps, warmup, repeats = b.steps, b.warmup, b.repeats
    workers = b.workers if b.workers is not None else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        with open_dict(cfg):
            cfg.out_dir = tmp
        run = setup(
            prepare_config(cfg, write=False, validated=True), write=False
        )  # validated just above, as a bench config
        if not run.task.inspectable:  # a classifier: one model, images in, class scores out
            raise ConvlabError(f"convlab bench measures classifiers; model={cfg.model.get('name')} is not one")
        loader, device, fmt = run.loaders["train"], run.device, run.trainer.settings.memory_format
        steps = min(steps, len(loader))
        bs, info = cfg.batch_size, run.task.info

        def convlab_loop() -> float:
            run.trainer.train_epoch(1, max_steps=warmup + 1)
            return run.trainer.train_epoch(2, max_steps=steps + 1)[1]["perf/images_per_s"]  # its first step is untimed

        bare_step = _fresh_model_step(run)
        x = torch.randn(bs, info.in_channels, info.image_size, info.image_size, device=device).contiguous(
            memory_format=fmt
        )
        y = torch.randint(0, info.num_classes, (bs,), device=device)

        def bare_loop() -> float:
            return _timed(lambda: bare_step(x, y), warmup, steps, device)

        loops = {"convlab": convlab_loop, "bare": bare_loop}
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(repeats):
            for name, loop in loops.items():
                rates[name].append(loop())
        plain = _plain_script(
            run, Path(tmp), workers, steps, warmup, repeats
        )  # after loops 1-2: it needs the cores to itself
        rates["reference"] = plain["images_per_s"]
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "config": {
            "model": cfg.model.get("name"),
            "data": cfg.data.get("name"),
            "device": str(device),
            "batch_size": bs,
            "precision": run.task.precision.kind,
            "precision_reason": run.task.precision.reason,
            "channels_last": fmt == torch.channels_last,
            "compile": bool(cfg.trainer.compile),
            "steps": steps,
            "warmup": warmup,
            "repeats": repeats,
            "workers": workers,
        },  # fmt: skip
        "machine": {
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },  # fmt: skip
        "images_per_s": med,
        "runs": rates,
        "ratios": {"1/2": med["convlab"] / med["bare"], "1/3": med["convlab"] / med["reference"]},
        "reference_pid": plain["pid"],
    }


def format_table(r: dict[str, Any]) -> str:
    """The benchmark as a text table."""
    c, m = r["config"], r["machine"]
    where = m["gpu"] or f"{m['cpu_threads']} CPU threads"
    lines = [
        f"convlab bench: {c['model']} on {c['data']}, {c['device']} ({where}), "
        f"batch {c['batch_size']}, {c['precision']}, "
        f"channels_last={c['channels_last']}, compile={c['compile']}, torch {m['torch']}",
        f"precision {c['precision']}: {c['precision_reason']}",
        f"{c['steps']} timed steps after {c['warmup']} warm-up, median of {c['repeats']}; "
        "loops 1-2 interleaved in this process,",
        "loop 3 in its own process (python -m convlab.app.baseline: glibc's default allocator, SGD, "
        f"{c['workers']} DataLoader workers)",
        "",
        f"{'loop':<40}{'images/s':>10}   runs",
    ]
    for name, title in LOOPS.items():
        runs = ", ".join(f"{v:.0f}" for v in r["runs"][name])
        lines.append(f"{title:<40}{r['images_per_s'][name]:>10.0f}   {runs}")
    lines += ["", f"ratio 1/2 = {r['ratios']['1/2']:.3f}    ratio 1/3 = {r['ratios']['1/3']:.2f}"]
    return "\n".join(lines)


def write_json(r: dict[str, Any], path: str) -> None:
    """The benchmark as JSON at `path`, written atomically (a link there is replaced, not written through)."""
    text = json.dumps(r, indent=2) + "\n"
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))
