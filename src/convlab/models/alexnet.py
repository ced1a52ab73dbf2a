"""AlexNet (Krizhevsky et al. 2012) cut down for 32×32 inputs so it trains on CIFAR-10 in minutes."""

from __future__ import annotations

import torch
from torch import nn

from convlab.models.layers import ConvBNAct

WIDTHS = (
    64,
    192,
    384,
    256,
    256,
)  # the five convolutions' output channels (convlab.run.schema checks model.groups against them)


class AlexNetLite(nn.Module):
    """Five convolutions, three max-pools, two dropout-regularised hidden FC layers.

    BatchNorm stands in for AlexNet's local response normalisation. For 3×32×32 inputs
    and 10 classes:

        layer      output      parameters
        conv 3×3   64×32×32         1,920   (conv 1,792 + BN 128)
        maxpool    64×16×16
        conv 3×3  192×16×16       111,168
        maxpool   192×8×8
        conv 3×3  384×8×8         664,704   (each conv: weights + bias + BN)
        conv 3×3  256×8×8         885,504
        conv 3×3  256×8×8         590,592
        maxpool   256×4×4
        dropout, fc 4096 -> 1024  4,195,328
        dropout, fc 1024 -> 1024  1,049,600
        fc 1024 -> 10                 10,250
        total                   7,509,066 parameters
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        hidden: int = 1024,
        dropout: float = 0.5,
        conv_impl: str = "torch",
        conv: str = "standard",
        groups: int = 4,
    ) -> None:
        super().__init__()
        assert image_size % 8 == 0, f"image size {image_size} is not divisible by 8 (convlab.run.schema refuses it)"
        c = WIDTHS

        def unit(cin: int, cout: int, kind: str = conv) -> nn.Module:
            return ConvBNAct(cin, cout, 3, padding=1, bias=True, conv_impl=conv_impl, conv=kind, groups=groups)

        self.features = nn.Sequential(
            unit(in_channels, c[0], "standard"), nn.MaxPool2d(2),  # reads the image: stays standard
            unit(c[0], c[1]), nn.MaxPool2d(2),
            unit(c[1], c[2]), unit(c[2], c[3]), unit(c[3], c[4]), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = c[4] * (image_size // 8) ** 2
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return self.classifier(self.features(x).flatten(1))
