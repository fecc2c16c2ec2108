"""The checkpoint format: plain weights only, atomic writes, typed config back, resumable state."""
import pytest
import torch

from lungseg import checkpoint
from lungseg.config import load_params
from lungseg.model import build_model
from conftest import REPO


class Payload:
    """An arbitrary class: a full unpickler would import and build whatever the file names."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt.*refused"):
        checkpoint.load_raw(path)


def test_kept_checkpoint_round_trips_with_its_typed_config(tmp_path):
    params = load_params(REPO / "params.yaml")
    model = build_model(params.model, in_channels=1)
    path = tmp_path / "models" / "checkpoint.pt"
    checkpoint.save(path, {"model": model.state_dict(), "epoch": 3, "config": params.model_dump(mode="json"),
                           "in_channels": 1, "mlflow_run_id": "abc"})
    loaded = checkpoint.load(path)
    assert loaded.epoch == 3 and loaded.mlflow_run_id == "abc" and loaded.params == params
    rebuilt = loaded.build_model()
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    assert len(loaded.weights_sha256()) == 64


def test_weights_hash_changes_with_any_weight(tmp_path):
    params = load_params(REPO / "params.yaml")
    weights = build_model(params.model, in_channels=1).state_dict()
    first = checkpoint.Checkpoint(params, 1, 1, None, weights).weights_sha256()
    weights["head.bias"] = weights["head.bias"] + 1e-6
    assert checkpoint.Checkpoint(params, 1, 1, None, weights).weights_sha256() != first


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="dvc repro"):
        checkpoint.load(tmp_path / "none.pt")


def test_resumable_state_must_match_and_be_unfinished(tmp_path):
    path = tmp_path / "state.pt"
    assert checkpoint.load_resumable_state(path, "abc") is None
    checkpoint.save(path, {"fingerprint": "abc", "completed": False, "history": []})
    assert checkpoint.load_resumable_state(path, "abc") is not None
    assert checkpoint.load_resumable_state(path, "other params") is None
    checkpoint.save(path, {"fingerprint": "abc", "completed": True, "history": []})
    assert checkpoint.load_resumable_state(path, "abc") is None
    path.write_bytes(b"garbage")
    assert checkpoint.load_resumable_state(path, "abc") is None  # never trusted


def test_fingerprint_follows_params_and_file_contents(tmp_path):
    data = tmp_path / "manifest.csv"
    data.write_text("a")
    first = checkpoint.fingerprint({"lr": 1}, [data])
    assert first == checkpoint.fingerprint({"lr": 1}, [data])
    assert first != checkpoint.fingerprint({"lr": 2}, [data])
    data.write_text("b")
    assert first != checkpoint.fingerprint({"lr": 1}, [data])


def test_checkpoints_from_before_newer_params_load_as_they_were_made(tmp_path):
    params = load_params(REPO / "params.yaml")
    config = params.model_dump(mode="json")
    del config["train"]["keep_weights"]  # what the train stage wrote before the parameter existed
    path = tmp_path / "best.pt"
    checkpoint.save(path, {"model": {}, "epoch": 15, "config": config, "in_channels": 1})
    assert checkpoint.load(path).params.train.keep_weights == "best_val"
    del config["evaluate"]["lung_crop_margin"]  # nor evaluate.lung_crop_margin: those were scored in one pass
    checkpoint.save(path, {"model": {}, "epoch": 15, "config": config, "in_channels": 1})
    assert checkpoint.load(path).params.evaluate.lung_crop_margin is None
    checkpoint.save(path, {"model": {}, "epoch": 15, "config": "not a mapping", "in_channels": 1})
    with pytest.raises(checkpoint.CheckpointError, match="best.pt: not a lungseg checkpoint"):
        checkpoint.load(path)


def test_a_failed_save_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def disk_full(content, file):
        file.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert checkpoint.load_raw(path)["epoch"] == 1


def test_a_refused_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def refused(source, destination):
        raise PermissionError(13, "Permission denied", str(destination))

    monkeypatch.setattr(checkpoint.os, "replace", refused)
    with pytest.raises(PermissionError):
        checkpoint.save(path, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert checkpoint.load_raw(path)["epoch"] == 1
