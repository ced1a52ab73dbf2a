"""`convlab report PATH...`: report.md and PNG figures comparing runs, read from their folders."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig

from convlab.app.runs import RunRecord, find_runs, task_classes
from convlab.app.seeds import SeedGroup, epoch_stats, seed_groups, seeds_markdown, stats
from convlab.app.tables import md_code, md_text, table, to_markdown
from convlab.core.errors import ConfigError, ConvlabError
from convlab.core.io import write_atomic
from convlab.core.plots import confusion_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _panel_grid(panels: tuple[tuple[str, str], ...]) -> tuple[Figure, list[Axes]]:
    """2 panels a row, titled, epochs along x; 1200 px wide, 400 px a row."""
    rows = max(1, math.ceil(len(panels) / 2))
    fig = Figure(figsize=(12, 4 * rows), dpi=100)
    axes = [fig.add_subplot(rows, 2, i + 1) for i in range(len(panels))]
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    return fig, axes


def _finish(fig: Figure, axes: list[Axes]) -> Figure:
    """The legend in the first panel; a single epoch shown as a tick at 1, not as fractions of an epoch around it."""
    for ax in axes:
        if ax.get_xlim()[1] < 2:
            ax.set_xlim(0.5, 1.5)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(runs: list[RunRecord], panels: tuple[tuple[str, str], ...]) -> Figure:
    """Per-epoch curves, 2 panels a row, runs overlaid and labelled; 1200 px wide, 400 px a row (4 panels: 1200×800)."""
    fig, axes = _panel_grid(panels)
    for ax, (key, _) in zip(axes, panels, strict=True):
        for r in runs:
            points = [(row["epoch"], row[key]) for row in r.history if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=r.label)  # (epochs, values)
    return _finish(fig, axes)


def seed_curves_figure(groups: list[SeedGroup], panels: tuple[tuple[str, str], ...]) -> Figure:
    """Each group's mean curve over its ok runs, a band of ± one std where 2+ runs reached the epoch."""
    fig, axes = _panel_grid(panels)
    for ax, (key, _) in zip(axes, panels, strict=True):
        for g in groups:
            curve = epoch_stats(g.ok, key)
            if curve:
                epochs = [epoch for epoch, _ in curve]
                means = [s.mean for _, s in curve]
                spread = [s.std or 0.0 for _, s in curve]
                (line,) = ax.plot(epochs, means, marker="o", markersize=3, label=f"{g.label} (n={len(g.ok)})")
                low = [m - d for m, d in zip(means, spread, strict=True)]
                high = [m + d for m, d in zip(means, spread, strict=True)]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
                if len(epochs) == 1:  # a band needs two epochs: an error bar shows the spread of one
                    ax.errorbar(epochs, means, yerr=spread, fmt="none", ecolor=line.get_color(), capsize=4)
    return _finish(fig, axes)


def accuracy_bars(runs: list[RunRecord], key: str = "acc", label: str = "test accuracy") -> Figure:
    """Final test value `key` (accuracy) per run, labelled with parameters and images/s; 1000 px wide, 120 px a run."""
    fig = Figure(figsize=(10, 1.5 + 1.2 * len(runs)), dpi=100)
    ax = fig.add_subplot()
    accs = [r.value(f"test/{key}") for r in runs]
    labels = [
        f"{r.label}\n{r.summary.get('parameters') or 0:,} params, {r.summary.get('images_per_s') or 0:.0f} img/s"
        for r in runs
    ]
    ax.barh(range(len(runs)), accs, color="tab:blue")
    for i, acc in enumerate(accs):
        ax.text(acc, i, f" {acc:.3f}", va="center")
    ax.set_yticks(range(len(runs)), labels, fontsize=8)
    ax.invert_yaxis()
    top = max(accs) * 1.2 + 0.05
    ax.set_xlim(0, min(1.0, top) if max(accs) <= 1 else top)  # fractions end at 1
    ax.set_xlabel(label)
    fig.tight_layout()
    return fig


