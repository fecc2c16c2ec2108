"""Training speed of the default model on this CPU: seconds per step (forward, loss, backward, Adam) and
images per second at several input sizes and memory formats, in the precision the train stage uses here (or the
one --precision names), with the achieved GFLOP/s against the CPU's peak; --profile adds where a step's time
goes, by operator, and --compile the same steps through torch.compile (inductor; needs a C++ compiler), with its
compile time.

    .venv/bin/python benchmarks/training_speed.py --sizes 128 160 224 --profile
    # an AVX2-only CPU emulated on a larger one: oneDNN's convolutions, torch's own kernels and MKL's matrix
    # product each have their own switch
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        .venv/bin/python benchmarks/training_speed.py
    .venv/bin/python benchmarks/training_speed.py --precision float32   # where the train stage uses bfloat16

The peak is that of the unit the training precision runs its convolutions on (benchmarks/cpu_peaks.py): for
bfloat16, AMX tiles or else AVX-512's bfloat16 dot products; for float32, the widest FMA unit; each only where
ONEDNN_MAX_CPU_ISA leaves it to oneDNN (under an AVX2 limit the train stage keeps float32 on any CPU). FLOPs per
image: 3 x the forward's (torch FlopCounterMode), the usual training estimate.
"""
import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch._inductor.utils import fresh_cache
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lungseg import engine
from lungseg.config import load_params
from lungseg.losses import build_loss
from lungseg.model import build_model
from cpu_peaks import cpu_peaks, training_peak
from training_precision import seconds_per_step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
KINDS = {  # profiler operator names, grouped
    "convolution": ("convolution", "conv2d", "mkldnn_convolution", "convolution_backward"),
    "batch norm": ("batch_norm",),
    "ReLU": ("clamp_min", "threshold_backward", "relu"),
    "transposed conv": ("conv_transpose",),
    "optimizer": ("_foreach", "adam", "addcdiv", "lerp"),
}


def operator_seconds(prof, steps: int) -> dict[str, float]:
    """Seconds per step of a profiled run's aten operators by kind (KINDS, else 'other'), largest first."""
    totals = {kind: 0.0 for kind in KINDS} | {"other": 0.0}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            kind = next((k for k, names in KINDS.items() if any(n in event.key for n in names)), "other")
            totals[kind] += event.self_cpu_time_total / 1e6 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def matmul_gflops(precision: str, size: int = 2048, repeats: int = 5) -> float:
    """A matrix product's rate in `precision`: how close to the peak this CPU gets on the friendliest kernel."""
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    a, b = torch.rand(size, size, dtype=dtype), torch.rand(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="images per step (default: train.batch_size)")
    parser.add_argument("--profile", action="store_true", help="operator breakdown at the first size and batch")
    parser.add_argument("--compile", action="store_true", help="also time each variant through torch.compile")
    parser.add_argument("--precision", choices=["float32", "bfloat16"],
                        help="default: the train stage's on this CPU (bfloat16 where native, else float32)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    params = load_params(REPO / "params.yaml")
    config = params.train
    batches = args.batch_sizes or [config.batch_size]
    precision = args.precision or engine.training_precision(CPU, config.mixed_precision)
    threads = torch.get_num_threads()
    peaks = cpu_peaks(threads)
    try:
        peak, unit = training_peak(peaks, precision)
        peak_text = f"peak {peak:.0f} GFLOP/s ({unit} at {peaks.ghz:.2f} GHz)"
    except ValueError as error:  # e.g. --precision bfloat16 where it is emulated: times without a share of peak
        peak, peak_text = None, str(error)

    def of_peak(gflops: float) -> str:
        return "" if peak is None else f" = {100 * gflops / peak:.0f}% of peak"

    print(f"{params.model.encoder} U-Net, decoder {list(params.model.decoder_channels)}, {precision}, "
          f"{threads} threads; {peak_text}")
    loss_fn = build_loss(config)
    if args.compile:  # compiled code of this run only, never a shared cache filled under other CPU settings
        inductor_cache = tempfile.TemporaryDirectory(prefix="lungseg-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache.name
        torch._dynamo.config.recompile_limit = 64  # every compiled variant is a recompilation of UNet.forward
    reference = matmul_gflops(precision)
    print(f"2048^3 {precision} matrix product: {reference:.0f} GFLOP/s{of_peak(reference)}")
    for size in args.sizes:
        with FlopCounterMode(display=False) as counter:
            build_model(params.model, 1)(torch.rand(1, 1, size, size))
        flops_per_image = 3 * counter.get_total_flops()
        for batch in batches:
            variants = {}  # name -> (model, optimizer, images, masks): timed step by step in turns
            compiled = (False, True) if args.compile else (False,)
            for channels_last, compile_model in itertools.product((True, False), compiled):
                torch.manual_seed(params.seed)
                model = build_model(params.model, in_channels=1)
                images = torch.rand(batch, 1, size, size)
                if channels_last:
                    model, images = model.to(memory_format=torch.channels_last), images.contiguous(
                        memory_format=torch.channels_last)
                masks = (torch.rand(batch, 1, size, size) > 0.5).float()
                optimizer = engine.build_optimizer(model, config)
                name = "channels_last" if channels_last else "contiguous   "
                start = time.perf_counter()
                if compile_model:
                    # Cold, as on a new machine: nothing of an earlier variant's compilation in memory or on disk
                    # (fresh_cache: an empty cache folder, removed afterwards); static shapes, as training uses.
                    model = torch.compile(model, dynamic=False)
                    with fresh_cache():
                        seconds_per_step(model, optimizer, loss_fn, images, masks, precision, 1)
                    name += f", torch.compile (first 3 steps {time.perf_counter() - start:.0f} s)"
                else:
                    seconds_per_step(model, optimizer, loss_fn, images, masks, precision, 1)  # warm-up
                variants[name] = (model, optimizer, images, masks)
            # Variants take turns step by step, so a change in the machine's speed hits all of them alike.
            times = {name: [] for name in variants}
            torch._dynamo.config.error_on_recompile = True  # no compilation inside a timed step
            for _ in range(args.steps):
                for name, (model, optimizer, images, masks) in variants.items():
                    times[name].append(seconds_per_step(model, optimizer, loss_fn, images, masks, precision, 1,
                                                        warmup=0))
            torch._dynamo.config.error_on_recompile = False
            for name, measured in times.items():
                seconds = statistics.median(measured)
                gflops = flops_per_image * batch / seconds / 1e9
                print(f"{size} px, batch {batch}, {name}: {seconds:.3f} s/step, {batch / seconds:5.1f} images/s, "
                      f"{flops_per_image / 1e9:.2f} GFLOP/image, {gflops:.0f} GFLOP/s{of_peak(gflops)}")
    if args.profile:
        size, batch = args.sizes[0], batches[0]
        model = build_model(params.model, in_channels=1).to(memory_format=torch.channels_last)
        images = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        masks = (torch.rand(batch, 1, size, size) > 0.5).float()
        optimizer = engine.build_optimizer(model, config)
        seconds_per_step(model, optimizer, loss_fn, images, masks, precision, 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds_per_step(model, optimizer, loss_fn, images, masks, precision, 3)
        kinds = operator_seconds(prof, 3)
        overall = sum(kinds.values())
        print(f"where a step's operator time goes at {size} px: " + ", ".join(
            f"{kind} {100 * t / overall:.0f}%" for kind, t in kinds.items()))


if __name__ == "__main__":
    main()
