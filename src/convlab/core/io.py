"""Atomic file writes: a reader never sees half a file, and a full disk is one line."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from convlab.core import interrupts
from convlab.core.errors import ConvlabError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)
# What torch.save's stream writer (PytorchStreamWriter, inline_container.cc) says when a write fails under it:
# "file write failed", or an enforce failure such as "unexpected pos 704 vs 598" that names no write at all.
TORCH_WRITER = ("write", "enforce fail", "inline_container", "pytorchstreamwriter", "unexpected pos")
FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota: freeing space lets a run continue
_watched: set[Path] = set()  # folders of runs in progress (see watch)


class WriteError(ConvlabError):
    """A file that could not be written (a full disk, a read-only or vanished folder), in one line naming it."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # the OS's error number, where it said one


def watch(folder: Path) -> None:
    """Mark a run's folder for its life: writes below it make subfolders, but never re-create it once it is gone."""
    _watched.add(Path(os.path.abspath(folder)))


def unwatch(folder: Path) -> None:
    """End what `watch` began (the run has ended)."""
    _watched.discard(Path(os.path.abspath(folder)))


def gone(folder: Path, what: str) -> WriteError:
    """The one line for a watched run folder deleted under its run."""
    return WriteError(f"run folder {folder} is gone (deleted while the run was going); {what} cannot be written")


def _watcher(path: Path) -> Path | None:
    """The watched run folder that `path` lies in, if any."""
    parents = Path(os.path.abspath(path)).parents
    return next((f for f in _watched if f in parents), None)


def _make_parents(path: Path, top: Path | None) -> None:
    """Create the folders `path` goes into; inside a watched run folder, only those below it."""
    if top is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not top.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(top))
    for folder in reversed([p for p in Path(os.path.abspath(path)).parents if top in p.parents]):
        folder.mkdir(exist_ok=True)  # no parents=True: a run folder deleted meanwhile stays deleted


def _disk_refusal(tmp: str) -> OSError | None:
    """The OS error that up to 1 MiB more in `tmp` meets (a full disk: No space left on device); None if none."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        return e
    try:
        for _ in range(16):
            os.write(fd, bytes(1 << 16))
        os.fsync(fd)
    except OSError as e:
        return e
    finally:
        os.close(fd)
    return None


def _write_error(path: Path, top: Path | None, e: BaseException, tmp: str | None) -> WriteError | None:
    """`e`, raised while writing `path`, as one WriteError line; None for what is no write failure (re-raised)."""
    if top is not None and not top.is_dir():
        return gone(top, str(Path(os.path.abspath(path)).relative_to(top)))
    if isinstance(e, OSError):
        return WriteError(f"cannot write {path}: {e.strerror or e}", e.errno)
    if isinstance(e, RuntimeError) and tmp and any(s in str(e).lower() for s in TORCH_WRITER):
        refusal = _disk_refusal(tmp)  # torch's own words name no reason: ask the file system
        if refusal is not None:
            return WriteError(f"cannot write {path}: {refusal.strerror or refusal}", refusal.errno)
        return WriteError(f"cannot write {path}: {str(e).strip().splitlines()[0]}")
    return None


def write_atomic(path: Path, write: Any) -> None:
    """Run write(tmp_path) in the target folder, then rename over `path`: readers never see half a file.

    The rename replaces a symbolic link at `path` rather than writing through it. A full disk,
    a read-only folder or a refused permission becomes one WriteError line naming `path`, also
    when torch.save's stream writer reports it as a RuntimeError. Inside a watched run folder
    (see `watch`) that was deleted, nothing is re-created: the error says the folder is gone.
    """
    path, top = Path(path), _watcher(path)
    try:
        _make_parents(path, top)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _write_error(path, top, e, None) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with interrupts.critical():  # Ctrl-C or SIGTERM takes effect after the rename (or the clean-up)
            write(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        try:
            error = _write_error(path, top, e, tmp) if isinstance(e, Exception) else None
        finally:
            Path(tmp).unlink(missing_ok=True)
        if error is None:
            raise
        raise error from None


def rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite an existing file within the space it already holds: a full disk's last resort, not atomic."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))  # never creates the file (or its folder)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror}", e.errno) from None
    try:
        st = os.fstat(fd)
        if len(data) > getattr(st, "st_blocks", 0) * 512:
            raise WriteError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}", errno.ENOSPC)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror}", e.errno) from None
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files a killed write left in `folder` (call only while holding the run's lock); returns how many."""
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file atomically (used for best.pt)."""
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
