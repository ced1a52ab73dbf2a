"""Step curves: trainer.log_every=auto, the points' means, and the curve a divergence leaves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlab.core.errors import ConfigError, Diverged
from convlab.run import schema
from convlab.run.runner import setup, train
from convlab.run.steplog import StepLog, resolve_log_every
from convlab.tasks.classification import ClassificationTask
from tests.conftest import SMALL, make_cfg


@pytest.mark.parametrize(("steps", "every"), [(10, 1), (35, 1), (40, 1), (41, 2), (390, 10), (5000, 125)])
def test_auto_gives_a_point_every_step_up_to_40_steps_then_21_to_40_points(steps: int, every: int) -> None:
    assert resolve_log_every("auto", steps) == every
    assert resolve_log_every(7, steps) == 7  # a number is kept


def test_auto_gives_21_to_40_points_whatever_the_epochs_length() -> None:
    for steps in range(41, 20_000):
        assert 21 <= math.ceil(steps / resolve_log_every("auto", steps)) <= 40, steps


def test_auto_follows_limit_train_batches(tmp_path: Path) -> None:
    big = ["data=synthetic", "data.num_train=3000", "data.num_test=10", "batch_size=8", "model.channels=[8,8,8]"]
    run = setup(make_cfg(tmp_path, *big), write=False)  # 2700 training images: 337 steps an epoch
    assert run.trainer.steps_per_epoch == 337 and run.trainer.settings.log_every == 9
    run = setup(make_cfg(tmp_path, *big, "trainer.limit_train_batches=100"), write=False)
    assert run.trainer.settings.log_every == 3
    run = setup(make_cfg(tmp_path, *big, "trainer.log_every=5"), write=False)
    assert run.trainer.settings.log_every == 5


@pytest.mark.parametrize("value", ["auto", 1, 50])
def test_log_every_takes_auto_or_a_positive_integer(tmp_path: Path, value: object) -> None:
    schema.validate(make_cfg(tmp_path, f"trainer.log_every={value}"))


@pytest.mark.parametrize("value", ["0", "often", "true", "2.5"])
def test_log_every_refuses_anything_else(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^trainer.log_every=.* is not allowed; expected auto or an integer >= 1$"):
        schema.validate(make_cfg(tmp_path, f"trainer.log_every={value}"))


def test_a_value_reported_on_some_steps_is_averaged_since_its_previous_point() -> None:
    # D on every step (batch 2), G on even steps only (a GAN's d_steps=2); a point every 3 steps, one read.
    log = StepLog(3)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for step in range(1, 10):
        out = {"D": torch.tensor(float(step))} | ({"G": torch.tensor(10.0 * step)} if step % 2 == 0 else {})
        for key, value in out.items():
            sums[key] = sums[key] + value * 2 if key in sums else value * 2
            counts[key] = counts.get(key, 0) + 2
        if step % 3 == 0:
            log.mark(step, sums, counts, {"lr": 0.1 * step})
    points, bad = log.read(torch.zeros((), dtype=torch.long))
    assert bad == 0 and log.read_at == 9 and not log.pending
    assert points == [
        (3, {"train/D": pytest.approx(2.0), "train/G": pytest.approx(20.0), "lr": pytest.approx(0.3)}),
        (6, {"train/D": pytest.approx(5.0), "train/G": pytest.approx(50.0), "lr": pytest.approx(0.6)}),  # steps 4, 6
        (9, {"train/D": pytest.approx(8.0), "train/G": pytest.approx(80.0), "lr": pytest.approx(0.9)}),  # step 8
    ]
    assert log.totals == {"D": (90.0, 18.0), "G": (400.0, 8.0)}


def test_a_point_where_a_value_had_no_step_leaves_it_out() -> None:
    log = StepLog(1)
    sums = {"D": torch.tensor(1.0)}
    log.mark(1, sums, {"D": 1}, {})  # G has not been reported yet
    sums = {"D": torch.tensor(3.0), "G": torch.tensor(5.0)}
    log.mark(2, sums, {"D": 2, "G": 1}, {})
    log.mark(3, {"D": torch.tensor(6.0), "G": sums["G"]}, {"D": 3, "G": 1}, {})  # no G step since step 2
    points, _ = log.read(torch.zeros((), dtype=torch.long))
    assert points == [(1, {"train/D": 1.0}), (2, {"train/D": 2.0, "train/G": 5.0}), (3, {"train/D": 3.0})]


def test_a_divergence_keeps_the_curve_up_to_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = ClassificationTask.train_step
    calls = {"n": 0}

    def nan_at_step_5(self: ClassificationTask, batch: tuple) -> dict:
        calls["n"] += 1
        out = real_step(self, batch)
        return out | {"loss": torch.tensor(float("nan"))} if calls["n"] >= 5 else out

    monkeypatch.setattr(ClassificationTask, "train_step", nan_at_step_5)
    with pytest.raises(Diverged, match=r"diverged in epoch 1 at step 5: train/loss = nan; no checkpoint was written"):
        train(make_cfg(tmp_path, *SMALL, "model.channels=[8,8,8]", "trainer.log_every=1"))
    ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    ea.Reload()
    losses = ea.Scalars("step/train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4] and all(math.isfinite(e.value) for e in losses)
