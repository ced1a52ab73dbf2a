"""A plain PyTorch + torchvision training script: the yardstick convlab's speed is measured against.

It is what a student writes for `convlab train model=plain_cnn data=cifar10` without convlab:
torchvision's CIFAR10 with RandomCrop + flip + ToTensor + Normalize run per image in DataLoader
workers, SGD (Nesterov) with per-batch cosine decay, a validation pass each epoch, a test pass,
the weights saved. Only the model class is convlab's, so both train the same network; nothing
else of convlab is imported (no allocator setting, no device-resident loader). It runs in its
own process, as a user's script would:

    python scripts/plain_torch_baseline.py --data ../shared/data/cifar10-subset --epochs 3
    python scripts/plain_torch_baseline.py --data DIR --epochs 1 --limit-train-batches 1   # start-up cost
    python scripts/plain_torch_baseline.py --data DIR --bench 30,5,3   # images/s only (convlab bench's loop 3)

With --bench, --data may also be an .npz of uint8 `images` (N, C, H, W), `labels`, `mean` and `std`:
convlab bench hands over any dataset's training images that way.

scripts/plain_torch_baseline.py (or `python -m convlab.app.baseline`) runs this file;
docs/BENCHMARKS.md has the measurements.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, random_split
from torchvision import transforms as T

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PLAIN_CNN = {"_target_": "convlab.models.plain_cnn.PlainCNN", "channels": [32, 64, 128]}
FOLDER = "cifar-10-batches-py"
CIFAR_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
MAX_SEED = 2**32 - 1  # as convlab's seed
Refused = argparse.ArgumentTypeError  # argparse prints it as "argument --NAME: MESSAGE" and exits with code 2


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `minimum` (to `maximum`, if given)."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        value = int(text) if re.fullmatch(r"\s*[-+]?\d+\s*", text) else None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise Refused(f"{text!r} is not allowed; expected {allowed}")
        return value

    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text) if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", text) else 0.0
    if not (math.isfinite(value) and value > 0):
        raise Refused(f"{text!r} is not allowed; expected a finite number > 0, such as 0.05")
    return value


def bench_counts(text: str) -> tuple[int, ...]:
    """An argparse type: STEPS,WARMUP,REPEATS, three integers (STEPS and REPEATS >= 1, WARMUP >= 0)."""
    counts = tuple(int(v) for v in text.split(",")) if re.fullmatch(r"\d+,\d+,\d+", text) else (0, 0, 0)
    if min(counts[0], counts[2]) < 1:
        raise Refused(f"{text!r} is not allowed; expected STEPS,WARMUP,REPEATS: integers >= 0, STEPS and REPEATS >= 1")
    return counts


def device(text: str) -> str:
    """An argparse type: cpu, cuda, cuda:N or mps, present on this machine."""
    if not DEVICE.fullmatch(text):
        raise Refused(f"{text!r} is not a device; expected cpu, cuda, cuda:N or mps")
    n, index = torch.cuda.device_count(), torch.device(text).index or 0
    if text.startswith("cuda") and index >= n:
        there = f"{n} CUDA device(s), cuda:0 to cuda:{n - 1}" if n else "no CUDA device; use cpu"
        raise Refused(f"{text!r} is not on this machine, which has {there}")
    if text == "mps" and not torch.backends.mps.is_available():
        raise Refused(f"{text!r} is not available on this machine; use cpu")
    return text


def cifar_folder(text: str) -> str:
    """An argparse type: a folder holding cifar-10-batches-py/ (or that folder); returns the folder holding it."""
    path = Path(text)
    if not path.is_dir():
        raise Refused(
            f"{text!r} {'is not a' if path.exists() else 'names no'} folder; expected a folder holding {FOLDER}/"
        )
    folder = path if path.name == FOLDER else path / FOLDER
    if missing := [name for name in CIFAR_FILES if not (folder / name).is_file()]:
        raise Refused(f"{text!r} holds no complete {FOLDER}/ (missing {', '.join(missing)}); expected a folder with it")
    return str(folder.parent)


def data_path(text: str) -> str:
    """An argparse type: an .npz file (for --bench) or a CIFAR-10 folder (see cifar_folder)."""
    if text.endswith(".npz") and not Path(text).is_dir():
        if not Path(text).is_file():
            raise Refused(f"{text!r} names no file; expected an .npz file or a folder holding {FOLDER}/")
        return text
    return cifar_folder(text)


def model_spec(text: str) -> dict:
    """An argparse type: a convlab model config, a JSON object whose "_target_" is a class in convlab.models."""
    example = f"expected a JSON object such as '{json.dumps(PLAIN_CNN)}'"
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise Refused(f"{text!r} is not JSON ({e}); {example}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise Refused(f'{text!r} is not a JSON object with a "_target_" string; {example}')
    module, _, name = spec["_target_"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module.startswith("convlab.models.") else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise Refused(f'"_target_" {spec["_target_"]!r} is not a model class in convlab.models; {example}')
    return spec


def out_file(text: str) -> str:
    """An argparse type: a file path in an existing, writable folder."""
    path = Path(text)
    if not text or path.is_dir():
        raise Refused(f"{text!r} is a folder; expected a file path for the weights, such as baseline.pt")
    if not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
        raise Refused(f"{text!r}: its folder {str(path.parent)!r} does not exist or is not writable")
    return text


def reason(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


class CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10, minus its md5 check (a subset's files differ from the full download's)."""

    def _check_integrity(self) -> bool:
        return True


