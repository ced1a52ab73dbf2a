"""The one training loop. It knows epochs, devices, timing and checkpoints, never the task's kind."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig

from convlab.core import interrupts
from convlab.core.build import to_dict
from convlab.core.errors import ConfigError, ConvlabError, Diverged
from convlab.core.io import copy_atomic
from convlab.core.perf import sync
from convlab.data.loader import batches_on
from convlab.run.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from convlab.run.distributed import all_reduce, gather
from convlab.run.rundir import RunDir
from convlab.run.runlog import RunLogger
from convlab.run.steplog import StepLog, resolve_log_every
from convlab.run.stopping import EarlyStop
from convlab.tasks.base import Task

log = logging.getLogger("convlab")


def _prefixed(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items()}


@dataclass(frozen=True)
class TrainerSettings:
    """The training loop's run-wide settings: the config's `epochs` and `trainer` section, and this process's place."""

    epochs: int
    log_every: int | str = "auto"  # steps between step-curve points; the Trainer resolves auto to a number
    eval_every: int = 1  # epochs between validation passes
    memory_format: torch.memory_format = torch.contiguous_format  # of the images fed to the models
    stop_after: int | None = None  # end the session after this many epochs, for resume= to continue
    limit_train_batches: int | None = None  # train on each epoch's first N batches only
    early_stop: dict[str, Any] | None = None  # trainer.early_stop as configured (patience, min_delta)
    rank: int = 0
    world_size: int = 1
    save: bool = True  # write checkpoints (rank 0 only); off for runs built only to be timed

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        *,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        world_size: int = 1,
        save: bool = True,
    ) -> TrainerSettings:
        """From a composed config plus what it cannot say: memory format, process rank, world size, whether to write."""
        t = cfg.trainer
        return cls(
            epochs=cfg.epochs, log_every=t.log_every, eval_every=t.eval_every, memory_format=memory_format,
            stop_after=t.stop_after, limit_train_batches=t.limit_train_batches,
            early_stop=to_dict(t.get("early_stop")),  # absent in configs saved before it existed
            rank=rank, world_size=world_size, save=save,
        )  # fmt: skip


