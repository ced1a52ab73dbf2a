"""The speed features: both loader paths, precision, memory format, no per-step syncs, convlab bench."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlab.app.bench import bench, format_table
from convlab.core.build import to_dict
from convlab.core.perf import CPU_BF16_ENV, resolve_precision
from convlab.data.base import choose_loader
from convlab.data.loader import ArrayDataLoader, TensorLoader
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import _fp16_refusal, setup, train
from tests.conftest import SMALL, compose_cfg, make_cfg


def marker_images(n: int) -> torch.Tensor:
    """n copies of a 3×8×8 image whose pixel (r, c) holds 10*r + c + 1: any crop/flip can be read back."""
    rc = torch.arange(8).view(8, 1) * 10 + torch.arange(8).view(1, 8) + 1
    return rc.to(torch.uint8).expand(n, 3, 8, 8).contiguous()


def read_back(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) of each augmented marker image (normalised with mean 0, std 1/255).

    With padding 2 and offsets (dy, dx), output pixels (4, 3) and (4, 4) hold original pixels
    (2 + dy, 1 + dx) and (2 + dy, 2 + dx), swapped by a flip; never padding.
    """
    pair = x[:, 0, 4, 3:5].round().long()
    flipped = pair[:, 0] > pair[:, 1]
    v = pair.min(dim=1).values - 1  # = 10 (2 + dy) + (1 + dx)
    return v // 10 - 2, v % 10 - 1, flipped


@pytest.mark.parametrize("kind", ["tensor", "dataloader"])
def test_both_loaders_crop_and_flip_with_torchvisions_distribution(kind: str) -> None:
    n = 6000
    args = dict(mean=(0, 0, 0), std=(1 / 255,) * 3, shuffle=True, crop_padding=2, flip=True, seed=3)
    loader = TensorLoader(marker_images(n), torch.zeros(n, dtype=torch.long), 500, **args) if kind == "tensor" else (
        ArrayDataLoader(marker_images(n), torch.zeros(n, dtype=torch.long), 500, workers=2, **args)
    )  # fmt: skip
    loader.set_epoch(1)
    dy, dx, flipped = (torch.cat(t) for t in zip(*(read_back(x) for x, _ in loader), strict=True))
    for offsets in (dy, dx):  # RandomCrop(8, padding=2): offsets uniform on 0..4
        share = torch.bincount(offsets, minlength=5).float() / n
        assert len(share) == 5 and (share - 0.2).abs().max() < 0.025, share
    assert abs(flipped.float().mean().item() - 0.5) < 0.025
    loader.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in loader])[:500], next(iter(loader))[0])  # an epoch is reproducible


def test_dataloader_path_shards_and_keeps_the_interface() -> None:
    images, labels = marker_images(100), torch.arange(100)
    shards = []
    for rank in range(2):
        loader = ArrayDataLoader(
            images, labels, 10, mean=(0,) * 3, std=(1,) * 3, shuffle=True, seed=1, rank=rank, world_size=2
        )
        loader.set_epoch(4)
        shards.append(torch.cat([y for _, y in loader]))
        assert len(loader) == 5
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_auto_loader_choice() -> None:
    assert choose_loader("auto", 150_000_000, None) == "device"  # CPU: arrays are already in RAM
    assert choose_loader("auto", 150_000_000, 80_000_000_000) == "device"
    assert choose_loader("auto", 150_000_000, 200_000_000) == "dataloader"
    assert choose_loader("dataloader", 1, None) == "dataloader"


def test_dataloader_mode_trains_like_the_tensor_mode(tmp_path: Path) -> None:
    a = train(make_cfg(tmp_path / "a", *SMALL, "epochs=1", "data.loader=dataloader", "data.workers=1"))
    b = train(make_cfg(tmp_path / "b", *SMALL, "epochs=1", "data.loader=dataloader", "data.workers=1"))
    assert a["status"] == "ok" and a["test"] == b["test"]  # seeded workers: the same epoch twice


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_keeps_its_scaler(precision: str, tmp_path: Path) -> None:
    summary = train(
        make_cfg(tmp_path, *SMALL, "epochs=1", f"trainer.precision={precision}", "model.channels=[8,16,16]")
    )
    assert summary["precision"] == precision and math.isfinite(summary["final"]["train/loss"])
    scaler = load_checkpoint(tmp_path)["precision"]
    assert ("scale" in scaler) == (precision == "fp16")


