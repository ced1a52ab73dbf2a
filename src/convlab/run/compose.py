"""Composing a command's configs from conf/ and checking them, before Hydra runs or any folder exists.

The CLI's preflight and the Python API (convlab.app.api) build their configs here, so both refuse the
same things in the same one-line words.
"""

from __future__ import annotations

import difflib
import itertools
import re
from importlib import resources

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from convlab.core.errors import ConfigError

GROUPS = ("model", "data", "optim", "sched", "task", "experiment", "search")
# Hydra plugins behind optional extras: name in a "Could not find" message -> the extra that installs it.
PLUGIN_EXTRAS = {"optuna": "tune", "submitit": "cluster", "joblib": "parallel"}


def _group_options(group: str) -> list[str]:
    folder = resources.files("convlab.conf") / group
    return (
        sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        if folder.is_dir()
        else []
    )


def compose(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """`config_name` composed with `overrides`; a failure is one ConfigError line (naming a missing plugin's extra).

    A key added with + inside convlab's own config (+trainer.epohcs=3) is refused like a misspelt one:
    Hydra would add it, and nothing would ever read it.
    """
    cfg = _compose(config_name, overrides, hydra)
    added = [_key(o) for o in overrides if o.startswith("+") and not o.startswith("++")]
    added = [k for k in added if k not in GROUPS and not k.startswith("hydra") and "@" not in k and "/" not in k]
    if added:
        base = _compose(config_name, [o for o in overrides if _key(o) not in added])
        for key in added:
            refusal = _not_a_key(base, key)
            if refusal:
                raise ConfigError(refusal)
    return cfg


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _not_a_key(cfg: DictConfig, key: str) -> str | None:
    """Why `key` is not a key of convlab's own config (with the nearest one), or None where a user's class takes it."""
    from convlab.run.trust import conf_targets

    path, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, path) if path else cfg
    if not isinstance(parent, DictConfig) or name in parent:
        return None
    node: object = cfg
    for part in path.split(".") if path else []:  # a user's own class (not conf/'s) may take settings of its own
        node = node.get(part) if isinstance(node, DictConfig) else None
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if isinstance(target, str) and not any(target in group for group in conf_targets().values()):
            return None
    keys = [str(k) for k in parent.keys() if not str(k).startswith("_") and str(k) != "hydra"]
    near = {f"{path}.{k}" if path else k: k for k in keys} | {p: p.rpartition(".")[2] for p in _paths(cfg)}
    close = difflib.get_close_matches(name, list(dict.fromkeys(near.values())), n=1)  # the leaf names, siblings first
    hint = f"did you mean {next(p for p, leaf in near.items() if leaf == close[0])}? " if close else ""
    return f"{key} is not a key of convlab's {path or 'top-level'} config; {hint}(its keys: {', '.join(keys)})"


def _paths(node: object, prefix: str = "") -> list[str]:
    """Every key path of a config, "trainer.early_stop.patience" style (`_target_` and friends left out)."""
    if not isinstance(node, DictConfig):
        return []
    out = []
    for k in node.keys():
        if str(k).startswith("_"):
            continue
        path = f"{prefix}{k}"
        out += [path, *_paths(node.get(k), f"{path}.")] if not OmegaConf.is_interpolation(node, str(k)) else [path]
    return out


