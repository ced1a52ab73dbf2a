"""Runs read back from their folders (summary.json, metrics.csv, .hydra/overrides.yaml).

Shared by the sweep summary (written when a `-m` sweep ends) and `convlab report`, which tabulate
them with convlab.app.tables; neither needs TensorBoard. A run folder without summary.json, or
whose summary says "running", is shown as such. Run folders may come from someone else: a file
that cannot be read, or that does not hold what convlab writes, marks its run "broken" with a
one-line reason, and the other runs are reported as usual.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import reprlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convlab.core.errors import ConvlabError
from convlab.run import rundir

STATUSES = ("ok", "failed", "diverged", "interrupted", "running", "stopped")
SUMMARY, METRICS, OVERRIDES, CONFIG = "summary.json", "metrics.csv", ".hydra/overrides.yaml", ".hydra/config.yaml"
# A run writes kilobytes; a larger file is not one of its own (and YAML parsing is slow).
MAX_BYTES = {SUMMARY: 16 << 20, METRICS: 64 << 20, OVERRIDES: 1 << 20, CONFIG: 1 << 20}
MAX_CLASSES = 100  # a larger confusion matrix could not be drawn in the report in reasonable time


class BrokenRun(Exception):
    """A run folder's file that cannot be read or does not hold what convlab writes (a one-line reason)."""


@dataclass
class RunRecord:
    """One run folder as read from disk."""

    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    label: str = ""
    problem: str = ""  # why the run is broken; empty when its files read back fine
    task: Any = None  # the Task class that trained it (its declarations say what to show), None when unknown

    @property
    def status(self) -> str:
        """One of STATUSES, missing (no summary.json yet) or broken (see `problem`)."""
        return "broken" if self.problem else self.summary.get("status", "missing")

    def value(self, key: str) -> float | None:
        """A final-epoch value ("val/acc") or an end-of-run test value ("test/acc")."""
        if key.startswith("test/"):
            return (self.summary.get("test") or {}).get(key.removeprefix("test/"))
        return self.history[-1].get(key) if self.history else None


