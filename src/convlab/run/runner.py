"""`train(cfg)`: build data, task and trainer from a composed config, run, and write the results."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig

from convlab.core import interrupts
from convlab.core.build import build, resolve_device, to_dict
from convlab.core.errors import ConfigError, ConvlabError, Diverged
from convlab.core.io import FULL, WriteError
from convlab.core.perf import Precision, keep_freed_memory, resolve_speed_settings
from convlab.run import distributed, hparams, resume
from convlab.run.prepare import Prepared, prepare_config
from convlab.run.rundir import RunDir, resume_command
from convlab.run.runlog import RunLogger
from convlab.run.trainer import Trainer, TrainerSettings
from convlab.tasks.base import Task, numbers_only

log = logging.getLogger("convlab")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed the global RNGs (initialisation, dropout); optionally forbid nondeterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # Only when it changes something: in torch 2.14 the call imports the compiler stack (~0.9 s, ~150 MiB).
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # autotuned conv kernels (CUDA only)


@dataclasses.dataclass
class Run:
    """One training job, assembled: what `train` runs and `convlab bench` times."""

    cfg: DictConfig
    device: torch.device
    data: Any
    loaders: dict[str, Any]
    task: Task
    trainer: Trainer
    logger: RunLogger
    state: dict[str, Any] | None
    macs: int | None = None  # multiply-adds of one image's forward pass (classifiers)
    run_dir: RunDir | None = None  # where this process writes summary.json (None: it writes nothing)

    def write_summary(self, summary: dict[str, Any], last_resort: bool = False) -> None:
        """summary.json, from the process that writes the run's files (see RunDir.write_summary)."""
        if self.run_dir is not None:
            self.run_dir.write_summary(summary, last_resort)


def setup(job: DictConfig | Prepared, write: bool = True) -> Run:
    """Build data, task, logger and trainer for a prepared run (or a composed config, prepared here).

    With `write`, the run folder is locked for this process and may not already hold another run.
    Under torchrun (WORLD_SIZE > 1) each process trains on its shard of every epoch with
    DistributedDataParallel; `batch_size` is the global batch, split evenly over the processes.
    """
    rank, local_rank, world_size = distributed.world()
    owned = not isinstance(job, Prepared)
    if owned:
        job = prepare_config(job, write=write and rank == 0)
    if job.removed_temp_files:
        log.info(
            "removed %d temporary file(s) left by an interrupted write in %s", job.removed_temp_files, job.cfg.out_dir
        )
    try:
        return _assemble(job, write, rank, local_rank, world_size)
    except BaseException:  # a failed start leaves no lock behind (a notebook's process lives on)
        if owned:
            job.release()
        raise


def _fp16_refusal(task: dict[str, Any]) -> str:
    """What the task class says against fp16 loss scaling with its settings (what `auto` may pick on older GPUs)."""
    try:
        cls = hydra.utils.get_class(task["_target_"])
    except (ImportError, ValueError):
        return ""  # build() names the bad target in one line just below
    return cls.fp16_refusal(task) if issubclass(cls, Task) else ""


