"""lungseg side by side with segmentation_models.pytorch's Unet: same encoder (no pretrained weights), same
data, image size, batch, optimizer, schedule, loss and number of steps, in one run: both train through the
train stage's own epoch function, taking turns epoch by epoch, so a drift in the machine's speed affects both alike.

Prints training images/s of each and their ratio, in whole epochs (loading and augmenting in the training
process, as the train stage does) and in training steps alone (one random batch, the models taking turns step by
step); CPU inference images/s on 2 threads for lungseg's ONNX Runtime path and the peer's PyTorch eager path and
their ratio; test Dice of each at 512x512 after the same training budget; and lungseg's achieved GFLOP/s against
this CPU's peaks (benchmarks/cpu_peaks.py): inference against each float32 unit, training against the unit its
precision uses.

    .venv/bin/pip install -e ".[bench]"   # segmentation-models-pytorch, a benchmark-only dependency
    .venv/bin/python benchmarks/peer_smp.py              # the default's epochs; --epochs 1 for a quick look
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lungseg import data, engine, evaluation, export, tables
from lungseg.augment import build_augmentations
from lungseg.config import load_params
from lungseg.losses import build_loss
from lungseg.model import build_model, torch_runner
from lungseg.runtime.model_file import INPUT_NAME, OUTPUT_NAME, create_session
from cpu_peaks import AVX2, AVX512, cpu_peaks, training_peak
from training_precision import seconds_per_step
from training_speed import operator_seconds

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def train_alternating(models: dict, train_arrays, params, epochs: int, precision: str
                      ) -> dict[str, dict[str, float]]:
    """Train each model for `epochs` epochs with the train stage's own epoch function (its optimizer, schedule and
    loss, in `precision` from engine.training_precision), the models taking turns epoch by epoch, the order
    swapped each epoch: a change in the machine's speed during the run (another tenant, the clock) then slows
    both alike instead of biasing the ratio. Each model has its own dataset object, so its augmentation draws do
    not depend on the other's. Returns images/s and seconds."""
    config = params.train.model_copy(update={"epochs": epochs})
    loss_fn = build_loss(config)
    runs = {}
    for name, model in models.items():
        dataset = data.XrayDataset(*train_arrays, params.model.intensity, build_augmentations(params.augment))
        loader = data.build_loader(dataset, config.batch_size, True, params.seed, 0)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = engine.build_optimizer(model, config)
        runs[name] = (model, loader, optimizer, engine.build_scheduler(optimizer, config, len(loader)))
    seconds = dict.fromkeys(models, 0.0)
    names = list(models)
    for epoch in range(1, epochs + 1):
        for name in names if epoch % 2 else names[::-1]:
            model, loader, optimizer, scheduler = runs[name]
            engine.seed_epoch(params.seed, epoch, loader)
            start = time.perf_counter()
            engine.train_one_epoch(model, loader, loss_fn, optimizer, scheduler, CPU, precision,
                                   config.channels_last, description=f"{name} {epoch}/{epochs}")
            seconds[name] += time.perf_counter() - start
    images = epochs * len(train_arrays[0])
    return {name: {"train_ips": images / seconds[name], "train_seconds": seconds[name]} for name in models}


def peer_unet(encoder: str) -> torch.nn.Module:
    """segmentation_models.pytorch's Unet on the same torchvision-style encoder, no pretrained weights, 1 channel in."""
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=1)


