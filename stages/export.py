"""Stage export: best checkpoint -> ONNX, checked against PyTorch with ONNX Runtime, with its model card."""
import argparse
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
from mlflow.models import infer_signature

from lungseg import engine, export, imaging, io, stage, tracking
from lungseg.config import load_params
from lungseg.model import model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--test-metrics", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    config = params.export
    checkpoint = engine.load_checkpoint(args.checkpoint)
    trained = checkpoint["config"]
    image_size, in_channels = trained["train"]["image_size"], checkpoint["in_channels"]
    model = model_from_checkpoint(checkpoint)
    export.export_onnx(model, args.onnx, image_size, in_channels, config.opset)

    manifest = io.read_manifest(args.manifest)
    test = manifest[manifest["split"] == "test"].head(config.parity_images)
    images = [io.read_grayscale(path) for path in test["image_path"]]
    session = export.create_session(args.onnx)
    result = export.parity(
        session, model, images, image_size, params.evaluate.threshold, params.evaluate.postprocess
    )
    io.write_json(args.metrics, result)
    export.check_parity(result, config.max_logit_diff, config.min_mask_agreement)

    train_fractions = manifest.loc[manifest["split"] == "train", "lung_fraction"]
    card = export.model_card(
        image_size, in_channels, params.evaluate.threshold, params.evaluate.postprocess, trained,
        io.read_json(args.test_metrics), tracking.git_commit(Path.cwd()), trained["model"]["input_mean"],
        trained["model"]["input_std"], (float(train_fractions.min()), float(train_fractions.max())),
    )
    io.write_json(export.card_path_for(args.onnx), card)

    tracking_uri = tracking.resolve_tracking_uri(os.environ, Path.cwd())
    with tracking.open_run(tracking_uri, run_id=checkpoint["mlflow_run_id"]):
        tracking.log_metrics(result)
        example = imaging.to_model_input(np.stack([imaging.resize_image(images[0], image_size)]))
        signature = infer_signature(example, export.onnx_runner(session)(example)[:, None])
        mlflow.onnx.log_model(onnx.load(args.onnx), name="model", signature=signature)
        mlflow.log_dict(card, "model.card.json")


if __name__ == "__main__":
    sys.exit(stage.run(main, "export"))
