"""Throughput of `lungseg predict` end to end (decode, preprocess, model, postprocess, QA, write) on shipped
X-rays, and the share of the time spent inside the ONNX model (both passes when the model card asks for two;
--one-pass runs the model once per image instead).

    .venv/bin/python benchmarks/predict_throughput.py --model models/model.onnx --count 100 --threads 2
"""
import argparse
import tempfile
import time
from pathlib import Path

from lungseg.runtime.decode import read_xray
from lungseg.runtime.model_file import DEFAULT_MODEL_PATH, load_model
from lungseg.runtime.predict import Options, Segmenter, plan, predict_files

SOURCES = Path(__file__).resolve().parents[1] / "data" / "sources"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-pass", action="store_true", help="ignore the card's lung_crop_margin")
    args = parser.parse_args()

    files = sorted(p for p in SOURCES.glob("*/images/*") if p.suffix in (".png", ".jpg"))[: args.count]
    model = load_model(args.model, device="cpu", threads=args.threads)
    if args.one_pass:
        model.card = {**model.card, "input": {**model.card["input"], "lung_crop_margin": None}}
    segmenter = Segmenter(model)
    model_seconds = 0.0
    run_model = model.run

    def timed(inputs):
        nonlocal model_seconds
        start = time.perf_counter()
        out = run_model(inputs)
        model_seconds += time.perf_counter() - start
        return out

    model.run = timed
    segmenter.predict(read_xray(files[0]))  # warm-up: the first run initialises ONNX Runtime
    model_seconds = 0.0
    with tempfile.TemporaryDirectory() as out:
        jobs = plan(files, out, Options().extras())
        summary = predict_files(segmenter, jobs, out, Options(), show_progress=False)
    print(f"images: {summary.written} ({len(summary.failed)} failed), threads: {args.threads}, "
          f"model input: {model.image_size}x{model.image_size}, passes: {1 if model.lung_crop_margin is None else 2}, "
          f"provider: {segmenter.provider}")
    print(f"end to end: {summary.seconds:.2f} s, {summary.images_per_second:.1f} images/s")
    print(f"inside the model: {model_seconds:.2f} s = {100 * model_seconds / summary.seconds:.0f}% of the time "
          f"({len(files) / model_seconds:.1f} images/s model only)")


if __name__ == "__main__":
    main()
