"""The `convlab` command: `convlab SUBCOMMAND [Hydra flags and overrides]`.

`main` strips the subcommand from sys.argv, claims the run or sweep folder before Hydra writes,
and calls the subcommand's @hydra.main function (convlab.app.commands), so Hydra's own flags
(-m, --cfg job, --info, --help, hydra.run.dir=...) work as usual. User errors (ConvlabError)
end as one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from convlab.app import __version__
from convlab.app.commands import COMMANDS, PREPARED, TYPED, user_errors
from convlab.core.errors import ConfigError, ConvlabError, Terminated
from convlab.run import sweeps
from convlab.run.compose import preflight

# user_errors and the subcommands live in convlab.app.commands; they stay importable from here.
__all__ = ["CLAIMS", "COMMANDS", "PREPARED", "TYPED", "USAGE", "main", "user_errors"]

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

    if _resuming_sweep(args):
        return _resume_sweep(args, Path(_value(args, "resume", None)).absolute()), None
    if first is None:  # --cfg, --help and friends write no run
        return args, None
    if _rerun_failed(args):
        raise ConfigError("rerun_failed=true is for a sweep continued: convlab train -m resume=DIR rerun_failed=true")
    multirun = "-m" in args or "--multirun" in args or first.hydra.mode == RunMode.MULTIRUN
    if multirun:
        folder = Path(_value(args, "hydra.sweep.dir", None) or OmegaConf.select(first, "hydra.sweep.dir"))
        CLAIMS.append(rundir.claim(folder, explicit=_value(args, "hydra.sweep.dir", None) is not None, sweep=True))
        sweeps.write_record(CLAIMS[-1].folder, args)  # what `-m resume=` continues, whatever Hydra rewrites later
        return [a for a in args if not a.startswith("hydra.sweep.dir=")] + [
            f"hydra.sweep.dir={rundir.hydra_quote(str(CLAIMS[-1].folder))}",
            *sweeps.naming(args, first),
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
    # a resumed run keeps its own .hydra config
    kept = ["hydra.output_subdir=null"] if job.plan and job.plan.run_dir is not None else []
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [
        f"hydra.run.dir={rundir.hydra_quote(job.cfg.out_dir)}",
        *kept,
    ], None


def _rerun_failed(args: list[str]) -> bool:
    """Whether the command says rerun_failed=true."""
    return _value(args, "rerun_failed", "False") == "True"


def _resuming_sweep(args: list[str]) -> bool:
    """`convlab train -m resume=SWEEP_DIR [...]`: checked against the sweep's own config, not the default one."""
    flags = [a for a in args if a.startswith("-")]
    return bool(flags) and set(flags) <= {"-m", "--multirun"} and _value(args, "resume", None) is not None


def _resume_sweep(args: list[str], folder: Path) -> list[str]:
    """`convlab train -m resume=SWEEP_DIR`: the sweep recomposed from its folder, checked, locked; Hydra's args."""
    from convlab.run import rundir

    args = sweeps.resume_args(args, folder)
    first = preflight("train", args)  # the folder's overrides are checked like typed ones
    rundir.check_links(folder)
    rundir.lock(folder)  # one process continues a sweep at a time
    CLAIMS.append(rundir.Claim(folder, created=False, before={p.name for p in folder.iterdir()}))
    plan = sweeps.plan_resume(folder, sweeps.jobs_of(args, first), _rerun_failed(args))
    print(
        f"resuming sweep {folder}: {len(plan['kept'])} jobs ended (kept), {len(plan['continued'])} continue "
        f"from their last checkpoint, {len(plan['run'])} run",
        file=sys.stderr,
    )
    os.environ[sweeps.RESUMED] = str(folder)  # its jobs (in this process or a launcher's workers) read it
    return [
        *args,
        f"hydra.sweep.dir={rundir.hydra_quote(str(folder))}",
        *sweeps.naming(args, first),
    ]


CLAIMS: list = []  # sweep folders this process claimed (released, and emptied if nothing was written, at exit)


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
        first = None if name == "train" and _resuming_sweep(args) else preflight(name, args)
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
        what = "terminated (SIGTERM)" if code == 143 else "interrupted"
        if CLAIMS:  # a sweep's folder
            from convlab.run.rundir import resume_command

            hint = f"continue the sweep (its ended jobs kept) with: {resume_command(CLAIMS[-1].folder, sweep=True)}"
        else:
            hint = "each job's summary.json says where it stopped"
        print(f"error: {what}; {hint}", file=sys.stderr)
        sys.exit(code)
    finally:
        while CLAIMS:
            CLAIMS.pop().release()
        while PREPARED:
            PREPARED.pop().release()
        os.environ.pop(sweeps.RESUMED, None)  # this command's sweep only
    if "WORLD_SIZE" in os.environ:  # one of several training processes: all end together
        from convlab.run.distributed import leave

        leave()
    if last_sweep["failed"]:
        sys.exit(1)  # the sweep ran to its end, but not every job succeeded


def _prepare_train(args: list[str], first: DictConfig | None) -> tuple[list[str], int | None]:
    """`convlab train`: SIGTERM as Ctrl-C, then the folders claimed (by rank 0 when several processes train)."""
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

        # an unavailable device: one line here, not one per process
        check_devices(_value(args, "device", "auto"), int(devices))
        launch(int(devices), ["train", *args])
        return args, 0
    return _claim_folders(args, first)
