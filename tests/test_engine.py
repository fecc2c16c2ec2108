import pytest
import torch

from lungseg import engine


def test_cuda_request_without_a_gpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(engine.DeviceUnavailableError, match="no CUDA device"):
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


def test_summary_names_the_kept_epoch_in_the_shared_namespace():
    history = [{"epoch": 1, "train/loss": 1.0, "val/dice": 0.5, "lr": 0.1, "seconds": 2.0},
               {"epoch": 2, "train/loss": 0.5, "val/dice": 0.7, "lr": 0.1, "seconds": 3.0},
               {"epoch": 3, "train/loss": 0.4, "val/dice": 0.7, "lr": 0.1, "seconds": 4.0}]
    summary = engine.summarize_history(history)
    assert summary == {"kept/epoch": 2, "kept/train/loss": 0.5, "kept/val/dice": 0.7, "run/epochs": 3,
                       "run/seconds": 9.0}  # earliest epoch on ties
    assert engine.summarize_history(history, "last")["kept/epoch"] == 3
