"""Config helpers: build `_target_` nodes, pick the device (values are checked by convlab.run.schema)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from convlab.core.errors import ConfigError, ConvlabError


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
            raise ConvlabError(
                f"device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConvlabError("device=mps: Apple MPS is not available on this machine; use device=cpu or device=auto")
    return torch.device(spec)
