"""Runs that differ only in their seed are folded: mean ± std, n and min–max per setting, compared by a stated rule."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from convlab.app import sweep
from convlab.app.report import report
from convlab.app.seeds import RULE
from tests.conftest import TINY, run_cli

CLASSIFIER = "task:\n  _target_: convlab.tasks.classification.ClassificationTask\n"


def write_run(folder: Path, overrides: list[str], acc: float, status: str = "ok") -> None:
    """A classifier's run folder whose test accuracy is `acc` (validation accuracy acc + 0.1, 2 epochs)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(CLASSIFIER)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {
        "status": status, "parameters": 1234, "epochs": 2, "images_per_s": 1000.0 * acc, "wall_time_s": 3.0,
        "best": {"metric": "val/acc", "mode": "max", "value": acc + 0.1, "epoch": 2},
        "test": {"loss": 1.0 - acc, "acc": acc},
    }  # fmt: skip
    if status != "ok":
        summary["error"] = "RuntimeError: boom"
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [f"1,2.0,0.1,1.5,{acc / 2}", f"2,1.0,{acc},{1.0 - acc},{acc + 0.1}"]
    (folder / "metrics.csv").write_text("epoch,train/loss,train/acc,val/loss,val/acc\n" + "\n".join(rows) + "\n")


def write_sweep(root: Path, accs: dict[str, list[float]], failed: tuple[str, int] | None = None) -> Path:
    """A sweep folder: for each setting ("k=v k2=v2"), one job per seed 0, 1, ... with the given test accuracies."""
    job = 0
    for setting, values in accs.items():
        for seed, acc in enumerate(values):
            overrides = [*setting.split(), f"seed={seed}"]
            status = "failed" if failed == (setting, seed) else "ok"
            write_run(root / f"{job}_{','.join(overrides)}", overrides, acc, status)
            job += 1
    return root


def summarise(root: Path) -> str:
    """Run the sweep's end-of-sweep callback on `root`; returns what it printed."""
    sweep.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    return (root / "summary.md").read_text()


def seeds_rows(root: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((root / "summary_seeds.csv").open()))


