"""The MLflow seam: where runs go, and what a training run records. Every MLflow call of the pipeline is here.

Default store: SQLite at <repo>/mlflow.db with artifacts in <repo>/mlartifacts (both git-ignored).
`MLFLOW_TRACKING_URI` points it at a team server instead. DVC sets DVC_ROOT to the parent repository even
for `dvc exp run --queue` / `--temp` runs made in a throw-away copy, so those runs land in the same store.

One run per training: named after the DVC experiment (or `repro-<commit>` for a plain `dvc repro`), with the
params, the prepared split as a dataset input, per-epoch curves, then the test metrics, robustness scores and
the ONNX model (card inside) added by the later stages, which also register it as a version of the model
`lungseg`. The later stages add to the training run only when they run with the params it was trained with; an
experiment that changes only what comes after training (`dvc exp run -S evaluate.lung_crop_margin=null`, which
reuses the trained model) gets a run nested under the training run, and a model whose training run is not in this
store (trained in another clone, pulled from a DVC remote) a run of its own: see model_run_id.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from lungseg.errors import UserError
from lungseg.runtime.registry import REGISTERED_MODEL

DEFAULT_EXPERIMENT = "lungseg"
# Marks the experiment as model training rather than GenAI, where MLflow's UI reads it (see run_ui).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MAX_DIGEST = 36  # MLflow's limit on a dataset digest
# On a run that holds the later stages' results for a model's training run: its id, and the params' digest.
TRAINED_IN_RUN_TAG = "lungseg.trained_in_run"
PARAMS_DIGEST_TAG = "lungseg.params_sha256"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's UI nests a run under the run this tag names
MAX_PARAMS_PER_REQUEST = 100
RUN_ID = re.compile(r"[0-9A-Za-z_-]+")  # a run id as MLflow's stores write them; nothing else goes into a filter

log = logging.getLogger(__name__)


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
    """Fail fast, before any training, when an HTTP tracking server does not answer, or answers but is not an
    MLflow server (a wrong port, a proxy's error page)."""
    url = urlparse(tracking_uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    advice = ("start it, or unset MLFLOW_TRACKING_URI to use the repository's local store. Nothing was logged "
              "or trained.")
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise TrackingUnavailableError(f"MLflow tracking server {tracking_uri} is unreachable ({err}); {advice}") from None
    try:
        with _quick_requests():
            MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as err:  # HTML error pages, non-MLflow JSON, TLS problems: all mean "not usable"
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise TrackingUnavailableError(f"{tracking_uri} answers but is not a usable MLflow tracking server "
                                       f"({first_line}); {advice}") from None


@contextlib.contextmanager
def _quick_requests():
    """One try with a short timeout for the up-front check (MLflow's client would retry a 5xx for minutes)."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
        if experiment.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return experiment.experiment_id
    is_server = urlparse(tracking_uri).scheme in ("http", "https")
    return client.create_experiment(name, artifact_location=None if is_server else artifact_root.resolve().as_uri(),
                                    tags=EXPERIMENT_KIND)


def _experiment_id(tracking_uri: str, environ: Mapping[str, str], cwd: Path) -> str:
    return ensure_experiment(tracking_uri, experiment_name(environ), workspace_root(environ, cwd) / "mlartifacts")


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


def run_name(environ: Mapping[str, str], cwd: Path) -> str:
    """The DVC experiment's name; for a plain `dvc repro`, repro-<short commit>."""
    return environ.get("DVC_EXP_NAME") or f"repro-{git_commit(cwd)[:8]}"


def run_tags(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    commit = git_commit(cwd)
    tags = {"mlflow.source.git.commit": commit, "git_commit": commit}
    if environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = environ["DVC_EXP_NAME"]
    return tags


def param_strings(flat_params: dict[str, object]) -> dict[str, str]:
    """Params as MLflow stores them: strings, None as 'null'."""
    return {key: "null" if value is None else str(value) for key, value in flat_params.items()}


def params_digest(flat_params: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(param_strings(flat_params), sort_keys=True).encode()).hexdigest()


def log_params(flat_params: dict[str, object], client: MlflowClient | None = None, run_id: str | None = None) -> None:
    """To the active run, or with client and run_id to that run. MLflow caps a request at 100 params; batching
    keeps any params.yaml size working."""
    items = list(param_strings(flat_params).items())
    for start in range(0, len(items), MAX_PARAMS_PER_REQUEST):
        batch = dict(items[start : start + MAX_PARAMS_PER_REQUEST])
        if client is None:
            mlflow.log_params(batch)
        else:
            client.log_batch(run_id, params=[Param(key, value) for key, value in batch.items()])


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifacts(paths: list[str | Path]) -> None:
    for path in paths:
        mlflow.log_artifact(str(path))


def log_split(manifest: pd.DataFrame, manifest_path: str | Path, counts: dict) -> None:
    """The prepared split as the run's dataset input: its manifest digest, and counts per split and source."""
    digest = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local source class twice and warns about it; and it hints that integer
        # columns cannot hold missing values, which a manifest never has.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(manifest, source=str(manifest_path), name="lungseg-split",
                                          digest=digest[:MAX_DIGEST])
    mlflow.log_input(dataset, context="training", tags={"manifest_sha256": digest})
    mlflow.log_dict(counts, "split_counts.json")


@contextlib.contextmanager
def training_run(tracking_uri: str, environ: Mapping[str, str], cwd: Path, resume_run_id: str | None,
                 flat_params: dict[str, object], params_path: str | Path, tags: dict[str, object]) -> Iterator[str]:
    """The training's MLflow run (new, or the interrupted one when resuming), yielding its id. A new run gets
    the params, params.yaml and `tags`."""
    with open_run(tracking_uri, _experiment_id(tracking_uri, environ, cwd), run_name=run_name(environ, cwd),
                  tags=run_tags(environ, cwd), run_id=resume_run_id) as run:
        if resume_run_id is None:
            log_params(flat_params)
            mlflow.log_artifact(str(params_path))
            mlflow.set_tags({key: str(value) for key, value in tags.items()})
        yield run.info.run_id


def log_onnx_model(onnx_path: str | Path, example_input, example_output, version_tags: dict[str, object]) -> str:
    """Log the exported ONNX model (card inside) to the active run and register it as a new version of the
    registered model `lungseg`, tagged with `version_tags`; returns the version."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model",
                                 signature=infer_signature(example_input, example_output),
                                 registered_model_name=REGISTERED_MODEL, save_as_external_data=False)
    version = str(info.registered_model_version)
    client = MlflowClient(mlflow.get_tracking_uri())
    for key, value in version_tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, str(value))
    return version


def ui_url(host: str, port: int, tracking_uri: str, environ: Mapping[str, str]) -> str:
    """The UI's address on this experiment's runs table. MLflow 3.17's UI chooses between its GenAI and
    machine-learning views from the URL (workflowType), not from the experiment's kind tag."""
    experiment = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name(environ))
    page = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def run_ui(host: str, port: int) -> int:
    """`lungseg ui`: the MLflow UI on this repository's store (or MLFLOW_TRACKING_URI), loopback by default."""
    uri = resolve_tracking_uri(os.environ, Path.cwd())
    print(f"MLflow UI for {uri}: open {ui_url(host, port, uri, os.environ)}")
    sys.stdout.flush()
    # exec, not a child process: a signal to `lungseg ui` reaches MLflow's server, which stops its workers
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
                              "--port", str(port)])


