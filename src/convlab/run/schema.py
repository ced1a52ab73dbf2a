"""One validation path: every value of a composed config is checked here, before anything is built.

`validate(cfg, command)` looks each key of a rule table up by its dotted path (a group's keys
are checked when the selected group has them), then refuses the combinations that cannot
train. It builds nothing and writes nothing, so the CLI can call it before Hydra creates a run
folder, and `train.setup` on configs read back from checkpoints. Every refusal is one
ConfigError line: `KEY=VALUE is not allowed; expected ...` (or `choose one of: ...`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from convlab.core.errors import ConfigError
from convlab.core.perf import PRECISIONS
from convlab.data import cifar10
from convlab.data.base import check_batch_fits, val_size
from convlab.models import alexnet, hdc, plain_cnn, resnet
from convlab.models.layers import CONV_IMPLS, CONV_KINDS

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
LOADERS = ("auto", "device", "dataloader")
LOSSES = ("bce", "hinge", "wgan-gp")
D_NORMS = ("auto", "batch", "layer", "none")
AUGMENTS = ("crop_padding", "flip")
CHANNELS = 3  # every dataset convlab ships is RGB: data.mean and data.std need one entry each
MAX_SEED = 2**32 - 1  # numpy, and so Optuna's sampler (seeded with ${seed}), takes seeds below 2**32
GROUPS = ("optim", "sched", "data", "model", "task", "gan")  # their keys are checked when present
GAN_TASK = "convlab.tasks.gan.GANTask"

# A check returns None for a good value, otherwise what is allowed ("expected ..." or "choose one of: ...").
Check = Callable[[Any], "str | None"]
_ABSENT, _DEFERRED = object(), object()  # no such key; a ${hydra:...} value that Hydra fills in when it runs


def is_int(v: Any) -> bool:
    """An int, not a bool (YAML's true is no number)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool: NaN and inf would reach torch as silent garbage."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An integer within [minimum, maximum] (either end may be open-ended)."""
    if maximum is not None:
        text = f"expected an integer in [{minimum}, {maximum}]"
    else:
        text = "expected an integer" + ("" if minimum is None else f" >= {minimum}")
    return lambda v: (
        None if is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum) else text
    )


def number(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> Check:
    """A finite number within the bounds; an open bound excludes its end."""
    if high is None:
        text = "expected a number" + ("" if low is None else f" {'>' if open_low else '>='} {low:g}")
    else:
        text = f"expected a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def check(v: Any) -> str | None:
        if not is_number(v):
            return text
        above = low is None or (v > low if open_low else v >= low)
        return None if above and (high is None or (v < high if open_high else v <= high)) else text

    return check


def choice(*options: Any) -> Check:
    """One of `options`, compared with their types (1 is not true, "true" is not true)."""
    text = "choose one of: " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options)
    return lambda v: None if any(type(v) is type(o) and v == o for o in options) else text


def optional(check: Check) -> Check:
    """null, or what `check` allows."""

    def check_or_null(v: Any) -> str | None:
        allowed = None if v is None else check(v)
        return allowed and allowed.replace("expected ", "expected null or ", 1)

    return check_or_null


def list_of(item: Check, text: str, length: int | None = None) -> Check:
    """A non-empty list (of `length` entries, if given) whose entries all pass `item`."""
    return lambda v: (
        None
        if isinstance(v, list) and v and (length is None or len(v) == length) and all(item(x) is None for x in v)
        else f"expected {text}"
    )


def string(v: Any) -> str | None:
    """A string (a path, mostly)."""
    return None if isinstance(v, str) else "expected a string"


def device(v: Any) -> str | None:
    """A device spec that `config.resolve_device` understands."""
    return None if isinstance(v, str) and DEVICE_PATTERN.fullmatch(v) else "choose one of: auto, cpu, cuda, cuda:N, mps"


