"""The shared loop in process: learning, outputs, determinism, exact resume, failures that keep files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from convlab.checkpoint import load_checkpoint
from convlab.config import build
from convlab.errors import ConvlabError
from convlab.tasks.classification import ClassificationTask
from convlab.train import train
from tests.conftest import REPO, SMALL, make_cfg


def curves(history: list[dict]) -> list[dict]:
    """History rows without the timing columns, which differ run to run."""
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in history]


def test_short_run_learns_and_writes_its_outputs(tmp_path: Path) -> None:
    summary = train(make_cfg(tmp_path, *SMALL, "epochs=3", "optim=adam", "optim.lr=3e-3"))
    history = load_checkpoint(tmp_path)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert summary["status"] == "ok" and summary["epochs"] == 3 and summary["parameters"] == 94_986
    assert summary["macs"] == 777_600 + 14_450_688 + 49_840_128 + 1_280  # 3 convs (30², 28², 26² outputs) + the linear head
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and len(summary["test"]["per_class_acc"]) == 10
    for name in ("metrics.csv", "summary.json", "confusion_matrix.png", "effective_field.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["best"] == summary["best"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,lr,train/loss,train/acc,val/loss,val/acc,perf/images_per_s")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best"]["epoch"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_numbers(tmp_path: Path, precision: str) -> None:
    narrow = (*SMALL, "model.channels=[8,16,16]", f"trainer.precision={precision}")  # determinism does not need width
    narrow += ("data.num_train=200",) if precision == "bf16" else ()  # emulated bf16 (CI's CPU) is ~10x slower
    a = train(make_cfg(tmp_path / "a", *narrow, "epochs=2", "seed=7"))
    b = train(make_cfg(tmp_path / "b", *narrow, "epochs=2", "seed=7"))
    train(make_cfg(tmp_path / "c", *narrow, "epochs=1", "seed=8"))
    history = {run: load_checkpoint(tmp_path / run)["history"] for run in "abc"}
    assert curves(history["a"]) == curves(history["b"]) and a["test"] == b["test"]
    assert history["a"][0]["train/loss"] != history["c"][0]["train/loss"]


@pytest.mark.parametrize(
    "model",
    [
        ["model=alexnet_lite", "model.hidden=64", "trainer.precision=fp32"],
        # bf16 without native support (CI's CPU) is emulated, ~10x slower: a narrow plain CNN
        ["model=plain_cnn", "model.channels=[8,16,16]", "trainer.precision=bf16"],
    ],
    ids=["fp32", "bf16"],
)
def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: list[str]) -> None:
    # alexnet_lite has dropout, so this also checks that the global RNG state is restored;
    # 16×16 images keep it quick (and show that the input size comes from the data).
    overrides = (*SMALL, "data.num_train=300", "data.image_size=16", *model, "epochs=3", "sched=onecycle", "optim=adamw")
    full = train(make_cfg(tmp_path / "full", *overrides))

    steps_per_epoch = 270 // 64  # 300 images less the 10 % validation split, full batches only
    calls = {"n": 0}
    real_step = ClassificationTask.train_step

    def ctrl_c_in_epoch_3(self: ClassificationTask, batch: tuple) -> dict:
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(ClassificationTask, "train_step", ctrl_c_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "cut", *overrides))
    monkeypatch.setattr(ClassificationTask, "train_step", real_step)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 2

    resumed = train(make_cfg(tmp_path / "elsewhere", f"resume={tmp_path / 'cut'}"))
    assert resumed["out_dir"] == str(tmp_path / "cut")  # a resumed run continues in its own folder
    assert curves(load_checkpoint(tmp_path / "cut")["history"]) == curves(load_checkpoint(tmp_path / "full")["history"])
    assert resumed["test"] == full["test"]
    a = load_checkpoint(tmp_path / "full")["task"]["models"]["model"]
    b = load_checkpoint(tmp_path / "cut")["task"]["models"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 4


def test_divergence_stops_with_the_epoch_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = ClassificationTask.train_step
    calls = {"n": 0}

    def nan_in_epoch_2(self: ClassificationTask, batch: tuple) -> dict:
        calls["n"] += 1
        out = real_step(self, batch)
        return out | {"loss": torch.tensor(float("nan"))} if calls["n"] > 540 // 64 + 2 else out

    monkeypatch.setattr(ClassificationTask, "train_step", nan_in_epoch_2)
    with pytest.raises(ConvlabError, match=r"diverged in epoch 2 at step 3: train/loss = nan; .*last\.pt \(epoch 1\)"):
        train(make_cfg(tmp_path, *SMALL, "epochs=3"))
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_bad_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvlabError, match="not found"):
        train(make_cfg(tmp_path, *SMALL, f"resume={tmp_path / 'nope.pt'}"))
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(ConvlabError, match="junk.pt is not a PyTorch checkpoint file"):
        train(make_cfg(tmp_path, *SMALL, f"resume={tmp_path / 'junk.pt'}"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ConvlabError, match="not a convlab checkpoint"):
        train(make_cfg(tmp_path, *SMALL, f"resume={tmp_path / 'plain.pt'}"))


def test_checkpoint_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    # weights_only=True: a checkpoint cannot run code on load.
    torch.save({"format": "convlab-checkpoint/1", "obj": nn.Linear(2, 2)}, tmp_path / "evil.pt")
    with pytest.raises(ConvlabError, match="corrupt or not a convlab checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("sched", sorted(p.stem for p in (REPO / "conf" / "sched").glob("*.yaml")))
@pytest.mark.parametrize("optim", sorted(p.stem for p in (REPO / "conf" / "optim").glob("*.yaml")))
def test_every_optimizer_and_schedule_runs_and_round_trips(optim: str, sched: str, tmp_path: Path) -> None:
    extra = ["sched.step_epochs=2"] if sched == "step" else []
    cfg = make_cfg(tmp_path, f"optim={optim}", f"sched={sched}", *extra)
    model = nn.Linear(3, 2)
    opt = build(cfg.optim, "optim")(model.parameters())
    schedule = build(cfg.sched, "sched")(opt, total_steps=20, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(lr >= 0 for lr in lrs)
    if sched != "none":
        assert lrs[-1] < cfg.optim.lr
    torch.save({"opt": opt.state_dict(), "sched": schedule.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    schedule.load_state_dict(state["sched"])
    opt.load_state_dict(state["opt"])
