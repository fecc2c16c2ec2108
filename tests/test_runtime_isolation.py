"""The deployable runtime stands alone: importing it, predicting and serving load nothing of the training stack,
and a virtual environment with only `lungseg[cpu,serve]` runs predict and serve (tested end to end in
test_pipeline_e2e.py on the model the pipeline exports)."""
import json
import subprocess
import sys

from conftest import REPO

TRAINING_STACK = ("torch", "torchvision", "dvc", "mlflow", "albumentations", "matplotlib", "pandas", "onnx",
                  "onnxscript", "sklearn", "scipy")
RUNTIME_MODULES = ("cli", "runtime.decode", "runtime.dicom", "runtime.files", "runtime.imaging", "runtime.lungs",
                   "runtime.model_file", "runtime.predict", "runtime.qa", "runtime.registry", "runtime.serve")

PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from lungseg.cli import main
from lungseg.runtime.model_file import load_model
from lungseg.runtime.predict import Segmenter
from lungseg.runtime.serve import create_app
folder = Path(sys.argv[2])
Image.fromarray(np.full((80, 60), 90, np.uint8)).save(folder / "x.png")
code = main(["predict", str(folder / "x.png"), "--model", sys.argv[1], "--output", str(folder / "out"), "--quiet"])
create_app(Segmenter(load_model(sys.argv[1])))
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_predict_and_serve_load_no_training_module(tiny_onnx, tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, str(tiny_onnx), str(tmp_path)], capture_output=True,
                            text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    loaded = set(report["modules"])
    assert not {name for name in loaded if name.split(".")[0] in TRAINING_STACK}
    lungseg_modules = {name[len("lungseg."):] for name in loaded if name.startswith("lungseg.")}
    assert lungseg_modules <= set(RUNTIME_MODULES) | {"errors", "runtime", "runtime.limits"}, lungseg_modules


def test_runtime_sources_import_nothing_from_the_training_side():
    import ast

    training = {path.stem for path in (REPO / "src" / "lungseg").glob("*.py")} - {"__init__", "errors", "cli"}
    for path in (REPO / "src" / "lungseg" / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lungseg"):
                named = node.module.split(".")[1:2] or [alias.name for alias in node.names]
                assert not set(named) & training, f"{path.name} imports {node.module}"
