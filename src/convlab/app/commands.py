"""The `convlab` subcommands: one @hydra.main function each, and how a command's job ends on an error.

convlab.app.cli reads the command line, claims the folders and calls these; this module never
imports it back. What cli prepared before Hydra started reaches train_main through PREPARED and TYPED.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from convlab.core.errors import ConvlabError, Terminated
from convlab.core.io import write_atomic
from convlab.run import sweeps

log = logging.getLogger("convlab")
# Sweep job folders: number and differing overrides, cut to stay valid names (conf/train.yaml, run/sweeps.py).
OmegaConf.register_new_resolver("convlab_job", sweeps.job_name, replace=True)
OmegaConf.register_new_resolver("convlab_hydra_subdir", sweeps.hydra_subdir, replace=True)
CONF = "pkg://convlab.conf"

PREPARED: list = []  # the run this process prepared before Hydra started (released likewise at exit)
TYPED: list[str] = []  # the command line as typed, for the run's record (Hydra's sys.argv gains the claimed folder)


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(error: BaseException) -> None:
    """Mark the job failed in its summary.json (train() does so itself once it has started)."""
    from convlab.run.rundir import RunDir

    run = RunDir(Path(HydraConfig.get().runtime.output_dir))
    summary = run.read_summary()
    if summary.get("status") in (None, "running"):
        with contextlib.suppress(ConvlabError):  # the folder may be gone or the disk full: the error itself was said
            run.write_summary(
                summary
                | {"status": "failed", "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
            )


# OS refusals that are the user's situation, not a bug: said in one line naming the path.
USER_OS_ERRORS = (
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EDQUOT,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
)


@contextlib.contextmanager
def user_errors(resume_hint: bool = False) -> Iterator[None]:
    """User errors end as one line and exit code 2; Ctrl-C as 130 and SIGTERM as 143 (with a resume hint).

    Inside a -m sweep a failed job, whatever the error, is logged in one line and recorded in its
    summary.json, and the sweep goes on to its next job (a traceback goes to the job's error.txt).
    """
    try:
        yield
    except (ConvlabError, OSError) as e:
        if isinstance(e, OSError):
            if e.errno not in USER_OS_ERRORS:
                raise
            e = ConvlabError(f"cannot use {e.filename or 'a file'}: {e.strerror}")
        log.error("%s", e)
        if not _in_sweep():
            sys.exit(2)
        _record_failure(e)
    except KeyboardInterrupt as e:
        from convlab.run.rundir import RunDir, resume_command

        run = RunDir(Path(HydraConfig.get().runtime.output_dir))
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        if not resume_hint:
            log.error("%s", what)
        elif _in_sweep():
            sweep = Path(HydraConfig.get().sweep.dir).absolute()
            log.error("%s; continue the sweep (its ended jobs kept) with: %s", what, resume_command(sweep, sweep=True))
        elif run.last.is_file():
            log.error("%s; continue from the last finished epoch with: %s", what, run.resume_command())
        else:
            log.error("%s before an epoch finished; nothing to resume", what)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except Exception as e:
        if not _in_sweep():
            raise
        out = Path(HydraConfig.get().runtime.output_dir)
        trace = traceback.format_exc()
        write_atomic(out / "error.txt", lambda tmp: Path(tmp).write_text(trace))
        log.error(
            "job failed: %s: %s (traceback in %s)",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
            out / "error.txt",
        )
        _record_failure(e)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    """`convlab train`: one run, or one job of a -m sweep."""
    import torch

    from convlab.run.distributed import join_submitit_job
    from convlab.run.runner import train

    join_submitit_job()
    with user_errors(resume_hint=True):
        if cfg.device == "auto" and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
            # parallel sweeps: job i on GPU i mod N
            cfg.device = f"cuda:{HydraConfig.get().job.num % torch.cuda.device_count()}"
        if not _in_sweep():
            return train(PREPARED[-1] if PREPARED else cfg, _job_command())["best"]["value"]
        hc = HydraConfig.get()  # a sweep's jobs are prepared one by one, each from its composed config
        if sweeps.resumed(hc.sweep.dir):
            ended = sweeps.resumed_job(cfg)
            if ended is not None:
                log.info("job %d ended before (%s): kept as it is", hc.job.num, ended.get("status"))
                return (ended.get("best") or {}).get("value")
        swept = sweeps.swept_values(list(hc.overrides.task), list(hc.job.config.override_dirname.exclude_keys), cfg)
        return train(cfg, _job_command(), swept)["best"]["value"]
    return None


def _job_command() -> str | None:
    """The typed command; for a sweep's job, the sweep's and its own overrides (None: rebuilt from Hydra's record)."""
    if not TYPED:
        return None
    typed = shlex.join(TYPED)
    if not _in_sweep():
        return typed
    job = HydraConfig.get().job
    sweep = shlex.join(["convlab", "train", *HydraConfig.get().overrides.task])
    return f"{sweep}\n(job {job.num} of the sweep: {typed})"


@hydra.main(config_path=CONF, config_name="eval", version_base="1.3")
def eval_main(cfg: DictConfig) -> None:
    """`convlab eval ckpt=PATH`: print loss, accuracy and per-class accuracy."""
    from convlab.app.evaluate import evaluate_checkpoint, format_result

    with user_errors():
        print(format_result(evaluate_checkpoint(cfg)))


@hydra.main(config_path=CONF, config_name="sample", version_base="1.3")
def sample_main(cfg: DictConfig) -> None:
    """`convlab sample ckpt=PATH`: write generated images."""
    from convlab.app.evaluate import sample_checkpoint

    with user_errors():
        files = sample_checkpoint(cfg)
        log.info("wrote %s", files[0] if len(files) == 1 else f"{len(files)} images to {files[0].parent}")


@hydra.main(config_path=CONF, config_name="bench", version_base="1.3")
def bench_main(cfg: DictConfig) -> None:
    """`convlab bench`: print the images/s table (and write JSON with bench.json=PATH)."""
    from convlab.app.bench import bench, format_table, write_json

    with user_errors():
        result = bench(cfg)
        print(format_table(result))
        if cfg.bench.json:
            write_json(result, cfg.bench.json)


@hydra.main(config_path=CONF, config_name="inspect", version_base="1.3")
def inspect_main(cfg: DictConfig) -> None:
    """`convlab inspect`: print the layer table; write inspect.json and the effective-field heatmap."""
    from convlab.app.inspect import format_table, inspect_model

    with user_errors():
        result, title = inspect_model(cfg)
        print(format_table(result, title))


@hydra.main(config_path=CONF, config_name="report", version_base="1.3")
def report_main(cfg: DictConfig) -> None:
    """`convlab report PATH...`: report.md with curves, bars and confusion matrix from run folders."""
    from convlab.app.report import report

    with user_errors():
        log.info("wrote %s", report(cfg))


COMMANDS = {
    "train": (train_main, "train a model: convlab train model=resnet18 data=cifar10 epochs=30 [-m for sweeps]"),
    "eval": (eval_main, "evaluate a checkpoint: convlab eval ckpt=outputs/DATE/TIME [data.split=val]"),
    "bench": (bench_main, "measure training images/s: convlab bench model=resnet18 device=cuda batch_size=512"),
    "sample": (sample_main, "draw from a trained GAN: convlab sample ckpt=RUN n=64 out=grid.png [interpolate=true]"),
    "inspect": (
        inspect_main,
        "layers, parameters, MACs, receptive fields: convlab inspect model=hdc [model.conv=shift] [ckpt=RUN]",
    ),
    "report": (report_main, "compare runs: convlab report outputs/multirun/DATE/TIME [more runs or sweeps] [out=DIR]"),
}
