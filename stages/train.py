"""Stage train: fit the U-Net on the train split, keep the best checkpoint by val Dice, log to MLflow.

Runs as one process, or as several under torchrun (train.nproc in dvc.yaml's command): then each process
trains on its share of every batch with DistributedDataParallel, and only rank 0 writes outputs and MLflow.
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch

from lungseg import augment, data, distributed, engine, figures, io, stage, tracking
from lungseg.config import flatten, load_params
from lungseg.losses import build_loss
from lungseg.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--state", required=True, help="where an interrupted run is resumed from")
    parser.add_argument("--history", required=True)
    parser.add_argument("--curves", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    distributed.die_with_launcher(os.environ)
    params = load_params(args.params)
    config = params.train
    processes = distributed.processes_from_env(os.environ)
    batch_size = distributed.per_process_batch(config.batch_size, processes.world_size)
    tracking_uri = tracking.resolve_tracking_uri(os.environ, Path.cwd())
    tracking.check_reachable(tracking_uri)
    engine.seed_everything(params.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = distributed.start(processes, engine.select_device(config.device))
    try:
        train(args, params, processes, batch_size, tracking_uri, device)
    finally:
        distributed.stop()


def train(args, params, processes, batch_size, tracking_uri, device) -> None:
    config = params.train
    manifest = io.read_manifest(args.manifest)
    pipeline = augment.load_pipeline(args.pipeline)
    train_set = data.XrayDataset(*data.load_arrays(manifest[manifest["split"] == "train"], config.image_size), pipeline)
    val_set = data.XrayDataset(*data.load_arrays(manifest[manifest["split"] == "val"], config.image_size))
    train_loader = data.build_loader(train_set, batch_size, True, params.seed, config.num_workers,
                                     sampler=distributed.train_sampler(train_set, processes, params.seed))
    val_loader = data.build_loader(distributed.shard(val_set, processes), batch_size, False, params.seed,
                                   config.num_workers)

    in_channels = train_set[0][0].shape[0]
    model = build_model(params.model, in_channels).to(device)  # the same seeded weights in every process
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.wrap_model(model, processes, device)
    precision = engine.training_precision(device, config.mixed_precision)
    if processes.is_main:
        print(f"training on {device} in {processes.world_size} process(es), {precision}", flush=True)
    loss_fn = build_loss(config)
    optimizer = engine.build_optimizer(model, config)
    scheduler = engine.build_scheduler(optimizer, config, len(train_loader))

    fingerprint = engine.fingerprint(
        params.model_dump(mode="json", include={"seed", "model", "train"}), [args.manifest, args.pipeline]
    )
    resume = engine.load_resumable_state(args.state, fingerprint)
    with open_main_run(params, args.params, processes, tracking_uri, resume, precision) as run_id:
        checkpoint_extra = {
            "config": params.model_dump(mode="json"), "in_channels": in_channels,
            "fingerprint": fingerprint, "mlflow_run_id": run_id,
        }
        history = engine.fit(
            model, train_loader, val_loader, loss_fn, optimizer, scheduler, device, config, params.seed,
            args.checkpoint, args.state, checkpoint_extra,
            on_epoch_end=lambda row: tracking.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            ),
            resume=resume, processes=processes,
        )
        if not processes.is_main:
            return
        io.write_csv(args.history, pd.DataFrame(history))
        figures.training_curves(history, args.curves)
        summary = {**engine.summarize_history(history), "processes": processes.world_size}
        io.write_json(args.metrics, summary)
        tracking.log_metrics({"best/val_dice": summary["val/dice"], "best/epoch": summary["best_epoch"]})
        for path in (args.history, args.curves, args.metrics, args.checkpoint):
            mlflow.log_artifact(path)


@contextlib.contextmanager
def open_main_run(params, params_path, processes, tracking_uri, resume, precision):
    """The MLflow run (new, or the interrupted one) in the main process, yielding its id; None elsewhere."""
    if not processes.is_main:
        yield None
        return
    root = tracking.workspace_root(os.environ, Path.cwd())
    experiment_id = tracking.ensure_experiment(
        tracking_uri, tracking.experiment_name(os.environ), root / "mlartifacts"
    )
    with tracking.open_run(
        tracking_uri, experiment_id, run_name=os.environ.get("DVC_EXP_NAME"),
        tags=tracking.run_tags(os.environ, Path.cwd()), run_id=resume and resume["mlflow_run_id"],
    ) as run:
        if resume is None:
            tracking.log_params(flatten(params.model_dump(mode="json")))
            mlflow.log_artifact(params_path)
            mlflow.set_tags({"training_precision": precision, "training_processes": processes.world_size})
        yield run.info.run_id


if __name__ == "__main__":
    sys.exit(stage.run(main, "train"))
