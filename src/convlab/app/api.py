"""convlab from Python (a notebook, a script): `convlab.train(...)` and `convlab.load(run)`.

`train` composes conf/ with Hydra's compose API exactly as `convlab train` does, checks every value
before a folder exists, claims the run folder as the CLI claims it, and runs in this process. No
Hydra job is started, so Hydra configures no logging: this module attaches convlab's own console
line and train.log for the call, and removes them after. Sweeps stay on the command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from convlab.core.errors import ConfigError

log = logging.getLogger("convlab")


@dataclass
class LoadedRun:
    """A trained run rebuilt from its checkpoint, ready to use (models in eval mode)."""

    model: Any  # torch.nn.Module: the classifier, or a GAN's generator
    models: dict[str, Any]  # every model of the task by name ("model"; "generator", "discriminator")
    config: DictConfig  # the run's composed config, as saved in the checkpoint
    info: Any  # DataInfo: class names, channels, image size, mean and std of the input normalisation
    checkpoint: Path  # the file the weights came from
    epoch: int  # the epoch those weights finished
    task: Any  # the Task: generate(z) for a GAN, evaluate(loader) for any


def train(*overrides: str, out_dir: str | os.PathLike | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train one run in this process, configured like `convlab train OVERRIDES...`; returns its summary.

    The summary is the dict summary.json holds, `out_dir` the run folder: outputs/DATE/TIME under
    the working directory unless `out_dir` is given. `quiet` keeps the epoch lines off the console
    (train.log still gets them). Bad values raise ConvlabError with one line, before any folder exists.
    """
    from convlab.run.compose import compose
    from convlab.run.prepare import prepare
    from convlab.run.resume import finished_summary, finished_text
    from convlab.run.runner import train as run_training
    from convlab.run.schema import validate

    if out_dir is not None and (not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir).strip()):
        raise ConfigError(
            f"out_dir={out_dir!r} is not a folder name; give one such as out_dir='runs/first', "
            "or leave it out for outputs/DATE/TIME"
        )
    args = _checked(overrides)
    cfg = compose("train", args, hydra=True)
    if cfg.hydra.mode == RunMode.MULTIRUN:  # hydra.mode=MULTIRUN, given or set by a config
        raise ConfigError(
            f"{' '.join(args)} composes a sweep; convlab.train runs one job: "
            "run sweeps on the command line (convlab train ...)"
        )
    folder = (
        Path(out_dir)
        if out_dir is not None
        else (Path(cfg.hydra.run.dir) if any(a.startswith("hydra.run.dir=") for a in args) else None)
    )
    with open_dict(cfg):  # validated here, before prepare() claims anything
        checked = cfg.copy()
        checked.out_dir = str(folder.absolute()) if folder is not None else "(the run folder)"
    validate(checked)
    given_dir = f", out_dir={str(out_dir)!r}" if out_dir is not None else ""
    command = f"convlab.train({', '.join(map(repr, overrides))}{given_dir})"
    job = prepare(args, out_dir=folder, first=cfg)
    if job.finished:  # like the CLI: nothing is written into a finished run
        if not quiet:
            print(f"{finished_text(job.plan)}; nothing to do", file=sys.stderr)
        return finished_summary(job.plan)
    try:
        if job.claim is not None:
            _record(job.run_dir.path, job.cfg, args)
        with _console(job.run_dir.path, quiet):
            return run_training(job, command)
    finally:
        job.release()


def load(run: str | os.PathLike | dict[str, Any], device: str = "auto") -> LoadedRun:
    """The trained model of `run` (a run folder, a .pt file, or the dict `train` returned), in eval mode.

    It goes through the same checks as `convlab eval`: weights only, the layout, the config's
    targets and values. A run folder means the weights its test pass used (best.pt after an early stop).
    """
    from convlab.app.evaluate import data_info, load_task
    from convlab.core.build import resolve_device
    from convlab.run.schema import device as device_rule

    path = run.get("out_dir") if isinstance(run, dict) else run
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            "convlab.load: expected a run folder, a .pt file or the dict convlab.train returned, "
            f"not {type(run).__name__}"
        )
    if (allowed := device_rule(device)) is not None:
        raise ConfigError(f"device={device!r} is not allowed; {allowed}")
    task, saved, state, checkpoint = load_task(OmegaConf.create({"ckpt": str(path)}), resolve_device(device))
    task.train(False)
    return LoadedRun(
        task.models[task.main_model], dict(task.models), saved, data_info(state), checkpoint, state["epoch"], task
    )


def _checked(overrides: tuple[Any, ...]) -> list[str]:
    """The overrides as strings; a sweep or a Hydra flag is refused in one line (they belong to the command line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from convlab.run.compose import expand

    bad = next((o for o in overrides if not isinstance(o, str)), None)
    if bad is not None:
        raise ConfigError(f"convlab.train takes overrides as strings like 'epochs=3', not {bad!r}")
    flag = next((o for o in overrides if o.startswith("-")), None)
    if flag:
        raise ConfigError(
            f"convlab.train takes no flags ({flag}): it runs one job; sweeps (-m) stay on the command line"
        )
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:
        raise ConfigError(f"cannot read the overrides {list(overrides)} ({str(e).splitlines()[0]})") from None
    sweep = next((o.input_line for o in parsed if o.is_sweep_override()), None)
    if sweep:
        raise ConfigError(
            f"{sweep} is a sweep; convlab.train runs one job: "
            f"run sweeps on the command line (convlab train -m {shlex.quote(sweep)})"
        )
    # unknown group choices: the CLI's words (model=nope is not a config in conf/model/; choose one of: ...)
    expand(parsed)
    return list(overrides)


def _record(folder: Path, cfg: DictConfig, args: list[str]) -> None:
    """.hydra/config.yaml and overrides.yaml, as a CLI run has them (convlab report and sweeps read them)."""
    from convlab.core.io import write_atomic

    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    config, overrides = OmegaConf.to_yaml(cfg), OmegaConf.to_yaml(OmegaConf.create(args))
    write_atomic(hydra_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config))
    write_atomic(hydra_dir / "overrides.yaml", lambda tmp: Path(tmp).write_text(overrides))


@contextlib.contextmanager
def _console(folder: Path, quiet: bool) -> Iterator[None]:
    """convlab's log lines to the console (unless quiet) and to <run>/train.log, for this call only."""
    from convlab.run.runlog import ConsoleFormatter

    handlers: list[logging.Handler] = [logging.FileHandler(folder / "train.log")]
    handlers[0].setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    if not quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setFormatter(ConsoleFormatter())
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False  # a notebook's own root handlers would print every line twice
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(level)
        log.propagate = propagate
