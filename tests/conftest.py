"""Shared fixtures: real shipped X-rays, and a tiny copy of the repository for end-to-end runs."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungseg import recipes

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "data" / "sources"
BIN = Path(sys.executable).parent

# Shrinks the real params.yaml to seconds: a handful of real pairs, small images, one epoch.
TINY_OVERRIDES = {
    "prepare": {"split": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "augment": {"preview_count": 4},
    "model": {"decoder_channels": [16, 16, 8, 8, 8]},
    "train": {"image_size": 64, "epochs": 1, "batch_size": 4, "num_threads": 1},
    "evaluate": {"batch_size": 4},
    "export": {"parity_images": 2},
}


def real_pair_names(source: str, count: int) -> list[str]:
    """The first `count` normal and `count` TB names of a shipped source, for stratified tiny splits."""
    names = sorted(p.stem for p in (SOURCES / source / "images").iterdir())
    normal = [n for n in names if n.endswith("_0")][:count]
    tb = [n for n in names if n.endswith("_1")][:count]
    return normal + tb


def shipped_image(source: str, name: str) -> Path:
    """The shipped X-ray of a pair, whatever its format (the sources ship JPEG; PNG and JPEG are both read)."""
    return next((SOURCES / source / "images").glob(f"{name}.*"))


def copy_pairs(source: str, names: list[str], target: Path) -> Path:
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        image = shipped_image(source, name)
        shutil.copy(image, target / "images" / image.name)
        shutil.copy(SOURCES / source / "masks" / f"{name}.png", target / "masks" / f"{name}.png")
    return target


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def free_port() -> int:
    """A loopback port that was free a moment ago (and has no listener now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until `url` answers, failing with the process's output if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else "process exited"
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
            time.sleep(0.2)


def pipeline_environment() -> dict[str, str]:
    """This environment without MLflow/DVC settings of the caller, with the virtual environment's tools first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"  # DVC would report each command (to a network tests must not use) via /tmp files
    return env


def make_tiny_repo(root: Path, pairs_per_label: int = 4) -> Path:
    """A git + DVC repository holding this project's pipeline, the real params shrunk, and a few real pairs."""
    for item in ("src", "stages", "dvc.yaml", "pyproject.toml", ".dvcignore"):
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy(source, root / item)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    for source in ("montgomery", "shenzhen"):
        copy_pairs(source, real_pair_names(source, pairs_per_label), root / "data" / "sources" / source)
    params = recipes.with_changes(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_OVERRIDES)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@lungseg.test"], root)
    run(["git", "config", "user.name", "lungseg tests"], root)
    run([str(BIN / "dvc"), "init", "-q"], root, pipeline_environment())  # no analytics report before the config
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny lungseg"], root)
    return root


@pytest.fixture
def real_xray() -> tuple[np.ndarray, np.ndarray]:
    from lungseg.data import read_mask
    from lungseg.runtime.decode import read_grayscale

    name = "MCUCXR_0001_0"
    return (read_grayscale(shipped_image("montgomery", name)),
            read_mask(SOURCES / "montgomery" / "masks" / f"{name}.png"))


TINY_SIZE = 64
TINY_INTENSITY = "none"


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny U-Net (deterministic weights); real training is the end-to-end test's job."""
    import torch

    from lungseg.config import ModelConfig
    from lungseg.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 8, 8, 8), batch_norm=True,
                         intensity=TINY_INTENSITY, input_mean=0.5, input_std=0.25)
    return build_model(config, in_channels=1).eval()


def tiny_inference(model):
    from lungseg.evaluation import Inference
    from lungseg.model import torch_runner

    return Inference(torch_runner(model), TINY_SIZE, TINY_INTENSITY, threshold=0.5, postprocess=True, batch_size=8)


def tiny_card(model, **changes) -> dict:
    from lungseg import export

    card = export.model_card(tiny_inference(model), 1, 0.5, 0.25,
                             {"lung_fraction_range": [0.08, 0.44], "lung_box_share_range": [0.21, 0.46],
                              "sources": [{"source": "shenzhen", "licence": "CC BY-NC-SA 4.0 (masks)"}]},
                             {"train": {"image_size": TINY_SIZE}}, {"test/dice": 0.0}, "0" * 40, "f" * 64)
    return recipes.with_changes(card, changes)


def export_tiny(model, path: Path, card: dict) -> Path:
    """`model` as ONNX with `card` inside and its readable copy beside it, as the export stage writes them."""
    from lungseg import export
    from lungseg.runtime import files
    from lungseg.runtime.model_file import card_path_for

    export.write_model(path, export.with_card(export.export_graph(model, TINY_SIZE, 1, opset=18), card))
    files.write_json(card_path_for(path), card)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_model):
    """tiny_model exported to ONNX with its model card inside; returns the .onnx path."""
    return export_tiny(tiny_model, tmp_path_factory.mktemp("model") / "model.onnx", tiny_card(tiny_model))


SLIM_EXTRAS = "cpu,serve"


@pytest.fixture(scope="session")
def slim_runtime(tmp_path_factory) -> Path:
    """A virtual environment holding only `lungseg[cpu,serve]` (the deployable runtime), built from this tree
    with pip from the package registry: no torch, DVC, MLflow or albumentations."""
    folder = tmp_path_factory.mktemp("slim") / "venv"
    venv.EnvBuilder(with_pip=True).create(folder)
    source = tmp_path_factory.mktemp("source")
    for item in ("src", "pyproject.toml", "README.md"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, source / item)
    result = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             f"{source}[{SLIM_EXTRAS}]"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder
