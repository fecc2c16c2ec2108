"""Everything a GPU user hits, checked in one run on a GPU host: the `gpu` tests, then the default params, our
ResNet-101 recipe and the paper's, trained through the train stage's own functions, each scored on the test split
at 512x512 with the evaluate stage's code, and the best one exported to ONNX with the parity check.

The GPU host needs python3 with torch, torchvision, numpy, pandas, OpenCV, Pillow, onnx, onnxscript,
onnxruntime, PyYAML, tqdm and pytest; what the library needs besides (albumentations and its dependencies,
pydantic) travels as wheels built beforehand by `make gpu-wheels`. No DVC, MLflow or network is needed.

    make gpu-wheels                                   # where PyPI is reachable: wheels into gpu-wheels/
    make gpu-check                                    # on the GPU host: results in gpu-check/
    python3 tools/gpu_check.py --dry-run --out /tmp/c # 2 epochs, 64 px, a few images, on the CPU (the test suite)

Writes into OUT: gpu_check.log (everything printed); gpu_check.json (the arguments, host and driver; per recipe,
loader workers, epochs planned and run, seconds per epoch, images per second, peak GPU memory, GPU busy share,
model FLOP utilisation against the GPU's bf16 dense peak, test Dice/IoU overall, per source and worst 5%; the gpu
tests' outcome; the export), rewritten after every step, so a check stopped by a time limit keeps what it
finished ("complete": false, "running": the step it was in); gpu_tests.xml (the tests' JUnit report);
model.onnx (the best recipe's export); with --profile, profile-<recipe>.txt (operator tables).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# None: params.yaml as committed (the default run, device auto), first because it is the cheapest.
RECIPES = {"default": None,
           "lungseg-resnet101-gpu": REPO / "recipes" / "lungseg-resnet101-gpu.args",
           "paper-resnet101": REPO / "recipes" / "paper-resnet101.args"}
# bf16 dense tensor-core peaks (FLOP/s) from NVIDIA's data sheets, by a part of the device name.
BF16_PEAKS = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100 NVL": 835.0e12, "H100": 989.4e12, "A100": 312.0e12,
              "L40S": 362.0e12, "RTX 4090": 165.2e12}
# One loader worker, as a GPU host has them (the test suite stops a check with its workers running).
DRY_RUN = {"train": {"image_size": 64, "epochs": 2, "batch_size": 4, "device": "cpu", "num_workers": 1},
           "evaluate": {"batch_size": 4}}
DRY_RUN_PAIRS = 12  # per source


class Tee:
    """Print to the terminal and to the log file at once."""

    def __init__(self, path: Path):
        self.file, self.stdout = open(path, "w"), sys.stdout

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.file.write(text)
        self.file.flush()

    def flush(self) -> None:
        self.stdout.flush()


def install_wheels(folder: Path, target: Path) -> list[str]:
    """pip-install the carried wheels into a temporary target and put it first on sys.path (no network)."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return []
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    return [w.name for w in wheels]


def run_gpu_tests(out: Path, extra_path: str) -> dict:
    """The tests marked gpu, in a subprocess, with the same import path as this check."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [extra_path, str(REPO / "src"),
                                                                     os.environ.get("PYTHONPATH", "")]))}
    start = time.perf_counter()
    # Only the files holding gpu tests: collecting the others would import what the host lacks (MLflow, pydicom).
    files = [str(path) for path in sorted((REPO / "tests").glob("test_*.py")) if "mark.gpu" in path.read_text()]
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                             f"--junitxml={out / 'gpu_tests.xml'}", *files],
                            cwd=REPO, env=env, capture_output=True, text=True)
    print(result.stdout[-3000:], result.stderr[-2000:])
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return {"exit_code": result.returncode, "summary": summary, "seconds": time.perf_counter() - start}


class GpuSampler:
    """Samples the GPU's utilisation (NVML) a few times a second while a block runs: the busy share."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVML (CPU dry run): no samples
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self):
        if self._nvml:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def prepare(raw_params: dict, work: Path, dry_run: bool):
    """The prepare and augment stages' library calls: the manifest and the augmentation pipeline in `work`."""
    from lungseg import augment, data, tables
    from lungseg.config import parse_params

    params = parse_params(raw_params)
    records, _ = data.collect_records([REPO / source for source in params.prepare.sources], skip_bad=False)
    if dry_run:
        records = records.groupby("source").head(DRY_RUN_PAIRS).reset_index(drop=True)
    records["split"] = data.assign_splits(records, params.prepare.split.model_dump(), params.seed)
    tables.write_manifest(work / "manifest.csv", records)
    augment.save_pipeline(augment.build_augmentations(params.augment), work / "pipeline.yaml")
    return work / "manifest.csv", work / "pipeline.yaml"