def seed_bars(groups: list[SeedGroup], key: str = "acc", label: str = "test accuracy") -> Figure:
    """Mean final test value `key` per group, a ± one std error bar, each seed a dot; 1000 px wide, 120 px a group."""
    fig = Figure(figsize=(10, 1.5 + 1.2 * len(groups)), dpi=100)
    ax = fig.add_subplot()
    top = 0.0
    for i, g in enumerate(groups):
        values = [v for r in g.ok if (v := r.value(f"test/{key}")) is not None]
        s = stats(values)
        ax.barh(i, s.mean, xerr=s.std or 0.0, color="tab:blue", alpha=0.6, ecolor="black", capsize=6)
        ax.scatter(values, [i] * len(values), facecolor="white", edgecolor="black", s=24, zorder=3)
        spread = f"{s.std:.3f}" if s.std is not None else "–"
        right = max(s.high, s.mean + (s.std or 0.0))
        ax.text(right, i, f"  {s.mean:.3f} ± {spread} (n={s.n})", va="center")
        top = max(top, right)
    ax.set_yticks(range(len(groups)), [g.label for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, top * 1.2 + 0.05) if top <= 1 else top * 1.2 + 0.05)  # fractions end at 1
    ax.set_xlabel(f"{label}: mean ± std over seeds (dots: each seed)")
    fig.tight_layout()
    return fig


