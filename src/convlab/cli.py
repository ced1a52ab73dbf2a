"""The `convlab` command: `convlab SUBCOMMAND [Hydra flags and overrides]`.

Each subcommand is a @hydra.main function; `main` strips the subcommand from sys.argv and
calls it, so Hydra's own flags (-m, --cfg job, --info, --help, hydra.run.dir=...) work as
usual. User errors (ConvlabError) end as one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from convlab import __version__
from convlab.errors import ConfigError, ConvlabError

log = logging.getLogger("convlab")
# Sweep job folders are named by their overrides (conf/train.yaml); long ones are cut to stay valid names.
OmegaConf.register_new_resolver("convlab_cut", lambda text, n: str(text)[: int(n)], replace=True)
CONF = "pkg://convlab.conf"
GROUPS = ("model", "data", "optim", "sched", "task", "experiment", "search")
# Hydra plugins behind optional extras: name in a "Could not find" message -> the extra that installs it.
PLUGIN_EXTRAS = {"optuna": "tune", "submitit": "cluster", "joblib": "parallel"}


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(error: BaseException) -> None:
    """Mark the job failed in its summary.json (train() does so itself once it has started)."""
    from convlab.checkpoint import write_atomic

    out = Path(HydraConfig.get().runtime.output_dir)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    if summary.get("status") in (None, "running"):
        summary |= {"status": "failed", "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
        write_atomic(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))


@contextlib.contextmanager
def user_errors(resume_hint: bool = False) -> Iterator[None]:
    """User errors end as one line and exit code 2, Ctrl-C as exit code 130 (with a resume hint).

    Inside a -m sweep a failed job, whatever the error, is logged in one line and recorded in its
    summary.json, and the sweep goes on to its next job (a traceback goes to the job's error.txt).
    """
    try:
        yield
    except ConvlabError as e:
        log.error("%s", e)
        if not _in_sweep():
            sys.exit(2)
        _record_failure(e)
    except KeyboardInterrupt:
        out = Path(HydraConfig.get().runtime.output_dir)
        if not resume_hint:
            log.error("interrupted")
        elif (out / "checkpoints" / "last.pt").is_file():
            log.error("interrupted; continue from the last finished epoch with: convlab train resume=%s", out)
        else:
            log.error("interrupted before an epoch finished; nothing to resume")
        sys.exit(130)
    except Exception as e:
        if not _in_sweep():
            raise
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "error.txt").write_text(traceback.format_exc())
        log.error("job failed: %s: %s (traceback in %s)", type(e).__name__, str(e).splitlines()[0] if str(e) else "", out / "error.txt")
        _record_failure(e)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    """`convlab train`: one run, or one job of a -m sweep."""
    import torch

    from convlab.distributed import join_submitit_job
    from convlab.train import train

    join_submitit_job()
    with user_errors(resume_hint=True):
        if cfg.get("resume"):
            allowed = ("resume", "device", "trainer.stop_after", "trainer.devices")
            changed = [o for o in HydraConfig.get().overrides.task if o.split("=")[0].lstrip("+~") not in allowed]
            if changed:
                raise ConfigError(f"resume= continues a run with its saved config; only device=, trainer.devices= and trainer.stop_after= may change (drop: {' '.join(changed)})")
        if cfg.device == "auto" and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
            cfg.device = f"cuda:{HydraConfig.get().job.num % torch.cuda.device_count()}"  # parallel sweeps: job i on GPU i mod N
        return train(cfg)["best"]["value"]
    return None


@hydra.main(config_path=CONF, config_name="eval", version_base="1.3")
def eval_main(cfg: DictConfig) -> None:
    """`convlab eval ckpt=PATH`: print loss, accuracy and per-class accuracy."""
    from convlab.evaluate import evaluate_checkpoint, format_result

    with user_errors():
        print(format_result(evaluate_checkpoint(cfg)))


@hydra.main(config_path=CONF, config_name="sample", version_base="1.3")
def sample_main(cfg: DictConfig) -> None:
    """`convlab sample ckpt=PATH`: write generated images."""
    from convlab.evaluate import sample_checkpoint

    with user_errors():
        files = sample_checkpoint(cfg)
        log.info("wrote %s", files[0] if len(files) == 1 else f"{len(files)} images to {files[0].parent}")


@hydra.main(config_path=CONF, config_name="bench", version_base="1.3")
def bench_main(cfg: DictConfig) -> None:
    """`convlab bench`: print the images/s table (and write JSON with bench.json=PATH)."""
    from convlab.bench import bench, format_table, write_json

    with user_errors():
        result = bench(cfg)
        print(format_table(result))
        if cfg.bench.json:
            write_json(result, cfg.bench.json)


@hydra.main(config_path=CONF, config_name="report", version_base="1.3")
def report_main(cfg: DictConfig) -> None:
    """`convlab report PATH...`: report.md with curves, bars and confusion matrix from run folders."""
    from convlab.report import report

    with user_errors():
        log.info("wrote %s", report(cfg))


COMMANDS = {
    "train": (train_main, "train a model: convlab train model=resnet18 data=cifar10 epochs=30 [-m for sweeps]"),
    "eval": (eval_main, "evaluate a checkpoint: convlab eval ckpt=outputs/DATE/TIME [data.split=val]"),
    "bench": (bench_main, "measure training images/s: convlab bench model=resnet18 device=cuda batch_size=512"),
    "sample": (sample_main, "draw from a trained GAN: convlab sample ckpt=RUN n=64 out=grid.png [interpolate=true]"),
    "report": (report_main, "compare runs: convlab report outputs/multirun/DATE/TIME [more runs or sweeps] [out=DIR]"),
}

USAGE = "\n".join(
    [
        f"convlab {__version__}: config-driven training of convolutional networks",
        "",
        "usage: convlab COMMAND [-m] [KEY=VALUE ...] [Hydra flags]",
        "",
        "commands:",
        *(f"  {name:<6} {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "convlab COMMAND --help shows the command's config groups and keys.",
    ]
)


def _group_options(group: str) -> list[str]:
    folder = resources.files("convlab.conf") / group
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def preflight(config_name: str, args: list[str]) -> None:
    """Check overrides before Hydra runs: unknown group choices or keys become one ConfigError line.

    Every value of a sweep is checked against the group's configs; the first job's config is
    composed to catch misspelt keys. Anything this cannot parse is left to Hydra to report.
    """
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = get_args_parser().parse_args(args)
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except BaseException:  # argparse exits on bad flags; Hydra will say the same
        return
    if parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.config_dir or parsed.config_name or parsed.shell_completion:
        return
    first_job = []
    for o in overrides:
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        except Exception:  # glob and interval sweeps are expanded by Hydra or a search plugin
            return
        if o.key_or_group in GROUPS and not o.package and not o.is_delete():
            options = _group_options(o.key_or_group)
            bad = [v for v in values if v not in options]
            if bad:
                raise ConfigError(f"{o.key_or_group}={bad[0]} is not a config in conf/{o.key_or_group}/; choose one of: {', '.join(options) or '(none)'}")
        first_job.append(f"{o.get_key_element()}={values[0]}" if o.is_sweep_override() else o.input_line)
    try:
        with initialize_config_module("convlab.conf", version_base="1.3"):
            compose(config_name, overrides=first_job)
    except Exception as e:
        text = str(e) or f"{type(e).__name__}: {e.__cause__ or e.__context__}"
        missing = re.search(rf"Could not (?:find|load) 'hydra/(?:launcher|sweeper)/({'|'.join(PLUGIN_EXTRAS)})(?:_local|_slurm)?'", text)
        if missing:  # an optional Hydra plugin (launcher or sweeper) that is not installed
            plugin = missing.group(1)
            asked = next((a for a in first_job if a.startswith(("hydra/launcher=", "hydra/sweeper=", "+search="))), plugin)
            raise ConfigError(f"{asked} needs Hydra's {plugin} plugin, which is not installed: pip install -e \".[{PLUGIN_EXTRAS[plugin]}]\"") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2])) from None


def _value(args: list[str], key: str, default: str | None) -> str | None:
    """The value of the command-line override `key=VALUE`, or `default` when it is not given."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")), default)


