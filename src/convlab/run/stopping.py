"""Early stopping, decided from the run's history alone.

The verdict is a pure function of the history rows (which the checkpoint holds), so a resumed run
reaches the same decision as the uninterrupted one, with no counter of its own to save: a run
that stopped early is finished, and one interrupted during its test pass goes straight to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EarlyStop:
    """Stop when `metric` (mode "max" or "min") has not improved by over `min_delta` in `patience` validation passes."""

    metric: str
    mode: str
    patience: int | None = None  # None: never stop early
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, settings: Any, metric: str, mode: str) -> EarlyStop:
        """From `trainer.early_stop` (absent in configs saved before it existed) and the monitored metric."""
        settings = settings or {}
        return cls(metric, mode, settings.get("patience"), float(settings.get("min_delta") or 0.0))

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any]) -> EarlyStop:
        """The early stopping a checkpoint's run trains with (its config's settings, its best-epoch record's metric)."""
        settings = (state["config"].get("trainer") or {}).get("early_stop")
        return cls.from_config(settings, state["best"]["metric"], state["best"]["mode"])

    def verdict(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """None while the run should go on; otherwise when and why it stops.

        Only rows that hold the metric count as validation passes (trainer.eval_every, FID every k
        epochs). A pass improves when it beats the best so far by more than min_delta; NaN never does.
        """
        if not self.patience:
            return None
        best = best_epoch = None
        waited = 0
        for row in history:
            value = row.get(self.metric)
            if value is None:
                continue
            if best is None or (
                math.isfinite(value) and (not math.isfinite(best) or self._gain(value, best) > self.min_delta)
            ):
                best, best_epoch, waited = value, row["epoch"], 0
                continue
            waited += 1
            if waited >= self.patience:
                by = f" by more than {self.min_delta:g}" if self.min_delta else ""
                return {
                    "epoch": row["epoch"],
                    "reason": f"{self.metric} did not improve{by} on {best:.4g} (epoch {best_epoch}) "
                    f"in {waited} validation pass{'es' * (waited != 1)}",
                }
        return None

    def _gain(self, value: float, best: float) -> float:
        return value - best if self.mode == "max" else best - value
