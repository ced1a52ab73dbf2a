"""Sweeps end in a summary, `convlab report` draws them, lab studies compose and run, jobs run in parallel."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlab.run.runner import setup
from tests.conftest import CIFAR_SUBSET, REPO, TINY, compose_cfg, one_error_line, run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 4-job sweep on synthetic data whose last job diverges as it trains (a learning rate of 1e30)."""
    out = tmp_path_factory.mktemp("sweep")
    proc = run_cli("train", "-m", "optim.lr=0.01,0.05,0.2,1e30", *TINY, f"hydra.sweep.dir={out}")
    return out, proc


def test_failed_job_does_not_stop_the_sweep(sweep: tuple[Path, object]) -> None:
    out, proc = sweep
    assert proc.returncode == 1, proc.stderr  # the sweep ran to its end, but one job failed
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["optim.lr"] for r in rows] == ["0.01", "0.05", "0.2", "1e+30"]
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "ok", "ok", "diverged"]  # a result, not a crash
    assert "training diverged in epoch 1" in rows[3]["status"]
    assert all(float(r["test/acc"]) >= 0 and int(r["epochs"]) == 2 and int(r["parameters"]) == 3_962 for r in rows[:3])
    assert "| optim.lr |" in (out / "summary.md").read_text() and "3 of 4 jobs ok" in proc.stdout


def test_sweep_jobs_are_named_by_their_overrides_for_tensorboard(sweep: tuple[Path, object]) -> None:
    out, _ = sweep
    jobs = sorted(p.name for p in out.iterdir() if p.is_dir())
    # only the override that differs between jobs: what tells them apart stays visible in every run list
    assert jobs == ["0_optim.lr=0.01", "1_optim.lr=0.05", "2_optim.lr=0.2", "3_optim.lr=1e+30"]
    ea = EventAccumulator(str(out / jobs[1]))
    ea.Reload()
    assert b"optim.lr" in ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]


def test_report_draws_the_sweep(sweep: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = sweep
    proc = run_cli("report", str(out), f"out={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report.md").read_text()
    assert "`optim.lr=0.2`: ok" in md and "`optim.lr=1e+30`: **diverged**: training diverged in epoch 1" in md
    sizes = {name: (1200, 800) for name in ["curves.png"]} | {
        "test_accuracy.png": (1000, 510),
        "confusion.png": (700, 680),
        "accuracy_vs_macs.png": (900, 600),
    }
    for name, size in sizes.items():
        assert (tmp_path / name).stat().st_size > 10_000 and Image.open(tmp_path / name).size == size, name
        assert f"]({name})" in md
    # Each finished run's effective receptive field, beside its accuracy; the failed job drew none.
    assert "## Effective receptive fields" in md and md.count("![field](field_") == 3
    assert all((tmp_path / f"field_{i}.png").read_bytes()[:4] == b"\x89PNG" for i in range(3))
    # The table's parameters and MACs, for every job (the failed one built its model too):
    # 3 convs (30², 28², 26² outputs) + the head.
    assert md.count(f"| {3_962:,} | {194_400 + 903_168 + 1_557_504 + 160:,} |") == 4


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    proc = run_cli("report", str(tmp_path / "nowhere"))
    assert "no folder" in one_error_line(proc) and proc.returncode == 2


EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_its_first_job_steps(name: str, tmp_path: Path, faces_256: Path) -> None:
    full = compose_cfg("train", f"+experiment={name}", return_hydra_config=True)
    sweeps = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in (full.hydra.sweeper.params or {}).items()]
    )
    first = [f"{o.key_or_group}={next(o.sweep_string_iterator())}" for o in sweeps]
    data = {
        "cifar10": [f"data.root={CIFAR_SUBSET}"],
        "anime_faces": [f"data.root={faces_256}", f"data.cache_dir={tmp_path}", "data.image_size=32"],
    }
    extra = data.get(full.data.name, []) + ["batch_size=16", f"out_dir={tmp_path}"]
    cfg = compose_cfg("train", f"+experiment={name}", *first, *extra)
    if full.data.name == "cifar10" and not CIFAR_SUBSET.is_dir():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_SUBSET}")
    run = setup(cfg, write=False)
    metrics, _ = run.trainer.train_epoch(1, max_steps=1)
    assert metrics and all(math.isfinite(v) for v in metrics.values())  # one finite step


