"""Step curves: a point every `log_every` steps, kept on the device and read in batches, never a sync per step."""

from __future__ import annotations

import math

import torch

from convlab.run.distributed import all_reduce

AUTO_POINTS = 40  # log_every=auto: every step up to 40 steps an epoch, else 21 to 40 points an epoch
READ_EVERY = 50  # fewest steps between device reads: each read waits for the device's queued work

Totals = dict[str, tuple[float, float]]  # per key: all ranks' (sum, count) since the epoch began


def resolve_log_every(log_every: int | str, steps_per_epoch: int) -> int:
    """Steps between step-curve points; `auto`: 21 to 40 points an epoch whatever its length (every step up to 40)."""
    return max(1, math.ceil(steps_per_epoch / AUTO_POINTS)) if log_every == "auto" else int(log_every)


class StepLog:
    """One epoch's step points: snapshots of the running sums on the device, read all at once every `read_every` steps.

    The points' values are means over the steps since the previous point that had the key; a value
    reported on some steps only (a GAN's G loss, every d_steps) gets no point where it had no step.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        # Reads align with points (the bar shows the latest one) and stay >= READ_EVERY steps apart: a dense
        # curve (log_every=1) costs no more reads than a sparse one; the epoch's end reads what is left.
        self.read_every = log_every * math.ceil(READ_EVERY / log_every)
        self.pending: list[tuple[int, dict[str, torch.Tensor], dict[str, int], dict[str, float]]] = []
        self.totals: Totals = {}  # at the last read
        self.read_at = 0  # the step of the last read

    def mark(self, step: int, sums: dict[str, torch.Tensor], counts: dict[str, int], scalars: dict[str, float]) -> None:
        """A point at `step`: the running sums by reference (the trainer rebuilds them each step, never in place)."""
        self.pending.append((step, dict(sums), dict(counts), scalars))

    def read(self, bad_step: torch.Tensor) -> tuple[list[tuple[int, dict[str, float]]], int]:
        """The pending points' (step, values) in one device read over all ranks; the first NaN/Inf step (0: none)."""
        last = self.pending[-1][1]
        keys = list(last)  # keys only appear: the latest point has them all
        missing = {k: torch.zeros_like(last[k]) for _, s, _, _ in self.pending for k in keys if k not in s}
        sums = [s.get(k, missing.get(k)) for _, s, _, _ in self.pending for k in keys]
        counts = [float(c.get(k, 0)) for _, _, c, _ in self.pending for k in keys]
        # One all_reduce for every point's sums and counts (DDP), one for the bad step, as when each point was a read.
        totals = all_reduce(torch.cat([torch.stack(sums), torch.tensor(counts, device=sums[0].device)]))
        bad = all_reduce(bad_step, op="max")  # the first bad step of whichever rank met one
        *flat, bad = torch.cat([totals, bad.to(totals.dtype).view(1)]).tolist()  # the one read
        n = len(sums)
        points = []
        for i, (step, _, _, scalars) in enumerate(self.pending):
            now = {k: (flat[i * len(keys) + j], flat[n + i * len(keys) + j]) for j, k in enumerate(keys)}
            values = {}
            for key, (s, c) in now.items():
                s0, c0 = self.totals.get(key, (0.0, 0.0))
                if c > c0:  # a value reported on some steps only may have had none since its previous point
                    values[f"train/{key}"] = (s - s0) / (c - c0)
            points.append((step, values | scalars))
            self.totals = now
        self.read_at, self.pending = self.pending[-1][0], []
        return points, int(bad)
