"""Runs read back from their folders (summary.json, metrics.csv, .hydra/overrides.yaml) and tabulated.

Shared by the sweep summary (written when a `-m` sweep ends) and `convlab report`; neither needs
TensorBoard. A run folder without summary.json, or whose summary says "running", is shown as such.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Final-epoch and test values worth a column, in this order, where any run has them.
VALUE_COLUMNS = ("val/acc", "test/acc", "train/loss/D", "train/loss/G", "test/fid")


@dataclass
class RunRecord:
    """One run folder as read from disk."""

    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    label: str = ""

    @property
    def status(self) -> str:
        """ok, failed, interrupted, running, or missing (no summary.json yet)."""
        return self.summary.get("status", "missing")

    def value(self, key: str) -> float | None:
        """A final-epoch value ("val/acc") or an end-of-run test value ("test/acc")."""
        if key.startswith("test/"):
            return self.summary.get("test", {}).get(key.removeprefix("test/"))
        return self.history[-1].get(key) if self.history else None


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra.")}


def _history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(path.open())]


def read_run(run_dir: Path) -> RunRecord:
    """The run in `run_dir`."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return RunRecord(run_dir, _overrides(run_dir), summary, _history(run_dir))


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
        else:
            runs += [read_run(d) for d in sorted((d for d in p.iterdir() if d.is_dir() and _is_run(d)), key=_job_number)]
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


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(runs: list[RunRecord]) -> list[dict[str, str]]:
    """One row per run: job, differing overrides, status, best and final values, test values, cost."""
    keys = differing_keys(runs)
    best_name = next((r.summary["best"]["metric"] for r in runs if r.summary.get("best")), "best")
    values = [c for c in VALUE_COLUMNS if any(r.value(c) is not None for r in runs)]
    rows = []
    for r in runs:
        status = r.status if r.status != "failed" else f"failed: {r.summary.get('error', '').splitlines()[0] if r.summary.get('error') else ''}"
        row = {"job": r.path.name.split("_", 1)[0] if re.match(r"\d+(_|$)", r.path.name) else r.path.name}
        row |= {k: r.overrides.get(k, "(default)") for k in keys}
        row["status"] = status
        row[f"best {best_name}"] = _fmt((r.summary.get("best") or {}).get("value"))
        row |= {c if c.startswith("test/") else f"final {c}": _fmt(r.value(c)) for c in values}
        row |= {
            "epochs": _fmt(r.summary.get("epochs")),
            "wall s": _fmt(r.summary.get("wall_time_s"), 1),
            "parameters": f"{r.summary['parameters']:,}" if r.summary.get("parameters") else "",
            "images/s": _fmt(r.summary.get("images_per_s"), 0),
        }
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, str]]) -> str:
    """A GitHub-style table."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(escape(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, str]]) -> str:
    """The same rows as CSV, numbers without thousands separators so spreadsheets read them."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([row | {"parameters": row["parameters"].replace(",", "")} for row in rows])
    return buf.getvalue()
