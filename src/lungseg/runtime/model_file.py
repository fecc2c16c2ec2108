"""The exported model is one file: an ONNX graph whose metadata carries its card (JSON under CARD_KEY).

The card says what a consumer needs to run the graph correctly (input name, shape, preprocessing, threshold,
post-processing) and where it came from (training params, data and licences, test metrics, versions, weights
hash, intended use). Loading checks the card against the graph itself; a model without a card, with a
malformed card, or whose card disagrees with the graph is refused with ModelError, one line naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungseg.errors import UserError

if TYPE_CHECKING:  # ONNX Runtime is imported when a model is loaded, so `lungseg --help` starts at once
    import onnxruntime as ort

DEFAULT_MODEL_PATH = Path("models/model.onnx")  # where `dvc repro` exports it
CARD_KEY = "lungseg.card"
CARD_FORMAT = "lungseg-model-card/3"
# /2 cards have no input.lung_crop_margin nor training_data.lung_box_share_range: one pass, film-fraction QA.
READABLE_CARD_FORMATS = (CARD_FORMAT, "lungseg-model-card/2")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INTENSITY_METHODS = ("none", "equalize_histogram", "equalize_adaptive")


class ModelError(UserError, RuntimeError):
    """The model file cannot be used: missing, not ONNX, truncated, no card, or a card that disagrees with it."""


class DeviceError(UserError, RuntimeError):
    """The requested execution provider cannot run here; never silently replaced by another."""


def card_path_for(onnx_path: str | Path) -> Path:
    """models/model.onnx -> models/model.card.json: the human-readable copy of the card beside the model."""
    return Path(onnx_path).with_suffix(".card.json")


def providers_for(device: str) -> list[str]:
    """'cpu' | 'cuda' | 'auto' -> ONNX Runtime providers; 'cuda' fails unless the CUDA provider is installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"--device cuda: ONNX Runtime has no CUDA provider here (available: {', '.join(available)}); "
                f"install lungseg[gpu] (onnxruntime-gpu) on a machine with an NVIDIA driver"
            )
        return ["CUDAExecutionProvider"]
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def create_session(path: str | Path, threads: int = 0, providers: list[str] | None = None) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a missing CUDA library is reported by DeviceError instead
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def _refuse(path: Path, problem: str) -> ModelError:
    return ModelError(f"{path}: {problem}")


