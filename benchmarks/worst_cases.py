"""The test images the exported model segments worst, truth against prediction, to see what limits the score.

Reads the evaluate stage's per-image scores, runs the deployed ONNX model (the same path as `lungseg predict`)
on the N lowest-Dice test images and draws truth (green) and prediction (magenta) over each X-ray.

    .venv/bin/python benchmarks/worst_cases.py --count 6 --output docs/worst_cases.jpg
"""
import argparse

import pandas as pd

from lungseg import figures, tables
from lungseg.data import read_mask
from lungseg.runtime.decode import read_xray
from lungseg.runtime.model_file import DEFAULT_MODEL_PATH, load_model
from lungseg.runtime.predict import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--per-image", default="metrics/test_per_image.csv")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--output", default="docs/worst_cases.jpg")
    args = parser.parse_args()

    scores = pd.read_csv(args.per_image).sort_values("dice").head(args.count)
    manifest = tables.read_manifest(args.manifest).set_index("name")
    segmenter = Segmenter(load_model(args.model, device="cpu"))
    cases = []
    for row in scores.itertuples():
        entry = manifest.loc[row.name]
        xray, truth = read_xray(entry["image_path"]), read_mask(entry["mask_path"])
        image, prediction = xray.pixels, segmenter.predict(xray).mask
        cases.append((f"{row.name}\n{row.source} {row.label}, Dice {row.dice:.3f}", image, truth, prediction))
        print(f"{row.name:16s} {row.source:10s} {row.label:6s} Dice {row.dice:.4f}  truth {row.truth_pixels} px, "
              f"predicted {row.predicted_pixels} px")
    figures.cases_figure(cases, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
