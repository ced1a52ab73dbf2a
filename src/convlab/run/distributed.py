"""Several processes, one per device, with torch.distributed: started by torchrun or by trainer.devices=N.

convlab reads the usual torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).
The process group is joined before Hydra starts, so rank 0 can hand every rank the same run
folder: Hydra's ${now:...} resolved in each process would otherwise give each rank its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from convlab.core.errors import ConvlabError


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process; (0, 0, 1) without torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join(args: list[str], prepare: Callable[[], tuple[list[str], int | None]]) -> tuple[list[str], int | None]:
    """Join the process group; rank 0 runs `prepare` (it claims the run folder) and every rank gets its result.

    `prepare` returns the arguments for Hydra and an exit code when the command should end here
    (a finished resume, a refused folder: rank 0 has said why, the others end quietly with it).
    Ranks other than 0 write no .hydra folder or log file and show only warnings and errors.
    """
    rank, _, size = world()
    if "-m" in args or "--multirun" in args:
        sys.exit(
            "error: -m sweeps run one process per job; "
            "start several processes per job with a launcher, not around a sweep"
        )
    if not dist.is_initialized():
        # One group for both: gloo for CPU objects (like the folder name), NCCL for CUDA tensors.
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    result: list[object] = [None]
    if rank == 0:
        try:
            result = [prepare()]
        except ConvlabError as e:
            print(f"error: {e}", file=sys.stderr)
            result = [(args, 2)]
    dist.broadcast_object_list(result, src=0)
    chosen, code = result[0]
    if rank and code is None:
        chosen = [*chosen, "hydra.output_subdir=null", "hydra/job_logging=quiet"]
    return chosen, code


def join_submitit_job() -> None:
    """Inside a submitit job of several tasks (SLURM tasks_per_node > 1): one DDP process per task.

    The launcher already gave every task the same run folder; here each task learns its rank
    from submitit, joins the group, and ranks other than 0 keep their log lines to warnings.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank():
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)


def check_devices(spec: str, nproc: int) -> None:
    """Fail before starting `nproc` processes when `device=spec` does not exist or has too few GPUs."""
    from convlab.core.build import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda" and ":" not in spec and nproc > torch.cuda.device_count():
        raise ConvlabError(
            f"trainer.devices={nproc}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use at most that many, or device=cpu"
        )


def launch(nproc: int, argv: list[str]) -> None:
    """Start `convlab ARGV` in `nproc` processes on this machine with torch.distributed's launcher (torchrun)."""
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "convlab", *argv])
    except Exception as e:  # a worker failed; its own error is already on the terminal
        sys.exit(f"error: a training process failed ({type(e).__name__})")


def wrap(module: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """A model ready for data-parallel training: SyncBatchNorm if asked, inside DistributedDataParallel."""
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # keeps the Parameter objects
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The elementwise sum (or max) over ranks; the tensor itself when training in one process."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


def leave() -> None:
    """Wait for every rank (rank 0 tests alone, after the others are done), then close the process group.

    A rank that exits with its group open can abort in gloo's threads ("terminate called without an
    active exception"), and torchrun then stops rank 0 mid-test with SIGTERM.
    """
    if dist.is_initialized():
        gather(None)  # a barrier through the same object path the run already uses, on any backend
        dist.destroy_process_group()


def gather(obj: object) -> list:
    """Every rank's `obj`, in rank order (a list of one in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
