"""DCGAN (Radford et al. 2016) as in the lab notes: 5×5 (transposed) convolutions, stride 2."""

from __future__ import annotations

import math

import torch
from torch import nn


def _blocks(image_size: int) -> int:
    """Stride-2 stages between 4×4 and `image_size` (4 for 64×64)."""
    n = math.log2(image_size / 4) if image_size >= 8 else 0
    assert n == int(n) and n >= 1, f"image size {image_size} is not 4·2^k (convlab.run.schema refuses it)"
    return int(n)


def _norm2d(kind: str, channels: int) -> nn.Module:
    # "layer": GroupNorm with one group normalises over (C, H, W) per sample, i.e. LayerNorm
    # for feature maps; the WGAN-GP critic needs a per-sample norm for its gradient penalty.
    return {"batch": lambda: nn.BatchNorm2d(channels), "layer": lambda: nn.GroupNorm(1, channels), "none": nn.Identity}[
        kind
    ]()


class Generator(nn.Module):
    """z -> Linear -> BN1d -> ReLU -> (dim·2^(k-1))×4×4, then k ConvTranspose2d(5, 2, 2, 1) stages to image_size.

    For 64×64 (k = 4) and dim 64: 512×4×4 -> 256×8×8 -> 128×16×16 -> 64×32×32 -> 3×64×64 (tanh).
    """

    def __init__(self, z_dim: int = 100, dim: int = 64, out_channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        k = _blocks(image_size)
        widths = [dim * 2 ** (k - 1 - i) for i in range(k)]  # 4×4 ... (image_size/2)×(image_size/2)
        self.project = nn.Sequential(
            nn.Linear(z_dim, widths[0] * 16, bias=False), nn.BatchNorm1d(widths[0] * 16), nn.ReLU(True)
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], out_channels, 5, 2, 2, output_padding=1), nn.Tanh()]
        self.up = nn.Sequential(*layers)
        self.z_dim, self.top = z_dim, widths[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z_dim) noise -> (N, C, S, S) images in [-1, 1]."""
        return self.up(self.project(z).view(-1, self.top, 4, 4))


class Discriminator(nn.Module):
    """Mirror of the generator: k Conv2d(5, 2, 2) + LeakyReLU(0.2) stages down to 4×4, then a 4×4 conv to one logit.

    The first stage has no normalisation; later ones use `norm` (batch, layer or none).
    For 64×64 and dim 64: 3×64×64 -> 64×32×32 -> 128×16×16 -> 256×8×8 -> 512×4×4 -> 1.
    """

    def __init__(self, dim: int = 64, in_channels: int = 3, image_size: int = 64, norm: str = "batch") -> None:
        super().__init__()
        k = _blocks(image_size)
        widths = [in_channels] + [dim * 2**i for i in range(k)]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Conv2d(cin, cout, 5, 2, 2, bias=norm != "batch" or i == 0)]
            layers += [_norm2d(norm, cout)] if i else []
            layers += [nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) images -> (N,) logits (or critic values)."""
        return self.net(x).flatten()


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation: weights N(0, 0.02); normalisation weights N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGAN(nn.Module):
    """The generator and discriminator of one GAN; the GAN task trains them with two optimizers."""

    def __init__(
        self, in_channels: int = 3, image_size: int = 64, z_dim: int = 100, dim: int = 64, d_norm: str = "auto"
    ) -> None:
        super().__init__()
        self.generator = Generator(z_dim, dim, in_channels, image_size)
        # "auto" is BatchNorm here; the GAN task turns it into layer norm for wgan-gp.
        self.discriminator = Discriminator(dim, in_channels, image_size, "batch" if d_norm == "auto" else d_norm)
        self.apply(init_weights)
