"""ONNX export with a parity check against PyTorch, and the model card that travels with the ONNX file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from lungseg import engine, imaging
from lungseg.errors import UserError

INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportParityError(UserError, RuntimeError):
    """ONNX Runtime's output differs from PyTorch's beyond the stated tolerance."""


def card_path_for(onnx_path: str | Path) -> Path:
    """models/model.onnx -> models/model.card.json: the card always sits beside its model."""
    return Path(onnx_path).with_suffix(".card.json")


def export_onnx(model: torch.nn.Module, path: str | Path, image_size: int, in_channels: int, opset: int) -> None:
    """Export with a dynamic batch and a fixed S x S input; checked with onnx.checker. One self-contained file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, in_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model.eval().cpu(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
    )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def create_session(path: str | Path, threads: int = 0, providers: list[str] | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_runner(session: ort.InferenceSession):
    """Wrap a session as run_model for imaging.segment: (N, 1, S, S) float32 -> (N, S, S) logits."""
    return lambda inputs: session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0][:, 0]


def parity(session: ort.InferenceSession, model: torch.nn.Module, images: list[np.ndarray], image_size: int,
           threshold: float, postprocess: bool) -> dict[str, float]:
    """Largest |logit| difference at model resolution, and the share of full-size mask pixels that agree."""
    inputs = imaging.to_model_input(np.stack([imaging.resize_image(image, image_size) for image in images]))
    onnx_logits, torch_logits = onnx_runner(session)(inputs), engine.torch_runner(model)(inputs)
    onnx_masks = imaging.segment(images, onnx_runner(session), image_size, threshold, 8, postprocess)
    torch_masks = imaging.segment(images, engine.torch_runner(model), image_size, threshold, 8, postprocess)
    agree = sum(int((a == b).sum()) for a, b in zip(onnx_masks, torch_masks))
    total = sum(m.size for m in onnx_masks)
    return {
        "export/max_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
        "export/mask_agreement": agree / total,
        "export/images": len(images),
    }


def check_parity(result: dict[str, float], max_logit_diff: float, min_mask_agreement: float) -> None:
    if result["export/max_logit_diff"] > max_logit_diff or result["export/mask_agreement"] < min_mask_agreement:
        raise ExportParityError(
            f"ONNX Runtime disagrees with PyTorch: max logit difference {result['export/max_logit_diff']:.3g} "
            f"(allowed {max_logit_diff:g}), mask agreement {result['export/mask_agreement']:.6f} "
            f"(required {min_mask_agreement:g})"
        )


def model_card(
    image_size: int, in_channels: int, threshold: float, postprocess: bool, params: dict, test_metrics: dict,
    git_commit: str, input_mean: float, input_std: float, lung_fraction_range: tuple[float, float],
) -> dict:
    """Everything a consumer needs to run the ONNX file correctly, and where it came from."""
    return {
        "format": "lungseg-model-card/1",
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", in_channels, image_size, image_size],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "color": "grayscale" if in_channels == 1 else f"{in_channels} channels",
            "preprocessing": (
                f"convert to 8-bit grayscale, resize to {image_size}x{image_size} with {imaging.DOWNSAMPLE} "
                f"interpolation (aspect ratio not kept), divide by 255"
            ),
            "resize": imaging.DOWNSAMPLE,
            "normalisation": {
                "inside_model": True,
                "formula": "(x - mean) / std",
                "mean": input_mean,
                "std": input_std,
            },
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", 1, image_size, image_size],
            "meaning": "lung logit per pixel; sigmoid gives the lung probability",
            "threshold": threshold,
            "postprocess": postprocess,
            "postprocessing": (
                f"sigmoid, resize probabilities back to the input's size with {imaging.UPSAMPLE} interpolation, "
                f"then probability > threshold is lung"
                + ("; keep the two largest connected regions and fill their holes" if postprocess else "")
            ),
            "resize": imaging.UPSAMPLE,
        },
        "training_data": {"lung_fraction_range": list(lung_fraction_range)},
        "training_params": params,
        "test_metrics": test_metrics,
        "code_version": {"git_commit": git_commit},
    }
