"""The anime-face folder: decoding, the decode-once cache, unreadable files, clear errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from convlab.core.errors import ConvlabError
from convlab.data import anime_faces
from convlab.data.anime_faces import AnimeFaces
from convlab.run.runner import train
from tests.conftest import make_cfg


@pytest.fixture
def faces(tmp_path: Path, faces_256: Path) -> Path:
    """40 real faces in a nested folder, some re-encoded as PNG and WebP, one with a non-square size."""
    root = tmp_path / "faces"
    (root / "a" / "b").mkdir(parents=True)
    for i in range(40):
        src = faces_256 / f"{i}.jpg"
        if i % 10 == 1:
            Image.open(src).save(root / "a" / f"{i}.png")
        elif i % 10 == 2:
            Image.open(src).save(root / "a" / "b" / f"{i}.webp")
        elif i == 3:
            Image.open(src).resize((120, 80)).save(root / f"{i}.jpg")
        else:
            shutil.copy(src, root / f"{i}.jpg")
    return root


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    real = anime_faces.decode

    def counting(path: Path, size: int):
        calls["n"] += 1
        return real(path, size)

    monkeypatch.setattr(anime_faces, "decode", counting)
    return calls


def test_decodes_every_format_resized_and_cropped(faces: Path, tmp_path: Path) -> None:
    x, y, x_test, _ = AnimeFaces(root=str(faces), image_size=32, cache_dir=str(tmp_path / "c")).load()
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and x_test is None
    assert torch.equal(y, torch.zeros(40, dtype=torch.long))
    assert x.float().std() > 20  # real pictures, not blank frames


def test_cache_is_reused_then_rebuilt_when_the_folder_changes(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_decodes(monkeypatch)
    cache = tmp_path / "c"
    first = AnimeFaces(root=str(faces), image_size=32, cache_dir=str(cache)).load()[0]
    assert calls["n"] == 40 and len(list(cache.glob("*.npy"))) == 1
    second = AnimeFaces(root=str(faces), image_size=32, cache_dir=str(cache)).load()[0]
    assert calls["n"] == 40 and torch.equal(first, second)  # nothing decoded again
    shutil.copy(faces / "0.jpg", faces / "a" / "extra.jpg")
    third = AnimeFaces(root=str(faces), image_size=32, cache_dir=str(cache)).load()[0]
    assert calls["n"] == 81 and len(third) == 41
    assert len(list(cache.glob("*.npy"))) == 1  # the stale cache of this folder was replaced
    AnimeFaces(root=str(faces), image_size=16, cache_dir=str(cache)).load()
    assert calls["n"] == 122 and len(list(cache.glob("*.npy"))) == 2  # another image size is another cache
    AnimeFaces(root=str(faces), image_size=32, cache_dir=str(cache)).load()
    assert calls["n"] == 122  # switching back reuses the 32-pixel cache


def test_unreadable_files_are_skipped_and_counted_once(
    faces: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = (faces / "0.jpg").read_bytes()
    (faces / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (faces / "a" / "text.png").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        x = AnimeFaces(root=str(faces), image_size=32, cache_dir=str(tmp_path / "c")).load()[0]
    assert len(x) == 40
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 unreadable file(s) of 42" in warnings[0].getMessage()


def test_missing_empty_and_unreadable_folders(tmp_path: Path) -> None:
    with pytest.raises(ConvlabError, match=r"no folder .*nowhere; set data.root"):
        AnimeFaces(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c")).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvlabError, match=r"no images \(jpg, png, webp\) found under .*empty"):
        AnimeFaces(root=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")).load()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("nope")
    with pytest.raises(ConvlabError, match="none of the 1 image files"):
        AnimeFaces(root=str(tmp_path / "junk"), cache_dir=str(tmp_path / "c")).load()


def test_a_classifier_refuses_unlabelled_faces(faces_256: Path, tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        "model=plain_cnn",
        "data=anime_faces",
        f"data.root={faces_256}",
        f"data.cache_dir={tmp_path}",
        "data.image_size=32",
    )
    with pytest.raises(
        ConvlabError, match=r"model=plain_cnn is a classifier, but the data has 1 class \(face\).*model=dcgan"
    ):
        train(cfg)
