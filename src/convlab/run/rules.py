"""The building blocks of convlab.run.schema's rule tables: value checks and the one-line refusal.

A check takes a plain value and returns None when it is allowed, otherwise what is allowed
("expected ..." or "choose one of: ..."). Nothing here knows a config key or imports torch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

from convlab.core.errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_SEED = 2**32 - 1  # numpy, and so Optuna's sampler (seeded with ${seed}), takes seeds below 2**32
MAX_NAME, MAX_PATH = 255, 4096  # bytes: one name in a path, and a whole path (Linux's NAME_MAX and PATH_MAX)
RUN_FILES = 128  # bytes a run folder's own files add below it (checkpoints/.last.pt.XXXXXXXX.tmp, event files)

# A check returns None for a good value, otherwise what is allowed ("expected ..." or "choose one of: ...").
Check = Callable[[Any], "str | None"]
Get = Callable[[str], Any]  # a config's plain value by dotted path: ABSENT when it has no such key
ABSENT = object()


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


def file_path(room: int = 0) -> Check:
    """A path the file system takes: no NUL, names of at most MAX_NAME bytes, MAX_PATH less `room` in all (absolute)."""
    most = MAX_PATH - 1 - room  # the C string's terminating NUL counts too
    text = f"expected a path of at most {most} bytes (made absolute) whose names are at most {MAX_NAME} bytes each"

    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "expected a string"
        if "\0" in v:
            return "expected a path without NUL characters"
        raw = os.fsencode(os.path.abspath(v))
        return None if len(raw) <= most and all(len(name) <= MAX_NAME for name in raw.split(b"/")) else text

    return check


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


def refuse(key: str, value: Any, allowed: str, context: str = "") -> ConfigError:
    """The one-line error for `key=value`; `context` names the other setting that rules it out."""
    shown = (
        f"{value[:60]!r}...({len(value)} characters)"
        if isinstance(value, str) and len(value) > MAX_NAME
        else repr(value)
    )
    return ConfigError(f"{key}={shown} is not allowed{f' with {context}' if context else ''}; {allowed}")


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= `minimum`; otherwise a ConfigError naming `name`."""
    if (allowed := integer(minimum)(value)) is not None:
        raise refuse(name, value, allowed)
    return value
