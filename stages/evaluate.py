"""Stage evaluate: score the kept checkpoint on the test split at the masks' resolution; pictures; MLflow."""
import argparse
import os
import sys
from pathlib import Path

from lungseg import checkpoint, engine, evaluation, figures, stage, tables, tracking
from lungseg.config import flat_params, load_params
from lungseg.runtime import files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "manifest", "checkpoint", "per-image", "metrics", "cases", "histogram"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    config = params.evaluate
    trained = checkpoint.load(args.checkpoint)
    inference = evaluation.checkpoint_inference(trained, config.threshold, config.postprocess, config.batch_size,
                                                config.lung_crop_margin, engine.select_device("auto"))
    test = tables.split_rows(tables.read_manifest(args.manifest), "test")
    per_image = evaluation.score_split(test, inference)
    metrics = evaluation.split_metrics(per_image, "test")

    tables.write_csv(args.per_image, per_image)
    files.write_json(args.metrics, metrics)
    figures.cases_figure(evaluation.case_panels(per_image, test, inference), args.cases)
    figures.dice_histogram(per_image["dice"].to_numpy(), args.histogram)
    tracking.add_to_run(trained.mlflow_run_id, flat_params(params), metrics,
                        [args.metrics, args.per_image, args.cases, args.histogram], os.environ, Path.cwd())


if __name__ == "__main__":
    sys.exit(stage.run(main, "evaluate"))
