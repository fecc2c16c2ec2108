"""train_one_epoch / validate / fit with explicit arguments, returning plain dicts; checkpoints."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from lungseg import distributed
from lungseg.config import TrainConfig
from lungseg.distributed import Processes
from lungseg.metrics import SegmentationScores, iou_dice


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU fails rather than silently using the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def native_bfloat16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 matrix products in hardware: CUDA, or a CPU with AMX tiles.

    Elsewhere bfloat16 is emulated and slower than float32, so mixed precision is not used there.
    """
    if device.type == "cuda":
        return True
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private API: absent means "unknown", so no
    return device.type == "cpu" and bool(is_amx and is_amx())


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


def _reduce_epoch(loss_sum: float, seen: int, scores: SegmentationScores) -> tuple[dict[str, float], int]:
    """Loss per image and dataset-level IoU / Dice over every process's images, and the images counted."""
    totals = distributed.sum_across(torch.tensor(
        [loss_sum, seen, *scores.per_image_counts.sum(0)], dtype=torch.float64
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
    images of every process when distributed."""
    model.train()
    scores, loss_sum, seen = SegmentationScores(), 0.0, 0
    start = time.perf_counter()
    with tqdm(total=len(loader.sampler), desc=description, unit="img", leave=False, mininterval=2.0,
              disable=not distributed.is_main_process()) as bar:
        for images, masks in loader:
            images, masks = _to_device(images, device, channels_last), masks.to(device)
            with autocast(device, precision):
                logits = model(images)  # (B, 1, S, S)
            loss = loss_fn(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            scores.update(logits.detach() > 0, masks > 0.5)
            loss_sum += loss.item() * len(images)
            seen += len(images)
            bar.update(len(images))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
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
    scores, loss_sum, seen = SegmentationScores(), 0.0, 0
    for images, masks in loader:
        images, masks = _to_device(images, device, channels_last), masks.to(device)
        with autocast(device, precision):
            logits = model(images)
        loss_sum += loss_fn(logits, masks).item() * len(images)
        seen += len(images)
        scores.update(logits > 0, masks > 0.5)
    return _reduce_epoch(loss_sum, seen, scores)[0]


def torch_runner(model: nn.Module, device: torch.device | str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a PyTorch model as run_model for imaging.segment: (N, C, S, S) float32 -> (N, S, S) logits."""
    model = model.eval().to(device)

    @torch.no_grad()
    def run(inputs: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(inputs).to(device)).float()[:, 0].cpu().numpy()

    return run


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write then rename, so an interrupted write never leaves a corrupt checkpoint in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(checkpoint, tmp)
    os.replace(tmp.name, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with weights_only=True: a file holding arbitrary pickled objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; run `dvc repro train` first") from None
    except Exception as err:  # torch raises UnpicklingError or RuntimeError for unsafe or corrupt files
        raise ValueError(f"{path}: refused to load checkpoint (not a plain weights file, or corrupt): {err}") from None


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


def fingerprint(config: dict, files: list[str | Path]) -> str:
    """What a training state belongs to: the params and the input files' contents."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def load_resumable_state(path: str | Path, expected_fingerprint: str) -> dict | None:
    """The state of an interrupted run of the same params and inputs, or None to start afresh."""
    if not Path(path).is_file():
        return None
    try:
        state = load_checkpoint(path)
    except ValueError:
        return None  # unreadable state is never trusted; training starts over
    if state.get("fingerprint") != expected_fingerprint or state.get("completed"):
        return None
    return state


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    config: TrainConfig,
    seed: int,
    checkpoint_path: str | Path,
    state_path: str | Path,
    checkpoint_extra: dict,
    on_epoch_end: Callable[[dict], None],
    resume: dict | None = None,
    processes: Processes = Processes(),
) -> list[dict]:
    """Train for config.epochs, or what is left of them when `resume` holds an interrupted run's state.

    After each epoch: the best checkpoint by val/dice (earliest on ties) goes to checkpoint_path, the state to
    continue from (weights, optimizer, schedule, history) to state_path, both written atomically, then
    on_epoch_end(row) is called. Rows use the shared metric names: epoch, train/loss, train/iou, train/dice,
    val/loss, val/iou, val/dice, lr, seconds. Distributed, `model` is the DDP-wrapped model, every process
    computes the same (reduced) rows, and only the main process writes files and calls on_epoch_end.
    """
    history: list[dict] = []
    best_dice = -1.0
    plain_model = distributed.unwrap_model(model)
    if resume is not None:
        plain_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history, best_dice = list(resume["history"]), resume["best_dice"]
        if processes.is_main:
            tqdm.write(f"resuming after epoch {len(history)} of {config.epochs} (best val dice {best_dice:.4f})")
    precision = training_precision(device, config.mixed_precision)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        seed_epoch(seed, epoch, train_loader, processes.rank)
        train = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, device,
            precision, config.channels_last, description=f"epoch {epoch}/{config.epochs}",
        )
        val = validate(model, val_loader, loss_fn, device, precision, config.channels_last)
        row = {
            "epoch": epoch,
            **{f"train/{k}": v for k, v in train.items()},
            **{f"val/{k}": v for k, v in val.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        is_best = val["dice"] > best_dice  # the same decision in every process: val is reduced across them
        if is_best:
            best_dice = val["dice"]
        if processes.is_main:
            _save_epoch(plain_model, optimizer, scheduler, row, history, best_dice, is_best, config.epochs,
                        checkpoint_path, state_path, checkpoint_extra)
            tqdm.write(
                f"epoch {epoch}/{config.epochs}  train loss {train['loss']:.4f} dice {train['dice']:.4f}  "
                f"val loss {val['loss']:.4f} dice {val['dice']:.4f} iou {val['iou']:.4f}  "
                f"{train['images_per_second']:.1f} img/s  {row['seconds']:.0f}s{'  *best' if is_best else ''}"
            )
            on_epoch_end(row)
    return history


def _save_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    row: dict, history: list[dict], best_dice: float, is_best: bool, epochs: int,
    checkpoint_path: str | Path, state_path: str | Path, checkpoint_extra: dict,
) -> None:
    """The best checkpoint when this epoch is the best so far, and the state to resume from."""
    if is_best:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": row["epoch"],
            "metrics": row, **checkpoint_extra,
        })
    if row["epoch"] < epochs:
        save_checkpoint(state_path, {
            "fingerprint": checkpoint_extra["fingerprint"], "completed": False,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best_dice": best_dice,
            "mlflow_run_id": checkpoint_extra.get("mlflow_run_id"),
        })
    else:
        # A finished run leaves a small marker, not weights: nothing to resume, cheap to cache and push.
        save_checkpoint(state_path, {"fingerprint": checkpoint_extra["fingerprint"], "completed": True,
                                     "history": history})


def summarize_history(history: list[dict]) -> dict:
    """The best epoch's metrics (highest val/dice, earliest on ties) plus run totals, for metrics/train.json."""
    best = max(history, key=lambda row: row["val/dice"])
    return {
        **{k: v for k, v in best.items() if k not in ("epoch", "lr", "seconds")},
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "train_seconds": sum(row["seconds"] for row in history),
    }
