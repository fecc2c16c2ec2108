"""The real pipeline, end to end, on a tiny copy of the repository: dvc repro, the robustness stage, the model
registered in MLflow and fetched back, `dvc artifacts get`, predict and serve from a runtime-only environment,
dvc exp run and queued experiments."""
import json
import os
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lungseg.runtime import files
from conftest import BIN, SOURCES, free_port, make_tiny_repo, pipeline_environment, run, wait_for_http

pytestmark = pytest.mark.e2e

OUTPUTS = [
    "data/prepared/manifest.csv", "data/prepared/problems.txt", "data/augment/pipeline.yaml", "models/checkpoint.pt",
    "models/model.onnx", "models/model.card.json", "metrics/data.json", "metrics/train.json",
    "metrics/train_history.csv", "metrics/test.json", "metrics/test_per_image.csv", "metrics/export.json",
    "metrics/figures/augment_preview.jpg", "metrics/figures/train_curves.png", "metrics/figures/test_cases.jpg",
    "metrics/figures/test_dice_histogram.png", "metrics/robustness.json", "metrics/robustness_per_image.csv",
    "metrics/robustness_plot.csv", "metrics/figures/robustness.png", "metrics/figures/robustness_examples.jpg",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = make_tiny_repo(tmp_path_factory.mktemp("lungseg"))
    env = pipeline_environment()
    run([str(BIN / "dvc"), "repro"], root, env)
    return root, env


def mlflow_runs(root):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("lungseg")
    return client, client.search_runs([experiment.experiment_id])


def repro_run(runs):
    """The run `dvc repro` logged (other tests add `dvc exp run` runs to the same store, in any order)."""
    named = [run for run in runs if run.info.run_name.startswith("repro-")]
    assert len(named) == 1, [run.info.run_name for run in runs]
    return named[0]


def test_repro_writes_every_output_and_is_then_up_to_date(repo):
    root, env = repo
    for output in OUTPUTS:
        assert (root / output).is_file(), output
    status = run([str(BIN / "dvc"), "status"], root, env).stdout
    assert "up to date" in status
    state = torch.load(root / "models" / "train_state.pt", weights_only=True)
    assert state["completed"] and "model" not in state  # a finished run leaves only a small marker


def test_metrics_and_artifacts_are_self_describing(repo):
    root, _ = repo
    data = files.read_json(root / "metrics/data.json")
    assert data["total"] == 16 and data["train"]["total"] + data["val"]["total"] + data["test"]["total"] == 16
    test = files.read_json(root / "metrics/test.json")
    assert 0 <= test["test/dice"] <= 1 and test["test/images"] == 4
    assert {"test/montgomery/dice", "test/shenzhen/dice", "test/dice_worst5pct", "test/dice_min"} <= set(test)
    checkpoint = torch.load(root / "models/checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "config"} <= set(checkpoint)
    card = files.read_json(root / "models/model.card.json")
    assert card["test_metrics"]["test/dice"] == test["test/dice"]
    export = files.read_json(root / "metrics/export.json")
    assert export["export/max_logit_diff"] < 1e-3 and export["export/mask_agreement"] > 0.9999
    metrics = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], root).stdout)
    assert "metrics/test.json" in json.dumps(metrics)


def test_every_training_run_is_in_mlflow_with_test_results_and_onnx_model(repo):
    root, _ = repo
    client, runs = mlflow_runs(root)
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.data.params["train.image_size"] == "64"
    assert {"val/dice", "train/loss", "test/dice", "export/max_logit_diff"} <= set(run_.data.metrics)
    assert len(client.get_metric_history(run_.info.run_id, "val/dice")) == 1
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"params.yaml", "checkpoint.pt", "test.json", "model.card.json"} <= artifacts
    assert "mlflow.source.git.commit" in run_.data.tags


def test_predict_with_the_exported_model(repo, tmp_path):
    root, env = repo
    images = sorted((SOURCES / "shenzhen" / "images").iterdir())[-3:]
    run([str(BIN / "lungseg"), "predict", *map(str, images), "--output", str(tmp_path)], root, env)
    for image in images:
        mask = np.asarray(Image.open(tmp_path / f"{image.stem}.png"))
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}


