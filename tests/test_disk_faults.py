"""Faults while writing (a full disk, a run folder deleted mid-run, paths and sizes too large) end in one line."""

# Each ends in one line and exit code 2; a run that had started says "failed" in its summary.json
# (unless its folder is gone), keeps its last good checkpoint and says how to continue.

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from convlab.core import io
from convlab.core.errors import ConvlabError
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from convlab.run.schema import validate
from tests.conftest import REPO, TINY, make_cfg, one_error_line, one_line, run_cli

QUIET = "hydra/job_logging=quiet"  # warnings and errors only: a failed run prints its one line, nothing else
ENFORCE_FAIL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch.save on a full disk
PRELUDE = """
import os, shutil


def fill(folder):
    \"\"\"Fill the disk `folder` is on, to the last byte (as another program might).\"\"\"
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass
"""


def run_patched(patch: str, *args: str) -> subprocess.CompletedProcess:
    """`convlab ARGS` in a subprocess that first runs `patch` (Python): a fault arranged from inside the run."""
    code = f"{PRELUDE}\n{textwrap.dedent(patch)}\nfrom convlab.app.cli import main\nmain({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)


def summary_of(out: Path) -> dict:
    """The run's summary.json."""
    return json.loads((out / "summary.json").read_text())


def assert_failed_and_resumable(out: Path, line: str, reason: str) -> None:
    """The summary says failed with `reason`, last.pt holds epoch 1 whole, and the line says how to continue."""
    summary = summary_of(out)
    assert summary["status"] == "failed" and reason in summary["error"], summary
    assert load_checkpoint(out)["epoch"] == 1
    assert not list(out.rglob("*.tmp"))
    assert line.endswith(f"with: convlab train resume={out}") and "the last checkpoint is intact" in line


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs (root only): a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root to mount")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_filling_up_under_the_tensorboard_writer(small_disk: Path) -> None:
    out = small_disk / "run"
    patch = f"""
    from convlab.run.trainer import Trainer
    real = Trainer._checkpoint

    def fill_after_first(self, improved):
        real(self, improved)
        if self.epoch == 1:  # another program fills the disk: epoch 2's events meet it first
            fill({str(small_disk)!r})

    Trainer._checkpoint = fill_after_first
    """
    # Step curves at every one of 90 steps: epoch 2's events outgrow the event file's last page, so the writer
    # thread meets the full disk in the middle of the epoch (and before metrics.csv does, at its end).
    steps = ["batch_size=2", "trainer.log_every=1"]
    proc = run_patched(patch, "train", *TINY, *steps, "epochs=3", QUIET, f"hydra.run.dir={out}")
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot write TensorBoard events in {out}: No space left on device; "), line
    assert "free some space, then continue" in line
    assert_failed_and_resumable(out, line, "No space left on device")


def test_a_disk_filling_up_inside_torch_save(small_disk: Path) -> None:
    out = small_disk / "run"
    patch = f"""
    import torch
    real = torch.save

    def fill_then_save(obj, f, *args, **kwargs):
        if os.path.basename(str(f)).startswith(".last.pt.") and obj["epoch"] == 2:
            fill({str(small_disk)!r})  # torch's stream writer meets the full disk: an enforce failure
        return real(obj, f, *args, **kwargs)

    torch.save = fill_then_save
    """
    proc = run_patched(patch, "train", *TINY, "epochs=3", QUIET, f"hydra.run.dir={out}")
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot write {out}/checkpoints/last.pt: No space left on device; "), line
    assert_failed_and_resumable(out, line, "No space left on device")


def test_torch_saves_enforce_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.save

    def fail_inside_the_write(obj: dict, f: str, *args: object, **kwargs: object) -> None:
        if Path(f).name.startswith(".last.pt.") and obj["epoch"] == 2:
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise RuntimeError(ENFORCE_FAIL)
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_inside_the_write)
    with pytest.raises(ConvlabError) as err:
        train(make_cfg(tmp_path, *TINY, "epochs=3"))
    line = one_line(err, f"cannot write {tmp_path}/checkpoints/last.pt: {ENFORCE_FAIL}")
    assert_failed_and_resumable(tmp_path, line, ENFORCE_FAIL)


DELETE = {  # where the folder goes, and what the run tries to write next
    "during an epoch": (
        """
        from convlab.run.trainer import Trainer
        real = Trainer.train_epoch

        def delete_then_train(self, epoch, *args, **kwargs):
            if epoch == 2:
                shutil.rmtree(self.run_dir.path)
            return real(self, epoch, *args, **kwargs)

        Trainer.train_epoch = delete_then_train
        """,
        "its TensorBoard events",
    ),
    "before a checkpoint": (
        """
        from convlab.run.runlog import RunLogger
        real = RunLogger.log_images

        def log_then_delete(self, images, step, per_epoch):
            real(self, images, step, per_epoch)
            if per_epoch and step == 2:
                shutil.rmtree(self.out_dir)

        RunLogger.log_images = log_then_delete
        """,
        "checkpoints/last.pt",
    ),
}


