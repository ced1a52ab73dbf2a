"""The one training loop. It knows epochs, devices, timing and checkpoints, never the task's kind."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from convlab.checkpoint import CKPT_DIR, copy_atomic, rng_state, save_checkpoint, set_rng_state
from convlab.errors import ConvlabError
from convlab.logging import RunLogger
from convlab.tasks.base import Task


def _prefixed(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items()}


class Trainer:
    """Runs `task` for `epochs` over the loaders; evaluates, logs and checkpoints after each epoch."""

    def __init__(
        self,
        task: Task,
        loaders: dict[str, Any],
        logger: RunLogger,
        device: torch.device,
        epochs: int,
        out_dir: Path,
        config: dict[str, Any],
        log_every: int = 50,
        eval_every: int = 1,
        is_main: bool = True,
    ) -> None:
        self.task, self.loaders, self.logger, self.device = task, loaders, logger, device
        self.epochs, self.log_every, self.eval_every = epochs, log_every, eval_every
        self.ckpt_dir, self.config, self.is_main = Path(out_dir) / CKPT_DIR, config, is_main
        self.epoch, self.history, self.elapsed = 0, [], 0.0
        metric, mode = task.monitor
        self.best: dict[str, Any] = {"metric": f"val/{metric}", "mode": mode, "value": None, "epoch": None}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizers, schedules, RNGs, history, best, time."""
        self.task.load_state_dict(state["task"])
        set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best, self.elapsed = dict(state["best"]), state["elapsed"]

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then evaluate on the test split; returns the final results."""
        for epoch in range(self.epoch + 1, self.epochs + 1):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **self.task.scalars()}
            train_metrics, perf = self._train_epoch(epoch)
            row |= _prefixed("train", train_metrics)
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                row |= _prefixed("val", self.task.evaluate(batches_on(self.loaders["val"], self.device)))
            row |= perf
            self.elapsed += time.perf_counter() - started
            self.history.append(row)
            self.logger.log_epoch(epoch, self.epochs, row, self.history)
            self.epoch = epoch
            self._checkpoint(self._improved(row))
        test = self.task.evaluate(batches_on(self.loaders["test"], self.device), final=True)
        self.logger.log_final(self.epochs, "test", test)
        return test

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        self.task.train(True)
        loader = self.loaders["train"]
        loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        start = time.perf_counter()
        bar = self.logger.progress(loader, len(loader), f"epoch {epoch}/{self.epochs}")
        for step, batch in enumerate(batches_on(bar, self.device), 1):
            n = batch[0].shape[0]
            for key, value in self.task.train_step(batch).items():
                sums[key] = sums[key] + value * n if key in sums else value * n
            seen += n
            # Reading a device value waits for the device: do it once per log interval, not per step.
            if step % self.log_every == 0:
                means = self._means(sums, seen, epoch, step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()} | {"img/s": f"{seen / (time.perf_counter() - start):.0f}"})
        means = self._means(sums, seen, epoch, len(loader))
        seconds = time.perf_counter() - start
        return means, {"perf/images_per_s": seen / seconds, "perf/epoch_s": seconds}

    def _means(self, sums: dict[str, torch.Tensor], seen: int, epoch: int, step: int) -> dict[str, float]:
        means = {k: (v / seen).item() for k, v in sums.items()}
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            last = self.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint is {last} (epoch {self.epoch})" if self.epoch else "no checkpoint was written yet"
            raise ConvlabError(f"training diverged: train/{', train/'.join(bad)} = {list(bad.values())} in epoch {epoch} by step {step}; {kept}")
        return means

    def _improved(self, row: dict[str, Any]) -> bool:
        value = row.get(self.best["metric"])
        if value is None:
            return False
        old = self.best["value"]
        better = old is None or (value > old if self.best["mode"] == "max" else value < old)
        if better:
            self.best |= {"value": value, "epoch": row["epoch"]}
        return better

    def _checkpoint(self, improved: bool) -> None:
        """last.pt every epoch; best.pt whenever the monitored validation metric improved."""
        if not self.is_main:
            return
        state = {
            "epoch": self.epoch,
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "elapsed": self.elapsed,
            "config": self.config,
        }
        last = self.ckpt_dir / "last.pt"
        save_checkpoint(state, last)
        if improved:
            copy_atomic(last, self.ckpt_dir / "best.pt")


def batches_on(loader: Iterable, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """Each batch of `loader`, moved to `device` (a no-op for data that already lives there)."""
    for batch in loader:
        yield tuple(t.to(device, non_blocking=True) for t in batch)
