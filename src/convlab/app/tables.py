"""Runs as a table: one row per run, written as Markdown or CSV (the sweep summary and `convlab report`)."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from typing import Any

from convlab.app.runs import RunRecord, differing_keys, task_classes

# What in a value could end a table cell, open a link or image, a code span or emphasis (HTML is escaped apart).
_MARKDOWN = re.compile(r"([\\`*\[\]|~])")


def md_text(value: Any) -> str:
    """Text a run folder supplied, safe in Markdown and HTML: one line, tags and Markdown syntax escaped."""
    text = " ".join(str(value).split())  # a newline would end a table row or start a heading
    return html.escape(_MARKDOWN.sub(r"\\\1", text), quote=False)


def md_code(value: Any) -> str:
    """`value` as an inline code span: one line, no backtick to end it early, no HTML."""
    text = " ".join(str(value).split()).replace("`", "'").replace("|", "\\|")  # a | ends a table cell even here
    return "`" + html.escape(text, quote=False) + "`"


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
    if r.status in ("failed", "diverged"):
        lines = (r.summary.get("error") or "").strip().splitlines()
        return f"{r.status}: {lines[0] if lines else ''}"
    return r.status


def metric_columns(runs: list[RunRecord]) -> dict[str, tuple[Callable[[RunRecord], Any], int]]:
    """The columns of `table` that are measured, by header: (how to read one from a run, digits shown)."""
    best_name = next((r.summary["best"]["metric"] for r in runs if r.summary.get("best")), "best")
    # final-epoch and test values
    columns = dict.fromkeys(c for task in task_classes(runs) for c in task.report.columns)
    values = [c for c in columns if any(r.value(c) is not None for r in runs)]
    return (
        {f"best {best_name}": (lambda r: (r.summary.get("best") or {}).get("value"), 4)}
        | {c if c.startswith("test/") else f"final {c}": (lambda r, c=c: r.value(c), 4) for c in values}
        | {
            "epochs": (lambda r: r.summary.get("epochs"), 1),
            "wall s": (lambda r: r.summary.get("wall_time_s"), 1),
            "images/s": (lambda r: r.summary.get("images_per_s"), 0),
        }
    )


def table(runs: list[RunRecord]) -> list[dict[str, str]]:
    """One row per run: job, differing overrides, status, best and final values, test values, cost."""
    keys = differing_keys(runs)
    metrics = metric_columns(runs)
    rows = []
    for r in runs:
        row = {"job": r.path.name.split("_", 1)[0] if re.match(r"\d+(_|$)", r.path.name) else r.path.name}
        row |= {k: r.overrides.get(k, "(default)") for k in keys}
        row["status"] = status_text(r)
        row |= {header: _fmt(get(r), digits) for header, (get, digits) in metrics.items()}
        images = row.pop("images/s")  # after the model's size, where the table has always shown it
        row |= {
            "parameters": f"{r.summary['parameters']:,}" if r.summary.get("parameters") else "",
            "MACs": f"{r.summary['macs']:,}" if r.summary.get("macs") else "",
            "images/s": images,
        }
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, str]]) -> str:
    """A GitHub-style table."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(map(md_text, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(md_text(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The same rows as CSV, numbers without thousands separators so spreadsheets read them."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([row | {k: row[k].replace(",", "") for k in ("parameters", "MACs") if k in row} for row in rows])
    return buf.getvalue()