def mapping(*keys: str) -> Check:
    """A mapping whose keys are among `keys` (their values have rules of their own)."""
    return lambda v: (
        None if isinstance(v, dict) and set(v) <= set(keys) else f"expected a mapping with the keys {', '.join(keys)}"
    )


flag = choice(True, False)
seed = integer(0, MAX_SEED)
positive = number(0, open_low=True)
fraction = number(0, 1, open_high=True)  # [0, 1)
positive_ints = list_of(integer(1), "a non-empty list of positive integers")

TRAIN: dict[str, Check] = {
    "epochs": integer(1),
    "batch_size": integer(1),
    "seed": seed,
    "device": device,
    "deterministic": flag,
    "resume": optional(string),
    "out_dir": string,
    "trainer.log_every": integer(1),
    "trainer.eval_every": integer(1),
    "trainer.devices": integer(1),
    "trainer.stop_after": optional(integer(1)),
    "trainer.limit_train_batches": optional(integer(1)),
    "trainer.early_stop": optional(mapping("patience", "min_delta")),
    "trainer.early_stop.patience": optional(integer(1)),
    "trainer.early_stop.min_delta": optional(number(0)),
    "trainer.precision": choice("auto", *PRECISIONS),
    "trainer.channels_last": choice("auto", True, False),
    "trainer.compile": flag,
    "trainer.sync_bn": flag,
    # Any torch optimizer: the settings they share. Every other value is checked by _numbers_only.
    "optim.lr": positive,
    "optim.weight_decay": number(0),
    "optim.momentum": fraction,
    "optim.eps": positive,
    "optim.betas": list_of(fraction, "a list of two numbers in [0, 1)", 2),
    "optim.nesterov": flag,
    "sched.warmup_epochs": number(0),
    "sched.min_lr_ratio": number(0, 1),
    "sched.pct_start": number(0, 1, open_low=True, open_high=True),
    "sched.max_lr_factor": positive,
    "sched.div_factor": positive,
    "sched.final_div_factor": positive,
    "sched.step_epochs": integer(1),
    "sched.gamma": positive,
    "data.root": string,
    "data.download": flag,
    "data.cache_dir": string,
    "data.image_size": integer(8),
    "data.val_fraction": number(0, 1, open_low=True, open_high=True),
    "data.split_seed": seed,
    "data.split": choice("test", "val"),
    "data.augment": optional(mapping(*AUGMENTS)),
    "data.augment.crop_padding": integer(0),
    "data.augment.flip": flag,
    "data.mean": list_of(number(), f"a list of {CHANNELS} finite numbers (one per channel)", CHANNELS),
    "data.std": list_of(positive, f"a list of {CHANNELS} numbers > 0 (one per channel)", CHANNELS),
    "data.loader": choice(*LOADERS),
    "data.workers": optional(integer(0)),
    "data.num_train": integer(2),
    "data.num_test": integer(1),
    "data.seed": seed,
    "data.noise": number(0),
    "model.conv_impl": choice(*CONV_IMPLS),
    "model.conv": choice(*CONV_KINDS),
    "model.groups": integer(1),
    "model.channels": positive_ints,
    "model.dilations": positive_ints,
    "model.widths": positive_ints,
    "model.kernel_size": integer(1),
    "model.hidden": integer(1),
    "model.dropout": fraction,
    "model.z_dim": integer(1),
    "model.dim": integer(1),
    "model.d_norm": choice(*D_NORMS),
    "task.label_smoothing": fraction,
    "gan.loss": choice(*LOSSES),
    "gan.d_steps": integer(1),
    "gan.gp_weight": number(0),
    "gan.fid_every": integer(0),
    "gan.fid_samples": integer(2),
}
BENCH = TRAIN | {
    "bench.steps": integer(2),
    "bench.warmup": integer(1),
    "bench.repeats": integer(1),
    "bench.workers": optional(integer(0)),
    "bench.json": optional(string),
}
EVAL = {
    "ckpt": string,
    "device": device,
    "batch_size": integer(1),
    "precision": choice("auto", *PRECISIONS),
    "data.split": choice("test", "val"),
    "data.root": optional(string),
}
SAMPLE = {"ckpt": string, "device": device, "n": integer(1), "seed": seed, "interpolate": flag, "out": string}
INSPECT = TRAIN | {"ckpt": optional(string), "out": string, "erf_images": integer(1)}
RULES = {"train": TRAIN, "bench": BENCH, "eval": EVAL, "sample": SAMPLE, "inspect": INSPECT}

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


