"""How much Dice the model's input size alone can cost: the true test masks are resized to S x S as soft masks
(as training targets are), brought back to 512 x 512 the way predictions are (bilinear, threshold 0.5), and
scored against themselves.

    .venv/bin/python benchmarks/resolution_ceiling.py --manifest data/prepared/manifest.csv --sizes 128 160 192 256
"""
import argparse

import numpy as np

from lungseg.data import read_mask
from lungseg.metrics import iou_dice
from lungseg.runtime import imaging
from lungseg.tables import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 256])
    args = parser.parse_args()
    manifest = read_manifest(args.manifest)
    masks = [read_mask(path) for path in manifest.loc[manifest["split"] == args.split, "mask_path"]]
    for size in args.sizes:
        counts = np.zeros(3)
        for truth in masks:
            soft = imaging.resize_mask_soft(truth, size).astype(np.float32) / 255.0
            back = imaging.to_mask(imaging.upsample(soft, *truth.shape), threshold=0.5, postprocess=False)
            counts += [(back & truth).sum(), truth.sum(), back.sum()]
        iou, dice = iou_dice(counts)
        print(f"{size:4d} px: ceiling Dice {dice:.4f}, IoU {iou:.4f} over {len(masks)} {args.split} masks")


if __name__ == "__main__":
    main()
