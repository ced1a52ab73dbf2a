"""Image classification with cross-entropy: the Task behind every CNN classifier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from convlab.core.errors import ConfigError
from convlab.tasks.base import Report, Task


class ClassificationTask(Task):
    """One model, one optimizer, one per-step schedule; metrics: loss and accuracy."""

    monitor = ("acc", "max")
    charts = {"loss": ["loss"], "accuracy": ["acc"]}
    kind = "classifier"
    inspectable = True
    metric_names = {"loss": "loss", "acc": "accuracy"}
    hparam_metrics = ("val/acc", "val/loss", "test/acc")
    report = Report(
        columns=("val/acc", "test/acc"),
        curves=(("train/loss", "train loss"), ("val/loss", "validation loss"),
                ("train/acc", "train accuracy"), ("val/acc", "validation accuracy")),
        curves_png="curves.png", caption="Loss and accuracy per epoch", marker="train/acc",
        test_metric=("acc", "test accuracy"),
    )  # fmt: skip

    def __init__(self, label_smoothing: float = 0.0, **run: Any) -> None:
        """The classifier for the data's classes, channels and image size, with its optimizer and schedule."""
        super().__init__(**run)
        info = self.info
        if info.num_classes < 2:
            raise ConfigError(
                f"model={self.configs['model'].get('name')} is a classifier, "
                f"but the data has {info.num_classes} class ({', '.join(info.class_names)}); "
                "use a labelled dataset, or model=dcgan to generate images"
            )
        self.label_smoothing = label_smoothing
        self.model = self.add_model(
            "model",
            self.build_model(num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size),
        )
        self.optimizer, self.scheduler = self.optimizers["model"], self.schedulers["model"]

    def macs(self) -> int:
        """The classifier's multiply-adds for one image (convlab.models.analysis; FLOPs / 2)."""
        from convlab.models.analysis import macs_of

        info = self.info
        return macs_of(self.model, (info.in_channels, info.image_size, info.image_size))

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Forward, cross-entropy, backward, optimizer and schedule step."""
        x, y = batch
        with self.precision.autocast():
            logits = self.train_model("model")(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(loss, self.optimizer)
        self.scheduler.step()
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def evaluate(self, loader: Iterable, final: bool = False) -> dict[str, Any]:
        """Mean loss and accuracy; with `final`, per-class accuracy, the confusion matrix and the figures.

        The final figures (matplotlib Figures): the confusion matrix, and the effective receptive
        field of the last spatial layer over the first 32 images (convlab.models.analysis).
        """
        self.train(False)
        k = self.info.num_classes
        device = next(self.model.parameters()).device
        loss_sum = torch.zeros((), device=device)
        confusion = torch.zeros(k * k, dtype=torch.long, device=device)  # row = true class, column = prediction
        first = None
        for x, y in loader:
            first = x[:32] if first is None else first
            with self.precision.autocast():
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
        cm = confusion.view(k, k).cpu()
        n = int(cm.sum())
        result: dict[str, Any] = {"loss": loss_sum.item() / n, "acc": cm.diag().sum().item() / n}
        if final:
            per_class = cm.diag().double() / cm.sum(1).clamp(min=1)
            # not strict: a checkpoint's data_info is read back without checking its names against num_classes
            result["per_class_acc"] = dict(zip(self.info.class_names, per_class.tolist(), strict=False))
            result["confusion"] = cm.tolist()
            from convlab.core.plots import confusion_figure  # matplotlib costs ~0.7 s to import: only when needed
            from convlab.models.analysis import field_image, field_of

            result["figures"] = {
                "confusion_matrix": confusion_figure(cm, self.info.class_names),
                "effective_field": field_image(*field_of(self.model, first)),
            }
        return result
