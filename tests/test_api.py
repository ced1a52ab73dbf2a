"""convlab from Python, as README's "From Python / Jupyter" section shows it."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import pytest

import convlab
from convlab.core.errors import ConvlabError
from convlab.run.runlog import RunLogger
from tests.conftest import REPO, TINY, Payload, one_line

ONE_EPOCH = (*TINY, "model=plain_cnn", "model.channels=[8,8,8]", "epochs=1")


def readme_example() -> str:
    """The Python block of README's "From Python / Jupyter" section."""
    section = (REPO / "README.md").read_text().split("## From Python / Jupyter", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs_and_a_second_call_in_the_same_process_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(readme_example(), scope)  # noqa: S102 - README's own example, as a user pastes it
    result, run = scope["result"], scope["run"]
    folder = Path(result["out_dir"])
    assert result["status"] == "ok" and result["epochs"] == 2 and folder.parent.parent == tmp_path / "outputs"
    assert result == json.loads((folder / "summary.json").read_text())
    assert result["command"] == "convlab.train('model=hdc', 'data=synthetic', 'data.num_train=1000', 'epochs=2')"
    assert type(run.model).__name__ == "HDCNet" and not run.model.training
    assert run.checkpoint == folder / "checkpoints" / "last.pt" and run.epoch == 2 and len(run.info.class_names) == 10
    assert run.config.model.name == "hdc" and run.config.optim.lr == 0.05
    out, err = capfd.readouterr()
    assert out.splitlines() == [f"{result['test']['acc']} {folder}"]
    # The run's own lines, as on a terminal: no Hydra output, no warnings.
    lines = err.splitlines()
    assert (
        lines[0].startswith("hdc on synthetic: 94,986 parameters")
        and lines[1].startswith("epoch 1/2")
        and lines[3].startswith("test  loss")
    )
    assert len(lines) == 4, err
    # Run folders read back like a CLI run's: the config and what was typed.
    assert (folder / ".hydra" / "overrides.yaml").read_text().splitlines() == [
        "- model=hdc",
        "- data=synthetic",
        "- data.num_train=1000",
        "- epochs=2",
    ]
    assert "epoch 2/2" in (folder / "train.log").read_text()

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("convlab.conf", version_base="1.3"):  # the notebook's own Hydra session is left alone
        second = convlab.train(*ONE_EPOCH, out_dir=tmp_path / "second", quiet=True)
        assert GlobalHydra.instance().is_initialized()
        # resume= with the run's own command repeated composes it again to compare: also inside that session
        assert (
            convlab.train(
                f"resume={folder}", "model=hdc", "data=synthetic", "data.num_train=1000", "epochs=2", quiet=True
            )
            == result
        )
    assert second["status"] == "ok" and second["out_dir"] == str(tmp_path / "second")
    assert capfd.readouterr() == ("", "")  # quiet: the lines go to train.log only
    assert "epoch 1/1" in (tmp_path / "second" / "train.log").read_text()
    assert "epoch 1/1" not in (folder / "train.log").read_text()  # the first call's handlers are gone
    # resume= of a finished run: its summary, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    assert convlab.train(f"resume={folder}") == result
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before
    assert "is finished (epoch 2 of 2); nothing to do" in capfd.readouterr().err


def test_a_failed_resume_leaves_the_run_unlocked_and_out_dir_cannot_move_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlab.run import rundir
    from convlab.run.trainer import Trainer

    run = tmp_path / "run"
    convlab.train(
        *ONE_EPOCH, "epochs=2", "trainer.stop_after=1", out_dir=run, quiet=True
    )  # stopped after epoch 1: resumable
    with pytest.raises(ConvlabError, match="continues the run in .* itself; drop out_dir="):
        convlab.train(f"resume={run}", out_dir=tmp_path / "elsewhere", quiet=True)

    def broken(self: Trainer, state: dict) -> None:
        raise ConvlabError("the checkpoint's loss-scaler state is malformed")

    monkeypatch.setattr(Trainer, "restore", broken)
    with pytest.raises(ConvlabError, match="loss-scaler"):
        convlab.train(f"resume={run}", quiet=True)
    assert not rundir.is_locked(run)  # the notebook's process lives on: it must not keep the run's lock
    monkeypatch.undo()
    assert convlab.train(f"resume={run}", quiet=True)["epochs"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("model=nope",), "model=nope is not a config in conf/model/; choose one of: alexnet_lite, dcgan, hdc"),
        (("epochs=0",), "epochs=0 is not allowed; expected an integer >= 1"),
        (("optim.lr=1e-3,1e-2",), "optim.lr=1e-3,1e-2 is a sweep; convlab.train runs one job"),
        (("-m", "model=hdc"), "convlab.train takes no flags (-m)"),
        ((3,), "convlab.train takes overrides as strings like 'epochs=3', not 3"),
        (("hydra.mode=MULTIRUN",), "composes a sweep; convlab.train runs one job"),
        (("epochs=[",), "cannot read the overrides ['epochs=[', 'data=synthetic']"),
    ],
)
def test_bad_calls_raise_one_line_before_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConvlabError) as e:
        convlab.train(*args, "data=synthetic")
    one_line(e, message)
    assert not (tmp_path / "outputs").exists()


def test_load_refuses_what_is_not_a_run_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConvlabError, match="not found"):
        convlab.load(tmp_path / "nothing")
    with pytest.raises(
        ConvlabError, match="expected a run folder, a .pt file or the dict convlab.train returned, not int"
    ):
        convlab.load(3)
    with pytest.raises(ConvlabError, match="device='gpu' is not allowed"):
        convlab.load(tmp_path, device="gpu")
    # A checkpoint that would run code when unpickled is refused, and the code never runs.
    marker = tmp_path / "ran"
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    import torch

    torch.save({"format": 1, "epoch": Payload(Path.touch, marker)}, ckpt, pickle_module=pickle)
    with pytest.raises(ConvlabError, match="weights-only loading refused it"):
        convlab.load(tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize(("kernel", "shown"), [(True, True), (False, False)])
def test_progress_uses_tqdm_auto_in_jupyter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: bool, shown: bool
) -> None:
    from tqdm.auto import tqdm

    if kernel:  # what a Jupyter kernel has loaded (stderr there is no terminal)
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    logger = RunLogger(tmp_path)
    bar = logger.progress(range(3), 3, "epoch 1/1")
    assert isinstance(bar, tqdm) and bar.disable is not shown and list(bar) == [0, 1, 2]
    logger.close()


def test_import_convlab_stays_light() -> None:
    import subprocess

    code = "import sys, convlab; print(sorted(m for m in sys.modules if m.startswith(('convlab', 'torch', 'hydra'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # convlab.app's face holds only the version; convlab.train and convlab.load import what they need on first use
    assert out.strip() == "['convlab', 'convlab.app']"