def profiled_epoch(fit, table_path: Path) -> dict:
    """One more one-epoch fit (training and validation) under torch.profiler, after a warm-up fit has taken
    CUDA's start and cuDNN's kernel search. Records, for a look at where the time goes: the fit's wall time, the
    epoch's own seconds and training images/s, the GPU's kernel time, the kernel launches, and the time spent
    waiting for batches (these overlap: the host queues kernels while the GPU runs earlier ones). The operator
    tables (by GPU time and by host time) go to `table_path`."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as profiler:
        _, result, wall = fit(1, "profile")
    events = profiler.key_averages()
    # Kernels only, as torch's own table totals them: an operator's row repeats its kernels' time.
    kernel_us = sum(event.self_device_time_total for event in events
                    if event.device_type == DeviceType.CUDA and not event.is_user_annotation)
    waits_ms = [event.time_range.elapsed_us() / 1e3 for event in profiler.events()
                if "DataLoader" in event.name and "__next__" in event.name]
    sections = [f"== by GPU time\n{events.table(sort_by='self_device_time_total', row_limit=25)}"] if cuda else []
    sections.append(f"== by host time\n{events.table(sort_by='self_cpu_time_total', row_limit=25)}")
    table_path.write_text("\n".join(sections))
    epoch = result.history[0]
    return {
        "fit_wall_seconds": wall,
        "epoch_seconds": epoch["seconds"],
        "train_images_per_second": epoch["train/images_per_second"],
        "gpu_kernel_seconds": kernel_us / 1e6,
        "kernel_launches": sum(event.count for event in events if "LaunchKernel" in event.key),
        "loader_calls": len(waits_ms),  # both loaders; each one's last call only ends it
        "loader_wait_seconds": sum(waits_ms) / 1e3,
        "longest_loader_wait_seconds": max(waits_ms, default=0.0) / 1e3,
        "table": table_path.name,
    }


def train_recipe(name: str, raw: dict, manifest: Path, pipeline: Path, work: Path, budget_s: float,
                 profile_to: Path | None = None) -> dict:
    """Warm up, time an epoch, fit the recipe's epochs into the budget and train them with the train stage's
    functions (tracking off), measuring speed, memory, GPU busy share and FLOP utilisation; with `profile_to`, one
    more epoch under the profiler before the run (profiled_epoch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lungseg import checkpoint, data, engine, recipes, trainer
    from lungseg.config import parse_params
    from lungseg.model import build_model

    planned = raw["train"]["epochs"]
    inputs = trainer.TrainInputs(work / "params.yaml", manifest, pipeline)

    def fit(epochs: int, tag: str):
        """Train `epochs` epochs; the params, the result and the wall time. Only the run's checkpoint is kept."""
        params = parse_params(recipes.with_changes(raw, {"train": {"epochs": epochs}}))
        destinations = checkpoint.Destinations(work / f"{name}-{tag}.pt", work / f"{name}-{tag}-state.pt", {})
        start = time.perf_counter()
        result = trainer.train(params, inputs, destinations, {}, work, track=False)
        wall = time.perf_counter() - start
        destinations.state.unlink(missing_ok=True)
        if tag != "run":
            destinations.kept.unlink(missing_ok=True)
        return params, result, wall

    # What happens once per process and input size (CUDA's start, cuDNN's kernel search) goes into a warm-up fit.
    # Then one epoch's whole wall time, checkpoint writing included (an epoch row's seconds leave it out): a
    # two-epoch fit less a one-epoch fit, at least the two-epoch fit's last epoch row.
    _, _, warm_up_wall = fit(1, "warm-up")
    _, _, one_epoch_wall = fit(1, "calibration")
    if planned > 1:
        _, two_epochs, two_epochs_wall = fit(2, "calibration")
        seconds_per_epoch = max(two_epochs_wall - one_epoch_wall, two_epochs.history[-1]["seconds"])
    else:
        seconds_per_epoch = one_epoch_wall
    epochs = max(1, min(planned, int(budget_s / seconds_per_epoch)))
    profiled = profiled_epoch(fit, profile_to) if profile_to else None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as sampler:
        params, result, wall = fit(epochs, "run")
    history = result.history
    images_per_second = sum(r["train/images_per_second"] * r["seconds"] for r in history) / sum(
        r["seconds"] for r in history)
    size = params.train.image_size
    with FlopCounterMode(display=False) as counter:
        build_model(params.model, 1)(torch.rand(1, 1, size, size))
    training_flops = 3 * counter.get_total_flops()  # forward + backward (about twice the forward)
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    peak = next((flops for key, flops in BF16_PEAKS.items() if key in device_name), None)
    achieved = training_flops * images_per_second
    workers = data.worker_count(params.train.num_workers, engine.select_device(params.train.device).type)
    return {
        "recipe": name, "device": device_name, "epochs_planned": planned, "epochs_run": epochs,
        "loader_workers": workers, "warm_up_fit_seconds": warm_up_wall,
        "calibrated_seconds_per_epoch": seconds_per_epoch, "seconds_per_epoch": wall / epochs,
        "train_wall_seconds": wall, "epoch_rows_seconds": result.summary["run/seconds"],
        "extrapolated_seconds_for_planned_epochs": wall + (planned - epochs) * seconds_per_epoch,
        "images_per_second": images_per_second,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "gpu_busy_share": sampler.busy, "training_gflop_per_image": training_flops / 1e9,
        "achieved_tflops": achieved / 1e12, "bf16_dense_peak_tflops": peak / 1e12 if peak else None,
        "model_flop_utilisation": achieved / peak if peak else None,
        "kept_val_dice": result.summary["kept/val/dice"], "kept_epoch": result.summary["kept/epoch"],
        **({"profiled_epoch": profiled} if profiled else {}), "checkpoint": str(work / f"{name}-run.pt"),
    }


def score(checkpoint_path: str, manifest: Path, raw: dict) -> dict:
    """The evaluate stage's scoring: the test split at the masks' 512x512, per source, worst 5%."""
    from lungseg import checkpoint, engine, evaluation, tables

    trained = checkpoint.load(checkpoint_path)
    config = trained.params.evaluate
    inference = evaluation.checkpoint_inference(trained, config.threshold, config.postprocess, config.batch_size,
                                                config.lung_crop_margin, engine.select_device(raw["train"]["device"]))
    metrics = evaluation.split_metrics(evaluation.score_split(
        tables.split_rows(tables.read_manifest(manifest), "test"), inference), "test")
    keep = ("dice", "iou", "dice_worst5pct", "dice_min")
    return {key: value for key, value in metrics.items() if key.rsplit("/", 1)[-1] in keep}


def export_best(checkpoint_path: str, manifest: Path, out: Path) -> dict:
    """The export stage's conversion and parity check (ONNX Runtime's CPU build against PyTorch)."""
    from lungseg import checkpoint, data, evaluation, export, tables
    from lungseg.runtime.decode import read_grayscale

    trained = checkpoint.load(checkpoint_path)
    params = trained.params
    inference = evaluation.checkpoint_inference(trained, params.evaluate.threshold, params.evaluate.postprocess, 8,
                                                params.evaluate.lung_crop_margin)
    rows = tables.read_manifest(manifest)
    card = export.model_card(inference, trained.in_channels, params.model.input_mean, params.model.input_std,
                             export.training_data(rows), params.model_dump(mode="json"), {}, "gpu-check",
                             trained.weights_sha256())
    path = out / "model.onnx"
    export.write_model(path, export.with_card(export.export_graph(
        trained.build_model(), inference.image_size, trained.in_channels, params.export.opset), card))
    parity_rows = tables.split_rows(rows, "test").head(params.export.parity_images)
    result = export.parity(path, inference, [read_grayscale(p) for p in parity_rows["image_path"]])
    export.check_parity(result, params.export.max_logit_diff, params.export.min_mask_agreement)
    return {**result, "onnx": str(path)}


def write_report(path: Path, results: dict, started: float) -> None:
    """The results so far, with the seconds since the check started; whole or not at all (a signal between
    opening and writing leaves the previous report)."""
    results["seconds"] = time.perf_counter() - started
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, path)


