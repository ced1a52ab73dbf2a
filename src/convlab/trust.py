"""What convlab may call when it rebuilds a run from a config it did not compose itself.

A checkpoint carries the config it was trained with, and Hydra's `instantiate` calls whatever
`_target_` a config names, at any depth. A checkpoint from someone else could name
`builtins.exec`; so before anything is built from a saved config, every `_target_` in it must be
one that this installation's own conf/ names (convlab's models, datasets, tasks, schedules), a
torch optimizer or learning-rate scheduler class, or one the user lists in $CONVLAB_TRUST_TARGETS
(their own class, named with `model._target_=` on their command line). Interpolations (`${...}`) are refused too: a
saved config is stored resolved, and resolvers such as `oc.create` could build new nodes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from importlib import resources
from typing import Any

import yaml

from convlab.errors import ConvlabError

TRUST_ENV = "CONVLAB_TRUST_TARGETS"


def _conf_targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "hydra":  # launchers and callbacks run in the sweep process, never from a checkpoint
                continue
            if k == "_target_" and isinstance(v, str):
                yield v
            yield from _conf_targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _conf_targets(v)


@functools.cache
def conf_targets() -> frozenset[str]:
    """Every `_target_` named in this installation's conf/ (outside its hydra/ settings)."""
    found: set[str] = set()
    stack = [resources.files("convlab.conf")]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name != "hydra":
                stack.append(entry)
            elif entry.name.endswith(".yaml"):
                found.update(_conf_targets(yaml.safe_load(entry.read_text())))
    return frozenset(found)


def _is_torch_class(target: str) -> bool:
    """torch.optim.NAME (an Optimizer) or torch.optim.lr_scheduler.NAME (an LRScheduler): classes, looked up, not called."""
    import torch

    module, _, name = target.rpartition(".")
    if not name.isidentifier() or name.startswith("_"):
        return False
    if module == "torch.optim":
        base, where = torch.optim.Optimizer, torch.optim
    elif module == "torch.optim.lr_scheduler":
        base, where = torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler
    else:
        return False
    obj = getattr(where, name, None)
    return isinstance(obj, type) and issubclass(obj, base) and obj is not base


def user_targets() -> set[str]:
    """Targets the user trusts on top of conf/'s: CONVLAB_TRUST_TARGETS=pkg.mod.Class,... (their own classes)."""
    return {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}


def allowed(target: Any) -> bool:
    """Whether a saved config may name `target`."""
    return isinstance(target, str) and (target in conf_targets() or target in user_targets() or _is_torch_class(target))


def check_config(config: Any, source: str) -> None:
    """Refuse (one line naming `source`, the key and the value) a saved config that could call unlisted code."""
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{path}.{k}" if path else str(k)
                if not isinstance(k, str):
                    raise ConvlabError(f"{source}: config key {key!r} is not a string; refusing it")
                if k == "_target_" and not allowed(v):
                    raise ConvlabError(
                        f"{source}: config key {key} names {v!r}, which convlab's conf/ does not name; "
                        f"refusing to build it (only convlab's models, datasets, tasks, schedules, torch optimizers and {TRUST_ENV})"
                    )
                stack.append((key, v))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, str) and "${" in node:
            raise ConvlabError(f"{source}: config key {path} holds an interpolation {node[:60]!r}; a saved config holds plain values only")
        elif node is not None and not isinstance(node, (bool, int, float, str)):
            raise ConvlabError(f"{source}: config key {path} holds a {type(node).__name__}; a saved config holds plain values only")
