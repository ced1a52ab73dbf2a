"""No run is lost or overwritten, and faults end cleanly: folders, locks, resume rules, SIGTERM, kill -9, full disks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convlab.core.errors import ConvlabError
from convlab.run import rundir
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from convlab.run.trainer import Trainer
from tests.conftest import REPO, TINY, make_cfg, one_error_line, run_cli


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run made through the CLI (so it has .hydra/ and train.log)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli("train", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    return out


def test_default_folder_names_never_collide(tmp_path: Path) -> None:
    claims = [rundir.claim(tmp_path / "outputs" / "12-00-00", explicit=False) for _ in range(3)]
    assert [c.folder.name for c in claims] == ["12-00-00", "12-00-00-2", "12-00-00-3"]
    for c in claims:
        c.release()  # nothing was written: the reserved folders go again
    assert not any((tmp_path / "outputs").iterdir())


@pytest.mark.parametrize("marker", ["summary.json", "metrics.csv", "checkpoints", "events.out.tfevents.1.host"])
def test_a_folder_holding_a_run_is_never_a_new_runs_folder(marker: str, tmp_path: Path) -> None:
    (tmp_path / marker).mkdir() if marker == "checkpoints" else (tmp_path / marker).write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(ConvlabError, match=r"already holds a run; .*resume="):
        rundir.claim(tmp_path, explicit=True)
    with pytest.raises(ConvlabError, match="already holds a run"):
        train(make_cfg(tmp_path, *TINY))
    assert snapshot(tmp_path) == before


def test_cli_refuses_a_second_run_into_a_folder(finished: Path) -> None:
    before = snapshot(finished)
    line = one_error_line(run_cli("train", *TINY, f"hydra.run.dir={finished}"))
    assert f"{finished} already holds a run" in line and "resume=" in line
    assert snapshot(finished) == before


def test_a_failed_start_leaves_no_stub_and_keeps_what_was_there(tmp_path: Path) -> None:
    new = tmp_path / "new"
    line = one_error_line(
        run_cli("train", "data=cifar10", "data.root=/nonexistent", "data.download=false", f"hydra.run.dir={new}")
    )
    assert "CIFAR-10 not found" in line and not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_error_line(
        run_cli("train", "data=cifar10", "data.root=/nonexistent", "data.download=false", f"hydra.run.dir={mine}")
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_one_process_per_run_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "from pathlib import Path; from convlab.run import rundir; "
         f"rundir.lock(Path({str(tmp_path)!r})); print('locked', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert rundir.is_locked(tmp_path)
        with pytest.raises(ConvlabError, match=rf"in use by another convlab process \(pid {holder.pid}\)"):
            rundir.lock(tmp_path)
        with pytest.raises(ConvlabError, match="in use by another convlab process"):
            train(make_cfg(tmp_path, *TINY))
        assert not (tmp_path / "summary.json").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert not rundir.is_locked(tmp_path)


def test_two_cli_runs_into_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "convlab",
        "train",
        *TINY,
        "epochs=5000",
        f"hydra.run.dir={out}",
    ]  # still running when stopped
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "summary.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run_cli("train", *TINY, f"hydra.run.dir={out}")
        line = one_error_line(second)
        assert "in use by another convlab process (pid " in line and "resume=" not in line  # not told to resume it
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_resume_never_moves_a_run_backwards(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(make_cfg(run, *TINY, "epochs=3", "optim=adam", "optim.lr=1e-5"))  # val acc barely moves: best.pt stays early
    best = load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]
    if best == 3:
        pytest.skip("best.pt happens to be the last epoch")
    before = snapshot(run)
    with pytest.raises(ConvlabError, match=rf"is at epoch {best} but the run's .*last\.pt is at epoch 3"):
        train(make_cfg(tmp_path / "x", f"resume={run / 'checkpoints' / 'best.pt'}"))
    assert snapshot(run) == before
    # Copied out of the run folder, it branches a new run that records where it came from.
    shutil.copy(run / "checkpoints" / "best.pt", tmp_path / "branch.pt")
    summary = train(make_cfg(tmp_path / "branch", f"resume={tmp_path / 'branch.pt'}"))
    assert summary["status"] == "ok" and summary["out_dir"] == str(tmp_path / "branch")
    assert summary["branched_from"] == {"checkpoint": str(tmp_path / "branch.pt"), "epoch": best}
    assert snapshot(run) == before


def test_resuming_a_finished_run_rewrites_nothing(finished: Path) -> None:
    before = snapshot(finished)
    proc = run_cli("train", f"resume={finished}")
    assert proc.returncode == 0 and "is finished (epoch 2 of 2); nothing to do" in proc.stderr
    assert snapshot(finished) == before
    assert train(make_cfg(finished.parent / "x", f"resume={finished}"))["status"] == "ok"
    assert snapshot(finished) == before


def test_the_users_own_command_with_resume_added(finished: Path) -> None:
    proc = run_cli("train", *TINY, f"resume={finished}", "device=cpu")
    assert proc.returncode == 0 and "is finished" in proc.stderr  # equal values are fine
    line = one_error_line(run_cli("train", *TINY, "epochs=5", "model=hdc", f"resume={finished}"))
    assert "epochs (saved 2, given 5)" in line and "model.name (saved 'plain_cnn', given 'hdc')" in line


def test_resume_continues_in_the_runs_own_folder(finished: Path, tmp_path: Path) -> None:
    from convlab.app.cli import _claim_folders
    from convlab.run.compose import preflight

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # not finished: a resume would train
    args = [f"resume={run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path / 'elsewhere'}"]
    with pytest.raises(ConvlabError, match=r"continues the run in .* itself; drop hydra.run.dir="):
        _claim_folders(args, preflight("train", args))
    assert not (tmp_path / "elsewhere").exists() and not rundir.is_locked(run)


def test_a_symbolic_link_in_a_run_folder_is_refused(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # not finished, so resume would write
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(tmp_path / "victim.txt")
    line = one_error_line(run_cli("train", f"resume={run}"))
    assert "train.log is a symbolic link" in line and not (tmp_path / "victim.txt").exists()


def test_sigterm_ends_like_ctrl_c_and_the_printed_command_resumes(tmp_path: Path) -> None:
    out = tmp_path / "0_model=plain_cnn,optim.lr=0.05,model.channels=[8,16,16]"
    args = [sys.executable, "-m", "convlab", "train", *TINY, "epochs=200", f"hydra.run.dir='{out}'"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and "terminated (SIGTERM)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] >= 1
    epoch = load_checkpoint(out)["epoch"]
    command = summary["resume"] + " trainer.stop_after=1"
    again = subprocess.run(
        command,
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out)["epoch"] == epoch + 1
    assert not list(out.rglob("*.tmp"))


def test_kill_9_during_checkpoint_writes_leaves_a_resumable_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "convlab",
        "train",
        *TINY,
        "epochs=400",
        "data.num_train=80",
        "batch_size=8",
        f"hydra.run.dir={out}",
    ]
    for attempt in range(2):
        proc = subprocess.Popen(
            args if attempt == 0 else [*args[:4], f"resume={out}"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "checkpoints" / "last.pt").exists():
            time.sleep(0.05)
        while time.time() < deadline and not list((out / "checkpoints").glob(".last.pt.*.tmp")):
            time.sleep(0.002)  # kill while a checkpoint is being written
        proc.kill()
        proc.wait()
        assert load_checkpoint(out)["epoch"] >= 1  # last.pt is always whole
    (out / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"x" * 1000)  # as a kill would leave it
    proc = run_cli("train", f"resume={out}", "trainer.stop_after=1")
    assert proc.returncode == 0, proc.stderr
    assert not list(out.rglob("*.tmp"))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MB tmpfs (root only): a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = small_disk / "run"
    real = Trainer._checkpoint

    def fill_after_first(self: Trainer, improved: bool) -> None:
        real(self, improved)
        if self.epoch == 1:  # now the disk fills up (another program, a big dataset...)
            free = shutil.disk_usage(small_disk).free
            (small_disk / "filler").write_bytes(b"\0" * (free - 2048))

    monkeypatch.setattr(Trainer, "_checkpoint", fill_after_first)
    with pytest.raises(ConvlabError) as err:
        train(make_cfg(out, *TINY, "epochs=3"))
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(out)["epoch"] == 1
    assert not list(out.rglob("*.tmp"))


def test_read_only_and_forbidden_folders_are_one_line(small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    line = one_error_line(run_cli("train", *TINY, f"hydra.run.dir={small_disk / 'run'}"))
    assert f"{small_disk / 'run'}" in line and "Read-only file system" in line
    line = one_error_line(run_cli("train", *TINY, "hydra.run.dir=/sys/kernel/convlab-run"))
    assert "/sys/kernel/convlab-run" in line and "not permitted" in line


def test_a_sweep_into_a_folder_holding_a_sweep_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0_seed=1").mkdir()
    (tmp_path / "0_seed=1" / "summary.json").write_text('{"status": "ok"}')
    before = snapshot(tmp_path)
    line = one_error_line(run_cli("train", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={tmp_path}"))
    assert f"{tmp_path} already holds a sweep" in line
    assert snapshot(tmp_path) == before


def test_a_bad_value_in_any_sweep_job_stops_the_sweep_before_it_starts(tmp_path: Path) -> None:
    line = one_error_line(run_cli("train", "-m", "optim.lr=0.01,fast", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"))
    assert "optim.lr='fast' is not allowed" in line and not (tmp_path / "sweep").exists()