class ArrayImages(Dataset):
    """uint8 images (N, C, H, W) served as torchvision serves CIFAR10: a PIL image per item, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: T.Compose) -> None:
        self.images, self.labels, self.transform = images.transpose(0, 2, 3, 1), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(
            Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        ), self.labels[i]


def make_model(spec: dict, num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """The network from a convlab model config (model_spec checked it): {"_target_": "convlab.models.X.Y", ...}."""
    spec = {k: v for k, v in spec.items() if k != "name"}
    module, _, name = spec.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **spec
    )


def array_loader(path: str, batch_size: int, workers: int, pin: bool) -> tuple[DataLoader, tuple[int, int, int]]:
    """The augmented train loader of an .npz (see the module docstring), and (classes, channels, size)."""
    with np.load(path) as f:
        images, labels, mean, std = f["images"], f["labels"], f["mean"].tolist(), f["std"].tolist()
    n, c, h, w = images.shape if images.ndim == 4 else (0, 0, 0, 1)
    if images.dtype != np.uint8 or not n or c not in (1, 3) or h != w:
        raise ValueError(f"images of dtype {images.dtype} and shape {images.shape}; expected uint8 (N, 1 or 3, H, H)")
    if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise ValueError(f"labels of dtype {labels.dtype} and shape {labels.shape}; expected N integers >= 0")
    if not (len(mean) == len(std) == images.shape[1] and min(std) > 0):
        raise ValueError(f"mean {mean} and std {std}; expected one each per channel, std > 0")
    tf = T.Compose(
        [T.RandomCrop(images.shape[-1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    kw = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": pin}
    loader = DataLoader(ArrayImages(images, labels, tf), batch_size, shuffle=True, drop_last=True, **kw)
    return loader, (int(labels.max()) + 1, images.shape[1], images.shape[-1])


def loaders(
    root: str, batch_size: int, workers: int, seed: int, pin: bool
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (augmented), validation (10 % of the training images) and test loaders of CIFAR-10."""
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    test_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train_full, plain_full = CIFAR10(root, train=True, transform=train_tf), CIFAR10(root, train=True, transform=test_tf)
    n_val = round(len(train_full) * 0.1)
    split = torch.Generator().manual_seed(seed)
    train_idx, val_idx = random_split(range(len(train_full)), [len(train_full) - n_val, n_val], generator=split)
    train = torch.utils.data.Subset(train_full, list(train_idx))
    val = torch.utils.data.Subset(plain_full, list(val_idx))
    test = CIFAR10(root, train=False, transform=test_tf)
    kw = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": pin}
    return (
        DataLoader(train, batch_size, shuffle=True, drop_last=True, **kw),
        DataLoader(val, 256, **kw),
        DataLoader(test, 256, **kw),
    )


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over a loader."""
    model.eval()
    loss = correct = n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return loss / n, correct / n


def parser() -> argparse.ArgumentParser:
    """The command line; every value is checked as it is read (a bad one ends in one line and exit code 2)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=data_path, help=f"folder holding {FOLDER}/ (or an .npz, with --bench)")
    p.add_argument("--model", type=model_spec, default=json.dumps(PLAIN_CNN), help="a convlab model config as JSON")
    p.add_argument("--epochs", type=integer(1), default=3)
    p.add_argument("--batch-size", type=integer(1), default=128)
    p.add_argument("--lr", type=positive_number, default=0.05)
    p.add_argument("--workers", type=integer(0), default=os.cpu_count())
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (fp16 with loss scaling)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--limit-train-batches", type=integer(1))
    p.add_argument("--out", type=out_file, default="baseline.pt", help="where the trained weights go")
    p.add_argument("--bench", type=bench_counts, help="STEPS,WARMUP,REPEATS: print training images/s as JSON and stop")
    return p


