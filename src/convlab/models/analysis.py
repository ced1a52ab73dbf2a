"""A model's layers with output shapes, parameters, MACs and receptive fields.

MACs are counted by torch.utils.flop_counter.FlopCounterMode, which counts 2 FLOPs per
multiply-add (MACs = FLOPs / 2), on one image; it counts what actually runs, so the manual
im2col convolution (a batched matmul) and the shift (slicing: none) are counted like the rest.
The theoretical receptive field of each layer follows the main path: r += d·(k-1)·jump,
jump *= stride. The effective field (Luo et al. 2016) is the mean |∂ centre unit / ∂ input|
over real images, drawn as a heat map over input pixels (core/plots.py): it shows what the network
actually sees, holes included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convlab.models.layers import ConvBNAct, GroupedConv, ManualConv2d, SeparableConv, Shift, ShiftConv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROWS = (ConvBNAct, nn.Conv2d, Shift, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
KIND_NAMES = {SeparableConv: "separable", GroupedConv: "grouped", ShiftConv: "shift"}
UNIT = "MACs = multiply-adds for one image = FLOPs / 2 (torch.utils.flop_counter counts 2 FLOPs per multiply-add)"


def rows_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a table row stands for: conv units (not their parts), pools and linear layers, in order."""
    rows: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, ROWS) and not any(name.startswith(f"{r}.") for r, _ in rows):
            rows.append((name, module))
    return rows


def kind_of(module: nn.Module) -> str:
    """standard | separable | grouped(g) | shift, with "manual" for the im2col implementation; else the layer type."""
    conv = module[0] if isinstance(module, ConvBNAct) else module
    impl = ", manual" if any(isinstance(m, ManualConv2d) for m in module.modules()) else ""
    if isinstance(conv, GroupedConv):
        return f"grouped({conv[0].groups}){impl}"
    if type(conv) in KIND_NAMES:
        return KIND_NAMES[type(conv)] + impl
    if isinstance(conv, nn.Conv2d):
        return f"standard {conv.kernel_size[0]}×{conv.kernel_size[1]}{impl}"
    return {nn.AdaptiveAvgPool2d: "global avg pool", nn.MaxPool2d: "max pool", nn.AvgPool2d: "avg pool"}.get(
        type(module), type(module).__name__.lower()
    )


def geometry(module: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, dilation) of the first spatial op in `module`; None for a global one (linear, 1×1 pool)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.kernel_size[0], m.stride[0], m.dilation[0]
        if isinstance(m, Shift):
            return m.kernel_size, m.stride, m.dilation
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride or m.kernel_size))
            return k, s, getattr(m, "dilation", 1) if isinstance(getattr(m, "dilation", 1), int) else m.dilation[0]
    return None


def layer_table(model: nn.Module, image: tuple[int, int, int]) -> dict[str, Any]:
    """Per layer: name, kind, output shape, parameters, MACs, receptive field, jump; totals; for a (C, H, W) image."""
    rows, shapes = rows_of(model), {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape[1:])))
        for name, m in rows
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *image, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()
    prefix = type(model).__name__
    field, jump, layers = 1, 1, []
    for name, module in rows:
        shortcut = "shortcut" in name.split(".")  # a parallel branch: not on the main path the field follows
        if not shortcut and field is not None:
            g = geometry(module)
            if g is None:
                field = None
            else:
                field, jump = field + g[2] * (g[0] - 1) * jump, jump * g[1]
        layers.append({
            "name": name, "kind": kind_of(module), "output": shapes.get(name),
            "parameters": sum(p.numel() for p in module.parameters()),
            "macs": sum(flops.get(f"{prefix}.{name}", {}).values()) // 2,
            "receptive_field": None if shortcut else field if field is not None else "global",
            "jump": None if shortcut or field is None else jump,
        })  # fmt: skip
    total = {"parameters": sum(p.numel() for p in model.parameters()), "macs": counter.get_total_flops() // 2}
    return {"input": list(image), "unit": UNIT, "layers": layers, "total": total}


def effective_field(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """Luo et al. 2016: mean over `images` of |∂ (centre unit of `layer`, channels summed) / ∂ input|, (H, W), max 1."""
    module = dict(model.named_modules())[layer]
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    model.eval()  # BatchNorm's running statistics and no dropout: the same field for every image order
    try:
        x = images.detach().float().clone().requires_grad_(True)
        model.forward(x)  # forward, not __call__: a model compiled in place would recompile for the gradient
        out = captured[-1]
        out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    finally:
        hook.remove()
        model.train(was_training)
    field = x.grad.abs().sum(1).mean(0)
    return field / field.max().clamp_min(1e-30)


def field_layer(table: dict[str, Any]) -> str:
    """The last layer on the main path whose output is still a spatial map (before global pooling)."""
    spatial = [
        r
        for r in table["layers"]
        if r["receptive_field"] not in (None, "global") and r["output"] and len(r["output"]) == 3
    ]
    return spatial[-1]["name"]


def field_of(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, str, dict[str, Any]]:
    """The effective field of `model`'s last spatial layer over `images` (N, C, H, W), that layer, and the table."""
    table = layer_table(model, tuple(images.shape[1:]))
    layer = field_layer(table)
    with torch.enable_grad():
        return effective_field(model, images, layer), layer, table


def field_image(field: torch.Tensor, layer: str, table: dict[str, Any]) -> Figure:
    """The field as a figure titled with `layer`, its theoretical receptive field and the extent measured."""
    from convlab.core.plots import field_figure  # matplotlib costs ~0.7 s to import: only when a field is drawn

    rf = next(r["receptive_field"] for r in table["layers"] if r["name"] == layer)
    e = field_extent(field)
    holes = f", {e['holes']} holes (gridding)" if e["holes"] else ", no holes"
    title = f"effective field of {layer}\ntheoretical {rf}×{rf} pixels, measured {e['size'][0]}×{e['size'][1]}{holes}"
    return field_figure(field, title)


def field_extent(field: torch.Tensor) -> dict[str, Any]:
    """The bounding box of the pixels the field reaches, and how many inside it it misses (gridding holes)."""
    rows, cols = (field > 1e-6).nonzero(as_tuple=True)  # NaN compares false: a diverged run's field reaches nothing
    if not len(rows):
        return {"size": [0, 0], "holes": 0}
    box = field[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return {"size": [int(box.shape[0]), int(box.shape[1])], "holes": int((box <= 1e-6).sum())}


def macs_of(model: nn.Module, image: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass on one (C, H, W) image."""
    return layer_table(model, image)["total"]["macs"]
