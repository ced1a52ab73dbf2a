"""Config helpers: build `_target_` nodes, check user-typed values, pick the device."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from convlab.errors import ConfigError, ConvlabError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def to_dict(node: Any) -> Any:
    """A config node as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build(node: Mapping[str, Any], group: str, /, **kwargs: Any) -> Any:
    """Build a config node's `_target_` with `kwargs` (its `name` key is a label, not an argument).

    Nodes with `_partial_: true` come back as a partial to be called later (an optimizer
    waiting for its parameters). Wrong keys or targets become one-line ConfigErrors naming
    the config group; errors raised inside the target itself pass through untouched.
    """
    spec = {k: v for k, v in to_dict(node).items() if k != "name"}
    partial = spec.pop("_partial_", False)
    target = spec.get("_target_", "?")
    try:
        factory = instantiate(spec, _partial_=True, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConvlabError):
            raise cause from None
        reason = f"{type(cause).__name__}: {cause}" if cause else str(e).splitlines()[0]
        raise ConfigError(f"{group}: cannot build {target} ({reason})") from None
    try:
        signature = inspect.signature(factory.func)
        if partial:
            signature.bind_partial(*factory.args, **factory.keywords)
        else:
            signature.bind(*factory.args, **factory.keywords, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{group}: {target} does not take these settings ({e})") from None
    return factory if partial else factory(**kwargs)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= `minimum`; otherwise a ConfigError naming `name`."""
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_config(cfg: DictConfig) -> None:
    """Reject wrongly typed or out-of-range values of the keys users type most."""
    require_int("epochs", cfg.get("epochs"), 1)
    require_int("batch_size", cfg.get("batch_size"), 1)
    if not _is_int(cfg.get("seed")):
        raise ConfigError(f"seed={cfg.get('seed')!r} is not allowed; expected an integer")
    device = cfg.get("device")
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device={device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N, mps")
    for key in ("log_every", "eval_every", "devices"):
        require_int(f"trainer.{key}", cfg.trainer.get(key), 1)
    if cfg.trainer.get("stop_after") is not None:
        require_int("trainer.stop_after", cfg.trainer.stop_after, 1)
    # Optimizer and scheduler arguments are all numbers (or flags, or lists of numbers).
    for group in ("optim", "sched"):
        for key, value in to_dict(cfg[group]).items():
            if key.startswith("_") or key == "name" or value is None or isinstance(value, bool):
                continue
            values = value if isinstance(value, list) else [value]
            if not all(_is_number(v) for v in values):
                raise ConfigError(f"{group}.{key}={value!r} is not allowed; expected a number")


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """Turn `device=auto|cpu|cuda|cuda:N|mps` into a torch.device that exists on this machine.

    In a multi-process run (`local_rank` given) auto and cuda mean this process's own GPU.
    """
    if local_rank is not None and spec in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            build_info = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConvlabError(
                f"device={spec}: CUDA is not available on this machine (torch {torch.__version__}, {build_info}); "
                "use device=cpu or device=auto"
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConvlabError(f"device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConvlabError("device=mps: Apple MPS is not available on this machine; use device=cpu or device=auto")
    return torch.device(spec)
