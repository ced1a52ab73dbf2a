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
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, random_split
from torchvision import transforms as T

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PLAIN_CNN = {"_target_": "convlab.models.plain_cnn.PlainCNN", "channels": [32, 64, 128]}


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
    """The network from a convlab model config: {"_target_": "convlab.models.X.Y", **its settings}."""
    spec = {k: v for k, v in spec.items() if k != "name"}
    module, _, name = spec.pop("_target_").rpartition(".")
    if not module.startswith("convlab.models."):
        raise SystemExit(f"--model: {module}.{name} is not a convlab model class")
    return getattr(importlib.import_module(module), name)(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **spec
    )


def array_loader(path: str, batch_size: int, workers: int, pin: bool) -> tuple[DataLoader, tuple[int, int, int]]:
    """The augmented train loader of an .npz (see the module docstring), and (classes, channels, size)."""
    with np.load(path) as f:
        images, labels, mean, std = f["images"], f["labels"], f["mean"].tolist(), f["std"].tolist()
    tf = T.Compose(
        [T.RandomCrop(images.shape[-1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    loader = DataLoader(
        ArrayImages(images, labels, tf),
        batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
    )
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


def main() -> None:
    """Parse the arguments, train and test (or only time training steps with --bench)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--model", default=json.dumps(PLAIN_CNN), help="a convlab model config as JSON")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (fp16 with loss scaling)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--limit-train-batches", type=int, default=None)
    p.add_argument("--out", default="baseline.pt", help="where the trained weights go")
    p.add_argument("--bench", default=None, help="STEPS,WARMUP,REPEATS: print training images/s as JSON and stop")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    pin = args.device.startswith("cuda")
    if args.data.endswith(".npz"):
        train_loader, shape = array_loader(args.data, args.batch_size, args.workers, pin)
    else:
        (train_loader, val_loader, test_loader), shape = (
            loaders(args.data, args.batch_size, args.workers, args.seed, pin),
            (10, 3, 32),
        )
    device, fmt = torch.device(args.device), torch.channels_last if args.channels_last else torch.contiguous_format
    model = make_model(json.loads(args.model), *shape).to(device, memory_format=fmt)
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
        timed, warmup, repeats = (int(v) for v in args.bench.split(","))
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
