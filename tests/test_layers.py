"""The hand-written convolution against torch's, and the conv-BN-act block."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlab.models.layers import ConvBNAct, ManualConv2d, conv2d_im2col, conv_class

GRID = list(itertools.product([1, 2], [0, 1, 2], [1, 2, 3], [1, 2, 4], [True, False]))


@pytest.mark.parametrize("stride,padding,dilation,groups,bias", GRID)
def test_im2col_matches_conv2d(stride: int, padding: int, dilation: int, groups: int, bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 13, 11)
    w = torch.randn(12, 8 // groups, 3, 3)
    b = torch.randn(12) if bias else None
    expected = F.conv2d(x, w, b, stride, padding, dilation, groups)
    got = conv2d_im2col(x, w, b, stride, padding, dilation, groups)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_im2col_rectangular_kernel_and_asymmetric_settings() -> None:
    torch.manual_seed(1)
    x, w = torch.randn(3, 4, 10, 12), torch.randn(6, 2, 3, 5)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    torch.testing.assert_close(conv2d_im2col(x, w, None, **kw), F.conv2d(x, w, None, **kw), atol=1e-5, rtol=1e-5)


def test_im2col_gradcheck_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d_im2col(x, w, b, 2, 1, 2, 2), (x, w, b))


def test_im2col_gradients_match_torch() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    ref = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2)
    mine = ManualConv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2)
    mine.load_state_dict(ref.state_dict())  # same parameter names: checkpoints move between the two
    ref(x).square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    mine(x).square().sum().backward()
    torch.testing.assert_close(x.grad, gx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mine.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)


def test_conv_impl_choice() -> None:  # a wrong model.conv_impl: tests/test_validation.py
    assert conv_class("manual") is ManualConv2d and conv_class("torch") is nn.Conv2d


def test_conv_bn_act_shape_and_parts() -> None:
    block = ConvBNAct(3, 16, 3, stride=2, padding=1, conv_impl="manual")
    assert isinstance(block[0], ManualConv2d) and isinstance(block[1], nn.BatchNorm2d) and isinstance(block[2], nn.ReLU)
    assert block(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16, 16)
