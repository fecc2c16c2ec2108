import pytest
import torch

from lungseg import engine


class Payload:
    """An arbitrary class: a full unpickler would import and build whatever the file names."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pt.*refused"):
        engine.load_checkpoint(path)


def test_plain_checkpoint_round_trips_atomically(tmp_path):
    path = tmp_path / "models" / "best.pt"
    checkpoint = {"model": {"w": torch.ones(2)}, "epoch": 3, "config": {"train": {"image_size": 64}}}
    engine.save_checkpoint(path, checkpoint)
    loaded = engine.load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        engine.load_checkpoint(tmp_path / "none.pt")


def test_resumable_state_must_match_and_be_unfinished(tmp_path):
    path = tmp_path / "state.pt"
    assert engine.load_resumable_state(path, "abc") is None
    engine.save_checkpoint(path, {"fingerprint": "abc", "completed": False, "history": []})
    assert engine.load_resumable_state(path, "abc") is not None
    assert engine.load_resumable_state(path, "other params") is None
    engine.save_checkpoint(path, {"fingerprint": "abc", "completed": True, "history": []})
    assert engine.load_resumable_state(path, "abc") is None


def test_fingerprint_follows_params_and_file_contents(tmp_path):
    data = tmp_path / "manifest.csv"
    data.write_text("a")
    first = engine.fingerprint({"lr": 1}, [data])
    assert first == engine.fingerprint({"lr": 1}, [data])
    assert first != engine.fingerprint({"lr": 2}, [data])
    data.write_text("b")
    assert first != engine.fingerprint({"lr": 1}, [data])


def test_cuda_request_without_a_gpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        engine.select_device("cuda")
    assert engine.select_device("auto").type == "cpu"


def test_mixed_precision_only_where_bfloat16_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert engine.training_precision(cpu, True) == "bfloat16"
    assert engine.training_precision(cpu, False) == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert engine.training_precision(cpu, True) == "float32"  # emulated bfloat16 would be slower
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert engine.training_precision(cpu, True) == "float32"  # unknown hardware: the safe choice
    assert engine.training_precision(torch.device("cuda"), True) == "bfloat16"
    with engine.autocast(cpu, "bfloat16"):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.bfloat16
    with engine.autocast(cpu, "float32"):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.float32
