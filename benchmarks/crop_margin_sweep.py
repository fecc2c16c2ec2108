"""Dice by `evaluate.lung_crop_margin` for a trained checkpoint: one pass (none) against a second pass on the
first pass's lung box widened by each margin, scored as the evaluate stage scores (at the masks' resolution,
post-processed, the checkpoint's threshold). Choose on the validation split; the test split only confirms.

    .venv/bin/python benchmarks/crop_margin_sweep.py --checkpoint models/checkpoint.pt --splits val test
"""
import argparse

from lungseg import checkpoint, evaluation
from lungseg.tables import read_manifest, split_rows


def margin(text: str) -> float | None:
    return None if text == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/checkpoint.pt")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--margins", type=margin, nargs="+", default=[None, 0.05, 0.1, 0.15, 0.2, 0.3],
                        help="'none' for one pass")
    args = parser.parse_args()
    trained = checkpoint.load(args.checkpoint)
    manifest = read_manifest(args.manifest)
    print("split margin dice iou mean worst5pct min")
    for split in args.splits:
        rows = split_rows(manifest, split)
        for lung_crop_margin in args.margins:
            inference = evaluation.checkpoint_inference(trained, trained.params.evaluate.threshold, True, 16,
                                                        lung_crop_margin)
            scores = evaluation.split_metrics(evaluation.score_split(rows, inference), split)
            print(split, "none" if lung_crop_margin is None else f"{lung_crop_margin:g}",
                  *(f"{scores[f'{split}/{key}']:.4f}"
                    for key in ("dice", "iou", "dice_mean", "dice_worst5pct", "dice_min")))


if __name__ == "__main__":
    main()
