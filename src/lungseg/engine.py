"""train_one_epoch / validate / fit with explicit arguments, returning plain dicts; checkpoints."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from lungseg import checkpoint, distributed
from lungseg.config import KeepWeights, TrainConfig
from lungseg.distributed import Processes
from lungseg.errors import UserError
from lungseg.metrics import SegmentationScores, iou_dice

log = logging.getLogger(__name__)


class DeviceUnavailableError(UserError, RuntimeError):
    """train.device asks for a device this machine does not have."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU fails rather than silently using the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


# What oneDNN's instruction-set limit leaves it, by the names ONEDNN_MAX_CPU_ISA takes (oneDNN 3.x); every name
# with "_AMX" allows the tiles. Unset, DEFAULT, ALL and names oneDNN does not know leave it everything, as in oneDNN.
_ONEDNN_ISA_CEILINGS = {
    "SSE41": "sse41", "AVX": "avx", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2",
    "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512_bf16",
    "AVX512_CORE_FP16": "avx512_bf16", "AVX10_1_512": "avx512_bf16", "AVX10_2_512": "avx512_bf16",
}
# The ceilings, narrowest first: a limit leaves oneDNN its own level and every level before it.
ONEDNN_ISA_LEVELS = ("sse41", "avx", "avx2", "avx512", "avx512_bf16", "amx")


def onednn_isa_ceiling(environ: Mapping[str, str] = os.environ) -> str | None:
    """The widest instruction set oneDNN may use: 'sse41', 'avx', 'avx2', 'avx512', 'avx512_bf16' (AVX-512 with
    its bfloat16 dot products) or 'amx' under ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA where that is unset), None
    without a limit. The limit is how an AVX2-only CPU is emulated on a larger one."""
    name = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return "amx" if "_AMX" in name else _ONEDNN_ISA_CEILINGS.get(name)


