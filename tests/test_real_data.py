"""Learning on the real CIFAR-10 subset at ../shared/data (skipped, with the reason, when it is absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from tests.conftest import REPO, make_cfg


def test_plain_cnn_learns_real_cifar10_in_two_epochs(cifar_root: Path, tmp_path: Path) -> None:
    # The lab CNN at half width (a quarter of the compute, to keep CI short): 5085 training images,
    # 10 classes, chance is 10 %; two epochs reached 34 % here (the full width about 37 %).
    overrides = (
        "model=plain_cnn",
        "model.channels=[16,32,64]",
        "data=cifar10",
        f"data.root={cifar_root}",
        "epochs=2",
        "batch_size=64",
    )
    summary = train(make_cfg(tmp_path, *overrides))
    history = load_checkpoint(tmp_path)["history"]
    assert summary["test"]["acc"] >= 0.30, summary["test"]
    assert history[1]["train/loss"] < history[0]["train/loss"] < 2.2


def test_plain_script_baseline_trains_on_its_own(cifar_root: Path, tmp_path: Path) -> None:
    """scripts/plain_torch_baseline.py, the yardstick of docs/BENCHMARKS.md.

    A whole run, importing only convlab's model.
    """
    out = tmp_path / "weights.pt"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "scripts" / "plain_torch_baseline.py"),
         "--data", str(cifar_root), "--epochs", "1", "--limit-train-batches", "1", "--workers", "0", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].startswith("test  loss ") and "val/acc" in proc.stdout
    assert set(torch.load(out, weights_only=True)) >= {"head.weight", "head.bias"}
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    ours = {m for m in imported if m.split(".")[0] == "convlab"}
    allowed = (
        "convlab",
        "convlab.app",
        "convlab.app.baseline",
        "convlab.core",
        "convlab.core.errors",
    )  # the packages it sits in
    assert ours and all(m in allowed or m.startswith("convlab.models") for m in ours), ours
    assert not {"hydra", "omegaconf", "tensorboard"} & imported
