"""Ctrl-C and SIGTERM end a run at once, but never halfway through writing a file.

A signal handler that raises can interrupt any Python line, including one that holds a lock of
TensorBoard's writer or sits between writing a temp file and renaming it; the run's clean-up
could then hang on that lock. While `critical()` is active the signal is only noted, and raised
(KeyboardInterrupt, or Terminated for SIGTERM) as the outermost critical block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from convlab.core.errors import Terminated

_state = {"depth": 0, "pending": None}


def _raise(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: Any) -> None:
    if _state["depth"]:
        _state["pending"] = signum
    else:
        _raise(signum)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block that a signal does not cut short: the signal takes effect when the block ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"] is not None:  # only the outermost block's end delivers it
            signum, _state["pending"] = _state["pending"], None
            _raise(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within this block, SIGINT and SIGTERM go through `_handler` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def install() -> None:
    """Route SIGINT and SIGTERM through `_handler` for the rest of the process (the CLI's main thread)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _handler)
