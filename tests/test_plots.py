"""The figures people read: the confusion matrix and the effective field, legible where TensorBoard shows them."""

from __future__ import annotations

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convlab.core.plots import confusion_figure
from convlab.models.analysis import effective_field, field_image, layer_table
from convlab.models.hdc import HDCNet

CARD = 370  # how wide TensorBoard 2.21 shows an image in its IMAGES cards, scaling a wider one down


def pixels(fig: Figure) -> tuple[int, int]:
    """(width, height) of the rendered figure."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_width_height()


def shown_px(fig: Figure, points: float) -> float:
    """How tall text of `points` is once the figure is scaled to the card's width."""
    return points * fig.dpi / 72 * min(1.0, CARD / pixels(fig)[0])


def test_confusion_matrix_is_titled_and_legible_at_card_width() -> None:
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    cm = torch.randint(0, 100, (10, 10)) + 900 * torch.eye(10, dtype=torch.long)
    fig = confusion_figure(cm, names)
    assert pixels(fig) == (700, 680)  # report.py's confusion.png keeps its size
    ax, bar = fig.axes
    assert ax.get_title() == "confusion matrix: recall %, rows = true class"
    assert bar.get_ylabel() == "recall (share of the true class)"
    cells = ax.texts
    assert len(cells) == 100 and cells[0].get_text() == f"{cm[0, 0] / cm[0].sum() * 100:.0f}"
    assert ax.get_yticklabels()[3].get_text() == f"cat ({int(cm[3].sum())})"  # each true class's image count
    labels = [t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert min(shown_px(fig, size) for size in [cells[0].get_fontsize(), *labels]) >= 9


@pytest.mark.parametrize("k,text", [(2, 4), (30, 0)])
def test_confusion_matrix_of_few_and_many_classes(k: int, text: int) -> None:
    fig = confusion_figure(torch.ones(k, k, dtype=torch.long), [f"class {i}" for i in range(k)])
    assert len(fig.axes[0].texts) == text and pixels(fig)[0] >= 460  # room for the title; no numbers in tiny cells


def test_effective_field_figure_names_layer_extent_and_scale() -> None:
    torch.manual_seed(0)
    model = HDCNet(10, dilations=[2, 4, 8])
    table = layer_table(model, (3, 32, 32))
    field = effective_field(model, torch.randn(8, 3, 32, 32), "features.2")
    fig = field_image(field, "features.2", table)
    assert pixels(fig) == (500, 450)
    ax, bar = fig.axes
    title = "effective field of features.2\ntheoretical 29×29 pixels, measured 29×29, 616 holes (gridding)"
    assert ax.get_title() == title
    assert ax.get_xlabel() == "x (input pixel)" and ax.get_ylabel() == "y (input pixel)"
    assert bar.get_ylabel() == "mean |∂ centre unit / ∂ input|, normalised"
    image = ax.get_images()[0]
    assert image.get_interpolation() == "nearest" and image.get_array().shape == (32, 32)  # holes kept, not smoothed


def test_a_diverged_field_draws_as_unseen() -> None:
    model = HDCNet(10)
    fig = field_image(torch.full((32, 32), float("nan")), "features.2", layer_table(model, (3, 32, 32)))
    assert "measured 0×0, no holes" in fig.axes[0].get_title() and fig.axes[0].get_images()[0].get_array().max() == 0
