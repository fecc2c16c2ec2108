from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port
from lungseg.tracking import (TRAINED_IN_RUN_TAG, TrackingUnavailableError, add_to_run, check_reachable,
                              model_run_id, resolve_tracking_uri, run_tags, training_run)


def test_default_store_is_sqlite_in_the_repository(tmp_path):
    assert resolve_tracking_uri({}, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_queued_experiments_log_to_the_parent_repository(tmp_path):
    # DVC runs queued experiments in a temporary copy and sets DVC_ROOT to the parent repository.
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    assert resolve_tracking_uri({"DVC_ROOT": str(tmp_path)}, copy) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_points_at_a_team_server(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000", "DVC_ROOT": str(tmp_path)}
    assert resolve_tracking_uri(env, tmp_path) == "http://mlflow.example:5000"


def test_unreachable_server_is_detected_before_training():
    port = free_port()  # free a moment ago: nothing listens there
    with pytest.raises(TrackingUnavailableError, match=f"127.0.0.1:{port}.*unreachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    check_reachable(f"sqlite:///{Path.cwd()}/mlflow.db")  # local stores need no check


def test_tags_carry_the_commit_and_the_experiment_name(tmp_path):
    tags = run_tags({"DVC_EXP_NAME": "lean-bass"}, Path(__file__).parent)
    assert tags["dvc_exp_name"] == "lean-bass"
    assert len(tags["mlflow.source.git.commit"]) in (40, len("unknown"))


@pytest.mark.parametrize("status, body", [(200, b"<html>a web page</html>"), (404, b"not found"),
                                          (503, b"proxy error")])
def test_a_server_that_is_not_mlflow_is_refused_quickly(status, body):
    import http.server
    import threading
    import time

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailableError, match="answers but is not a usable MLflow tracking server"):
            check_reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert time.monotonic() - started < 30


def test_later_stages_log_to_the_training_run_when_the_store_has_it(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    with training_run(uri, {}, tmp_path, None, {"seed": 1}, _params_file(tmp_path), {}) as training_run_id:
        pass
    assert model_run_id(uri, training_run_id, {}, tmp_path) == training_run_id


def test_a_model_trained_against_another_store_gets_one_run_of_its_own(tmp_path, caplog):
    uri = resolve_tracking_uri({}, tmp_path)
    elsewhere = "0123456789abcdef0123456789abcdef"  # the training run in a teammate's store
    first = model_run_id(uri, elsewhere, {"DVC_EXP_NAME": "stricter"}, tmp_path)
    assert elsewhere in caplog.text and first in caplog.text
    assert model_run_id(uri, elsewhere, {"DVC_EXP_NAME": "laxer"}, tmp_path) == first  # every stage, experiment
    stand_in = MlflowClient(uri).get_run(first)
    assert stand_in.data.tags[TRAINED_IN_RUN_TAG] == elsewhere
    assert stand_in.info.run_name == "trained-elsewhere-01234567"
    assert model_run_id(uri, "fedcba9876543210fedcba9876543210", {}, tmp_path) != first  # another model, another run


def test_a_deleted_training_run_is_not_reopened(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    with training_run(uri, {}, tmp_path, None, {"seed": 1}, _params_file(tmp_path), {}) as training_run_id:
        pass
    MlflowClient(uri).delete_run(training_run_id)
    add_to_run(training_run_id, {"test/dice": 0.9}, [], {}, tmp_path)  # MLflow would refuse to reopen it
    stand_in = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("lungseg").experiment_id])
    assert [run.data.tags[TRAINED_IN_RUN_TAG] for run in stand_in] == [training_run_id]
    assert stand_in[0].data.metrics["test/dice"] == 0.9


def test_a_checkpoint_without_a_training_run_still_logs(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    add_to_run(None, {"test/dice": 0.9}, [], {}, tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lungseg").experiment_id])
    assert run.data.tags[TRAINED_IN_RUN_TAG] == "unknown" and run.data.metrics["test/dice"] == 0.9


def _params_file(root):
    path = root / "params.yaml"
    path.write_text("seed: 1\n")
    return path