def refuse(key: str, value: Any, allowed: str, context: str = "") -> ConfigError:
    """The one-line error for `key=value`; `context` names the other setting that rules it out."""
    return ConfigError(f"{key}={value!r} is not allowed{f' with {context}' if context else ''}; {allowed}")


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= `minimum`; otherwise a ConfigError naming `name`."""
    if (allowed := integer(minimum)(value)) is not None:
        raise refuse(name, value, allowed)
    return value


def _lookup(cfg: DictConfig, path: str) -> Any:
    """The plain value at `path` with interpolations resolved; _ABSENT without the key, None for ???."""
    try:
        value = OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=True)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except MissingMandatoryValue:
        return None
    except InterpolationResolutionError as e:
        parent, _, leaf = path.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        raw = OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None
        if isinstance(raw, str) and raw.startswith("${hydra:"):  # out_dir before Hydra has started the run
            return _DEFERRED
        raise ConfigError(f"{path} cannot be resolved: {str(e).splitlines()[0]}") from None


def _numbers_only(get: Callable[[str], Any], group: str) -> None:
    """Optimizer and schedule arguments are numbers, flags or lists of numbers, whichever class they go to."""
    settings = get(group)
    for key, value in settings.items() if isinstance(settings, dict) else ():
        if key.startswith("_") or key == "name" or value is None or isinstance(value, bool):
            continue
        if not all(is_number(v) for v in (value if isinstance(value, list) else [value])):
            raise refuse(f"{group}.{key}", value, "expected a number (or true/false, or a list of numbers)")


def _model_setting(get: Callable[[str], Any], key: str) -> Any:
    """`key` (model.*) from the config, else the shipped model's default (DEFAULTS); _ABSENT when neither has it."""
    value = get(key)
    value = DEFAULTS.get(get("model._target_"), {}).get(key, _ABSENT) if value is _ABSENT else value
    return list(value) if isinstance(value, tuple) else value


def _model_fits(get: Callable[[str], Any]) -> None:
    """The model's channels split into model.groups, and it takes the data's image size."""
    model, name, groups = get("model._target_"), get("model.name"), get("model.groups")
    if get("model.conv") == "grouped" and groups is not _ABSENT:
        counts = [(f"{key}=", _model_setting(get, key)) for key in ("model.channels", "model.widths")]
        counts += [(f"model={name}'s widths ", list(FIXED_WIDTHS[model]))] if model in FIXED_WIDTHS else []
        for what, values in counts:
            if values is not _ABSENT and any(c % groups for c in values):
                raise refuse(
                    "model.groups",
                    groups,
                    f"a number dividing every one of {what}{values} (model.conv=grouped splits each convolution's channels)",
                )
    size = get("data.image_size")
    size = FIXED_SIZES.get(get("data._target_"), _ABSENT) if size is _ABSENT else size
    if size is _ABSENT:  # a dataset of the user's own: its size is known once it is loaded (the constructors assert)
        return
    if model in IMAGE_SIZES and not IMAGE_SIZES[model][0](size):
        raise refuse("data.image_size", size, f"expected {IMAGE_SIZES[model][1]}", f"model={name}")
    if model in UNPADDED:
        k, rates = _model_setting(get, "model.kernel_size"), _model_setting(get, "model.dilations")
        rates = [1] * len(_model_setting(get, "model.channels")) if rates is None else rates
        if plain_cnn.out_size(size, rates, k) < 1:
            raise ConfigError(
                f"model.dilations={rates} shrink a {size}×{size} input below one pixel ({k}×{k} kernels, no padding); use smaller rates"
            )


