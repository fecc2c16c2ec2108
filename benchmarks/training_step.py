"""Where a training step's time goes (the default model, batch and size, the train stage's precision), next
to segmentation_models.pytorch's Unet with the same encoder: seconds per step of each, the encoder's share of
ours (forward and backward alone), and ours by operator kind from torch.profiler.

    .venv/bin/pip install -e ".[bench]"   # segmentation-models-pytorch, a benchmark-only dependency
    .venv/bin/python benchmarks/training_step.py
"""
import argparse
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch.profiler import ProfilerActivity, profile

from lungseg import engine
from lungseg.config import load_params
from lungseg.losses import build_loss
from lungseg.model import build_model
from training_precision import seconds_per_step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# Profiler operator names, grouped into what they are.
KINDS = {
    "convolution": ("aten::convolution_backward", "aten::mkldnn_convolution"),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
    "ReLU": ("aten::clamp_min_", "aten::threshold_backward"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    config, size = params.train, params.train.image_size
    precision = engine.training_precision(CPU, config.mixed_precision)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(params.seed)
    images = torch.rand(config.batch_size, 1, size, size).contiguous(memory_format=memory_format)
    masks = (torch.rand(config.batch_size, 1, size, size) > 0.5).float()
    models = {
        "lungseg": build_model(params.model, in_channels=1),
        "smp.Unet": smp.Unet(encoder_name=params.model.encoder, encoder_weights=None, in_channels=1, classes=1),
    }
    print(f"{params.model.encoder} encoder, {size} px, batch {config.batch_size}, {precision}, "
          f"{torch.get_num_threads()} threads")
    steps = {}
    for name, model in models.items():
        model.to(memory_format=memory_format).train()
        optimizer = engine.build_optimizer(model, config)
        steps[name] = seconds_per_step(model, optimizer, build_loss(config), images, masks, precision, args.steps)
        print(f"{name}: {1000 * steps[name]:.0f} ms per step")
    print(f"ratio {steps['smp.Unet'] / steps['lungseg']:.2f}x")

    ours = models["lungseg"]

    def encoder_pass():
        with engine.autocast(CPU, precision):
            features = ours.pool(ours.stem(images))
            for layer in ours.layers:
                features = layer(features)
        features.float().sum().backward()

    encoder = median_seconds(encoder_pass, args.steps)
    print(f"lungseg's encoder, forward and backward alone: {1000 * encoder:.0f} ms "
          f"({100 * encoder / steps['lungseg']:.0f}% of the step)")

    optimizer = engine.build_optimizer(ours, config)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        seconds_per_step(ours, optimizer, build_loss(config), images, masks, precision, args.steps)
    self_time = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    total = sum(self_time.values())
    for kind, names in KINDS.items():
        share = sum(self_time.get(name, 0) for name in names) / total
        print(f"lungseg, {kind}: {100 * share:.0f}% of the step's operator time")


def median_seconds(run, steps: int) -> float:
    """Median seconds of `steps` calls of run(), after two warm-up calls."""
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        run()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()
