"""The checks convlab.run.schema runs after each key passed its own rule: values that cannot train together.

They read the config through a `get` (see rules.Get) and know the shipped models' and datasets'
facts that no single key holds: image sizes a model takes, defaults a config leaves out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from convlab.core.errors import ConfigError
from convlab.data import cifar10, synthetic
from convlab.data.base import check_batch_fits, val_size
from convlab.models import alexnet, hdc, plain_cnn, resnet
from convlab.run.rules import ABSENT, Get, is_number, refuse

CHANNELS = 3  # every dataset convlab ships is RGB: data.mean and data.std need one entry each
GAN_TASK = "convlab.tasks.gan.GANTask"

# Models that take only some image sizes: (test, what is allowed). The size is data.image_size, or fixed by the
# dataset (FIXED_SIZES); the constructors assert the rule for a dataset of the user's own, known only once loaded.
IMAGE_SIZES: dict[str, tuple[Callable[[int], bool], str]] = {
    "convlab.models.dcgan.DCGAN": (lambda s: s >= 8 and s & (s - 1) == 0, "4·2^k (8, 16, 32, 64, 128, ...)"),
    "convlab.models.alexnet.AlexNetLite": (lambda s: s % 8 == 0, "a multiple of 8 (three 2×2 max-pools)"),
}
FIXED_SIZES = {"convlab.data.cifar10.CIFAR10": cifar10.IMAGE_SIZE}
UNPADDED = ("convlab.models.plain_cnn.PlainCNN", "convlab.models.hdc.HDCNet")  # each layer shrinks the map
# What a shipped model uses for a setting its config leaves out: the rules below check those values too.
DEFAULTS: dict[str, dict[str, Any]] = {
    "convlab.models.plain_cnn.PlainCNN": {
        "model.channels": plain_cnn.CHANNELS,
        "model.dilations": None,
        "model.kernel_size": plain_cnn.KERNEL_SIZE,
    },
    "convlab.models.hdc.HDCNet": {
        "model.channels": plain_cnn.CHANNELS,
        "model.dilations": hdc.DILATIONS,
        "model.kernel_size": plain_cnn.KERNEL_SIZE,
    },
    "convlab.models.resnet.ResNet18": {"model.widths": resnet.WIDTHS},
}
FIXED_WIDTHS = {"convlab.models.alexnet.AlexNetLite": alexnet.WIDTHS}  # channel counts no setting changes
# Memory per pixel of a generated image (data.num_train): synthetic.generate peaks at 43-47 bytes per pixel
# (measured at 32 and 64 pixels square), the dataset then holds it as 3 bytes and its loaders as float32.
BYTES_PER_PIXEL = 64
MAX_GENERATED = 10**7  # images, where the OS does not tell the machine's memory (Windows)


def numbers_only(get: Get, group: str) -> None:
    """Optimizer and schedule arguments are numbers, flags or lists of numbers, whichever class they go to."""
    settings = get(group)
    for key, value in settings.items() if isinstance(settings, dict) else ():
        if key.startswith("_") or key == "name" or value is None or isinstance(value, bool):
            continue
        if not all(is_number(v) for v in (value if isinstance(value, list) else [value])):
            raise refuse(f"{group}.{key}", value, "expected a number (or true/false, or a list of numbers)")


def _model_setting(get: Get, key: str) -> Any:
    """`key` (model.*) from the config, else the shipped model's default (DEFAULTS); ABSENT when neither has it."""
    value = get(key)
    value = DEFAULTS.get(get("model._target_"), {}).get(key, ABSENT) if value is ABSENT else value
    return list(value) if isinstance(value, tuple) else value


def _model_fits(get: Get) -> None:
    """The model's channels split into model.groups, and it takes the data's image size."""
    model, name, groups = get("model._target_"), get("model.name"), get("model.groups")
    if get("model.conv") == "grouped" and groups is not ABSENT:
        counts = [(f"{key}=", _model_setting(get, key)) for key in ("model.channels", "model.widths")]
        counts += [(f"model={name}'s widths ", list(FIXED_WIDTHS[model]))] if model in FIXED_WIDTHS else []
        for what, values in counts:
            if values is not ABSENT and any(c % groups for c in values):
                raise refuse(
                    "model.groups",
                    groups,
                    f"a number dividing every one of {what}{values} "
                    "(model.conv=grouped splits each convolution's channels)",
                )
    size = get("data.image_size")
    size = FIXED_SIZES.get(get("data._target_"), ABSENT) if size is ABSENT else size
    if size is ABSENT:  # a dataset of the user's own: its size is known once it is loaded (the constructors assert)
        return
    if model in IMAGE_SIZES and not IMAGE_SIZES[model][0](size):
        raise refuse("data.image_size", size, f"expected {IMAGE_SIZES[model][1]}", f"model={name}")
    if model in UNPADDED:
        k, rates = _model_setting(get, "model.kernel_size"), _model_setting(get, "model.dilations")
        rates = [1] * len(_model_setting(get, "model.channels")) if rates is None else rates
        if plain_cnn.out_size(size, rates, k) < 1:
            raise ConfigError(
                f"model.dilations={rates} shrink a {size}×{size} input below one pixel "
                f"({k}×{k} kernels, no padding); use smaller rates"
            )