def _resume_run_dir(args: list[str]) -> list[str]:
    """`resume=RUN` writes into RUN itself (not a new folder) and keeps RUN's own .hydra config."""
    from convlab.checkpoint import run_dir_of

    resume = _value(args, "resume", None)
    if not resume or any(a.startswith("hydra.run.dir=") for a in args):
        return args
    p = Path(resume)
    run_dir = p if (p / "checkpoints").is_dir() else run_dir_of(p) if p.is_file() else None
    return [*args, f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=null"] if run_dir else args


def _paths_override(args: list[str]) -> list[str]:
    """`convlab report A B` -> `paths=['A','B']`: Hydra takes no positional arguments."""
    paths = [a for a in args if "=" not in a and not a.startswith("-")]
    rest = [a for a in args if a not in paths]
    quoted = ",".join("'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths)
    return [*rest, f"paths=[{quoted}]"] if paths else rest


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
    if name not in COMMANDS:
        print(f"convlab: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)} (convlab --help)", file=sys.stderr)
        sys.exit(2)
    if name == "report":
        args = _paths_override(args)
    try:
        preflight(name, args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if name == "train":
        args = _resume_run_dir(args)
        devices = _value(args, "trainer.devices", "1")
        if "WORLD_SIZE" in os.environ:  # one of several training processes: agree on the run folder first
            from convlab.distributed import join

            args = join(args)
        elif devices.isdigit() and int(devices) > 1:
            from convlab.distributed import check_devices, launch

            try:  # an unavailable device is one line here, not one per process
                check_devices(_value(args, "device", "auto"), int(devices))
            except ConvlabError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            launch(int(devices), [name, *args])
            return
    sys.argv = [f"convlab-{name}", *args]
    COMMANDS[name][0]()
    from convlab.sweep import last_sweep

    if last_sweep["failed"]:
        sys.exit(1)  # the sweep ran to its end, but not every job succeeded
