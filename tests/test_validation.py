"""convlab.run.schema.validate: a bad value is one line naming its key; everything the project ships passes."""

from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from convlab.core.errors import ConfigError
from convlab.data.synthetic import Synthetic
from convlab.run import schema
from tests.conftest import REPO, compose_cfg, make_cfg, one_line

CONF = REPO / "conf"
COMPOSED = ("model", "+experiment")  # choices that reach other groups (dcgan picks the gan task): composed
SWAPPED = ("data", "optim", "sched")  # plain nodes: a command-line choice puts that file's node in place
PARSER = OverridesParser.create()


def options(group: str) -> list[str]:
    """The configs of one group, as `GROUP=NAME` chooses them."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@functools.cache
def composed(command: str, choices: tuple[str, ...] = ()) -> DictConfig:
    """`command`'s config with these choices, composed once: one compose takes 0.2-0.5 s on 2 busy cores."""
    return make_cfg("/nonexistent/convlab-run", *choices) if command == "train" else compose_cfg(command, *choices)


@functools.cache
def nodes() -> dict[str, dict[str, DictConfig]]:
    """Every data, optim and sched config as Hydra composes it, all from one compose (each under a spare key)."""
    spare = composed("train", tuple(f"+{g}@_all.{g}.{o}={o}" for g in SWAPPED for o in options(g)))
    return {g: {o: spare._all[g][o] for o in options(g)} for g in SWAPPED}


def cfg_for(command: str, *overrides: str) -> DictConfig:
    """What `convlab COMMAND OVERRIDES` composes: group choices first, then values parsed and merged as Hydra does."""
    cfg = copy.deepcopy(composed(command, tuple(o for o in overrides if o.split("=")[0] in COMPOSED)))
    for text in overrides:
        key, _, value = text.partition("=")
        if key in SWAPPED:
            cfg[key] = nodes()[key][value]
        elif key not in COMPOSED:
            override = PARSER.parse_override(text)
            with open_dict(cfg):
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return cfg


def test_the_shortcut_composes_what_hydra_composes() -> None:
    for overrides in (
        ["model=dcgan", "data=anime_faces", "gan.loss=hinge", "+optim.eps=1e-8", "batch_size=1"],
        ["optim=adam", "sched=step", "data=synthetic", "data.mean=[0.1,0.2,0.3]", "+data.augment.rotate=10"],
    ):
        expected = make_cfg("/nonexistent/convlab-run", *overrides)
        assert OmegaConf.to_container(cfg_for("train", *overrides)) == OmegaConf.to_container(expected)


GAN = ("model=dcgan", "data=anime_faces")  # a GAN on data scaled to [-1, 1]: only the value under test is wrong
SYN = ("data=synthetic",)
CKPT = ("ckpt=outputs/run",)

