"""Ordinary events during a run: a signal while a checkpoint is being written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from convlab.core.errors import Terminated
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from tests.conftest import SMALL, make_cfg

FAST = (*SMALL, "model.channels=[8,8,8]", "epochs=3", "trainer.precision=fp32")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_checkpoint_write_ends_the_run_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    real_save, seen = torch.save, []

    def save_then_signal(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        name = Path(str(f)).name
        if name.startswith(".last.pt.") and name.endswith(".tmp") and not seen:
            assert Path(str(f)).is_file()  # the temporary file exists: the write is under way
            seen.append(name)
            os.kill(os.getpid(), signum)  # delivered now, inside the epoch's block and the atomic write's own

    monkeypatch.setattr(torch, "save", save_then_signal)
    with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
        train(make_cfg(tmp_path, *FAST))
    assert seen, "no checkpoint write was seen"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 1  # not all three epochs and "ok"
    assert load_checkpoint(tmp_path)["epoch"] == 1  # the write it arrived in was finished, whole
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
