"""One way into a training run, for the CLI, the Python API, sweep jobs and tests alike.

`prepare` composes and validates the config once, plans a `resume=` once (the checkpoint is
read once), and claims and locks the run folder once; it hands the runner one `Prepared`.
Nothing else decides about resuming or claims a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, open_dict

from convlab.core.errors import ConfigError
from convlab.core.io import remove_stale_temp_files
from convlab.run import resume
from convlab.run.compose import compose
from convlab.run.rundir import Claim, RunDir, check_links, claim, holds_run, lock, refuse_taken, unlock
from convlab.run.schema import validate


@dataclass
class Prepared:
    """A run ready to build: its checked config, its claimed folder, its resume plan."""

    cfg: DictConfig  # validated; a resumed run's is the checkpoint's own, with this session's device and length
    plan: resume.Plan | None
    run_dir: RunDir | None = None  # None where this process writes nothing (write=False, DDP ranks > 0)
    claim: Claim | None = None  # a new folder this call took: released (emptied if nothing was written) by release()
    removed_temp_files: int = 0  # left by a write that a killed process never finished

    @property
    def finished(self) -> bool:
        """A resume of a run that already ended: there is nothing to train."""
        return bool(self.plan and self.plan.finished)

    def release(self) -> None:
        """Drop the folder's lock (a notebook's process outlives its runs); an unused new folder is removed."""
        if self.claim is not None:
            self.claim.release()
        elif self.run_dir is not None:
            unlock(self.run_dir.path)


def prepare(
    overrides: list[str], *, out_dir: Path | None = None, first: DictConfig | None = None, moved_by: str = "out_dir="
) -> Prepared:
    """`convlab train OVERRIDES` prepared for one process: `first` is the composed config when the CLI has it.

    `out_dir` is the folder the caller chose (the API's out_dir=, the CLI's hydra.run.dir);
    otherwise Hydra's default outputs/DATE/TIME, with a suffix when that is taken.
    `moved_by` names the option that asked for another folder, for a resume's refusal.
    """
    cfg = first.copy() if first is not None else compose("train", overrides, hydra=True)
    explicit = out_dir is not None
    folder = (out_dir if explicit else Path(cfg.hydra.run.dir)).absolute()  # as Hydra's output_dir is
    with open_dict(cfg):
        cfg.pop("hydra")
        cfg.out_dir = str(folder)
    if first is None:  # the CLI's preflight has validated `first` already
        validate(cfg)
    plan = resume.plan(cfg.resume, overrides) if cfg.resume else None
    if plan and plan.finished:  # nothing will be written into a finished run
        return Prepared(cfg, plan)
    if plan and plan.run_dir is not None:  # continue in the run's own folder
        if explicit and folder.resolve() != plan.run_dir.resolve():
            raise ConfigError(
                f"resume={cfg.resume} continues the run in {plan.run_dir} itself; drop {moved_by} "
                "(to branch a new run, copy the checkpoint out of the run folder)"
            )
        return _lock(resume.resume_config(cfg, plan), plan)
    taken = claim(folder, explicit=explicit)
    cfg.out_dir = str(taken.folder)
    if plan:
        cfg = resume.resume_config(cfg, plan)
    return Prepared(cfg, plan, RunDir(taken.folder), taken)


def prepare_config(cfg: DictConfig, *, write: bool = True, validated: bool = False) -> Prepared:
    """A composed config (a sweep job's, a test's, bench's) prepared: its resume planned, its folder checked and locked.

    With `write` false nothing is claimed or locked (benchmarks, DDP ranks other than 0).
    """
    plan = resume.plan(cfg.resume) if cfg.get("resume") else None
    if plan and plan.finished:
        return Prepared(cfg, plan)
    if plan:
        cfg = resume.resume_config(cfg, plan)
    if not validated:  # the session's own values (device=, trainer.stop_after=) on top of the checkpoint's
        validate(cfg)
    if not write:
        return Prepared(cfg, plan)
    out = Path(cfg.out_dir)
    if plan is None and holds_run(out):
        refuse_taken(out)
    out.mkdir(parents=True, exist_ok=True)
    return _lock(cfg, plan)


def _lock(cfg: DictConfig, plan: resume.Plan | None) -> Prepared:
    """Take the lock of the folder `cfg.out_dir` names, and clear what a killed write left there."""
    run_dir = RunDir(Path(cfg.out_dir))
    check_links(run_dir.path)  # before train.log is opened there
    lock(run_dir.path)
    removed = remove_stale_temp_files(run_dir.checkpoints) + remove_stale_temp_files(run_dir.path)
    return Prepared(cfg, plan, run_dir, removed_temp_files=removed)
