"""torch.distributed for the train stage: one process by default, DistributedDataParallel under torchrun.

torchrun (torch.distributed.run) starts the processes and sets WORLD_SIZE, RANK and LOCAL_RANK; this module
reads them, joins the process group (NCCL on CUDA, gloo on CPU) and gives the training loop what it needs:
which process it is, its device, its share of the data, and sums across processes. With WORLD_SIZE unset or
1 nothing is initialised and the training loop runs exactly as a plain single process.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from lungseg.errors import UserError


class DistributedConfigError(UserError, ValueError):
    """The process layout does not fit the params (e.g. a batch that cannot be split evenly)."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes outputs, checkpoints and MLflow records."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def processes_from_env(environ: Mapping[str, str]) -> Processes:
    """The layout torchrun announces in the environment; a single process when it is absent."""
    try:
        return Processes(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise DistributedConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher(environ: Mapping[str, str]) -> None:
    """Under torchrun, make this worker end when its launcher dies.

    torchrun starts each worker in a session of its own, so a SIGKILL to the launcher's process group (a kill
    -9 of `dvc repro`, a CI job's time-out) would leave the worker training on, writing checkpoints behind the
    back of the next run. The kernel's parent-death signal ties the worker's life to the launcher's (Linux).
    """
    if "TORCHELASTIC_RUN_ID" not in environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the launcher died before the line above: nobody would reap our results
        os._exit(1)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """train.batch_size is the batch of one optimizer step, split evenly across the processes."""
    if batch_size % world_size:
        raise DistributedConfigError(
            f"train.batch_size {batch_size} cannot be split evenly across {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    return batch_size // world_size


def start(processes: Processes, device: torch.device) -> torch.device:
    """Join the process group when there is more than one process; returns this process's device.

    Each CUDA process takes the GPU of its local rank. The timeout bounds how long a process waits for a
    peer that died, instead of hanging forever.
    """
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    if processes.is_distributed and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=processes.rank, world_size=processes.world_size,
            timeout=datetime.timedelta(minutes=10),
            device_id=device if device.type == "cuda" else None,
        )
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, processes: Processes, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when distributed (gradients averaged across processes)."""
    if not processes.is_distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper: what checkpoints hold."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a process group: the one that prints progress."""
    return not dist.is_initialized() or dist.get_rank() == 0


def train_sampler(dataset: Dataset, processes: Processes, seed: int) -> DistributedSampler | None:
    """Distributed, each process draws its share of one seeded permutation per epoch (set_epoch reshuffles);
    None for one process, whose loader shuffles by itself."""
    if not processes.is_distributed:
        return None
    return DistributedSampler(dataset, num_replicas=processes.world_size, rank=processes.rank,
                              shuffle=True, seed=seed)


def shard(dataset: Dataset, processes: Processes) -> Dataset:
    """Every world_size-th item from this rank: evaluation shards with no padding or repeats, so summed counts
    over all processes equal one process's counts over the whole split."""
    if not processes.is_distributed:
        return dataset
    return Subset(dataset, range(processes.rank, len(dataset), processes.world_size))


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (float64 or int64 tensor on the CPU); identity for one process."""
    if not dist.is_initialized():
        return values
    # NCCL reduces only tensors on the GPU; gloo only on the CPU.
    on_device = values.to(torch.device("cuda", torch.cuda.current_device())) if dist.get_backend() == "nccl" else values
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu()