def _train_combinations(get: Callable[[str], Any]) -> None:
    """Values that are each fine but cannot train together, in the order a user would fix them."""
    batch, devices = get("batch_size"), get("trainer.devices")
    momentum, dampening = get("optim.momentum"), get("optim.dampening")  # torch's SGD defaults: 0 and 0
    if get("optim.nesterov") is True and (momentum in (_ABSENT, 0) or dampening not in (_ABSENT, 0)):
        raise refuse(
            "optim.nesterov",
            True,
            "expected optim.momentum > 0 and optim.dampening=0 with it (torch refuses Nesterov otherwise)",
        )
    channels, dilations = _model_setting(get, "model.channels"), _model_setting(get, "model.dilations")
    if channels is not _ABSENT and dilations not in (_ABSENT, None) and len(dilations) != len(channels):
        raise refuse(
            "model.dilations",
            dilations,
            f"expected a list of {len(channels)} positive integers (one per model.channels entry)",
        )
    if get("task._target_") == GAN_TASK:
        mean, std = (
            [0.5] * CHANNELS if v is _ABSENT else v for v in (get("data.mean"), get("data.std"))
        )  # ImageDataset's default
        if any(abs(v - 0.5) > 1e-6 for v in [*mean, *std]):
            raise ConfigError(
                f"a GAN needs images scaled to [-1, 1] like its tanh output, but data.mean={mean} "
                f"data.std={std}; set data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5]"
            )
        loss, d_norm = get("gan.loss"), get("model.d_norm")
        if loss == "wgan-gp" and get("trainer.precision") == "fp16":
            raise ConfigError(
                "gan.loss=wgan-gp with trainer.precision=fp16 is not supported (loss scaling of the gradient penalty); use bf16 or fp32"
            )
        if (
            loss == "wgan-gp" and d_norm == "batch"
        ):  # the penalty assumes each critic value depends on its own sample only
            raise ConfigError("gan.loss=wgan-gp needs a critic without BatchNorm; use model.d_norm=layer, none or auto")
        if batch // devices < 2:
            raise refuse(
                "batch_size",
                batch,
                "expected at least 2 images per process (the generator's BatchNorm cannot train on one)",
                "a GAN",
            )
        if get("trainer.early_stop.patience") not in (_ABSENT, None) and get("gan.fid_every") == 0:
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
    num_train, val_fraction = get("data.num_train"), get("data.val_fraction")
    if (
        num_train is not _ABSENT and val_fraction is not _ABSENT
    ):  # a generated dataset: its size is known before anything is built
        check_batch_fits(batch, num_train - val_size(num_train, val_fraction), val_fraction)


def validate(cfg: DictConfig, command: str = "train") -> None:
    """Refuse any value of `cfg` (composed for `command`: train, bench, eval or sample) that cannot run.

    Raises a one-line ConfigError naming the key, its value and what is allowed.
    """
    if command not in RULES:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(RULES)}")
    values: dict[str, Any] = {}

    def get(path: str) -> Any:
        if path not in values:
            values[path] = _lookup(cfg, path)
        return values[path]

    if command in ("eval", "sample") and get("ckpt") in (None, ""):
        raise ConfigError("ckpt=PATH is required: a .pt file or a run directory")
    for key, check in RULES[command].items():
        value = get(key)
        if value is _DEFERRED or (value is _ABSENT and key.split(".")[0] in GROUPS):
            continue
        allowed = check(None if value is _ABSENT else value)
        if allowed is not None:
            raise refuse(key, None if value is _ABSENT else value, allowed)
    if command in ("train", "bench", "inspect"):
        _numbers_only(get, "optim")
        _numbers_only(get, "sched")
        _train_combinations(get)
    if command == "sample" and get("interpolate") and get("n") < 2:
        raise refuse("n", get("n"), "expected an integer >= 2 (the two ends of the strip)", "interpolate=true")
