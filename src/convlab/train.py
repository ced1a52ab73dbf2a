"""`train(cfg)`: build data, task and trainer from a composed config, run, and write the results."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from convlab import distributed
from convlab.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from convlab.config import build, check_config, resolve_device, to_dict
from convlab.errors import ConfigError
from convlab.logging import RunLogger, flatten
from convlab.perf import Precision, keep_freed_memory, resolve_speed_settings
from convlab.tasks.base import Task, numbers_only
from convlab.trainer import Trainer

log = logging.getLogger("convlab")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed the global RNGs (initialisation, dropout); optionally forbid nondeterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # autotuned conv kernels (CUDA only)


def hparams_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as flat hyperparameters for TensorBoard, `_target_`s and paths of the run left out."""
    flat = flatten({k: v for k, v in cfg.items() if k not in ("out_dir", "resume")})
    hp = {k.removesuffix("/name"): v for k, v in flat.items() if not k.rsplit("/", 1)[-1].startswith("_")}
    return {k: str(v) if isinstance(v, (list, type(None))) else v for k, v in hp.items()}


def _resume_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The checkpoint's own config and state; the device and session length are this run's, the folder the checkpoint's."""
    path = find_checkpoint(cfg.resume)
    state = load_checkpoint(path)
    saved = OmegaConf.create(state["config"])
    saved.device, saved.resume, saved.trainer.stop_after = cfg.device, cfg.resume, cfg.trainer.stop_after
    saved.out_dir = str(run_dir_of(path) or cfg.out_dir)
    return saved, state


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


def setup(cfg: DictConfig, write: bool = True) -> Run:
    """Build data, task, logger and trainer from a composed config (continuing its checkpoint with resume=).

    Under torchrun (WORLD_SIZE > 1) each process trains on its shard of every epoch with
    DistributedDataParallel; `batch_size` is the global batch, split evenly over the processes.
    """
    state = None
    if cfg.get("resume"):
        cfg, state = _resume_config(cfg)
    check_config(cfg)
    rank, local_rank, world_size = distributed.world()
    device = resolve_device(cfg.device, local_rank if world_size > 1 else None)
    if device.type == "cpu":
        keep_freed_memory()
    if cfg.trainer.sync_bn and device.type != "cuda":
        raise ConfigError(f"trainer.sync_bn=true needs CUDA devices (SyncBatchNorm has no {device.type} kernels); drop it")
    if world_size > 1 and cfg.batch_size % world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch and must split evenly over {world_size} processes")
    precision, channels_last = resolve_speed_settings(cfg.trainer, device)
    seed_everything(cfg.seed, cfg.deterministic)
    config = to_dict(cfg)

    data = build(cfg.data, "data")
    info = data.info
    loaders = data.loaders(cfg.batch_size, device, seed=cfg.seed, rank=rank, world_size=world_size)
    steps_per_epoch = len(loaders["train"])
    task = build(
        cfg.task, "task",
        model=config["model"], optim=config["optim"], sched=config["sched"], info=info, device=device,
        total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch, precision=Precision(precision, device),
    )  # fmt: skip
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for model in task.models.values():
        model.to(memory_format=memory_format)  # in place: the optimizers keep their parameters
        if cfg.trainer.compile:
            if not isinstance(cfg.trainer.compile, bool):
                raise ConfigError(f"trainer.compile={cfg.trainer.compile!r} is not allowed; choose one of: true, false")
            model.compile()
    if world_size > 1:
        task.distribute(lambda m: distributed.wrap(m, device, cfg.trainer.sync_bn))
        torch.manual_seed(cfg.seed + rank)  # same initial weights everywhere, but each rank its own dropout
    out_dir = Path(cfg.out_dir)
    logger = RunLogger(out_dir, enabled=write and rank == 0, purge_epoch=state["epoch"] + 1 if state else None)
    meta = {"config": config, "data_info": dataclasses.asdict(info)}
    trainer = Trainer(
        task, loaders, logger, device, cfg.epochs, out_dir, meta,
        log_every=cfg.trainer.log_every, eval_every=cfg.trainer.eval_every, memory_format=memory_format,
        stop_after=cfg.trainer.stop_after, rank=rank, world_size=world_size, save=write,
    )  # fmt: skip
    if state:
        trainer.restore(state)
        log.info("resuming %s after epoch %d of %d", out_dir, trainer.epoch, cfg.epochs)
    return Run(cfg, device, data, loaders, task, trainer, logger, state)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the summary also written to summary.json."""
    started = time.perf_counter()
    run = setup(cfg)
    cfg, trainer, logger, task = run.cfg, run.trainer, run.logger, run.task
    summary: dict[str, Any] = {
        "status": "running",
        "started": datetime.now().isoformat(timespec="milliseconds"),
        "model": cfg.model.get("name"),
        "data": cfg.data.get("name"),
        "parameters": task.num_parameters(),
        "device": str(run.device),
        "precision": task.precision.kind,
        "out_dir": cfg.out_dir,
    }
    logger.write_summary(summary)
    sizes = " / ".join(f"{len(run.loaders[s].labels)} {s}" for s in ("train", "val", "test"))
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' * (n != 1)}" if run.device.type == "cpu" else ""
    log.info("%s on %s: %s parameters, %s images, device %s (%s%s), output %s", summary["model"], summary["data"],
             f"{summary['parameters']:,}", sizes, run.device, task.precision.kind, threads, cfg.out_dir)  # fmt: skip
    try:
        test = trainer.fit()
        checksums = trainer.replica_checksums() if trainer.world_size > 1 else None
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        logger.write_summary(summary | {"status": status, "error": str(e) or type(e).__name__, "epochs": trainer.epoch})
        logger.close()
        raise
    final = trainer.history[-1] if trainer.history else {}
    if trainer.stopped:
        summary |= {"status": "stopped", "epochs": trainer.epoch, "best": trainer.best, "final": final}
        logger.write_summary(summary)
        logger.close()
        log.info("stopped after epoch %d of %d (trainer.stop_after); continue with: convlab train resume=%s", trainer.epoch, cfg.epochs, cfg.out_dir)
        return summary
    if checksums:
        summary["ddp"] = {"world_size": trainer.world_size, "param_checksums": checksums, "replicas_in_sync": len(set(checksums)) == 1}
    summary |= {
        "status": "ok",
        "epochs": trainer.epoch,
        "best": trainer.best,
        "final": final,
        "test": numbers_only(test),
        "images_per_s": final.get("perf/images_per_s"),
        "wall_time_s": (run.state["elapsed"] if run.state else 0.0) + time.perf_counter() - started,
        "ended": datetime.now().isoformat(timespec="milliseconds"),
    }
    logger.write_summary(summary)
    scalars = {k: v for k, v in final.items() if k.startswith(("train/", "val/"))}
    logger.log_hparams(hparams_of(trainer.meta["config"]), scalars | {f"test/{k}": v for k, v in test.items() if isinstance(v, float)})
    logger.close()
    best = trainer.best
    best_text = "" if best["value"] is None else f"  (best {best['metric']} {best['value']:.4f} at epoch {best['epoch']})"
    log.info("test  %s%s  -> %s", "  ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)), best_text, cfg.out_dir)
    return summary
