"""What TensorBoard's HPARAMS tab shows of a run: the keys its sweep varies first, a short curated set, its metrics.

TensorBoard orders hparams by `differs` (True first), then by name, and shows the first five as
columns (tensorboard/plugins/hparams/backend_context.py, _sort_and_reduce_to_hparams_limit). So
the swept keys are marked `differs`, and the rest is a dozen choices a student compares runs by,
not the whole flattened config (that stays in the run's TEXT tab). The summaries are written
when the run starts (TensorBoard lists it as running) and its end adds the status.
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

# The choices beside the swept keys: model, data, optimizer and lr, batch size, epochs, seed, precision, conv kind.
CURATED = (
    "model",
    "data",
    "optim",
    "optim.lr",
    "optim.weight_decay",
    "sched",
    "batch_size",
    "epochs",
    "seed",
    "trainer.precision",
    "model.conv",
)
STATUS = {"ok": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE, "diverged": api_pb2.STATUS_FAILURE}


def _scalar(value: Any) -> bool | float | str:
    """A value as TensorBoard's HPARAMS holds it: a bool, a number or a string (lists and None as text)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def choose(config: DictConfig | dict, swept: dict[str, Any], precision: str) -> dict[str, Any]:
    """The run's hparams: the swept keys (as the sweep named them) first, then the curated keys it has.

    A config group (model, data, optim, sched) shows as its choice's name; trainer.precision as the
    precision the run resolved (`auto` says nothing to compare).
    """
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    chosen = dict(swept)
    for key in CURATED:
        if key in chosen:
            continue
        value = precision if key == "trainer.precision" else OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            value = value.get("name")
        if value is not None:
            chosen[key] = value
    return {k: _scalar(v) for k, v in chosen.items()}


def _summary(tag: str, **content: Any) -> Summary:
    data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def start(hparams: dict[str, Any], differs: set[str], metrics: list[str]) -> list[Summary]:
    """The experiment (hparams in order, the swept ones marked `differs`; metric tags) and this session's start."""
    session = SessionStartInfo(start_time_secs=time.time())
    infos = []
    for key, value in hparams.items():
        if isinstance(value, bool):
            session.hparams[key].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, float):
            session.hparams[key].number_value, kind = value, api_pb2.DATA_TYPE_FLOAT64
        else:
            session.hparams[key].string_value, kind = value, api_pb2.DATA_TYPE_STRING
        # no domain: a discrete domain listing this run's value alone would filter out its sweep's other runs
        infos.append(api_pb2.HParamInfo(name=key, type=kind, differs=key in differs))
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    )
    return [
        _summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        _summary(metadata.SESSION_START_INFO_TAG, session_start_info=session),
    ]


def end(status: str) -> Summary:
    """This session's end: ok as success; failed and diverged as failure."""
    info = SessionEndInfo(status=STATUS.get(status, api_pb2.STATUS_UNKNOWN), end_time_secs=time.time())
    return _summary(metadata.SESSION_END_INFO_TAG, session_end_info=info)
