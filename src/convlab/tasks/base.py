"""The Task interface between a training objective and the one shared trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from convlab.core.errors import ConvlabError
from convlab.core.perf import Precision


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
    # TensorBoard charts (its CUSTOM SCALARS tab): title -> keys that train_step and evaluate report,
    # each drawn for train and val together per epoch and as a step curve; "val/fid" names one split only.
    charts: dict[str, list[str]] = {"loss": ["loss"]}

    def __init__(self, precision: Precision | None = None) -> None:
        self.precision = precision or Precision()  # autocast and loss scaling, chosen by the trainer's config
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedulers: dict[str, LRScheduler] = {}
        self.wrapped: dict[str, nn.Module] = {}  # set by distribute(): what train_step calls under DDP

    @classmethod
    def fp16_refusal(cls, settings: dict[str, Any]) -> str:
        """Why this task cannot train under fp16 loss scaling with `settings` (its config), or "" when it can."""
        return ""

    @property
    def monitor_available(self) -> bool:
        """Whether validation reports the `monitor` metric (early stopping needs it)."""
        return True

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

    def macs(self) -> int | None:
        """Multiply-adds of one image's forward pass, for summaries and reports; None where it means nothing."""
        return None

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Everything needed to continue training exactly."""
        return {
            kind: {name: obj.state_dict() for name, obj in getattr(self, kind).items()}
            for kind in ("models", "optimizers", "schedulers")
        }

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what `state_dict` saved; state that does not fit these models is one ConvlabError line."""
        for kind in ("models", "optimizers", "schedulers"):
            for name, obj in getattr(self, kind).items():
                saved = state.get(kind, {}).get(name)
                what = f"{kind[:-1]} {name!r}"
                if not isinstance(saved, dict):
                    raise ConvlabError(f"it holds no state for the {what}")
                if kind == "schedulers":
                    _check_like(obj.state_dict(), saved, what)
                groups = [{k: v for k, v in g.items() if k != "params"} for g in obj.param_groups] if kind == "optimizers" else []
                try:
                    obj.load_state_dict(saved)
                except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                    reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
                    raise ConvlabError(f"its {what} does not fit the config ({reason[:300]})") from None
                if kind == "optimizers":
                    _check_optimizer(obj, groups, what)


def _same_kind(saved: Any, current: Any) -> bool:
    """Whether a saved value could stand where `current` stands (numbers for numbers, lists of the same length...)."""
    number = (int, float)
    if isinstance(current, bool) or current is None:
        return isinstance(saved, type(current)) or current is None
    if isinstance(current, number):
        return isinstance(saved, number) and not isinstance(saved, bool)
    if isinstance(current, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(current)
    return isinstance(saved, type(current))


def _check_like(current: dict[str, Any], saved: dict[str, Any], what: str) -> None:
    """A schedule's saved state must have the keys and kinds of values of a fresh one (it is poured into __dict__)."""
    if set(saved) != set(current):
        raise ConvlabError(f"its {what} state has keys {sorted(saved)}, expected {sorted(current)}")
    bad = next((k for k in current if not _same_kind(saved[k], current[k])), None)
    if bad:
        raise ConvlabError(f"its {what} state has {bad}={saved[bad]!r}, unlike a {type(current[bad]).__name__}")


def _check_optimizer(opt: Optimizer, before: list[dict[str, Any]], what: str) -> None:
    """After loading: hyperparameters of the same kinds as the config's, per-parameter buffers of the parameters' shapes."""
    for group, fresh in zip(opt.param_groups, before):
        bad = next((k for k, v in fresh.items() if k in group and not _same_kind(group[k], v)), None)
        if bad:
            raise ConvlabError(f"its {what} state has {bad}={group[bad]!r}, unlike a {type(fresh[bad]).__name__}")
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ConvlabError(f"its {what} state has {key} of shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}")
