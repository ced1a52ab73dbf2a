"""Matplotlib figures for TensorBoard and reports.

Built with the object-oriented API (Figure, not pyplot): no display, no global figure
registry to leak, and no backend switch imposed on a notebook that imports convlab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


def confusion_figure(cm: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """A confusion-matrix heat map, rows normalised to recall, with counts in the cells."""
    k = len(class_names)
    recall = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(recall.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if recall[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig
