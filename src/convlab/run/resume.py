"""`resume=`: everything about continuing a run, in one place.

A resume reads the checkpoint through the one trusted path (`checkpoint.load_checkpoint`), never
moves a run backwards (an older checkpoint than the run's `last.pt` is refused), leaves a
finished run untouched, accepts the user's original command with `resume=` added (overrides equal
to the saved values are fine; differing ones are named), and prints a resume command that can be
pasted back into a shell as printed, whatever the folder's name holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from convlab.core.errors import ConfigError, ConvlabError
from convlab.run.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from convlab.run.rundir import RunDir
from convlab.run.stopping import EarlyStop

# Keys a resumed run may change: where it runs and how long this session lasts, nothing it learns from.
MAY_CHANGE = ("device", "trainer.devices", "trainer.stop_after")


@dataclass
class Plan:
    """A checked resume: the checkpoint's state, the run folder it continues (None: a new run branches from it)."""

    checkpoint: Path
    run_dir: Path | None
    state: dict[str, Any]
    finished: bool


def plan(resume: str, overrides: list[str] = ()) -> Plan:
    """Check a `resume=` before anything is written: the checkpoint, its place in its run, the given overrides."""
    path = find_checkpoint(resume)
    state = load_checkpoint(path)
    run_dir = run_dir_of(path)
    if run_dir is not None:
        last = RunDir(run_dir).last
        if last.exists() and not last.samefile(path):
            try:
                newest = load_checkpoint(last)["epoch"]
            except ConvlabError:
                raise ConvlabError(
                    f"resume={resume}: the run's {last} is unreadable, so this older checkpoint could move the run "
                    f"backwards; copy {path.name} out of {run_dir} to start a new run from it"
                ) from None
            if newest > state["epoch"]:
                raise ConvlabError(
                    f"resume={resume} is at epoch {state['epoch']} but the run's {last} is at epoch {newest}: "
                    f"resuming it would discard epochs {state['epoch'] + 1}-{newest}; continue the run with "
                    f"resume={run_dir}, or copy {path.name} out of {run_dir} to branch a new run"
                )
    check_overrides(state["config"], list(overrides))
    stopped = EarlyStop.of_checkpoint(state).verdict(state["history"])
    if stopped and run_dir is None:  # its best weights and its test belong to the run it came from
        raise ConvlabError(
            f"resume={resume}: this checkpoint's run stopped early at epoch {stopped['epoch']} "
            f"({stopped['reason']}); there is nothing to continue: score it with convlab eval ckpt={resume}"
        )
    ended = state["epoch"] >= state["config"]["epochs"] or stopped is not None
    finished = run_dir is not None and ended and RunDir(run_dir).read_summary().get("status") == "ok"
    return Plan(path, run_dir, state, finished)


def finished_text(p: Plan) -> str:
    """One line on a finished run: where, and after which epoch (an early stop says so)."""
    epoch, epochs = p.state["epoch"], p.state["config"]["epochs"]
    how = f"stopped early at epoch {epoch} of {epochs}" if epoch < epochs else f"epoch {epoch} of {epochs}"
    return f"run {p.run_dir} is finished ({how})"


def finished_summary(p: Plan) -> dict[str, Any]:
    """What `train` returns for a finished run: its summary as written, untouched."""
    return RunDir(p.run_dir).read_summary()  # plan() found it saying "ok"


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _leaves(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): node}


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(absent)"
        node = node[part]
    return node


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_overrides(saved: dict[str, Any], overrides: list[str]) -> None:
    """Refuse overrides whose values differ from the saved config's, naming each with both values."""
    given = [
        o
        for o in overrides
        if "=" in o and _key(o) not in (*MAY_CHANGE, "resume", "out_dir") and not _key(o).startswith("hydra")
    ]
    if not given:
        return
    from convlab.run.compose import compose

    base, mine = compose("train", []), compose("train", given)
    base_leaves = _leaves(OmegaConf.to_container(base, resolve=False))
    mine_leaves = _leaves(OmegaConf.to_container(mine, resolve=False))
    touched = {k for k, v in mine_leaves.items() if base_leaves.get(k, "(absent)") != v}  # what the overrides changed
    groups = resources.files("convlab.conf")
    for key in map(_key, given):  # and what they name, even where it equals the default
        if "." not in key and (groups / key).is_dir():
            touched |= {f"{key}.name"} & set(mine_leaves)
        else:
            touched |= {k for k in mine_leaves if k == key or k.startswith(f"{key}.")}
    differ = []
    for k in sorted(touched - {"out_dir", "resume", *MAY_CHANGE}):
        value = OmegaConf.select(mine, k, throw_on_resolution_failure=False)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if value != _get(saved, k):
            differ.append(f"{k} (saved {_get(saved, k)!r}, given {value!r})")
    if differ:
        allowed = ", ".join(f"{k}=" for k in MAY_CHANGE)
        raise ConfigError(
            "resume= continues a run with its saved config, and these values differ from it: "
            f"{'; '.join(differ)}; drop them (only {allowed} may change)"
        )


def resume_config(cfg: DictConfig, p: Plan) -> DictConfig:
    """The checkpoint's config with this session's device and length, writing to its run folder (a branch: out_dir)."""
    saved = OmegaConf.create(p.state["config"])
    saved.device, saved.resume, saved.trainer.stop_after = cfg.device, cfg.resume, cfg.trainer.stop_after
    saved.trainer.devices = cfg.trainer.devices
    saved.out_dir = str(p.run_dir or cfg.out_dir)
    return saved