def check_card(card: object, session: ort.InferenceSession, path: Path) -> dict:
    """The card, if it is well formed and describes this graph; else ModelError naming the disagreement."""
    if not isinstance(card, dict):
        raise _refuse(path, "model card is not a JSON object")
    if card.get("format") not in READABLE_CARD_FORMATS:
        raise _refuse(path, f"model card format {card.get('format')!r} is not {CARD_FORMAT!r}; re-export the "
                            f"model with this lungseg version (dvc repro export)")
    try:
        spec, out = card["input"], card["output"]
        channels, size = int(spec["shape"][1]), int(spec["shape"][2])
        threshold = float(out["threshold"])
        low, high = (float(v) for v in card["training_data"]["lung_fraction_range"])
        intensity = spec["intensity"]
        postprocess = out["postprocess"]
        crop_margin = spec.get("lung_crop_margin")  # absent in /2 cards: one pass
        box_share = card["training_data"].get("lung_box_share_range")  # absent in /2 cards: film-fraction QA
        if box_share is not None:
            box_low, box_high = (float(v) for v in box_share)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise _refuse(path, f"model card is missing or has a malformed field ({type(err).__name__}: {err})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != spec.get("name") or inputs[0].name != INPUT_NAME:
        raise _refuse(path, f"graph inputs {[i.name for i in inputs]} do not match the card's input "
                            f"{spec.get('name')!r}")
    graph_shape = inputs[0].shape
    if len(graph_shape) != 4 or graph_shape[1:] != [channels, size, size] or spec["shape"][3] != size:
        raise _refuse(path, f"graph input shape {graph_shape} does not match the card's {spec['shape']}")
    if len(outputs) != 1 or outputs[0].name != out.get("name") or outputs[0].shape[1:] != [1, size, size]:
        raise _refuse(path, f"graph output {[(o.name, o.shape) for o in outputs]} does not match the card's "
                            f"{out.get('name')!r} of shape [batch, 1, {size}, {size}]")
    if not 0 < threshold < 1:
        raise _refuse(path, f"card threshold {threshold} is not between 0 and 1")
    if not isinstance(postprocess, bool):
        raise _refuse(path, f"card output.postprocess {postprocess!r} is not true/false")
    if crop_margin is not None and (isinstance(crop_margin, bool) or not isinstance(crop_margin, (int, float))
                                    or not 0 <= crop_margin <= 1):
        raise _refuse(path, f"card input.lung_crop_margin {crop_margin!r} is not null or a number in 0..1")
    if not 0 <= low <= high <= 1:
        raise _refuse(path, f"card lung_fraction_range [{low}, {high}] is not an ordered range in 0..1")
    if box_share is not None and not 0 <= box_low <= box_high <= 1:
        raise _refuse(path, f"card lung_box_share_range [{box_low}, {box_high}] is not an ordered range in 0..1")
    if intensity not in INTENSITY_METHODS:
        raise _refuse(path, f"card input.intensity {intensity!r} is not one of {', '.join(INTENSITY_METHODS)}")
    return card


def read_card(session: ort.InferenceSession, path: Path) -> dict:
    text = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    if text is None:
        raise _refuse(path, f"no lungseg model card in the ONNX metadata (key {CARD_KEY!r}); export the model with "
                            f"`dvc repro export`")
    try:
        card = json.loads(text)
    except json.JSONDecodeError as err:
        raise _refuse(path, f"model card in the ONNX metadata is not valid JSON ({err})") from None
    return check_card(card, session, path)


@dataclass
class Model:
    """A loaded lungseg model: its ONNX Runtime session and its checked card."""

    path: Path
    session: ort.InferenceSession
    card: dict

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def image_size(self) -> int:
        return int(self.card["input"]["shape"][2])

    @property
    def intensity(self) -> str:
        return self.card["input"]["intensity"]

    @property
    def threshold(self) -> float:
        return float(self.card["output"]["threshold"])

    @property
    def postprocess(self) -> bool:
        return bool(self.card["output"]["postprocess"])

    @property
    def lung_crop_margin(self) -> float | None:
        margin = self.card["input"].get("lung_crop_margin")
        return None if margin is None else float(margin)

    @property
    def lung_box_share_range(self) -> tuple[float, float] | None:
        share = self.card["training_data"].get("lung_box_share_range")
        return None if share is None else (float(share[0]), float(share[1]))

    @property
    def lung_fraction_range(self) -> tuple[float, float]:
        low, high = self.card["training_data"]["lung_fraction_range"]
        return float(low), float(high)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """(N, C, S, S) float32 in 0..1 -> (N, S, S) logits."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0][:, 0]


def load_model(path: str | Path, device: str = "auto", threads: int = 0) -> Model:
    """Open an exported model and check its card against the graph. Raises ModelError or DeviceError."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise _refuse(path, f"model file not found{where}; name one with --model, build it with `dvc repro` in the "
                            f"repository, or fetch one: see docs/deploy.md")
    providers = providers_for(device)
    try:
        session = create_session(path, threads=threads, providers=providers)
    except Exception as err:  # ONNX Runtime raises its own exception types for truncated or non-ONNX files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _refuse(path, f"not a loadable ONNX model ({first_line[:300]})") from None
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise DeviceError(f"--device cuda: the CUDA provider failed to load (running: "
                          f"{', '.join(session.get_providers())}); check the CUDA and cuDNN libraries")
    return Model(path, session, read_card(session, path))
