"""lungseg: lung segmentation on chest X-rays.

Two sides, one direction of dependency: `lungseg.runtime` is the deployable part (reading X-rays, running the
exported ONNX model, writing masks, serving them) and imports no torch, DVC, MLflow or albumentations; the
modules beside it are the training pipeline, which may use the runtime, never the reverse.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lungseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
