"""Every classifier in conf/model/ builds from its YAML, runs forward and backward, and has the documented size."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convlab.core.build import build
from convlab.models.alexnet import AlexNetLite
from convlab.models.dcgan import DCGAN
from convlab.models.hdc import HDCNet, hdc_problems
from convlab.models.layers import CONV_KINDS, GroupedConv, SeparableConv, ShiftConv
from tests.conftest import REPO, make_cfg

KIND_CLASSES = {"separable": SeparableConv, "grouped": GroupedConv, "shift": ShiftConv}

CLASSIFIERS = sorted(
    p.stem
    for p in (REPO / "conf" / "model").glob("*.yaml")
    if make_cfg("/tmp", f"model={p.stem}").task._target_.endswith("ClassificationTask")
)


def build_model(name: str, tmp_path: Path, *overrides: str, num_classes: int = 10) -> torch.nn.Module:
    cfg = make_cfg(tmp_path, f"model={name}", *overrides)
    return build(cfg.model, "model", num_classes=num_classes, in_channels=3, image_size=32)


def test_all_lab_models_are_configured() -> None:
    assert {"plain_cnn", "hdc", "resnet18", "alexnet_lite"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name: str, kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, tmp_path, f"model.conv={kind}")
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert (
        type(stem) is torch.nn.Conv2d and stem.in_channels == 3 and stem.groups == 1
    )  # the image-reading stem stays standard
    assert kind == "standard" or any(isinstance(m, KIND_CLASSES[kind]) for m in model.modules())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits = model(x)
    assert logits.shape == (4, 10)
    loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_num_classes_comes_from_the_data(name: str, tmp_path: Path) -> None:
    assert build_model(name, tmp_path, num_classes=7).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_manual_convolution_gives_the_same_model(name: str, kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = build_model(name, tmp_path, f"model.conv={kind}").eval()
    manual = build_model(name, tmp_path, "model.conv_impl=manual", f"model.conv={kind}").eval()
    manual.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(manual(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,count", [("plain_cnn", 94_986), ("hdc", 94_986), ("resnet18", 11_173_962)])
def test_parameter_counts(name: str, count: int, tmp_path: Path) -> None:
    assert sum(p.numel() for p in build_model(name, tmp_path).parameters()) == count


def test_alexnet_docstring_states_its_parameter_count() -> None:
    documented = int(re.search(r"total\s+([\d,]+) parameters", AlexNetLite.__doc__).group(1).replace(",", ""))
    assert sum(p.numel() for p in AlexNetLite(10).parameters()) == documented


@pytest.mark.parametrize(
    "build_it,problem",
    [
        (lambda: AlexNetLite(10, image_size=30), "not divisible by 8"),
        (lambda: DCGAN(image_size=48), r"not 4·2\^k"),
        (lambda: HDCNet(10, dilations=[8, 8, 8]), r"model.dilations=\[8, 8, 8\] shrink a 32×32 input below one pixel"),
    ],
    ids=["alexnet", "dcgan", "hdc"],
)
def test_what_the_schema_refuses_stops_the_constructors_at_an_assert(
    build_it: Callable[[], object], problem: str
) -> None:  # the user's errors: tests/test_validation.py
    with pytest.raises(AssertionError, match=problem):
        build_it()


@pytest.mark.parametrize(
    "rates,problems",
    [
        ([1, 2, 5], []),
        ([1, 1, 1], []),
        ([1, 2, 3], []),
        ([2, 4, 8], ["M_2 = 4 > kernel size 3", "common factor 2"]),
        ([2, 2, 2], ["common factor 2"]),
        ([1, 4, 8], ["M_2 = 4"]),
    ],
)
def test_hdc_rule(rates: list[int], problems: list[str]) -> None:
    found = hdc_problems(rates, 3)
    assert len(found) == len(problems)
    for text, expected in zip(found, problems, strict=True):
        assert expected in text


def test_hdc_warns_on_gridding_rates(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        HDCNet(10, dilations=[1, 2, 5])
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        HDCNet(10, dilations=[2, 4, 8])
    assert "[2, 4, 8]" in caplog.text and "hybrid-dilated-convolution rule" in caplog.text


def test_hdc_uses_its_dilations(tmp_path: Path) -> None:
    model = build_model("hdc", tmp_path)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 2, 5]
