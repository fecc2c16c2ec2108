"""Sharing results through a DVC remote: push from one clone, pull into a fresh one, predict without training."""

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from lungseg.tracking import TRAINED_IN_RUN_TAG
from conftest import BIN, SOURCES, make_tiny_repo, pipeline_environment, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pushed_and_pulled(tmp_path_factory):
    """A teammate's repro pushed to a folder remote; a fresh clone that only pulled."""
    base = tmp_path_factory.mktemp("shared")
    origin = make_tiny_repo(base / "origin")
    env = pipeline_environment()
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], origin, env)
    run([dvc, "remote", "add", "--default", "team", str(base / "remote")], origin, env)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "results of dvc repro; the team remote"], origin)
    pushed = run([dvc, "push"], origin, env).stdout
    run(["git", "clone", "-q", str(origin), str(base / "clone")], base)
    clone = base / "clone"
    pulled = run([dvc, "pull"], clone, env).stdout
    return origin, clone, env, pushed, pulled


def test_push_then_pull_brings_every_output(pushed_and_pulled):
    origin, clone, _, pushed, pulled = pushed_and_pulled
    assert "pushed" in pushed
    for output in ("models/checkpoint.pt", "models/model.onnx", "models/model.card.json", "models/train_state.pt",
                   "data/prepared/manifest.csv", "data/augment/pipeline.yaml", "metrics/test_per_image.csv"):
        assert (clone / output).read_bytes() == (origin / output).read_bytes(), output


def test_the_pulled_clone_is_up_to_date_and_needs_no_training(pushed_and_pulled):
    _, clone, env, _, _ = pushed_and_pulled
    assert "up to date" in run([str(BIN / "dvc"), "status"], clone, env).stdout
    repro = run([str(BIN / "dvc"), "repro"], clone, env).stdout
    assert "Running stage" not in repro, repro  # every stage is skipped: nothing retrains
    assert not (clone / "mlflow.db").exists()


def test_the_pulled_model_predicts(pushed_and_pulled, tmp_path):
    _, clone, env, _, _ = pushed_and_pulled
    images = sorted((SOURCES / "montgomery" / "images").iterdir())[-2:]
    run([str(BIN / "lungseg"), "predict", *map(str, images), "--output", str(tmp_path)], clone, env)
    for image in images:
        mask = np.asarray(Image.open(tmp_path / f"{image.stem}.png"))
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}


def test_the_pulled_model_is_re_evaluated_and_logged_without_its_training_run(pushed_and_pulled):
    # The model's training run is in the teammate's MLflow store, not in this clone's: evaluate, export and
    # robustness log to one run of their own that names it, instead of failing on the missing run.
    # Last in this file: the experiment changes the shared clone's workspace.
    _, clone, env, _, _ = pushed_and_pulled
    training_run_id = torch.load(clone / "models/checkpoint.pt", weights_only=True)["mlflow_run_id"]
    run(["git", "config", "user.email", "ci@lungseg.test"], clone)  # experiments are commits
    run(["git", "config", "user.name", "lungseg tests"], clone)
    result = run([str(BIN / "dvc"), "exp", "run", "-n", "stricter", "-S", "evaluate.threshold=0.6"], clone, env)
    assert "Running stage 'train'" not in result.stdout and "Running stage 'evaluate'" in result.stdout
    client = MlflowClient(f"sqlite:///{clone}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lungseg").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].data.tags[TRAINED_IN_RUN_TAG] == training_run_id
    assert {"test/dice", "export/max_logit_diff", "robustness/clean/dice"} <= set(runs[0].data.metrics)
