"""Atomic file writes: a reader never sees half a file, and a full disk is one line."""

from __future__ import annotations

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


def write_atomic(path: Path, write: Any) -> None:
    """Run write(tmp_path) in the target folder, then rename over `path`: readers never see half a file.

    The rename replaces a symbolic link at `path` rather than writing through it. A full disk,
    a read-only folder or a refused permission becomes one ConvlabError line naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise ConvlabError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with interrupts.critical():  # Ctrl-C or SIGTERM takes effect after the rename (or the clean-up)
            write(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ConvlabError(f"cannot write {path}: {e.strerror or e}") from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower():  # torch.save's stream writer on a full disk
            free = shutil.disk_usage(path.parent).free
            raise ConvlabError(
                f"cannot write {path}: {'No space left on device' if free < 1 << 20 else str(e).splitlines()[0]}"
            ) from None
        raise


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files a killed write left in `folder` (call only while holding the run's lock); returns how many."""
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file atomically (used for best.pt)."""
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
