"""Interruptions and reproducibility of the real pipeline on a tiny real subset."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lungseg.runtime import files
from conftest import BIN, free_port, make_tiny_repo, pipeline_environment, run

pytestmark = pytest.mark.e2e
EPOCHS = 6
# Resumed and uninterrupted runs make the same draws (batch order and augmentations are seeded per epoch), so
# on one CPU machine they match exactly; the tolerance leaves room for non-deterministic kernels elsewhere.
RESUME_TOLERANCE = 0.002


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = make_tiny_repo(tmp_path_factory.mktemp("reliable"))
    params = (root / "params.yaml").read_text().replace("epochs: 1\n", f"epochs: {EPOCHS}\n")
    (root / "params.yaml").write_text(params)
    run(["git", "commit", "-qam", f"{EPOCHS} epochs"], root)
    env = pipeline_environment()
    run([str(BIN / "dvc"), "repro", "augment"], root, env)
    return root, env


def completed_epochs(root) -> int:
    state = root / "models" / "train_state.pt"
    if not state.is_file():
        return 0
    try:
        return len(torch.load(state, weights_only=True)["history"])
    except Exception:  # being replaced this instant; the writer renames atomically, so retry
        return 0


def interrupt_training(root, env, sig) -> None:
    """Start `dvc repro`, wait for a completed epoch, then signal the whole process group."""
    process = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=root, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while completed_epochs(root) < 1:
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, sig)
    process.wait(timeout=60)
    # torchrun starts its workers in their own session, out of reach of the signal: they must die with it.
    deadline = time.monotonic() + 30
    while processes_working_in(root):
        assert time.monotonic() < deadline, f"processes outlived the interrupted run: {processes_working_in(root)}"
        time.sleep(0.1)
    assert completed_epochs(root) < EPOCHS, "training finished before the signal arrived"


def processes_working_in(folder) -> list[int]:
    """Pids of live processes whose working directory is `folder` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == Path(folder) and (entry / "stat").read_text().split()[2] != "Z":
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_training_resumes_and_matches_an_uninterrupted_run(repo, sig):
    root, env = repo
    (root / "models" / "train_state.pt").unlink(missing_ok=True)
    (root / "models" / "checkpoint.pt").unlink(missing_ok=True)  # persisted: another case's would pass for ours
    interrupt_training(root, env, sig)
    done_before = completed_epochs(root)
    result = run([str(BIN / "dvc"), "repro", "train"], root, env)
    output = result.stdout + result.stderr
    assert f"resuming after epoch {done_before} of {EPOCHS}" in output
    resumed = files.read_json(root / "metrics" / "train.json")
    assert resumed["run/epochs"] == EPOCHS

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    kept = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == resumed["kept/epoch"]  # the file holds the epoch the metrics name
    run_id = kept["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(run_id, "val/dice")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))  # one run, every epoch logged

    run([str(BIN / "dvc"), "repro", "--force", "train"], root, env)  # a finished state is never resumed
    uninterrupted = files.read_json(root / "metrics" / "train.json")
    assert uninterrupted["run/epochs"] == EPOCHS
    assert abs(resumed["kept/val/dice"] - uninterrupted["kept/val/dice"]) <= RESUME_TOLERANCE


def test_a_corrupt_training_state_is_not_trusted(repo):
    root, env = repo
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "train_state.pt").write_bytes(b"half a checkpoint")
    result = run([str(BIN / "dvc"), "repro", "--force", "train"], root, env)
    assert "resuming" not in result.stdout + result.stderr
    assert files.read_json(root / "metrics" / "train.json")["run/epochs"] == EPOCHS


def test_unreachable_tracking_server_stops_training_before_it_starts(repo):
    root, env = repo
    port = free_port()
    (root / "models" / "train_state.pt").unlink(missing_ok=True)
    started = time.monotonic()
    result = subprocess.run([str(BIN / "dvc"), "repro", "--force", "train"], cwd=root, capture_output=True,
                            text=True, env={**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert result.returncode != 0
    assert f"http://127.0.0.1:{port} is unreachable" in result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert not (root / "models" / "train_state.pt").exists()  # no epoch was trained


def test_two_runs_from_scratch_give_the_same_split_and_test_dice(tmp_path):
    results = []
    for name in ("first", "second"):
        root = make_tiny_repo(tmp_path / name)
        run([str(BIN / "dvc"), "repro"], root, pipeline_environment())
        manifest = (root / "data" / "prepared" / "manifest.csv").read_text().replace(str(root), "")
        results.append((manifest, files.read_json(root / "metrics" / "test.json")["test/dice"]))
    assert results[0][0] == results[1][0]
    assert abs(results[0][1] - results[1][1]) <= 0.002
