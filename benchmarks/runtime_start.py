"""The deployable runtime on its own: disk size of an environment with only `lungseg[cpu,serve]`, the wall time of
`lungseg predict` on one X-ray from a cold start, and how long `lungseg serve` takes until it answers /health.

    .venv/bin/python benchmarks/runtime_start.py --model models/model.onnx            # builds /tmp/lungseg-slim
    .venv/bin/python benchmarks/runtime_start.py --model models/model.onnx --venv DIR # an existing environment

Cold start: a new process each time (imports, model load, one image, mask and report written); the first of
the runs also reads the files from disk, the median of the rest is what a repeated call costs.
"""
import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def build(venv: Path) -> None:
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{REPO}[cpu,serve]"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "model.onnx"))
    parser.add_argument("--venv", type=Path, default=Path("/tmp/lungseg-slim"))
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    if not (args.venv / "bin" / "lungseg").exists():
        build(args.venv)
    lungseg = str(args.venv / "bin" / "lungseg")
    pip_parts = sum(folder_mb(p) for p in args.venv.glob("lib/python*/site-packages/pip*"))
    print(f"environment {args.venv}: {folder_mb(args.venv):.0f} MB on disk ({pip_parts:.0f} MB of it pip itself)")
    image = sorted((REPO / "data" / "sources" / "shenzhen" / "images").iterdir())[0]
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([lungseg, "predict", str(image), "--model", args.model, "--output", out, "--quiet",
                            "--device", "cpu"], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    print(f"lungseg predict, one {image.suffix} X-ray, new process: first {times[0]:.2f} s, median of the next "
          f"{len(times) - 1}: {statistics.median(times[1:]):.2f} s")
    ready = []
    for port in (18731, 18732, 18733):
        start = time.perf_counter()
        server = subprocess.Popen([lungseg, "serve", "--model", args.model, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.02)
            ready.append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait()
    print(f"lungseg serve until /health answers: {', '.join(f'{s:.2f}' for s in ready)} s")
    if shutil.which("nproc"):
        print(f"on {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores")


if __name__ == "__main__":
    main()