def test_experiments_get_their_own_metrics_and_mlflow_runs(repo):
    root, env = repo
    client, runs = mlflow_runs(root)
    trained, test_dice = repro_run(runs).info.run_id, repro_run(runs).data.metrics["test/dice"]
    # Only what comes after training changes: DVC reuses the model, and MLflow gets a run nested under its training
    # run, which keeps the results of its own params.
    run([str(BIN / "dvc"), "exp", "run", "-n", "one-pass", "-S", "evaluate.lung_crop_margin=null"], root, env)
    _, runs = mlflow_runs(root)
    (one_pass,) = [r for r in runs if r.info.run_name == "one-pass"]
    assert one_pass.data.tags["mlflow.parentRunId"] == trained
    assert one_pass.data.params["evaluate.lung_crop_margin"] == "null"
    assert {"test/dice", "export/max_logit_diff", "robustness/clean/dice"} <= set(one_pass.data.metrics)
    assert client.get_run(trained).data.metrics["test/dice"] == test_dice
    assert one_pass.info.run_id in {v.run_id for v in client.search_model_versions("name = 'lungseg'")}

    run([str(BIN / "dvc"), "exp", "run", "-n", "faster-lr", "-S", "train.learning_rate=0.003"], root, env)
    run([str(BIN / "dvc"), "exp", "run", "--queue", "-n", "queued-bs", "-S", "train.batch_size=2"], root, env)
    run([str(BIN / "dvc"), "exp", "run", "--run-all"], root, env)
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], root, env).stdout)
    text = json.dumps(shown)
    assert "faster-lr" in text and "queued-bs" in text
    _, runs = mlflow_runs(root)
    by_name = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    assert {"faster-lr", "queued-bs"} <= set(by_name)
    assert by_name["faster-lr"].data.params["train.learning_rate"] == "0.003"
    assert by_name["queued-bs"].data.params["train.batch_size"] == "2"
    assert "test/dice" in by_name["queued-bs"].data.metrics
    # The queued run happened in a throw-away copy, yet logged to this repository's store only.
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))


def test_robustness_is_scored_for_every_perturbation_and_logged(repo):
    root, _ = repo
    metrics = files.read_json(root / "metrics/robustness.json")
    from lungseg.perturbations import PERTURBATIONS

    for perturbation in PERTURBATIONS:
        assert 0 <= metrics[f"robustness/{perturbation.name}/dice"] <= 1
    assert {"robustness/clean/dice", "robustness/qa_precision", "robustness/qa_recall",
            "robustness/empty_total"} <= set(metrics)
    client, runs = mlflow_runs(root)
    assert "robustness/largest_dice_drop" in repro_run(runs).data.metrics


def test_the_run_is_named_marked_and_carries_its_dataset(repo):
    root, _ = repo
    client, runs = mlflow_runs(root)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert repro_run(runs).info.run_name == f"repro-{commit[:8]}"
    assert client.get_experiment_by_name("lungseg").tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = repro_run(runs).inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "lungseg-split"


def test_the_exported_model_is_registered_promoted_and_fetched_by_uri(repo, tmp_path):
    root, env = repo
    client, runs = mlflow_runs(root)
    version = client.get_model_version("lungseg", "1")
    assert version.run_id == repro_run(runs).info.run_id
    assert float(version.tags["test/dice"]) == pytest.approx(files.read_json(root / "metrics/test.json")["test/dice"])
    assert len(version.tags["git_commit"]) == 40
    run([str(BIN / "lungseg"), "promote", "1", "champion"], root, env)
    image = sorted((SOURCES / "shenzhen" / "images").iterdir())[0]
    env = {**env, "LUNGSEG_CACHE": str(tmp_path / "cache")}
    for uri in ("models:/lungseg@champion", "models:/lungseg/1", f"runs:/{repro_run(runs).info.run_id}/model"):
        out = tmp_path / uri.replace(":", "_").replace("/", "_").replace("@", "_")
        run([str(BIN / "lungseg"), "predict", str(image), "--model", uri, "--output", str(out), "--quiet"], root, env)
        assert (out / f"{image.stem}.png").is_file(), uri


def test_dvc_artifacts_get_fetches_the_model(repo, tmp_path):
    root, env = repo
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny model"], root)
    run(["git", "tag", "-a", "lungseg@v0.1.0", "-m", "Registering lungseg version 0.1.0"], root)
    run([str(BIN / "dvc"), "artifacts", "get", str(root), "lungseg", "-o", str(tmp_path / "model.onnx")], tmp_path, env)
    assert (tmp_path / "model.onnx").read_bytes() == (root / "models" / "model.onnx").read_bytes()


def test_predict_and_serve_run_in_an_environment_with_only_the_runtime(repo, slim_runtime, tmp_path, real_xray):
    root, _ = repo
    model = root / "models" / "model.onnx"
    python = slim_runtime / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    image = sorted((SOURCES / "montgomery" / "images").iterdir())[0]
    result = subprocess.run([str(slim_runtime / "bin" / "lungseg"), "predict", str(image), "--model", str(model),
                             "--output", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / f"{image.stem}.png").is_file()
    port = free_port()
    server = subprocess.Popen([str(slim_runtime / "bin" / "lungseg"), "serve", "--model", str(model), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/segment?format=json", data=image.read_bytes(),
                                         method="POST")
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert (answer["width"], answer["height"]) == (512, 512) and answer["regions"] >= 0
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_the_readme_commands_work_without_an_activated_environment(repo, tmp_path):
    """`.venv/bin/dvc exp run -S ...` as the README writes it: the stage commands find the project's Python."""
    root, env = repo
    (root / ".venv").symlink_to(BIN.parent)
    bare = {**env, "PATH": "/usr/bin:/bin"}
    bare.pop("VIRTUAL_ENV", None)
    try:
        run([str(root / ".venv" / "bin" / "dvc"), "exp", "run", "-n", "no-activation", "-S", "train.epochs=1"],
            root, bare)
    finally:
        (root / ".venv").unlink()
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], root, env).stdout)
    assert "no-activation" in json.dumps(shown)
