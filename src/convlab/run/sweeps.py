"""A `-m` sweep's life before Hydra launches it: its jobs, their short names, and `resume=SWEEP_DIR`.

Hydra's basic sweeper numbers the jobs of the product of the swept values (the config's
hydra.sweeper.params first, then the command line's); convlab computes the same list here, so:
- a job folder is named by its number and the overrides that differ between jobs
  (`3_model=hdc,optim.lr=0.01`): the keys every job shares join Hydra's override_dirname exclusions;
- TensorBoard's HPARAMS shows the swept keys first (each job reads them back: `swept_values`);
- `convlab train -m resume=SWEEP_DIR` recomposes the sweep from its record (sweep.yaml, written
  when the sweep started and never rewritten; Hydra's multirun.yaml for older sweeps), checks that
  each job folder holds the job of that number, and marks the sweep resumed for its jobs
  (`RESUMED`): a finished job is kept (Hydra writes nothing into it: `hydra_subdir`), an interrupted
  one continues from its last.pt, a job that never started runs, a failed or diverged one runs
  again (its folder kept aside) with rerun_failed=true.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from convlab.core.errors import ConfigError, ConvlabError
from convlab.run import rundir

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
RESUMED = "CONVLAB_RESUMED_SWEEP"  # env: the sweep folder being resumed (inherited by joblib and submitit workers)
# Keys a resumed sweep may set anew: where and how long it runs (resume.MAY_CHANGE), where its data lives,
# what it re-runs. Spelt out: this module is imported at start-up, resume.py imports torch.
RESUME_MAY_SET = ("device", "trainer.devices", "trainer.stop_after", "data.root", "data.cache_dir", "rerun_failed")
RECORD = "sweep.yaml"  # the sweep as first launched: what `-m resume=` continues
KEPT_ASIDE = ".replaced"  # failed jobs run again leave their folder here (TensorBoard still finds it)
MAX_RECORD = 1 << 20  # bytes of a sweep's record or a job's overrides.yaml: Hydra's are a few kB
ENDED = ("ok", "failed", "diverged")
JOB = re.compile(r"(\d+)(?:_|$)")


def _parse(lines: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(lines)


def _value(o: Any) -> str:
    """An override's value as typed (a sweep's too: `plain_cnn,hdc`)."""
    return o.input_line.split("=", 1)[1] if o.is_sweep_override() else o.get_value_element_as_str()


def _task(args: list[str]) -> tuple[list[str], list[str]]:
    """The command's (task overrides, Hydra overrides), flags left out."""
    overrides = [a for a in args if not a.startswith("-")]
    hydra = [a for a in overrides if a.startswith(("hydra.", "hydra/"))]
    return [a for a in overrides if a not in hydra], hydra


def jobs_of(args: list[str], first: DictConfig) -> list[dict[str, str]] | None:
    """Each job's overrides {key: value as typed}, in Hydra's job order; None where only its sweeper knows them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if OmegaConf.select(first, "hydra.sweeper._target_") != BASIC:
        return None
    params = OmegaConf.select(first, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + _task(args)[0]
    try:
        jobs = BasicSweeper.split_arguments(_parse(lines), None)[0]
        return [{o.key_or_group: _value(o) for o in _parse(job)} for job in jobs]
    except Exception:  # glob sweeps and the like: Hydra expands (and reports) them itself
        return None


def naming(args: list[str], first: DictConfig) -> list[str]:
    """The Hydra override that names each job folder by its number and the overrides that differ between jobs."""
    jobs = jobs_of(args, first)
    if jobs:
        keys = list(dict.fromkeys(k for job in jobs for k in job))
        same = [k for k in keys if len({job.get(k) for job in jobs}) == 1 and all(k in job for job in jobs)]
    else:  # a search (Optuna): its trials vary what it searches; the command's plain values are shared
        try:
            same = [o.key_or_group for o in _parse(_task(args)[0]) if not o.is_sweep_override()]
        except Exception:
            return []
    excluded = [*OmegaConf.select(first, "hydra.job.config.override_dirname.exclude_keys", default=[]), *same]
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(map(rundir.hydra_quote, excluded))}]"]


def swept_values(task_overrides: list[str], excluded: list[str], cfg: DictConfig) -> dict[str, Any]:
    """A sweep job's values of the keys its sweep varies: the config's value, or the choice's name for a group."""
    out = {}
    for o in _parse(task_overrides):
        if o.key_or_group in excluded or o.is_hydra_override():
            continue
        value = OmegaConf.select(cfg, o.key_or_group, default=None)
        out[o.key_or_group] = _value(o) if value is None or isinstance(value, DictConfig) else value
    return out


