"""CIFAR-10 from the official `cifar-10-batches-py` pickles (downloaded and md5-checked if missing)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from convlab.data.base import ImageDataset
from convlab.errors import ConvlabError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle -> (N, 3, 32, 32) uint8 images and (N,) labels."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are channel-major
        labels = np.asarray(d["labels"], dtype=np.int64)
    except FileNotFoundError:
        raise ConvlabError(f"CIFAR-10 file {path} is missing; the folder is incomplete (expected {', '.join(TRAIN_FILES)}, {TEST_FILE})") from None
    except Exception as e:  # truncated or foreign pickles raise many exception types
        raise ConvlabError(f"CIFAR-10 file {path} is unreadable ({type(e).__name__}: {e}); replace it or point data.root elsewhere") from None
    if len(data) != len(labels):
        raise ConvlabError(f"CIFAR-10 file {path} has {len(data)} images but {len(labels)} labels")
    return data, labels


class CIFAR10(ImageDataset):
    """CIFAR-10 read from `root/cifar-10-batches-py` (or `root` itself if it is that folder)."""

    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, root: str = "data", download: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.download = Path(root), download

    def folder(self) -> Path:
        """The batches folder; an existing local folder is used as is, without md5 checks."""
        if self.root.name == FOLDER and self.root.is_dir():
            return self.root
        folder = self.root / FOLDER
        if not folder.is_dir():
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
            raise ConvlabError(f"CIFAR-10 not found in {folder} and the download from {URL} failed ({type(e).__name__}: {e}); offline, {offline}") from None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read the five training batches and the test batch."""
        folder = self.folder()
        train = [_read_batch(folder / name) for name in TRAIN_FILES]
        x_test, y_test = _read_batch(folder / TEST_FILE)
        x = np.concatenate([d for d, _ in train])
        y = np.concatenate([lab for _, lab in train])
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x_test), torch.from_numpy(y_test)
