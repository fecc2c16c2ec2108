import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port
from lungseg.tracking import (PARENT_RUN_TAG, TRAINED_IN_RUN_TAG, TrackingUnavailableError, add_to_run,
                              check_reachable, model_run_id, resolve_tracking_uri, run_tags, training_run)


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


PARAMS = {"seed": 1, "evaluate.threshold": 0.5, "evaluate.lung_crop_margin": 0.1}


def test_later_stages_log_to_the_training_run_when_the_store_has_it(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    with training_run(uri, {}, tmp_path, None, PARAMS, _params_file(tmp_path), {}) as training_run_id:
        pass
    assert model_run_id(uri, training_run_id, PARAMS, {}, tmp_path) == training_run_id


def test_a_param_value_mlflow_cuts_short_still_matches_the_training_run(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    long_params = {**PARAMS, "prepare.sources": ["data/sources/hospital-" + "x" * 40] * 200}  # over 6000 characters
    with training_run(uri, {}, tmp_path, None, long_params, _params_file(tmp_path), {}) as training_run_id:
        pass
    assert model_run_id(uri, training_run_id, long_params, {}, tmp_path) == training_run_id


def test_an_experiment_that_changes_only_later_params_gets_a_run_nested_under_the_training_run(tmp_path, caplog):
    """`dvc exp run -S evaluate.lung_crop_margin=null` reuses the trained model: its results must not overwrite
    those the training run holds for its own params."""
    caplog.set_level(logging.INFO, logger="lungseg.tracking")
    uri = resolve_tracking_uri({}, tmp_path)
    with training_run(uri, {}, tmp_path, None, PARAMS, _params_file(tmp_path), {}) as training_run_id:
        pass
    add_to_run(training_run_id, PARAMS, {"test/dice": 0.96}, [], {}, tmp_path)
    one_pass = {**PARAMS, "evaluate.lung_crop_margin": None}
    add_to_run(training_run_id, one_pass, {"test/dice": 0.95}, [], {"DVC_EXP_NAME": "one-pass"}, tmp_path)
    client = MlflowClient(uri)
    assert client.get_run(training_run_id).data.metrics["test/dice"] == 0.96
    nested_id = model_run_id(uri, training_run_id, one_pass, {"DVC_EXP_NAME": "one-pass"}, tmp_path)
    nested = client.get_run(nested_id)
    assert nested_id != training_run_id and nested.info.run_name == "one-pass"
    assert nested.data.tags[PARENT_RUN_TAG] == nested.data.tags[TRAINED_IN_RUN_TAG] == training_run_id
    assert nested.data.params["evaluate.lung_crop_margin"] == "null" and nested.data.metrics["test/dice"] == 0.95
    assert "evaluate.lung_crop_margin: 0.1 -> null" in caplog.text
    # every later stage and any experiment with the same params settle on that run; other params, another run
    assert model_run_id(uri, training_run_id, one_pass, {"DVC_EXP_NAME": "again"}, tmp_path) == nested_id
    stricter = {**PARAMS, "evaluate.threshold": 0.6}
    assert model_run_id(uri, training_run_id, stricter, {}, tmp_path) not in (nested_id, training_run_id)
    assert model_run_id(uri, training_run_id, PARAMS, {}, tmp_path) == training_run_id


def test_a_model_trained_against_another_store_gets_one_run_of_its_own(tmp_path, caplog):
    uri = resolve_tracking_uri({}, tmp_path)
    elsewhere = "0123456789abcdef0123456789abcdef"  # the training run in a teammate's store
    first = model_run_id(uri, elsewhere, PARAMS, {"DVC_EXP_NAME": "stricter"}, tmp_path)
    assert elsewhere in caplog.text and first in caplog.text
    assert model_run_id(uri, elsewhere, PARAMS, {"DVC_EXP_NAME": "laxer"}, tmp_path) == first  # every stage
    stand_in = MlflowClient(uri).get_run(first)
    assert stand_in.data.tags[TRAINED_IN_RUN_TAG] == elsewhere and PARENT_RUN_TAG not in stand_in.data.tags
    assert stand_in.info.run_name == "trained-elsewhere-01234567" and stand_in.data.params["seed"] == "1"
    assert model_run_id(uri, "fedcba9876543210fedcba9876543210", PARAMS, {}, tmp_path) != first  # another model
    assert model_run_id(uri, elsewhere, {**PARAMS, "seed": 2}, {}, tmp_path) != first  # other params


def test_a_deleted_training_run_is_not_reopened(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    with training_run(uri, {}, tmp_path, None, {"seed": 1}, _params_file(tmp_path), {}) as training_run_id:
        pass
    MlflowClient(uri).delete_run(training_run_id)
    add_to_run(training_run_id, PARAMS, {"test/dice": 0.9}, [], {}, tmp_path)  # MLflow would refuse to reopen it
    stand_in = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("lungseg").experiment_id])
    assert [run.data.tags[TRAINED_IN_RUN_TAG] for run in stand_in] == [training_run_id]
    assert stand_in[0].data.metrics["test/dice"] == 0.9


def test_a_checkpoint_without_a_training_run_still_logs(tmp_path):
    uri = resolve_tracking_uri({}, tmp_path)
    add_to_run(None, PARAMS, {"test/dice": 0.9}, [], {}, tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lungseg").experiment_id])
    assert run.data.tags[TRAINED_IN_RUN_TAG] == "unknown" and run.data.metrics["test/dice"] == 0.9


def _params_file(root):
    path = root / "params.yaml"
    path.write_text("seed: 1\n")
    return path