def resumed(sweep_dir: str | Path) -> bool:
    """Whether this process, or the one that launched it, is continuing the sweep in `sweep_dir`."""
    return os.environ.get(RESUMED) == str(Path(sweep_dir).absolute())


def job_name(sweep_dir: str, num: int, override_dirname: str) -> str:
    """A job's folder: the one already holding job `num` (a resumed sweep), else `num_overrides` (or `num`)."""
    folder = Path(sweep_dir)
    if resumed(folder):
        for d in folder.iterdir():
            m = JOB.match(d.name)
            if m and int(m.group(1)) == int(num) and d.is_dir() and not d.is_symlink():
                return d.name
    return f"{num}_{override_dirname[:120]}" if override_dirname else str(num)


def hydra_subdir(sweep_dir: str, output_dir: str) -> str | None:
    """Where Hydra records a job's config: nowhere for a job that ended before its sweep was resumed (kept as is)."""
    if resumed(sweep_dir) and rundir.read_summary(Path(output_dir)).get("status") in ENDED:
        return None
    return ".hydra"


def resumed_job(cfg: DictConfig) -> dict[str, Any] | None:
    """A job of a resumed sweep: its summary when it has ended (kept); else None, resuming from its last.pt if any."""
    run = rundir.RunDir(Path(cfg.out_dir))
    summary = run.read_summary()
    if summary.get("status") in ENDED:  # failed ones to run again were set aside before the sweep started
        return summary
    if run.last.is_file():
        with open_dict(cfg):
            cfg.resume = str(run.path)
    return None


@dataclass
class Record:
    """What a sweep folder says of its sweep: its task overrides and the launcher it ran with."""

    task: list[str]
    hydra: list[str]


def write_record(folder: Path, args: list[str]) -> None:
    """sweep.yaml: the sweep's overrides and launcher as launched, for `-m resume=` (written once, atomically)."""
    import yaml

    from convlab.core.io import write_atomic

    task, hydra = _task(args)
    launcher = [a for a in hydra if a.startswith(("hydra/launcher=", "hydra.launcher."))]
    text = yaml.safe_dump({"task": task, "hydra": launcher}, sort_keys=False)
    write_atomic(folder / RECORD, lambda tmp: Path(tmp).write_text(text))


def _load(path: Path) -> Any:
    """A YAML file read as plain data (untrusted: no tags, at most MAX_RECORD bytes, never through a link)."""
    import yaml

    if path.is_symlink() or path.stat().st_size > MAX_RECORD:
        raise ValueError("a link, or too large to be a record")
    with path.open("rb") as f:
        return yaml.safe_load(f.read(MAX_RECORD))


def read_record(folder: Path) -> Record:
    """The task and launcher overrides a sweep was started with: its sweep.yaml, or Hydra's multirun.yaml."""
    if not folder.is_dir():
        raise ConvlabError(f"resume={folder}: no such sweep folder")
    path = next((folder / name for name in (RECORD, "multirun.yaml") if (folder / name).is_file()), None)
    if path is None:
        raise ConvlabError(
            f"resume={folder} is not a sweep folder (it has no {RECORD} or multirun.yaml); to continue one run, drop -m"
        )
    try:
        data = _load(path)
        if path.name != RECORD:
            data = data["hydra"]["overrides"]
        task, hydra = data["task"], data["hydra"]
        assert all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in (task, hydra))
        parsed = _parse(task)
    except Exception:
        raise ConvlabError(f"{path} is not a sweep record convlab or Hydra wrote (unreadable overrides)") from None
    for o, line in zip(parsed, task, strict=True):
        if o.is_hydra_override() or o.key_or_group in ("resume", "rerun_failed"):
            raise ConvlabError(f"{path} names {line!r}, which no sweep's record holds: it is not a sweep convlab ran")
    return Record(task, [a for a in hydra if a.startswith(("hydra/launcher=", "hydra.launcher."))])


