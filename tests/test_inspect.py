"""`convlab inspect`: layer tables (parameters, MACs, receptive fields) and effective-field pictures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from convlab.app.inspect import inspect_model
from convlab.core.errors import ConvlabError
from convlab.models.analysis import effective_field, field_extent, layer_table
from convlab.models.hdc import HDCNet
from convlab.models.plain_cnn import PlainCNN
from tests.conftest import SMALL, compose_cfg


def inspect_cfg(out: Path, *overrides: str) -> DictConfig:
    return compose_cfg("inspect", *SMALL, f"out={out}", *overrides)


def test_table_counts_every_layer_and_adds_up() -> None:
    model = PlainCNN(10)
    table = layer_table(model, (3, 32, 32))
    rows = {r["name"]: r for r in table["layers"]}
    assert list(rows) == ["features.0", "features.1", "features.2", "pool", "head"]
    assert [rows[f"features.{i}"]["output"] for i in range(3)] == [[32, 30, 30], [64, 28, 28], [128, 26, 26]]
    assert rows["features.1"]["macs"] == 32 * 64 * 9 * 28 * 28 and rows["head"]["macs"] == 128 * 10
    assert sum(r["macs"] for r in rows.values()) == table["total"]["macs"]
    assert sum(r["parameters"] for r in rows.values()) == table["total"]["parameters"] == 94_986
    assert [rows[f"features.{i}"]["receptive_field"] for i in range(3)] == [3, 5, 7] and rows["pool"][
        "receptive_field"
    ] == "global"


@pytest.mark.parametrize(
    "kind,layer_macs",
    [
        ("standard", 32 * 64 * 9 * 28 * 28),
        ("shift", 32 * 64 * 28 * 28),
        ("separable", 32 * 9 * 28 * 28 + 32 * 64 * 28 * 28),
    ],
)
@pytest.mark.parametrize("impl", ["torch", "manual"])
def test_macs_of_each_kind_and_implementation(kind: str, layer_macs: int, impl: str) -> None:
    rows = {r["name"]: r for r in layer_table(PlainCNN(10, conv=kind, conv_impl=impl), (3, 32, 32))["layers"]}
    assert rows["features.1"]["macs"] == layer_macs  # the shift itself adds none; im2col's matmul counts like a conv
    assert rows["features.1"]["kind"].startswith("standard" if kind == "standard" else kind) and (
        "manual" in rows["features.1"]["kind"]
    ) == (impl == "manual")


def test_resnet_fields_follow_the_main_path_and_skip_shortcuts() -> None:
    from convlab.models.resnet import ResNet18

    rows = {r["name"]: r for r in layer_table(ResNet18(10), (3, 32, 32))["layers"]}
    assert rows["stem"]["receptive_field"] == 3 and rows["stages.0.conv2"]["receptive_field"] == 7
    assert (
        rows["stages.2.conv1"]["jump"] == 2 and rows["stages.2.shortcut"]["receptive_field"] is None
    )  # stride 2 in stage 2
    assert rows["stages.7.conv2"]["jump"] == 8


@pytest.mark.parametrize("rates,size,holes", [([1, 2, 5], 17, False), ([2, 4, 8], 29, True)])
def test_effective_field_shows_hdc_gridding(rates: list[int], size: int, holes: bool) -> None:
    torch.manual_seed(0)
    field = effective_field(HDCNet(10, dilations=rates), torch.randn(16, 3, 32, 32), "features.2")
    extent = field_extent(field)
    assert extent["size"] == [size, size]
    assert (extent["holes"] > 0) == holes  # [2,4,8] reaches only every other pixel of its 29×29 box
    if holes:
        assert extent["holes"] == size * size - 15 * 15


def test_inspect_writes_json_and_heatmap(tmp_path: Path) -> None:
    result, title = inspect_model(inspect_cfg(tmp_path / "out", "model=hdc", "model.conv=shift", "erf_images=8"))
    saved = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert saved["conv"] == "shift" and saved["total"] == result["total"] and saved["unit"].startswith("MACs = ")
    assert (tmp_path / "out" / "effective_field.png").read_bytes()[:4] == b"\x89PNG"
    assert saved["effective_field"]["size"] == [17, 17] and "initial weights" in title
    assert saved["effective_field"]["source"] == "synthetic test images"  # generated: always there


def test_inspect_refuses_a_gan(tmp_path: Path) -> None:
    with pytest.raises(ConvlabError, match="model=dcgan is a GAN; convlab inspect reads classifiers"):
        inspect_model(inspect_cfg(tmp_path, "model=dcgan"))


def test_inspect_without_the_dataset_uses_stand_ins_and_downloads_nothing(tmp_path: Path) -> None:
    # README's own example, where no data folder exists: the table needs only shapes, the field stand-in images
    env = {k: v for k, v in os.environ.items() if k != "CONVLAB_DATA"} | {"HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "convlab", "inspect", "model=hdc", "device=cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    said = f"synthetic stand-ins (cifar10 not found: no folder {tmp_path / 'data' / 'cifar-10-batches-py'}"
    assert "features.2" in proc.stdout and f"effective-field images: {said}" in proc.stdout
    saved = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert saved["effective_field"]["source"].startswith(said) and saved["total"]["parameters"] == 94_986
    assert (tmp_path / "inspect" / "effective_field.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "data").exists()  # neither created nor downloaded into


def test_inspect_reads_real_images_when_they_are_there(tmp_path: Path, cifar_root: Path) -> None:
    result, _ = inspect_model(compose_cfg("inspect", "model=hdc", f"data.root={cifar_root}", f"out={tmp_path}"))
    assert result["effective_field"]["source"] == f"cifar10 test images from data.root={cifar_root}"
    assert result["effective_field"]["size"] == [17, 17]


def test_inspect_never_downloads_and_reports_a_broken_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils

    def no_download(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("inspect tried to download")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", no_download)
    result, _ = inspect_model(compose_cfg("inspect", "model=hdc", f"data.root={tmp_path}", f"out={tmp_path / 'out'}"))
    assert result["effective_field"]["source"].startswith("synthetic stand-ins (cifar10 not found")
    # a folder that is there but incomplete is not absent: the usual one-line error, no quiet stand-ins
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConvlabError, match="data_batch_1 is missing; the folder is incomplete"):
        inspect_model(compose_cfg("inspect", "model=hdc", f"data.root={tmp_path}", f"out={tmp_path / 'out'}"))