@pytest.mark.parametrize("when", DELETE)
def test_a_run_folder_deleted_mid_run_is_one_line_and_stays_deleted(when: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    patch, what = DELETE[when]
    line = one_error_line(run_patched(patch, "train", *TINY, "epochs=3", QUIET, f"hydra.run.dir={out}"))
    assert line == f"error: run folder {out} is gone (deleted while the run was going); {what} cannot be written"
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing re-created: no summary.json, no events


def test_writes_into_a_deleted_run_folder_recreate_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    io.watch(run)
    try:
        io.write_atomic(run / "checkpoints" / "last.pt", lambda tmp: Path(tmp).write_bytes(b"x"))  # subfolders: made
        assert (run / "checkpoints" / "last.pt").is_file()
        run.joinpath("checkpoints", "last.pt").unlink()
        run.joinpath("checkpoints").rmdir()
        run.rmdir()
        for target in (run / "metrics.csv", run / "checkpoints" / "last.pt", run / "samples" / "epoch_002.png"):
            with pytest.raises(io.WriteError) as err:
                io.write_atomic(target, lambda tmp: Path(tmp).write_bytes(b"x"))
            one_line(err, f"run folder {run} is gone", "cannot be written")
        assert not run.exists()
    finally:
        io.unwatch(run)
    io.write_atomic(run / "report.md", lambda tmp: Path(tmp).write_text("x"))  # unwatched: folders are made as ever
    assert (run / "report.md").read_text() == "x"


def test_a_full_disk_still_ends_the_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "running"}))
    io.rewrite_in_place(summary, json.dumps({"status": "failed", "error": "No space left on device"}))
    assert json.loads(summary.read_text())["status"] == "failed"
    with pytest.raises(io.WriteError) as err:
        io.rewrite_in_place(tmp_path / "gone.json", "{}")  # never creates a file
    assert err.value.errno == errno.ENOENT and not (tmp_path / "gone.json").exists()


@pytest.mark.parametrize(
    "name,reason",
    [
        ("a" * 300, "whose names are at most 255 bytes each"),  # one name longer than a file system takes
        ("/".join(["b" * 200] * 21), "expected a path of at most 3967 bytes"),  # 4,220 characters in all
    ],
)
def test_a_run_folder_path_too_long_for_the_file_system(name: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ConvlabError) as err:
        validate(make_cfg(tmp_path / name, *TINY))
    one_line(err, "out_dir=", f"...({len(str(tmp_path / name))} characters) is not allowed", reason)


@pytest.mark.parametrize(
    "parts,reason",
    [
        (["r" * 300], "whose names are at most 255 bytes each"),  # a 300-character name: too long for any name
        (["d" * 200] * 21, "expected a path of at most 3967 bytes"),  # a path longer than the OS takes
    ],
)
def test_a_hydra_run_dir_too_long_on_the_command_line(parts: list[str], reason: str, tmp_path: Path) -> None:
    proc = run_cli("train", *TINY, f"hydra.run.dir={tmp_path.joinpath(*parts)}")
    line = one_error_line(proc)
    assert proc.returncode == 2 and line.startswith("error: hydra.run.dir=") and reason in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_hydra_run_dir_rule(tmp_path: Path) -> None:
    from tests.conftest import compose_cfg

    cfg = compose_cfg("train", *TINY, f"hydra.run.dir={tmp_path / ('h' * 256)}", return_hydra_config=True)
    with pytest.raises(ConvlabError) as err:
        validate(cfg)
    one_line(err, "hydra.run.dir=", "whose names are at most 255 bytes each")
    validate(compose_cfg("train", *TINY, return_hydra_config=True))  # the default outputs/DATE/TIME passes


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.num_train=1000000000000", "data.num_train=1000000000000"),
        ("data.num_test=1000000000000", "data.num_test=1000000000000"),
        ("data.image_size=1000000", "data.image_size=1000000"),
    ],
)
def test_a_generated_dataset_larger_than_memory_is_refused(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConvlabError) as err:
        validate(make_cfg(tmp_path, *TINY, override))
    one_line(err, f"{key} is not allowed", "GiB of memory")


@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_checkpoint_holding_an_8_tb_dataset_is_refused(command: str, tmp_path: Path) -> None:
    train(make_cfg(tmp_path / "run", *TINY))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["data"]["num_train"] = 10**12  # 10^12 images of 32×32: an 8 TB allocation
    torch.save(state, tmp_path / "huge.pt")
    args = ["eval", f"ckpt={tmp_path / 'huge.pt'}"]
    if command == "train":
        args = ["train", f"resume={tmp_path / 'huge.pt'}", f"hydra.run.dir={tmp_path / 'branch'}"]
    proc = run_cli(*args)
    line = one_error_line(proc)
    assert proc.returncode == 2 and f"checkpoint {tmp_path / 'huge.pt'}: its config is not valid" in line, line
    assert "data.num_train=1000000000000 is not allowed" in line and "GiB of memory" in line
    assert not (tmp_path / "branch").exists()