def row_of(md: str, setting: str) -> list[str]:
    """The cells of the seeds table's row for `setting`."""
    line = next(line for line in md.splitlines() if line.startswith(f"| {setting} | "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_seeds_fold_into_mean_std_n_and_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_sweep(tmp_path / "sweep", {"optim.lr=0.1": [0.50, 0.52, 0.54], "optim.lr=0.2": [0.60, 0.61, 0.62]})
    md = summarise(root)
    assert "## Seeds folded: mean ± std over n seeds" in md and "Seeds folded" in capsys.readouterr().out
    header = row_of(md, "setting")
    assert header[:2] == ["setting", "n"] and "test/acc" in header and "images/s" in header
    low, high = row_of(md, "optim.lr=0.1"), row_of(md, "optim.lr=0.2")
    assert low[1] == "3" and low[header.index("test/acc")] == "0.5200 ± 0.0200 (0.5000–0.5400)"
    assert high[1] == "3" and high[header.index("test/acc")] == "0.6100 ± 0.0100 (0.6000–0.6200)"
    assert high[header.index("best val/acc")] == "0.7100 ± 0.0100 (0.7000–0.7200)"
    assert low[header.index("images/s")] == "520 ± 20 (500–540)" and "left out (not ok)" not in header
    # The CSV holds the numbers themselves, a column per override key that tells the settings apart.
    rows = seeds_rows(root)
    assert [(r["optim.lr"], r["n"], r["left out"]) for r in rows] == [("0.1", "3", "0"), ("0.2", "3", "0")]
    assert float(rows[0]["test/acc mean"]) == pytest.approx(0.52) and float(rows[0]["test/acc std"]) == pytest.approx(
        statistics.stdev([0.50, 0.52, 0.54])
    )
    assert (float(rows[1]["test/acc min"]), float(rows[1]["test/acc max"])) == pytest.approx((0.60, 0.62))
    # The per-run table is still there, a row per job.
    assert sum(line.startswith("| 0 | 0.1 | 0 | ok |") for line in md.splitlines()) == 1


def test_a_difference_larger_than_the_seed_spread_is_said_so(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "sweep", {"optim.lr=0.1": [0.50, 0.52, 0.54], "optim.lr=0.2": [0.60, 0.61, 0.62]})
    md = report(OmegaConf.create({"paths": [str(root)], "out": str(tmp_path / "out")})).read_text()
    assert RULE in md and "| optim.lr=0.1 | 3 |" in md
    sentence = next(line for line in md.splitlines() if line.startswith("- test/acc: `optim.lr=0.1`"))
    assert "0.5200 (n=3) against `optim.lr=0.2` 0.6100 (n=3): they differ by 0.0900" in sentence
    assert "seed spreads (std) are 0.0200 and 0.0100" in sentence and "**larger than the seed spread**" in sentence


def test_a_difference_within_the_seed_spread_is_said_so(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "sweep", {"optim.lr=0.1": [0.50, 0.52, 0.54], "optim.lr=0.2": [0.53, 0.55, 0.57]})
    md = summarise(root)
    sentence = next(line for line in md.splitlines() if line.startswith("- test/acc: `optim.lr=0.1`"))
    assert "they differ by 0.0300" in sentence and "**within the seed spread**" in sentence  # 0.03 < 2 · 0.02


def test_only_settings_one_key_apart_are_compared(tmp_path: Path) -> None:
    """The lab_precision question: fp32 against bf16 for the same model (and each model at the same precision)."""
    accs = {
        "model=plain_cnn trainer.precision=fp32": [0.60, 0.62],
        "model=plain_cnn trainer.precision=bf16": [0.61, 0.63],
        "model=hdc trainer.precision=fp32": [0.70, 0.72],
        "model=hdc trainer.precision=bf16": [0.50, 0.52],
    }
    md = summarise(write_sweep(tmp_path / "sweep", accs))
    assert row_of(md, "model=hdc, trainer.precision=bf16")[1] == "2"
    sentences = [line for line in md.splitlines() if line.startswith("- test/acc")]
    assert len(sentences) == 4  # not plain_cnn fp32 against hdc bf16: two keys at once
    same_model = next(s for s in sentences if "with `model=plain_cnn`" in s)
    assert "`trainer.precision=fp32` 0.6100 (n=2) against `trainer.precision=bf16` 0.6200" in same_model
    assert "within the seed spread" in same_model
    hdc = next(s for s in sentences if "with `model=hdc`" in s)
    assert "they differ by 0.2000" in hdc and "larger than the seed spread" in hdc


def test_runs_that_did_not_end_ok_are_left_out_and_counted(tmp_path: Path) -> None:
    accs = {"optim.lr=0.1": [0.50, 0.52, 0.99], "optim.lr=0.2": [0.60, 0.61, 0.62], "optim.lr=0.3": [0.70]}
    root = write_sweep(tmp_path / "sweep", accs, failed=("optim.lr=0.1", 2))
    md = summarise(root)
    header, failed = row_of(md, "setting"), row_of(md, "optim.lr=0.1")
    assert failed[1] == "2" and failed[header.index("test/acc")] == "0.5100 ± 0.0141 (0.5000–0.5200)"  # not 0.99
    assert failed[header.index("left out (not ok)")] == "1" and row_of(md, "optim.lr=0.2")[-1] == "0"
    assert "1 of 7 runs did not end ok and are left out: `optim.lr=0.1 seed=2` (failed)." in md
    single = row_of(md, "optim.lr=0.3")
    assert single[1] == "1" and single[header.index("test/acc")] == "0.7000 ± –"  # one run: no spread to show
    assert any("`optim.lr=0.3` 0.7000 (n=1)" in line and "cannot tell" in line for line in md.splitlines())
    assert [r["n"] for r in seeds_rows(root)] == ["2", "3", "1"] and seeds_rows(root)[2]["test/acc std"] == ""


@pytest.mark.parametrize(
    "accs",
    [
        {"optim.lr=0.1": [0.5], "optim.lr=0.2": [0.6]},  # a seed each: nothing to fold
        {"optim.lr=0.1 seed=7": [0.5, 0.6]},  # the same seed twice: repeats, not seeds
    ],
)
def test_no_seeds_table_without_a_group_of_two(tmp_path: Path, accs: dict[str, list[float]]) -> None:
    root = tmp_path / "sweep"
    for job, (setting, acc) in enumerate((s, a) for s, values in accs.items() for a in values):
        overrides = setting.split() if "seed=" in setting else [*setting.split(), f"seed={job}"]
        write_run(root / f"{job}_run", overrides, acc)
    md = summarise(root)
    assert "Seeds folded" not in md and not (root / "summary_seeds.csv").exists()
    md = report(OmegaConf.create({"paths": [str(root)], "out": str(tmp_path / "out")})).read_text()
    assert "Seeds folded" not in md and "](curves.png)" in md and "](test_accuracy.png)" in md
    assert not list((tmp_path / "out").glob("*_seeds.png"))


def test_report_draws_seed_groups_as_bands_and_error_bars(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "sweep", {"optim.lr=0.1": [0.50, 0.52, 0.54], "optim.lr=0.2": [0.60, 0.61, 0.62]})
    out = tmp_path / "out"
    md = report(OmegaConf.create({"paths": [str(root)], "out": str(out)})).read_text()
    for name, size in {"curves_seeds.png": (1200, 800), "test_accuracy_seeds.png": (1000, 390)}.items():
        assert Image.open(out / name).size == size and f"]({name})" in md, name
    assert "mean over seeds, band ± one std" in md and not (out / "curves.png").exists()
    assert not (out / "test_accuracy.png").exists()


def test_a_real_sweep_over_seeds_ends_with_the_folded_table(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = run_cli("train", "-m", "optim.lr=0.01,0.05", "seed=0,1", *TINY, "epochs=1", f"hydra.sweep.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "Seeds folded" in proc.stdout and "summary_seeds.csv" in proc.stdout
    jobs = list(csv.DictReader((out / "summary.csv").open()))
    folded = seeds_rows(out)
    assert [(r["optim.lr"], r["n"]) for r in folded] == [("0.01", "2"), ("0.05", "2")]
    for row in folded:
        accs = [float(j["test/acc"]) for j in jobs if j["optim.lr"] == row["optim.lr"]]
        assert float(row["test/acc mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)  # the table rounds to 4
        assert float(row["test/acc max"]) == pytest.approx(max(accs), abs=1e-4)
    md = report(OmegaConf.create({"paths": [str(out)], "out": str(tmp_path / "report")})).read_text()
    assert "| optim.lr=0.01 | 2 |" in md and (tmp_path / "report" / "curves_seeds.png").is_file()
