"""The deployed model in use: ONNX Runtime inference on image files, driven by the model card.

Contract: for every input image, DIR/<input stem>.png is an 8-bit mask (0 or 255) with exactly the input's
width and height. No torch here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lungseg import imaging
from lungseg.export import card_path_for, create_session, onnx_runner
from lungseg.io import IMAGE_SUFFIXES, ImageReadError, read_grayscale, read_json, write_png


@dataclass
class PredictionSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "path: problem"
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{len(self.written)} masks written, {len(self.failed)} failed, {self.seconds:.1f} s, "
                f"{self.images_per_second:.1f} images/s")


class Segmenter:
    """An exported lungseg ONNX model with its card: gray uint8 (H, W) -> bool lung mask (H, W)."""

    def __init__(self, model_path: str | Path, threads: int = 0):
        model_path = Path(model_path)
        card_path = card_path_for(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: ONNX model not found; run `dvc repro` to build it")
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path}: model card not found beside {model_path}")
        self.card = read_json(card_path)
        self.session = create_session(model_path, threads=threads)
        self.image_size = int(self.card["input"]["shape"][2])
        self.threshold = float(self.card["output"]["threshold"])
        self.postprocess = bool(self.card["output"]["postprocess"])
        self._run = onnx_runner(self.session)

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return imaging.segment(
            images, self._run, self.image_size, self.threshold, len(images) or 1, self.postprocess
        )


def collect_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded to their PNG/JPEG files (sorted); missing paths are reported."""
    files, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return files, problems


def predict_files(segmenter: Segmenter, files: list[Path], output_dir: str | Path,
                  show_progress: bool = True) -> PredictionSummary:
    """Write one mask per readable input; unreadable files are reported and skipped, the rest still written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary()
    start = time.perf_counter()
    sources: dict[Path, Path] = {}
    for path in tqdm(files, desc="predict", unit="img", disable=not show_progress):
        target = output_dir / f"{path.stem}.png"
        if target in sources:
            summary.failed.append(f"{path}: skipped, its mask {target} would overwrite the mask of {sources[target]}")
            continue
        sources[target] = path
        try:
            image = read_grayscale(path)
        except ImageReadError as err:
            summary.failed.append(str(err))
            continue
        mask = segmenter.segment([image])[0]
        write_png(target, mask.astype(np.uint8) * 255)
        summary.written.append(target)
    summary.seconds = time.perf_counter() - start
    return summary
