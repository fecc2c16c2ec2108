"""Models named by MLflow URIs: fetched once into a local cache, then loaded like any .onnx file.

`models:/lungseg@champion` (an alias), `models:/lungseg/3` (a version) and `runs:/<run id>/model` are
resolved with the MLflow client against MLFLOW_TRACKING_URI (or the repository's SQLite store), which needs
`pip install lungseg[mlflow]`; a plain path never imports MLflow. An alias is resolved to its version first,
so the cache never serves a version the alias no longer points at.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from lungseg.runtime.model_file import ModelError

URI_SCHEMES = ("models:/", "runs:/")
REGISTERED_MODEL = "lungseg"


def is_model_uri(reference: str) -> bool:
    return str(reference).startswith(URI_SCHEMES)


def cache_dir() -> Path:
    return Path(os.environ.get("LUNGSEG_CACHE") or Path.home() / ".cache" / "lungseg") / "models"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the SQLite store of the repository in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _mlflow_client():
    uri = tracking_uri()
    store_file = uri.removeprefix("sqlite:///")
    local_store = store_file != uri and not os.environ.get("MLFLOW_REGISTRY_URI")
    if local_store and not Path(store_file).is_file():
        # MLflow would create an empty store here and then find no model in it
        raise ModelError(f"no MLflow store to fetch the model from: {store_file} does not exist; run in the "
                         f"repository that trained it, or set MLFLOW_TRACKING_URI")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ModelError("fetching a model from MLflow needs the MLflow client: pip install 'lungseg[mlflow]'") from None
    return MlflowClient(uri)


def _pinned(uri: str, client) -> str:
    """models:/name@alias -> models:/name/<version>; other URIs unchanged."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        try:
            version = client.get_model_version_by_alias(name, alias).version
        except Exception as err:
            raise ModelError(f"{uri}: no such alias in {tracking_uri()} ({str(err).splitlines()[0][:200]})") from None
        return f"models:/{name}/{version}"
    return uri


def local_model_path(reference: str | Path) -> Path:
    """A path as it is; an MLflow URI -> the cached .onnx file, downloaded on first use."""
    if not is_model_uri(str(reference)):
        return Path(reference)
    client = _mlflow_client()
    pinned = _pinned(str(reference), client)
    target = cache_dir() / hashlib.sha256(f"{tracking_uri()}|{pinned}".encode()).hexdigest()[:16]
    found = sorted(target.glob("**/*.onnx")) if target.is_dir() else []
    if found:
        return found[0]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.artifacts import download_artifacts

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        download_artifacts(artifact_uri=pinned, dst_path=str(staging), tracking_uri=tracking_uri())
        if not sorted(staging.glob("**/*.onnx")):
            raise ModelError(f"{reference}: the MLflow model holds no .onnx file")
        os.replace(staging, target)  # whole folder at once: a cache entry is complete or absent
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{reference}: cannot download from {tracking_uri()} "
                         f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(target.glob("**/*.onnx"))[0]


def promote(version: str, alias: str, name: str = REGISTERED_MODEL) -> None:
    """Point `alias` (e.g. champion) at `version` of the registered model."""
    client = _mlflow_client()
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except Exception as err:
        raise ModelError(f"models:/{name}/{version}: cannot set alias {alias!r} in {tracking_uri()} "
                         f"({str(err).splitlines()[0][:200]})") from None
