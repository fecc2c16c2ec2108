"""Stage robustness: the test split under seeded perturbations (contrast, gamma, windowing, frames, zoom-out,
markers, rotation), segmented by the exported ONNX model as `lungseg predict` does; scores and QA flags."""
import argparse
import os
import sys
from pathlib import Path

from lungseg import figures, robustness, stage, tables, tracking
from lungseg.config import flat_params, load_params
from lungseg.runtime import files
from lungseg.runtime.model_file import load_model
from lungseg.runtime.predict import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "manifest", "onnx", "per-image", "metrics", "plot", "figure", "examples"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    model = load_model(args.onnx, device="cpu")
    test = tables.split_rows(tables.read_manifest(args.manifest), "test")
    test = test.head(params.robustness.max_images) if params.robustness.max_images else test
    per_image = robustness.score(test, Segmenter(model), params.seed)
    metrics = robustness.summarize(per_image)

    tables.write_csv(args.per_image, per_image)
    files.write_json(args.metrics, metrics)
    tables.write_csv(args.plot, robustness.plot_table(metrics))
    figures.robustness_bars(robustness.plot_table(metrics), metrics["robustness/clean/dice"], str(args.figure))
    figures.examples_strip(robustness.example_images(test, params.seed), str(args.examples))
    tracking.add_to_run(model.card["code_version"]["mlflow_run_id"], flat_params(params), metrics,
                        [args.metrics, args.figure], os.environ, Path.cwd())


if __name__ == "__main__":
    sys.exit(stage.run(main, "robustness"))