def main() -> None:
    """Parse the arguments, train and test (or only time training steps with --bench)."""
    p = parser()
    args = p.parse_args()
    if args.data.endswith(".npz") and not args.bench:
        p.error(f"argument --data: {args.data!r} is read only with --bench; to train, give a folder holding {FOLDER}/")

    torch.manual_seed(args.seed)
    pin = args.device.startswith("cuda")
    try:
        if args.data.endswith(".npz"):
            train_loader, shape = array_loader(args.data, args.batch_size, args.workers, pin)
        else:
            (train_loader, val_loader, test_loader), shape = (
                loaders(args.data, args.batch_size, args.workers, args.seed, pin),
                (10, 3, 32),
            )
    except Exception as e:  # a damaged batch file or .npz
        p.error(f"argument --data: cannot read {args.data!r}: {reason(e)}")
    if not len(train_loader):
        n = len(train_loader.dataset)
        p.error(f"argument --batch-size: {args.batch_size} is more than the {n} training images; expected at most {n}")
    device, fmt = torch.device(args.device), torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        model = make_model(args.model, *shape).to(device, memory_format=fmt)
        with torch.no_grad():  # a trial forward pass: settings that build but cannot run fail here, not in training
            out = model.eval()(torch.zeros(2, *shape[1:], shape[2], device=device).to(memory_format=fmt))
        if out.shape != (2, shape[0]):
            raise ValueError(f"it maps 2 images to shape {tuple(out.shape)}, not to (2, {shape[0]}) class scores")
    except Exception as e:  # settings the model class refuses
        p.error(f"argument --model: {json.dumps(args.model)} does not build a working classifier: {reason(e)}")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = min(len(train_loader), args.limit_train_batches or len(train_loader))
    total = args.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()

    if args.bench:
        timed, warmup, repeats = args.bench
        model.train()
        batches, rates = iter(()), []
        for _ in range(repeats):
            done = 0
            for i in range(warmup + timed):
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(train_loader)
                    x, y = next(batches)
                if i == warmup:
                    sync(device)
                    start = time.perf_counter()
                step(x, y)
                done += len(y) if i >= warmup else 0
            sync(device)
            rates.append(done / (time.perf_counter() - start))
        print(json.dumps({"images_per_s": rates, "pid": os.getpid()}))
        return

    for epoch in range(1, args.epochs + 1):
        model.train()
        start, seen = time.perf_counter(), 0
        for i, (x, y) in enumerate(train_loader):
            if i == steps:
                break
            step(x, y)
            seen += len(y)
        val_loss, val_acc = evaluate(model, val_loader, device)
        rate = seen / (time.perf_counter() - start)
        print(f"epoch {epoch}/{args.epochs}  val/loss {val_loss:.4f}  val/acc {val_acc:.4f}  {rate:.0f} img/s")
    test_loss, test_acc = evaluate(model, test_loader, device)
    torch.save(model.state_dict(), args.out)
    print(f"test  loss {test_loss:.4f}  acc {test_acc:.4f}")


if __name__ == "__main__":
    main()
