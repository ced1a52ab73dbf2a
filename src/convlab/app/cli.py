"""The `convlab` command: `convlab SUBCOMMAND [Hydra flags and overrides]`.

Each subcommand is a @hydra.main function; `main` strips the subcommand from sys.argv and
calls it, so Hydra's own flags (-m, --cfg job, --info, --help, hydra.run.dir=...) work as
usual. User errors (ConvlabError) end as one line on stderr and exit code 2.
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

from convlab.app import __version__
from convlab.core.errors import ConvlabError, Terminated
from convlab.run.compose import preflight

log = logging.getLogger("convlab")
# Sweep job folders are named by their overrides (conf/train.yaml); long ones are cut to stay valid names.
OmegaConf.register_new_resolver("convlab_cut", lambda text, n: str(text)[: int(n)], replace=True)
CONF = "pkg://convlab.conf"


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
        from convlab.run.rundir import RunDir

        run = RunDir(Path(HydraConfig.get().runtime.output_dir))
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        if not resume_hint:
            log.error("%s", what)
        elif run.last.is_file():
            log.error("%s; continue from the last finished epoch with: %s", what, run.resume_command())
        else:
            log.error("%s before an epoch finished; nothing to resume", what)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except Exception as e:
        if not _in_sweep():
            raise
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "error.txt").write_text(traceback.format_exc())
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
            cfg.device = (
                f"cuda:{HydraConfig.get().job.num % torch.cuda.device_count()}"  # parallel sweeps: job i on GPU i mod N
            )
        job = PREPARED[-1] if PREPARED and not _in_sweep() else cfg  # a sweep's jobs are prepared one by one
        return train(job, _job_command())["best"]["value"]
    return None


def _job_command() -> str | None:
    """What the user typed; for a sweep's job, its own overrides and the sweep's command (None: rebuilt from Hydra's record)."""
    if not TYPED:
        return None
    typed = shlex.join(TYPED)
    if not _in_sweep():
        return typed
    job = HydraConfig.get().job
    return (
        f"{shlex.join(['convlab', 'train', *HydraConfig.get().overrides.task])}\n(job {job.num} of the sweep: {typed})"
    )


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

USAGE = "\n".join(
    [
        f"convlab {__version__}: config-driven training of convolutional networks",
        "",
        "usage: convlab COMMAND [-m] [KEY=VALUE ...] [Hydra flags]",
        "",
        "commands:",
        *(f"  {name:<7} {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "convlab COMMAND --help shows the command's config groups and keys.",
    ]
)


def _value(args: list[str], key: str, default: str | None) -> str | None:
    """The value of the command-line override `key=VALUE` (quotes as Hydra reads them), or `default`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for a in args:
        if a.split("=", 1)[0] == key:
            try:
                value = OverridesParser.create().parse_override(a).value()
            except Exception:
                return a.split("=", 1)[1]
            return None if value is None else str(value)
    return default


def _paths_override(args: list[str]) -> list[str]:
    """`convlab report A B` -> `paths=['A','B']`: Hydra takes no positional arguments."""
    from convlab.run.rundir import hydra_quote

    paths = [a for a in args if "=" not in a and not a.startswith("-")]
    rest = [a for a in args if a not in paths]
    return [*rest, f"paths=[{','.join(hydra_quote(p) for p in paths)}]"] if paths else rest


def _claim_folders(args: list[str], first: DictConfig | None) -> tuple[list[str], int | None]:
    """Before Hydra writes: the sweep folder claimed, or the run prepared (run.prepare); returns Hydra's args.

    The second value is an exit code when the command ends here (a finished run resumed).
    """
    from convlab.run import rundir

    if first is None:  # --cfg, --help and friends write no run
        return args, None
    multirun = "-m" in args or "--multirun" in args or first.hydra.mode == RunMode.MULTIRUN
    if multirun:
        folder = Path(_value(args, "hydra.sweep.dir", None) or OmegaConf.select(first, "hydra.sweep.dir"))
        CLAIMS.append(rundir.claim(folder, explicit=_value(args, "hydra.sweep.dir", None) is not None, sweep=True))
        return [a for a in args if not a.startswith("hydra.sweep.dir=")] + [
            f"hydra.sweep.dir={rundir.hydra_quote(str(CLAIMS[-1].folder))}"
        ], None
    from convlab.run.prepare import prepare  # reads checkpoints: imports torch
    from convlab.run.resume import finished_text

    given = _value(args, "hydra.run.dir", None)
    job = prepare(
        [a for a in args if not a.startswith("-")],
        out_dir=Path(given) if given else None,
        first=first,
        moved_by="hydra.run.dir=",
    )
    if job.finished:
        print(f"{finished_text(job.plan)}; nothing to do", file=sys.stderr)
        return args, 0
    PREPARED.append(job)
    kept = (
        ["hydra.output_subdir=null"] if job.plan and job.plan.run_dir is not None else []
    )  # a resumed run keeps its own .hydra config
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [
        f"hydra.run.dir={rundir.hydra_quote(job.cfg.out_dir)}",
        *kept,
    ], None


CLAIMS: list = []  # sweep folders this process claimed (released, and emptied if nothing was written, at exit)
PREPARED: list = []  # the run this process prepared before Hydra started (released likewise at exit)
TYPED: list[str] = []  # the command line as typed, for the run's record (Hydra's sys.argv gains the claimed folder)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `convlab` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"convlab {__version__}")
        return
    name, args = argv[0], argv[1:]
    TYPED[:] = ["convlab", *argv]
    if name not in COMMANDS:
        print(
            f"convlab: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)} (convlab --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    if name == "report":
        args = _paths_override(args)
    try:
        first = preflight(name, args)
        if name == "train":
            args, code = _prepare_train(args, first)
            if code is not None:
                sys.exit(code)
    except ConvlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"convlab-{name}", *args]
    from convlab.app.sweep import last_sweep

    last_sweep.update(jobs=0, failed=0)  # this command's sweep only (main may run twice in one process)
    try:
        COMMANDS[name][0]()
    except KeyboardInterrupt as e:  # reached here only outside a job: a sweep's own process (its jobs said theirs)
        code = 143 if isinstance(e, Terminated) else 130
        print(
            f"error: {'terminated (SIGTERM)' if code == 143 else 'interrupted'}; each job's summary.json says where it stopped",
            file=sys.stderr,
        )
        sys.exit(code)
    finally:
        while CLAIMS:
            CLAIMS.pop().release()
        while PREPARED:
            PREPARED.pop().release()
    if last_sweep["failed"]:
        sys.exit(1)  # the sweep ran to its end, but not every job succeeded


def _prepare_train(args: list[str], first: DictConfig | None) -> tuple[list[str], int | None]:
    """`convlab train`: SIGTERM as Ctrl-C, then the folders claimed (by rank 0 for several processes, or by each started process)."""
    from convlab.core import interrupts

    interrupts.install()  # SIGTERM like Ctrl-C, from Hydra's start on
    # A parallel sweep stopped by Ctrl-C leaves joblib's semaphores to its resource tracker, which warns in two lines.
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:resource_tracker:UserWarning"])
    )
    if "WORLD_SIZE" in os.environ:  # one of several training processes: rank 0 claims the folder for all
        from convlab.run.distributed import join

        return join(args, lambda: _claim_folders(args, first))
    devices = _value(args, "trainer.devices", "1")
    if devices.isdigit() and int(devices) > 1:
        from convlab.run.distributed import check_devices, launch

        check_devices(
            _value(args, "device", "auto"), int(devices)
        )  # an unavailable device: one line here, not one per process
        launch(int(devices), ["train", *args])
        return args, 0
    return _claim_folders(args, first)
