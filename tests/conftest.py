"""Shared fixtures: composed configs, the real data folder, and running the CLI as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (pyproject's addopts): two workers share the cores, so each trains on one thread
    # (and so do the convlab processes it starts); two-thread workers would oversubscribe them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# pytest -n 2 --dist loadfile hands whole files to whichever worker is free, in collection order
# (--no-loadscope-reorder: not by test count): the slowest files first keep the two workers' loads
# even. Seconds per file on 2 CPU cores (pytest --durations=0, 2026-11-28) in the comments.
SLOWEST_FIRST = (
    "test_run_safety.py",  # 130
    "test_demo.py",  # 110: the README demo run
    "test_cli.py",  # 95
    "test_train.py",  # 70
    "test_faults.py",  # 65 (2026-12-02, faster CPU: about 2x on the AMD EPYC)
    "test_real_data.py",  # 47
    "test_disk_faults.py",  # 40 (2026-12-02)
    "test_speed.py",  # 43
    "test_gan.py",  # 41
    "test_sweeps.py",  # 40
    "test_trust.py",  # 35
    "test_distributed.py",  # 23
    "test_scripts.py",  # 23 (2026-12-02)
    "test_prepare.py",  # 20 (2026-12-02)
    "test_toy_task.py",  # 20 (2026-12-02)
    "test_api.py",  # 19
    "test_hostile_data.py",  # 18
    "test_models.py",  # 16
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order files slowest first (the order within a file is kept)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR_SUBSET = SHARED_DATA / "cifar10-subset"
# A small synthetic set keeps in-process runs to a few seconds per epoch on 2 CPU cores.
SMALL = ["data=synthetic", "data.num_train=600", "data.num_test=200", "batch_size=64"]
# Smaller still, for runs that only have to exist: 200 images, 3,962 parameters, two epochs (3 s).
TINY = [*SMALL, "data.num_train=200", "data.num_test=64", "epochs=2", "model.channels=[8,16,16]"]


def compose_cfg(command: str, *overrides: str, **kwargs: Any) -> DictConfig:
    """conf/COMMAND.yaml composed with `overrides` (kwargs go to Hydra's compose)."""
    with initialize_config_module("convlab.conf", version_base="1.3"):
        return compose(command, overrides=list(overrides), **kwargs)


def make_cfg(out_dir: Path | str, *overrides: str) -> DictConfig:
    """conf/train.yaml composed with `overrides`, writing into `out_dir`."""
    return compose_cfg("train", f"out_dir={out_dir}", *overrides)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m convlab ARGS` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "convlab", *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single non-empty line a failed command printed; fails on success, tracebacks or multi-line walls."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


def one_line(err: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    """A raised error's message, after checking it is one line holding every part."""
    msg = str(err.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    return msg


class Payload:
    """What a hostile pickle holds: unpickling it calls fn(*args) (tests check that it never runs)."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def curves(history: list[dict]) -> list[dict]:
    """History rows without the timing columns, which differ run to run."""
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in history]


@pytest.fixture
def cifar_root() -> Path:
    """The real CIFAR-10 subset; tests that need it skip (saying why) when it is absent."""
    if not (CIFAR_SUBSET / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_SUBSET} (see ../shared/data/README.md)")
    return CIFAR_SUBSET


FACES = SHARED_DATA / "anime-faces-subset" / "faces"


@pytest.fixture(scope="session")
def faces_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder with the first 256 real anime faces (copied out of ../shared, never into the repo)."""
    if not (FACES / "0.jpg").is_file():
        pytest.skip(f"real anime-face subset not found at {FACES} (see ../shared/data/README.md)")
    folder = tmp_path_factory.mktemp("faces256")
    for i in range(256):
        shutil.copy(FACES / f"{i}.jpg", folder / f"{i}.jpg")
    return folder


class TinyNet(torch.nn.Module):
    """A BatchNorm-free classifier for exact multi-process comparisons (BatchNorm statistics are per process)."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, **unused: object) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 8, 3)
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
