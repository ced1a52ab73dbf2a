"""Save a grid of training images, one row per class, as the model sees them (augmented, de-normalised).

python scripts/preview_data.py data=synthetic out=docs/synthetic.png
python scripts/preview_data.py data=cifar10 data.root=../shared/data/cifar10-subset out=cifar.png
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_module
from torchvision.utils import save_image

from convlab.core.build import build


def main(args: list[str]) -> None:
    """Compose conf/train.yaml with `args` (plus out=PATH, per_class=N) and write the grid."""
    opts = dict(a.split("=", 1) for a in args if a.startswith(("out=", "per_class=")))
    with initialize_config_module("convlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[a for a in args if not a.startswith(("out=", "per_class="))])
    data = build(cfg.data, "data")
    per_class = int(opts.get("per_class", 8))
    loader = data.loaders(4096, torch.device("cpu"), seed=cfg.seed)["train"]
    loader.set_epoch(1)
    x, y = next(iter(loader))
    rows = [x[y == k][:per_class] for k in range(data.info.num_classes)]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    grid = torch.cat([r for r in rows if len(r) == per_class]) * std + mean
    out = opts.get("out", "data_preview.png")
    save_image(grid.clamp(0, 1), out, nrow=per_class, padding=2)
    print(f"{out}: {per_class} augmented training images per row, rows = {', '.join(data.info.class_names)}")


if __name__ == "__main__":
    main(sys.argv[1:])
