"""Seconds per training step (forward, loss, backward, Adam) of the default model and batch, float32 against
bfloat16 autocast on the CPU, at several input sizes: what `train.mixed_precision` buys on this machine. The two
precisions take turns step by step, so a change in a virtual machine's speed hits both alike.

    .venv/bin/python benchmarks/training_precision.py --sizes 160 224
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from lungseg import engine
from lungseg.config import load_params
from lungseg.losses import build_loss
from lungseg.model import build_model

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PRECISIONS = ("float32", "bfloat16")


def seconds_per_step(model, optimizer, loss_fn, images, masks, precision: str, steps: int, warmup: int = 2) -> float:
    """Median seconds of `steps` timed training steps, after `warmup` untimed ones."""
    times = []
    for step in range(steps + warmup):
        start = time.perf_counter()
        with engine.autocast(CPU, precision):
            logits = model(images)
        loss = loss_fn(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    params = load_params(REPO / "params.yaml")
    batch = params.train.batch_size
    print(f"{params.model.encoder} U-Net, batch {batch}, channels_last {params.train.channels_last}, "
          f"{torch.get_num_threads()} threads; native bfloat16 on this CPU: {engine.native_bfloat16(CPU)}")
    for size in args.sizes:
        torch.manual_seed(params.seed)
        images = torch.rand(batch, 1, size, size)
        masks = (torch.rand(batch, 1, size, size) > 0.5).float()
        if params.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss_fn = build_loss(params.train)
        trainings = {}
        for precision in PRECISIONS:
            model = build_model(params.model, in_channels=1)
            if params.train.channels_last:
                model = model.to(memory_format=torch.channels_last)
            trainings[precision] = (model, engine.build_optimizer(model, params.train))
            seconds_per_step(*trainings[precision], loss_fn, images, masks, precision, steps=1)  # warm-up
        steps = {precision: [] for precision in PRECISIONS}
        for _ in range(args.steps):
            for precision in PRECISIONS:
                steps[precision].append(seconds_per_step(*trainings[precision], loss_fn, images, masks, precision,
                                                         steps=1, warmup=0))
        timings = {precision: statistics.median(times) for precision, times in steps.items()}
        print(f"{size} px: float32 {timings['float32']:.3f} s/step, bfloat16 {timings['bfloat16']:.3f} s/step, "
              f"{timings['float32'] / timings['bfloat16']:.2f}x")


if __name__ == "__main__":
    main()
