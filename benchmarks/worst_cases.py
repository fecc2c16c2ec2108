"""The test images the exported model segments worst, truth against prediction, to see what limits the score.

Reads the evaluate stage's per-image scores, runs the deployed ONNX model (the same path as `lungseg predict`)
on the N lowest-Dice test images and draws truth (green) and prediction (magenta) over each X-ray.

    .venv/bin/python benchmarks/worst_cases.py --count 6 --output docs/worst_cases.png
"""
import argparse

import pandas as pd

from lungseg import figures, io
from lungseg.predict import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/model.onnx")
    parser.add_argument("--per-image", default="metrics/test_per_image.csv")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--output", default="docs/worst_cases.png")
    args = parser.parse_args()

    scores = pd.read_csv(args.per_image).sort_values("dice").head(args.count)
    manifest = io.read_manifest(args.manifest).set_index("name")
    segmenter = Segmenter(args.model, device="cpu")
    cases = []
    for row in scores.itertuples():
        entry = manifest.loc[row.name]
        image, truth = io.read_grayscale(entry["image_path"]), io.read_mask(entry["mask_path"])
        prediction = segmenter.predict(image).mask
        cases.append((f"{row.name}\n{row.source} {row.label}, Dice {row.dice:.3f}", image, truth, prediction))
        print(f"{row.name:16s} {row.source:10s} {row.label:6s} Dice {row.dice:.4f}  truth {row.truth_pixels} px, "
              f"predicted {row.predicted_pixels} px")
    figures.cases_figure(cases, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
