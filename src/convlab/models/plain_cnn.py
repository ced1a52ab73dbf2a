"""The lab's plain CNN: three unpadded conv-BN-ReLU layers, global average pooling, a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlab.models.layers import ConvBNAct

CHANNELS, KERNEL_SIZE = (32, 64, 128), 3  # the defaults (convlab.run.schema checks them when a config leaves them out)


def out_size(image_size: int, dilations: Sequence[int], kernel_size: int = KERNEL_SIZE) -> int:
    """The side of the last feature map: each unpadded layer shrinks it by dilation·(kernel_size - 1)."""
    return image_size - sum(d * (kernel_size - 1) for d in dilations)


class PlainCNN(nn.Module):
    """3×3 convs of 32/64/128 channels (no padding, with bias) + BN + ReLU, GAP, linear.

    For 10 classes: 896+64 + 18,496+128 + 73,856+256 + 1,290 = 94,986 parameters.
    Shapes for a 32×32 input: 3×32×32 -> 32×30×30 -> 64×28×28 -> 128×26×26 -> 128 -> classes.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        channels: Sequence[int] = CHANNELS,
        dilations: Sequence[int] | None = None,
        kernel_size: int = KERNEL_SIZE,
        conv_impl: str = "torch",
        conv: str = "standard",
        groups: int = 4,
    ) -> None:
        super().__init__()
        # Positive ints, one rate per layer, leaving at least one pixel: checked by convlab.run.schema.
        # No rates: plain convs, however many layers.
        channels = tuple(channels)
        dilations = (1,) * len(channels) if dilations is None else tuple(dilations)
        assert out_size(image_size, dilations, kernel_size) >= 1, (
            f"model.dilations={list(dilations)} shrink a {image_size}×{image_size} input below one pixel"
        )
        widths = (in_channels, *channels)
        # The first layer reads the image: it stays a standard convolution whatever model.conv says.
        self.features = nn.Sequential(
            *(
                ConvBNAct(
                    cin,
                    cout,
                    kernel_size,
                    dilation=d,
                    bias=True,
                    conv_impl=conv_impl,
                    conv="standard" if i == 0 else conv,
                    groups=groups,
                )
                for i, (cin, cout, d) in enumerate(zip(widths[:-1], widths[1:], dilations, strict=True))
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return self.head(self.pool(self.features(x)).flatten(1))
