"""What every classification dataset module provides: uint8 arrays, splits, and loaders over them."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convlab.core.errors import ConfigError
from convlab.data.loader import ArrayDataLoader, TensorLoader

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def val_size(num_images: int, val_fraction: float) -> int:
    """How many of `num_images` training images `val_fraction` holds out for validation (at least one)."""
    return max(1, round(num_images * val_fraction))


def check_batch_fits(batch_size: int, num_train: int, val_fraction: float) -> None:
    """Refuse a batch larger than the training split.

    The loaders would train on one short batch per epoch instead of `batch_size` images per
    step: a different run than the one asked for, so it is refused rather than run quietly.
    """
    if batch_size > num_train:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {num_train} training images "
            f"(after data.val_fraction={val_fraction}); use a smaller batch_size"
        )


def choose_loader(mode: str, nbytes: int, free: int | None) -> str:
    """`data.loader=auto`: the device when the images take less than half its free memory.

    `free` is None for a CPU, where the arrays already sit in host memory: always the tensor loader.
    """
    if mode != "auto":
        return mode
    return "device" if free is None or nbytes < 0.5 * free else "dataloader"


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data."""

    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ImageDataset(ABC):
    """Labelled images as uint8 (N, C, H, W) tensors, split into train / val / test.

    Subclasses implement `load()`; `val_fraction` of the training images (picked with the fixed
    `split_seed`, so every run and `convlab eval` see the same validation set) become `val`.
    """

    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        split: str = "test",
        augment: dict | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        loader: str = "auto",
        workers: int | None = None,
    ) -> None:
        augment = dict(augment or {})  # values checked by convlab.run.schema.validate
        self.val_fraction, self.split_seed, self.split = val_fraction, split_seed, split
        self.crop_padding = int(augment.get("crop_padding", 0))
        self.flip = bool(augment.get("flip", False))
        self.mean, self.std = tuple(mean), tuple(std)
        self.mode, self.workers = loader, workers or os.cpu_count() or 1
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @abstractmethod
    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return train images, train labels, test images, test labels (uint8 NCHW, int64).

        A dataset without a test set returns None for both; its validation split then
        serves the end-of-run pass too.
        """

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The three splits as (images, labels), loaded on first use."""
        if self._splits is None:
            x, y, x_test, y_test = self.load()
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
            n_val = val_size(len(y), self.val_fraction)
            val, train = perm[:n_val], perm[n_val:]
            self._splits = {"train": (x[train], y[train]), "val": (x[val], y[val])}
            self._splits["test"] = self._splits["val"] if x_test is None else (x_test, y_test)
        return self._splits

    def info_from_config(self) -> DataInfo | None:
        """The DataInfo the settings alone fix, without reading a file; None when only the loaded images tell."""
        return None

    def absent(self) -> str | None:
        """Why the files are not on disk (nothing fetched to find out); None when they are, or there are none."""
        return None

    @property
    def info(self) -> DataInfo:
        """Classes, channels and image size, taken from the loaded data."""
        x, _ = self.splits()["train"]
        return DataInfo(len(self.class_names), x.shape[1], x.shape[-1], tuple(self.class_names), self.mean, self.std)

    def loaders(
        self,
        batch_size: int,
        device: torch.device,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        training: bool = False,
    ) -> dict[str, Any]:
        """Loaders of the three splits: train shuffled, cropped and flipped; val and test as they are.

        `batch_size` is the global batch: with `world_size` processes each rank's train loader
        yields its shard in batches of batch_size / world_size; val and test are not sharded
        (rank 0 evaluates them whole). `data.loader=device` keeps the images on `device`
        (TensorLoader); `dataloader` builds batches in worker processes (ArrayDataLoader); `auto`
        picks device when all splits take less than half the device's free memory (always on a
        CPU: the arrays are in RAM anyway). With `training` (a run that will train on them), a
        batch larger than the training split is refused; evaluation and previews may ask for one.
        """
        splits = self.splits()
        if training:  # a file dataset's size is known only now; convlab.run.schema checks generated ones up front
            check_batch_fits(batch_size, len(splits["train"][1]), self.val_fraction)
        nbytes = sum(x.numel() for x, _ in {id(v): v for v in splits.values()}.values())  # val may be test
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        mode = choose_loader(self.mode, nbytes, free)
        if self.mode == "auto" and free is not None:
            log.info("data: %s (%.2f GB of images%s)",
                     "on the device" if mode == "device" else f"{self.workers} DataLoader workers",
                     nbytes / 1e9, "" if free is None else f", {free / 1e9:.1f} GB free on {device}")  # fmt: skip
        result = {}
        for split, (x, y) in splits.items():
            train = split == "train"
            common = dict(
                mean=self.mean, std=self.std, shuffle=train, drop_last=train,
                crop_padding=self.crop_padding if train else 0, flip=self.flip and train, seed=seed,
                rank=rank if train else 0, world_size=world_size if train else 1,
            )  # fmt: skip
            batch = batch_size // world_size if train else batch_size
            if mode == "device":
                result[split] = TensorLoader(x, y, batch, device=device, **common)
            else:
                result[split] = ArrayDataLoader(
                    x, y, batch, workers=self.workers, pin_memory=device.type == "cuda", **common
                )
        return result
