"""The shared loop in process: learning, outputs, determinism, exact resume, failures that keep files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from convlab.core.build import build
from convlab.core.errors import ConvlabError, Diverged
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from convlab.tasks.classification import ClassificationTask
from tests.conftest import REPO, SMALL, curves, make_cfg


def test_short_run_learns_and_writes_its_outputs(tmp_path: Path) -> None:
    summary = train(make_cfg(tmp_path, *SMALL, "epochs=3", "optim=adam", "optim.lr=3e-3"))
    history = load_checkpoint(tmp_path)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert summary["status"] == "ok" and summary["epochs"] == 3 and summary["parameters"] == 94_986
    assert (
        summary["macs"] == 777_600 + 14_450_688 + 49_840_128 + 1_280
    )  # 3 convs (30², 28², 26² outputs) + the linear head
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and len(summary["test"]["per_class_acc"]) == 10
    for name in (
        "metrics.csv",
        "summary.json",
        "confusion_matrix.png",
        "effective_field.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
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
        # bf16 without native support (an AVX2-only CPU) is emulated, ~10x slower: a narrow plain CNN
        ["model=plain_cnn", "model.channels=[8,16,16]", "trainer.precision=bf16"],
        # fp16 with loss scaling (what `auto` picks on GPUs before compute capability 8.0):
        # the scaler's state resumes too
        ["model=plain_cnn", "model.channels=[8,16,16]", "trainer.precision=fp16"],
    ],
    ids=["fp32", "bf16", "fp16"],
)
def test_interrupted_run_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: list[str]
) -> None:
    # alexnet_lite has dropout, so this also checks that the global RNG state is restored;
    # 16×16 images keep it quick (and show that the input size comes from the data).
    overrides = (
        *SMALL,
        "data.num_train=300",
        "data.image_size=16",
        *model,
        "epochs=3",
        "sched=onecycle",
        "optim=adamw",
        "trainer.log_every=2",
    )
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
    scaler = load_checkpoint(tmp_path / "cut")["precision"]
    assert scaler == load_checkpoint(tmp_path / "full")["precision"] and ("scale" in scaler) == ("fp16" in model[-1])
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 4
    # TensorBoard: the step points the cut session wrote after its checkpoint (step 10) were dropped and rewritten.
    cut, whole = (_scalars(tmp_path / name) for name in ("cut", "full"))
    assert [s for s, _ in cut["step/train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert cut["step/train/loss"] == whole["step/train/loss"] and cut["train/loss"] == whole["train/loss"]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run as TensorBoard reads it (a resumed run's purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_divergence_stops_with_the_epoch_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = ClassificationTask.train_step
    calls = {"n": 0}

    def nan_in_epoch_2(self: ClassificationTask, batch: tuple) -> dict:
        calls["n"] += 1
        out = real_step(self, batch)
        return out | {"loss": torch.tensor(float("nan"))} if calls["n"] > 540 // 64 + 2 else out

    monkeypatch.setattr(ClassificationTask, "train_step", nan_in_epoch_2)
    with pytest.raises(
        Diverged, match=r"diverged in epoch 2 at step 3: train/loss = nan; .*last\.pt \(epoch 1\); try a lower optim.lr"
    ):
        train(make_cfg(tmp_path, *SMALL, "epochs=3"))
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


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


def test_early_stop_tests_the_best_weights_and_resumes_as_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Validation accuracy is scripted; the training and the final test pass are real.
    scripted = iter(
        [0.5, 0.6, 0.62, 0.61, 0.9]
    )  # +0.1 improves; +0.02 does not beat min_delta=0.05, but is best.pt's best
    real_evaluate = ClassificationTask.evaluate

    def evaluate(self: ClassificationTask, loader, final: bool = False) -> dict:
        result = real_evaluate(self, loader, final)
        return result if final else result | {"acc": next(scripted)}

    monkeypatch.setattr(ClassificationTask, "evaluate", evaluate)
    overrides = (
        *SMALL,
        "model.channels=[8,8,8]",
        "epochs=6",
        "trainer.early_stop.patience=2",
        "trainer.early_stop.min_delta=0.05",
    )
    summary = train(make_cfg(tmp_path, *overrides))
    assert summary["status"] == "ok" and summary["epochs"] == 4
    assert summary["early_stop"] == {
        "metric": "val/acc", "mode": "max", "patience": 2, "min_delta": 0.05, "stopped": True, "epoch": 4,
        "reason": "val/acc did not improve by more than 0.05 on 0.6 (epoch 2) in 2 validation passes",
    }  # fmt: skip
    assert (
        summary["best"]["epoch"] == 3
        and summary["test_weights"]["which"] == "best"
        and summary["test_weights"]["epoch"] == 3
    )
    assert load_checkpoint(tmp_path)["epoch"] == 4  # last.pt keeps the last weights
    # The tested weights are best.pt's: convlab.load of the run folder gives them,
    # and they score the summary's test accuracy.
    import convlab

    loaded = convlab.load(tmp_path, device="cpu")
    assert loaded.checkpoint.name == "best.pt" and loaded.epoch == 3 and not loaded.model.training
    data = build(loaded.config.data, "data")
    loader = data.loaders(64, torch.device("cpu"))["test"]
    with torch.no_grad():
        correct = sum((loaded.model(x).argmax(1) == y).sum().item() for x, y in loader)
    assert correct / len(loader.labels) == summary["test"]["acc"]
    # Resuming a run that stopped early is like resuming a finished one: nothing runs, nothing is rewritten.
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".convlab.lock"}
    with caplog.at_level("INFO", logger="convlab"):
        again = train(make_cfg(tmp_path / "other", f"resume={tmp_path}"))
    assert again == json.loads((tmp_path / "summary.json").read_text()) and again["early_stop"]["stopped"]
    assert f"run {tmp_path} is finished (stopped early at epoch 4 of 6); nothing to do" in caplog.text
    assert files == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".convlab.lock"}
    # Its last.pt copied elsewhere has nothing to continue: branching from it is refused in one line.
    copy = tmp_path.parent / "copied.pt"
    copy.write_bytes((tmp_path / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(
        ConvlabError, match=r"run stopped early at epoch 4 .*nothing to continue: score it with convlab eval ckpt="
    ):
        train(make_cfg(tmp_path.parent / "branch", f"resume={copy}"))
    assert not (tmp_path.parent / "branch").exists()


def test_a_run_cut_during_its_early_stop_test_pass_resumes_straight_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_evaluate = ClassificationTask.evaluate
    scripted = iter([0.5, 0.4])

    def cut_at_test(self: ClassificationTask, loader, final: bool = False) -> dict:
        if final:
            raise KeyboardInterrupt
        return real_evaluate(self, loader) | {"acc": next(scripted)}

    monkeypatch.setattr(ClassificationTask, "evaluate", cut_at_test)
    overrides = (*SMALL, "model.channels=[8,8,8]", "epochs=5", "trainer.early_stop.patience=1")
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path, *overrides))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(ClassificationTask, "evaluate", real_evaluate)
    monkeypatch.setattr(
        ClassificationTask, "train_step", lambda *a: pytest.fail("a run that stopped early trains no further")
    )
    summary = train(make_cfg(tmp_path, f"resume={tmp_path}"))
    assert summary["status"] == "ok" and summary["epochs"] == 2 and summary["early_stop"]["epoch"] == 2
    assert summary["test_weights"] == {
        "which": "best",
        "epoch": 1,
        "checkpoint": str(tmp_path / "checkpoints" / "best.pt"),
    }


@pytest.mark.parametrize(
    ("values", "patience", "min_delta", "mode", "stop"),
    [
        ([0.5, 0.4, 0.45], 2, 0.0, "max", 3),
        ([0.5, 0.4, 0.6, 0.5], 2, 0.0, "max", None),  # 0.6 restarted the count
        ([1.0, 0.99, 0.98], 2, 0.05, "min", 3),  # falling, but by less than min_delta
        ([1.0, 0.9, 0.8], 1, 0.05, "min", None),
        ([float("nan"), 0.4, 0.3], 1, 0.0, "max", 3),  # a finite value beats NaN, NaN never beats anything
        ([0.5, None, None, 0.5], 1, 0.0, "max", 4),  # epochs without validation (eval_every) do not count
        ([0.5, 0.4, 0.3], None, 0.0, "max", None),  # off
    ],
)
def test_early_stop_verdict(values: list, patience: int | None, min_delta: float, mode: str, stop: int | None) -> None:
    from convlab.run.stopping import EarlyStop

    history = [{"epoch": i + 1} | ({} if v is None else {"val/acc": v}) for i, v in enumerate(values)]
    verdict = EarlyStop("val/acc", mode, patience, min_delta).verdict(history)
    assert (verdict and verdict["epoch"]) == stop