def model_run_id(tracking_uri: str, training_run_id: str | None, flat_params: dict[str, object],
                 environ: Mapping[str, str], cwd: Path) -> str:
    """The run a later stage (evaluate, export, robustness) adds to, given the params it runs with.

    The training run that made the model, when this store holds it and the params are the ones it logged.
    Otherwise a run that stands in for it, one per training run and params (found by its tags, so evaluate, export
    and robustness, and any later experiment with the same params, settle on one run), with the params logged:
    - params other than the training run's (an experiment that changes only evaluate, export or robustness
      params, for which DVC reuses the trained model): named after the experiment and nested under the training
      run, whose results stay those of its own params;
    - a model trained against another store (pulled from a DVC remote, copied from another clone) or whose run
      was deleted: trained-elsewhere-<id>.
    A training run resumed after an interruption keeps the params it logged first, so later-stage params changed
    meanwhile count as other params. A checkpoint without a training run id (not written by the train stage) gets a
    new run each time."""
    client = MlflowClient(tracking_uri)
    training = _live_run(client, training_run_id)
    if training is not None and training.data.params == _as_logged(flat_params):
        return training.info.run_id
    experiment_id = _experiment_id(tracking_uri, environ, cwd)
    trained_in, digest = training_run_id or "unknown", params_digest(flat_params)
    if training_run_id is not None and RUN_ID.fullmatch(training_run_id):
        # oldest first: should two stages have raced to create one, every later stage settles on the same run
        earlier = client.search_runs(
            [experiment_id], f"tags.`{TRAINED_IN_RUN_TAG}` = '{training_run_id}' AND tags.`{PARAMS_DIGEST_TAG}` = "
            f"'{digest}'", max_results=1, order_by=["attributes.start_time ASC"])
        if earlier:
            log.info("MLflow: logging to run %s, which stands in for the model's training run %s with these params",
                     earlier[0].info.run_id, trained_in)
            return earlier[0].info.run_id
    tags = {TRAINED_IN_RUN_TAG: trained_in, PARAMS_DIGEST_TAG: digest}
    if training is not None:
        name, tags[PARENT_RUN_TAG] = run_name(environ, cwd), training.info.run_id
        tags.update(run_tags(environ, cwd))
    else:
        name = f"trained-elsewhere-{trained_in[:8]}"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    log_params(flat_params, client, run.info.run_id)
    client.set_terminated(run.info.run_id)
    if training is not None:
        log.info("MLflow: params differ from those of the model's training run %s (%s); the later stages log to "
                 "run %s (%s), nested under it", trained_in, ", ".join(_changed(training.data.params, flat_params)),
                 run.info.run_id, name)
    else:
        log.warning("The model's training run %s is not in the MLflow store %s (a model trained in another clone or "
                    "pulled from a DVC remote); the later stages log to run %s, tagged %s=%s.", trained_in,
                    tracking_uri, run.info.run_id, TRAINED_IN_RUN_TAG, trained_in)
    return run.info.run_id


