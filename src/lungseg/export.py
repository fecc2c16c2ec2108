"""ONNX export with a parity check against PyTorch, and the model card written into the ONNX file's metadata.

The runtime reads the card back (lungseg.runtime.model_file) and never needs this module or torch.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch

from lungseg import data, tables
from lungseg.errors import UserError
from lungseg.evaluation import Inference
from lungseg.runtime import files, imaging
from lungseg.runtime.model_file import CARD_FORMAT, CARD_KEY, INPUT_NAME, OUTPUT_NAME, create_session

# The params sections that shaped the weights: the card's training_params. How the model is run (evaluate's
# threshold and lung crop) has its one home in the card's input and output, from the export stage's params.
TRAINING_SECTIONS = ("seed", "prepare", "augment", "model", "train")
INTENDED_USE = ("Research on lung segmentation in adult chest X-rays (PA and AP views). Not a medical device, "
                "not for clinical use: every mask must be checked by a qualified reader before any use.")
VERSIONED_PACKAGES = ("lungseg", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy",
                      "opencv-python-headless", "albumentations")


class ExportParityError(UserError, RuntimeError):
    """ONNX Runtime's output differs from PyTorch's beyond the stated tolerance."""


def export_graph(model: torch.nn.Module, image_size: int, in_channels: int, opset: int) -> onnx.ModelProto:
    """The model as ONNX: a dynamic batch and a fixed S x S input, one self-contained graph, checked."""
    example = torch.rand(2, in_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model.eval().cpu(), (example,), input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                dynamic_shapes={"x": {0: batch}}, external_data=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        program.save(str(path), external_data=False)
        graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    return graph


def with_card(graph: onnx.ModelProto, card: dict) -> onnx.ModelProto:
    """The graph with the card in its metadata (JSON under CARD_KEY); the weights are untouched."""
    onnx.helper.set_model_props(graph, {CARD_KEY: json.dumps(card, sort_keys=True)})
    return graph


def write_model(path: str | Path, graph: onnx.ModelProto) -> None:
    files.write_bytes(path, graph.SerializeToString())


def parity(onnx_path: str | Path, torch_inference: Inference, images: list[np.ndarray]) -> dict[str, float]:
    """Largest |logit| difference at model resolution over the inputs of both passes (the whole images and the
    lung boxes PyTorch's first pass chose), and the share of full-size mask pixels that agree after every pass,
    between ONNX Runtime running `onnx_path` and PyTorch running the same model."""
    session = create_session(onnx_path)
    onnx_run = lambda inputs: session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0][:, 0]  # noqa: E731
    onnx_inference = dataclasses.replace(torch_inference, run_model=onnx_run)  # every other setting the same
    framed = imaging.predict_framed(images, torch_inference.run_model, torch_inference.image_size,
                                    torch_inference.intensity, torch_inference.threshold,
                                    torch_inference.lung_crop_margin, torch_inference.batch_size)
    crops = [image[f.box.top : f.box.bottom, f.box.left : f.box.right] for f, image in zip(framed, images)
             if f.box != (0, image.shape[0], 0, image.shape[1])]
    inputs = imaging.model_input(images + crops, torch_inference.image_size, torch_inference.intensity)
    logit_diff = np.abs(onnx_run(inputs) - torch_inference.run_model(inputs)).max()
    torch_masks = imaging.framed_masks(framed, images, torch_inference.threshold, torch_inference.postprocess)
    onnx_masks = onnx_inference.segment(images)
    agree = sum(int((a == b).sum()) for a, b in zip(onnx_masks, torch_masks))
    return {
        "export/max_logit_diff": float(logit_diff),
        "export/mask_agreement": agree / sum(m.size for m in onnx_masks),
        "export/images": len(images),
    }


def check_parity(result: dict[str, float], max_logit_diff: float, min_mask_agreement: float) -> None:
    if result["export/max_logit_diff"] > max_logit_diff or result["export/mask_agreement"] < min_mask_agreement:
        raise ExportParityError(
            f"ONNX Runtime disagrees with PyTorch: max logit difference {result['export/max_logit_diff']:.3g} "
            f"(allowed {max_logit_diff:g}), mask agreement {result['export/mask_agreement']:.6f} "
            f"(required {min_mask_agreement:g})"
        )


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def training_data(manifest: pd.DataFrame) -> dict:
    """The card's training_data, from prepare's manifest: the training masks' plausibility ranges (the lungs' share
    of the film and of their own box) and the description of every source the pairs come from."""
    training_rows = tables.split_rows(manifest, "train")
    return {"lung_fraction_range": list(data.column_range(training_rows, "lung_fraction")),
            "lung_box_share_range": list(data.column_range(training_rows, "lung_box_share")),
            "sources": data.source_licences(manifest)}


def model_card(inference: Inference, in_channels: int, input_mean: float, input_std: float, training_data: dict,
               training_params: dict, test_metrics: dict, git_commit: str, weights_sha256: str,
               mlflow_run_id: str | None = None) -> dict:
    """Everything a consumer needs to run the ONNX model correctly, and where it came from."""
    size = inference.image_size
    intensity_text = {"equalize_histogram": "equalise its histogram (OpenCV equalizeHist), ",
                      "equalize_adaptive": "stretch its 1st..99th percentile to 0..255, then equalise its "
                                           "histogram per tile (OpenCV CLAHE, clip limit 2, 8x8 tiles), ",
                      "none": ""}[inference.intensity]
    return {
        "format": CARD_FORMAT,
        "intended_use": INTENDED_USE,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", in_channels, size, size],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "color": "grayscale" if in_channels == 1 else f"{in_channels} channels",
            "preprocessing": (f"convert to 8-bit grayscale, resize to {size}x{size} with {imaging.DOWNSAMPLE} "
                              f"interpolation (aspect ratio not kept), {intensity_text}divide by 255"),
            "resize": imaging.DOWNSAMPLE,
            "intensity": inference.intensity,
            "lung_crop_margin": inference.lung_crop_margin,
            "lung_crop": (
                "none: one pass on the whole image" if inference.lung_crop_margin is None else
                f"two passes: the whole image, then a box cut from the full-resolution image and preprocessed as "
                f"above. The box: the first pass's probability > threshold at the model's size, its two largest "
                f"8-connected regions with holes filled, their bounding rows and columns r0..r1 and c0..c1 mapped to "
                f"the image as r0 * H / S to (r1 + 1) * H / S and c0 * W / S to (c1 + 1) * W / S, widened by "
                f"{inference.lung_crop_margin:g} x its height and width on each side, rounded outwards (floor, "
                f"ceil) and clipped to the image. The second pass's probabilities, resized to the box, are the "
                f"result inside it and 0 outside. An image keeps its first pass where that finds no lung or the "
                f"second finds none above the threshold"
            ),
            "normalisation": {"inside_model": True, "formula": "(x - mean) / std", "mean": input_mean,
                              "std": input_std},
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", 1, size, size],
            "meaning": "lung logit per pixel; sigmoid gives the lung probability",
            "threshold": inference.threshold,
            "postprocess": inference.postprocess,
            "postprocessing": (
                f"sigmoid, resize probabilities back to the input's size with {imaging.UPSAMPLE} interpolation, "
                f"then probability > threshold is lung"
                + ("; keep the two largest connected regions and fill their holes" if inference.postprocess else "")
            ),
            "resize": imaging.UPSAMPLE,
        },
        "training_data": training_data,
        "training_params": {name: training_params[name] for name in TRAINING_SECTIONS if name in training_params},
        "test_metrics": test_metrics,
        "code_version": {"git_commit": git_commit, "weights_sha256": weights_sha256,
                         "mlflow_run_id": mlflow_run_id, "exported_with": package_versions()},
    }
