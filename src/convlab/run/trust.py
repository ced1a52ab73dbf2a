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

from convlab.core.errors import ConvlabError

TRUST_ENV = "CONVLAB_TRUST_TARGETS"
# Where a saved config names a target, and which group of conf/ lists the targets allowed there.
SLOTS = {"model": "model", "data": "data", "optim": "optim", "sched": "sched", "task": "task", "gan": "task"}


def _conf_targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                yield v
            yield from _conf_targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _conf_targets(v)


@functools.cache
def conf_targets() -> dict[str, frozenset[str]]:
    """The `_target_`s each config group of this installation's conf/ names."""
    root = resources.files("convlab.conf")
    found: dict[str, frozenset[str]] = {}
    for group in set(SLOTS.values()):
        files = [e for e in (root / group).iterdir() if e.name.endswith(".yaml")]
        found[group] = frozenset(t for e in files for t in _conf_targets(yaml.safe_load(e.read_text())))
    return found


def _is_torch_class(target: str, module: str) -> bool:
    """`module`.NAME is an Optimizer (torch.optim) or LRScheduler (its lr_scheduler) class: looked up, not called."""
    import torch

    where, _, name = target.rpartition(".")
    if where != module or not name.isidentifier() or name.startswith("_"):
        return False
    base = torch.optim.Optimizer if module == "torch.optim" else torch.optim.lr_scheduler.LRScheduler
    obj = getattr(torch.optim if module == "torch.optim" else torch.optim.lr_scheduler, name, None)
    return isinstance(obj, type) and issubclass(obj, base) and obj is not base


def user_targets() -> set[str]:
    """Targets the user trusts on top of conf/'s: CONVLAB_TRUST_TARGETS=pkg.mod.Class,... (their own classes)."""
    return {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}


def allowed(group: str, target: Any) -> bool:
    """Whether a saved config may name `target` as its `group` (model, data, optim, sched, task)."""
    if not isinstance(target, str):
        return False
    torch_kind = {"optim": "torch.optim", "sched": "torch.optim.lr_scheduler"}.get(group)
    return (
        target in conf_targets()[group]
        or target in user_targets()
        or (torch_kind is not None and _is_torch_class(target, torch_kind))
    )


# Targets that moved since convlab 0.1 (2026-12-02): a checkpoint saved then names the old path.
# Only these exact names are rewritten, each to its new home; anything else is checked as it stands.
MOVED = {
    f"convlab.schedules.{name}": f"convlab.tasks.schedules.{name}"
    for name in ("constant", "cosine", "onecycle", "step")
}


def upgrade(config: Any) -> Any:
    """`config` with the targets that moved since it was saved renamed to where they live now (in place)."""
    if isinstance(config, dict):
        for slot in SLOTS:
            node = config.get(slot)
            if isinstance(node, dict) and isinstance(node.get("_target_"), str) and node["_target_"] in MOVED:
                node["_target_"] = MOVED[node["_target_"]]
    return config


def check_config(config: Any, source: str) -> None:
    """Refuse (one line naming `source`, the key and the value) a saved config that could call unlisted code.

    A target may stand only where convlab's own configs put one (model._target_, data._target_,
    optim._target_, sched._target_, task._target_, gan._target_), and must be one of that group's.
    """
    if not isinstance(config, dict):
        raise ConvlabError(f"{source}: its config is not a mapping")
    for slot, group in SLOTS.items():
        node = config.get(slot)
        if node is None and slot == "gan":
            continue
        target = node.get("_target_") if isinstance(node, dict) else None
        if not allowed(group, target):
            what = "convlab's own " + group + (" classes, torch optimizers" if group == "optim" else " classes")
            raise ConvlabError(
                f"{source}: config key {slot}._target_ is {target!r}, which is not one of conf/{group}/'s targets; "
                f"refusing to build it (allowed: {what}, and what {TRUST_ENV} lists)"
            )
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{path}.{k}" if path else str(k)
                if not isinstance(k, str):
                    raise ConvlabError(f"{source}: config key {key!r} is not a string; refusing it")
                if k.startswith("_") and k != "_partial_" and not (k == "_target_" and path in SLOTS):
                    raise ConvlabError(
                        f"{source}: config key {key} is an instruction to Hydra ({v!r}) "
                        "where convlab's configs hold none; refusing it"
                    )
                stack.append((key, v))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, str) and "${" in node:
            raise ConvlabError(
                f"{source}: config key {path} holds an interpolation {node[:60]!r}; "
                "a saved config holds plain values only"
            )
        elif node is not None and not isinstance(node, (bool, int, float, str)):
            raise ConvlabError(
                f"{source}: config key {path} holds a {type(node).__name__}; a saved config holds plain values only"
            )
