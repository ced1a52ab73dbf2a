"""The Task interface between a training objective and the one shared trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from convlab.perf import Precision


ARTEFACTS = ("figures", "images")  # evaluate() keys that hold pictures, not numbers


def numbers_only(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result without its pictures."""
    return {k: v for k, v in result.items() if k not in ARTEFACTS}


class Task(ABC):
    """Owns model(s), optimizer(s) and schedule(s); steps on a batch and evaluates a loader.

    Subclasses fill `models`, `optimizers` and `schedulers` (dicts by name), so saving,
    loading, mode switches and parameter counts work here for every task. Training steps call
    `self.train_model(name)` (the DDP wrapper when there is one), run forward passes under
    `self.precision.autocast()` and update through `self.precision.backward_step`.
    `monitor` names the validation metric (and "max"/"min") that picks `best.pt`.
    """

    monitor: tuple[str, str] = ("loss", "min")

    def __init__(self, precision: Precision | None = None) -> None:
        self.precision = precision or Precision()  # autocast and loss scaling, chosen by the trainer's config
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedulers: dict[str, LRScheduler] = {}
        self.wrapped: dict[str, nn.Module] = {}  # set by distribute(): what train_step calls under DDP

    def train_model(self, name: str) -> nn.Module:
        """The model `name` as training steps should call it (DDP-wrapped in multi-process runs)."""
        return self.wrapped.get(name, self.models[name])

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every model for data-parallel training; evaluation keeps using the bare models."""
        self.wrapped = {name: wrap(m) for name, m in self.models.items()}

    @abstractmethod
    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """One optimisation step; returns 0-d tensors (kept on the device) to average over the epoch."""

    @abstractmethod
    def evaluate(self, loader: Iterable, final: bool = False) -> dict[str, Any]:
        """Metrics over a whole loader; `final` adds the end-of-run extras (per-class tables, figures)."""

    def attach(self, loaders: dict[str, Iterable]) -> None:
        """See the run's loaders before training or evaluation (a GAN keeps the real images for FID)."""

    def train(self, mode: bool = True) -> None:
        """Put every model in training (or evaluation) mode."""
        for m in self.models.values():
            m.train(mode)

    def scalars(self) -> dict[str, float]:
        """Per-epoch values that are not averages over batches: the learning rate(s)."""
        if len(self.optimizers) == 1:
            (opt,) = self.optimizers.values()
            return {"lr": opt.param_groups[0]["lr"]}
        return {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}

    def num_parameters(self) -> int:
        """Trainable parameters over all models."""
        return sum(p.numel() for m in self.models.values() for p in m.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Everything needed to continue training exactly."""
        return {
            kind: {name: obj.state_dict() for name, obj in getattr(self, kind).items()}
            for kind in ("models", "optimizers", "schedulers")
        }

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what `state_dict` saved."""
        for kind in ("models", "optimizers", "schedulers"):
            for name, obj in getattr(self, kind).items():
                obj.load_state_dict(state[kind][name])
