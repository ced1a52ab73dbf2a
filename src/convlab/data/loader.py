"""Two ways to batch uint8 image tensors, with the same augmentation and the same interface.

TensorLoader, in the spirit of airbench: the images live on the training device, and whole
batches are shuffled, cropped, flipped and normalised there with tensor ops: no per-image
Python, no worker processes, no host-device copies. ArrayDataLoader is the torch DataLoader
path for data that does not fit on the device: per-image torchvision transforms in worker
processes. In both, each epoch's randomness comes from a generator seeded by (seed, epoch),
so epoch k is the same whether or not the run was resumed, and both shard by rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation."""
    return seed * 1_000_003 + epoch


def normaliser(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x/255 - mean)/std = x * scale + shift, shaped (1, C, 1, 1)."""
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_t), -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t


def denormalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """A normalised batch back in [0, 1] (for logging what the model sees)."""
    return ((x - shift.to(x.device)) / scale.to(x.device) / 255.0).clamp(0, 1)


def draw_crops(n: int, padding: int, flip: bool, g: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random crop offsets dy, dx in [0, 2*padding] and flip flags for `n` images.

    The same distribution as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip(0.5).
    """
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=device)
    flipped = (
        torch.rand(n, generator=g, device=device) < 0.5 if flip else torch.zeros(n, dtype=torch.bool, device=device)
    )
    return dy, dx, flipped


def apply_crops(
    x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flipped: torch.Tensor
) -> torch.Tensor:
    """Crop each image of a zero-padded (N, C, H, W) batch at (dy, dx), mirrored where `flipped`: one gather."""
    n, _, h, w = x.shape
    dev = x.device
    x = F.pad(x, (padding,) * 4)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flipped[:, None], cols.flip(1), cols) + dx[:, None]  # (N, W)
    rows = torch.arange(h, device=dev) + dy[:, None]  # (N, H)
    # Advanced indices (N,1,1), (N,H,1), (N,1,W) around the channel slice give (N, H, W, C).
    out = x[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


@dataclass(eq=False, repr=False)
class Batches:
    """What both loaders take: uint8 (N, C, H, W) images, int64 (N,) labels, and how to batch, augment, normalise them.

    Call `set_epoch(e)` before iterating, as with DistributedSampler: epoch e's shuffle and
    augmentation come from (seed, e).
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    _: KW_ONLY
    mean: Sequence[float]
    std: Sequence[float]
    shuffle: bool = False
    drop_last: bool = False
    crop_padding: int = 0
    flip: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.scale, self.shift = normaliser(self.mean, self.std, self.images.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> images in [0, 1]."""
        return denormalize(x, self.scale, self.shift)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation to produce."""
        self.epoch = epoch


@dataclass(eq=False, repr=False, kw_only=True)
class TensorLoader(Batches):
    """Iterates (images float (B,C,H,W) normalised, labels int64 (B,)) batches over uint8 tensors kept on `device`.

    With `world_size > 1` every rank draws the same permutation and takes every world_size-th index from `rank`.
    """

    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        super().__post_init__()

    def _per_rank(self) -> int:
        return len(self.labels) // self.world_size if self.world_size > 1 else len(self.labels)

    def __len__(self) -> int:
        n, b = self._per_rank(), self.batch_size
        # drop_last drops the ragged tail, but never the only batch of a split smaller than one batch.
        return max(1, n // b) if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dev = self.images.device
        g = torch.Generator(device=dev).manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.labels)
        idx = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        if self.world_size > 1:  # every rank shares the permutation, but draws its own crops and flips
            g = torch.Generator(device=dev).manual_seed(epoch_seed(self.seed, self.epoch) * self.world_size + self.rank)
        idx = idx[self.rank : self._per_rank() * self.world_size : self.world_size]
        augment = self.crop_padding > 0 or self.flip
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[sel]
            if augment:
                x = apply_crops(x, self.crop_padding, *draw_crops(len(sel), self.crop_padding, self.flip, g, dev))
            # The crop's gather leaves x channels-last in memory; the trainer sets the layout it wants.
            yield x.float() * self.scale + self.shift, self.labels[sel]


class _AugmentedArray(Dataset):
    """Images of a uint8 (N, C, H, W) tensor, each cropped, flipped and normalised by torchvision."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        crop_padding: int,
        flip: bool,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        from torchvision.transforms import (
            v2,
        )  # here, not at the top: importing torchvision costs ~2 s (it loads torch._dynamo)

        self.images, self.labels = images, labels
        steps: list = [v2.RandomCrop(images.shape[-2:], padding=crop_padding)] if crop_padding else []
        steps += [v2.RandomHorizontalFlip()] if flip else []
        self.transform = v2.Compose(
            [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


@dataclass(eq=False, repr=False, kw_only=True)
class ArrayDataLoader(Batches):
    """The DataLoader path: the same batches as TensorLoader, built per image in `workers` processes.

    Worker RNGs derive from the epoch's generator, so an epoch is reproducible for a given
    number of workers (at least one: transforms in the main process would draw from, and
    disturb, the training RNG).
    """

    workers: int = 1
    pin_memory: bool = False

    def __post_init__(self) -> None:
        self.dataset = _AugmentedArray(self.images, self.labels, self.crop_padding, self.flip, self.mean, self.std)
        self.drop_last = (
            self.drop_last and len(self.labels) // self.world_size >= self.batch_size
        )  # never drop the only batch
        shard = self.world_size > 1
        self.sampler = (
            DistributedSampler(
                self.dataset, self.world_size, self.rank, shuffle=self.shuffle, seed=self.seed, drop_last=True
            )
            if shard
            else None
        )
        self.workers = max(1, self.workers)
        super().__post_init__()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation to produce."""
        super().set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from DataLoader(
            self.dataset, self.batch_size, shuffle=self.shuffle and self.sampler is None, sampler=self.sampler,
            drop_last=self.drop_last, num_workers=self.workers, pin_memory=self.pin_memory, generator=g,
        )  # fmt: skip


def batches_on(
    loader: Iterable, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Each batch of `loader` on `device`, images (4-D tensors) in `memory_format`; no copy when already so."""
    for batch in loader:
        yield tuple(
            t.to(device, non_blocking=True, memory_format=memory_format)
            if t.dim() == 4
            else t.to(device, non_blocking=True)
            for t in batch
        )
