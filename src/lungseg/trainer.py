"""One training run of the train stage: data, model, optimizer and schedule from params, fit, MLflow run.

Runs as one process, or as one of several under torchrun: then each process trains on its share of every
batch with DistributedDataParallel, and only the main process writes checkpoints and talks to MLflow.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from lungseg import augment, checkpoint, data, distributed, engine, tables
from lungseg.config import Params, flat_params
from lungseg.losses import build_loss
from lungseg.model import build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainInputs:
    params_path: Path
    manifest: Path
    pipeline: Path


@dataclass
class TrainResult:
    """What the main process hands back: per-epoch rows, their summary, and the MLflow run they went to."""

    history: list[dict]
    summary: dict
    tracking_uri: str
    run_id: str


def _loaders(params: Params, manifest_path: Path, pipeline_path: Path, processes: distributed.Processes,
             batch_size: int, device: torch.device):
    config = params.train
    manifest = tables.read_manifest(manifest_path)
    intensity = params.model.intensity
    train_set = data.XrayDataset(*data.load_arrays(tables.split_rows(manifest, "train"), config.image_size),
                                 intensity, augment.load_pipeline(pipeline_path))
    val_set = data.XrayDataset(*data.load_arrays(tables.split_rows(manifest, "val"), config.image_size), intensity)
    workers, pin = data.worker_count(config.num_workers, device.type), device.type == "cuda"
    train_loader = data.build_loader(train_set, batch_size, True, params.seed, workers,
                                     sampler=distributed.train_sampler(train_set, processes, params.seed),
                                     pin_memory=pin)
    val_loader = data.build_loader(distributed.shard(val_set, processes), batch_size, False, params.seed,
                                   min(workers, 2), pin_memory=pin)
    return manifest, train_loader, val_loader


def train(params: Params, inputs: TrainInputs, destinations: checkpoint.Destinations,
          environ: Mapping[str, str], cwd: Path, track: bool = True) -> TrainResult | None:
    """Train the model of `params`; returns the result in the main process, None in the others. With
    track=False nothing goes to MLflow (and MLflow is not imported): the GPU check trains this way."""
    config = params.train
    processes = distributed.processes_from_env(environ)
    batch_size = distributed.per_process_batch(config.batch_size, processes.world_size)
    tracking_uri = ""
    if track:
        from lungseg import tracking

        tracking_uri = tracking.resolve_tracking_uri(environ, cwd)
        tracking.check_reachable(tracking_uri)
    engine.seed_everything(params.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = distributed.start(processes, engine.select_device(config.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    try:
        manifest, train_loader, val_loader = _loaders(params, inputs.manifest, inputs.pipeline, processes, batch_size,
                                                      device)
        in_channels = train_loader.dataset[0][0].shape[0]
        model = build_model(params.model, in_channels).to(device)  # the same seeded weights in every process
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = distributed.wrap_model(model, processes, device)
        optimizer = engine.build_optimizer(model, config)
        training = engine.Training(model, build_loss(config), optimizer,
                                   engine.build_scheduler(optimizer, config, len(train_loader)), device,
                                   engine.training_precision(device, config.mixed_precision), config, params.seed,
                                   processes)
        if processes.is_main:
            log.info("training on %s in %d process(es), %s", device, processes.world_size, training.precision)
        fingerprint = checkpoint.fingerprint(params.model_dump(mode="json", include={"seed", "model", "train"}),
                                             [inputs.manifest, inputs.pipeline])
        resume = checkpoint.load_resumable_state(destinations.state, fingerprint)
        with _main_run(tracking_uri, environ, cwd, resume, params, inputs, manifest, training, track) as run_id:
            extra = {"config": params.model_dump(mode="json"), "in_channels": in_channels,
                     "fingerprint": fingerprint, "mlflow_run_id": run_id}
            history = engine.fit(training, train_loader, val_loader,
                                 checkpoint.Destinations(destinations.kept, destinations.state, extra),
                                 on_epoch_end=_epoch_logger(track), resume=resume)
        if not processes.is_main:
            return None
        summary = {**engine.summarize_history(history, config.keep_weights), "run/processes": processes.world_size}
        return TrainResult(history, summary, tracking_uri, run_id)
    finally:
        distributed.stop()


def _epoch_logger(track: bool):
    if not track:
        return lambda row: None
    from lungseg import tracking

    return lambda row: tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _main_run(tracking_uri, environ, cwd, resume, params, inputs, manifest, training, track):
    """The MLflow run in the main process (yielding its id); a stand-in yielding None elsewhere or untracked."""
    import contextlib

    if not training.processes.is_main or not track:
        return contextlib.nullcontext(None)
    from lungseg import tracking

    @contextlib.contextmanager
    def run():
        with tracking.training_run(tracking_uri, environ, cwd, resume and resume["mlflow_run_id"],
                                   flat_params(params), inputs.params_path,
                                   {"training_precision": training.precision,
                                    "training_processes": training.processes.world_size}) as run_id:
            if resume is None:
                tracking.log_split(manifest, inputs.manifest, data.split_counts(manifest))
            yield run_id

    return run()
