"""Anime faces: a folder of images (any size, flat or nested) decoded once into a uint8 cache.

Images are resized so the shorter side is `image_size`, centre-cropped to a square and
scaled to [-1, 1] by the loader (mean 0.5, std 0.5). The first run decodes every file into
one .npy array under `cache_dir`, keyed by the file list, sizes, modification times and
`image_size`; later runs load it in a fraction of a second, and any change to the folder
makes a new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from convlab.core.errors import ConvlabError
from convlab.core.io import write_atomic
from convlab.data.base import ImageDataset

log = logging.getLogger(__name__)
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def list_images(root: Path) -> list[Path]:
    """Regular image files under `root`, recursively, in a stable order (FIFOs and devices are never opened)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def decode(path: Path, size: int) -> np.ndarray | None:
    """One file -> (3, size, size) uint8, or None if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except Exception:  # corrupt, truncated, not an image, or a decompression bomb: decoders raise many types
        return None


class AnimeFaces(ImageDataset):
    """Unlabelled face images for GANs; one class, no test split (the validation split stands in)."""

    class_names = ("face",)

    def __init__(
        self, root: str = "data/anime-faces", image_size: int = 64, cache_dir: str = "~/.cache/convlab", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.image_size, self.cache_dir = Path(root), image_size, Path(cache_dir).expanduser()

    def _files(self) -> list[Path]:
        how = "set data.root to a folder of face images (jpg, png or webp; subfolders are searched)"
        if self.root.exists() and not self.root.is_dir():
            raise ConvlabError(f"anime_faces: data.root {self.root} is a file, not a folder; {how}")
        if not self.root.is_dir():
            raise ConvlabError(f"anime_faces: no folder {self.root}; {how}")
        try:
            files = list_images(self.root)
        except OSError as e:
            raise ConvlabError(f"anime_faces: cannot list {self.root} ({e.strerror or e}); {how}") from None
        if not files:
            raise ConvlabError(f"anime_faces: no images (jpg, png, webp) found under {self.root}; {how}")
        return files

    def cache_path(self, files: list[Path]) -> Path:
        """The cache file for exactly these files (names, sizes, mtimes) at this image size."""
        h = hashlib.sha256(f"v{CACHE_VERSION} {self.image_size}".encode())
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}|{st.st_size}|{st.st_mtime_ns};".encode())
        folder = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return self.cache_dir / f"anime_faces-{folder}-{self.image_size}px-{h.hexdigest()[:16]}.npy"

    def load(self) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        """Decoded images from the cache, decoding the folder first when the cache is missing or stale."""
        files = self._files()
        cache = self.cache_path(files)
        images = self._read_cache(cache, len(files))
        if images is None:
            images = self._decode_all(files, cache)
        return torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long), None, None

    def _read_cache(self, cache: Path, max_images: int) -> np.ndarray | None:
        """The cached images, or None when the cache is missing, damaged or not (n, 3, size, size) uint8."""
        if not cache.is_file():  # absent, or a FIFO or folder in its place that must not be opened
            return None
        try:
            # Memory-mapped first, so a header that claims a huge array costs nothing before the checks below.
            mapped = np.load(cache, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        expected = (3, self.image_size, self.image_size)
        if (
            not isinstance(mapped, np.ndarray)
            or mapped.dtype != np.uint8
            or mapped.shape[1:] != expected
            or not 0 < len(mapped) <= max_images
        ):
            log.info(
                "anime_faces: cache %s is not %d or fewer uint8 images of shape %s; decoding again",
                cache,
                max_images,
                expected,
            )
            return None
        images = np.array(mapped)  # a copy in memory: the file may be replaced while training runs
        log.info("anime_faces: %d images from cache %s", len(images), cache)
        return images

    def _decode_all(self, files: list[Path], cache: Path) -> np.ndarray:
        # PIL only warns about images between MAX_IMAGE_PIXELS and twice that; as errors they count as unreadable.
        # The filter list is process-wide, so setting it around the whole pool covers the worker threads.
        with warnings.catch_warnings(), ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            decoded = list(pool.map(lambda f: decode(f, self.image_size), files))
        bad = [f for f, im in zip(files, decoded, strict=True) if im is None]  # pool.map: one result per file
        if len(bad) == len(files):
            raise ConvlabError(
                f"anime_faces: none of the {len(files)} image files under {self.root} could be decoded; "
                "set data.root to a folder of face images"
            )
        if bad:
            log.warning(
                "anime_faces: skipped %d unreadable file(s) of %d under %s (first: %s)",
                len(bad),
                len(files),
                self.root,
                bad[0].name,
            )
        images = np.stack([im for im in decoded if im is not None])
        log.info("anime_faces: decoded %d images from %s", len(images), self.root)
        try:
            # Older caches of this folder at this size are stale now (other sizes stay): drop them,
            # then write atomically.
            cache.parent.mkdir(parents=True, exist_ok=True)
            for old in cache.parent.glob(cache.name.rsplit("-", 1)[0] + "-*.npy"):
                old.unlink()
            write_atomic(cache, lambda tmp: _save_npy(tmp, images))
        except OSError as e:
            log.warning(
                "anime_faces: could not write the cache %s (%s); set data.cache_dir to a writable folder", cache, e
            )
        return images


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a bare name
        np.save(f, array)
