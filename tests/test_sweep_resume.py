"""`convlab train -m resume=SWEEP_DIR`: an interrupted sweep ends as if never interrupted; short job names; HPARAMS."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

from convlab.app import cli
from convlab.run import resume, sweeps
from convlab.run.compose import preflight
from convlab.run.rundir import hydra_quote, resume_command
from convlab.run.trainer import Trainer
from tests.conftest import TINY, run_cli

# 4 jobs (2 models × 2 learning rates), 2 epochs each, fp32 so that the comparison means the same on every CPU.
# Interrupted in job 2: jobs 0-1 have ended, job 2 has a checkpoint, job 3 never started.
SETTINGS = [(m, lr) for m in ("plain_cnn", "hdc") for lr in ("0.01", "0.05")]
SWEEP = [*TINY, "trainer.precision=fp32", "model=plain_cnn,hdc", "optim.lr=0.01,0.05"]
NAMES = [f"{i}_model={m},optim.lr={lr}" for i, (m, lr) in enumerate(SETTINGS)]


def _main(mp: pytest.MonkeyPatch, *argv: str) -> int:
    """`convlab ARGV` in this process, as the console script runs it; its exit code."""
    mp.setattr(sys, "argv", ["convlab", *argv])
    try:
        cli.main(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _interrupt_job(mp: pytest.MonkeyPatch, num: int, epoch: int) -> None:
    """Ctrl-C in job `num` of the sweep as its epoch `epoch` starts (after epoch - 1 was checkpointed)."""
    real = Trainer.train_epoch

    def train_epoch(self: Trainer, e: int, *args: object, **kwargs: object) -> object:
        if HydraConfig.get().job.num == num and e == epoch:
            raise KeyboardInterrupt
        return real(self, e, *args, **kwargs)

    mp.setattr(Trainer, "train_epoch", train_epoch)


def _rows(job: Path) -> list[dict[str, str]]:
    """metrics.csv without its timings (they differ between any two runs)."""
    return [
        {k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader((job / "metrics.csv").open())
    ]


def _hparams(job: Path) -> tuple[api_pb2.Experiment, dict, int | None]:
    """The job's HPARAMS experiment (ordered as TensorBoard shows it), its hparams, and its end status (None: none)."""
    ea = EventAccumulator(str(job))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    _sort_and_reduce_to_hparams_limit(experiment, 5)  # TensorBoard's own ordering and its default five columns
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    end = content.get(metadata.SESSION_END_INFO_TAG)
    return experiment, values, None if end is None else metadata.parse_session_end_info_plugin_data(end).status


@pytest.fixture(scope="module")
def sweeps_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The sweep run whole, and the same sweep interrupted in job 3's second epoch, then resumed."""
    root = tmp_path_factory.mktemp("sweeps")
    full, cut = root / "full", root / "cut"
    seen: dict[str, object] = {"full": full, "cut": cut}
    with pytest.MonkeyPatch.context() as mp:
        assert _main(mp, "train", "-m", *SWEEP, f"hydra.sweep.dir={full}") == 0
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_job(mp, 2, 2)
        seen["cut_code"] = _main(mp, "train", "-m", *SWEEP, f"hydra.sweep.dir={cut}")
    seen["after_cut"] = sorted(p.name for p in cut.iterdir() if p.is_dir())
    seen["status_2"] = json.loads((cut / NAMES[2] / "summary.json").read_text())["status"]
    seen["hparams_2"] = _hparams(cut / NAMES[2])
    seen["kept"] = {n: (cut / n / "summary.json").read_bytes() for n in NAMES[:2]}
    seen["log_2"] = (cut / NAMES[2] / "train.log").read_text()
    with pytest.MonkeyPatch.context() as mp:
        seen["resume_code"] = _main(mp, "train", "-m", f"resume={cut}")
    return seen


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_sweeps_results(sweeps_run: dict) -> None:
    full, cut = sweeps_run["full"], sweeps_run["cut"]
    assert sweeps_run["cut_code"] == 130 and sweeps_run["after_cut"] == NAMES[:3]
    assert sweeps_run["status_2"] == "interrupted"
    assert f"continue the sweep (its ended jobs kept) with: {resume_command(cut, sweep=True)}" in sweeps_run["log_2"]
    assert sweeps_run["resume_code"] == 0
    assert (
        sorted(p.name for p in cut.iterdir() if p.is_dir())
        == NAMES
        == sorted(p.name for p in full.iterdir() if p.is_dir())
    )
    for name in NAMES:
        a, b = (
            json.loads((full / name / "summary.json").read_text()),
            json.loads((cut / name / "summary.json").read_text()),
        )
        assert b["status"] == "ok" and b["epochs"] == 2, name
        assert a["test"] == b["test"] and a["best"] == b["best"], name  # the same numbers, exactly
        assert _rows(full / name) == _rows(cut / name), name
    for name, before in sweeps_run["kept"].items():  # ended jobs were not run again, nor rewritten
        assert (cut / name / "summary.json").read_bytes() == before
    # the final summary covers every job, the continued one and the ones that never started
    rows = list(csv.DictReader((cut / "summary.csv").open()))
    assert [(r["model"], r["optim.lr"], r["status"]) for r in rows] == [(m, lr, "ok") for m, lr in SETTINGS]


