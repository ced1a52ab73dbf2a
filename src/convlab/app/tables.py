"""Runs as a table: one row per run, written as Markdown or CSV (the sweep summary and `convlab report`)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from convlab.app.runs import RunRecord, differing_keys, task_classes


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def status_text(r: RunRecord) -> str:
    """The status with the first line of its error, or the reason a broken run is broken."""
    if r.status == "broken":
        return f"broken: {r.problem}"
    if r.status == "failed":
        lines = (r.summary.get("error") or "").strip().splitlines()
        return f"failed: {lines[0] if lines else ''}"
    return r.status


def table(runs: list[RunRecord]) -> list[dict[str, str]]:
    """One row per run: job, differing overrides, status, best and final values, test values, cost."""
    keys = differing_keys(runs)
    best_name = next((r.summary["best"]["metric"] for r in runs if r.summary.get("best")), "best")
    # final-epoch and test values
    columns = dict.fromkeys(c for task in task_classes(runs) for c in task.report.columns)
    values = [c for c in columns if any(r.value(c) is not None for r in runs)]
    rows = []
    for r in runs:
        row = {"job": r.path.name.split("_", 1)[0] if re.match(r"\d+(_|$)", r.path.name) else r.path.name}
        row |= {k: r.overrides.get(k, "(default)") for k in keys}
        row["status"] = status_text(r)
        row[f"best {best_name}"] = _fmt((r.summary.get("best") or {}).get("value"))
        row |= {c if c.startswith("test/") else f"final {c}": _fmt(r.value(c)) for c in values}
        row |= {
            "epochs": _fmt(r.summary.get("epochs")),
            "wall s": _fmt(r.summary.get("wall_time_s"), 1),
            "parameters": f"{r.summary['parameters']:,}" if r.summary.get("parameters") else "",
            "MACs": f"{r.summary['macs']:,}" if r.summary.get("macs") else "",
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
        w.writerows([row | {k: row[k].replace(",", "") for k in ("parameters", "MACs")} for row in rows])
    return buf.getvalue()
