"""The checkpoint format, in one place: the kept model, the state an interrupted run resumes from, and loading.

A checkpoint is a dict: weights ("model"), optimizer state, epoch, that epoch's metrics, the whole params it was
trained with ("config"), the input channels, the inputs' fingerprint and the MLflow run id. Files are written to
a temporary name and renamed, so an interrupted write never leaves a corrupt checkpoint in place, and loaded
with torch.load(weights_only=True), so a file holding arbitrary pickled objects is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lungseg.config import Params
from lungseg.errors import UserError
from lungseg.model import UNet


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt, or not a plain weights file."""


@dataclass
class Checkpoint:
    """A loaded model checkpoint with its training params as the typed config."""

    params: Params
    in_channels: int
    epoch: int
    mlflow_run_id: str | None
    weights: dict

    def build_model(self) -> UNet:
        """The trained U-Net, in evaluation mode, on the CPU."""
        model = UNet(self.params.model, self.in_channels)
        model.load_state_dict(self.weights)
        return model.eval()

    def weights_sha256(self) -> str:
        """A hash of the weights alone (names, shapes and values in a fixed order): which model this is."""
        digest = hashlib.sha256()
        for name in sorted(self.weights):
            tensor = self.weights[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def save(path: str | Path, content: dict) -> None:
    """Write then rename, so an interrupted write never leaves a corrupt file in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with tmp:
            torch.save(content, tmp)
        os.replace(tmp.name, path)
    except BaseException:  # a full disk, Ctrl-C or a refused rename: no file of hundreds of MB left beside it
        Path(tmp.name).unlink(missing_ok=True)
        raise


def load_raw(path: str | Path) -> dict:
    """A checkpoint file as its dict, with weights_only=True."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro train` first") from None
    except Exception as err:  # torch raises UnpicklingError or RuntimeError for unsafe or corrupt files
        raise CheckpointError(f"{path}: refused to load checkpoint (not a plain weights file, or corrupt): "
                              f"{err}") from None


def load(path: str | Path) -> Checkpoint:
    """The model checkpoint the train stage kept, with its params validated as the typed config."""
    raw = load_raw(path)
    try:
        if isinstance(raw["config"].get("train"), dict):
            # Checkpoints written before train.keep_weights existed kept the best-validation epoch.
            raw["config"]["train"].setdefault("keep_weights", "best_val")
        if isinstance(raw["config"].get("evaluate"), dict):
            # Checkpoints written before evaluate.lung_crop_margin existed were evaluated in one pass.
            raw["config"]["evaluate"].setdefault("lung_crop_margin", None)
        return Checkpoint(Params.model_validate(raw["config"]), int(raw["in_channels"]), int(raw["epoch"]),
                          raw.get("mlflow_run_id"), raw["model"])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a lungseg checkpoint ({err})") from None


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
        state = load_raw(path)
    except CheckpointError:
        return None  # an unreadable state is never trusted; training starts over
    if state.get("fingerprint") != expected_fingerprint or state.get("completed"):
        return None
    return state


@dataclass(frozen=True)
class Destinations:
    """Where a training run writes the checkpoint it keeps and its resumable state, and what they carry besides
    weights (config, in_channels, fingerprint, mlflow_run_id)."""

    kept: Path
    state: Path
    extra: dict


def save_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, row: dict, history: list[dict], keep: bool,
               epochs: int, destinations: Destinations) -> None:
    """The checkpoint when this epoch's weights are the ones to keep, and the state to resume from."""
    if keep:
        save(destinations.kept, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "epoch": row["epoch"], "metrics": row, **destinations.extra})
    if row["epoch"] < epochs:
        save(destinations.state, {
            "fingerprint": destinations.extra["fingerprint"], "completed": False,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history,
            "mlflow_run_id": destinations.extra.get("mlflow_run_id"),
        })
    else:
        # A finished run leaves a small marker, not weights: nothing to resume, cheap to cache and push.
        save(destinations.state, {"fingerprint": destinations.extra["fingerprint"], "completed": True,
                                  "history": history})
