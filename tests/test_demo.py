"""The README demo run once (hdc on the synthetic data, 2 epochs) and what a user does with its folder.

Its own file, so pytest-xdist (--dist loadfile) runs this 2-minute module beside test_cli.py, not after it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import compose_cfg, one_error_line, run_cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README demo (hdc, synthetic data, 2 epochs) run once for the tests below."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("train", "+experiment=synthetic_demo", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    return out


def test_demo_learns_the_synthetic_data(demo_run: Path) -> None:
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["model"] == "hdc" and summary["epochs"] == 2
    assert summary["best"]["value"] >= 0.60  # the bar: well above the 10 % of chance
    first = (demo_run / "train.log").read_text().splitlines()[0]
    # The run's first line says which precision and why (bf16 where this CPU has native bf16, fp32 elsewhere).
    assert f"precision {summary['precision']} (auto: " in first and summary["precision_reason"] in first
    assert ("has native bf16" in first) == (summary["precision"] == "bf16")


def test_run_folder_holds_config_events_metrics_and_checkpoints(demo_run: Path) -> None:
    for name in (
        ".hydra/config.yaml",
        "train.log",
        "metrics.csv",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (demo_run / name).is_file(), name
    rows = list(csv.DictReader((demo_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    events = list(demo_run.rglob("events.out.tfevents.*"))
    assert [e.parent for e in events] == [demo_run]  # hparams did not open a sub-run


def test_tensorboard_curves_images_and_hparams(demo_run: Path) -> None:
    ea = EventAccumulator(str(demo_run), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "perf/images_per_s", "perf/epoch_s"):
        assert [s.step for s in ea.Scalars(tag)] == [1, 2], tag
    loss = [s.value for s in ea.Scalars("train/loss")]
    assert loss[1] < loss[0]
    assert "test/acc" in tags["scalars"] and "test/loss" in tags["scalars"]
    assert {"test/confusion_matrix", "test/effective_field"} <= set(tags["images"])
    hparams = ea.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"hdc" in hparams["_hparams_/session_start_info"] and b"test/acc" in hparams["_hparams_/experiment"]


def test_tensorboard_step_curves_layout_and_config_text(demo_run: Path) -> None:
    ea = EventAccumulator(str(demo_run), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    # 4500 training images in full batches of 64: 70 steps an epoch; log_every=auto: a point every 2 steps.
    for tag in ("step/train/loss", "step/train/acc", "step/lr"):
        assert [s.step for s in ea.Scalars(tag)] == list(range(2, 141, 2)), tag
    step_loss = [s.value for s in ea.Scalars("step/train/loss")]
    assert step_loss[-1] < step_loss[0]
    # Each point is the mean over the 2 steps since the previous one: averaged, they give the epoch's mean.
    epoch1 = ea.Scalars("train/loss")[0].value
    assert sum(step_loss[:35]) / 35 == pytest.approx(epoch1, rel=1e-4)
    lr = [s.value for s in ea.Scalars("step/lr")]
    assert (
        lr == sorted(lr, reverse=True) and lr[0] > lr[-1]
    )  # the cosine schedule, stepped every batch, seen within epochs
    layout = _layout(ea)
    charts = {(cat.title, c.title): list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts[("train vs val (per epoch)", "loss")] == ["^train/loss$", "^val/loss$"]
    assert charts[("train vs val (per epoch)", "accuracy")] == ["^train/acc$", "^val/acc$"]
    assert charts[("per step", "loss")] == ["^step/train/loss$"] and charts[("per step", "accuracy")] == [
        "^step/train/acc$"
    ]
    command, config = (_text(ea, f"run/{name}/text_summary") for name in ("command", "config"))
    assert "convlab train +experiment=synthetic_demo" in command
    assert "    model:\n      name: hdc" in config and "    epochs: 2" in config  # a Markdown code block of the YAML
    assert json.loads((demo_run / "summary.json").read_text())["command"].startswith(
        "convlab train +experiment=synthetic_demo"
    )


def _layout(ea: EventAccumulator):
    """The CUSTOM SCALARS layout a run wrote."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    (event,) = ea.Tensors("custom_scalars__config__")
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def _text(ea: EventAccumulator, tag: str) -> str:
    return ea.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def test_eval_reproduces_the_validation_accuracy(demo_run: Path) -> None:
    proc = run_cli("eval", f"ckpt={demo_run}", "data.split=val")
    assert proc.returncode == 0, proc.stderr
    final_val = json.loads((demo_run / "summary.json").read_text())["final"]["val/acc"]
    assert f"accuracy    {final_val:.4f}" in proc.stdout
    assert "precision fp32 (auto: " in proc.stdout or "precision bf16 (auto: " in proc.stdout
    assert "striped-cross" in proc.stdout and "correct/images" in proc.stdout


def test_resume_of_a_finished_run_keeps_its_history(demo_run: Path) -> None:
    before = (demo_run / "metrics.csv").read_text()
    proc = run_cli("train", f"resume={demo_run}", "model=plain_cnn")
    assert "model.name (saved 'hdc', given 'plain_cnn')" in one_error_line(proc) and "only device=" in one_error_line(
        proc
    )
    proc = run_cli("train", f"resume={demo_run}")
    assert proc.returncode == 0, proc.stderr
    assert (demo_run / "metrics.csv").read_text() == before
    assert json.loads((demo_run / "summary.json").read_text())["status"] == "ok"


def test_sample_needs_a_generator(demo_run: Path) -> None:
    line = one_error_line(run_cli("sample", f"ckpt={demo_run}"))
    assert "hdc classifier" in line and "model=dcgan" in line


def test_inspect_a_trained_run(demo_run: Path, tmp_path: Path) -> None:
    from convlab.app.inspect import format_table, inspect_model

    cfg = compose_cfg("inspect", f"ckpt={demo_run}", f"out={tmp_path}")
    result, title = inspect_model(cfg)  # in process: the CLI wiring is the same as eval's, tested above
    assert "trained: " in title and "features.2" in format_table(result, title)
    saved = json.loads((tmp_path / "inspect.json").read_text())
    summary = json.loads((demo_run / "summary.json").read_text())
    assert saved["total"] == {"parameters": summary["parameters"], "macs": summary["macs"]}
    assert (tmp_path / "effective_field.png").is_file() and not (demo_run / "inspect.json").exists()
