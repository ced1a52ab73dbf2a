"""All run output but summary.json (rundir.RunDir's) in one place: TensorBoard, metrics.csv, figures, progress, logs.

Only the main process writes (rank 0 under DDP); elsewhere every method is a no-op, so
callers never check ranks.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlab.core import interrupts
from convlab.core.io import WriteError, gone, unwatch, watch, write_atomic
from convlab.tasks.base import numbers_only

log = logging.getLogger("convlab")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


def _fmt(key: str, v: Any) -> str:
    if key == "perf/images_per_s":
        return f"{v:.0f} img/s"
    if key == "perf/epoch_s":
        return f"{v:.1f} s"
    if key == "perf/first_step_s":
        return f"(first step {v:.2f} s)"
    if isinstance(v, float):
        return f"{key} " + (f"{v:.3e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4f}")
    return f"{key} {v}"


def _critical(method: Callable) -> Callable:
    """Run a writer method whole: a Ctrl-C or SIGTERM arriving meanwhile takes effect after it (see interrupts.py)."""

    @functools.wraps(method)
    def whole(*args: Any, **kwargs: Any) -> Any:
        with interrupts.critical():
            return method(*args, **kwargs)

    return whole


class _EventSink:
    """The event file's writer as TensorBoard's thread calls it: its first error is kept for RunLogger, not raised."""

    # Raised in the thread, an error (a full disk, a deleted folder) prints the thread's traceback and
    # surfaces at some later call; kept here, RunLogger says it in one line at its next flush.

    def __init__(self, inner: Any) -> None:
        self.inner, self.error = inner, None

    def _call(self, name: str, *args: Any) -> None:
        if self.error is None:  # after an error nothing more is written: no record follows a torn one
            try:
                getattr(self.inner, name)(*args)
            except Exception as e:
                self.error = e

    def write(self, data: bytes) -> None:
        """Append one record."""
        self._call("write", data)

    def flush(self) -> None:
        """Flush the file."""
        self._call("flush")

    def close(self) -> None:
        """Close the file."""
        self._call("close")


def _sink(writer: Any) -> _EventSink | None:
    """Put an _EventSink between TensorBoard's writer thread and the event file (None where its layout differs)."""
    queue = getattr(getattr(writer.file_writer, "event_writer", None), "_async_writer", None)
    worker = getattr(queue, "_worker", None)
    if getattr(worker, "_record_writer", None) is None or getattr(queue, "_writer", None) is not worker._record_writer:
        return None
    sink = _EventSink(worker._record_writer)
    queue._writer = worker._record_writer = sink  # both read it at each call
    return sink