def test_hparams_show_the_swept_keys_first_from_the_jobs_start(sweeps_run: dict) -> None:
    experiment, values, status = sweeps_run["hparams_2"]  # the interrupted job: started, never ended
    assert status is None and values["model"] == "hdc" and values["optim.lr"] == 0.01
    assert [h.name for h in experiment.hparam_infos][:2] == ["model", "optim.lr"]
    assert [h.differs for h in experiment.hparam_infos] == [True, True, False, False, False]
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "val/loss", "test/acc"]
    experiment, values, status = _hparams(sweeps_run["cut"] / NAMES[2])
    assert status == api_pb2.STATUS_SUCCESS
    assert {"model", "data", "optim", "optim.lr", "batch_size", "epochs", "seed", "trainer.precision"} <= set(values)
    assert values["data"] == "synthetic" and values["trainer.precision"] == "fp32" and values["batch_size"] == 64


def test_a_diverged_job_is_kept_unless_asked_and_then_runs_again_beside_the_old_folder(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        assert _main(mp, "train", "-m", *TINY, "epochs=1", "optim.lr=0.01,1e30", f"hydra.sweep.dir={tmp_path}") == 1
        assert _hparams(tmp_path / "1_optim.lr=1e+30")[2] == api_pb2.STATUS_FAILURE
        before = (tmp_path / "1_optim.lr=1e+30" / "summary.json").read_bytes()
        assert _main(mp, "train", "-m", f"resume={tmp_path}") == 1  # kept: still diverged, still counted
        assert (tmp_path / "1_optim.lr=1e+30" / "summary.json").read_bytes() == before
        assert _main(mp, "train", "-m", f"resume={tmp_path}", "rerun_failed=true") == 1
    (aside,) = (tmp_path / sweeps.KEPT_ASIDE).iterdir()
    assert aside.name.startswith("1_optim.lr=1e+30.") and (aside / "summary.json").read_bytes() == before
    again = json.loads((tmp_path / "1_optim.lr=1e+30" / "summary.json").read_text())
    assert again["status"] == "diverged" and again["started"] != json.loads(before)["started"]
    assert json.loads((tmp_path / "0_optim.lr=0.01" / "summary.json").read_text())["status"] == "ok"


def test_job_folders_name_only_what_differs(tmp_path: Path) -> None:
    first = preflight("train", ["-m", *TINY, "model=plain_cnn,hdc", "seed=0"])
    (naming,) = sweeps.naming(["-m", *TINY, "model=plain_cnn,hdc", "seed=0"], first)
    excluded = yaml.safe_load(naming.split("=", 1)[1])
    assert "model" not in excluded and {"seed", "epochs", "data", "data.num_train", "resume"} <= set(excluded)
    assert sweeps.job_name(str(tmp_path), 3, "model=hdc,optim.lr=0.01") == "3_model=hdc,optim.lr=0.01"
    assert sweeps.job_name(str(tmp_path), 0, "") == "0"  # a one-job sweep: nothing differs
    assert set(resume.MAY_CHANGE) <= set(sweeps.RESUME_MAY_SET)  # spelt out in sweeps.py: kept in step


@pytest.fixture
def small_sweep(tmp_path: Path) -> Path:
    """A finished 2-job sweep (one epoch each)."""
    with pytest.MonkeyPatch.context() as mp:
        assert _main(mp, "train", "-m", *TINY, "epochs=1", "optim.lr=0.01,0.05", f"hydra.sweep.dir={tmp_path}") == 0
    return tmp_path


def _refusal(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one line a refused command printed (exit code 2, nothing else)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        assert _main(mp, *argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_resumed_sweep_refuses_what_is_not_its_sweep(small_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    line = _refusal(capsys, "train", "-m", f"resume={small_sweep}", "optim.lr=0.1")
    assert "this command asks for optim.lr=0.1; the sweep has optim.lr=0.01,0.05" in line and "drop it" in line
    assert "no such sweep folder" in _refusal(capsys, "train", "-m", f"resume={small_sweep / 'nowhere'}")
    job = small_sweep / "0_optim.lr=0.01"
    assert "is not a sweep folder" in _refusal(capsys, "train", "-m", f"resume={hydra_quote(str(job))}")
    assert "continue the sweep with: convlab train -m" in _refusal(capsys, "train", f"resume={small_sweep}")
    # a job folder that holds another job than its number says
    saved = job / ".hydra" / "overrides.yaml"
    text = saved.read_text()
    saved.write_text(text.replace("optim.lr=0.01", "optim.lr=0.3"))
    assert "0_optim.lr=0.01 holds a job with other overrides than job 0" in _refusal(
        capsys, "train", "-m", f"resume={small_sweep}"
    )
    saved.write_text(text)
    shutil.copytree(job, small_sweep / "7_optim.lr=0.9")
    assert "7_optim.lr=0.9 is not one of this sweep's 2 jobs" in _refusal(
        capsys, "train", "-m", f"resume={small_sweep}"
    )
    shutil.rmtree(small_sweep / "7_optim.lr=0.9")
    # links: a job folder, or a file Hydra or convlab would write through, elsewhere
    elsewhere = small_sweep.parent / f"{small_sweep.name}-elsewhere"
    shutil.move(small_sweep / "1_optim.lr=0.05", elsewhere)
    (small_sweep / "1_optim.lr=0.05").symlink_to(elsewhere)
    assert "1_optim.lr=0.05 is a link, not a job folder" in _refusal(capsys, "train", "-m", f"resume={small_sweep}")
    (small_sweep / "1_optim.lr=0.05").unlink()
    shutil.move(elsewhere, small_sweep / "1_optim.lr=0.05")
    log = small_sweep / "1_optim.lr=0.05" / "train.log"
    log.rename(elsewhere)
    log.symlink_to(elsewhere)
    assert "train.log is a symbolic link" in _refusal(capsys, "train", "-m", f"resume={small_sweep}")
    log.unlink()
    elsewhere.rename(log)
    record = small_sweep / sweeps.RECORD
    kept = record.read_text()
    for bad in ["- just\n- a list\n", "task: [1, 2]\nhydra: []\n", "\x00\x01 not yaml: [\n", "x" * (2 << 20)]:
        record.write_text(bad)
        line = _refusal(capsys, "train", "-m", f"resume={small_sweep}")
        assert "is not a sweep record convlab or Hydra wrote" in line
    for smuggled in ["hydra.sweep.subdir=/tmp/out", "resume=/tmp/some/run", "+hydra.callbacks.x={_target_:os.system}"]:
        record.write_text(yaml.safe_dump({"task": ["optim.lr=0.01,0.05", smuggled], "hydra": []}))
        line = _refusal(capsys, "train", "-m", f"resume={small_sweep}")
        assert f"names '{smuggled}', which no sweep's record holds" in line
    record.write_text(kept)
    line = _refusal(capsys, "train", "-m", f"resume={small_sweep}", f"hydra.sweep.dir={small_sweep.parent}")
    assert "continues that sweep in its own folder; drop hydra.sweep.dir=" in line
    assert "rerun_failed=true is for a sweep continued" in _refusal(capsys, "train", *TINY, "rerun_failed=true")
    summaries = sorted(small_sweep.glob("*/summary.json"))
    assert len(summaries) == 2 and all(json.loads(p.read_text())["status"] == "ok" for p in summaries)


def _job_files(sweep: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file of the sweep's jobs but their logs (a resume notes itself there): its bytes and modification time."""
    files = [p for job in sweep.glob("[0-9]*") for p in job.rglob("*") if p.is_file() and p.suffix != ".log"]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_resuming_a_finished_sweep_rewrites_nothing(small_sweep: Path) -> None:
    before = _job_files(small_sweep)
    with pytest.MonkeyPatch.context() as mp:
        # the original command retyped, part of it, with this session's device: nothing of the jobs changes
        code = _main(mp, "train", "-m", *TINY, "epochs=1", "optim.lr=0.01,0.05", f"resume={small_sweep}", "device=cpu")
        assert code == 0 and _main(mp, "train", "-m", "data.num_train=200", f"resume={small_sweep}") == 0
        (small_sweep / sweeps.RECORD).unlink()  # a sweep of an older convlab: Hydra's multirun.yaml is its record
        assert _main(mp, "train", "-m", f"resume={small_sweep}") == 0
    assert _job_files(small_sweep) == before and len(before) > 10
    assert sorted(p.name for p in small_sweep.iterdir() if p.is_dir()) == ["0_optim.lr=0.01", "1_optim.lr=0.05"]


@pytest.mark.slow  # 20 s each: the launchers' workers start fresh interpreters
@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_a_sweep_interrupted_under_one_launcher_resumes_under_another(launcher: str, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_job(mp, 1, 2)
        assert _main(mp, "train", "-m", *TINY, "optim.lr=0.01,0.05,0.2", f"hydra.sweep.dir={tmp_path}") == 130
    proc = run_cli("train", "-m", f"resume={tmp_path}", f"hydra/launcher={launcher}")
    assert proc.returncode == 0, proc.stderr
    assert "1 jobs ended (kept), 1 continue from their last checkpoint, 1 run" in proc.stderr
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["optim.lr"], r["status"], r["epochs"]) for r in rows] == [
        (lr, "ok", "2") for lr in ("0.01", "0.05", "0.2")
    ]
    assert "resuming" in (tmp_path / "1_optim.lr=0.05" / "train.log").read_text()
