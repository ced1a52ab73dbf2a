"""Untrusted input: hostile data files, run folders and output paths end in one line, never in code or a hang."""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from convlab.app import sweep
from convlab.app.evaluate import sample_checkpoint
from convlab.app.report import report
from convlab.app.runs import find_runs
from convlab.app.tables import md_text
from convlab.core.errors import ConfigError, ConvlabError
from convlab.data.anime_faces import AnimeFaces, list_images
from convlab.data.cifar10 import CIFAR10, FOLDER, TEST_FILE, TRAIN_FILES
from tests.conftest import Payload, compose_cfg, one_error_line, one_line, run_cli


def within(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a thread, failing the test when it has not returned in time (opening a FIFO blocks forever)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as e:  # handed to the test's thread below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------- CIFAR-10 batch pickles


def batch(n: int = 4, labels: list[int] | None = None, data: Any = None) -> dict[str, Any]:
    """A CIFAR-10-shaped batch dict of `n` images."""
    pixels = np.arange(n * 3072, dtype=np.int64).reshape(n, 3072).astype(np.uint8)
    return {"data": pixels if data is None else data, "labels": list(range(n)) if labels is None else labels}


def cifar_folder(root: Path, first: Any, protocol: int = 2) -> Path:
    """`root` holding cifar-10-batches-py/ whose data_batch_1 is `first` (bytes as they are, else pickled)."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    path = folder / TRAIN_FILES[0]
    if callable(first):
        first(path)
    else:
        path.write_bytes(first if isinstance(first, bytes) else pickle.dumps(first, protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_genuine_numpy_pickles(tmp_path: Path, protocol: int) -> None:
    """Protocol 2 (the original files) and 5 (Python 3's default, numpy's _frombuffer) both pass the allow-list."""
    good = batch(labels=[9, 0, 3, 3])
    cifar_folder(tmp_path, good, protocol)
    for name in [*TRAIN_FILES[1:], TEST_FILE]:
        (tmp_path / FOLDER / name).write_bytes(
            pickle.dumps(good | {"labels": np.array(good["labels"])}, protocol=protocol)
        )
    x, y, x_test, y_test = CIFAR10(root=str(tmp_path), download=False).load()
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist()[:4] == [9, 0, 3, 3]
    assert torch.equal(x_test[1].flatten(), torch.from_numpy(good["data"][1])) and y_test.dtype == torch.int64


def test_cifar10_pickle_that_runs_a_command_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cifar_folder(tmp_path / "d", {"data": Payload(os.system, f"touch {marker}"), "labels": [0]})
    with pytest.raises(ConvlabError) as err:
        CIFAR10(root=str(tmp_path / "d"), download=False).load()
    one_line(err, "data_batch_1", "system", "only numpy arrays, lists and numbers")
    assert not marker.exists()


HOSTILE_BATCHES = {
    "float pixels": (
        batch(data=np.zeros((4, 3072), np.float32)),
        ["dtype float32", "expected uint8 of shape (N, 3072)"],
    ),
    "channels last": (batch(data=np.zeros((4, 32, 32, 3), np.uint8)), ["shape (4, 32, 32, 3)", "(N, 3072)"]),
    "label 10": (batch(labels=[0, 1, 10, 2]), ["label 10 at index 2", "integers 0 to 9"]),
    "label -1": (batch(labels=[-1, 1, 2, 3]), ["label -1 at index 0"]),
    "float label": (batch(labels=[0, 1, 2, 3.5]), ["label 3.5 at index 3"]),
    "fewer labels": (batch(labels=[0, 1, 2]), ["4 images but 3 labels"]),
    "not a dict": ([1, 2, 3], ["holds an object of type list", "'data' and 'labels'"]),
    "no labels": ({"data": batch()["data"]}, ["keys ['data']"]),
    "truncated": (pickle.dumps(batch(), protocol=2)[:5000], ["is unreadable", "truncated"]),
    "garbage": (b"\x00\xffGIF89a garbage", ["is unreadable"]),
    "directory": (lambda p: p.mkdir(), ["is a directory, not a regular file"]),
    "FIFO": (lambda p: os.mkfifo(p), ["is a FIFO, not a regular file"]),
}


@pytest.mark.parametrize("case", HOSTILE_BATCHES)
def test_cifar10_hostile_batch_is_one_line(tmp_path: Path, case: str) -> None:
    content, parts = HOSTILE_BATCHES[case]
    root = cifar_folder(tmp_path, content)
    with pytest.raises(ConvlabError) as err:
        within(10, CIFAR10(root=str(root), download=False).load)
    one_line(err, str(root / FOLDER / "data_batch_1"), *parts)


def test_cifar10_batch_may_be_a_symlink_and_root_may_not_be_a_file(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_bytes(pickle.dumps(batch(labels=[1, 2, 3, 4])))
    cifar_folder(tmp_path / "d", lambda p: p.symlink_to(real))
    for name in [*TRAIN_FILES[1:], TEST_FILE]:
        (tmp_path / "d" / FOLDER / name).symlink_to(real)
    assert CIFAR10(root=str(tmp_path / "d"), download=False).load()[1].tolist()[:4] == [1, 2, 3, 4]
    with pytest.raises(ConvlabError) as err:
        CIFAR10(root=str(real)).load()  # no download is attempted into a file
    one_line(err, f"data.root {real} is a file")


# ---------------------------------------------------------------- anime faces


def face_folder(root: Path, sizes: list[int]) -> Path:
    """PNG files of random colours, one per size (square)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_faces_never_open_fifos_or_folders_named_like_images(tmp_path: Path) -> None:
    root = face_folder(tmp_path / "f", [20, 20, 20])
    os.mkfifo(root / "fifo.jpg")
    (root / "folder.png").mkdir()
    assert [p.name for p in list_images(root)] == ["0.png", "1.png", "2.png"]
    x = within(20, AnimeFaces(root=str(root), image_size=8, cache_dir=str(tmp_path / "c")).load)[0]
    assert x.shape == (3, 3, 8, 8)


def test_faces_decompression_bombs_count_as_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 1600 pixels draws PIL's warning, 2500 its error: both are skipped, only the 20×20 image is kept.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = face_folder(tmp_path / "f", [20, 40, 50])
    with caplog.at_level(logging.WARNING):
        x = AnimeFaces(root=str(root), image_size=8, cache_dir=str(tmp_path / "c")).load()[0]
    assert len(x) == 1 and "skipped 2 unreadable file(s) of 3" in caplog.text


@pytest.mark.parametrize("bad", ["wrong shape", "wrong dtype", "pickled objects", "FIFO", "garbage"])
def test_faces_bad_cache_is_rebuilt_not_used(tmp_path: Path, bad: str) -> None:
    root = face_folder(tmp_path / "f", [20, 20])
    faces = AnimeFaces(root=str(root), image_size=8, cache_dir=str(tmp_path / "c"))
    cache = faces.cache_path(list_images(root))
    cache.parent.mkdir()
    if bad == "FIFO":
        os.mkfifo(cache)
    elif bad == "garbage":
        cache.write_bytes(b"\x93NUMPY garbage")
    else:
        planted = {"wrong shape": np.zeros((2, 3, 16, 16), np.uint8), "wrong dtype": np.zeros((2, 3, 8, 8), np.float32)}
        np.save(
            cache,
            planted.get(bad, np.array([Payload(os.system, f"touch {tmp_path / 'ran'}")] * 2, dtype=object)),
            allow_pickle=True,
        )
    x = within(20, faces.load)[0]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8 and x.float().std() > 20  # decoded, not the planted zeros
    assert not (tmp_path / "ran").exists()
    assert np.load(cache).shape == (2, 3, 8, 8)  # replaced by a good cache


def test_faces_root_that_is_a_file_or_empty_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(ConvlabError) as err:
        AnimeFaces(root=str(tmp_path / "file.jpg"), cache_dir=str(tmp_path / "c")).load()
    one_line(err, "file.jpg is a file, not a folder", "set data.root")
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "empty" / "only.png")
    with pytest.raises(ConvlabError) as err:
        within(10, AnimeFaces(root=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")).load)
    one_line(err, "no images (jpg, png, webp) found under")


# ---------------------------------------------------------------- run folders: report and sweep summary

GOOD_SUMMARY = {
    "status": "ok", "parameters": 1234, "epochs": 2, "images_per_s": 900.0, "wall_time_s": 3.5,
    "best": {"metric": "val/acc", "mode": "max", "value": 0.5, "epoch": 2},
    "test": {"loss": 1.2, "acc": 0.45, "per_class_acc": {"cat": 0.5, "dog": 0.4}, "confusion": [[5, 5], [6, 4]]},
}  # fmt: skip
GOOD_METRICS = "epoch,train/loss,train/acc,val/loss,val/acc\n1,2.0,0.2,1.9,0.3\n2,1.5,0.4,1.4,0.5\n"


def write_run(folder: Path, lr: str, files: dict[str, Any]) -> None:
    """A run folder: a good run's three files, each replaced by `files` (text, bytes, or a function of the path)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("optim:\n  lr: 0.1\n")
    defaults = {
        "summary.json": json.dumps(GOOD_SUMMARY),
        "metrics.csv": GOOD_METRICS,
        ".hydra/overrides.yaml": f"- optim.lr={lr}\n",
    }
    for name, content in (defaults | files).items():
        path = folder / name
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def sparse_file(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)


BROKEN_RUNS = {
    "invalid JSON": ({"summary.json": '{"status": "ok",'}, "summary.json is not JSON"),
    "JSON list": ({"summary.json": "[1, 2]"}, "summary.json holds [1, 2], not a JSON object"),
    "parameters": (
        {"summary.json": json.dumps(GOOD_SUMMARY | {"parameters": "many"})},
        "parameters is 'many'; expected a count",
    ),
    "macs": ({"summary.json": json.dumps(GOOD_SUMMARY | {"macs": -5})}, "macs is -5; expected a count"),
    "best": (
        {"summary.json": json.dumps(GOOD_SUMMARY | {"best": 5})},
        "best is 5; expected an object with metric, mode and value",
    ),
    "confusion": (
        {"summary.json": json.dumps(GOOD_SUMMARY | {"test": {"acc": 0.4, "confusion": [[1, 2]]}})},
        "test.confusion is",
    ),
    "status": (
        {"summary.json": json.dumps(GOOD_SUMMARY | {"status": "exploded"})},
        "status 'exploded' is not one of ok, failed",
    ),
    "NaN accuracy": (
        {"summary.json": json.dumps(GOOD_SUMMARY | {"test": {"acc": float("nan")}})},
        "test.acc is nan; expected a fraction",
    ),
    "huge": (
        {"summary.json": lambda p: sparse_file(p, 17 << 20)},
        "summary.json is 17,825,792 bytes, more than a run writes",
    ),
    "binary": ({"summary.json": b"\xff\xfe\x00\x81garbage"}, "summary.json is not UTF-8 text"),
    "FIFO summary": ({"summary.json": os.mkfifo}, "summary.json is a FIFO, not a regular file"),
    "non-numeric CSV": (
        {"metrics.csv": GOOD_METRICS + "3,abc,0.1,0.1,0.1\n"},
        "metrics.csv line 4, column 'train/loss': 'abc' is not a number",
    ),
    "ragged CSV": ({"metrics.csv": GOOD_METRICS + "3,1.0\n"}, "metrics.csv line 4 has 2 cells but its header has 5"),
    "directory CSV": ({"metrics.csv": Path.mkdir}, "metrics.csv is a directory, not a regular file"),
    "YAML mapping": (
        {".hydra/overrides.yaml": "a: 1\n"},
        ".hydra/overrides.yaml holds {'a': 1}; expected a list of key=value strings",
    ),
    "YAML numbers": ({".hydra/overrides.yaml": "- 1\n- 2\n"}, "expected a list of key=value strings"),
    "YAML syntax": ({".hydra/overrides.yaml": "- [unclosed\n"}, ".hydra/overrides.yaml is not valid YAML"),
}


@pytest.fixture
def mixed_sweep(tmp_path: Path) -> Path:
    """A sweep folder: job 0 a good run, then one broken run per BROKEN_RUNS case."""
    root = tmp_path / "sweep"
    write_run(root / "0_optim.lr=0.1", "0.1", {})
    for i, (files, _) in enumerate(BROKEN_RUNS.values(), start=1):
        write_run(root / f"{i}_optim.lr=bad{i}", f"bad{i}", files)
    return root


def test_report_lists_broken_runs_and_draws_the_good_one(mixed_sweep: Path, tmp_path: Path) -> None:
    md = within(60, report, OmegaConf.create({"paths": [str(mixed_sweep)], "out": str(tmp_path / "out")})).read_text()
    assert "`optim.lr=0.1`: ok" in md and "| 0 | 0.1 | ok | 0.5000 |" in md
    lines = md.splitlines()
    for i, (case, (_, reason)) in enumerate(BROKEN_RUNS.items(), start=1):
        row = next(line for line in lines if line.startswith(f"| {i} | "))  # the table's row
        note = next(
            line for line in lines if line.startswith("- ") and f"{i}_optim.lr=bad{i}`)" in line
        )  # the list of runs
        shown = md_text(reason)  # as report.md shows a run's own text: Markdown and HTML escaped
        assert shown in row.partition(" | broken: ")[2] and shown in note.partition(": **broken**: ")[2], case
    for name in ("curves.png", "test_accuracy.png", "confusion.png"):
        assert Image.open(tmp_path / "out" / name).size[0] > 200 and f"]({name})" in md


def test_sweep_summary_survives_broken_runs(mixed_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    within(30, sweep.SweepSummary().on_multirun_end, OmegaConf.create({"hydra": {"sweep": {"dir": str(mixed_sweep)}}}))
    assert sweep.last_sweep == {"jobs": 1 + len(BROKEN_RUNS), "failed": len(BROKEN_RUNS)}
    assert "best: optim.lr=0.1" in capsys.readouterr().out and (mixed_sweep / "best_config.yaml").is_file()
    assert "broken: metrics.csv line 4 has 2 cells" in (mixed_sweep / "summary.csv").read_text()


def test_report_accepts_nulls_where_a_run_may_write_them(tmp_path: Path) -> None:
    nulls = {"status": "ok", "test": None, "best": None, "parameters": None, "images_per_s": None}
    write_run(tmp_path / "runs" / "0_a", "0.1", {"summary.json": json.dumps(nulls)})
    unnamed = GOOD_SUMMARY | {"test": GOOD_SUMMARY["test"] | {"per_class_acc": None}}
    write_run(tmp_path / "runs" / "1_b", "0.2", {"summary.json": json.dumps(unnamed)})
    md = report(OmegaConf.create({"paths": [str(tmp_path / "runs")], "out": None})).read_text()
    assert "`optim.lr=0.1`: ok" in md and "`optim.lr=0.2`: ok" in md and (tmp_path / "runs" / "confusion.png").is_file()


def test_report_out_and_paths_that_are_not_folders_are_one_line(tmp_path: Path) -> None:
    write_run(tmp_path / "run", "0.1", {})
    (tmp_path / "file.txt").write_text("keep me")
    cfg = lambda paths, out=None: OmegaConf.create({"paths": paths, "out": out})  # noqa: E731
    with pytest.raises(ConfigError) as err:
        report(cfg([str(tmp_path / "run")], str(tmp_path / "file.txt")))
    one_line(err, f"out={tmp_path / 'file.txt'} is a file, not a folder")
    with pytest.raises(ConvlabError) as err:
        report(cfg([str(tmp_path / "run")], str(tmp_path / "file.txt" / "sub")))
    one_line(err, f"cannot write the report into {tmp_path / 'file.txt' / 'sub'} (Not a directory)")
    with pytest.raises(ConvlabError) as err:
        report(cfg([str(tmp_path / "file.txt")]))
    one_line(err, f"{tmp_path / 'file.txt'} is a file, not a folder; give run folders")
    assert (tmp_path / "file.txt").read_text() == "keep me"


def test_report_replaces_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    """Only report.md and its own PNGs change: links planted under those names, or as sample grids, lead nowhere."""
    write_run(
        tmp_path / "gan",
        "0.1",
        {"metrics.csv": "epoch,train/loss/D,train/loss/G\n1,0.5,2.0\n", "summary.json": '{"status": "ok"}'},
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (tmp_path / "gan" / "samples").mkdir()
    (tmp_path / "gan" / "samples" / "epoch_001.png").symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").symlink_to(secret)
    (out / "gan_curves.png").symlink_to(secret)
    md = report(OmegaConf.create({"paths": [str(tmp_path / "gan")], "out": str(out)})).read_text()
    assert secret.read_text() == "private" and not (out / "report.md").is_symlink() and "gan_curves.png" in md
    assert Image.open(out / "gan_curves.png").size == (1200, 800) and not (out / "samples_0.png").exists()


def test_report_cli_prints_one_line(mixed_sweep: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    proc = run_cli("report", str(mixed_sweep), f"out={tmp_path / 'taken'}")
    assert "is a file, not a folder" in one_error_line(proc) and proc.returncode == 2


# ---------------------------------------------------------------- convlab sample out=


def sample_cfg(tmp_path: Path, out: str) -> Any:
    return compose_cfg("sample", f"ckpt={tmp_path / 'no-such-run'}", f"out={out}")


@pytest.mark.parametrize(
    "name,problem", [("grid.xyz", "cannot write a colour image as .xyz"), ("grid", "no extension")]
)
def test_sample_out_extension_is_checked_before_the_checkpoint(tmp_path: Path, name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:  # not the missing checkpoint's error: out= is checked first
        sample_checkpoint(sample_cfg(tmp_path, str(tmp_path / name)))
    one_line(err, f"out={tmp_path / name}", problem, ".png, .jpg", "out=DIR/")
    assert list(tmp_path.iterdir()) == []


def test_sample_out_existing_folder_without_slash_is_still_a_folder(tmp_path: Path) -> None:
    (tmp_path / "grid").mkdir()
    with pytest.raises(ConvlabError, match="no-such-run not found"):  # past the out= check, at the checkpoint
        sample_checkpoint(sample_cfg(tmp_path, str(tmp_path / "grid")))


def test_sample_cli_bad_extension_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("sample", f"ckpt={tmp_path}", f"out={tmp_path / 'grid.xyz'}")
    assert "grid.xyz: PIL cannot write" in one_error_line(proc) and proc.returncode == 2


def test_find_runs_reads_what_it_can(mixed_sweep: Path) -> None:
    runs = find_runs([mixed_sweep])
    assert [r.status for r in runs] == ["ok"] + ["broken"] * len(BROKEN_RUNS)
    assert runs[0].value("test/acc") == 0.45 and runs[1].overrides == {"optim.lr": "bad1"}