def resume_args(args: list[str], folder: Path) -> list[str]:
    """The command that continues the sweep in `folder`: its own overrides, and what the command may set anew."""
    record = read_record(folder)
    task, hydra = _task(args)
    saved = {o.key_or_group: _value(o) for o in _parse(record.task)}
    given_dir = next((a.split("=", 1)[1] for a in hydra if a.startswith("hydra.sweep.dir=")), None)
    if given_dir is not None and Path(given_dir.strip("'\"")).absolute() != folder:
        raise ConfigError(f"resume={folder} continues that sweep in its own folder; drop hydra.sweep.dir={given_dir}")
    extra = []
    asked = {o.key_or_group: (o, line) for o, line in zip(_parse(task), task, strict=True)}  # the last one counts
    for o, line in asked.values():
        if o.key_or_group == "resume" or o.key_or_group in RESUME_MAY_SET:
            extra += [] if o.key_or_group == "resume" else [line]
        elif saved.get(o.key_or_group) != _value(o):
            was = f"; the sweep has {o.key_or_group}={saved[o.key_or_group]}" if o.key_or_group in saved else ""
            raise ConfigError(
                f"resume={folder} continues the sweep `{' '.join(record.task)}`, but this command asks for "
                f"{line}{was}: drop it to continue that sweep, or start a new sweep without resume="
            )
    given = {a.split("=", 1)[0] for a in hydra}
    inherited = [a for a in record.hydra if a.split("=", 1)[0] not in given]
    flags = [a for a in args if a.startswith("-")]
    return [*flags, *record.task, *extra, *inherited, *[a for a in hydra if not a.startswith("hydra.sweep.dir=")]]


def plan_resume(folder: Path, jobs: list[dict[str, str]] | None, rerun_failed: bool) -> dict[str, list[int]]:
    """Check each job folder against this sweep's jobs; keep the ended ones, set aside what runs anew.

    Returns the job numbers by what happens to them: kept, continued, run (anew).
    """
    if jobs is None:
        raise ConvlabError(f"resume={folder}: only sweeps of Hydra's basic sweeper can be resumed (not a search)")
    rundir.settle(folder)  # a job whose process died mid-run says "interrupted"
    found: dict[int, Path] = {}
    for d in sorted(folder.iterdir()):
        m = JOB.match(d.name)
        if not (m and d.is_dir()):
            continue
        if d.is_symlink():
            raise ConvlabError(f"resume={folder}: {d.name} is a link, not a job folder; a sweep writes only inside")
        rundir.check_links(d)  # Hydra and convlab would write through a linked train.log or .hydra/ file
        num = int(m.group(1))
        if num >= len(jobs) or num in found:
            raise ConvlabError(f"resume={folder}: {d.name} is not one of this sweep's {len(jobs)} jobs")
        saved = _saved_overrides(d)
        want = {k: v for k, v in jobs[num].items() if k not in RESUME_MAY_SET}
        if saved is not None and {k: v for k, v in saved.items() if k not in RESUME_MAY_SET} != want:
            raise ConvlabError(
                f"resume={folder}: {d.name} holds a job with other overrides than job {num} of the sweep "
                f"({', '.join(f'{k}={v}' for k, v in want.items())})"
            )
        found[num] = d
    plan: dict[str, list[int]] = {"kept": [], "continued": [], "run": []}
    for num in range(len(jobs)):
        d = found.get(num)
        status = rundir.read_summary(d).get("status") if d else None
        if d is not None and rundir.is_locked(d):
            rundir.lock(d)  # its own one line: which process runs it
        if status == "ok" or (status in ENDED and not rerun_failed):
            plan["kept"].append(num)
        elif d is not None and status not in ENDED and rundir.RunDir(d).last.is_file():
            plan["continued"].append(num)
        else:
            if d is not None and rundir.holds_run(d):
                _set_aside(folder, d)
            plan["run"].append(num)
    return plan


def _saved_overrides(job: Path) -> dict[str, str] | None:
    """A job folder's .hydra/overrides.yaml as {key: value}; None when it has none (it never started)."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        return {o.key_or_group: _value(o) for o in _parse(_load(path))}
    except Exception:
        raise ConvlabError(f"{path} is not a job's override list Hydra wrote") from None


def _set_aside(folder: Path, job: Path) -> None:
    """Move a job folder that runs anew into the sweep's .replaced/ (kept, out of the sweep's tables)."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    target = folder / KEPT_ASIDE / f"{job.name}.{stamp}"
    try:
        target.parent.mkdir(exist_ok=True)
        shutil.move(job, target)
    except OSError as e:
        raise ConvlabError(f"cannot move {job} aside to {target}: {e.strerror or e}") from None
