"""Learning on the real CIFAR-10 subset at ../shared/data (skipped, with the reason, when it is absent)."""

from __future__ import annotations

from pathlib import Path

from convlab.train import train
from tests.conftest import make_cfg


def test_plain_cnn_learns_real_cifar10_in_two_epochs(cifar_root: Path, tmp_path: Path) -> None:
    summary = train(make_cfg(tmp_path, "model=plain_cnn", "data=cifar10", f"data.root={cifar_root}", "epochs=2", "batch_size=64"))
    # 5085 training images, 10 classes: chance is 10 %; two epochs of the lab CNN reach about 37 %.
    assert summary["test"]["acc"] >= 0.30, summary["test"]
    assert summary["final"]["train/loss"] < 2.0