# (command, overrides, the key=value the message names, what it says is allowed)
BAD = [
    ("train", ["epochs=0"], "epochs=0", "an integer >= 1"),
    ("train", ["epochs=abc"], "epochs='abc'", "an integer >= 1"),
    ("train", ["epochs=1.5"], "epochs=1.5", "an integer >= 1"),
    ("train", ["epochs=null"], "epochs=None", "an integer >= 1"),
    ("train", ["batch_size=0"], "batch_size=0", ">= 1"),
    ("train", ["batch_size=true"], "batch_size=True", "an integer >= 1"),  # bools are not numbers
    ("train", ["batch_size=[64]"], "batch_size=[64]", "an integer >= 1"),
    ("train", ["seed=-1"], "seed=-1", "an integer in [0, 4294967295]"),
    ("train", ["seed=4294967296"], "seed=4294967296", "[0, 4294967295]"),
    ("train", ["seed=abc"], "seed='abc'", "an integer"),
    ("train", ["device=tpu"], "device='tpu'", "cuda:N"),
    ("train", ["device=cuda:x"], "device='cuda:x'", "auto, cpu, cuda, cuda:N, mps"),
    ("train", ["deterministic=maybe"], "deterministic='maybe'", "true, false"),
    ("train", ["resume=5"], "resume=5", "null or a string"),
    ("train", ["out_dir=[1]"], "out_dir=[1]", "a string"),
    ("train", ["trainer.log_every=0"], "trainer.log_every=0", ">= 1"),
    ("train", ["trainer.eval_every=-1"], "trainer.eval_every=-1", ">= 1"),
    ("train", ["trainer.devices=0"], "trainer.devices=0", ">= 1"),
    ("train", ["trainer.stop_after=0"], "trainer.stop_after=0", "null or an integer >= 1"),
    ("train", ["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0", "null or an integer >= 1"),
    ("train", ["trainer.early_stop.patience=0"], "trainer.early_stop.patience=0", "null or an integer >= 1"),
    ("train", ["trainer.early_stop.min_delta=-0.1"], "trainer.early_stop.min_delta=-0.1", "null or a number >= 0"),
    ("train", ["trainer.early_stop=5"], "trainer.early_stop=5", "a mapping with the keys patience, min_delta"),
    (
        "train",
        ["model=dcgan", "data=anime_faces", "trainer.early_stop.patience=3"],
        "trainer.early_stop.patience=3",
        "with gan.fid_every=0; a GAN stops early on val/fid",
    ),
    ("train", ["trainer.precision=fp8"], "trainer.precision='fp8'", "auto, fp32, bf16, fp16"),
    ("train", ["trainer.channels_last=1"], "trainer.channels_last=1", "auto, true, false"),
    ("train", ["trainer.compile=yes"], "trainer.compile='yes'", "true, false"),
    ("train", ["trainer.sync_bn=1"], "trainer.sync_bn=1", "true, false"),
    ("train", ["optim.lr=0"], "optim.lr=0", "a number > 0"),
    ("train", ["optim.lr=-0.1"], "optim.lr=-0.1", "> 0"),
    ("train", ["optim.lr=nan"], "optim.lr=nan", "> 0"),
    ("train", ["optim.lr=inf"], "optim.lr=inf", "> 0"),
    ("train", ["optim.lr=fast"], "optim.lr='fast'", "number"),
    ("train", ["optim.lr=[0.1]"], "optim.lr=[0.1]", "number"),
    ("train", ["optim.lr=null"], "optim.lr=None", "number"),
    ("train", ["optim.weight_decay=-1"], "optim.weight_decay=-1", "a number >= 0"),
    ("train", ["optim.momentum=1"], "optim.momentum=1", "a number in [0, 1)"),
    ("train", ["optim.momentum=-0.1"], "optim.momentum=-0.1", "[0, 1)"),
    ("train", ["optim.nesterov=yes"], "optim.nesterov='yes'", "true, false"),
    ("train", ["optim.momentum=0"], "optim.nesterov=True", "optim.momentum > 0"),  # sgd.yaml has nesterov: true
    ("train", ["+optim.dampening=0.1"], "optim.nesterov=True", "optim.dampening=0"),
    ("train", ["optim=adam", "+optim.betas=[0.9]"], "optim.betas=[0.9]", "a list of two numbers in [0, 1)"),
    ("train", ["optim=gan_adam", "optim.betas=[0.5,1.0]"], "optim.betas=[0.5, 1.0]", "two numbers in [0, 1)"),
    ("train", ["optim=adam", "+optim.eps=0"], "optim.eps=0", "a number > 0"),
    ("train", ["optim=adam", "+optim.amsgrad=maybe"], "optim.amsgrad='maybe'", "number"),  # every optimizer value
    ("train", ["optim=adamw", "optim.weight_decay=abc"], "optim.weight_decay='abc'", ">= 0"),
    ("train", ["sched.warmup_epochs=-1"], "sched.warmup_epochs=-1", ">= 0"),
    ("train", ["sched.min_lr_ratio=1.5"], "sched.min_lr_ratio=1.5", "a number in [0, 1]"),
    ("train", ["sched.min_lr_ratio=abc"], "sched.min_lr_ratio='abc'", "[0, 1]"),
    ("train", ["sched=onecycle", "sched.pct_start=0"], "sched.pct_start=0", "a number in (0, 1)"),
    ("train", ["sched=onecycle", "sched.pct_start=1"], "sched.pct_start=1", "(0, 1)"),
    ("train", ["sched=onecycle", "sched.max_lr_factor=0"], "sched.max_lr_factor=0", "> 0"),
    ("train", ["sched=onecycle", "sched.div_factor=-1"], "sched.div_factor=-1", "> 0"),
    ("train", ["sched=onecycle", "sched.final_div_factor=0"], "sched.final_div_factor=0", "> 0"),
    ("train", ["sched=step", "sched.step_epochs=0"], "sched.step_epochs=0", "an integer >= 1"),
    ("train", ["sched=step", "sched.step_epochs=2.5"], "sched.step_epochs=2.5", "an integer >= 1"),
    ("train", ["sched=step", "sched.gamma=0"], "sched.gamma=0", "> 0"),
    ("train", ["sched=none", "+sched.factor=x"], "sched.factor='x'", "number"),  # every schedule value
    ("train", ["data.val_fraction=0"], "data.val_fraction=0", "a number in (0, 1)"),
    ("train", ["data.val_fraction=1"], "data.val_fraction=1", "(0, 1)"),
    ("train", ["data.val_fraction=1.5"], "data.val_fraction=1.5", "(0, 1)"),
    ("train", ["data.val_fraction=abc"], "data.val_fraction='abc'", "(0, 1)"),
    ("train", ["data.val_fraction=true"], "data.val_fraction=True", "(0, 1)"),
    ("train", ["data.split=train"], "data.split='train'", "test, val"),
    ("train", ["data.loader=gpu"], "data.loader='gpu'", "auto, device, dataloader"),
    ("train", ["data.workers=-1"], "data.workers=-1", "null or an integer >= 0"),
    ("train", ["data.augment.crop_padding=-1"], "data.augment.crop_padding=-1", ">= 0"),
    ("train", ["data.augment.flip=1"], "data.augment.flip=1", "true, false"),
    ("train", ["+data.augment.rotate=10"], "data.augment={", "the keys crop_padding, flip"),
    ("train", ["data.mean=[0.5,0.5]"], "data.mean=[0.5, 0.5]", "a list of 3 finite numbers"),
    ("train", ["data.mean=[0.5,nan,0.5]"], "data.mean=[0.5, nan, 0.5]", "finite numbers"),
    ("train", ["data.std=[0.2,0,0.2]"], "data.std=[0.2, 0, 0.2]", "a list of 3 numbers > 0"),
    ("train", ["data.std=abc"], "data.std='abc'", "numbers > 0"),
    ("train", ["data.root=5"], "data.root=5", "a string"),
    (
        "train",
        ["data.root=${oc.env:CONVLAB_TEST_UNSET_VARIABLE}"],
        "data.root cannot be resolved",
        "CONVLAB_TEST_UNSET_VARIABLE",
    ),
    ("train", ["data.download=maybe"], "data.download='maybe'", "true, false"),
    ("train", ["data.split_seed=-1"], "data.split_seed=-1", "[0, 4294967295]"),
    ("train", [*SYN, "data.image_size=4"], "data.image_size=4", "an integer >= 8"),
    ("train", [*SYN, "data.num_train=1"], "data.num_train=1", "an integer >= 2"),
    ("train", [*SYN, "data.num_test=0"], "data.num_test=0", "an integer >= 1"),
    ("train", [*SYN, "data.noise=-0.1"], "data.noise=-0.1", "a number >= 0"),
    ("train", [*SYN, "data.seed=x"], "data.seed='x'", "an integer"),
    (
        "train",
        [*SYN, "data.num_train=100"],
        "batch_size=128 is larger than the 90 training images",
        "use a smaller batch_size",
    ),
    (
        "train",
        [*SYN, "data.num_train=100", "data.val_fraction=0.9", "batch_size=64"],
        "batch_size=64",
        "10 training images (after data.val_fraction=0.9)",
    ),
    ("train", ["data=anime_faces", "data.cache_dir=5"], "data.cache_dir=5", "a string"),
    ("train", ["data=anime_faces", "data.image_size=abc"], "data.image_size='abc'", ">= 8"),
    ("train", [*GAN, "data.image_size=48"], "data.image_size=48 is not allowed with model=dcgan", "4·2^k"),
    ("train", ["model=alexnet_lite", *SYN, "data.image_size=12"], "data.image_size=12", "a multiple of 8"),
    ("train", ["model.conv_impl=cuda"], "model.conv_impl='cuda'", "torch, manual"),
    ("train", ["model.conv=depthwise"], "model.conv='depthwise'", "standard, separable, grouped, shift"),
    ("train", ["model.groups=0"], "model.groups=0", ">= 1"),
    (
        "train",
        ["model.conv=grouped", "model.groups=3"],
        "model.groups=3",
        "dividing every one of model.channels=[32, 64, 128]",
    ),
    (
        "train",
        ["model=resnet18", "model.conv=grouped", "model.groups=3"],
        "model.groups=3",
        "dividing every one of model.widths=[64, 128, 256, 512]",
    ),
    (
        "train",
        ["model=alexnet_lite", "model.conv=grouped", "model.groups=3"],
        "model.groups=3",
        "model=alexnet_lite's widths [64, 192, 384, 256, 256]",
    ),
    ("train", ["model=resnet18", "+model.widths=[64,0]"], "model.widths=[64, 0]", "positive integers"),
    ("train", ["+model.kernel_size=0"], "model.kernel_size=0", "an integer >= 1"),
    ("inspect", ["erf_images=0"], "erf_images=0", ">= 1"),
    ("eval", [*CKPT, "precision=fp64"], "precision='fp64'", "auto, fp32, bf16, fp16"),
    ("train", ["model=resnet18", "model.conv_impl=fast"], "conv_impl='fast'", "torch, manual"),
    ("train", ["model.channels=[32,0,128]"], "model.channels=[32, 0, 128]", "positive integers"),
    ("train", ["model.channels=[]"], "model.channels=[]", "non-empty list of positive integers"),
    ("train", ["model.channels=32"], "model.channels=32", "list of positive integers"),
    ("train", ["model=hdc", "model.dilations=[1,2]"], "model.dilations=[1, 2]", "a list of 3 positive integers"),
    ("train", ["model=hdc", "model.dilations=[1,-2,5]"], "model.dilations=[1, -2, 5]", "positive integers"),
    (
        "train",
        ["model=hdc", "model.dilations=[8,8,8]"],
        "model.dilations=[8, 8, 8] shrink a 32×32 input below one pixel",
        "(3×3 kernels, no padding); use smaller rates",
    ),
    (
        "train",
        [*SYN, "data.image_size=8", "+model.kernel_size=5"],
        "model.dilations=[1, 1, 1] shrink a 8×8 input",
        "(5×5 kernels, no padding)",
    ),
    ("train", ["model=alexnet_lite", "model.hidden=0"], "model.hidden=0", ">= 1"),
    ("train", ["model=alexnet_lite", "model.dropout=1"], "model.dropout=1", "[0, 1)"),
    ("train", [*GAN, "model.z_dim=0"], "model.z_dim=0", ">= 1"),
    ("train", [*GAN, "model.dim=1.5"], "model.dim=1.5", "an integer >= 1"),
    ("train", [*GAN, "model.d_norm=group"], "model.d_norm='group'", "auto, batch, layer, none"),
    ("train", ["task.label_smoothing=1"], "task.label_smoothing=1", "a number in [0, 1)"),
    ("train", ["task.label_smoothing=abc"], "task.label_smoothing='abc'", "[0, 1)"),
    ("train", [*GAN, "gan.loss=lsgan"], "gan.loss='lsgan'", "bce, hinge, wgan-gp"),
    ("train", [*GAN, "gan.d_steps=0"], "gan.d_steps=0", ">= 1"),
    ("train", [*GAN, "gan.gp_weight=-1"], "gan.gp_weight=-1", ">= 0"),
    ("train", [*GAN, "gan.fid_every=-1"], "gan.fid_every=-1", ">= 0"),
    ("train", [*GAN, "gan.fid_samples=1"], "gan.fid_samples=1", ">= 2"),
    (
        "train",
        [*GAN, "gan.loss=wgan-gp", "trainer.precision=fp16"],
        "gan.loss=wgan-gp with trainer.precision=fp16",
        "bf16 or fp32",
    ),
    (
        "train",
        [*GAN, "gan.loss=wgan-gp", "model.d_norm=batch"],
        "wgan-gp needs a critic without BatchNorm",
        "model.d_norm=layer",
    ),
    ("train", [*GAN, "batch_size=1"], "batch_size=1 is not allowed with a GAN", "at least 2 images per process"),
    ("train", [*GAN, "batch_size=2", "trainer.devices=2"], "batch_size=2", "at least 2 images per process"),
    (
        "train",
        ["model=dcgan", *SYN, "data.num_train=100"],
        "a GAN needs images scaled to [-1, 1]",
        "data.std=[0.5,0.5,0.5]",
    ),
    ("train", ["trainer.devices=3"], "batch_size=128 is not allowed with trainer.devices=3", "a multiple of 3"),
    ("bench", ["epochs=0"], "epochs=0", ">= 1"),
    ("bench", ["bench.steps=1"], "bench.steps=1", ">= 2"),
    ("bench", ["bench.warmup=0"], "bench.warmup=0", ">= 1"),
    ("bench", ["bench.repeats=x"], "bench.repeats='x'", ">= 1"),
    ("bench", ["bench.workers=-1"], "bench.workers=-1", "null or an integer >= 0"),
    ("bench", ["bench.json=5"], "bench.json=5", "null or a string"),
    ("eval", [], "ckpt=PATH is required", "a .pt file or a run directory"),
    ("eval", ["ckpt=null"], "ckpt=PATH is required", "run directory"),
    ("eval", ["ckpt=5"], "ckpt=5", "a string"),
    ("eval", [*CKPT, "batch_size=0"], "batch_size=0", ">= 1"),
    ("eval", [*CKPT, "batch_size=abc"], "batch_size='abc'", ">= 1"),
    ("eval", [*CKPT, "data.split=train"], "data.split='train'", "test, val"),
    ("eval", [*CKPT, "data.root=5"], "data.root=5", "null or a string"),
    ("eval", [*CKPT, "device=tpu"], "device='tpu'", "cuda:N"),
    ("sample", [], "ckpt=PATH is required", "run directory"),
    ("sample", [*CKPT, "n=0"], "n=0", ">= 1"),
    ("sample", [*CKPT, "n=abc"], "n='abc'", ">= 1"),
    ("sample", [*CKPT, "n=1", "interpolate=true"], "n=1 is not allowed with interpolate=true", ">= 2"),
    ("sample", [*CKPT, "interpolate=maybe"], "interpolate='maybe'", "true, false"),
    ("sample", [*CKPT, "seed=-1"], "seed=-1", "[0, 4294967295]"),
    ("sample", [*CKPT, "out=5"], "out=5", "a string"),
    ("sample", [*CKPT, "device=gpu"], "device='gpu'", "cuda:N"),
]


@pytest.mark.parametrize("command,overrides,names,allowed", BAD, ids=[f"{c} {' '.join(o)}" for c, o, _, _ in BAD])
def test_bad_values_are_one_line_naming_the_key(command: str, overrides: list[str], names: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        schema.validate(cfg_for(command, *overrides), command)
    one_line(err, names, allowed)


def test_good_values_at_the_edges_pass() -> None:
    for overrides in (
        ["optim.momentum=0", "optim.nesterov=false"], ["sched.min_lr_ratio=1", "sched.warmup_epochs=0.5"],
        ["trainer.channels_last=true"], [*SYN, "data.num_train=2", "data.val_fraction=0.4", "batch_size=1"],
        ["data.augment=null", "data.workers=0", "trainer.stop_after=1"],
        [*GAN, "batch_size=2", "gan.loss=wgan-gp", "model.d_norm=auto", "data.image_size=8"],
        ["model=hdc", "model.dilations=[2,4,8]"], ["model=hdc", "model.dilations=[10,10,11]", "+model.kernel_size=2"],
        ["model=alexnet_lite", "model.conv=grouped", "model.groups=64"],
        ["model=resnet18", "model.conv=grouped", "model.groups=64"],
    ):  # fmt: skip
        schema.validate(cfg_for("train", *overrides))
    schema.validate(cfg_for("bench"))  # out_dir is ${hydra:runtime.output_dir}: Hydra fills it in, nothing to check yet
    schema.validate(cfg_for("eval", *CKPT, "data.root=/data"), "eval")
    schema.validate(cfg_for("sample", *CKPT, "n=2", "interpolate=true"), "sample")


def test_every_shipped_combination_of_groups_validates() -> None:
    refused = {}
    for model in options("model"):
        cfg, current = copy.deepcopy(composed("train", (f"model={model}",))), {}
        for choice in itertools.product(*(options(g) for g in SWAPPED)):
            for group, name in zip(SWAPPED, choice, strict=True):
                if current.get(group) != name:  # as cfg_for does, but swapping only what changed: 240 configs
                    cfg[group], current[group] = nodes()[group][name], name
            try:
                schema.validate(cfg)
            except ConfigError as e:
                refused[(model, *choice)] = str(e)
    # The one shipped pairing that cannot train: a GAN on data normalised for classifiers.
    assert {(m, d) for m, d, _, _ in refused} == {("dcgan", "cifar10"), ("dcgan", "synthetic")}
    assert all("scaled to [-1, 1]" in e for e in refused.values()) and len(refused) == 2 * 4 * 4


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_and_every_point_of_its_sweep_validates(name: str) -> None:
    params = OmegaConf.select(OmegaConf.load(CONF / "experiment" / f"{name}.yaml"), "hydra.sweeper.params") or {}
    axes = [
        [f"{key}={v}" for v in PARSER.parse_override(f"{key}={values}").sweep_string_iterator()]
        for key, values in params.items()
    ]
    for point in itertools.product(*axes):
        schema.validate(cfg_for("train", f"+experiment={name}", *point))


def test_validate_builds_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("convlab.core.build.instantiate", lambda *a, **k: pytest.fail("validate built a _target_"))
    cfg = make_cfg(tmp_path / "run", "data=synthetic")
    before = OmegaConf.to_yaml(cfg)
    schema.validate(cfg)
    for command, overrides in (("bench", []), ("eval", CKPT), ("sample", CKPT), ("inspect", [])):
        schema.validate(cfg_for(command, *overrides), command)
    assert OmegaConf.to_yaml(cfg) == before and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown command"):
        schema.validate(cfg, "report")


def test_a_required_key_missing_from_a_saved_config_is_named() -> None:
    cfg = cfg_for("train")
    with open_dict(cfg):
        del cfg.trainer.log_every  # a checkpoint's config comes from outside: it may lack keys
    with pytest.raises(ConfigError, match=r"^trainer.log_every=None is not allowed; expected auto or an integer >= 1$"):
        schema.validate(cfg)


def test_a_batch_larger_than_the_loaded_training_split_is_refused_when_training() -> None:
    data = Synthetic(num_train=20, num_test=4, val_fraction=0.1)
    with pytest.raises(
        ConfigError, match=r"^batch_size=64 is larger than the 18 training images \(after data.val_fraction=0.1\)"
    ):
        data.loaders(64, torch.device("cpu"), training=True)
    assert len(data.loaders(18, torch.device("cpu"), training=True)["train"]) == 1
    assert len(data.loaders(64, torch.device("cpu"))["val"]) == 1  # evaluation and previews may ask for a larger batch