def _live_run(client: MlflowClient, run_id: str | None):
    """The run, unless there is none by that id or it was deleted (MLflow refuses to reopen a deleted run)."""
    if run_id is None:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return run if run.info.lifecycle_stage != "deleted" else None


def _as_logged(flat_params: dict[str, object]) -> dict[str, str]:
    """The params as a run logged them: MLflow cuts a value longer than it stores."""
    return {key: value[:MAX_PARAM_VAL_LENGTH] for key, value in param_strings(flat_params).items()}


def _changed(logged: dict[str, str], flat_params: dict[str, object]) -> list[str]:
    now = _as_logged(flat_params)
    return [f"{key}: {logged.get(key, '(none)')} -> {now.get(key, '(none)')}"
            for key in sorted(set(logged) | set(now)) if logged.get(key) != now.get(key)]


def add_to_run(training_run_id: str | None, flat_params: dict[str, object], metrics: dict[str, float],
               artifacts: list[str | Path], environ: Mapping[str, str], cwd: Path) -> None:
    """Add a later stage's metrics and files, made with `flat_params`, to the run of the model's training run and
    those params (see model_run_id)."""
    tracking_uri = resolve_tracking_uri(environ, cwd)
    with open_run(tracking_uri, run_id=model_run_id(tracking_uri, training_run_id, flat_params, environ, cwd)):
        log_metrics(metrics)
        log_artifacts(artifacts)


def add_exported_model(training_run_id: str | None, flat_params: dict[str, object], parity: dict[str, float],
                       onnx_path: str | Path, card: dict, environ: Mapping[str, str], cwd: Path) -> str:
    """Log the exported model to the run of its training run and `flat_params` (see model_run_id) and register
    it; the new version is tagged with the git commit, the DVC experiment and the test metrics. Returns the
    version."""
    import numpy as np

    from lungseg.runtime.model_file import load_model

    model = load_model(onnx_path, device="cpu")
    example = np.zeros((1, *card["input"]["shape"][1:]), dtype=np.float32)
    tracking_uri = resolve_tracking_uri(environ, cwd)
    with open_run(tracking_uri, run_id=model_run_id(tracking_uri, training_run_id, flat_params, environ, cwd)):
        log_metrics(parity)
        mlflow.log_dict(card, "model.card.json")
        tags = {"git_commit": card["code_version"]["git_commit"], "dvc_exp_name": environ.get("DVC_EXP_NAME", ""),
                "weights_sha256": card["code_version"]["weights_sha256"],
                **{key: f"{value:.6f}" for key, value in card["test_metrics"].items()
                   if key in ("test/dice", "test/iou", "test/dice_worst5pct")}}
        return log_onnx_model(onnx_path, example, model.run(example)[:, None], tags)
