"""Datasets and the tensor loader: splits, determinism, augmentation statistics, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from convlab.core.build import build
from convlab.core.errors import ConvlabError
from convlab.data import cifar10
from convlab.data.cifar10 import CIFAR10
from convlab.data.loader import TensorLoader, apply_crops, draw_crops
from convlab.data.synthetic import Synthetic, generate
from tests.conftest import make_cfg


def test_synthetic_is_fixed_by_its_seed() -> None:
    x1, y1 = generate(300, seed=3)
    x2, y2 = generate(300, seed=3)
    x3, _ = generate(300, seed=4)
    assert x1.dtype == torch.uint8 and x1.shape == (300, 3, 32, 32) and y1.shape == (300,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert set(y1.tolist()) == set(range(10))


def test_synthetic_config_builds_with_ten_named_classes(tmp_path: Path) -> None:
    data = build(make_cfg(tmp_path, "data=synthetic", "data.num_train=400", "data.num_test=100").data, "data")
    info = data.info
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert len(set(info.class_names)) == 10
    sizes = {k: len(v[1]) for k, v in data.splits().items()}
    assert sizes == {"train": 360, "val": 40, "test": 100}


def test_validation_split_is_fixed_and_disjoint() -> None:
    a, b = Synthetic(num_train=500, num_test=50), Synthetic(num_train=500, num_test=50)
    va, tr = a.splits()["val"][0], a.splits()["train"][0]
    assert torch.equal(va, b.splits()["val"][0])
    flat_val, flat_train = {bytes(img.numpy()) for img in va}, {bytes(img.numpy()) for img in tr}
    assert not flat_val & flat_train


def _loader(n: int = 103, **kw: object) -> TensorLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return TensorLoader(images, torch.arange(n), kw.pop("batch_size", 10), mean=(0, 0, 0), std=(1 / 255,) * 3, **kw)


def test_loader_covers_each_item_once_and_reshuffles_per_epoch() -> None:
    loader = _loader(shuffle=True, seed=1)
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(103)) and len(loader) == 11
    loader.set_epoch(2)
    second = torch.cat([y for _, y in loader])
    assert not torch.equal(first, second)
    loader.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in loader]), first)  # epoch k is reproducible: exact resume


def test_loader_batches_normalised_floats_matching_labels() -> None:
    x, y = next(iter(_loader(shuffle=True)))
    assert x.dtype == torch.float32 and x.shape == (10, 3, 4, 4)
    # mean 0, std 1/255: x_norm = pixel value, and each image was filled with its own index.
    assert torch.equal(x[:, 0, 0, 0].long(), y)


def test_loader_drop_last_and_sharding() -> None:
    assert len(_loader(drop_last=True)) == 10
    assert len(_loader(n=7, drop_last=True)) == 1  # never drop the only batch
    shards = []
    for rank in range(2):
        loader = _loader(shuffle=True, rank=rank, world_size=2, seed=5)
        loader.set_epoch(3)
        shards.append(torch.cat([y for _, y in loader]))
    assert len(shards[0]) == len(shards[1]) == 51
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_crops_equal_torchvision_pad_crop_flip() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    dy, dx, flipped = draw_crops(16, 4, True, g, x.device)
    out = apply_crops(x, 4, dy, dx, flipped)
    for i in range(16):
        ref = TF.crop(TF.pad(x[i], [4]), int(dy[i]), int(dx[i]), 32, 32)
        ref = TF.horizontal_flip(ref) if flipped[i] else ref
        assert torch.equal(out[i], ref)


def test_crop_and_flip_statistics_match_torchvision_defaults() -> None:
    # RandomCrop(32, padding=4): offsets uniform on 0..8; RandomHorizontalFlip(): p = 0.5.
    g = torch.Generator().manual_seed(0)
    dy, dx, flipped = draw_crops(18_000, 4, True, g, torch.device("cpu"))
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=9).float()
        assert len(counts) == 9 and (counts / 18_000 - 1 / 9).abs().max() < 0.012
    assert abs(flipped.float().mean().item() - 0.5) < 0.015
    _, _, never = draw_crops(100, 4, False, g, torch.device("cpu"))
    assert not never.any()


def test_eval_splits_are_not_augmented() -> None:
    data = Synthetic(num_train=200, num_test=50, augment={"crop_padding": 4, "flip": True})
    x_ref = data.splits()["val"][0]
    x, _ = next(iter(data.loaders(1000, torch.device("cpu"))["val"]))
    expected = (x_ref.float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, expected)


def test_cifar10_reads_the_real_subset(cifar_root: Path) -> None:
    data = CIFAR10(root=str(cifar_root))
    splits = data.splits()
    assert len(splits["train"][1]) + len(splits["val"][1]) == 5085 and len(splits["test"][1]) == 1017
    assert data.info.num_classes == 10 and data.info.class_names[0] == "airplane"
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    first = np.asarray(raw["data"][0], dtype=np.uint8).reshape(3, 32, 32)
    assert torch.equal(splits["test"][0][0], torch.from_numpy(first)) and splits["test"][1][0] == raw["labels"][0]
    # The batches folder itself works as data.root too.
    assert len(CIFAR10(root=str(cifar_root / "cifar-10-batches-py")).splits()["test"][1]) == 1017


def test_cifar10_missing_folder_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConvlabError, match=r"no folder .*cifar-10-batches-py.*data=synthetic"):
        CIFAR10(root=str(tmp_path), download=False).load()

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(ConvlabError) as err:
        CIFAR10(root=str(tmp_path / "data")).load()
    msg = str(err.value)
    assert str(tmp_path / "data" / "cifar-10-batches-py") in msg and cifar10.URL in msg and "data=synthetic" in msg
    assert "\n" not in msg


def test_cifar10_corrupt_batch_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*cifar10.TRAIN_FILES, cifar10.TEST_FILE]:
        (folder / name).write_bytes(b"\x80\x02 not a pickle")
    with pytest.raises(ConvlabError, match=r"data_batch_1 is unreadable"):
        CIFAR10(root=str(tmp_path)).load()