def _read_text(run_dir: Path, name: str) -> str | None:
    """The text of `run_dir/name`, or None when there is no such file."""
    path = run_dir / name
    try:
        st = os.stat(path)  # follows symlinks; a FIFO must be refused before open() blocks on it
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BrokenRun(f"{name}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
        )
        raise BrokenRun(f"{name} is {kind}, not a regular file")
    if st.st_size > MAX_BYTES[name]:
        raise BrokenRun(f"{name} is {st.st_size:,} bytes, more than a run writes ({MAX_BYTES[name]:,} at most)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BrokenRun(f"{name} is not UTF-8 text") from None
    except OSError as e:
        raise BrokenRun(f"{name}: {e.strerror or e}") from None


def _overrides(run_dir: Path) -> dict[str, str]:
    text = _read_text(run_dir, OVERRIDES)
    try:
        items = yaml.safe_load(text) if text else []
    except (yaml.YAMLError, RecursionError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BrokenRun(
            f"{OVERRIDES} is not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}{where})"
        ) from None
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise BrokenRun(f"{OVERRIDES} holds {reprlib.repr(items)}; expected a list of key=value strings")
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra.")}


def _history(run_dir: Path) -> list[dict[str, float]]:
    text = _read_text(run_dir, METRICS)
    if not text:
        return []
    try:
        header, *lines = csv.reader(io.StringIO(text))
    except csv.Error as e:
        raise BrokenRun(f"{METRICS} is not CSV ({e})") from None
    if "epoch" not in header:
        raise BrokenRun(f"{METRICS} has no epoch column (its header is {reprlib.repr(header)})")
    history = []
    for number, cells in enumerate(lines, start=2):
        if not cells:  # a blank line, as csv.DictReader skips too
            continue
        if len(cells) != len(header):
            raise BrokenRun(f"{METRICS} line {number} has {len(cells)} cells but its header has {len(header)}")
        row = {}
        for k, v in zip(header, cells, strict=True):  # equal lengths: checked just above
            if v == "":
                continue
            try:
                row[k] = float(v)
            except ValueError:
                raise BrokenRun(
                    f"{METRICS} line {number}, column {reprlib.repr(k)}: {reprlib.repr(v)} is not a number"
                ) from None
        if "epoch" not in row:
            raise BrokenRun(f"{METRICS} line {number} has no epoch")
        history.append(row)
    return history


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _matrix(v: Any) -> bool:
    return (
        isinstance(v, list)
        and 0 < len(v) <= MAX_CLASSES
        and all(isinstance(row, list) and len(row) == len(v) and all(map(_count, row)) for row in v)
    )


# (path in summary.json, test, what is allowed): the fields that tables, figures and sweeps read.
# A parent comes before its children, so a child is only looked up inside an object.
SUMMARY_FIELDS: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (("error",), lambda v: isinstance(v, str), "a string"),
    (("epochs",), _count, "a count"),
    (("parameters",), _count, "a count"),
    (("macs",), _count, "a count"),
    (("wall_time_s",), _number, "a number"),
    (("images_per_s",), _number, "a number"),
    (
        ("best",),
        lambda v: isinstance(v, dict) and {"metric", "mode", "value"} <= v.keys(),
        "an object with metric, mode and value",
    ),
    (("best", "metric"), lambda v: isinstance(v, str), "a string"),
    (("best", "mode"), lambda v: v in ("max", "min"), "max or min"),
    (("best", "value"), _number, "a number"),
    (("test",), lambda v: isinstance(v, dict), "an object of test results"),
    (("test", "acc"), lambda v: _number(v) and 0 <= v <= 1, "a fraction from 0 to 1"),
    (("test", "fid"), _number, "a number"),
    (("test", "confusion"), _matrix, f"a square matrix of counts, at most {MAX_CLASSES} classes"),
    (("test", "per_class_acc"), lambda v: isinstance(v, dict), "an object of accuracies by class"),
)


def _summary(run_dir: Path) -> dict[str, Any]:
    text = _read_text(run_dir, SUMMARY)
    if text is None:
        return {}
    try:
        summary = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BrokenRun(f"{SUMMARY} is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(summary, dict):
        raise BrokenRun(f"{SUMMARY} holds {reprlib.repr(summary)}, not a JSON object")
    if summary.get("status") not in STATUSES:
        raise BrokenRun(f"{SUMMARY}: status {reprlib.repr(summary.get('status'))} is not one of {', '.join(STATUSES)}")
    for path, ok, allowed in SUMMARY_FIELDS:
        parent = summary
        for key in path[:-1]:
            parent = parent.get(key) or {}
        value = parent.get(path[-1])
        if value is not None and not ok(value):
            raise BrokenRun(f"{SUMMARY}: {'.'.join(path)} is {reprlib.repr(value)}; expected {allowed}")
    test = summary.get("test") or {}
    if test.get("confusion") and test.get("per_class_acc") and len(test["per_class_acc"]) != len(test["confusion"]):
        raise BrokenRun(
            f"{SUMMARY}: test.per_class_acc names {len(test['per_class_acc'])} classes "
            f"but test.confusion has {len(test['confusion'])}"
        )
    return summary


def _config_target(run_dir: Path) -> Any:
    """The task `_target_` the run's .hydra/config.yaml names, or None (`task: ${gan}` followed; no resolver runs)."""
    try:
        config = yaml.safe_load(_read_text(run_dir, CONFIG) or "")
    except (BrokenRun, yaml.YAMLError, RecursionError):
        return None
    task = config.get("task") if isinstance(config, dict) else None
    link = re.fullmatch(r"\$\{(\w+)\}", task) if isinstance(task, str) else None
    if link:
        task = config.get(link.group(1))
    return task.get("_target_") if isinstance(task, dict) else None


def known_tasks() -> list[type]:
    """The Task classes conf/ names and the user trusts (CONVLAB_TRUST_TARGETS), by target name."""
    from convlab.run import trust
    from convlab.tasks.base import task_class

    classes = (task_class(t) for t in sorted(trust.conf_targets()["task"] | trust.user_targets()))
    return [cls for cls in classes if cls is not None]


def task_of(run_dir: Path, history: list[dict[str, float]]) -> type | None:
    """The Task class that trained a run: its config's if trusted, else the one whose marker column its metrics hold."""
    from convlab.run import trust
    from convlab.tasks.base import task_class

    target = _config_target(run_dir)
    # a run folder's config imports only trusted modules
    named = task_class(target) if trust.allowed("task", target) else None
    if named is not None:
        return named
    columns = {k for row in history for k in row}
    return next((cls for cls in known_tasks() if cls.report.marker in columns), None)


def task_classes(runs: list[RunRecord]) -> list[type]:
    """The Task classes of `runs`, each once, ordered by target name (so classifiers come before GANs)."""
    found = {f"{r.task.__module__}.{r.task.__qualname__}": r.task for r in runs if r.task is not None}
    return [found[name] for name in sorted(found)]


def read_run(run_dir: Path) -> RunRecord:
    """The run in `run_dir`; one whose files cannot be read or make no sense comes back broken, saying why."""
    overrides: dict[str, str] = {}
    try:
        overrides = _overrides(run_dir)
        summary = _summary(run_dir)
        if summary.get("status") == "running" and not rundir.is_locked(run_dir):
            summary |= {"status": "interrupted", "error": rundir.GONE}  # killed, or a machine that went down
        history = _history(run_dir)
        return RunRecord(run_dir, overrides, summary, history, task=task_of(run_dir, history))
    except BrokenRun as e:
        return RunRecord(run_dir, overrides, {}, problem=" ".join(str(e).split()))


def _is_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("summary.json", "metrics.csv", ".hydra/overrides.yaml"))


def _job_number(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)", path.name)
    return (int(m.group(1)) if m else 1 << 30, path.name)


def find_runs(paths: list[Path]) -> list[RunRecord]:
    """Runs in the given run folders and sweep folders (a sweep's jobs in job-number order)."""
    runs = []
    for p in paths:
        if _is_run(p):
            runs.append(read_run(p))
            continue
        try:
            jobs = sorted((d for d in p.iterdir() if d.is_dir() and _is_run(d)), key=_job_number)
        except OSError as e:
            raise ConvlabError(f"cannot list the folder {p} ({e.strerror or e})") from None
        runs += [read_run(d) for d in jobs]
    label_runs(runs)
    return runs


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """Override keys whose value is not the same in every run (a key some runs lack counts)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def label_runs(runs: list[RunRecord]) -> None:
    """Label each run by the overrides that tell it apart (its folder name when none do)."""
    keys = differing_keys(runs)
    for r in runs:
        r.label = " ".join(f"{k}={r.overrides.get(k, '(default)')}" for k in keys) or r.path.name
