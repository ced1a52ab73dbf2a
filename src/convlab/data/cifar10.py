"""CIFAR-10 from the official `cifar-10-batches-py` pickles (downloaded and md5-checked if missing)."""

from __future__ import annotations

import os
import pickle
import reprlib
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

try:  # numpy 2 moved the array internals to numpy._core; pickles from either version name one of the two
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]

from convlab.core.errors import ConvlabError
from convlab.data.base import DataInfo, ImageDataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_SIZE = 32  # every CIFAR-10 image: convlab.run.schema checks the models against it, as data.image_size elsewhere
FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class _NdarrayToken:
    """What `numpy.ndarray` means inside a batch pickle: an argument for _reconstruct, never callable with a shape."""

    __slots__ = ()


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), dtype) and then sets its state from the file's bytes;
    # the empty shape is enforced so that a hostile file cannot ask for a huge allocation here.
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"_reconstruct of {type(subtype).__name__}, not of numpy.ndarray")
    return multiarray._reconstruct(np.ndarray, (0,), dtype)


def _encode(text: str, encoding: str) -> bytes:
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, "latin1"); no other codec is needed.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The only globals a pickled dict of numpy arrays, lists and numbers needs (numpy 1 and 2, protocols 2 to 5).
# Each is bounded by the file's own bytes: nothing here runs code or allocates more than the file holds.
SAFE_GLOBALS = {
    **{(f"{m}.multiarray", "_reconstruct"): _reconstruct for m in ("numpy.core", "numpy._core")},
    **{(f"{m}.multiarray", "scalar"): multiarray.scalar for m in ("numpy.core", "numpy._core")},
    **{(f"{m}.numeric", "_frombuffer"): numeric._frombuffer for m in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the original files are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        """The allowed global, or a one-line refusal naming it (a hostile pickle would run it)."""
        if (module, name) not in SAFE_GLOBALS:
            raise ConvlabError(
                f"CIFAR-10 file {self.path} asks for the Python global {module}.{name}, "
                "which a batch file never needs; "
                "only numpy arrays, lists and numbers are read (the file may be hostile: do not unpickle it elsewhere)"
            )
        return SAFE_GLOBALS[module, name]


def _open_regular(path: Path) -> BinaryIO:
    # A FIFO would block open() forever and a device could stream without end: stat first (following symlinks).
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConvlabError(
            f"CIFAR-10 file {path} is missing; "
            f"the folder is incomplete (expected {', '.join(TRAIN_FILES)}, {TEST_FILE})"
        ) from None
    except OSError as e:
        raise ConvlabError(
            f"CIFAR-10 file {path} is unreadable ({e.strerror or e}); replace it or point data.root elsewhere"
        ) from None
    if not stat.S_ISREG(mode):
        kind = next((text for test, text in FILE_KINDS if test(mode)), "a special file")
        raise ConvlabError(
            f"CIFAR-10 file {path} is {kind}, not a regular file; "
            "replace it with the batch file or point data.root elsewhere"
        )
    return open(path, "rb")


def _labels(raw: object, path: Path) -> np.ndarray:
    """The labels as int64, after checking each is an integer class index (the first bad one is named)."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1:
            raise ConvlabError(
                f"CIFAR-10 file {path} holds labels of shape {raw.shape}; expected a list of integers 0 to 9"
            )
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise ConvlabError(
            f"CIFAR-10 file {path} holds labels of type {type(raw).__name__}; expected a list of integers 0 to 9"
        )
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < len(CIFAR10.class_names):
            shown = int(v) if isinstance(v, (int, np.integer)) else reprlib.repr(v)
            raise ConvlabError(f"CIFAR-10 file {path} has label {shown} at index {i}; labels are integers 0 to 9")
    return np.asarray(raw, dtype=np.int64)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle -> (N, 3, 32, 32) uint8 images and (N,) labels; anything else is one line naming the file."""
    try:
        with _open_regular(path) as f:
            d = _BatchUnpickler(f, path).load()
    except ConvlabError:
        raise
    except Exception as e:  # truncated or foreign pickles raise many exception types
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the message held
        raise ConvlabError(
            f"CIFAR-10 file {path} is unreadable ({reason}); replace it or point data.root elsewhere"
        ) from None
    if not isinstance(d, dict) or not {"data", "labels"} <= d.keys():
        found = (
            f"a dict with keys {reprlib.repr(sorted(map(str, d)))}"
            if isinstance(d, dict)
            else f"an object of type {type(d).__name__}"
        )
        raise ConvlabError(f"CIFAR-10 file {path} holds {found}; expected a dict with 'data' and 'labels'")
    data = d["data"]
    # Refused rather than cast: float pixels would wrap, and channels-last rows would reshape into garbage.
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * IMAGE_SIZE**2
    ):
        found = (
            f"dtype {data.dtype} and shape {data.shape}"
            if isinstance(data, np.ndarray)
            else f"type {type(data).__name__}"
        )
        raise ConvlabError(
            f"CIFAR-10 file {path} holds data of {found}; "
            "expected uint8 of shape (N, 3072), one channel-major row per image"
        )
    labels = _labels(d["labels"], path)
    if len(data) != len(labels):
        raise ConvlabError(f"CIFAR-10 file {path} has {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


class CIFAR10(ImageDataset):
    """CIFAR-10 read from `root/cifar-10-batches-py` (or `root` itself if it is that folder)."""

    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, root: str = "data", download: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.download = Path(root), download

    def info_from_config(self) -> DataInfo:
        """Ten classes of 3×32×32 images: known without the files."""
        return DataInfo(len(self.class_names), 3, IMAGE_SIZE, self.class_names, self.mean, self.std)

    def _local(self) -> Path | None:
        """The batches folder already on disk: data.root itself or data.root/cifar-10-batches-py; None if neither."""
        if self.root.name == FOLDER and self.root.is_dir():
            return self.root
        return self.root / FOLDER if (self.root / FOLDER).is_dir() else None

    def absent(self) -> str | None:
        """Why folder() would have to download the batches ("no folder ROOT/cifar-10-batches-py"); None if not."""
        if self._local() or (self.root.exists() and not self.root.is_dir()):
            return None  # a file at data.root is a mistake, not absent data: folder() names it
        return f"no folder {(self.root / FOLDER).absolute()}"

    def folder(self) -> Path:
        """The batches folder; an existing local folder is used as is, without md5 checks."""
        local = self._local()
        if local is not None:
            return local
        if self.root.exists() and not self.root.is_dir():
            raise ConvlabError(
                f"CIFAR-10: data.root {self.root} is a file; "
                f"point data.root at a folder that holds {FOLDER}/ or use data=synthetic"
            )
        folder = self.root / FOLDER
        self._fetch(folder)
        return folder

    def _fetch(self, folder: Path) -> None:
        offline = f"point data.root at a folder that holds {FOLDER}/ or use data=synthetic"
        if not self.download:
            raise ConvlabError(f"CIFAR-10 not found: no folder {folder} (data.download=false); {offline}")
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            # torchvision checks the archive's md5 before extracting it.
            download_and_extract_archive(URL, download_root=str(self.root), md5=MD5)
        except Exception as e:
            raise ConvlabError(
                f"CIFAR-10 not found in {folder} and the download from {URL} failed "
                f"({type(e).__name__}: {e}); offline, {offline}"
            ) from None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read the five training batches and the test batch."""
        folder = self.folder()
        train = [_read_batch(folder / name) for name in TRAIN_FILES]
        x_test, y_test = _read_batch(folder / TEST_FILE)
        x = np.concatenate([d for d, _ in train])
        y = np.concatenate([lab for _, lab in train])
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test), torch.from_numpy(y_test)
