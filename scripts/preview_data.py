"""Save a grid of training images, one row per class, as the model sees them (augmented, de-normalised).

python scripts/preview_data.py data=synthetic out=docs/synthetic.png
python scripts/preview_data.py data=cifar10 data.root=../shared/data/cifar10-subset out=cifar.png

A bad argument (an override convlab refuses, out= or per_class=) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from convlab.core.build import build
from convlab.core.errors import ConvlabError
from convlab.run.compose import compose
from convlab.run.schema import validate

OWN = ("out=", "per_class=")  # this script's own arguments; the rest are conf/train.yaml overrides


def options(args: list[str]) -> tuple[str, int]:
    """out=PATH and per_class=N from `args`, checked (a ConvlabError names a bad one)."""
    opts = dict(a.split("=", 1) for a in args if a.startswith(OWN))
    out, per_class = opts.get("out", "data_preview.png"), opts.get("per_class", "8")
    if not re.fullmatch(r"\d+", per_class) or int(per_class) < 1:
        raise ConvlabError(f"per_class={per_class!r} is not allowed; expected an integer >= 1")
    path = Path(out)
    if path.suffix.lower() not in Image.registered_extensions():
        raise ConvlabError(f"out={out!r} is not allowed; expected an image file name such as data_preview.png")
    if path.is_dir() or not path.parent.is_dir():
        raise ConvlabError(f"out={out!r} is not allowed; expected a file path in an existing folder")
    return out, int(per_class)


def preview(args: list[str]) -> str:
    """Compose conf/train.yaml with `args` (plus out=PATH, per_class=N), write the grid; returns what was written."""
    out, per_class = options(args)
    cfg = compose("train", [a for a in args if not a.startswith(OWN)])
    validate(cfg, "train")
    data = build(cfg.data, "data")
    loader = data.loaders(4096, torch.device("cpu"), seed=cfg.seed)["train"]
    loader.set_epoch(1)
    x, y = next(iter(loader))
    rows = [x[y == k][:per_class] for k in range(data.info.num_classes)]
    if not any(len(r) == per_class for r in rows):
        raise ConvlabError(f"per_class={per_class} is more images than any class has in a batch of {len(y)}")
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    grid = torch.cat([r for r in rows if len(r) == per_class]) * std + mean
    save_image(grid.clamp(0, 1), out, nrow=per_class, padding=2)
    return f"{out}: {per_class} augmented training images per row, rows = {', '.join(data.info.class_names)}"


def main(args: list[str]) -> None:
    """Write the grid; a user error ends as one line on stderr and exit code 2."""
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return
    try:
        print(preview(args))
    except (ConvlabError, OSError) as e:
        print(f"preview_data.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
