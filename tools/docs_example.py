"""The README's picture: a test X-ray (the one of median Dice) with the lungs the exported model finds, the
patient's right lung outlined in red and the left in blue, exactly as `lungseg predict --overlay` draws them.

    .venv/bin/python tools/docs_example.py --output docs/example.jpg
"""
import argparse
import io

import pandas as pd
from PIL import Image

from lungseg import tables
from lungseg.runtime.decode import read_xray
from lungseg.runtime.model_file import DEFAULT_MODEL_PATH, load_model
from lungseg.runtime.predict import Segmenter, outline_overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--per-image", default="metrics/test_per_image.csv")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--output", default="docs/example.jpg")
    args = parser.parse_args()
    scores = pd.read_csv(args.per_image).sort_values("dice").reset_index(drop=True)
    name = scores.loc[len(scores) // 2, "name"]
    path = tables.read_manifest(args.manifest).set_index("name").loc[name, "image_path"]
    xray = read_xray(path)
    picture = outline_overlay(xray.pixels, Segmenter(load_model(args.model, device="cpu")).predict(xray).labels)
    buffer = io.BytesIO()
    Image.fromarray(picture).resize((384, 384), Image.LANCZOS).save(buffer, format="JPEG", quality=88)
    with open(args.output, "wb") as handle:
        handle.write(buffer.getvalue())
    print(f"wrote {args.output}: {name} (median test Dice {scores.loc[len(scores) // 2, 'dice']:.4f}), "
          f"{len(buffer.getvalue()) / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