def _compose(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """Hydra's compose of `config_name`, with its failures as one ConfigError line."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    outer = Singleton.get_state() if GlobalHydra.instance().is_initialized() else None  # a notebook's own Hydra session
    try:
        GlobalHydra.instance().clear()
        with initialize_config_module("convlab.conf", version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
    except Exception as e:
        text = str(e) or f"{type(e).__name__}: {e.__cause__ or e.__context__}"
        missing = re.search(
            rf"Could not (?:find|load) 'hydra/(?:launcher|sweeper)/({'|'.join(PLUGIN_EXTRAS)})(?:_local|_slurm)?'", text
        )
        if missing:  # an optional Hydra plugin (launcher or sweeper) that is not installed
            plugin = missing.group(1)
            asked = next(
                (a for a in overrides if a.startswith(("hydra/launcher=", "hydra/sweeper=", "+search="))), plugin
            )
            raise ConfigError(
                f"{asked} needs Hydra's {plugin} plugin, which is not installed: "
                f'pip install -e ".[{PLUGIN_EXTRAS[plugin]}]"'
            ) from None
        unknown = re.match(r"Could not override '([^']+)'", text)
        if unknown:  # Hydra's advice (append it with +) would add a key that nothing reads
            key = unknown.group(1)
            refusal = _not_a_key(_compose(config_name, [o for o in overrides if _key(o) != key], hydra), key)
            if refusal:
                raise ConfigError(refusal) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2])) from None
    finally:
        if outer is not None:
            Singleton.set_state(outer)


def expand(overrides: list) -> list[list[str]] | None:
    """Each job's overrides of a basic sweep (its first 32 jobs); None for sweeps only Hydra can expand."""
    choices = []
    for o in overrides:
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        except Exception:  # glob and interval sweeps are expanded by Hydra or a search plugin
            return None
        if o.key_or_group in GROUPS and not o.package and not o.is_delete():
            options = _group_options(o.key_or_group)
            bad = [v for v in values if v not in options]
            if bad:
                raise ConfigError(
                    f"{o.key_or_group}={bad[0]} is not a config in conf/{o.key_or_group}/; "
                    f"choose one of: {', '.join(options) or '(none)'}"
                )
        choices.append([f"{o.get_key_element()}={v}" for v in values] if o.is_sweep_override() else [o.input_line])
    return [list(job) for job in itertools.islice(itertools.product(*choices), 32)]


def _parses(parser: object, override: str) -> bool:
    try:
        parser.parse_override(override)
        return True
    except Exception:
        return False


def preflight(config_name: str, args: list[str]) -> DictConfig | None:
    """Check a command before Hydra runs or any folder exists; returns the first job's config (with its hydra node).

    Unknown group choices, misspelt keys and every bad value (convlab.run.schema) become one
    ConfigError line. Each job of a basic sweep is composed and validated, also the jobs of a
    sweep that an experiment config lists in hydra.sweeper.params. Anything this cannot parse
    is left to Hydra to report.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = get_args_parser().parse_args(args)
    except BaseException:  # argparse exits on bad flags; Hydra will say the same
        return None
    try:
        overrides = parser.parse_overrides(parsed.overrides)
    except Exception as e:
        bad = next((o for o in parsed.overrides if not _parses(parser, o)), " ".join(parsed.overrides))
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"cannot read the override {bad!r} ({reason}); quote values that hold = , [ ] or spaces: key='value'"
        ) from None
    if (
        parsed.help
        or parsed.hydra_help
        or parsed.cfg
        or parsed.info
        or parsed.config_dir
        or parsed.config_name
        or parsed.shell_completion
    ):
        return None
    from convlab.run.schema import validate  # imports torch (~3 s): not for --help, --cfg and --info

    jobs = expand(overrides)
    first = compose(config_name, jobs[0] if jobs else [o.input_line for o in overrides], hydra=True)
    if config_name == "report":
        return first
    swept = OmegaConf.select(first, "hydra.sweeper.params")
    if jobs and swept and (parsed.multirun or first.hydra.mode == RunMode.MULTIRUN):
        try:  # an experiment's own sweep (hydra.sweeper.params) adds to the command line's
            jobs = expand(overrides + parser.parse_overrides([f"{k}={v}" for k, v in swept.items()]))
        except Exception:
            jobs = None
    for i, job in enumerate(jobs or [None]):
        cfg = first.copy() if i == 0 else compose(config_name, job)
        with open_dict(cfg):  # the hydra node stays: hydra.run.dir and hydra.sweep.dir have rules too
            if "out_dir" in cfg:
                cfg.out_dir = "(the run folder)"  # ${hydra:runtime.output_dir} is only known once Hydra runs
        validate(cfg, config_name)
    return first