def test_channels_last_reaches_model_and_batches(tmp_path: Path) -> None:
    run = setup(make_cfg(tmp_path, *SMALL, "trainer.channels_last=true"), write=False)
    conv = run.task.model.features[1][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(run.trainer._on_device("val"))
    assert x.is_contiguous(memory_format=torch.channels_last)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts every way a tensor's value reaches the host (each waits for the device), until monkeypatch.undo()."""
    reads = {"n": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


@pytest.mark.parametrize(
    ("log_every", "read_every", "write", "points", "reads"),
    [(1, 50, True, [1, 2, 3, 4, 5, 6, 7, 8], 1), ("auto", 50, True, [1, 2, 3, 4, 5, 6, 7, 8], 1),
     (3, 50, False, [3, 6, 8], 1), (3, 4, True, [3, 6, 8], 2), (1, 4, True, [1, 2, 3, 4, 5, 6, 7, 8], 2)],
)  # fmt: skip
def test_step_points_are_read_from_the_device_together_and_add_no_reads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_every: int | str,
    read_every: int,
    write: bool,
    points: list[int],
    reads: int,
) -> None:
    # 8 steps: a point every log_every steps and at the epoch's end; the points wait on the device and are read
    # together every READ_EVERY steps (rounded up to a point) and at the epoch's end, whether or not they are written.
    monkeypatch.setattr("convlab.run.steplog.READ_EVERY", read_every)
    run = setup(make_cfg(tmp_path, *SMALL, "model.channels=[8,8,8]", f"trainer.log_every={log_every}"), write=write)
    counted = count_reads(monkeypatch)
    means, _ = run.trainer.train_epoch(1)
    monkeypatch.undo()
    assert len(run.loaders["train"]) == 8
    assert counted["n"] == reads, "the points are read together, never one read per step or per point"
    if write:
        run.logger.close()
        ea = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
        ea.Reload()
        losses = ea.Scalars("step/train/loss")
        assert [e.step for e in losses] == [e.step for e in ea.Scalars("step/lr")] == points
        # Each point is the mean over its steps (equal batches): weighted by those steps, the epoch's mean.
        spans = [b - a for a, b in zip([0, *points[:-1]], points, strict=True)]
        assert sum(e.value * w for e, w in zip(losses, spans, strict=True)) / 8 == pytest.approx(means["loss"])


def test_bench_measures_three_loops(tmp_path: Path) -> None:
    cfg = compose_cfg(
        "bench",
        *SMALL,
        "model.channels=[8,8,8]",
        "bench.steps=3",
        "bench.warmup=1",
        "bench.repeats=2",
        "bench.workers=1",
    )
    result = bench(cfg)
    assert result["reference_pid"] != os.getpid()  # loop 3 ran as a user's script runs: its own process
    assert set(result["images_per_s"]) == {"convlab", "bare", "reference"}
    assert all(len(r) == 2 and min(r) > 0 for r in result["runs"].values())
    assert result["ratios"]["1/2"] == pytest.approx(result["images_per_s"]["convlab"] / result["images_per_s"]["bare"])
    table = format_table(result)
    assert "1 convlab train loop" in table and "ratio 1/2" in table
    json.dumps(result)


@pytest.mark.slow
def test_compiled_run_reports_compile_time_apart(tmp_path: Path) -> None:
    summary = train(make_cfg(tmp_path, *SMALL, "epochs=2", "trainer.compile=true", "model.channels=[8,8,8]"))
    history = load_checkpoint(tmp_path)["history"]
    assert summary["status"] == "ok"
    # Epoch 1's first step compiles (seconds); later steps and epoch 2's first step do not.
    assert history[0]["perf/first_step_s"] > 5 * history[1]["perf/first_step_s"]
    assert history[0]["perf/images_per_s"] > 0.5 * history[1]["perf/images_per_s"]


def _caps(monkeypatch: pytest.MonkeyPatch, **features: object) -> None:
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)  # torch's detection decides, not a forced run's switch
    monkeypatch.setattr(
        torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", "cpu_name": "TestCPU", **features}
    )


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    _caps(monkeypatch, avx512_bf16=True)
    assert resolve_precision("auto", cpu) == ("bf16", "auto: TestCPU has native bf16 (avx512_bf16)")
    _caps(monkeypatch, amx_bf16=True, avx512_bf16=False)
    assert resolve_precision("auto", cpu)[0] == "bf16"
    _caps(monkeypatch, avx2=True, avx512_bf16=False)
    kind, why = resolve_precision("auto", cpu)
    assert kind == "fp32" and "TestCPU has no native bf16 (avx512_bf16 or amx_bf16)" in why
    assert resolve_precision("fp32", cpu) == ("fp32", "set by trainer.precision")  # fp32 still forces fp32
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "aarch64", "bf16": True})
    assert resolve_precision("auto", cpu)[0] == "bf16"


