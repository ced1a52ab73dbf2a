"""A task that lives only in tests/: a tiny denoising autoencoder that convlab trains, evaluates, reports and resumes.

Nothing in src/ knows it. It is chosen on the command line, as a user would choose their own:

    convlab train task._target_=tests.toy_task.ToyTask '~task.label_smoothing' +task.noise=0.1 \
        model._target_=tests.toy_task.ToyNet model.name=toy data=synthetic

and its checkpoints read back once CONVLAB_TRUST_TARGETS names its two classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlab.tasks.base import Report, Task

TARGETS = "tests.toy_task.ToyTask,tests.toy_task.ToyNet"  # for CONVLAB_TRUST_TARGETS
OVERRIDES = [
    # the classifier's setting out, its own in
    "task._target_=tests.toy_task.ToyTask", "~task.label_smoothing", "+task.noise=0.1",
    "model._target_=tests.toy_task.ToyNet", "model.name=toy",
]  # fmt: skip


class ToyNet(nn.Module):
    """Encode an image into 4 channels at a quarter of its size and decode it back.

    No BatchNorm, 391 parameters for RGB.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, **unused: object) -> None:
        super().__init__()
        self.encode = nn.Conv2d(in_channels, 4, 4, stride=4)
        self.decode = nn.ConvTranspose2d(4, in_channels, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `x`, same shape."""
        return self.decode(torch.relu(self.encode(x)))


class ToyTask(Task):
    """Reconstruct clean images from noisy ones; the metric is the mean squared error per pixel ("mse")."""

    monitor = ("mse", "min")
    charts = {"reconstruction error": ["mse"]}
    kind = "autoencoder"
    metric_names = {"mse": "MSE"}
    report = Report(
        columns=("val/mse", "test/mse"), curves=(("train/mse", "train MSE"), ("val/mse", "validation MSE")),
        curves_png="toy_curves.png", caption="Reconstruction error per epoch", marker="train/mse",
    )  # fmt: skip

    def __init__(self, noise: float = 0.0, **run: Any) -> None:
        """The autoencoder for the data's channels and image size, with its optimizer and schedule."""
        super().__init__(**run)
        self.noise = noise
        self.model = self.add_model(
            "model", self.build_model(in_channels=self.info.in_channels, image_size=self.info.image_size)
        )

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """One step on the batch's images with Gaussian noise added (its labels are ignored)."""
        x = batch[0]
        with self.precision.autocast():
            loss = F.mse_loss(self.train_model("model")(x + self.noise * torch.randn_like(x)).float(), x)
        optimizer = self.optimizers["model"]
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(loss, optimizer)
        self.schedulers["model"].step()
        return {"mse": loss.detach()}

    @torch.no_grad()
    def evaluate(self, loader: Iterable, final: bool = False) -> dict[str, Any]:
        """Mean squared error of reconstructing the clean images."""
        self.train(False)
        total, count = torch.zeros((), device=self.device), 0
        for x, _ in loader:
            with self.precision.autocast():
                total += F.mse_loss(self.model(x).float(), x, reduction="sum")
            count += x.numel()
        return {"mse": total.item() / count}