def step_seconds(params, precision: str, steps: int, profiled: bool = False
                 ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Median seconds of one training step of each model (new, untrained models of both architectures, so the
    trained ones are untouched) on one random batch, the models taking turns step by step, the order swapped each
    round: the models alone, without the loading, augmentation and per-batch bookkeeping an epoch adds. With
    `profiled`, also each model's operator seconds per step by kind (training_speed.operator_seconds) over 3 more
    steps, one model after the other."""
    config, size = params.train, params.train.image_size
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    images = torch.rand(config.batch_size, 1, size, size).contiguous(memory_format=memory_format)
    masks = (torch.rand(config.batch_size, 1, size, size) > 0.5).float()
    loss_fn = build_loss(config)
    trainings = {}
    for name, model in (("lungseg", build_model(params.model, in_channels=1)),
                        ("smp.Unet", peer_unet(params.model.encoder))):
        model = model.to(memory_format=memory_format)
        trainings[name] = (model, engine.build_optimizer(model, config))
        seconds_per_step(*trainings[name], loss_fn, images, masks, precision, steps=1)  # warm-up
    times = {name: [] for name in trainings}
    names = list(trainings)
    for round_ in range(steps):
        for name in names if round_ % 2 == 0 else names[::-1]:
            training = trainings[name]
            times[name].append(seconds_per_step(*training, loss_fn, images, masks, precision, steps=1, warmup=0))
    operators = {}
    if profiled:
        for name, training in trainings.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                seconds_per_step(*training, loss_fn, images, masks, precision, steps=3, warmup=0)
            operators[name] = operator_seconds(prof, 3)
    return {name: statistics.median(seconds) for name, seconds in times.items()}, operators


def inference_rate(run_model, size: int, count: int) -> float:
    batch = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    run_model(batch)
    start = time.perf_counter()
    for _ in range(count):
        run_model(batch)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="training epochs of each model (default: train.epochs)")
    parser.add_argument("--inference-images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps of each model alone")
    parser.add_argument("--profile", action="store_true", help="each model's step time by kind of operator")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    params = load_params(REPO / "params.yaml")
    size, batch, encoder = params.train.image_size, params.train.batch_size, params.model.encoder
    epochs = args.epochs or params.train.epochs
    precision = engine.training_precision(CPU, params.train.mixed_precision)
    torch.set_num_threads(args.threads)
    sources = [REPO / s for s in params.prepare.sources]
    manifest, _ = data.collect_records(sources, skip_bad=False)
    manifest["split"] = data.assign_splits(manifest, params.prepare.split.model_dump(), params.seed)
    train_arrays = data.load_arrays(tables.split_rows(manifest, "train"), size)
    test = tables.split_rows(manifest, "test")
    print(f"encoder {encoder} (no pretrained weights), {size}x{size}, batch {batch}, {epochs} epochs each, "
          f"{len(train_arrays[0])} training images, {len(test)} test images, {args.threads} threads, "
          f"training in {precision}")

    torch.manual_seed(params.seed)
    ours = build_model(params.model, in_channels=1)
    torch.manual_seed(params.seed)
    peer = peer_unet(encoder)
    results = train_alternating({"lungseg": ours, "smp.Unet": peer}, train_arrays, params, epochs, precision)
    for model in (ours, peer):
        model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export.write_model(onnx_path, export.export_graph(ours, size, 1, params.export.opset))
        session = create_session(onnx_path, threads=args.threads)
        ours_run = lambda inputs: session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0][:, 0]  # noqa: E731
        peer_run = torch_runner(peer)
        results["lungseg"]["infer_ips"] = inference_rate(ours_run, size, args.inference_images)
        results["smp.Unet"]["infer_ips"] = inference_rate(peer_run, size, args.inference_images)
        for name, run_model in (("lungseg", ours_run), ("smp.Unet", peer_run)):
            inference = evaluation.Inference(run_model, size, params.model.intensity, params.evaluate.threshold,
                                             params.evaluate.postprocess,
                                             lung_crop_margin=params.evaluate.lung_crop_margin)
            scores = evaluation.split_metrics(evaluation.score_split(test, inference))
            results[name]["dice"], results[name]["iou"] = scores["test/dice"], scores["test/iou"]

    steps, operators = step_seconds(params, precision, args.steps, args.profile)

    with FlopCounterMode(display=False) as counter:
        ours(torch.rand(1, 1, size, size))
    flops = counter.get_total_flops()
    peaks = cpu_peaks(args.threads)
    training_peak_gflops, training_unit = training_peak(peaks, precision)
    achieved = flops * results["lungseg"]["infer_ips"] / 1e9
    training_achieved = 3 * flops * results["lungseg"]["train_ips"] / 1e9

    print(f"\n{'':10s} {'train img/s':>12s} {'train s':>8s} {'infer img/s':>12s} {'test Dice':>10s} {'test IoU':>9s}")
    for name, r in results.items():
        print(f"{name:10s} {r['train_ips']:12.1f} {r['train_seconds']:8.0f} {r['infer_ips']:12.1f} {r['dice']:10.4f} "
              f"{r['iou']:9.4f}")
    ours_r, peer_r = results["lungseg"], results["smp.Unet"]
    print(f"\nlungseg / peer: training {ours_r['train_ips'] / peer_r['train_ips']:.2f}x, "
          f"CPU inference {ours_r['infer_ips'] / peer_r['infer_ips']:.2f}x, "
          f"Dice {ours_r['dice'] - peer_r['dice']:+.4f}")
    print(f"training steps alone (one random batch, taking turns, median of {args.steps}): lungseg "
          f"{steps['lungseg']:.3f} s/step, smp.Unet {steps['smp.Unet']:.3f} s/step, "
          f"{steps['smp.Unet'] / steps['lungseg']:.2f}x")
    for name, kinds in operators.items():
        print(f"{name} operator time per step: " + ", ".join(f"{kind} {1000 * t:.0f} ms" for kind, t in kinds.items()))
    inference_peaks = ", ".join(f"{100 * achieved / peak:.0f}% of the {unit} peak ({peak:.0f} GFLOP/s)"
                                for unit, peak in peaks.gflops.items() if unit in (AVX2.name, AVX512.name))
    print(f"lungseg inference (float32, ONNX Runtime): {flops / 1e9:.2f} GFLOP per image (FlopCounterMode), "
          f"{achieved:.1f} GFLOP/s achieved = {inference_peaks}; {args.threads} cores at {peaks.ghz:.2f} GHz")
    print(f"lungseg training ({precision}): {3 * flops / 1e9:.2f} GFLOP per image (3 x forward), "
          f"{training_achieved:.1f} GFLOP/s achieved = {100 * training_achieved / training_peak_gflops:.0f}% of the "
          f"{training_unit} peak ({training_peak_gflops:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