class Trainer:
    """Runs `task` for `settings.epochs` over the loaders; evaluates, logs and checkpoints after each epoch.

    `meta` (the config, the data's shape) goes into every checkpoint, so `convlab eval`
    and `convlab sample` can rebuild the run from the checkpoint alone. Every `log_every` steps the
    running sums make a step point (step/train/..., step/lr, on the global-step axis); the points
    are read from the device together, rarely (StepLog), and that read feeds the progress bar.
    Per-epoch values use the epoch axis.
    """

    def __init__(
        self,
        task: Task,
        loaders: dict[str, Any],
        logger: RunLogger,
        device: torch.device,
        run_dir: RunDir,
        meta: dict[str, Any],
        settings: TrainerSettings,
    ) -> None:
        self.task, self.loaders, self.logger, self.device = task, loaders, logger, device
        self.run_dir, self.meta = run_dir, meta
        # Under DDP every rank trains on its shard; rank 0 alone evaluates, logs and saves.
        self.is_main = settings.rank == 0
        self.epoch, self.history, self.elapsed = 0, [], 0.0
        self.steps_per_epoch = min(len(loaders["train"]), settings.limit_train_batches or len(loaders["train"]))
        # log_every=auto follows the epoch's length (after limit_train_batches): resolved once, here.
        self.settings = replace(settings, log_every=resolve_log_every(settings.log_every, self.steps_per_epoch))
        self.stopped = False  # the session ended at stop_after
        metric, mode = task.monitor
        self.best: dict[str, Any] = {"metric": f"val/{metric}", "mode": mode, "value": None, "epoch": None}
        self.early_stop = EarlyStop.from_config(settings.early_stop, self.best["metric"], mode)
        if self.early_stop.patience and not task.monitor_available:
            raise ConfigError(
                f"trainer.early_stop.patience={self.early_stop.patience} needs the validation metric "
                f"{self.early_stop.metric}, which this run does not compute; drop it"
            )
        self.early_stopped: dict[str, Any] | None = None  # when and why the run stopped early
        self.tested: dict[str, Any] = {}  # which weights the test pass used
        self.checksums: list[float] | None = None  # each rank's parameter sum after training (DDP)
        task.attach(loaders)

    @property
    def world_size(self) -> int:
        """How many processes train the run, one shard each."""
        return self.settings.world_size

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizers, schedules, RNGs, history, best, time."""
        self.task.load_state_dict(state["task"])
        try:
            self.task.precision.load_state_dict(state["precision"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ConvlabError(f"the checkpoint's loss-scaler state is malformed ({type(e).__name__}: {e})") from None
        rngs = state["rng"]  # one per rank; a run resumed on another number of processes takes rank 0's
        if not rngs:
            raise ConvlabError("the checkpoint's random-number state is malformed (expected one entry per process)")
        set_rng_state(rngs[self.settings.rank] if len(rngs) == self.world_size else rngs[0])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best, self.elapsed = dict(state["best"]), state["elapsed"]

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then evaluate on the test split; returns the final results.

        With `stop_after=k`, the session ends after k epochs (checkpointed, `stopped` set, no
        test pass), for `resume=` to continue: a cluster job's time limit, say. A run that stops
        early (`early_stop`) is tested on its best checkpoint's weights; `tested` says which.
        """
        if self.epoch == 0 and self.is_main:
            self._log_real_images()
        first = self.epoch
        self.early_stopped = self._stop_verdict()  # a resumed run that had already stopped goes straight to its test
        for epoch in range(self.epoch + 1, self.settings.epochs + 1):
            if self.early_stopped:
                break
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **self.task.scalars()}
            train_metrics, perf = self.train_epoch(epoch, max_steps=self.settings.limit_train_batches)
            row |= _prefixed("train", train_metrics)
            images: dict[str, torch.Tensor] = {}
            if self.is_main and (epoch % self.settings.eval_every == 0 or epoch == self.settings.epochs):
                val = self.task.evaluate(self._on_device("val"))
                images = val.pop("images", {})
                row |= _prefixed("val", val)
            row |= perf
            self._check_finite(row)  # before the checkpoint: last.pt keeps the last good weights
            self.elapsed += time.perf_counter() - started
            # The epoch's events and its checkpoint are written whole: a resume purges the step curves
            # after the checkpoint (RunLogger's purge_step), and no Ctrl-C may leave an epoch's row without it.
            with interrupts.critical():
                self.history.append(row)
                self.logger.log_epoch(epoch, self.settings.epochs, row, self.history)
                self.logger.log_images(images, epoch, per_epoch=True)
                self.epoch = epoch
                try:
                    self._checkpoint(self._improved(row))
                except BaseException:
                    self.epoch = epoch - 1  # what last.pt still holds, for the summary
                    raise
            self.early_stopped = self._stop_verdict()
            stop_after = self.settings.stop_after
            if not self.early_stopped and stop_after and epoch - first >= stop_after and epoch < self.settings.epochs:
                self.stopped = True
                return {}
        self.checksums = (
            self.replica_checksums() if self.world_size > 1 else None
        )  # of the trained weights, before best.pt's
        if not self.is_main:
            return {}
        self.tested = self._restore_best() if self.early_stopped else {"which": "last", "epoch": self.epoch}
        test = self.task.evaluate(self._on_device("test"), final=True)
        self.logger.log_final(self.epoch, "test", test)
        return test

    def replica_checksums(self) -> list[float]:
        """Each rank's sum of all parameters: equal on every rank when DDP kept the replicas in sync."""
        local = sum(p.detach().double().sum().item() for m in self.task.models.values() for p in m.parameters())
        return gather(local)

    def _stop_verdict(self) -> dict[str, Any] | None:
        """Whether the run stops early now (rank 0 decides: it alone validates; the others follow)."""
        verdict = self.early_stop.verdict(self.history) if self.is_main else None
        if self.world_size > 1 and self.early_stop.patience:
            if not all_reduce(torch.tensor(float(verdict is not None), device=self.device), op="max").item():
                return None
            verdict = verdict or {"epoch": self.epoch, "reason": "rank 0 stopped early"}
        return verdict

    def _restore_best(self) -> dict[str, Any]:
        """The best checkpoint's weights back in place for the test pass; what was tested, for summary.json."""
        best = self.run_dir.best
        try:
            state = load_checkpoint(best)  # this run's own file, but read through the same checks as any
            self.task.load_state_dict(state["task"])
        except ConvlabError as e:
            log.warning("testing the last weights (epoch %d) instead of the best: %s", self.epoch, e)
            return {"which": "last", "epoch": self.epoch, "why": str(e)}
        return {"which": "best", "epoch": state["epoch"], "checkpoint": str(best)}

    def _log_real_images(self) -> None:
        """A grid of training images as the model sees them, once at the start of a run."""
        loader = self.loaders["train"]
        loader.set_epoch(1)
        x = next(iter(loader))[0][:64]
        self.logger.log_images({"real": loader.denormalize(x)}, 0, per_epoch=False)

    def _on_device(self, split: str) -> Iterator[tuple[torch.Tensor, ...]]:
        return batches_on(self.loaders[split], self.device, self.settings.memory_format)

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """One pass over the train loader (or its first `max_steps` batches): mean metrics and timings.

        images/s leaves out each epoch's first step, which carries one-off costs (torch.compile,
        cuDNN autotuning, worker start-up); perf/first_step_s reports that step on its own.
        """
        self.task.train(True)
        loader = self.loaders["train"]
        loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}  # per key: a task may report some values on some steps only
        bad_step = torch.zeros((), dtype=torch.long, device=self.device)  # first step with a NaN/Inf, 0 if none
        seen = timed = step = 0
        steplog = StepLog(self.settings.log_every)
        start = time.perf_counter()
        bar = self.logger.progress(
            loader, min(len(loader), max_steps or len(loader)), f"epoch {epoch}/{self.settings.epochs}"
        )
        for step, batch in enumerate(batches_on(bar, self.device, self.settings.memory_format), 1):
            n = batch[0].shape[0]
            out = self.task.train_step(batch)
            for key, value in out.items():
                sums[key] = sums[key] + value * n if key in sums else value * n  # out of place: StepLog keeps refs
                counts[key] = counts.get(key, 0) + n
            finite = torch.stack([v.isfinite() for v in out.values()]).all()
            bad_step = torch.where(finite | (bad_step > 0), bad_step, step)  # stays on the device: no sync
            seen += n
            if step == 1:
                sync(self.device)
                first_step_s = time.perf_counter() - start
                timed_start = time.perf_counter()
            else:
                timed += n
            if step % steplog.log_every == 0:
                steplog.mark(step, sums, counts, self.task.scalars())  # on the device: no sync
            # Reading a device value waits for the device: the points are read together, every read_every steps.
            if step % steplog.read_every == 0:
                self._read(steplog, epoch, bad_step)
                bar.set_postfix(
                    {k: f"{s / c:.4g}" for k, (s, c) in steplog.totals.items()}
                    | {"img/s": f"{timed / (time.perf_counter() - timed_start):.0f}"}
                )
            if step == max_steps:
                break
        if step % steplog.log_every:
            steplog.mark(step, sums, counts, self.task.scalars())  # the epoch's steps after its last full interval
        if steplog.read_at != step:
            self._read(steplog, epoch, bad_step)  # waits for the device
        means = {k: s / c for k, (s, c) in steplog.totals.items()}
        end = time.perf_counter()
        rate = timed / (end - timed_start) if timed else seen / (end - start)
        # Every rank trains its equal shard at the same time: the run's rate is world_size times one rank's.
        return means, {
            "perf/images_per_s": rate * self.world_size,
            "perf/epoch_s": end - start,
            "perf/first_step_s": first_step_s,
        }

    def _read(self, steplog: StepLog, epoch: int, bad_step: torch.Tensor) -> None:
        """Write the pending step points (one device read, all ranks); stop the run at the first NaN/Inf a rank saw."""
        read, bad = steplog.read(bad_step)
        first = (epoch - 1) * self.steps_per_epoch
        for step, values in read:
            if not bad or step < bad:  # the curve up to a divergence, as when each point was read on its own
                self.logger.log_steps(first + step, values)
        if bad:
            means = {k: s / c for k, (s, c) in steplog.totals.items()}
            values = ", ".join(f"train/{k} = {v}" for k, v in means.items() if not math.isfinite(v))
            raise self._diverged(f"epoch {epoch} at step {bad}: {values}")

    def _check_finite(self, row: dict[str, Any]) -> None:
        """A non-finite train or validation value ends the run as diverged, naming the epoch and the value."""
        bad = [f"{k} = {v}" for k, v in row.items() if k.startswith(("train/", "val/")) and not math.isfinite(v)]
        if bad:
            raise self._diverged(f"epoch {row['epoch']}: {', '.join(bad)}")

    def _diverged(self, where: str) -> Diverged:
        """The one line a divergence ends with: where, the value, the checkpoint kept, and what to try."""
        last = self.run_dir.last
        kept = f"the last good checkpoint is {last} (epoch {self.epoch})" if self.epoch else "no checkpoint was written"
        rates = ", ".join(f"{k} {v:.3g}" for k, v in self.task.scalars().items() if k.startswith("lr"))
        return Diverged(f"training diverged in {where}; {kept}; try a lower optim.lr (it was {rates or 'as set'})")

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
        rngs = gather(rng_state())  # every rank's, so a resumed DDP run draws what it would have drawn
        if not (self.is_main and self.settings.save):
            return
        state = {
            "epoch": self.epoch,
            "task": self.task.state_dict(),
            "precision": self.task.precision.state_dict(),
            "rng": rngs,
            "history": self.history,
            "best": self.best,
            "elapsed": self.elapsed,
            **self.meta,
        }
        last = self.run_dir.last
        save_checkpoint(state, last)
        if improved:
            copy_atomic(last, self.run_dir.best)
