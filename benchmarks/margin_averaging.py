"""Test-time averaging of second passes: for a trained checkpoint, Dice when the full-size probabilities of the
second pass at several `evaluate.lung_crop_margin`s (or of one pass, 'none') are averaged before the threshold,
against each margin alone; post-processed, at the masks' resolution, the checkpoint's threshold, as evaluate
scores. The margins share one first pass; every margin is one more model run per image. Choose on the
validation split; the test split only confirms.

    .venv/bin/python benchmarks/margin_averaging.py --average 0.05,0.1,0.15 0.05,0.1 none,0.1
"""
import argparse

import numpy as np

from lungseg import checkpoint
from lungseg.data import read_mask
from lungseg.evaluation import score_masks
from lungseg.metrics import iou_dice, summarize
from lungseg.model import torch_runner
from lungseg.runtime import imaging
from lungseg.runtime.decode import read_grayscale
from lungseg.tables import read_manifest, split_rows


def margins(text: str) -> tuple[float | None, ...]:
    return tuple(None if one == "none" else float(one) for one in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/checkpoint.pt")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--average", type=margins, nargs="+", required=True,
                        help="comma-separated margins to average, 'none' for one pass; each alone is scored too")
    args = parser.parse_args()
    trained = checkpoint.load(args.checkpoint)
    run_model, threshold = torch_runner(trained.build_model(), "cpu"), trained.params.evaluate.threshold
    singles = sorted({one for group in args.average for one in group}, key=lambda m: -1.0 if m is None else m)
    variants = [(margin,) for margin in singles] + list(args.average)
    manifest = read_manifest(args.manifest)
    print("split margins dice iou worst5pct min")
    for split in args.splits:
        counts = {variant: [] for variant in variants}  # per image: intersection, truth, predicted pixels
        for row in split_rows(manifest, split).itertuples():
            image, truth = read_grayscale(row.image_path), read_mask(row.mask_path)
            size, intensity = trained.params.train.image_size, trained.params.model.intensity
            first = imaging.predict_probabilities([image], run_model, size, intensity, 1)
            full = {margin: imaging.second_pass([image], first, run_model, size, intensity, threshold, margin, 1)[0]
                    .full_size(*image.shape) for margin in singles}
            for variant in variants:
                scores = score_masks(imaging.keep_lungs(np.mean([full[m] for m in variant], axis=0) > threshold), truth)
                counts[variant].append([scores[key] for key in ("intersection", "truth_pixels", "predicted_pixels")])
        for variant, per_image in counts.items():
            iou, dice = iou_dice(np.array(per_image).sum(0))
            per_image_dice = summarize(iou_dice(np.array(per_image))[1])
            print(split, ",".join("none" if m is None else f"{m:g}" for m in variant), f"{dice:.4f}", f"{iou:.4f}",
                  f"{per_image_dice['worst5pct']:.4f}", f"{per_image_dice['min']:.3f}")


if __name__ == "__main__":
    main()