def test_the_switch_makes_auto_decide_as_on_the_other_kind_of_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _caps(monkeypatch, avx2=True, avx512_bf16=False)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_precision("auto", torch.device("cpu")) == (
        "bf16",
        "auto: CONVLAB_CPU_BF16=1 treats TestCPU as having native bf16",
    )
    _caps(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_precision("auto", torch.device("cpu"))[0] == "fp32"


def _gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> torch.device:
    """A CUDA device whose name and compute capability are faked (no GPU on the test machines)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("name", "capability", "kind"),
    [("Tesla T4", (7, 5), "fp16"), ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
     ("NVIDIA GeForce RTX 2080", (7, 5), "fp16"), ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"),
     ("NVIDIA GeForce RTX 4090", (8, 9), "bf16"), ("NVIDIA H200", (9, 0), "bf16")],
)  # fmt: skip
def test_auto_precision_on_cuda_is_bf16_only_from_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int], kind: str
) -> None:
    chosen, why = resolve_precision("auto", _gpu(monkeypatch, name, capability))
    assert chosen == kind and why.startswith(f"auto: {name} (compute capability {capability[0]}.{capability[1]}) has ")
    assert ("no native bf16" in why) == (kind == "fp16")
    assert resolve_precision("fp32", torch.device("cuda", 0)) == ("fp32", "set by trainer.precision")


def test_auto_falls_back_to_fp32_on_an_older_gpu_when_the_task_cannot_scale_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = _gpu(monkeypatch, "Tesla T4", (7, 5))
    wgan = make_cfg(
        tmp_path,
        "model=dcgan",
        "data=synthetic",
        "task=gan",
        "gan.loss=wgan-gp",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.5,0.5,0.5]",
    )
    refusal = _fp16_refusal(to_dict(wgan)["task"])
    assert refusal == "gan.loss=wgan-gp cannot use fp16 loss scaling (its gradient penalty)"
    kind, why = resolve_precision("auto", gpu, refusal)
    assert kind == "fp32" and why.endswith(f"fp16 with loss scaling is its fast mixed precision, but {refusal}")
    bce = make_cfg(
        tmp_path, "model=dcgan", "data=synthetic", "task=gan", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"
    )
    assert _fp16_refusal(to_dict(bce)["task"]) == "" and _fp16_refusal(to_dict(make_cfg(tmp_path))["task"]) == ""
    assert resolve_precision("auto", torch.device("cuda", 0), "")[0] == "fp16"


def test_auto_precision_reaches_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _caps(monkeypatch, avx512_bf16=True)
    run = setup(make_cfg(tmp_path, *SMALL, "model.channels=[8,8,8]"), write=False)
    assert run.task.precision.kind == "bf16" and "native bf16" in run.task.precision.describe()


def test_limit_train_batches_trains_that_many_steps_each_epoch(tmp_path: Path) -> None:
    summary = train(
        make_cfg(
            tmp_path, *SMALL, "model.channels=[8,8,8]", "epochs=2", "trainer.limit_train_batches=5", "sched=onecycle"
        )
    )
    state = load_checkpoint(tmp_path)
    assert summary["status"] == "ok" and [row["epoch"] for row in state["history"]] == [1, 2]
    assert (
        state["task"]["schedulers"]["model"]["last_epoch"] == 10
    )  # 2 epochs × 5 of the 8 batches; the schedule spans exactly those
    assert state["task"]["schedulers"]["model"]["total_steps"] == 10