def memory() -> int | None:
    """This machine's physical memory in bytes; None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _data_fits(get: Get) -> None:
    """A generated dataset (data.num_train and data.num_test images) fits in this machine's memory."""
    train, test, size = get("data.num_train"), get("data.num_test"), get("data.image_size")
    if train is ABSENT or test is ABSENT:
        return
    size = synthetic.IMAGE_SIZE if size is ABSENT else size
    each, ram = BYTES_PER_PIXEL * size * size, memory()
    most = MAX_GENERATED if ram is None else ram // each
    where = (
        "" if ram is None else f" (about {each / 2**10:,.0f} KiB each while made, in {ram / 2**30:,.0f} GiB of memory)"
    )
    if most < 3:  # not even the smallest set: the image size is what cannot be held
        raise refuse("data.image_size", size, f"expected images that fit in memory{where}")
    if train + test > most:
        key, value = ("data.num_train", train) if train >= test else ("data.num_test", test)
        raise refuse(key, value, f"expected data.num_train + data.num_test <= {most:,} images of {size}×{size}{where}")


def train_combinations(get: Get) -> None:
    """Values that are each fine but cannot train together, in the order a user would fix them."""
    batch, devices = get("batch_size"), get("trainer.devices")
    momentum, dampening = get("optim.momentum"), get("optim.dampening")  # torch's SGD defaults: 0 and 0
    if get("optim.nesterov") is True and (momentum in (ABSENT, 0) or dampening not in (ABSENT, 0)):
        raise refuse(
            "optim.nesterov",
            True,
            "expected optim.momentum > 0 and optim.dampening=0 with it (torch refuses Nesterov otherwise)",
        )
    channels, dilations = _model_setting(get, "model.channels"), _model_setting(get, "model.dilations")
    if channels is not ABSENT and dilations not in (ABSENT, None) and len(dilations) != len(channels):
        raise refuse(
            "model.dilations",
            dilations,
            f"expected a list of {len(channels)} positive integers (one per model.channels entry)",
        )
    if get("task._target_") == GAN_TASK:
        # absent: ImageDataset's default
        mean, std = ([0.5] * CHANNELS if v is ABSENT else v for v in (get("data.mean"), get("data.std")))
        if any(abs(v - 0.5) > 1e-6 for v in [*mean, *std]):
            raise ConfigError(
                f"a GAN needs images scaled to [-1, 1] like its tanh output, but data.mean={mean} "
                f"data.std={std}; set data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5]"
            )
        loss, d_norm = get("gan.loss"), get("model.d_norm")
        if loss == "wgan-gp" and get("trainer.precision") == "fp16":
            raise ConfigError(
                "gan.loss=wgan-gp with trainer.precision=fp16 is not supported "
                "(loss scaling of the gradient penalty); use bf16 or fp32"
            )
        # the penalty assumes each critic value depends on its own sample only
        if loss == "wgan-gp" and d_norm == "batch":
            raise ConfigError("gan.loss=wgan-gp needs a critic without BatchNorm; use model.d_norm=layer, none or auto")
        if batch // devices < 2:
            raise refuse(
                "batch_size",
                batch,
                "expected at least 2 images per process (the generator's BatchNorm cannot train on one)",
                "a GAN",
            )
        if get("trainer.early_stop.patience") not in (ABSENT, None) and get("gan.fid_every") == 0:
            raise refuse(
                "trainer.early_stop.patience",
                get("trainer.early_stop.patience"),
                "a GAN stops early on val/fid: set gan.fid_every=N (and install convlab[fid]), or drop it",
                "gan.fid_every=0",
            )
    _model_fits(get)
    if devices > 1 and batch % devices:
        raise refuse(
            "batch_size",
            batch,
            f"expected a multiple of {devices} (batch_size is the global batch)",
            f"trainer.devices={devices}",
        )
    _data_fits(get)
    num_train, val_fraction = get("data.num_train"), get("data.val_fraction")
    # a generated dataset: its size is known before anything is built
    if num_train is not ABSENT and val_fraction is not ABSENT:
        check_batch_fits(batch, num_train - val_size(num_train, val_fraction), val_fraction)
