"""Wheels of what the library needs that a GPU host lacks, for Python 3.12 on manylinux x86-64, into one
git-ignored folder that travels with the repository (run where PyPI is reachable; `make gpu-wheels`).

The host has torch, torchvision, numpy, pandas, scipy, OpenCV, Pillow, onnx, onnxscript, onnxruntime, PyYAML,
tqdm and pytest; it lacks albumentations (with albucore, stringzilla, simsimd) and pydantic. The versions are
the ones installed here, so the check runs the code with what the test suite ran it with. Prints the folder's
size and the repository's tracked size: together they must stay under 60 MB (the host takes 64 MiB).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("albumentations", "albucore", "stringzilla", "simsimd", "pydantic", "pydantic_core", "annotated_types",
            "typing_inspection")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
LIMIT = 60_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "gpu-wheels")
    args = parser.parse_args()
    pins = [f"{name.replace('_', '-')}=={version(name.replace('_', '-'))}" for name in PACKAGES]
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                        *[f"--platform={p}" for p in PLATFORMS], "-d", folder, *pins], check=True)
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        for wheel in Path(folder).glob("*.whl"):
            shutil.copy(wheel, args.out / wheel.name)
    wheels = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = sum((REPO / name).stat().st_size for name in listed.decode().split("\0") if name and (REPO / name).is_file())
    print(f"{len(pins)} wheels, {wheels / 1e6:.1f} MB in {args.out}; tracked files {tracked / 1e6:.1f} MB; "
          f"together {(wheels + tracked) / 1e6:.1f} MB (limit {LIMIT / 1e6:.0f} MB)")
    return 0 if wheels + tracked <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
