"""Learning-rate schedules, stepped once per optimizer step; built from conf/sched/<name>.yaml.

Their settings are checked by convlab.run.schema.validate; only what needs the run's step count is checked here.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, StepLR

from convlab.core.errors import ConfigError


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """The optimizer's lr throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)


def cosine(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0, min_lr_ratio: float = 0.0
) -> LRScheduler:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `min_lr_ratio` × lr at the last step."""
    warmup = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


ONE_CYCLE = {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4}  # OneCycleLR settings and their defaults


def onecycle(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, max_lr_factor: float = 1.0, **cycle: float
) -> LRScheduler:
    """Smith's one-cycle policy peaking at `max_lr_factor` × the optimizer's lr; `cycle` overrides ONE_CYCLE."""
    if unknown := sorted(set(cycle) - set(ONE_CYCLE)):
        raise ConfigError(
            f"sched=onecycle does not take {', '.join(unknown)}; its settings are max_lr_factor, {', '.join(ONE_CYCLE)}"
        )
    cycle = ONE_CYCLE | cycle
    pct_start = cycle["pct_start"]
    needed = math.ceil(2 / min(pct_start, 1 - pct_start))  # OneCycleLR divides by each phase's length
    if total_steps < needed:
        raise ConfigError(
            f"sched=onecycle needs at least {needed} optimizer steps with sched.pct_start={pct_start}; "
            f"this run has {total_steps} (epochs × batches): train longer or use sched=cosine"
        )
    max_lr = [g["lr"] * max_lr_factor for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr, total_steps=total_steps, **cycle)


def step(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 30, gamma: float = 0.1
) -> LRScheduler:
    """Multiply the lr by `gamma` every `step_epochs` epochs."""
    return StepLR(optimizer, step_size=max(1, step_epochs * steps_per_epoch), gamma=gamma)
