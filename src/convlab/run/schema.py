"""One validation path: every value of a composed config is checked here, before anything is built.

`validate(cfg, command)` looks each key of a rule table up by its dotted path (a group's keys
are checked when the selected group has them), then refuses the combinations that cannot
train (convlab.run.combinations). It builds nothing and writes nothing, so the CLI can call it
before Hydra creates a run folder, and `train.setup` on configs read back from checkpoints.
Every refusal is one ConfigError line: `KEY=VALUE is not allowed; expected ...` (or `choose one
of: ...`); the checks the tables are made of live in convlab.run.rules.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from convlab.core.errors import ConfigError
from convlab.core.perf import PRECISIONS
from convlab.models.layers import CONV_IMPLS, CONV_KINDS
from convlab.run.combinations import CHANNELS, numbers_only, train_combinations
from convlab.run.rules import (
    ABSENT,
    RUN_FILES,
    Check,
    choice,
    device,
    file_path,
    flag,
    fraction,
    integer,
    list_of,
    mapping,
    number,
    optional,
    positive,
    positive_ints,
    refuse,
    seed,
)

LOADERS = ("auto", "device", "dataloader")
LOSSES = ("bce", "hinge", "wgan-gp")
D_NORMS = ("auto", "batch", "layer", "none")
AUGMENTS = ("crop_padding", "flip")
GROUPS = ("optim", "sched", "data", "model", "task", "gan", "hydra")  # their keys are checked when present
_DEFERRED = object()  # a ${hydra:...} value that Hydra fills in when it runs


def auto_or(check: Check) -> Check:
    """`auto`, or what `check` allows."""

    def check_or_auto(v: Any) -> str | None:
        allowed = None if v == "auto" else check(v)
        return allowed and allowed.replace("expected ", "expected auto or ", 1)

    return check_or_auto


TRAIN: dict[str, Check] = {
    "epochs": integer(1),
    "batch_size": integer(1),
    "seed": seed,
    "device": device,
    "deterministic": flag,
    "resume": optional(file_path()),
    "rerun_failed": optional(flag),  # optional: configs saved before it existed lack it
    "out_dir": file_path(RUN_FILES),  # run folders: room left for the files a run writes inside
    "hydra.run.dir": file_path(RUN_FILES),
    "hydra.sweep.dir": file_path(2 * RUN_FILES),  # and a job's folder inside
    "trainer.log_every": auto_or(integer(1)),  # auto: 21 to 40 step points an epoch (convlab.run.steplog)
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
    # Any torch optimizer: the settings they share. Every other value is checked by combinations.numbers_only.
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
    "data.root": file_path(),
    "data.download": flag,
    "data.cache_dir": file_path(),
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
    "bench.json": optional(file_path()),
}
EVAL = {
    "ckpt": file_path(),
    "device": device,
    "batch_size": integer(1),
    "precision": choice("auto", *PRECISIONS),
    "data.split": choice("test", "val"),
    "data.root": optional(file_path()),
}
SAMPLE = {"ckpt": file_path(), "device": device, "n": integer(1), "seed": seed, "interpolate": flag, "out": file_path()}
INSPECT = TRAIN | {"ckpt": optional(file_path()), "out": file_path(), "erf_images": integer(1)}
RULES = {"train": TRAIN, "bench": BENCH, "eval": EVAL, "sample": SAMPLE, "inspect": INSPECT}


def _lookup(cfg: DictConfig, path: str) -> Any:
    """The plain value at `path` with interpolations resolved; ABSENT without the key, None for ???."""
    try:
        value = OmegaConf.select(cfg, path, default=ABSENT, throw_on_missing=True)
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
        if value is _DEFERRED or (value is ABSENT and key.split(".")[0] in GROUPS):
            continue
        allowed = check(None if value is ABSENT else value)
        if allowed is not None:
            raise refuse(key, None if value is ABSENT else value, allowed)
    if command in ("train", "bench", "inspect"):
        numbers_only(get, "optim")
        numbers_only(get, "sched")
        train_combinations(get)
    if command == "sample" and get("interpolate") and get("n") < 2:
        raise refuse("n", get("n"), "expected an integer >= 2 (the two ends of the strip)", "interpolate=true")
