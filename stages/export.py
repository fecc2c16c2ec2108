"""Stage export: kept checkpoint -> ONNX with its model card inside, checked against PyTorch, registered in MLflow."""
import argparse
import os
import sys
from pathlib import Path

from lungseg import checkpoint, evaluation, export, stage, tables, tracking
from lungseg.config import flat_params, load_params
from lungseg.runtime import files
from lungseg.runtime.decode import read_grayscale
from lungseg.runtime.model_file import card_path_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "manifest", "checkpoint", "test-metrics", "onnx", "metrics"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    trained = checkpoint.load(args.checkpoint)
    inference = evaluation.checkpoint_inference(trained, params.evaluate.threshold, params.evaluate.postprocess, 8,
                                                params.evaluate.lung_crop_margin)
    manifest = tables.read_manifest(args.manifest)
    card = export.model_card(
        inference, trained.in_channels, trained.params.model.input_mean, trained.params.model.input_std,
        export.training_data(manifest), trained.params.model_dump(mode="json"), files.read_json(args.test_metrics),
        tracking.git_commit(Path.cwd()), trained.weights_sha256(), trained.mlflow_run_id)
    export.write_model(args.onnx, export.with_card(export.export_graph(
        trained.build_model(), inference.image_size, trained.in_channels, params.export.opset), card))
    files.write_json(card_path_for(args.onnx), card)

    parity_rows = tables.split_rows(manifest, "test").head(params.export.parity_images)
    result = export.parity(args.onnx, inference, [read_grayscale(path) for path in parity_rows["image_path"]])
    files.write_json(args.metrics, result)
    export.check_parity(result, params.export.max_logit_diff, params.export.min_mask_agreement)
    tracking.add_exported_model(trained.mlflow_run_id, flat_params(params), result, args.onnx, card, os.environ,
                                Path.cwd())


if __name__ == "__main__":
    sys.exit(stage.run(main, "export"))
