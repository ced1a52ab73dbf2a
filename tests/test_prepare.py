"""One preparation path: the CLI and the API validate once, plan a resume once and read its checkpoint once."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import convlab
from convlab.app import cli
from convlab.run import schema
from convlab.run.runner import train
from tests.conftest import SMALL, make_cfg

TINY = (*SMALL, "model.channels=[8,8,8]", "epochs=2", "trainer.precision=fp32")


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list]]:
    """Every torch.load of a .pt file and every schema.validate call, wherever the module imported it."""
    seen: dict[str, list] = {"loads": [], "validations": []}
    real_load, real_validate = torch.load, schema.validate

    def load(f: object, *args: object, **kwargs: object) -> object:
        if str(f).endswith(".pt"):
            seen["loads"].append(Path(str(f)).name)
        return real_load(f, *args, **kwargs)

    def validate(cfg: object, command: str = "train") -> None:
        seen["validations"].append(command)
        return real_validate(cfg, command)

    monkeypatch.setattr(torch, "load", load)
    for name, module in list(sys.modules.items()):
        if name.startswith("convlab") and getattr(module, "validate", None) is real_validate:
            monkeypatch.setattr(module, "validate", validate)
    yield seen


@pytest.fixture
def cut_run(tmp_path: Path) -> Path:
    """A run stopped after epoch 1 of 2 (trainer.stop_after=1)."""
    train(make_cfg(tmp_path / "run", *TINY, "trainer.stop_after=1"))
    return tmp_path / "run"


def _cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """`convlab ARGV` in this process, as the console script runs it."""
    monkeypatch.setattr(sys, "argv", ["convlab", *argv])
    cli.main(list(argv))


def test_the_cli_resumes_with_one_checkpoint_read_and_one_validation_of_each_config(
    cut_run: Path, counts: dict[str, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli(monkeypatch, "train", f"resume={cut_run}")
    assert json.loads((cut_run / "summary.json").read_text())["status"] == "ok"
    # last.pt once (the plan; the trainer restores from the same state); the test pass reads best.pt only if
    # the run stopped early, which this one did not.
    assert counts["loads"] == ["last.pt"]
    assert counts["validations"] == ["train", "train"]  # the command line's config, and the checkpoint's own


def test_the_api_resumes_with_one_checkpoint_read(cut_run: Path, counts: dict[str, list]) -> None:
    summary = convlab.train(f"resume={cut_run}", quiet=True)
    assert summary["status"] == "ok" and summary["epochs"] == 2
    assert counts["loads"] == ["last.pt"]
    assert counts["validations"] == ["train", "train"]


def test_a_new_run_is_validated_once_from_the_cli_and_the_api(
    tmp_path: Path, counts: dict[str, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli(monkeypatch, "train", *TINY, "epochs=1", f"hydra.run.dir={tmp_path / 'cli'}")
    assert counts["validations"] == ["train"] and counts["loads"] == []
    convlab.train(*TINY, "epochs=1", out_dir=tmp_path / "api", quiet=True)
    assert counts["validations"] == ["train", "train"] and counts["loads"] == []
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["status"] == "ok"
    assert json.loads((tmp_path / "api" / "summary.json").read_text())["status"] == "ok"
