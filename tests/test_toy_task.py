"""A new task type needs no command module: tests/toy_task.py trains, evaluates, reports and resumes as it stands."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import convlab
from convlab.app.evaluate import sample_checkpoint
from convlab.app.inspect import inspect_model
from convlab.app.report import report
from convlab.app.runs import find_runs, read_run, task_of
from convlab.core.errors import ConvlabError
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from convlab.run.trust import TRUST_ENV
from tests.conftest import REPO, make_cfg, run_cli
from tests.toy_task import OVERRIDES, TARGETS, ToyTask

# fp32: the interrupted and the whole run are compared number for number.
TOY = [*OVERRIDES, "data=synthetic", "data.num_train=320", "data.num_test=64", "batch_size=32", "epochs=2",
       "device=cpu", "optim.lr=0.5", "trainer.precision=fp32"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def trust_toy() -> Iterator[None]:
    """The toy's classes are named on the command line, not in conf/: reading its runs back needs the user's say-so."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(TRUST_ENV, TARGETS)
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNS/full: two epochs (convlab.train, which composes and records as the CLI does).

    RUNS/cut: one, then `convlab train resume=`.
    """
    root = tmp_path_factory.mktemp("toy")
    assert convlab.train(*TOY, out_dir=root / "full", quiet=True)["status"] == "ok"
    stopped = train(make_cfg(root / "cut", *TOY, "trainer.stop_after=1"))
    assert stopped["status"] == "stopped" and load_checkpoint(root / "cut")["epoch"] == 1
    resumed = run_cli("train", f"resume={root / 'cut'}")
    assert resumed.returncode == 0, resumed.stderr
    return root


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def curves(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in load_checkpoint(run)["history"]]


def test_train_writes_its_metrics(runs: Path) -> None:
    s = summary(runs / "full")
    assert s["status"] == "ok" and s["epochs"] == 2 and s["model"] == "toy" and s["parameters"] == 391
    assert s["best"]["metric"] == "val/mse" and s["best"]["mode"] == "min" and set(s["test"]) == {"mse"}
    header, *rows = (runs / "full" / "metrics.csv").read_text().splitlines()
    assert {"train/mse", "val/mse"} <= set(header.split(",")) and len(rows) == 2
    history = curves(runs / "full")
    assert history[1]["val/mse"] < history[0]["val/mse"]  # it learns
    assert load_checkpoint(runs / "full")["config"]["task"] == {"_target_": "tests.toy_task.ToyTask", "noise": 0.1}


def test_an_interrupted_run_resumes_to_the_same_numbers(runs: Path) -> None:
    assert summary(runs / "cut")["status"] == "ok" and summary(runs / "cut")["epochs"] == 2
    assert curves(runs / "cut") == curves(runs / "full")
    assert summary(runs / "cut")["test"] == summary(runs / "full")["test"]
    a, b = (load_checkpoint(runs / name)["task"]["models"]["model"] for name in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_scores_the_checkpoint(runs: Path) -> None:
    proc = run_cli("eval", f"ckpt={runs / 'full'}", "device=cpu", "precision=fp32", "batch_size=32")
    assert proc.returncode == 0, proc.stderr
    printed = re.search(r"^MSE +(\d+\.\d{4})$", proc.stdout, re.MULTILINE)  # named as ToyTask.metric_names says
    assert printed and abs(float(printed.group(1)) - summary(runs / "full")["test"]["mse"]) <= 5e-5, proc.stdout
    assert "(toy on synthetic, after epoch 2)" in proc.stdout


def test_report_shows_its_metrics_and_curves(runs: Path, tmp_path: Path) -> None:
    md = report(OmegaConf.create({"paths": [str(runs)], "out": str(tmp_path)})).read_text()
    head, rule, *rows = [line for line in md.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert {"best val/mse", "final val/mse", "test/mse"} <= set(columns)
    for row in rows:
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))
        run = runs / cells["job"]
        assert (
            cells["test/mse"] == f"{summary(run)['test']['mse']:.4f}"
            and cells["final val/mse"] == f"{curves(run)[-1]['val/mse']:.4f}"
        )
    assert len(rows) == 2 and "![Reconstruction error per epoch](toy_curves.png)" in md
    assert (tmp_path / "toy_curves.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "curves.png").exists()


def test_runs_are_recognised_by_config_or_by_marker(runs: Path) -> None:
    assert task_of(runs / "full", []) is ToyTask  # .hydra/config.yaml names it (and it is trusted)
    assert (
        not (runs / "cut" / ".hydra" / "config.yaml").is_file() and read_run(runs / "cut").task is ToyTask
    )  # its train/mse column
    gan = task_of(
        REPO / "tests" / "fixtures" / "runs_v0_1" / "gan", []
    )  # its config says task: ${gan}, a link followed without resolvers
    assert gan is not None and gan.samples and gan.kind == "GAN"
    with pytest.MonkeyPatch.context() as m:
        m.delenv(TRUST_ENV)
        assert [r.task for r in find_runs([runs])] == [None, None]  # an untrusted config is not imported


def test_sample_and_inspect_refuse_it_in_one_line(runs: Path, tmp_path: Path) -> None:
    with initialize_config_module("convlab.conf", version_base="1.3"):
        sample = compose("sample", overrides=[f"ckpt={runs / 'full'}", f"out={tmp_path / 'grid.png'}", "device=cpu"])
        inspect = compose("inspect", overrides=[f"ckpt={runs / 'full'}", f"out={tmp_path / 'inspect'}", "device=cpu"])
    with pytest.raises(
        ConvlabError,
        match=r"^checkpoint .*last\.pt holds a toy autoencoder; convlab sample needs a generator \(model=dcgan\)$",
    ):
        sample_checkpoint(sample)
    with pytest.raises(
        ConvlabError, match=r"^checkpoint .*last\.pt holds a toy autoencoder; convlab inspect reads classifiers$"
    ):
        inspect_model(inspect)
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "inspect").exists()


def test_no_source_file_knows_the_toy_and_no_command_names_a_task() -> None:
    src = REPO / "src" / "convlab"
    assert not [p for p in src.rglob("*.py") if re.search(r"toy|ToyTask", p.read_text())]
    commands = [src / "app" / f"{name}.py" for name in ("evaluate", "inspect", "report", "runs", "sweep")]
    named = re.compile(r"tasks\.(gan|classification)|GANTask|ClassificationTask|DCGAN|\"generator\"|hasattr\(")
    assert [p.name for p in commands if named.search(p.read_text())] == []
