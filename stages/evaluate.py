"""Stage evaluate: score the best checkpoint on the test split at the masks' resolution; pictures; MLflow."""
import argparse
import os
import sys
from pathlib import Path

import mlflow

from lungseg import engine, evaluation, figures, io, stage, tracking
from lungseg.config import load_params
from lungseg.model import model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--per-image", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--histogram", required=True)
    args = parser.parse_args()

    config = load_params(args.params).evaluate
    checkpoint = engine.load_checkpoint(args.checkpoint)
    image_size = checkpoint["config"]["train"]["image_size"]
    run_model = engine.torch_runner(model_from_checkpoint(checkpoint), engine.select_device("auto"))

    manifest = io.read_manifest(args.manifest)
    test = manifest[manifest["split"] == "test"]
    per_image = evaluation.score_split(
        test, run_model, image_size, config.threshold, config.batch_size, config.postprocess
    )
    io.write_csv(args.per_image, per_image)
    metrics = evaluation.split_metrics(per_image, "test")
    io.write_json(args.metrics, metrics)

    rows = test.set_index("name")
    cases = []
    for role, name in evaluation.pick_cases(per_image):
        image, truth = io.read_grayscale(rows.loc[name, "image_path"]), io.read_mask(rows.loc[name, "mask_path"])
        prediction = evaluation.segment_one(image, run_model, image_size, config.threshold, config.postprocess)
        dice = per_image.set_index("name").loc[name, "dice"]
        cases.append((f"{role}: {name}\nDice {dice:.4f}", image, truth, prediction))
    figures.cases_figure(cases, args.cases)
    figures.dice_histogram(per_image["dice"].to_numpy(), args.histogram)

    tracking_uri = tracking.resolve_tracking_uri(os.environ, Path.cwd())
    with tracking.open_run(tracking_uri, run_id=checkpoint["mlflow_run_id"]):
        tracking.log_metrics(metrics)
        for path in (args.metrics, args.per_image, args.cases, args.histogram):
            mlflow.log_artifact(path)


if __name__ == "__main__":
    sys.exit(stage.run(main, "evaluate"))
