"""A loader over uint8 image tensors: shuffle, crop and flip whole batches with tensor ops.

In the spirit of airbench: no per-image Python, no worker processes. The images can live on
any device (CPU now, the GPU when they fit), and every epoch's randomness comes from a
generator seeded by (seed, epoch), so epoch k is the same whether or not the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def draw_crops(n: int, padding: int, flip: bool, g: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random crop offsets dy, dx in [0, 2*padding] and flip flags for `n` images.

    The same distribution as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip(0.5).
    """
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=device)
    flipped = torch.rand(n, generator=g, device=device) < 0.5 if flip else torch.zeros(n, dtype=torch.bool, device=device)
    return dy, dx, flipped


def apply_crops(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
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


class TensorLoader:
    """Iterates (images float (B,C,H,W) normalised, labels int64 (B,)) batches over uint8 tensors.

    Call `set_epoch(e)` before iterating, as with DistributedSampler. With `world_size > 1`
    every rank draws the same permutation and takes every world_size-th index from `rank`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.images = images.to(device)  # (N, C, H, W) uint8
        self.labels = labels.to(device)  # (N,) int64
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        # x_norm = (x/255 - mean)/std = x * scale + shift, per channel.
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> images in [0, 1] (for logging what the model sees)."""
        return ((x - self.shift.to(x.device)) / self.scale.to(x.device) / 255.0).clamp(0, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation to produce."""
        self.epoch = epoch

    def _per_rank(self) -> int:
        return len(self.labels) // self.world_size if self.world_size > 1 else len(self.labels)

    def __len__(self) -> int:
        n, b = self._per_rank(), self.batch_size
        # drop_last drops the ragged tail, but never the only batch of a split smaller than one batch.
        return max(1, n // b) if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dev = self.images.device
        g = torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        idx = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        idx = idx[self.rank : self._per_rank() * self.world_size : self.world_size]
        augment = self.crop_padding > 0 or self.flip
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[sel]
            if augment:
                x = apply_crops(x, self.crop_padding, *draw_crops(len(sel), self.crop_padding, self.flip, g, dev))
            x = (x.float() * self.scale + self.shift).contiguous()
            yield x, self.labels[sel]
