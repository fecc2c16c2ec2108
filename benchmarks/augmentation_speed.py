"""How fast the train stage's data path turns training pairs into augmented batches, without a model: whether
augmentation can keep a GPU fed. Per input size, the training split's in-memory pairs (loaded at that size, as
the train stage loads them) go through the committed augmentation pipeline and the intensity normalisation,
first item by item in this process on one thread, then as batches from a DataLoader with each worker count.

    .venv/bin/python benchmarks/augmentation_speed.py --sizes 128 256 --workers 0 2 --batch-size 16 --epochs 2
    .venv/bin/python benchmarks/augmentation_speed.py --sizes 256 --workers 2 --opencv-threads -1
"""
import argparse
import time

import cv2
import torch

from lungseg import augment, data, tables
from lungseg.config import load_params


def items_per_second(dataset: data.XrayDataset) -> float:
    """Every item of the dataset, one by one in this process."""
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return len(dataset) / (time.perf_counter() - start)


def loader_items_per_second(dataset: data.XrayDataset, batch_size: int, workers: int, epochs: int) -> float:
    """Items per second through the train stage's loader (persistent workers), after one untimed epoch that
    starts them."""
    loader = data.build_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers)
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            pass
    return epochs * len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="data/prepared/manifest.csv")
    parser.add_argument("--pipeline", default="data/augment/pipeline.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="timed loader epochs per worker count")
    parser.add_argument("--opencv-threads", type=int, default=1,
                        help="OpenCV threads in this process and its workers (default 1; -1: OpenCV's default)")
    args = parser.parse_args()
    # torch on one thread in this process, as in any loader worker; OpenCV (albumentations' warps, the intensity
    # step's CLAHE) on the threads asked for, here and, inherited, in the workers. With one, each process uses one
    # core; the train stage's workers keep OpenCV's default, a pool of all cores (docs/benchmarks.md says why).
    torch.set_num_threads(1)
    cv2.setNumThreads(args.opencv_threads)
    params = load_params(args.params)
    rows = tables.split_rows(tables.read_manifest(args.manifest), "train")
    pipeline = augment.load_pipeline(args.pipeline)
    for size in args.sizes:
        dataset = data.XrayDataset(*data.load_arrays(rows, size), params.model.intensity, pipeline)
        print(f"{size} px, {len(dataset)} training pairs: {items_per_second(dataset):.0f} items/s one by one "
              f"on one thread", flush=True)
        for workers in args.workers:
            rate = loader_items_per_second(dataset, args.batch_size, workers, args.epochs)
            print(f"{size} px, batches of {args.batch_size}, {workers} workers: {rate:.0f} items/s", flush=True)


if __name__ == "__main__":
    main()
