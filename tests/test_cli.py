"""`convlab` as a user runs it: subprocesses, TensorBoard events read back, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlab.core.errors import ConvlabError
from convlab.run.runner import train
from tests.conftest import REPO, SMALL, compose_cfg, make_cfg, one_error_line, one_line, run_cli


def test_top_level_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "eval" in proc.stdout
    assert "unknown command 'trian'" in one_error_line(run_cli("trian"))


def test_hydra_flags_pass_through() -> None:
    cfg = run_cli("train", "--cfg", "job", "model=hdc", "data=synthetic")
    assert cfg.returncode == 0 and "dilations:" in cfg.stdout and "name: synthetic" in cfg.stdout
    helptext = run_cli("train", "--help")
    assert helptext.returncode == 0 and "model: alexnet_lite, dcgan, hdc, plain_cnn, resnet18" in helptext.stdout
    assert run_cli("train", "--info").returncode == 0
    assert "ckpt" in run_cli("eval", "--help").stdout


def test_multirun_sweep_runs_every_job(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "-m", "model=plain_cnn,hdc", "optim.lr=1e-3,1e-2", "epochs=1",
        *SMALL, "data.num_train=200", "data.num_test=64", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 4 and all(s["status"] == "ok" for s in summaries)
    assert sorted(s["model"] for s in summaries) == ["hdc", "hdc", "plain_cnn", "plain_cnn"]
    lrs = sorted(
        torch.load(p, weights_only=True)["config"]["optim"]["lr"] for p in tmp_path.glob("*/checkpoints/last.pt")
    )
    assert lrs == [1e-3, 1e-3, 1e-2, 1e-2]


# Each kind of failure as a user meets it: one line, the bad value, what is allowed, exit code 2.
BAD_CLI = [
    (["train", "model=nope"], "model=nope", "plain_cnn"),  # caught before Hydra starts
    (["train", "-m", "model=hdc,nope"], "model=nope", "resnet18"),
    (["train", "data=imagenet"], "data=imagenet", "synthetic"),
    (["train", "epoch=3"], "epoch is not a key", "did you mean epochs?"),  # not Hydra's advice to append it
    (["train", "epochs=abc", "data=synthetic"], "epochs='abc'", "integer"),  # caught inside the job
    (["eval", "ckpt=pyproject.toml"], "pyproject.toml", "not a PyTorch checkpoint"),
    (["sample", "ckpt=/nonexistent"], "/nonexistent", "run directory"),
]


@pytest.mark.parametrize("args,names,allowed", BAD_CLI, ids=[" ".join(a) for a, _, _ in BAD_CLI])
def test_bad_input_is_one_clear_line(args: list[str], names: str, allowed: str, tmp_path: Path) -> None:
    proc = run_cli(*args, f"hydra.run.dir={tmp_path}")
    line = one_error_line(proc)
    assert proc.returncode == 2 and names in line and allowed in line


# What each optional Hydra plugin's override says when that plugin is not installed (hidden here).
MISSING_PLUGINS = [
    ("hydra/launcher=parallel", "hydra_joblib_launcher", "joblib", "[parallel]"),
    ("hydra/launcher=slurm", "hydra_submitit_launcher", "submitit", "[cluster]"),
    ("+search=lr_wd", "hydra_optuna_sweeper", "optuna", "[tune]"),
]


@pytest.mark.parametrize("override,module,plugin,extra", MISSING_PLUGINS, ids=[m[0] for m in MISSING_PLUGINS])
def test_missing_plugin_names_its_extra(override: str, module: str, plugin: str, extra: str) -> None:
    hide = (
        f"import sys; sys.modules['hydra_plugins.{module}'] = None; sys.modules['hydra_plugins.{module}.config'] = None"
    )
    code = f"{hide}; from convlab.app.cli import main; main(['train', '-m', '{override}', 'data=synthetic'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    line = one_error_line(proc)
    assert (
        proc.returncode == 2
        and line
        == f'error: {override} needs Hydra\'s {plugin} plugin, which is not installed: pip install -e ".{extra}"'
    )


# The same messages from more values, checked in process (they reach the CLI as the lines above).
BAD_VALUES = [
    (["batch_size=0"], "batch_size=0", ">= 1"),
    (["optim.lr=fast"], "optim.lr='fast'", "number"),
    (["model.conv_impl=cuda"], "conv_impl='cuda'", "torch, manual"),
    (["device=tpu"], "device='tpu'", "cuda:N"),
    (
        ["data=cifar10", "data.root=/nonexistent", "data.download=false"],
        "/nonexistent/cifar-10-batches-py",
        "data=synthetic",
    ),
    (["model=dcgan", "data=anime_faces", "data.root=/nonexistent"], "/nonexistent", "data.root"),
    (
        ["model=dcgan", "gan.loss=lsgan", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"],
        "gan.loss='lsgan'",
        "wgan-gp",
    ),
    (["data.loader=gpu"], "data.loader='gpu'", "dataloader"),
    (["trainer.precision=fp8"], "trainer.precision='fp8'", "bf16"),
    (
        ["sched=onecycle", "epochs=1", "data.num_train=100"],
        "sched=onecycle needs at least 8 optimizer steps",
        "sched=cosine",
    ),  # 1 step
    (["sched.warmup_epochs=-1"], "sched.warmup_epochs=-1", ">= 0"),
]


@pytest.mark.parametrize("overrides,names,allowed", BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES])
def test_bad_values_name_themselves(overrides: list[str], names: str, allowed: str, tmp_path: Path) -> None:
    base = SMALL if not any(o.startswith("data=") for o in overrides) else []
    with pytest.raises(ConvlabError) as err:
        train(make_cfg(tmp_path, *base, *overrides))
    one_line(err, names, allowed)


def test_eval_needs_an_existing_checkpoint(tmp_path: Path) -> None:
    from convlab.app.evaluate import evaluate_checkpoint

    for ckpt, message in ((None, "ckpt=PATH is required"), (tmp_path / "last.pt", "not found")):
        cfg = compose_cfg("eval", *([f"ckpt={ckpt}"] if ckpt else []))
        with pytest.raises(ConvlabError, match=message):
            evaluate_checkpoint(cfg)


def test_cuda_on_a_machine_without_it(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("train", "device=cuda", "data=synthetic", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "device=cuda: CUDA is not available" in one_error_line(proc)
    # Several processes: still one line, said once before any process starts.
    proc = run_cli("train", "trainer.devices=2", "device=cuda", "data=synthetic", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "device=cuda: CUDA is not available" in one_error_line(proc)


def test_preview_script_writes_one_row_per_class(tmp_path: Path) -> None:
    import subprocess
    import sys

    from PIL import Image

    from tests.conftest import REPO

    out = tmp_path / "grid.png"
    args = [
        sys.executable,
        str(REPO / "scripts" / "preview_data.py"),
        "data=synthetic",
        "data.num_train=400",
        "per_class=4",
        f"out={out}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (2 + 4 * 34, 2 + 10 * 34)  # 32-px images, 2-px padding
