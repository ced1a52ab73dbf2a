"""Run folders written by convlab 0.1 (main of 2026-12-02, before the package layout moved) still work.

tests/fixtures/runs_v0_1 was made with that code:
  convlab train data=synthetic data.num_train=300 data.num_test=100 batch_size=64 model=plain_cnn
      model.channels=[4,8,8] epochs=2 trainer.stop_after=1 trainer.precision=fp32      (classifier: cut after epoch 1)
  convlab train model=dcgan task=gan model.dim=8 data=synthetic data.num_train=130 data.num_test=10
      data.image_size=32 data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5] batch_size=32 epochs=1 trainer.precision=fp32
Their saved configs name classes by the import paths of that day.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import convlab
from tests.conftest import REPO, run_cli

OLD = REPO / "tests" / "fixtures" / "runs_v0_1"


@pytest.fixture
def old_runs(tmp_path: Path) -> Path:
    """A copy of the old run folders (the fixture itself is never written)."""
    shutil.copytree(OLD, tmp_path / "runs")
    return tmp_path / "runs"


def test_an_old_classifier_run_evaluates_loads_and_resumes(old_runs: Path) -> None:
    run = old_runs / "classifier"
    scored = run_cli("eval", f"ckpt={run}", "device=cpu")
    assert scored.returncode == 0, scored.stderr
    assert "acc" in scored.stdout and "epoch 1" in scored.stdout
    loaded = convlab.load(run, device="cpu")
    assert loaded.epoch == 1 and type(loaded.model).__name__ == "PlainCNN"
    resumed = run_cli("train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs"] == 2 and summary["out_dir"] == str(run)
    assert convlab.load(run, device="cpu").epoch == 2


def test_an_old_gan_run_samples(old_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    proc = run_cli("sample", f"ckpt={old_runs / 'gan'}", "n=4", f"out={out}", "device=cpu")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