def _assemble(job: Prepared, write: bool, rank: int, local_rank: int, world_size: int) -> Run:
    """setup()'s building, once the folder is checked and locked: device, data, task, logger, trainer."""
    cfg, state, out_dir = job.cfg, job.plan.state if job.plan else None, Path(job.cfg.out_dir)
    device = resolve_device(cfg.device, local_rank if world_size > 1 else None)
    if device.type == "cpu":
        keep_freed_memory()
    if cfg.trainer.sync_bn and device.type != "cuda":
        raise ConfigError(
            f"trainer.sync_bn=true needs CUDA devices (SyncBatchNorm has no {device.type} kernels); drop it"
        )
    if world_size > 1 and cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must split evenly over {world_size} processes"
        )
    config = to_dict(cfg)
    precision, why, channels_last = resolve_speed_settings(cfg.trainer, device, _fp16_refusal(config["task"]))
    seed_everything(cfg.seed, cfg.deterministic)

    data = build(cfg.data, "data")
    info = data.info
    loaders = data.loaders(cfg.batch_size, device, seed=cfg.seed, rank=rank, world_size=world_size, training=True)
    steps_per_epoch = min(len(loaders["train"]), cfg.trainer.limit_train_batches or len(loaders["train"]))
    task = build(
        cfg.task, "task",
        model=config["model"], optim=config["optim"], sched=config["sched"], info=info, device=device,
        total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
        precision=Precision(precision, device, why),
    )  # fmt: skip
    macs = task.macs()  # before compile and DDP wrap: counting runs one forward pass
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for model in task.models.values():
        model.to(memory_format=memory_format)  # in place: the optimizers keep their parameters
        if cfg.trainer.compile:
            model.compile()
    if world_size > 1:
        task.distribute(lambda m: distributed.wrap(m, device, cfg.trainer.sync_bn))
        torch.manual_seed(cfg.seed + rank)  # same initial weights everywhere, but each rank its own dropout
    logger = RunLogger(
        out_dir, enabled=write and rank == 0, purge_step=state["epoch"] * steps_per_epoch + 1 if state else None
    )
    try:
        meta = {"config": config, "data_info": dataclasses.asdict(info)}
        settings = TrainerSettings.from_config(
            cfg, memory_format=memory_format, rank=rank, world_size=world_size, save=write
        )
        trainer = Trainer(task, loaders, logger, device, RunDir(out_dir), meta, settings)
        if state:
            try:
                trainer.restore(state)
            except ConvlabError as e:
                raise ConvlabError(f"checkpoint {job.plan.checkpoint}: {e}") from None
            log.info("resuming %s after epoch %d of %d", out_dir, trainer.epoch, cfg.epochs)
            if job.plan.run_dir is None:
                log.info(
                    "%s is not inside a run folder: a new run in %s branches from it", job.plan.checkpoint, out_dir
                )
    except BaseException:
        logger.close()  # its event file's writer thread, in a process that lives on
        raise
    return Run(
        cfg, device, data, loaders, task, trainer, logger, state, macs, RunDir(out_dir) if logger.enabled else None
    )