def accuracy_vs_macs(runs: list[RunRecord], key: str = "acc", label: str = "test accuracy") -> Figure:
    """Test value `key` (accuracy) against multiply-adds per image (log scale), a labelled point per run; 900×600 px."""
    fig = Figure(figsize=(9, 6), dpi=100)
    ax = fig.add_subplot()
    for r in runs:
        macs, acc = r.summary["macs"], r.value(f"test/{key}")
        ax.scatter(macs, acc, s=30)
        ax.annotate(r.label, (macs, acc), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (multiply-adds = FLOPs / 2), log scale")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def report(cfg: DictConfig) -> Path:
    """Write report.md and its figures for the runs under `cfg.paths` into `cfg.out`; returns report.md."""
    paths = [Path(p) for p in cfg.paths or []]
    if not paths:
        raise ConfigError("convlab report needs run or sweep folders: convlab report outputs/multirun/DATE/TIME [...]")
    for p in paths:
        if not p.is_dir():
            what = f"{p} is a file, not a folder" if p.exists() else f"no folder {p}"
            raise ConvlabError(f"{what}; give run folders or sweep folders (outputs/..., outputs/multirun/...)")
    runs = find_runs(paths)
    if not runs:
        raise ConvlabError(
            f"no runs found in {', '.join(map(str, paths))} (a run folder holds summary.json or metrics.csv)"
        )
    out = (
        Path(cfg.out)
        if cfg.out
        else paths[0]
        if len(paths) == 1
        else Path("outputs") / "reports" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"out={out} is a file, not a folder; give a folder for report.md and its figures (it is created if missing)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write(out, runs, paths)
    except OSError as e:
        raise ConvlabError(
            f"cannot write the report into {out} ({e.strerror or e}); give a writable folder as out="
        ) from None


def _own_png(path: Path) -> Path | None:
    """`path` if it is a PNG file of the run's own (never a link to a file elsewhere, never a FIFO)."""
    if path.is_symlink() or not path.is_file():  # a FIFO would block the copy forever
        return None
    try:
        with open(path, "rb") as f:
            return path if f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE else None
    except OSError:
        return None


def _last_grid(run: RunRecord) -> Path | None:
    """The run's last sample grid, if it is a PNG of its own."""
    grids = sorted((run.path / "samples").glob("epoch_*.png"))
    return _own_png(grids[-1]) if grids else None


def _write(out: Path, runs: list[RunRecord], paths: list[Path]) -> Path:
    """report.md and the figures in `out`, each written atomically (a symbolic link replaced, not written through)."""
    md = [
        f"# convlab report\n\n{len(runs)} runs from {', '.join(md_code(p) for p in paths)}\n",
        to_markdown(table(runs)),
        "",
    ]
    groups = seed_groups(runs)
    if groups:
        md += [seeds_markdown(groups, runs)]
    md += ["## Runs (labels in the figures)\n"]
    for r in runs:
        detail = r.problem or r.summary.get("error")
        note = "ok" if r.status == "ok" else f"**{md_text(r.status)}**" + (f": {md_text(detail)}" if detail else "")
        md.append(f"- {md_code(r.label)}: {note} ({md_code(r.path)})")
    md.append("")

    def figure(name: str, fig: Figure, caption: str) -> None:
        write_atomic(out / name, lambda tmp: fig.savefig(tmp, format="png"))
        md.extend([f"## {caption}\n", f"![{caption}]({name})\n"])

    for task in task_classes(runs):  # each task's own curves, test figures and samples, as its class declares them
        spec = task.report
        keys = {key for key, _ in spec.curves}
        drawn = [r for r in runs if r.task is task and any(keys & row.keys() for row in r.history)]
        if drawn:
            png = spec.curves_png or f"{task.__name__.lower()}_curves.png"
            mine = [g for g in groups if g.ok and g.ok[0].task is task]  # seeds folded: a band, not a line per seed
            if mine:
                caption = f"{spec.caption}: mean over seeds, band ± one std"
                figure(png.replace(".png", "_seeds.png"), seed_curves_figure(mine, spec.curves), caption)
            else:
                figure(png, curves_figure(drawn, spec.curves), spec.caption)
            if spec.test_metric:
                _test_figures(drawn, spec.test_metric, figure, md, out, mine)
            if task.samples:
                _samples(drawn, md, out)
    path = out / "report.md"
    write_atomic(path, lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"))
    return path


def _test_figures(
    runs: list[RunRecord],
    metric: tuple[str, str],
    figure: Callable[[str, Figure, str], None],
    md: list[str],
    out: Path,
    groups: list[SeedGroup],
) -> None:
    """A test value (accuracy) per run or seed group, against MACs, beside each effective field; the best confusion."""
    key, label = metric
    tested = [r for r in runs if r.value(f"test/{key}") is not None]
    barred = [g for g in groups if any(r.value(f"test/{key}") is not None for r in g.ok)]
    if barred:
        figure("test_accuracy_seeds.png", seed_bars(barred, key, label), f"Final {label}: mean ± std over seeds")
    elif tested:
        figure("test_accuracy.png", accuracy_bars(tested, key, label), f"Final {label}")
    counted = [r for r in tested if r.summary.get("macs")]
    if counted:
        figure(
            "accuracy_vs_macs.png",
            accuracy_vs_macs(counted, key, label),
            f"{label.capitalize()} against MACs per image",
        )
    fields = [(r, _own_png(r.path / "effective_field.png")) for r in tested]
    if any(png for _, png in fields):
        md += [
            "## Effective receptive fields\n",
            "Mean |∂ centre unit / ∂ input| of each run's last spatial layer over 32 test images, after training.\n",
        ]
        md += [f"| run | {label} | effective receptive field |", "|---|---|---|"]
        for i, (r, png) in enumerate(fields):
            if png:
                write_atomic(out / f"field_{i}.png", lambda tmp, png=png: shutil.copyfile(png, tmp))
                md.append(f"| {md_code(r.label)} | {r.value(f'test/{key}'):.3f} | ![field](field_{i}.png) |")
        md.append("")
    best = max(
        (r for r in tested if r.summary["test"].get("confusion")), key=lambda r: r.value(f"test/{key}"), default=None
    )
    if best:
        names = list(best.summary["test"].get("per_class_acc") or {}) or [
            str(i) for i in range(len(best.summary["test"]["confusion"]))
        ]
        figure(
            "confusion.png",
            confusion_figure(torch.tensor(best.summary["test"]["confusion"]), names),
            f"Confusion matrix of the best run ({md_text(best.label)})",
        )


def _samples(runs: list[RunRecord], md: list[str], out: Path) -> None:
    """Each run's last sample grid, copied beside the report (only PNGs of the run's own)."""
    for i, r in enumerate(runs):
        grid = _last_grid(r)
        if grid:
            write_atomic(out / f"samples_{i}.png", lambda tmp, grid=grid: shutil.copyfile(grid, tmp))
            title = f"Last samples: {md_text(r.label)} ({grid.stem.replace('_', ' ')})"
            md.append(f"### {title}\n\n![samples](samples_{i}.png)\n")
