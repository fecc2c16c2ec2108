"""The deployed model in use: ONNX Runtime inference on image files, driven by the model card.

Contract: for every input image, DIR/<input stem>.png is an 8-bit mask (0 or 255) with exactly the input's
width and height (for DICOM: Rows x Columns). No torch here.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pandas as pd
from tqdm import tqdm

from lungseg import dicom, imaging, qa
from lungseg.errors import UserError
from lungseg.export import card_path_for, create_session, onnx_runner
from lungseg.io import IMAGE_SUFFIXES, ImageReadError, decode_grayscale, read_grayscale, read_json, write_csv, write_png

INPUT_SUFFIXES = IMAGE_SUFFIXES + dicom.DICOM_SUFFIXES
OUTLINE_COLOUR = (255, 60, 60)  # RGB
LOOKAHEAD = 4  # files decoded ahead of the model
REPORT_COLUMNS = ["file", "mask", "width", "height", "lung_fraction", "regions", "mean_confidence",
                  "uncertain_share", "qa_flags", "needs_review", "status"]


class DeviceError(UserError, RuntimeError):
    """The requested execution provider cannot run here; never silently replaced by another."""


def providers_for(device: str) -> list[str]:
    """'cpu' | 'cuda' | 'auto' -> ONNX Runtime providers; 'cuda' fails unless the CUDA provider is installed."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"--device cuda: ONNX Runtime has no CUDA provider here (available: {', '.join(available)}); "
                f"install onnxruntime-gpu (pip install -e '.[gpu]') on a machine with an NVIDIA driver"
            )
        return ["CUDAExecutionProvider"]
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def read_input(path: Path) -> np.ndarray:
    """PNG/JPEG (8/16-bit, gray/RGB) or DICOM (by suffix or by its 'DICM' marker) -> gray uint8 (H, W)."""
    return dicom.read_dicom(path) if dicom.is_dicom_file(path) else read_grayscale(path)


def decode_input(data: bytes, name: str) -> np.ndarray:
    """The same for bytes, e.g. an HTTP request body."""
    return dicom.read_dicom_bytes(data, name) if dicom.looks_like_dicom(data[:132]) else decode_grayscale(data, name)


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) bool
    probabilities: np.ndarray  # (H, W) float32
    qa: dict


class Segmenter:
    """An exported lungseg ONNX model with its card: gray uint8 (H, W) -> mask, probabilities, QA fields."""

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0):
        model_path = Path(model_path)
        card_path = card_path_for(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: ONNX model not found; run `dvc repro` to build it")
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path}: model card not found beside {model_path}")
        self.card = read_json(card_path)
        self.session = create_session(model_path, threads=threads, providers=providers_for(device))
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise DeviceError(f"--device cuda: the CUDA provider failed to load (running: "
                              f"{', '.join(self.session.get_providers())}); check the CUDA and cuDNN libraries")
        self.provider = self.session.get_providers()[0]
        self.image_size = int(self.card["input"]["shape"][2])
        self.threshold = float(self.card["output"]["threshold"])
        self.postprocess = bool(self.card["output"]["postprocess"])
        self.lung_fraction_range = tuple(self.card["training_data"]["lung_fraction_range"])
        self.run_model = onnx_runner(self.session)

    def model_probabilities(self, image: np.ndarray) -> np.ndarray:
        """The model's part: gray (H, W) -> (S, S) lung probabilities at the model's size."""
        return imaging.predict_probabilities([image], self.run_model, self.image_size, batch_size=1)[0]

    def finish(self, image: np.ndarray, low_res: np.ndarray) -> Prediction:
        """Everything after the model: full-size probabilities, mask, QA."""
        probabilities = imaging.upsample(low_res, image.shape[0], image.shape[1])
        mask = imaging.to_mask(probabilities, self.threshold, self.postprocess)
        return Prediction(mask, probabilities, qa.describe(mask, low_res, self.threshold, self.lung_fraction_range))

    def predict(self, image: np.ndarray) -> Prediction:
        return self.finish(image, self.model_probabilities(image))


def outline_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The X-ray in RGB with the lung outline drawn, line width scaled to the image."""
    picture = np.repeat(image[..., None], 3, axis=2)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape) / 256))
    return cv2.drawContours(np.ascontiguousarray(picture), contours, -1, OUTLINE_COLOUR, thickness)


def mask_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def probability_png(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as 16-bit integers: value / 65535 is the lung probability."""
    return np.rint(probabilities * 65535).astype(np.uint16)


def collect_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded to their image/DICOM files (sorted); missing paths are reported."""
    files, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return files, problems


@dataclass
class PredictionSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "path: problem"
    flagged: int = 0
    provider: str = ""
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{len(self.written)} masks written, {len(self.failed)} failed, {self.flagged} flagged for review, "
                f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s on {self.provider}")


def _read(path: Path) -> np.ndarray | ImageReadError:
    try:
        return read_input(path)
    except ImageReadError as err:
        return err


def _finish_and_write(segmenter: Segmenter, path: Path, target: Path, image: np.ndarray, low_res: np.ndarray,
                      overlay: bool, probabilities: bool) -> dict:
    result = segmenter.finish(image, low_res)
    write_png(target, mask_png(result.mask))
    if overlay:
        write_png(target.with_name(f"{path.stem}_overlay.png"), outline_overlay(image, result.mask))
    if probabilities:
        write_png(target.with_name(f"{path.stem}_probability.png"), probability_png(result.probabilities))
    return {"file": str(path), "mask": str(target), "width": image.shape[1], "height": image.shape[0],
            **result.qa, "status": "review" if result.qa["needs_review"] else "ok"}


def predict_files(segmenter: Segmenter, files: list[Path], output_dir: str | Path, overlay: bool = False,
                  probabilities: bool = False, show_progress: bool = True) -> PredictionSummary:
    """Write one mask per readable input, plus report.csv; unreadable files are reported and skipped.

    Decoding the next files and post-processing and writing the previous ones run in a thread pool while the
    model runs (ONNX Runtime, OpenCV and PIL release the GIL), so I/O is hidden behind the model.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary(provider=segmenter.provider)
    targets = [output_dir / f"{path.stem}.png" for path in files]
    first_use = {target: path for target, path in reversed(list(zip(targets, files)))}
    report: list[dict | Future] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        reads: deque[Future] = deque(pool.submit(_read, p) for p in files[:LOOKAHEAD])
        for index, (path, target) in enumerate(tqdm(list(zip(files, targets)), desc="predict", unit="img",
                                                    disable=not show_progress)):
            image = reads.popleft().result()
            if index + LOOKAHEAD < len(files):
                reads.append(pool.submit(_read, files[index + LOOKAHEAD]))
            if first_use[target] != path:
                problem = f"{path}: skipped, its mask {target} would overwrite the mask of {first_use[target]}"
                report.append({"file": str(path), "status": f"error: {problem}"})
            elif isinstance(image, ImageReadError):
                report.append({"file": str(path), "status": f"error: {image}"})
            else:
                low_res = segmenter.model_probabilities(image)
                report.append(pool.submit(_finish_and_write, segmenter, path, target, image, low_res, overlay,
                                          probabilities))
        rows = [row.result() if isinstance(row, Future) else row for row in report]
    summary.seconds = time.perf_counter() - start
    for row in rows:
        if row["status"].startswith("error: "):
            summary.failed.append(row["status"][len("error: "):])
        else:
            summary.written.append(Path(row["mask"]))
            summary.flagged += row["needs_review"]
    write_csv(output_dir / "report.csv", pd.DataFrame(rows, columns=REPORT_COLUMNS))
    return summary