def train(
    job: DictConfig | Prepared, command: str | None = None, swept: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one training job; returns the summary also written to summary.json.

    `job` is a prepared run (`run.prepare`), or a composed config, prepared (and released) here.
    `command` is what the user typed, for the run's TensorBoard text and summary; `swept` the values
    of the keys its sweep varies (shown first in TensorBoard's HPARAMS). Resuming a
    finished run (or one that stopped early) changes nothing and returns its summary. However the
    job ends (Ctrl-C, SIGTERM, an error), summary.json is left saying so, never "running".
    """
    with interrupts.handled():  # SIGTERM (SLURM's time limit, docker stop, kill) ends the run like Ctrl-C
        owned = not isinstance(job, Prepared)
        if owned:
            job = prepare_config(job, write=distributed.world()[0] == 0)
        try:
            if job.finished:
                log.info("%s; nothing to do", resume.finished_text(job.plan))
                return resume.finished_summary(job.plan)
            return _run(setup(job), job.plan, command or _hydra_command(), swept or {})
        finally:
            if owned:
                job.release()


def _hydra_command() -> str:
    """The job's command rebuilt from Hydra's record of its overrides (a sweep job's own values)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "(built in Python: train(cfg))"
    return shlex.join(["convlab", "train", *HydraConfig.get().overrides.task])


def _run(run: Run, plan: resume.Plan | None, command: str, swept: dict[str, Any]) -> dict[str, Any]:
    """Fit the run; however it ends, its summary.json says how (never "running")."""
    started = time.perf_counter()
    cfg, trainer, task = run.cfg, run.trainer, run.task
    summary: dict[str, Any] = {
        "status": "running",
        "started": datetime.now().isoformat(timespec="milliseconds"),
        "model": cfg.model.get("name"),
        "data": cfg.data.get("name"),
        "parameters": task.num_parameters(),
        "macs": run.macs,
        "device": str(run.device),
        "precision": task.precision.kind,
        "precision_reason": task.precision.reason,
        "out_dir": cfg.out_dir,
        "command": command,
    }
    if plan and plan.run_dir is None:
        summary["branched_from"] = {"checkpoint": str(plan.checkpoint), "epoch": plan.state["epoch"]}
    try:
        return _fit(run, summary, started, swept)
    except BaseException as e:
        status = (
            "interrupted" if isinstance(e, KeyboardInterrupt) else "diverged" if isinstance(e, Diverged) else "failed"
        )
        ended = {"status": status, "error": str(e) or type(e).__name__, "epochs": trainer.epoch}
        if trainer.run_dir.last.is_file():
            ended["resume"] = trainer.run_dir.resume_command()
        with contextlib.suppress(Exception):  # a deleted run folder, say: the error itself still reaches the user
            run.write_summary(summary | ended, last_resort=True)
        with contextlib.suppress(Exception):
            if status != "interrupted":  # an interrupted run goes on when resumed: TensorBoard keeps it running
                run.logger.log_hparams([hparams.end(status)])
        with contextlib.suppress(Exception):
            run.logger.close()
        if isinstance(e, WriteError) and "resume" in ended:  # the run can go on from its last checkpoint
            then = "free some space, then continue" if e.errno in FULL else "continue"
            raise WriteError(f"{e}; the last checkpoint is intact: {then} with: {ended['resume']}", e.errno) from None
        raise


def _fit(run: Run, summary: dict[str, Any], started: float, swept: dict[str, Any]) -> dict[str, Any]:
    """Train, test and write the final summary and hparams."""
    cfg, trainer, logger, task = run.cfg, run.trainer, run.logger, run.task
    run.write_summary(summary)
    sizes = " / ".join(f"{len(run.loaders[s].labels)} {s}" for s in ("train", "val", "test"))
    n = torch.get_num_threads()
    threads = f" ({n} thread{'s' * (n != 1)})" if run.device.type == "cpu" else ""
    macs = f", {run.macs / 1e6:,.1f} M MACs per image" if run.macs else ""
    log.info("%s on %s: %s parameters%s, %s images, device %s%s, precision %s, output %s",
             summary["model"], summary["data"], f"{summary['parameters']:,}", macs, sizes,
             run.device, threads, task.precision.describe(), cfg.out_dir)  # fmt: skip
    logger.describe_run(summary["command"], trainer.meta["config"], task.charts, trainer.epoch)
    chosen = hparams.choose(trainer.meta["config"], swept, task.precision.kind)
    logger.log_hparams(hparams.start(chosen, set(swept), list(task.hparam_metrics)))  # shown as running from now
    test = trainer.fit()
    checksums = trainer.checksums
    final = trainer.history[-1] if trainer.history else {}
    if trainer.stopped:
        summary |= {
            "status": "stopped",
            "epochs": trainer.epoch,
            "best": trainer.best,
            "final": final,
            "resume": resume_command(cfg.out_dir),
        }
        run.write_summary(summary)
        logger.close()
        log.info(
            "stopped after epoch %d of %d (trainer.stop_after); continue with: %s",
            trainer.epoch,
            cfg.epochs,
            summary["resume"],
        )
        return summary
    if trainer.early_stop.patience:
        summary["early_stop"] = (
            dataclasses.asdict(trainer.early_stop)
            | {"stopped": bool(trainer.early_stopped)}
            | (trainer.early_stopped or {})
        )
        if trainer.early_stopped and trainer.is_main:  # the other ranks neither test nor log
            log.info("stopped early after epoch %d of %d: %s; testing the %s weights (epoch %d)",
                     trainer.epoch, cfg.epochs, trainer.early_stopped["reason"],
                     trainer.tested["which"], trainer.tested["epoch"])  # fmt: skip
    if checksums:
        summary["ddp"] = {
            "world_size": trainer.world_size,
            "param_checksums": checksums,
            "replicas_in_sync": len(set(checksums)) == 1,
        }
    summary |= {
        "status": "ok",
        "epochs": trainer.epoch,
        "best": trainer.best,
        "final": final,
        "test": numbers_only(test),
        "test_weights": trainer.tested,
        "images_per_s": final.get("perf/images_per_s"),
        "wall_time_s": (run.state["elapsed"] if run.state else 0.0) + time.perf_counter() - started,
        "ended": datetime.now().isoformat(timespec="milliseconds"),
    }
    logger.log_hparams([hparams.end("ok")])
    run.write_summary(summary)
    logger.close()
    best = trainer.best
    best_text = (
        "" if best["value"] is None else f"  (best {best['metric']} {best['value']:.4f} at epoch {best['epoch']})"
    )
    log.info(
        "test  %s%s  -> %s",
        "  ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)),
        best_text,
        cfg.out_dir,
    )
    return summary
