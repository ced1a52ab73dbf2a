"""The hand-written convolution against torch's, and the conv-BN-act block."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlab.models.layers import CONV_KINDS, ConvBNAct, ManualConv2d, Shift, conv2d_im2col, conv_class, create_conv2d

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


KINDS = sorted(CONV_KINDS)


def weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cin,cout,k,g", [(64, 64, 3, 4), (32, 64, 3, 2), (16, 8, 5, 8)])
def test_parameter_counts_per_kind_follow_the_formulas(cin: int, cout: int, k: int, g: int) -> None:
    count = {kind: weights(create_conv2d(cin, cout, k, padding=k // 2, conv=kind, groups=g)) for kind in KINDS}
    assert count["standard"] == cin * cout * k * k
    assert count["separable"] == cin * k * k + 2 * cin + cin * cout  # depthwise, its BatchNorm, pointwise
    assert count["grouped"] == cin * cout * k * k // g
    assert count["shift"] == cin * cout  # the shift itself has none
    if (cin, cout, k) == (64, 64, 3):  # the course notes' example: 4,672 weights against 36,864
        assert count["separable"] - 2 * cin == 4_672 and count["standard"] == 36_864


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (1, 0, 2), (2, 1, 1), (2, 2, 3)])
@pytest.mark.parametrize("channels", [9, 20])  # 20 = 2 per offset + 2 left at the centre
def test_shift_is_a_depthwise_convolution_with_one_hot_kernels(
    channels: int, stride: int, padding: int, dilation: int
) -> None:
    torch.manual_seed(0)
    shift = Shift(channels, 3, stride, padding, dilation)
    x = torch.randn(2, channels, 11, 10)
    one_hot = torch.zeros(channels, 1, 3, 3)
    for i, j, a, b in shift.parts:
        one_hot[a:b, 0, i, j] = 1
    assert (one_hot.sum((1, 2, 3)) == 1).all()  # every channel moved by exactly one offset
    assert len({(i, j) for i, j, _, _ in shift.parts}) == 9  # all nine offsets used
    torch.testing.assert_close(shift(x), F.conv2d(x, one_hot, None, stride, padding, dilation, groups=channels))
    assert weights(shift) == 0


def test_shift_passes_gradcheck() -> None:
    x = torch.randn(1, 9, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Shift(9, 3, padding=1, dilation=2), (x,))


def test_grouped_convolution_shuffles_its_groups() -> None:
    torch.manual_seed(0)
    layer = create_conv2d(8, 12, 3, padding=1, conv="grouped", groups=4)
    x = torch.randn(2, 8, 7, 7)
    conv = layer[0]
    y = F.conv2d(x, conv.weight, None, 1, 1, 1, 4)  # (N, 12, H, W): 4 groups of 3 channels
    shuffled = y.view(2, 4, 3, 7, 7).transpose(1, 2).reshape(2, 12, 7, 7)
    torch.testing.assert_close(layer(x), shuffled)


def test_grouped_channels_that_do_not_split_stop_at_an_assert() -> None:  # the user's error: tests/test_validation.py
    with pytest.raises(AssertionError, match=r"a 8 -> 12 channel convolution does not split into 3 groups"):
        create_conv2d(8, 12, 3, conv="grouped", groups=3)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_and_manual_implementations_agree_for_every_kind(kind: str) -> None:
    torch.manual_seed(0)
    ref = create_conv2d(8, 16, 3, stride=2, padding=2, dilation=2, conv=kind, groups=4).eval()
    manual = create_conv2d(8, 16, 3, stride=2, padding=2, dilation=2, conv=kind, groups=4, conv_impl="manual").eval()
    manual.load_state_dict(ref.state_dict())
    assert any(isinstance(m, ManualConv2d) for m in manual.modules())
    x = torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(manual(x), ref(x), atol=1e-5, rtol=1e-5)


def test_one_by_one_convolutions_stay_standard() -> None:
    assert type(create_conv2d(8, 16, 1, conv="separable")) is nn.Conv2d
