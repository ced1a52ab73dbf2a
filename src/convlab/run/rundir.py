"""Run folders: claimed before Hydra writes into them, locked for the run's life, never reused by a new run.

A new run gets a folder of its own: the default name (outputs/DATE/TIME) gains a suffix when two
runs start in the same second, and a folder named on the command line that already holds a run
is refused. The process holds an OS lock (flock on `.convlab.lock`) until it exits, so a second
process aimed at the same folder (a new run, or a resume) gets one line instead of interleaved
files. A run that fails before it wrote anything leaves no stub folder behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlab.core.errors import ConvlabError
from convlab.core.io import FULL, WriteError, gone, rewrite_in_place, write_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are still never reused, only concurrent use goes unchecked
    fcntl = None

LOCK_NAME = ".convlab.lock"
# A run folder's layout: every module names these files through RunDir, never by their spelling.
CKPT_DIR, LAST, BEST, SUMMARY, METRICS = "checkpoints", "last.pt", "best.pt", "summary.json", "metrics.csv"
RUN_FILES = (SUMMARY, METRICS, CKPT_DIR)
SWEEP_FILES = ("multirun.yaml", "summary.md", "summary.csv", "optimization_results.yaml")
# What Hydra appends to or writes by name (train.log, .hydra/) and the folders convlab writes into:
# a symbolic link there would send a write elsewhere. convlab's own files are replaced atomically,
# which replaces a link instead of writing through it.
REDIRECTS = ("train.log", ".hydra", "checkpoints", "samples")
GONE = (
    "the process ended while the run was running (killed, or its machine stopped); "
    "resume= continues from the last checkpoint"
)
_held: dict[Path, int] = {}  # folder -> descriptor of the lock this process holds
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+-]+")


def hydra_quote(value: str) -> str:
    """`value` as a Hydra override value: plain when it can be, else a quoted string Hydra reads back as is."""
    if _PLAIN.fullmatch(value):
        return value
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # backslashes before a quote or the end
    return "'" + escaped.replace("'", "\\'") + "'"


def resume_command(folder: Path | str, sweep: bool = False) -> str:
    """The shell command that continues the run (or the -m sweep) in `folder`, quoted for both the shell and Hydra."""
    return f"convlab train {'-m ' * sweep}{shlex.quote('resume=' + hydra_quote(str(folder)))}"


@dataclass(frozen=True)
class RunDir:
    """One run's folder: where its files live, its summary.json (this is its one writer), how to continue it."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        """checkpoints/: last.pt after every epoch, best.pt when the monitored metric improves."""
        return self.path / CKPT_DIR

    @property
    def last(self) -> Path:
        """checkpoints/last.pt."""
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        """checkpoints/best.pt."""
        return self.checkpoints / BEST

    def resume_command(self) -> str:
        """`convlab train resume=...` for this folder, ready to paste."""
        return resume_command(self.path)

    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict; {} when it is missing, a link, unreadable or not an object."""
        return read_summary(self.path)

    def write_summary(self, summary: dict[str, Any], last_resort: bool = False) -> None:
        """summary.json, atomically; a folder deleted under the run is not re-created.

        With `last_resort` (an ended run's status), a full disk rewrites the file within the space the
        previous summary holds: not atomic, but better than a summary that says "running" forever.
        """
        if not self.path.is_dir():
            raise gone(self.path, "its summary")
        # Indented, with lists of numbers kept on one line (confusion matrices stay readable).
        text = re.sub(
            r"\[\s*([-\d.e,\s]+?)\s*\]",
            lambda m: "[" + " ".join(m.group(1).split()) + "]",
            json.dumps(summary, indent=2, default=str),
        )
        try:
            write_atomic(self.path / SUMMARY, lambda tmp: Path(tmp).write_text(text + "\n"))
        except WriteError as e:
            if not (last_resort and e.errno in FULL):
                raise
            rewrite_in_place(self.path / SUMMARY, text + "\n")


def holds_run(folder: Path) -> bool:
    """Whether `folder` already holds a run (its summary, metrics, checkpoints or TensorBoard events)."""
    if not folder.is_dir():
        return False
    return any((folder / name).exists() for name in RUN_FILES) or any(folder.glob("events.out.tfevents.*"))


def holds_sweep(folder: Path) -> bool:
    """Whether `folder` already holds a sweep (Hydra's multirun.yaml, a summary, or job folders with runs)."""
    if not folder.is_dir():
        return False
    return any((folder / name).exists() for name in SWEEP_FILES) or any(
        holds_run(d) for d in folder.iterdir() if d.is_dir()
    )


def check_links(folder: Path) -> None:
    """Refuse a folder where a write of convlab's or Hydra's would go through a symbolic link, elsewhere."""
    links = [folder / name for name in REDIRECTS if (folder / name).is_symlink()]
    if (folder / ".hydra").is_dir() and not (folder / ".hydra").is_symlink():
        links += [p for p in (folder / ".hydra").iterdir() if p.is_symlink()]
    if links:
        raise ConvlabError(
            f"run folder {folder}: {links[0].relative_to(folder)} is a symbolic link; "
            "convlab does not write through links (remove it or use another folder)"
        )


def lock(folder: Path) -> None:
    """Hold the folder's lock until this process ends; another process holding it is one ConvlabError line."""
    folder = folder.resolve()
    if folder in _held or fcntl is None:
        return
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise ConvlabError(f"cannot use run folder {folder}: {path.name}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ConvlabError(
            f"run folder {folder} is in use by another convlab process{who}; wait for it to end, or use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[folder] = fd


def unlock(folder: Path) -> None:
    """Release the lock this process holds on `folder` (a no-op when it holds none)."""
    fd = _held.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def is_locked(folder: Path) -> bool:
    """Whether some live process (this one included) holds `folder`'s lock."""
    if folder.resolve() in _held:
        return True
    if fcntl is None or not (folder / LOCK_NAME).is_file():
        return False
    fd = os.open(folder / LOCK_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def read_summary(folder: Path) -> dict[str, Any]:
    """The folder's summary.json as a dict; {} when it is missing, a link, unreadable or not an object."""
    path = folder / SUMMARY
    try:
        summary = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else {}
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def settle(folder: Path) -> None:
    """In `folder` and its subfolders (sweep jobs): a "running" summary.json no process holds becomes "interrupted"."""
    for run in [folder, *(d for d in folder.iterdir() if d.is_dir())] if folder.is_dir() else []:
        summary = read_summary(run)
        if summary.get("status") == "running" and not is_locked(run):
            RunDir(run).write_summary(summary | {"status": "interrupted", "error": GONE})


def _mkdir(folder: Path, exist_ok: bool) -> bool:
    """Create `folder` (and parents); True when this call created it. OS refusals are one line."""
    if exist_ok and folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
        return True
    except FileExistsError:
        if not folder.is_dir():
            raise ConvlabError(f"cannot use {folder} as a run folder: it exists and is not a folder") from None
        if exist_ok:
            return False
        raise
    except OSError as e:
        raise ConvlabError(f"cannot create run folder {folder}: {e.strerror}") from None


@dataclass
class Claim:
    """A folder this process took for a run or a sweep: what was there before, so a failed start can be undone."""

    folder: Path
    created: bool
    before: set[str] = field(default_factory=set)

    def release(self) -> None:
        """Drop the lock; if no run was written (no summary.json), remove what this start added."""
        unlock(self.folder)
        settle(self.folder)  # a sweep's jobs stopped with it (Ctrl-C under a parallel launcher, say)
        if not self.folder.is_dir() or (self.folder / SUMMARY).exists() or holds_sweep(self.folder):
            return  # a run (or a sweep's jobs) was written: keep everything
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for entry in self.folder.iterdir():
            if entry.name not in self.before and (
                entry.name in (".hydra", "train.log", LOCK_NAME, "sweep.yaml")
                or entry.name.startswith("events.out.tfevents.")
            ):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def claim(folder: Path, *, explicit: bool, sweep: bool = False) -> Claim:
    """Take `folder` for a new run (or sweep), locked; a default name that is taken gets the next free suffix."""
    if not explicit:
        base = folder
        for i in range(1, 10_000):
            folder = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                if _mkdir(folder, exist_ok=False):
                    break
            except FileExistsError:
                continue
        lock(folder)
        return Claim(folder, created=True)
    created = _mkdir(folder, exist_ok=True)
    before = {p.name for p in folder.iterdir()}
    check_links(folder)
    taken = lambda: holds_sweep(folder) if sweep else holds_run(folder)  # noqa: E731
    if not taken():  # checked again under the lock: another process may have started there meanwhile
        lock(folder)
    if taken():
        unlock(folder)
        if LOCK_NAME not in before:
            (folder / LOCK_NAME).unlink(missing_ok=True)
        refuse_taken(folder, sweep)
    return Claim(folder, created, before)


def refuse_taken(folder: Path, sweep: bool = False) -> None:
    """Raise the one line for a new run (or sweep) aimed at a folder that already holds one."""
    if is_locked(folder):  # its run is still going: the lock's own words (which process), not "resume it"
        lock(folder)
    what = "a sweep" if sweep else "a run"
    hint = (
        "choose another hydra.sweep.dir"
        if sweep
        else f"continue it with: {resume_command(folder)}, or choose another folder"
    )
    raise ConvlabError(f"{folder} already holds {what}; a new one would overwrite it: {hint}")
