"""Throughput of `lungseg predict` end to end (decode, preprocess, model, postprocess, QA, write) on shipped
X-rays, and the share of the time spent inside the ONNX model.

    .venv/bin/python benchmarks/predict_throughput.py --model models/model.onnx --count 100 --threads 2
"""
import argparse
import tempfile
import time
from pathlib import Path

from lungseg.predict import Segmenter, predict_files, read_input

SOURCES = Path(__file__).resolve().parents[1] / "data" / "sources"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/model.onnx")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    files = sorted(SOURCES.glob("*/images/*.png"))[: args.count]
    segmenter = Segmenter(args.model, device="cpu", threads=args.threads)
    model_seconds = 0.0
    run_model = segmenter.run_model

    def timed(inputs):
        nonlocal model_seconds
        start = time.perf_counter()
        out = run_model(inputs)
        model_seconds += time.perf_counter() - start
        return out

    segmenter.run_model = timed
    segmenter.predict(read_input(files[0]))  # warm-up: the first run initialises ONNX Runtime
    model_seconds = 0.0
    with tempfile.TemporaryDirectory() as out:
        summary = predict_files(segmenter, files, out, show_progress=False)
    print(f"images: {len(summary.written)} ({len(summary.failed)} failed), threads: {args.threads}, "
          f"model input: {segmenter.image_size}x{segmenter.image_size}, provider: {segmenter.provider}")
    print(f"end to end: {summary.seconds:.2f} s, {summary.images_per_second:.1f} images/s")
    print(f"inside the model: {model_seconds:.2f} s = {100 * model_seconds / summary.seconds:.0f}% of the time "
          f"({len(files) / model_seconds:.1f} images/s model only)")


if __name__ == "__main__":
    main()
