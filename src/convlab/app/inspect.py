"""`convlab inspect`: a model's layer table (shapes, parameters, MACs, receptive fields) and its effective field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from convlab.app.evaluate import data_info, load_task, local_data
from convlab.core.build import build, resolve_device
from convlab.core.errors import ConvlabError
from convlab.core.io import write_atomic
from convlab.data.base import DataInfo, ImageDataset
from convlab.data.loader import batches_on, normaliser
from convlab.data.synthetic import generate
from convlab.models.analysis import effective_field, field_extent, field_image, field_layer, layer_table
from convlab.run.schema import validate
from convlab.tasks.base import task_class


def format_table(table: dict[str, Any], title: str) -> str:
    """The layer table as aligned text, with the effective field's extent when there is one."""
    head = f"{'layer':<24}{'kind':<22}{'output':<14}{'params':>12}{'MACs':>14}{'RF':>8}{'jump':>6}"
    lines = [title, f"input {'×'.join(map(str, table['input']))}; {table['unit']}", "", head]
    for r in table["layers"]:
        shape = "×".join(map(str, r["output"] or ["?"]))
        rf = "-" if r["receptive_field"] is None else r["receptive_field"]
        rf = f"{rf}×{rf}" if isinstance(rf, int) else rf
        lines.append(
            f"{r['name']:<24}{r['kind']:<22}{shape:<14}{r['parameters']:>12,}{r['macs']:>14,}"
            f"{rf:>8}{r['jump'] or '-':>6}"
        )
    t = table["total"]
    lines += ["", f"{'total':<60}{t['parameters']:>12,}{t['macs']:>14,}"]
    if "effective_field" in table:
        e = table["effective_field"]
        holes = f", {e['holes']} holes inside it (gridding)" if e["holes"] else ", no holes"
        lines.append(
            f"effective field of {e['layer']} over {e['images']} images: "
            f"{e['size'][0]}×{e['size'][1]} pixels{holes} -> {e['png']}"
        )
        lines.append(f"effective-field images: {e['source']}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    """inspect.json (written atomically)."""
    text = json.dumps(result, indent=2) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def field_images(
    cfg: DictConfig, data_cfg: DictConfig, data: ImageDataset, info: DataInfo, device: torch.device
) -> tuple[torch.Tensor, str]:
    """`cfg.erf_images` test images normalised as in training, and what they are: stand-ins when files are absent."""
    name, missing = data_cfg.get("name"), data.absent()
    if missing is None:  # on disk (a folder there but unreadable is the loader's one-line error, as for train)
        where = f" from data.root={data_cfg.root}" if data_cfg.get("root") is not None else ""
        images = next(iter(batches_on(data.loaders(cfg.erf_images, device)["test"], device)))[0]
        return images, f"{name} test images{where}"
    # the table needs only shapes; the field, drawn over image-like pictures, still shows the network's reach
    x = generate(cfg.erf_images, cfg.seed, info.image_size)[0].to(device)
    scale, shift = normaliser(info.mean, info.std, device)
    how = f"{name} not found: {missing}; inspect never downloads; data.root=DIR reads real ones"
    return x * scale + shift, f"synthetic stand-ins ({how})"


def inspect_model(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """`convlab inspect`: the table of `cfg.model` or checkpoint `cfg.ckpt`; inspect.json and field PNG in `cfg.out`."""
    chosen = None
    if not cfg.ckpt:  # conf/'s or the command line's task
        chosen = task_class(OmegaConf.select(cfg, "task._target_", throw_on_resolution_failure=False))
    if chosen is not None and not chosen.inspectable:
        raise ConvlabError(
            f"model={cfg.model.get('name')} is a {chosen.kind}; "
            "convlab inspect reads classifiers (plain_cnn, hdc, resnet18, alexnet_lite)"
        )
    validate(cfg, "inspect")
    device = resolve_device(cfg.device)
    if cfg.ckpt:
        task, saved, state, path = load_task(cfg, device)
        if not task.inspectable:
            raise ConvlabError(
                f"checkpoint {path} holds a {saved.model.get('name')} {task.kind}; convlab inspect reads classifiers"
            )
        model, model_cfg = task.models[task.main_model], saved.model
        # its dataset, read from this machine's folder: data.root when the command names that dataset
        same = cfg.data.get("_target_") == saved.data.get("_target_")
        data_cfg = local_data(saved.data, cfg.data.get("root") if same else None)
        weights = f"trained: {path}, epoch {state['epoch']}"
    else:
        model_cfg, data_cfg, weights = cfg.model, cfg.data, f"initial weights (seed {cfg.seed})"
    data_cfg = data_cfg.copy()
    if "download" in data_cfg:
        data_cfg.download = False  # a table and a field are not worth fetching a dataset for
    data = build(data_cfg, "data")  # constructed, not loaded: the files are read only for the field's images
    if cfg.ckpt:
        info = data_info(state)
    else:
        info = data.info_from_config() or data.info
        torch.manual_seed(cfg.seed)
        model = build(
            model_cfg, "model", num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size
        ).to(device)
    table = layer_table(model, (info.in_channels, info.image_size, info.image_size))
    images, source = field_images(cfg, data_cfg, data, info, device)
    layer = field_layer(table)
    field = effective_field(model, images, layer)
    out = Path(str(cfg.out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvlabError(f"cannot create out={cfg.out} ({e.strerror or e})") from None
    name = model_cfg.get("name")
    title = f"{name}, model.conv={model_cfg.get('conv', 'standard')}, {weights}"
    figure = field_image(field, layer, table)
    write_atomic(out / "effective_field.png", lambda tmp: figure.savefig(tmp, format="png"))
    result = {
        "model": name, "conv": model_cfg.get("conv", "standard"), "data": data_cfg.get("name"), "weights": weights,
        **table,
        "effective_field": {"layer": layer, "images": len(images), "source": source,
                            "png": str(out / "effective_field.png"), **field_extent(field)},
    }  # fmt: skip
    write_json(result, out / "inspect.json")
    return result, title
