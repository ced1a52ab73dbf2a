"""Runs that differ only in their seed, folded together: one row per setting (mean ± std, n, min–max).

A sweep such as `+experiment=lab_precision` asks whether two settings differ, and its seeds say how
much a result moves when nothing but the random seed changes. Only runs that ended ok count; the
others are named as left out. Settings are compared with a stated rule of thumb, not a statistical test.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from convlab.app.runs import RunRecord, differing_keys
from convlab.app.tables import md_code, md_text, metric_columns, to_csv, to_markdown

SEED = "seed"
SPREAD = 2  # two settings differ by more than their seed spread when |Δ mean| > SPREAD · the larger std
RULE = (
    f"Two settings differ by more than their seed spread when their means are further apart than {SPREAD} times "
    f"the larger of their two standard deviations (|Δ mean| > {SPREAD} · max std); otherwise the difference is "
    "within the seed spread. This is a rule of thumb for reading the table, not a test of statistical "
    "significance: with a few seeds the standard deviation is itself rough."
)


@dataclass(frozen=True)
class Stats:
    """A metric over a group's seeds; std is the sample standard deviation (n - 1), None for a single value."""

    n: int
    mean: float
    std: float | None
    low: float
    high: float


def stats(values: list[float]) -> Stats | None:
    """The mean, sample std and range of `values`; None when there are none."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(len(values), statistics.fmean(values), std, min(values), max(values))


@dataclass
class SeedGroup:
    """Runs whose overrides are the same but for the seed."""

    settings: dict[str, str]  # the overrides that tell this group from the others
    runs: list[RunRecord]

    @property
    def label(self) -> str:
        """The settings as `key=value, ...` (only keys that differ between groups)."""
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "all runs"

    @property
    def ok(self) -> list[RunRecord]:
        """The runs that count: those that ended ok."""
        return [r for r in self.runs if r.status == "ok"]

    def stats(self, get: Callable[[RunRecord], Any]) -> Stats | None:
        """A metric over the group's ok runs (those that have it)."""
        return stats([float(v) for r in self.ok if (v := get(r)) is not None])


def seed_groups(runs: list[RunRecord]) -> list[SeedGroup]:
    """Runs grouped by their overrides less the seed, in order; [] unless some group has two ok runs to fold."""
    keys = differing_keys(runs)
    if SEED not in keys:  # runs that share their seed are repeats, not seeds
        return []
    keys.remove(SEED)
    groups: dict[tuple[str, ...], SeedGroup] = {}
    for r in runs:
        settings = {k: r.overrides.get(k, "(default)") for k in keys}
        groups.setdefault(tuple(settings.values()), SeedGroup(settings, [])).runs.append(r)
    return list(groups.values()) if any(len(g.ok) >= 2 for g in groups.values()) else []


def epoch_stats(runs: list[RunRecord], key: str) -> list[tuple[float, Stats]]:
    """`key` per epoch over `runs`, each epoch over the runs that reached it."""
    by_epoch: dict[float, list[float]] = {}
    for r in runs:
        for row in r.history:
            if key in row:
                by_epoch.setdefault(row["epoch"], []).append(row[key])
    return [(epoch, s) for epoch, values in sorted(by_epoch.items()) if (s := stats(values))]


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _cell(s: Stats | None, digits: int) -> str:
    """`mean ± std (min–max)`; a single run's value with std –; empty when no run has the metric."""
    if s is None:
        return ""
    if s.std is None:
        return f"{_num(s.mean, digits)} ± –"
    return f"{_num(s.mean, digits)} ± {_num(s.std, digits)} ({_num(s.low, digits)}–{_num(s.high, digits)})"


def _left_out(g: SeedGroup) -> list[RunRecord]:
    return [r for r in g.runs if r.status != "ok"]


def seed_rows(groups: list[SeedGroup], runs: list[RunRecord]) -> list[dict[str, str]]:
    """One row per group: setting, n, each metric as `mean ± std (min–max)`, and how many runs were left out."""
    metrics = metric_columns(runs)
    show_left_out = any(_left_out(g) for g in groups)
    rows = []
    for g in groups:
        row = {"setting": g.label, "n": str(len(g.ok))}
        row |= {header: _cell(g.stats(get), digits) for header, (get, digits) in metrics.items()}
        if show_left_out:
            row["left out (not ok)"] = str(len(_left_out(g)))
        rows.append(row)
    return rows


