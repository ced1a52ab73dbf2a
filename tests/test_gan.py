"""DCGAN: shapes, initialisation, losses, the gradient penalty, and short runs on real faces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from convlab.app.evaluate import sample_checkpoint
from convlab.core.build import build
from convlab.core.errors import ConfigError
from convlab.models.dcgan import DCGAN, Discriminator
from convlab.run.checkpoint import load_checkpoint
from convlab.run.runner import train
from convlab.tasks.gan import GANTask, d_loss, g_loss, gradient_penalty
from tests.conftest import compose_cfg, curves, make_cfg


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_shapes_for_each_image_size(size: int) -> None:
    net = DCGAN(image_size=size, dim=8)
    images = net.generator(torch.randn(3, 100))
    assert images.shape == (3, 3, size, size) and images.abs().max() <= 1
    assert net.discriminator(images).shape == (3,)
    stages = sum(isinstance(m, nn.ConvTranspose2d) for m in net.generator.modules())
    assert stages == int(math.log2(size / 4))


def test_lab_architecture_at_64() -> None:
    g = DCGAN().generator
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(512, 256), (256, 128), (128, 64), (64, 3)]
    assert all(
        c.kernel_size == (5, 5) and c.stride == (2, 2) and c.padding == (2, 2) and c.output_padding == (1, 1)
        for c in convs
    )
    assert isinstance(g.project[1], nn.BatchNorm1d) and isinstance(g.up[-1], nn.Tanh)


def test_forward_backward_and_gradients() -> None:
    torch.manual_seed(0)
    net = DCGAN(image_size=32, dim=8)
    out = net.discriminator(net.generator(torch.randn(4, 100)))
    out.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_weights_initialised_as_dcgan() -> None:
    torch.manual_seed(0)
    net = DCGAN()
    weights = torch.cat(
        [m.weight.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    )
    norm_w = torch.cat([m.weight for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))])
    biases = torch.cat([m.bias for m in net.modules() if getattr(m, "bias", None) is not None])
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 1e-3
    assert abs(norm_w.mean() - 1) < 5e-3 and abs(norm_w.std() - 0.02) < 5e-3
    assert torch.all(biases == 0)


def test_critic_norm_follows_the_loss() -> None:
    assert any(isinstance(m, nn.BatchNorm2d) for m in Discriminator(norm="batch").modules())
    layer = Discriminator(norm="layer")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layer.modules()) and any(
        isinstance(m, nn.GroupNorm) for m in layer.modules()
    )


def test_gradient_penalty_of_linear_critics() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)
    w = torch.randn(3 * 8 * 8)

    def linear(scale: float) -> nn.Module:
        return (
            nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1, bias=False))
            .requires_grad_(False)
            .apply(lambda m: m.weight.copy_(w / w.norm() * scale) if isinstance(m, nn.Linear) else None)
        )

    assert gradient_penalty(linear(1.0), real, fake).item() < 1e-10  # 1-Lipschitz: ‖∇‖ = 1 everywhere
    assert gradient_penalty(linear(3.0), real, fake).item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)²


def test_losses_match_their_definitions() -> None:
    d_real, d_fake = torch.randn(8), torch.randn(8)
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(d_loss("bce", d_real, d_fake), bce(d_real, torch.ones(8)) + bce(d_fake, torch.zeros(8)))
    torch.testing.assert_close(g_loss("bce", d_fake), bce(d_fake, torch.ones(8)))  # non-saturating
    torch.testing.assert_close(d_loss("hinge", d_real, d_fake), F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())
    torch.testing.assert_close(d_loss("wgan-gp", d_real, d_fake), d_fake.mean() - d_real.mean())
    torch.testing.assert_close(g_loss("wgan-gp", d_fake), -d_fake.mean())


GAN_SMALL = ("model=dcgan", "model.dim=16", "data=anime_faces", "data.image_size=32", "batch_size=64")


def gan_cfg(out: Path, faces: Path, *overrides: str):
    return make_cfg(out, *GAN_SMALL, f"data.root={faces}", f"data.cache_dir={out.parent / 'cache'}", *overrides)


def test_gan_settings_are_checked(tmp_path: Path, faces_256: Path) -> None:
    with pytest.raises(ConfigError, match="gan.loss='lsgan'"):
        train(gan_cfg(tmp_path / "a", faces_256, "gan.loss=lsgan"))
    with pytest.raises(ConfigError, match="wgan-gp needs a critic without BatchNorm"):
        train(gan_cfg(tmp_path / "b", faces_256, "gan.loss=wgan-gp", "model.d_norm=batch"))
    with pytest.raises(ConfigError, match=r"scaled to \[-1, 1\]"):
        train(make_cfg(tmp_path / "c", "model=dcgan", "data=synthetic", "data.num_train=100"))


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
def test_short_gan_run_on_real_faces(loss: str, tmp_path: Path, faces_256: Path) -> None:
    out = tmp_path / "run"
    summary = train(
        gan_cfg(
            out, faces_256, "epochs=2", f"gan.loss={loss}", "gan.d_steps=2" if loss == "wgan-gp" else "gan.d_steps=1"
        )
    )
    assert summary["status"] == "ok"
    history = load_checkpoint(out)["history"]
    for row in history:
        for key in ("train/loss/D", "train/loss/G", "train/D_x", "train/D_G_z", "val/D_x", "perf/images_per_s"):
            assert math.isfinite(row[key]), key
    first, second = (torch.tensor(list((out / "samples" / f"epoch_00{e}.png").read_bytes())) for e in (1, 2))
    assert not torch.equal(first, second)  # the fixed-noise samples moved between epochs
    ea = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert {"samples", "real"} <= set(ea.Tags()["images"])
    assert [e.step for e in ea.Images("samples")] == [1, 2] and [e.step for e in ea.Images("real")] == [0]
    assert {"train/loss/D", "train/loss/G", "train/D_x", "train/D_G_z"} <= set(ea.Tags()["scalars"])
    assert (out / "samples.png").is_file() and (out / "real.png").is_file()


def test_gan_resume_is_exact(tmp_path: Path, faces_256: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = train(
        gan_cfg(tmp_path / "full", faces_256, "epochs=3", "trainer.precision=fp32")
    )  # exact equality: fp32 stated
    calls = {"n": 0}
    real_step = GANTask.train_step

    def ctrl_c(self: GANTask, batch: tuple) -> dict:
        calls["n"] += 1
        if calls["n"] == 2 * (243 // 64) + 1:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(GANTask, "train_step", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(gan_cfg(tmp_path / "cut", faces_256, "epochs=3", "trainer.precision=fp32"))
    monkeypatch.setattr(GANTask, "train_step", real_step)
    state = load_checkpoint(tmp_path / "cut")
    assert state["epoch"] == 2 and state["task"]["extra"]["fixed_z"].shape == (64, 100)
    assert set(state["task"]["optimizers"]) == {"generator", "discriminator"}
    resumed = train(make_cfg(tmp_path / "x", f"resume={tmp_path / 'cut'}"))
    assert curves([resumed["final"]]) == curves([full["final"]])
    a, b = (load_checkpoint(tmp_path / run)["task"]["models"]["generator"] for run in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "ok"


def test_fid_off_is_said_once(
    tmp_path: Path, faces_256: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("convlab.tasks.fid.available", lambda: False)
    with caplog.at_level("WARNING"):
        summary = train(gan_cfg(tmp_path / "run", faces_256, "epochs=1", "gan.fid_every=1"))
    assert caplog.text.count("FID is off") == 1 and "convlab[fid]" in caplog.text
    assert "fid" not in summary["test"]


def test_gan_builds_from_the_model_config(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "model=dcgan")
    assert cfg.task._target_.endswith("GANTask") and cfg.optim.name == "gan_adam" and cfg.sched.name == "none"
    net = build(cfg.model, "model", in_channels=3, image_size=64)
    assert sum(p.numel() for p in net.generator.parameters()) == 5_142_083


def test_cli_gan_run_and_sample(tmp_path: Path, faces_256: Path) -> None:
    from PIL import Image

    from tests.conftest import run_cli

    run = tmp_path / "run"
    proc = run_cli(
        "train",
        *GAN_SMALL,
        f"data.root={faces_256}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "epochs=1",
        f"hydra.run.dir={run}",
        "trainer.log_every=2",
    )
    assert proc.returncode == 0, proc.stderr
    # TensorBoard: D and G losses per step, and the GAN's own charts (its `charts`) in the CUSTOM SCALARS layout.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    steps = [e.step for e in ea.Scalars("step/train/loss/D")]
    assert (
        steps == [e.step for e in ea.Scalars("step/train/loss/G")] == [e.step for e in ea.Scalars("step/lr/generator")]
        and steps[0] == 2
    )
    layout = layout_pb2.Layout.FromString(ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {(cat.title, c.title): list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts[("train vs val (per epoch)", "D and G losses")] == [
        "^train/loss/D$",
        "^val/loss/D$",
        "^train/loss/G$",
        "^val/loss/G$",
    ]
    assert charts[("per step", "D and G losses")] == ["^step/train/loss/D$", "^step/train/loss/G$"]
    assert charts[("train vs val (per epoch)", "FID")] == ["^val/fid$"] and ("per step", "FID") not in charts
    proc = run_cli("sample", f"ckpt={run}", "n=16", f"out={tmp_path / 'grid.png'}", "seed=3")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "grid.png").size == (2 + 4 * 34, 2 + 4 * 34)  # 4×4 grid of 32-px images
    # The other two forms in process (the same code path, without another interpreter start).
    each = compose_cfg("sample", f"ckpt={run / 'checkpoints' / 'last.pt'}", "n=5", f"out={tmp_path / 'each'}/")
    strip = compose_cfg("sample", f"ckpt={run}", "n=7", "interpolate=true", f"out={tmp_path / 'strip.png'}")
    sample_checkpoint(each)
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [f"sample_000{i}.png" for i in range(5)]
    assert Image.open(tmp_path / "each" / "sample_0000.png").size == (32, 32)
    sample_checkpoint(strip)
    assert Image.open(tmp_path / "strip.png").size == (2 + 7 * 34, 36)


def test_gan_trains_under_bf16_without_nans(tmp_path: Path, faces_256: Path) -> None:
    # bf16 keeps fp32's exponent range: no loss scaling, and D's and G's losses stay finite
    # (emulated on CI's CPU: one epoch).
    summary = train(gan_cfg(tmp_path / "run", faces_256, "epochs=1", "trainer.precision=bf16"))
    assert summary["status"] == "ok" and summary["precision"] == "bf16"
    history = load_checkpoint(tmp_path / "run")["history"]
    losses = [row[k] for row in history for k in ("train/loss/D", "train/loss/G")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