def onednn_allows(level: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether oneDNN's instruction-set limit in `environ` leaves it `level` (one of ONEDNN_ISA_LEVELS)."""
    ceiling = onednn_isa_ceiling(environ)
    return ceiling is None or ONEDNN_ISA_LEVELS.index(level) <= ONEDNN_ISA_LEVELS.index(ceiling)


def native_bfloat16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 convolutions in hardware: CUDA, or a CPU with AMX tiles or AVX-512's
    bfloat16 dot products (AMD Zen 4 and later, Intel Cooper Lake) that oneDNN's instruction-set limit leaves it.

    Elsewhere bfloat16 is emulated and slower than float32, so mixed precision is not used there.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return ((_cpu_has("_is_amx_tile_supported") and onednn_allows("amx"))
            or (_cpu_has("_is_avx512_bf16_supported") and onednn_allows("avx512_bf16")))


def _cpu_has(probe: str) -> bool:
    """torch.cpu's feature probe by name; these are private API, so an absent probe means 'no'."""
    return bool(getattr(torch.cpu, probe, lambda: False)())


def training_precision(device: torch.device, mixed_precision: bool) -> str:
    """'bfloat16' when mixed precision is asked for and the device runs it natively, else 'float32'."""
    return "bfloat16" if mixed_precision and native_bfloat16(device) else "float32"


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast (no loss scaling needed) for precision 'bfloat16'; a no-op for 'float32'."""
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step learning-rate schedule over the whole run."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _to_device(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def _reduce_epoch(loss_sum: torch.Tensor, seen: int, scores: SegmentationScores) -> tuple[dict[str, float], int]:
    """Loss per image and dataset-level IoU / Dice over every process's images, and the images counted. The
    first and only host-device synchronisation of the epoch happens here."""
    totals = distributed.sum_across(torch.tensor(
        [loss_sum.item(), seen, *scores.per_image_counts.sum(0)], dtype=torch.float64
    )).tolist()
    iou, dice = iou_dice(np.array(totals[2:]))
    return {"loss": totals[0] / totals[1], "iou": float(iou), "dice": float(dice)}, int(totals[1])


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    precision: str,
    channels_last: bool,
    description: str = "train",
) -> dict[str, float]:
    """One pass over the loader; returns loss (mean per image), IoU, Dice and images per second, over the
    images of every process when distributed. Loss and counts stay on the device until the epoch ends, so a
    GPU is never made to wait for the host inside the loop."""
    model.train()
    scores, loss_sum, seen = SegmentationScores(), torch.zeros((), dtype=torch.float64, device=device), 0
    start = time.perf_counter()
    with tqdm(total=len(loader.sampler), desc=description, unit="img", leave=False, mininterval=2.0,
              disable=not distributed.is_main_process()) as bar:
        for images, masks in loader:
            images, masks = _to_device(images, device, channels_last), masks.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(images)  # (B, 1, S, S)
            loss = loss_fn(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            scores.update(logits.detach() > 0, masks > 0.5)
            loss_sum += loss.detach().double() * len(images)
            seen += len(images)
            bar.update(len(images))
    result, seen_everywhere = _reduce_epoch(loss_sum, seen, scores)
    return {**result, "images_per_second": seen_everywhere / (time.perf_counter() - start)}


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> dict[str, float]:
    """Loss, IoU and Dice over the whole loader at the model's resolution (counts summed, then reduced);
    distributed, each process validates its shard and the counts are summed across processes."""
    model.eval()
    scores, loss_sum, seen = SegmentationScores(), torch.zeros((), dtype=torch.float64, device=device), 0
    for images, masks in loader:
        images, masks = _to_device(images, device, channels_last), masks.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)
        loss_sum += loss_fn(logits, masks).detach().double() * len(images)
        seen += len(images)
        scores.update(logits > 0, masks > 0.5)
    return _reduce_epoch(loss_sum, seen, scores)[0]


# Spaces the augmentation seeds of different processes far apart, so no two processes make the same draws.
RANK_SEED_STRIDE = 1_000_003


def seed_epoch(seed: int, epoch: int, loader: DataLoader, rank: int = 0) -> None:
    """Seed batch order and augmentation draws from (seed, epoch, rank) alone, so a resumed run makes the same
    draws. Batch order is shared by all processes (the DistributedSampler splits one permutation)."""
    torch.manual_seed(seed + epoch)
    loader.generator.manual_seed(seed + epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    transform = getattr(loader.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(seed + epoch + RANK_SEED_STRIDE * rank)


@dataclass
class Training:
    """What a training run works with besides its data: the model (DDP-wrapped when distributed), loss,
    optimizer, schedule, device and precision, the train config and seed, and this process's place."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    precision: str
    config: TrainConfig
    seed: int
    processes: Processes = Processes()


def _restore(training: Training, resume: dict) -> list[dict]:
    distributed.unwrap_model(training.model).load_state_dict(resume["model"])
    training.optimizer.load_state_dict(resume["optimizer"])
    training.scheduler.load_state_dict(resume["scheduler"])
    return list(resume["history"])


def kept_row(history: list[dict], keep_weights: KeepWeights) -> dict:
    """The row of the epoch whose weights train.keep_weights keeps, among the epochs run so far: the highest
    val/dice (earliest on ties) or the last."""
    return max(history, key=lambda row: row["val/dice"]) if keep_weights == "best_val" else history[-1]


def keeps_epoch(history: list[dict], keep_weights: KeepWeights, epochs: int) -> bool:
    """Whether the newest epoch's weights are to be written as the kept checkpoint: under best_val whenever it
    is the best so far, under last only at the end (an interrupted run never leaves a half-annealed model)."""
    newest = history[-1]["epoch"]
    return kept_row(history, keep_weights)["epoch"] == newest and (keep_weights == "best_val" or newest == epochs)


def fit(training: Training, train_loader: DataLoader, val_loader: DataLoader,
        destinations: checkpoint.Destinations, on_epoch_end: Callable[[dict], None],
        resume: dict | None = None) -> list[dict]:
    """Train for config.epochs, or what is left of them when `resume` holds an interrupted run's state.

    After each epoch: the checkpoint when this epoch's weights are the ones to keep (keeps_epoch) and the
    state to continue from are written (checkpoint.save_epoch), then on_epoch_end(row) is called. Rows use the
    shared metric names: epoch, train/loss, train/iou, train/dice, train/images_per_second, val/loss, val/iou,
    val/dice, lr, seconds.
    Distributed, every process computes the same (reduced) rows; only the main process writes and reports.
    """
    config, processes = training.config, training.processes
    history = _restore(training, resume) if resume else []
    if resume and processes.is_main:
        best = kept_row(history, "best_val")["epoch"]  # under "last", nothing is kept before the end
        log.info("resuming after epoch %d of %d%s", len(history), config.epochs,
                 f" (best so far: epoch {best})" if config.keep_weights == "best_val" else "")
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        seed_epoch(training.seed, epoch, train_loader, processes.rank)
        train = train_one_epoch(training.model, train_loader, training.loss_fn, training.optimizer,
                                training.scheduler, training.device, training.precision, config.channels_last,
                                description=f"epoch {epoch}/{config.epochs}")
        val = validate(training.model, val_loader, training.loss_fn, training.device, training.precision,
                       config.channels_last)
        row = {"epoch": epoch, **{f"train/{k}": v for k, v in train.items()},
               **{f"val/{k}": v for k, v in val.items()},
               "lr": training.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        history.append(row)
        keep = keeps_epoch(history, config.keep_weights, config.epochs)  # every process agrees: val is reduced
        if processes.is_main:
            checkpoint.save_epoch(distributed.unwrap_model(training.model), training.optimizer,
                                  training.scheduler, row, history, keep, config.epochs, destinations)
            log.info("epoch %d/%d  train loss %.4f dice %.4f  val loss %.4f dice %.4f iou %.4f  %.1f img/s  %.0fs%s",
                     epoch, config.epochs, train["loss"], train["dice"], val["loss"], val["dice"], val["iou"],
                     train["images_per_second"], row["seconds"], "  *kept" if keep else "")
            on_epoch_end(row)
    return history


def summarize_history(history: list[dict], keep_weights: KeepWeights) -> dict:
    """The kept epoch's metrics (kept_row) as kept/<metric>, plus run totals as run/<total>: the names
    metrics/train.json and MLflow share."""
    kept = kept_row(history, keep_weights)
    return {
        **{f"kept/{k}": v for k, v in kept.items() if k not in ("lr", "seconds")},
        "run/epochs": len(history),
        "run/seconds": sum(row["seconds"] for row in history),
    }
