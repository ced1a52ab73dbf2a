"""Shared building blocks: the hand-written convolution and conv-BN-activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convlab.errors import ConfigError


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
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            raise ConfigError("the manual convolution supports integer zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the hand-written im2col kernel."""
        return conv2d_im2col(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


CONV_IMPLS: dict[str, type[nn.Conv2d]] = {"torch": nn.Conv2d, "manual": ManualConv2d}


def conv_class(conv_impl: str) -> type[nn.Conv2d]:
    """The convolution class for `model.conv_impl` (one of CONV_IMPLS, checked by convlab.schema)."""
    return CONV_IMPLS[conv_impl]


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU, the unit every classifier here is built from."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
        conv_impl: str = "torch",
        act: bool = True,
    ) -> None:
        conv = conv_class(conv_impl)(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=bias)
        layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_ch)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