def gpu_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML (CPU dry run)
        return None


def _exit_on_sigterm(signum: int, frame) -> None:
    # torch's DataLoader raises from its SIGCHLD handler for each worker that a signal killed (`timeout` signals
    # the whole process group); on an H200 that broke off the removal of the working folder.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.log and gpu_check.json")
    parser.add_argument("--wheels", type=Path, default=REPO / "gpu-wheels", help="wheels from `make gpu-wheels`")
    parser.add_argument("--budget-s", type=float, default=150.0, help="training seconds per recipe (cuts epochs)")
    parser.add_argument("--dry-run", action="store_true", help="2 epochs, 64 px, a few images, on the CPU")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the tests marked gpu")
    parser.add_argument("--profile", action="store_true",
                        help="profile one extra epoch per recipe: OUT/profile-<recipe>.txt, summary in the JSON")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                        help="which to train (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(args.out / "gpu_check.log")
    # The working folder holds each recipe's kept checkpoint and the training fit's state (at most about 1.4 GB
    # with both ResNet-101 recipes: 53 million parameters, Adam's two moments). It is removed on return, on any
    # Python exception, Ctrl-C, and SIGTERM (what `timeout` and job schedulers send), which becomes SystemExit
    # here; only SIGKILL leaves it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="lungseg-gpu-check-") as work:
        try:
            return run_check(args, Path(work))
        finally:  # as in _exit_on_sigterm, when the workers' deaths arrive first
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def run_check(args: argparse.Namespace, work: Path) -> int:
    """Every step of the check, with `work` as scratch space; the results go to args.out."""
    started = time.perf_counter()
    installed = install_wheels(args.wheels, work / "site") if args.wheels.is_dir() else []
    sys.path.insert(0, str(REPO / "src"))
    import yaml

    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run,
                     "arguments": {key: str(value) for key, value in vars(args).items()},
                     "python": platform.python_version(), "cpu_count": os.cpu_count(), "driver": gpu_driver(),
                     "wheels_installed": installed, "recipes": {}}
    import torch

    results["torch"], results["cuda"] = torch.__version__, torch.cuda.is_available()
    results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"lungseg GPU check on {results['device']} (torch {torch.__version__}), dry run: {args.dry_run}")
    if not args.skip_tests and not args.dry_run:
        results["gpu_tests"] = run_gpu_tests(args.out, str(work / "site") if installed else "")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    from lungseg import recipes

    if args.dry_run:
        base = recipes.with_changes(base, {"train": {"device": "cpu"}})
    manifest, pipeline = prepare(base, work, args.dry_run)

    report, checkpoints = args.out / "gpu_check.json", {}
    results["complete"] = False
    for name in args.recipes:
        results["running"] = name
        write_report(report, results, started)
        recipe = RECIPES[name]
        raw = recipes.apply(base, recipe) if recipe else base
        if args.dry_run:
            raw = recipes.with_changes(raw, DRY_RUN)
        (work / "params.yaml").write_text(yaml.safe_dump(raw))
        print(f"\n== {name}: {recipe.relative_to(REPO) if recipe else 'params.yaml'}")
        measured = train_recipe(name, raw, manifest, pipeline, work, args.budget_s,
                                args.out / f"profile-{name}.txt" if args.profile else None)
        measured["test"] = score(measured["checkpoint"], manifest, raw)
        checkpoints[name] = measured.pop("checkpoint")  # in the working folder, which is removed on return
        results["recipes"][name] = measured
        print(json.dumps(measured, indent=2))
        write_report(report, results, started)
    results["running"] = "export"
    write_report(report, results, started)
    best = max(results["recipes"], key=lambda name: results["recipes"][name]["test"]["test/dice"])
    results["export"] = {"recipe": best, **export_best(checkpoints[best], manifest, args.out)}
    results["complete"] = True
    del results["running"]
    write_report(report, results, started)
    print(f"\nwrote {report} after {results['seconds']:.0f} s")
    tests_ok = results.get("gpu_tests", {}).get("exit_code", 0) == 0
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
