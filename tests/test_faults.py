"""Ordinary events during a run: a signal while a checkpoint is being written, a run that diverges."""

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
from tests.conftest import SMALL, TINY, make_cfg, one_error_line, run_cli

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


def test_a_diverging_sweep_job_ends_diverged_and_the_sweep_goes_on(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "-m", *TINY, "epochs=1", "trainer.precision=fp32", "optim.lr=1e-3,1e9", f"hydra.sweep.dir={tmp_path}"
    )
    assert proc.returncode == 1, proc.stderr  # the sweep ran to its end, but not every job succeeded
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*/error.txt"))
    ok, bad = (json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json")))
    assert ok["status"] == "ok" and bad["status"] == "diverged"
    assert "epoch 1" in bad["error"] and "nan" in bad["error"] and "lower optim.lr" in bad["error"]
    said = [line for line in proc.stderr.splitlines() if "diverged" in line]
    assert len(said) == 1 and "epoch 1" in said[0], proc.stderr
    table = (tmp_path / "summary.md").read_text()
    assert "| diverged" in table and "IndexError" not in table


@pytest.fixture
def nan_run(tmp_path: Path) -> Path:
    """A finished run whose saved weights are all NaN (what a diverged run can leave behind)."""
    train(make_cfg(tmp_path / "run", *FAST, "epochs=1"))
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    for tensor in state["task"]["models"]["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(state, path)
    (tmp_path / "run" / "checkpoints" / "best.pt").unlink()
    return tmp_path / "run"


def test_nan_weights_do_not_crash_eval_or_inspect(nan_run: Path, tmp_path: Path) -> None:
    scored = run_cli("eval", f"ckpt={nan_run}", "device=cpu")
    assert scored.returncode == 0 and "Traceback" not in scored.stderr, scored.stderr
    assert "nan" in scored.stdout
    looked = run_cli("inspect", f"ckpt={nan_run}", f"out={tmp_path / 'inspect'}", "device=cpu")
    assert looked.returncode == 0 and "Traceback" not in looked.stderr, looked.stderr
    assert (tmp_path / "inspect" / "effective_field.png").is_file()


def test_report_escapes_what_a_run_folder_supplies(tmp_path: Path) -> None:
    import yaml
    from omegaconf import OmegaConf

    from convlab.app.report import report
    from tests.test_hostile_data import write_run

    hostile = "0.1|x\n# Owned <script>alert(1)</script> [link](javascript:x) `code"  # a real newline
    overrides = yaml.safe_dump([f"optim.lr={hostile}"])
    write_run(tmp_path / "runs" / "0_a", "0.1", {".hydra/overrides.yaml": overrides})
    write_run(tmp_path / "runs" / "1_b", "0.2", {})
    md = report(OmegaConf.create({"paths": [str(tmp_path / "runs")], "out": None})).read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\n# Owned" not in md  # no heading injected
    table = [line for line in md.splitlines() if line.startswith("|")]
    # every row has the header's cells: an unescaped | in a value would add one
    assert table and len({line.count("|") - line.count("\\|") for line in table}) == 1


def test_sample_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    old_gan = Path(__file__).parent / "fixtures" / "runs_v0_1" / "gan"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link.png"
    link.symlink_to(victim)
    proc = run_cli("sample", f"ckpt={old_gan}", "n=4", f"out={link}", "device=cpu")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me" and not link.is_symlink() and link.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("out_dir", [5, "", "   "])
def test_the_api_refuses_an_out_dir_that_is_not_a_folder_name(
    out_dir: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import convlab
    from convlab.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # where out_dir="" would have trained
    with pytest.raises(ConfigError, match="out_dir=") as err:
        convlab.train(*TINY, out_dir=out_dir, quiet=True)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_load_says_when_the_tested_best_weights_are_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import convlab

    # lr 1e-9: epoch 2 cannot beat epoch 1, so the run stops early after epoch 2 of 3 and tests best.pt
    summary = train(make_cfg(tmp_path / "run", *FAST, "trainer.early_stop.patience=1", "optim.lr=1e-9"))
    assert summary["test_weights"]["which"] == "best" and summary["test_weights"]["epoch"] == 1
    (tmp_path / "run" / "checkpoints" / "best.pt").unlink()
    with caplog.at_level("WARNING", logger="convlab"):
        loaded = convlab.load(tmp_path / "run", device="cpu")
    assert loaded.checkpoint.name == "last.pt" and loaded.epoch == 2
    said = [r.getMessage() for r in caplog.records if "best.pt" in r.getMessage()]
    assert len(said) == 1 and "last.pt" in said[0] and "epoch 2" in said[0], caplog.text


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("+trainer.epohcs=3", "trainer.epohcs is not a key of convlab's trainer config; did you mean epochs?"),
        ("trainer.epohcs=3", "trainer.epohcs is not a key of convlab's trainer config; did you mean epochs?"),
        ("+trainer.log_evry=3", "did you mean trainer.log_every?"),
        ("+model.widht=8", "model.widht is not a key of convlab's model config"),
        ("+foo=1", "foo is not a key of convlab's top-level config"),
    ],
)
def test_a_key_added_inside_convlabs_own_config_is_refused(override: str, said: str, tmp_path: Path) -> None:
    line = one_error_line(run_cli("train", *TINY, override, f"hydra.run.dir={tmp_path / 'run'}"))
    assert said in line and "+trainer" not in line.replace(override, "")  # no advice to append it with +
    assert not (tmp_path / "run").exists()


def test_a_users_own_task_may_take_settings_of_its_own() -> None:
    from convlab.run.compose import compose

    cfg = compose("train", ["task._target_=tests.toy_task.ToyTask", "+task.noise=0.1"])
    assert cfg.task.noise == 0.1


def test_a_checkpoints_own_data_paths_choose_no_reads_writes_or_downloads(tmp_path: Path, cifar_root: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    run = tmp_path / "run"
    train(make_cfg(run, *FAST, "epochs=1"))
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    elsewhere = tmp_path / "some" / "where" / "deep"
    state["config"]["data"] = state["config"]["data"] | {
        "name": "cifar10", "_target_": "convlab.data.cifar10.CIFAR10", "root": str(elsewhere), "download": True,
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
    }  # fmt: skip
    for key in ("num_train", "num_test", "noise", "seed", "image_size"):
        state["config"]["data"].pop(key, None)
    torch.save(state, path)
    env = {**os.environ, "CONVLAB_DATA": str(cifar_root)}  # convlab's own default folder, as a user sets it
    for args in (["eval", f"ckpt={run}"], ["inspect", f"ckpt={run}", f"out={tmp_path / 'inspect'}"]):
        cmd = [sys.executable, "-m", "convlab", *args, "device=cpu"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"data: cifar10 read from {cifar_root} (" in proc.stderr and "data.root" in proc.stderr  # said, and how
    assert not (tmp_path / "some").exists()  # neither created nor downloaded into
