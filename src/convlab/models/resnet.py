"""ResNet-18 for 32×32 inputs (He et al. 2016, CIFAR variant): 3×3 stem, no max-pool."""

from __future__ import annotations

import torch
from torch import nn

from convlab.models.layers import ConvBNAct

WIDTHS = (64, 128, 256, 512)  # the four stages' channels


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut (1×1 conv-BN projection when the shape changes)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, conv_impl: str = "torch", conv: str = "standard", groups: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, 3, stride, padding=1, conv_impl=conv_impl, conv=conv, groups=groups)
        self.conv2 = ConvBNAct(
            out_ch, out_ch, 3, 1, padding=1, conv_impl=conv_impl, act=False, conv=conv, groups=groups
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBNAct(in_ch, out_ch, 1, stride, conv_impl=conv_impl, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(F(x) + shortcut(x))."""
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18(nn.Module):
    """Stem 3×3/64, four stages of two BasicBlocks (64, 128, 256, 512; strides 1, 2, 2, 2), GAP, linear.

    11,173,962 parameters for 10 classes. Shapes for a 32×32 input:
    64×32×32 -> 64×32×32 -> 128×16×16 -> 256×8×8 -> 512×4×4 -> 512 -> classes.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        widths: tuple[int, ...] = WIDTHS,
        conv_impl: str = "torch",
        conv: str = "standard",
        groups: int = 4,
    ) -> None:
        super().__init__()
        # The stem reads the image and stays standard; model.conv applies to every 3×3 in the blocks,
        # 1×1 shortcuts stay.
        self.stem = ConvBNAct(in_channels, widths[0], 3, 1, padding=1, conv_impl=conv_impl)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [
                BasicBlock(in_ch, w, stride, conv_impl, conv, groups),
                BasicBlock(w, w, 1, conv_impl, conv, groups),
            ]
            in_ch = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))
