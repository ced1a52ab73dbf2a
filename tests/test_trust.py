"""Checkpoints are untrusted data: crafted files are refused in one line by every reader, and nothing they name runs."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from convlab.app.evaluate import evaluate_checkpoint, sample_checkpoint
from convlab.core.errors import ConvlabError
from convlab.run import trust
from convlab.run.checkpoint import load_checkpoint
from convlab.run.rundir import resume_command
from convlab.run.runner import train
from tests.conftest import TINY, Payload, compose_cfg, make_cfg, one_error_line, run_cli


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state of a real one-epoch checkpoint, loaded once."""
    out = tmp_path_factory.mktemp("good")
    train(make_cfg(out, *TINY, "epochs=1"))
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def _eval(path: Path) -> Any:
    return evaluate_checkpoint(compose_cfg("eval", f"ckpt={path}", "device=cpu"))


def _sample(path: Path) -> Any:
    return sample_checkpoint(compose_cfg("sample", f"ckpt={path}", f"out={path.parent / 'grid.png'}", "device=cpu"))


def _resume(path: Path) -> Any:
    return train(make_cfg(path.parent / "elsewhere", f"resume={path}"))


def _load(path: Path) -> Any:
    import convlab

    return convlab.load(path, device="cpu")


READERS = {"eval": _eval, "sample": _sample, "resume": _resume, "load": _load}


def _payload(marker: Path) -> dict[str, Any]:
    """A Hydra node that would create `marker` if anything instantiated it."""
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def _set(state: dict[str, Any], dotted: str, value: Any) -> None:
    node = state
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


# Where a hostile target can hide in a saved config: each would be called by Hydra's instantiate.
TARGETS = {
    "model target": lambda m: ("config.model._target_", "builtins.exec"),
    "model target writes a file": lambda m: ("config.model", _payload(m)),
    "data target": lambda m: ("config.data._target_", "os.system"),
    "task target": lambda m: ("config.task._target_", "pathlib.Path.write_text"),
    "optimizer partial": lambda m: (
        "config.optim",
        {"_target_": "torch.load", "_partial_": True, "weights_only": False},
    ),
    "schedule": lambda m: ("config.sched._target_", "subprocess.run"),
    "nested in a model argument": lambda m: ("config.model.channels", [8, _payload(m), 16]),
    "inside _args_": lambda m: ("config.model._args_", [_payload(m)]),
    "deep in a dict": lambda m: ("config.data.augment", {"x": {"y": _payload(m)}}),
    "a convlab function that writes": lambda m: ("config.model._target_", "convlab.core.io.write_atomic"),
    "a torch function, not an optimizer": lambda m: ("config.optim._target_", "torch.save"),
    "torch.optim's base class": lambda m: ("config.optim._target_", "torch.optim.Optimizer"),
    "a private torch name": lambda m: ("config.optim._target_", "torch.optim._functional"),
    "the sweep callback": lambda m: ("config.model._target_", "convlab.app.sweep.SweepSummary"),
    "a dataset class as the model": lambda m: (
        "config.model",
        {"_target_": "convlab.data.cifar10.CIFAR10", "root": str(m), "download": True},
    ),
    "a model class as the optimizer": lambda m: ("config.optim._target_", "convlab.models.resnet.ResNet18"),
    "no model target": lambda m: ("config.model._target_", None),
    "a target in the gan node": lambda m: ("config.gan", _payload(m)),
    "a _recursive_ instruction": lambda m: ("config.model._recursive_", True),
    "not a string": lambda m: ("config.model._target_", 42),
    "an interpolation": lambda m: ("config.data.root", "${oc.env:HOME}"),
    "an oc.create interpolation": lambda m: ("config.model", "${oc.create:{_target_: builtins.exec}}"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(TARGETS))
def test_hostile_targets_are_refused_before_anything_is_built(
    case: str, reader: str, good: dict, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    state = copy.deepcopy(good)
    _set(state, *TARGETS[case](marker))
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(state, run / "last.pt")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ConvlabError) as err:
        READERS[reader](run / "last.pt")
    message = str(err.value)
    assert "\n" not in message and str(run / "last.pt") in message
    assert not marker.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_each_group_allows_its_own_targets_only() -> None:
    targets = trust.conf_targets()
    assert "convlab.models.resnet.ResNet18" in targets["model"] and "convlab.tasks.schedules.cosine" in targets["sched"]
    assert "convlab.tasks.gan.GANTask" in targets["task"] and "convlab.data.synthetic.Synthetic" in targets["data"]
    assert trust.allowed("optim", "torch.optim.RMSprop") and trust.allowed("sched", "torch.optim.lr_scheduler.StepLR")
    assert not trust.allowed("model", "torch.optim.RMSprop") and not trust.allowed(
        "data", "convlab.models.resnet.ResNet18"
    )
    assert not trust.allowed("optim", "torch.optim.Optimizer") and not trust.allowed(
        "optim", "torch.optim.lr_scheduler.StepLR"
    )


def test_a_users_own_class_is_allowed_when_they_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not trust.allowed("model", "tests.conftest.TinyNet")
    monkeypatch.setenv(trust.TRUST_ENV, "mypkg.Net, tests.conftest.TinyNet")
    assert trust.allowed("model", "tests.conftest.TinyNet")


# A checkpoint whose layout or contents do not fit: each is one line, whichever reader opens it.
LAYOUT = {
    "no config": lambda s: s.pop("config"),
    "config not a dict": lambda s: s.__setitem__("config", [1, 2]),
    "no task state": lambda s: s.pop("task"),
    "no model section": lambda s: s["config"].pop("model"),
    "epoch past the end": lambda s: s.__setitem__("epoch", 99),
    "negative epoch": lambda s: s.__setitem__("epoch", -1),
    "history too short": lambda s: s.__setitem__("history", []),
    "history of strings": lambda s: s.__setitem__("history", [{"epoch": "one"}]),
    "history rows without epochs": lambda s: s.__setitem__("history", [{"val/acc": 0.5} for _ in s["history"]]),
    "early stop of the wrong type": lambda s: s["config"]["trainer"].__setitem__("early_stop", {"patience": "soon"}),
    "early stop with unknown keys": lambda s: s["config"]["trainer"].__setitem__(
        "early_stop", {"patience": 2, "monitor": "os.system"}
    ),
    "early stop min_delta NaN": lambda s: s["config"]["trainer"].__setitem__(
        "early_stop", {"patience": 2, "min_delta": float("nan")}
    ),
    "a target outside the config": lambda s: s["best"].__setitem__("x", {"_target_": "os.system"}),
    "an unknown top-level key": lambda s: s.__setitem__("hook", {"_target_": "os.system"}),
    "data_info extra field": lambda s: s["data_info"].__setitem__("evil", 1),
    "data_info zero classes": lambda s: s["data_info"].__setitem__("num_classes", 0),
    "class names not strings": lambda s: s["data_info"].__setitem__("class_names", [1, 2]),
    "best mode": lambda s: s["best"].__setitem__("mode", "sideways"),
    "weights of another shape": lambda s: s["task"]["models"]["model"].__setitem__("head.weight", torch.zeros(3, 3)),
    "weights missing": lambda s: s["task"]["models"]["model"].pop("head.weight"),
    "weights extra": lambda s: s["task"]["models"]["model"].__setitem__("extra.weight", torch.zeros(1)),
    "no optimizer state": lambda s: s["task"]["optimizers"].pop("model"),
    "schedule state with a foreign key": lambda s: s["task"]["schedulers"]["model"].__setitem__("optimizer", "x"),
    "schedule state of the wrong kind": lambda s: s["task"]["schedulers"]["model"].__setitem__("last_epoch", "late"),
    "optimizer lr not a number": lambda s: s["task"]["optimizers"]["model"]["param_groups"][0].__setitem__(
        "lr", "fast"
    ),
    "optimizer buffer of the wrong shape": lambda s: s["task"]["optimizers"]["model"]["state"].__setitem__(
        0, {"momentum_buffer": torch.zeros(2, 2)}
    ),
    "config value out of range": lambda s: s["config"].__setitem__("batch_size", -5),
    "config value of the wrong type": lambda s: s["config"]["optim"].__setitem__("lr", "fast"),
}


@pytest.mark.parametrize("reader", ["eval", "resume"])  # convlab.load reads through eval's load_task
@pytest.mark.parametrize("case", sorted(LAYOUT))
def test_damaged_checkpoints_are_one_line(case: str, reader: str, good: dict, tmp_path: Path) -> None:
    state = copy.deepcopy(good)
    LAYOUT[case](state)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(state, run / "last.pt")
    with pytest.raises(ConvlabError) as err:
        READERS[reader](run / "last.pt")
    assert "\n" not in str(err.value) and "checkpoint" in str(err.value)
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "elsewhere").exists()


