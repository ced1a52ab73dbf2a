"""The end of a `convlab train -m` sweep: summary.csv and summary.md in the sweep folder, and the table.

Runs that differ only in their seed are also folded into one row per setting (summary_seeds.csv, and a
section of summary.md and of the printed table): see convlab.app.seeds.

A Hydra callback (conf/train.yaml: hydra.callbacks), so it runs with any launcher, once, in the
process that started the sweep, after every job has ended; it reads the jobs' folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from convlab.app.runs import RunRecord, find_runs
from convlab.app.seeds import seed_csv, seed_groups, seeds_markdown
from convlab.app.tables import table, to_csv, to_markdown
from convlab.run import rundir

# Jobs of the last sweep in this process that did not end "ok" (the CLI's exit code reads it).
last_sweep = {"jobs": 0, "failed": 0}


class SweepSummary(Callback):
    """Tabulate every job of a finished sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write summary.csv / summary.md (and summary_seeds.csv when seeds fold) and print the table."""
        from convlab.core.io import copy_atomic, write_atomic  # imports torch: only once a sweep has ended

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rundir.settle(sweep_dir)  # a job whose process died mid-run says so
        runs = find_runs([sweep_dir])
        rows = table(runs)
        text = to_markdown(rows)
        write_atomic(sweep_dir / "summary.csv", lambda tmp: Path(tmp).write_text(to_csv(rows)))
        groups = seed_groups(runs)
        if groups:
            text += "\n\n" + seeds_markdown(groups, runs)
            write_atomic(sweep_dir / "summary_seeds.csv", lambda tmp: Path(tmp).write_text(seed_csv(groups, runs)))
        write_atomic(sweep_dir / "summary.md", lambda tmp: Path(tmp).write_text(f"# Sweep {sweep_dir}\n\n{text}\n"))
        failed = sum(r.status != "ok" for r in runs)
        last_sweep.update(jobs=len(runs), failed=failed)
        print(
            f"\nsweep {sweep_dir}: {len(runs) - failed} of {len(runs)} jobs ok\n{text}\n"
            f"(also in summary.md and summary.csv{' and summary_seeds.csv' if groups else ''})"
        )
        best = best_run(runs)
        if best is not None:
            copy_atomic(best.path / ".hydra" / "config.yaml", sweep_dir / "best_config.yaml")
            b = best.summary["best"]
            print(
                f"best: {best.label} ({best.path.name}) with {b['metric']} {b['value']:.4f}; "
                f"its config: {sweep_dir / 'best_config.yaml'}"
            )


def best_run(runs: list[RunRecord]) -> RunRecord | None:
    """The finished run with the best monitored validation value (highest or lowest, as it asks)."""
    scored = [r for r in runs if r.status == "ok" and (r.summary.get("best") or {}).get("value") is not None]
    scored = [r for r in scored if (r.path / ".hydra" / "config.yaml").is_file()]
    if not scored:
        return None
    sign = 1 if scored[0].summary["best"]["mode"] == "max" else -1
    return max(scored, key=lambda r: sign * r.summary["best"]["value"])