def seed_csv(groups: list[SeedGroup], runs: list[RunRecord]) -> str:
    """The folded rows as CSV: a column per differing key, n, left out, then each metric's mean, std, min and max."""
    metrics = metric_columns(runs)
    rows = []
    for g in groups:
        row: dict[str, Any] = g.settings | {"n": len(g.ok), "left out": len(_left_out(g))}
        for header, (get, _) in metrics.items():
            s = g.stats(get)
            numbers = (s.mean, s.std, s.low, s.high) if s else (None,) * 4
            parts = zip(("mean", "std", "min", "max"), numbers, strict=True)
            row |= {f"{header} {part}": "" if v is None else v for part, v in parts}
        rows.append(row)
    return to_csv(rows)


def main_metric(groups: list[SeedGroup], runs: list[RunRecord]) -> tuple[str, Callable[[RunRecord], Any], int]:
    """The metric settings are compared by: the first test value the ok runs have, else the best validation value."""
    metrics = metric_columns(runs)
    ok = [r for g in groups for r in g.ok]
    header = next((h for h in metrics if h.startswith("test/") and any(metrics[h][0](r) is not None for r in ok)), None)
    header = header or next(iter(metrics))
    return header, *metrics[header]


def comparisons(groups: list[SeedGroup], runs: list[RunRecord]) -> list[str]:
    """A sentence per pair of settings that differ in one key: is the difference larger than their seed spread?"""
    header, get, digits = main_metric(groups, runs)
    lines = []
    for a, b in combinations(groups, 2):
        differ = [k for k in a.settings if a.settings[k] != b.settings[k]]
        sa, sb = a.stats(get), b.stats(get)
        if len(differ) != 1 or sa is None or sb is None:
            continue  # two keys at once would mix their effects; a group without ok runs has nothing to compare
        key = differ[0]
        same = ", ".join(f"{k}={v}" for k, v in a.settings.items() if k != key)
        where = f" with {md_code(same)}" if same else ""
        delta = abs(sa.mean - sb.mean)
        head = (
            f"- {md_text(header)}{where}: {md_code(f'{key}={a.settings[key]}')} {_num(sa.mean, digits)} (n={sa.n}) "
            f"against {md_code(f'{key}={b.settings[key]}')} {_num(sb.mean, digits)} (n={sb.n}): "
            f"they differ by {_num(delta, digits)}"
        )
        if sa.std is None or sb.std is None:
            lines.append(f"{head}; one of them has a single ok run, so its seed spread is unknown: cannot tell.")
            continue
        larger = delta > SPREAD * max(sa.std, sb.std)
        verdict = "**larger than the seed spread**" if larger else "**within the seed spread**"
        lines.append(
            f"{head}; their seed spreads (std) are {_num(sa.std, digits)} and {_num(sb.std, digits)}: "
            f"the difference is {verdict}."
        )
    return lines


def seeds_markdown(groups: list[SeedGroup], runs: list[RunRecord]) -> str:
    """The folded table, the runs it left out, and the comparisons of settings, as a Markdown section."""
    md = [
        "## Seeds folded: mean ± std over n seeds\n",
        "Runs that differ only in `seed`, one row per setting: each metric as mean ± sample std (min–max) "
        "over the n runs that ended ok.\n",
        to_markdown(seed_rows(groups, runs)),
        "",
    ]
    left_out = [r for g in groups for r in _left_out(g)]
    if left_out:
        named = ", ".join(f"{md_code(r.label)} ({md_text(r.status)})" for r in left_out)
        md += [f"{len(left_out)} of {len(runs)} runs did not end ok and are left out: {named}.\n"]
    lines = comparisons(groups, runs)
    if lines:
        md += ["### Do the settings differ by more than their seed spread?\n", RULE + "\n", *lines, ""]
    return "\n".join(md)
