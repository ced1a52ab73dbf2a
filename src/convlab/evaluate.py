"""`evaluate_checkpoint(cfg)`: rebuild a run's model and data from its checkpoint and score a split."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from convlab.checkpoint import find_checkpoint, load_checkpoint
from convlab.config import build, resolve_device
from convlab.errors import ConfigError
from convlab.trainer import batches_on


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on `cfg.data.split`; returns the task's final evaluation."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("ckpt=PATH is required: a .pt file or a run directory")
    path = find_checkpoint(cfg.ckpt)
    state = load_checkpoint(path)
    saved = OmegaConf.create(state["config"])
    saved.data.split = cfg.data.split
    if cfg.data.root is not None:
        saved.data.root = cfg.data.root
    device = resolve_device(cfg.device)
    data = build(saved.data, "data")
    task = build(
        saved.task, "task",
        model=OmegaConf.to_container(saved.model), optim=OmegaConf.to_container(saved.optim),
        sched=OmegaConf.to_container(saved.sched), info=data.info, device=device, total_steps=1, steps_per_epoch=1,
    )  # fmt: skip
    for name, model in task.models.items():
        model.load_state_dict(state["task"]["models"][name])
    loader = data.loader(saved.data.split, cfg.batch_size)
    result = task.evaluate(batches_on(loader, device), final=True)
    result.pop("figures", None)
    return result | {
        "checkpoint": str(path),
        "epoch": state["epoch"],
        "model": saved.model.get("name"),
        "data": saved.data.get("name"),
        "split": saved.data.split,
        "images": len(loader.labels),
    }


def format_result(r: dict[str, Any]) -> str:
    """The evaluation as a small text report with a per-class table."""
    lines = [
        f"checkpoint  {r['checkpoint']}  ({r['model']} on {r['data']}, after epoch {r['epoch']})",
        f"split       {r['split']} ({r['images']} images)",
        f"loss        {r['loss']:.4f}",
        f"accuracy    {r['acc']:.4f}",
    ]
    if "per_class_acc" in r:
        width = max(len(name) for name in r["per_class_acc"])
        lines += ["", f"{'class':<{width}}  accuracy  correct/images"]
        for i, (name, acc) in enumerate(r["per_class_acc"].items()):
            row = r["confusion"][i]
            lines.append(f"{name:<{width}}  {acc:8.4f}  {row[i]:>7}/{sum(row)}")
    return "\n".join(lines)