@pytest.mark.slow  # 30-50 s: left out of the default run to keep CI under 10 minutes
def test_two_jobs_run_at_once_on_the_cpu(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "-m", "hydra/launcher=parallel", "model=plain_cnn,hdc", *TINY, f"hydra.sweep.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr
    spans = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(spans) == 2 and all(s["status"] == "ok" for s in spans)
    (a0, a1), (b0, b1) = ((datetime.fromisoformat(s["started"]), datetime.fromisoformat(s["ended"])) for s in spans)
    assert a0 < b1 and b0 < a1  # the two jobs overlapped in time
    logs = [p.read_text() for p in tmp_path.glob("*/train.log")]
    assert all("(1 thread), precision " in text for text in logs)  # joblib split the 2 cores between the 2 workers


@pytest.mark.slow  # 50 s: left out of the default run to keep CI under 10 minutes
def test_submitit_local_sweep_keeps_its_summary(tmp_path: Path) -> None:
    # Two jobs through submitit, each with two tasks: one DDP process per task, as on SLURM.
    args = [
        "optim.lr=0.1,0.2",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "model._target_=tests.conftest.TinyNet",
    ]
    proc = run_cli("train", "-m", *args, *TINY, "epochs=1", "device=cpu", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["optim.lr"], r["status"]) for r in rows] == [("0.1", "ok"), ("0.2", "ok")]
    assert (tmp_path / ".submitit").is_dir()  # the jobs really went through submitit
    for summary in tmp_path.glob("*/summary.json"):
        ddp = json.loads(summary.read_text())["ddp"]
        assert ddp["world_size"] == 2 and ddp["replicas_in_sync"]


@pytest.mark.slow  # 25 s: left out of the default run to keep CI under 10 minutes
def test_optuna_search_reports_its_best_trial(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "-m", "+search=lr_wd", "hydra.sweeper.n_trials=4", *TINY, "epochs=1", f"hydra.sweep.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert len(rows) == 4 and {"optim.lr", "optim.weight_decay"} <= set(rows[0])
    assert results["best_value"] == max(float(r["best val/acc"]) for r in rows)
    best = yaml.safe_load((tmp_path / "best_config.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(results["best_params"]["optim.lr"])
    assert "best:" in proc.stdout and "best_config.yaml" in proc.stdout


def test_tensorboard_custom_scalars_for_the_sweep_folder(sweep: tuple[Path, object]) -> None:
    # TensorBoard's own CUSTOM SCALARS plugin, pointed at the sweep's folder as `tensorboard --logdir` would be.
    import re

    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.context import RequestContext
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

    out, _ = sweep
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    context = base_plugin.TBContext(
        logdir=str(out), data_provider=MultiplexerDataProvider(mux, str(out)), plugin_name_to_instance={}
    )
    layout = json.loads(CustomScalarsPlugin(context).layout_impl(RequestContext(), ""))  # what the browser receives
    charts = {(cat["title"], c["title"]): c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts[("train vs val (per epoch)", "loss")] == ["^train/loss$", "^val/loss$"]
    assert charts[("per step", "learning rate")] == ["^step/lr$", "^step/lr/"]
    ok_runs = [run for run in mux.Runs() if "val/acc" in mux.GetAccumulator(run).Tags()["tensors"]]
    assert len(ok_runs) == 3  # the diverged job has no validation
    for run in ok_runs:  # every chart draws curves of its own axis only (^lr/ is for tasks with several optimizers)
        tags = mux.GetAccumulator(run).Tags()["tensors"]
        for (category, title), regexes in charts.items():
            drawn = [t for t in tags if any(re.match(r, t) for r in regexes)]
            assert len(drawn) == (2 if title in ("loss", "accuracy") and category != "per step" else 1), (
                run,
                title,
                drawn,
            )
            assert all(t.startswith("step/") == (category == "per step") for t in drawn)


def test_each_job_records_its_own_command_and_the_sweeps(sweep: tuple[Path, object]) -> None:
    out, _ = sweep
    job = next(out.glob("1_*"))
    command = json.loads((job / "summary.json").read_text())["command"]
    own, sweep_line = command.splitlines()
    assert own.startswith("convlab train optim.lr=0.05 ") and "0.01,0.05" not in own
    assert sweep_line.startswith("(job 1 of the sweep: convlab train -m optim.lr=0.01,0.05,0.2,1e30 ")
