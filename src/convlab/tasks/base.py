"""The Task interface between a training objective and the one shared trainer."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from convlab.core.build import build
from convlab.core.errors import ConvlabError
from convlab.core.perf import Precision
from convlab.data.base import DataInfo

ARTEFACTS = ("figures", "images")  # evaluate() keys that hold pictures, not numbers


def numbers_only(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result without its pictures."""
    return {k: v for k, v in result.items() if k not in ARTEFACTS}


@dataclass(frozen=True)
class Report:
    """What `convlab report` and sweep tables show of a task's runs (metrics.csv's keys; test/... from summary.json)."""

    columns: tuple[str, ...] = ("val/loss", "test/loss")  # final-epoch and test values worth a table column
    curves: tuple[tuple[str, str], ...] = (
        ("train/loss", "train loss"),
        ("val/loss", "validation loss"),
    )  # (key, panel title) per epoch
    curves_png: str = ""  # the curves figure's file ("": <task class>_curves.png) and its caption
    caption: str = "Curves per epoch"
    marker: str = (
        ""  # a metrics.csv column only this task writes: recognises its runs when their config does not name it
    )
    # (key, label) of a test value where higher is better: a bar per run, against MACs per image, beside each effective
    # receptive field, and the best run's confusion matrix (where summary.json holds one)
    test_metric: tuple[str, str] | None = None


def task_class(target: Any) -> type[Task] | None:
    """The Task subclass a config's task `_target_` names, or None (import only targets that trust.allowed passes)."""
    import hydra.utils

    try:
        cls = hydra.utils.get_class(target) if isinstance(target, str) else None
    except Exception:  # not importable, or not a class: the caller goes on without it
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Task) else None


class Task(ABC):
    """Owns model(s), optimizer(s) and schedule(s); steps on a batch and evaluates a loader.

    Subclasses take their own settings and `**run` (the parameters of `Task.__init__`, which
    setup passes), build their models with `build_model` and register each with `add_model`, so
    saving, loading, mode switches and parameter counts work here for every task. Training steps
    call `self.train_model(name)` (the DDP wrapper when there is one), run forward passes under
    `self.precision.autocast()` and update through `self.precision.backward_step`.
    `monitor` names the validation metric (and "max"/"min") that picks `best.pt`.

    The class attributes below declare what the commands that read runs back need (eval, sample,
    inspect, report, sweep tables, convlab.load), so that none of them names a task.
    """

    monitor: tuple[str, str] = ("loss", "min")
    # TensorBoard charts (its CUSTOM SCALARS tab): title -> keys that train_step and evaluate report,
    # each drawn for train and val together per epoch and as a step curve; "val/fid" names one split only.
    charts: dict[str, list[str]] = {"loss": ["loss"]}
    kind: str = "model"  # what one-line messages call a run of it ("classifier", "GAN")
    main_model: str = "model"  # the key of `models` that inspect and convlab.load mean by "the" model
    samples: bool = False  # draws images: implements generate(z) and z_dim (convlab sample; sample grids in reports)
    inspectable: bool = False  # its main model maps images to class scores: convlab inspect can tabulate it
    metric_names: dict[str, str] = {}  # how convlab eval prints a metric ("acc": "accuracy"); others by their key
    report: Report = Report()
    # the metric columns of TensorBoard's HPARAMS tab (scalar tags the run writes)
    hparam_metrics: tuple[str, ...] = ("val/loss", "test/loss")

    def __init__(self, model: dict, optim: dict, sched: dict, info: DataInfo, device: torch.device,
                 total_steps: int, steps_per_epoch: int, precision: Precision | None = None) -> None:  # fmt: skip
        """What every task is given: model, optim and sched configs, the data's description, device and step counts."""
        self.precision = precision or Precision()  # autocast and loss scaling, chosen by the trainer's config
        self.info, self.device = info, device
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.configs = {"model": model, "optim": optim, "sched": sched}
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedulers: dict[str, LRScheduler] = {}
        self.wrapped: dict[str, nn.Module] = {}  # set by distribute(): what train_step calls under DDP

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's `__init__(self, settings..., **run)` shows its parent's parameters in place of `**run`.

        config.build binds the config's settings against that signature, so a misspelt setting
        stays a one-line error naming the task.
        """
        super().__init_subclass__(**kwargs)
        cls.__signature__ = None  # type: ignore[attr-defined]  # not a parent's: inspect reads __init__ again
        own = list(inspect.signature(cls.__init__).parameters.values())[1:]
        if own and own[-1].kind is inspect.Parameter.VAR_KEYWORD:
            names = {p.name for p in own}
            inherited = [p for p in inspect.signature(cls.__mro__[1]).parameters.values() if p.name not in names]
            keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:-1] + inherited]
            cls.__signature__ = inspect.Signature(keyword)  # type: ignore[attr-defined]

    def build_model(self, **kwargs: Any) -> nn.Module:
        """The run's model config built with `kwargs` (the data's classes, channels, size), on the run's device."""
        return build(self.configs["model"], "model", **kwargs).to(self.device)

    def add_model(self, name: str, model: nn.Module, every: int = 1) -> nn.Module:
        """Register `model` as `name` with its own optimizer and schedule (stepped once per `every` training steps)."""
        self.models[name] = model
        self.optimizers[name] = optimizer = build(self.configs["optim"], "optim")(model.parameters())
        steps, per_epoch = max(1, self.total_steps // every), max(1, self.steps_per_epoch // every)
        self.schedulers[name] = build(self.configs["sched"], "sched")(
            optimizer, total_steps=steps, steps_per_epoch=per_epoch
        )
        return model

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
        return None  # a hook, not abstract: most tasks need nothing from the loaders

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

    @property
    def z_dim(self) -> int:
        """Length of the noise vectors `generate` takes (tasks that declare `samples`)."""
        raise NotImplementedError(f"{type(self).__name__} draws no samples")

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for noise `z` (N, z_dim); tasks that declare `samples` implement it."""
        raise NotImplementedError(f"{type(self).__name__} draws no samples")

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
                groups = (
                    [{k: v for k, v in g.items() if k != "params"} for g in obj.param_groups]
                    if kind == "optimizers"
                    else []
                )
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
    """After loading: hyperparameters of the config's kinds, per-parameter buffers of the parameters' shapes."""
    # load_state_dict refuses a different number of parameter groups, so both lists are equally long
    for group, fresh in zip(opt.param_groups, before, strict=True):
        bad = next((k for k, v in fresh.items() if k in group and not _same_kind(group[k], v)), None)
        if bad:
            raise ConvlabError(f"its {what} state has {bad}={group[bad]!r}, unlike a {type(fresh[bad]).__name__}")
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ConvlabError(
                        f"its {what} state has {key} of shape {tuple(value.shape)} "
                        f"for a parameter of shape {tuple(p.shape)}"
                    )