def test_malformed_random_state_is_one_line(good: dict, tmp_path: Path) -> None:
    state = copy.deepcopy(good)
    state["rng"] = [{"torch": torch.zeros(3, dtype=torch.uint8), "python": [3, [1], None]}]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ConvlabError, match="random-number state is malformed"):
        _resume(tmp_path / "run" / "checkpoints" / "last.pt")


def test_pickle_payloads_are_refused_with_torchs_reason(good: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({**good, "extra": Payload(os.makedirs, str(marker))}, tmp_path / "evil.pt")
    for reader in READERS.values():
        with pytest.raises(ConvlabError) as err:
            reader(tmp_path / "evil.pt")
        message = str(err.value)
        assert (
            "weights-only loading refused it:" in message and "makedirs" in message and "trusted source" not in message
        ), message
        assert "\n" not in message and "\x1b" not in message
    assert not marker.exists()


def test_files_that_are_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"format": "convlab-checkpoint/1"}))
    (tmp_path / "dir.pt").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")
    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(3)}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:200])
    for name in ("empty.pt", "text.pt", "pickle.pt", "dir.pt", "fifo.pt", "truncated.pt", "good.pt"):
        with pytest.raises(ConvlabError) as err:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)


def test_cli_refuses_a_hostile_checkpoint_in_one_line(good: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = copy.deepcopy(good)
    state["config"]["model"] = _payload(marker)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    for args in (["eval", f"ckpt={tmp_path / 'run'}"], ["train", f"resume={tmp_path / 'run'}"]):
        proc = run_cli(*args)
        line = one_error_line(proc)
        assert proc.returncode == 2 and "builtins.open" in line and "config key model._target_" in line, line
    assert not marker.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_resume_command_survives_any_folder_name() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for name in ("outputs/multirun/x/0_model=hdc,optim.lr=0.001", "a/[2,4,8] b", "it's", "back\\slash\\", "plain/path"):
        command = resume_command(name)
        import shlex

        words = shlex.split(command)
        assert words[:2] == ["convlab", "train"] and parser.parse_override(words[2]).value() == name
