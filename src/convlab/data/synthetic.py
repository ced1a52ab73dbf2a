"""An embedded, procedurally generated 10-class 32×32 RGB dataset: no files, no downloads.

Each class is a shape (disk, square, triangle, ring, cross) drawn either solid or striped
(each shape with its own stripe direction), at a random position and size, in a colour near
the class's hue, on a random background, with Gaussian noise. Colour alone narrows a label
down to about three classes; shape and texture settle it. The same `seed` gives the same images.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from convlab.data.base import DataInfo, ImageDataset

SHAPES = ("disk", "square", "triangle", "ring", "cross")
TEXTURES = ("solid", "striped")
IMAGE_SIZE, NOISE = 32, 0.12  # the defaults of `generate` and `Synthetic` (conf/data/synthetic.yaml sets its own)


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(5, N, H, W) boolean masks of each shape, centred offsets dx, dy (N, H, W), radius r (N, 1, 1)."""
    dist = (dx**2 + dy**2).sqrt()
    arm = r / 3
    return torch.stack(
        [
            dist <= r,
            (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r),
            (dy <= 0.8 * r) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.6),
            (dist <= r) & (dist >= 0.55 * r),
            ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r)),
        ]
    )


def _hue_to_rgb(h: torch.Tensor) -> torch.Tensor:
    """Fully saturated colours for hues h in [0, 1): (N,) -> (N, 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def generate(
    n: int, seed: int, image_size: int = IMAGE_SIZE, noise: float = NOISE
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images (uint8, N×3×S×S) and labels (int64), fully determined by `seed`."""
    g = torch.Generator().manual_seed(seed)
    s = image_size
    labels = torch.randint(0, len(SHAPES) * len(TEXTURES), (n,), generator=g)
    shape, textured = labels % len(SHAPES), labels // len(SHAPES)

    def u(lo: float, hi: float, *size: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*(size or (n,)), generator=g)

    r = u(0.2, 0.34) * s
    cx, cy = u(0.3, 0.7) * s, u(0.3, 0.7) * s
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    dy = coords.view(1, s, 1) - cy.view(n, 1, 1)
    dx = coords.view(1, 1, s) - cx.view(n, 1, 1)
    mask = _shape_masks(dx, dy, r.view(n, 1, 1))[shape, torch.arange(n)]  # (N, S, S)

    # Striped classes: each shape has its own stripe direction (0°, 45°, 90°, 135°, or a
    # checkerboard for the cross), period 3-5 pixels, random phase.
    period = u(3.0, 5.0).view(n, 1, 1)
    angle = (shape.float() * math.pi / 4).view(n, 1, 1)
    phase = (dx * angle.cos() + dy * angle.sin()) * 2 * math.pi / period + u(0, 2 * math.pi).view(n, 1, 1)
    stripes = torch.sin(phase) > 0
    checker = (torch.sin(dx * 2 * math.pi / period) > 0) ^ (torch.sin(dy * 2 * math.pi / period) > 0)
    stripes = torch.where((shape == 4).view(n, 1, 1), checker, stripes)
    mask = mask & (stripes | (textured == 0).view(n, 1, 1))

    # Colour: the class's hue jittered by up to ±0.15 of the colour wheel, so neighbouring classes overlap.
    hue = (labels.float() / 10 + u(-0.15, 0.15)) % 1.0
    fg = _hue_to_rgb(hue) * u(0.6, 1.0).view(n, 1)
    bg = u(0.0, 0.45, n, 3)
    img = torch.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])
    img = img + noise * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


class Synthetic(ImageDataset):
    """The embedded synthetic dataset (see module docstring); `seed` fixes the images."""

    class_names = tuple(f"{t}-{s}" for t in TEXTURES for s in SHAPES)

    def __init__(
        self,
        num_train: int = 5000,
        num_test: int = 1000,
        image_size: int = IMAGE_SIZE,
        seed: int = 0,
        noise: float = NOISE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_test = num_train, num_test
        self.image_size, self.seed, self.noise = image_size, seed, noise

    def info_from_config(self) -> DataInfo:
        """Ten classes of 3×S×S images, S = image_size: known without generating them."""
        return DataInfo(len(self.class_names), 3, self.image_size, self.class_names, self.mean, self.std)

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate the train and test images from two seeds derived from `seed`."""
        x, y = generate(self.num_train, 2 * self.seed, self.image_size, self.noise)
        x_test, y_test = generate(self.num_test, 2 * self.seed + 1, self.image_size, self.noise)
        return x, y, x_test, y_test
