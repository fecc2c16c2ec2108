"""The real pipeline, end to end, on a tiny copy of the repository: dvc repro, predict, dvc exp run, queue."""
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lungseg.runtime import files
from conftest import BIN, SOURCES, make_tiny_repo, pipeline_environment, run

pytestmark = pytest.mark.e2e

OUTPUTS = [
    "data/prepared/manifest.csv", "data/prepared/problems.txt", "data/augment/pipeline.yaml", "models/best.pt",
    "models/model.onnx", "models/model.card.json", "metrics/data.json", "metrics/train.json",
    "metrics/train_history.csv", "metrics/test.json", "metrics/test_per_image.csv", "metrics/export.json",
    "metrics/figures/augment_preview.png", "metrics/figures/train_curves.png", "metrics/figures/test_cases.png",
    "metrics/figures/test_dice_histogram.png",
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
    checkpoint = torch.load(root / "models/best.pt", weights_only=True)
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
    assert {"params.yaml", "best.pt", "test.json", "model.card.json"} <= artifacts
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
