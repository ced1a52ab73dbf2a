"""Shared building blocks: the hand-written convolution, the convolution kinds and conv-BN-activation.

Every model gets its k×k convolutions from `create_conv2d` (timm's pattern): `model.conv` picks
the kind (standard, separable, grouped, shift), `model.conv_impl` the implementation of the
convolutions inside it (torch's or the hand-written im2col). A new kind is one class here, built
from a ConvSpec (the convolution create_conv2d was asked for), and one entry in CONV_KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def conv2d_im2col(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-D convolution written as im2col (unfold) + one batched matmul; same contract as F.conv2d."""
    n, c, h, w = x.shape
    out_ch, c_per_group, kh, kw = weight.shape
    stride, padding, dilation = (_pair(v) for v in (stride, padding, dilation))
    if c != c_per_group * groups:
        raise ValueError(f"input has {c} channels, weight expects {c_per_group * groups}")
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # cols: (N, C*kh*kw, L) with L = ho*wo output positions; rows are channel-major, so
    # each group's channels form one contiguous block of c_per_group*kh*kw rows.
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, groups, c_per_group * kh * kw, ho * wo)
    # (G, O/G, K) @ (N, G, K, L) -> (N, G, O/G, L): one matmul per group, batched.
    out = weight.view(groups, out_ch // groups, -1) @ cols
    out = out.reshape(n, out_ch, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ManualConv2d(nn.Conv2d):
    """nn.Conv2d's parameters and initialisation, computed by `conv2d_im2col` instead of cuDNN/oneDNN.

    Keeping nn.Conv2d's parameter names means a checkpoint trained with either
    implementation loads into the other.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert not isinstance(self.padding, str) and self.padding_mode == "zeros", (
            "the manual convolution supports integer zero padding only"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the hand-written im2col kernel."""
        return conv2d_im2col(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


CONV_IMPLS: dict[str, type[nn.Conv2d]] = {"torch": nn.Conv2d, "manual": ManualConv2d}


def conv_class(conv_impl: str) -> type[nn.Conv2d]:
    """The convolution class for `model.conv_impl` (one of CONV_IMPLS, checked by convlab.run.schema)."""
    return CONV_IMPLS[conv_impl]


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as create_conv2d was asked for it; a convolution kind builds its layers from one."""

    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    bias: bool = False
    conv_impl: str = "torch"
    groups: int = 1

    def conv2d(self, **changes: Any) -> nn.Conv2d:
        """This convolution as one nn.Conv2d (or the manual one), with `changes` to its fields."""
        s = replace(self, **changes)
        return conv_class(s.conv_impl)(
            s.in_ch, s.out_ch, s.kernel_size, s.stride, s.padding, s.dilation, groups=s.groups, bias=s.bias
        )

    def pointwise(self) -> nn.Conv2d:
        """The 1×1 convolution from in_ch to out_ch (stride 1, no groups) that ends the separable and shift kinds."""
        return self.conv2d(kernel_size=1, stride=1, padding=0, dilation=1, groups=1)


def _standard(spec: ConvSpec) -> nn.Module:
    """nn.Conv2d (or the manual one): in_ch·out_ch·k² weights (`groups` is the grouped kind's)."""
    return spec.conv2d(groups=1)


class SeparableConv(nn.Sequential):
    """MobileNet v1: depthwise k×k (groups = C_in) -> BN -> ReLU -> pointwise 1×1.

    Weights: C_in·k² + C_in·C_out (+ 2·C_in for the BN), against C_in·C_out·k²: 64 -> 64 channels,
    3×3: 576 + 4,096 = 4,672 against 36,864.
    """

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__(
            spec.conv2d(out_ch=spec.in_ch, groups=spec.in_ch, bias=False),
            nn.BatchNorm2d(spec.in_ch),
            nn.ReLU(inplace=True),
            spec.pointwise(),
        )


class GroupedConv(nn.Sequential):
    """ShuffleNet: a k×k convolution in `groups` groups (C_in·C_out·k²/groups weights), then a channel shuffle.

    The shuffle interleaves the groups' outputs, so the next grouped convolution mixes information across groups.
    """

    def __init__(self, spec: ConvSpec) -> None:
        assert spec.in_ch % spec.groups == 0 and spec.out_ch % spec.groups == 0, (
            f"a {spec.in_ch} -> {spec.out_ch} channel convolution does not split into {spec.groups} groups"
        )
        super().__init__(spec.conv2d(), nn.ChannelShuffle(spec.groups))


class Shift(nn.Module):
    """Each channel moved by one offset of the k×k neighbourhood: zero parameters, zero multiply-adds (Wu et al. 2017).

    The channels are split evenly over the k² offsets (the remainder stays at the centre);
    dilation scales the offsets. Padding and stride act as in a k×k convolution, so
    (N, C, H, W) -> (N, C, (H + 2p - d(k-1) - 1) // s + 1, same for W).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        per, k = channels // kernel_size**2, kernel_size
        # (row offset, column offset, first channel, end channel) of each group of channels
        self.parts = [(i, j, (i * k + j) * per, (i * k + j + 1) * per) for i in range(k) for j in range(k) if per]
        if channels % k**2:
            self.parts.append((k // 2, k // 2, k * k * per, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slices of the zero-padded input, one offset per channel group."""
        p, d, s, k = self.padding, self.dilation, self.stride, self.kernel_size
        x = F.pad(x, (p, p, p, p))
        ho, wo = (x.shape[2] - d * (k - 1) - 1) // s + 1, (x.shape[3] - d * (k - 1) - 1) // s + 1
        return torch.cat(
            [
                x[:, a:b, i * d : i * d + s * (ho - 1) + 1 : s, j * d : j * d + s * (wo - 1) + 1 : s]
                for i, j, a, b in self.parts
            ],
            1,
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class ShiftConv(nn.Sequential):
    """A shift (no weights) then a pointwise 1×1 convolution: C_in·C_out weights in place of C_in·C_out·k²."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__(
            Shift(spec.in_ch, spec.kernel_size, spec.stride, spec.padding, spec.dilation), spec.pointwise()
        )


CONV_KINDS: dict[str, Callable[[ConvSpec], nn.Module]] = {
    "standard": _standard,
    "separable": SeparableConv,
    "grouped": GroupedConv,
    "shift": ShiftConv,
}


def create_conv2d(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: bool = False,
    conv: str = "standard",
    conv_impl: str = "torch",
    groups: int = 1,
) -> nn.Module:
    """A k×k convolution from in_ch to out_ch of kind `conv` (one of CONV_KINDS); 1×1 convolutions stay standard."""
    spec = ConvSpec(in_ch, out_ch, kernel_size, stride, padding, dilation, bias, conv_impl, groups)
    return CONV_KINDS["standard" if kernel_size == 1 else conv](spec)


class ConvBNAct(nn.Sequential):
    """Conv (of any kind) -> BatchNorm2d -> ReLU, the unit every classifier here is built from."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, *, act: bool = True, **settings: Any
    ) -> None:
        """`settings`: create_conv2d's others (padding, dilation, bias, conv, conv_impl, groups), by name."""
        layers: list[nn.Module] = [
            create_conv2d(in_ch, out_ch, kernel_size, stride, **settings),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