class RunLogger:
    """Writes one run's curves and results into `out_dir`."""

    def __init__(self, out_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.writer, self.sink = None, None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            # A resumed run passes the first global step after its checkpoint: TensorBoard then drops what
            # the interrupted session wrote from there on, on every axis. Step curves count global steps;
            # per-epoch values sit at epoch numbers, below it (the trainer writes an epoch's row and its
            # checkpoint as one block, so a row without its checkpoint needs a hard crash in between).
            self.writer = SummaryWriter(str(self.out_dir), purge_step=purge_step)
            self.sink = _sink(self.writer)
            watch(self.out_dir)  # until close(): no write re-creates the folder if it is deleted meanwhile

    def _flush(self, close: bool = False) -> None:
        """Flush (or close) the event file; a failed write, here or in the writer thread, is one WriteError line."""
        try:
            if close:
                self.writer.close()
            else:
                self.writer.flush()
            error = self.sink and self.sink.error
        except Exception as e:
            error = (self.sink and self.sink.error) or e
        if error is None:
            return
        if not self.out_dir.is_dir():
            raise gone(self.out_dir, "its TensorBoard events")
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
        raise WriteError(f"cannot write TensorBoard events in {self.out_dir}: {reason}", getattr(error, "errno", None))

    def progress(self, batches: Iterable, total: int, desc: str) -> Iterator:
        """A tqdm.auto bar on a terminal or in Jupyter (a widget with ipywidgets, text without); hidden otherwise."""
        show = self.enabled and (sys.stderr.isatty() or "ipykernel" in sys.modules)
        with warnings.catch_warnings():  # tqdm warns once in a notebook without ipywidgets, then draws text bars
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm

        return tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not show)

    @_critical
    def log_steps(self, step: int, values: dict[str, float]) -> None:
        """Values at a global training step, as step/<key> on TensorBoard's step axis (flushed with the epoch)."""
        if self.enabled:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    @_critical
    def describe_run(self, command: str, config: dict[str, Any], charts: dict[str, list[str]], step: int) -> None:
        """What ran, as TensorBoard text (the command, the composed config), and the CUSTOM SCALARS layout.

        `charts` (the task's) maps a title to metric keys: one chart each with train and val on the
        epoch axis, and one with the step curves. `step` is the epoch the session starts from, so a
        resumed run adds its own command beside the first.
        """
        if not self.enabled:
            return
        from omegaconf import OmegaConf

        yaml = OmegaConf.to_yaml(config)
        self.writer.add_text("run/command", _code(command), step)
        self.writer.add_text("run/config", _code(yaml), step)
        self.writer.add_custom_scalars(layout(charts))
        self._flush()

    @_critical
    def log_epoch(self, epoch: int, epochs: int, row: dict[str, float], history: list[dict[str, float]]) -> None:
        """Scalars of one epoch to TensorBoard, the whole history to metrics.csv, one line to the log."""
        if not self.enabled:
            return
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, epoch)
        self._flush()
        self._write_csv(history)
        log.info("epoch %d/%d  %s", epoch, epochs, "  ".join(_fmt(k, v) for k, v in row.items() if k != "epoch"))

    def _write_csv(self, history: list[dict[str, float]]) -> None:
        keys = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        write_atomic(self.out_dir / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))

    @_critical
    def log_images(self, images: dict[str, Any], step: int, per_epoch: bool) -> None:
        """Batches (N, C, H, W) in [0, 1] as 8-wide grids: a TensorBoard image and a PNG per name.

        Per-epoch grids go to <name>/epoch_NNN.png, one-off grids to <name>.png.
        """
        if not self.enabled:
            return
        for name, batch in images.items():
            path = self.out_dir / name / f"epoch_{step:03d}.png" if per_epoch else self.out_dir / f"{name}.png"
            self.writer.add_image(name, _save_grid(batch, path), step)
        self._flush()

    @_critical
    def log_final(self, epoch: int, split: str, results: dict[str, Any]) -> None:
        """End-of-run results of `split`: scalars and figures to TensorBoard; figures and image grids as PNGs.

        The image grids of the final pass repeat the last epoch's in TensorBoard, so they only become files.
        """
        if not self.enabled:
            return
        for name, fig in results.get("figures", {}).items():  # a matplotlib Figure or a picture (3, H, W) in [0, 1]
            picture = (
                fig if isinstance(fig, torch.Tensor) else _rendered(fig)
            )  # rendered once, for the file and TensorBoard
            save_png(picture, self.out_dir / f"{name}.png")
            self.writer.add_image(f"{split}/{name}", picture, epoch)
        for name, batch in results.get("images", {}).items():
            _save_grid(batch, self.out_dir / f"{name}.png")
        for key, value in flatten(numbers_only(results)).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{split}/{key}", value, epoch)
        self._flush()

    @_critical
    def log_hparams(self, summaries: list[Any]) -> None:
        """HPARAMS summaries (convlab.run.hparams) inside this run's own event file, not a sub-run as add_hparams."""
        if not self.enabled:
            return
        for summary in summaries:
            self.writer.file_writer.add_summary(summary)
        self._flush()

    @_critical
    def close(self) -> None:
        """Flush and close the event file (a failed write is one WriteError line); the folder is no longer watched."""
        if self.writer is not None:
            try:
                self._flush(close=True)
            finally:
                unwatch(self.out_dir)


def image_grid(batch: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> one (3, H', W') picture, `nrow` images a row, black `padding` around each.

    torchvision.utils.make_grid's layout, without importing torchvision at run start (~2 s: it loads torch._dynamo).
    """
    x = batch.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = x.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i, image in enumerate(x):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_png(picture: torch.Tensor, path: Path) -> None:
    """A picture (C, H, W) in [0, 1] as a PNG file, written atomically (rounded as torchvision's save_image does)."""
    from PIL import Image

    pixels = picture.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="png"))


def _rendered(fig: Any) -> torch.Tensor:
    """A matplotlib Figure as an RGB picture (3, H, W) in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1).float() / 255


def _save_grid(batch: torch.Tensor, path: Path) -> torch.Tensor:
    """Save a batch in [0, 1] as an 8-wide grid PNG (written atomically); returns the grid (C, H, W)."""
    grid = image_grid(batch)
    save_png(grid, path)
    return grid


def _code(text: str) -> str:
    """`text` as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def layout(charts: dict[str, list[str]]) -> dict[str, dict[str, list]]:
    """The CUSTOM SCALARS layout for a task's charts: train vs val per epoch, and the step curves.

    A plain key (loss) is drawn as train/loss with val/loss, and per step as step/train/loss; a key
    that names its split (val/fid) only as itself, per epoch. Tags are regular expressions that
    TensorBoard matches from the start: anchored at both ends, train/loss does not also draw step/train/loss.
    """
    tag = lambda *parts: "^" + re.escape("/".join(parts)) + "$"  # noqa: E731
    split = lambda k: k.startswith(("train/", "val/"))  # noqa: E731
    epochs = {
        title: ["Multiline", [t for k in keys for t in ([tag(k)] if split(k) else [tag("train", k), tag("val", k)])]]
        for title, keys in charts.items()
    }
    steps = {
        title: ["Multiline", [tag("step", "train", k) for k in keys if not split(k)]]
        for title, keys in charts.items()
        if not all(map(split, keys))
    }
    return {
        "train vs val (per epoch)": epochs | {"learning rate": ["Multiline", ["^lr$", "^lr/"]]},
        "per step": steps | {"learning rate": ["Multiline", ["^step/lr$", "^step/lr/"]]},
    }


class ConsoleFormatter(logging.Formatter):
    """Bare messages on the terminal; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        """Prefix the level name from WARNING up."""
        msg = super().format(record)
        return f"{record.levelname.lower()}: {msg}" if record.levelno >= logging.WARNING else msg
