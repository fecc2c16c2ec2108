"""Dice by mask threshold for a trained checkpoint: where `evaluate.threshold` sits against the best one. The
model runs once per split (both passes, the second on the lung box its `evaluate` params' threshold and margin
find); each threshold is then applied to the same full-size probabilities, with the post-processing the pipeline
uses. Choose on the validation split; the test split only confirms.

    .venv/bin/python benchmarks/threshold_sweep.py --checkpoint models/checkpoint.pt --splits val test
"""
import argparse

import numpy as np

from lungseg import checkpoint
from lungseg.data import read_mask
from lungseg.evaluation import checkpoint_inference, score_masks
from lungseg.metrics import iou_dice, summarize
from lungseg.runtime import imaging
from lungseg.runtime.decode import read_grayscale
from lungseg.tables import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/checkpoint.pt")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7])
    args = parser.parse_args()
    trained = checkpoint.load(args.checkpoint)
    config = trained.params.evaluate
    inference = checkpoint_inference(trained, config.threshold, postprocess=True, batch_size=16,
                                     lung_crop_margin=config.lung_crop_margin)
    manifest = read_manifest(args.manifest)
    print("split threshold dice worst5pct")
    for split in args.splits:
        rows = manifest[manifest["split"] == split]
        images = [read_grayscale(path) for path in rows["image_path"]]
        framed = imaging.predict_framed(images, inference.run_model, inference.image_size, inference.intensity,
                                        inference.threshold, inference.lung_crop_margin, inference.batch_size)
        counts = np.zeros((len(args.thresholds), len(rows), 3))
        for index_in_split, (pixels, model_view, mask_path) in enumerate(zip(images, framed, rows["mask_path"])):
            truth = read_mask(mask_path)
            full = model_view.full_size(*pixels.shape)
            for index, threshold in enumerate(args.thresholds):
                scores = score_masks(imaging.to_mask(full, threshold, inference.postprocess), truth)
                counts[index, index_in_split] = [scores["intersection"], scores["truth_pixels"],
                                                 scores["predicted_pixels"]]
        for index, threshold in enumerate(args.thresholds):
            dice = iou_dice(counts[index].sum(0))[1]
            worst = summarize(iou_dice(counts[index])[1])["worst5pct"]
            print(f"{split} {threshold:.2f} {dice:.4f} {worst:.4f}")


if __name__ == "__main__":
    main()
