"""Matplotlib figures for TensorBoard and reports.

Built with the object-oriented API (Figure, not pyplot): no display, no global figure
registry to leak, and no backend switch imposed on a notebook that imports convlab.

Sizes are chosen for TensorBoard, whose IMAGES cards scale an image down to about 370 px wide
(measured: TensorBoard 2.21 in Chromium at 1400 px): text of F points on a W-inch figure at
100 dpi shows about F·100/72 · 370/(100·W) pixels tall there, so F/W >= 1.75 keeps it at 9 px or more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

CELL_TEXT_MAX = 20  # more classes than this: cells too small for numbers, the colours alone are drawn


def confusion_figure(cm: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """A confusion-matrix heat map of recall per true class: recall % in each cell, each class's image count."""
    k = len(class_names)
    recall = cm / cm.sum(1, keepdim=True).clamp(min=1)
    side = 0.6 * min(max(k, 6), CELL_TEXT_MAX)  # 10 classes: 7.0 × 6.8 in, 700 × 680 px
    fig = Figure(figsize=(1.0 + side, 0.8 + side), dpi=100)
    ax = fig.add_subplot()
    shown = ax.imshow(recall.numpy(), cmap="Blues", vmin=0, vmax=1)
    big = k <= CELL_TEXT_MAX  # cells large enough for a number read at card width
    if big:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, f"{recall[i, j] * 100:.0f}", ha="center", va="center", fontsize=13,
                    color="white" if recall[i, j] > 0.5 else "black",
                )  # fmt: skip
    size = 13 if big else 7
    counts = [f"{name} ({int(n)})" for name, n in zip(class_names, cm.sum(1).tolist(), strict=True)]
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
    ax.set_yticks(range(k), counts, fontsize=size)
    ax.set_xlabel("predicted class", fontsize=13)
    ax.set_ylabel("true class (test images)", fontsize=13)
    what = "recall %, rows = true class" if big else f"{k} classes, recall as colour"
    ax.set_title(f"confusion matrix: {what}", fontsize=13)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, format=lambda v, _: f"{v:.0%}")
    bar.set_label("recall (share of the true class)", fontsize=12)
    bar.ax.tick_params(labelsize=12)
    fig.tight_layout()
    return fig


def field_figure(field: torch.Tensor, title: str) -> Figure:
    """An effective field (H, W) in [0, 1] as a heat map over input pixels, titled, with a colour bar."""
    # NaN (weights of a diverged run) draws as unseen
    pixels = field.detach().float().cpu().nan_to_num(0.0).clamp(0, 1).numpy()
    fig = Figure(figsize=(5.0, 4.5), dpi=100)
    ax = fig.add_subplot()
    # nearest, never smoothed: the gridding holes of a dilated network must stay visible
    shown = ax.imshow(pixels, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("x (input pixel)", fontsize=10)
    ax.set_ylabel("y (input pixel)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("mean |∂ centre unit / ∂ input|, normalised", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig
