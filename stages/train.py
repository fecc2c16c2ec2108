"""Stage train: fit the U-Net on the train split, keep the best checkpoint by val Dice, log to MLflow."""
import argparse
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch

from lungseg import augment, data, engine, figures, io, stage, tracking
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

    params = load_params(args.params)
    config = params.train
    tracking_uri = tracking.resolve_tracking_uri(os.environ, Path.cwd())
    tracking.check_reachable(tracking_uri)
    engine.seed_everything(params.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = engine.select_device(config.device)

    manifest = io.read_manifest(args.manifest)
    pipeline = augment.load_pipeline(args.pipeline)
    train_set = data.XrayDataset(*data.load_arrays(manifest[manifest["split"] == "train"], config.image_size), pipeline)
    val_set = data.XrayDataset(*data.load_arrays(manifest[manifest["split"] == "val"], config.image_size))
    train_loader = data.build_loader(train_set, config.batch_size, True, params.seed, config.num_workers)
    val_loader = data.build_loader(val_set, config.batch_size, False, params.seed, config.num_workers)

    in_channels = train_set[0][0].shape[0]
    model = build_model(params.model, in_channels).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(config)
    optimizer = engine.build_optimizer(model, config)
    scheduler = engine.build_scheduler(optimizer, config, len(train_loader))

    fingerprint = engine.fingerprint(
        params.model_dump(mode="json", include={"seed", "model", "train"}), [args.manifest, args.pipeline]
    )
    resume = engine.load_resumable_state(args.state, fingerprint)
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
            mlflow.log_artifact(args.params)
        checkpoint_extra = {
            "config": params.model_dump(mode="json"), "in_channels": in_channels,
            "fingerprint": fingerprint, "mlflow_run_id": run.info.run_id,
        }
        history = engine.fit(
            model, train_loader, val_loader, loss_fn, optimizer, scheduler, device, config, params.seed,
            args.checkpoint, args.state, checkpoint_extra,
            on_epoch_end=lambda row: tracking.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            ),
            resume=resume,
        )
        io.write_csv(args.history, pd.DataFrame(history))
        figures.training_curves(history, args.curves)
        summary = engine.summarize_history(history)
        io.write_json(args.metrics, summary)
        tracking.log_metrics({"best/val_dice": summary["val/dice"], "best/epoch": summary["best_epoch"]})
        for path in (args.history, args.curves, args.metrics, args.checkpoint):
            mlflow.log_artifact(path)


if __name__ == "__main__":
    sys.exit(stage.run(main, "train"))
