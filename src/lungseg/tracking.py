"""The MLflow seam: where runs go, and what a training run records.

Default store: SQLite at <repo>/mlflow.db with artifacts in <repo>/mlartifacts (both git-ignored).
`MLFLOW_TRACKING_URI` points it at a team server instead. DVC sets DVC_ROOT to the parent repository even
for `dvc exp run --queue` / `--temp` runs made in a throw-away copy, so those runs land in the same store.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from lungseg.errors import UserError

DEFAULT_EXPERIMENT = "lungseg"


class TrackingUnavailableError(UserError, RuntimeError):
    """The MLflow tracking server cannot be reached."""


def workspace_root(environ: Mapping[str, str], cwd: Path) -> Path:
    """The repository whose store runs belong to: DVC_ROOT under DVC, else the working directory."""
    return Path(environ.get("DVC_ROOT") or cwd).resolve()


def resolve_tracking_uri(environ: Mapping[str, str], cwd: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the repository's embedded SQLite store."""
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{workspace_root(environ, cwd) / 'mlflow.db'}"


def experiment_name(environ: Mapping[str, str]) -> str:
    return environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer on its port."""
    url = urlparse(tracking_uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} is unreachable ({err}); start it, or unset "
            f"MLFLOW_TRACKING_URI to use the repository's local store. Nothing was logged or trained."
        ) from None


def git_commit(cwd: Path) -> str:
    """The checked-out commit, or 'unknown' outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> str:
    """Create the experiment on first use; returns its id. A local store keeps artifacts in artifact_root; a
    tracking server keeps them in its own artifact store, so every client can read every run's artifacts."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    is_server = urlparse(tracking_uri).scheme in ("http", "https")
    return client.create_experiment(name, artifact_location=None if is_server else artifact_root.resolve().as_uri())


@contextlib.contextmanager
def open_run(
    tracking_uri: str, experiment_id: str | None = None, run_name: str | None = None,
    tags: dict[str, str] | None = None, run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A new run, or with run_id the existing one (a resumed training run, or evaluate/export adding to the
    run that made the model). Marked FAILED if the body raises."""
    mlflow.set_tracking_uri(tracking_uri)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
    else:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run


def run_tags(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    commit = git_commit(cwd)
    tags = {"mlflow.source.git.commit": commit, "git_commit": commit}
    if environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = environ["DVC_EXP_NAME"]
    return tags


def log_params(flat_params: dict[str, object]) -> None:
    # MLflow caps a request at 100 params; batching keeps any params.yaml size working.
    items = [(k, "null" if v is None else str(v)) for k, v in flat_params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
