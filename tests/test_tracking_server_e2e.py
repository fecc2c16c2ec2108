"""A real PostgreSQL + MLflow server on loopback ports, the tiny pipeline logging to it, read back by a client."""
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import mlflow
import onnx
import pytest
from mlflow.tracking import MlflowClient

from lungseg import tracking_server
from conftest import BIN, free_port, make_tiny_repo, pipeline_environment, run

pytestmark = pytest.mark.e2e


def require_postgres() -> None:
    """CI (.ci/run sets LUNGSEG_REQUIRE_POSTGRES=1) installs PostgreSQL and must run this; elsewhere skip."""
    try:
        tracking_server.postgres_programs()
    except tracking_server.TrackingServerError as err:
        if os.environ.get("LUNGSEG_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def server():
    require_postgres()
    # As root, PostgreSQL runs as the `postgres` user, who must be able to reach the folder: pytest's own
    # temporary folders are private to their owner, so this one is made world-searchable under /tmp.
    parent = Path(tempfile.mkdtemp(prefix="lungseg-server-"))
    parent.chmod(0o755)
    folder = parent / "server"
    db_port, mlflow_port = free_port(), free_port()
    output = run([str(BIN / "lungseg"), "tracking-server", "start", "--dir", str(folder),
                  "--db-port", str(db_port), "--port", str(mlflow_port)], parent).stdout
    state = tracking_server.read_state(folder)
    assert state.tracking_uri in output
    yield folder, state
    tracking_server.stop(folder)  # a no-op for processes already gone
    shutil.rmtree(parent)


@pytest.fixture(scope="module")
def pipeline_logged_to_server(server, tmp_path_factory):
    folder, state = server
    root = make_tiny_repo(tmp_path_factory.mktemp("team"))
    env = pipeline_environment()
    env["MLFLOW_TRACKING_URI"] = state.tracking_uri
    run([str(BIN / "dvc"), "repro"], root, env)
    return root, folder, state


def test_servers_listen_on_loopback_with_password_auth(server):
    folder, state = server
    assert state.tracking_uri.startswith("http://127.0.0.1:")
    hba = (folder / "postgres" / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba and "trust" not in "".join(l for l in hba.splitlines() if not l.startswith("#"))
    assert oct((folder / "pgpass").stat().st_mode & 0o777) == "0o600"
    assert tracking_server.status(folder) == {"tracking_uri": state.tracking_uri, "mlflow": True, "postgres": True}


def test_the_run_is_on_the_server_with_params_metrics_and_onnx_model(pipeline_logged_to_server, tmp_path):
    root, folder, state = pipeline_logged_to_server
    client = MlflowClient(state.tracking_uri)
    experiment = client.get_experiment_by_name("lungseg")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    (found,) = runs
    assert found.data.params["train.image_size"] == "64" and found.data.params["train.nproc"] == "1"
    assert {"val/dice", "train/loss", "test/dice", "export/max_logit_diff"} <= set(found.data.metrics)
    # The ONNX model comes back through the server's artifact proxy, from its artifact store folder.
    mlflow.set_tracking_uri(state.tracking_uri)
    (model,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    assert model.source_run_id == found.info.run_id
    # Without dst_path MLflow downloads into a new temporary folder that nothing removes.
    onnx_model = mlflow.onnx.load_model(f"models:/{model.model_id}", dst_path=str(tmp_path))
    assert isinstance(onnx_model, onnx.ModelProto) and onnx_model.graph.input[0].name
    assert list((folder / "artifacts").rglob("*.onnx"))
    # Nothing went to the repository's embedded store.
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()


def test_predict_fetches_the_registered_model_from_the_team_server(pipeline_logged_to_server, tmp_path):
    root, _, state = pipeline_logged_to_server
    env = {**pipeline_environment(), "MLFLOW_TRACKING_URI": state.tracking_uri, "LUNGSEG_CACHE": str(tmp_path / "c")}
    run([str(BIN / "lungseg"), "promote", "1", "champion"], tmp_path, env)
    image = sorted((root / "data" / "sources" / "montgomery" / "images").iterdir())[0]
    run([str(BIN / "lungseg"), "predict", str(image), "--model", "models:/lungseg@champion", "--output",
         str(tmp_path / "out"), "--quiet"], tmp_path, env)
    assert (tmp_path / "out" / f"{image.stem}.png").is_file()


def test_the_runs_live_in_postgresql(pipeline_logged_to_server):
    import psycopg

    _, folder, state = pipeline_logged_to_server
    with psycopg.connect(host="127.0.0.1", port=state.database_port, user=tracking_server.DATABASE_USER,
                         dbname=tracking_server.DATABASE, passfile=str(folder / "pgpass")) as connection:
        (count,) = connection.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()
    assert count == 1


def test_start_refuses_a_running_folder_and_stop_ends_exactly_its_processes(server, tmp_path):
    folder, state = server
    with pytest.raises(tracking_server.TrackingServerError, match="already running"):
        tracking_server.start(folder, free_port(), free_port())
    with pytest.raises(tracking_server.TrackingServerError, match="not found; no server was started"):
        tracking_server.stop(tmp_path)
    output = run([str(BIN / "lungseg"), "tracking-server", "stop", "--dir", str(folder)], folder).stdout
    assert f"pid {state.mlflow_pid}" in output and f"pid {state.postgres_pid}" in output
    for pid in (state.mlflow_pid, state.postgres_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for port in (state.mlflow_port, state.database_port):
        with contextlib.closing(socket.socket()) as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
