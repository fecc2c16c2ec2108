import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO
from lungseg import checkpoint, engine
from lungseg.config import load_params


def test_cuda_request_without_a_gpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(engine.DeviceUnavailableError, match="no CUDA device"):
        engine.select_device("cuda")
    assert engine.select_device("auto").type == "cpu"


@pytest.mark.parametrize("amx, avx512_bf16, limit, precision", [
    (True, True, None, "bfloat16"),  # Sapphire Rapids and later Xeons
    (True, True, "avx512_core_amx", "bfloat16"),
    (True, True, "AVX512_CORE_BF16", "bfloat16"),  # tiles ruled out, the dot products left
    (True, True, "AVX512_CORE", "float32"),
    (True, True, "AVX2", "float32"),  # an AVX2-only CPU emulated on an AMX one trains as one does
    (True, False, None, "bfloat16"),  # the tiles alone
    (True, False, "AVX512_CORE_BF16", "float32"),  # tiles ruled out, no dot products to fall back on
    (False, True, None, "bfloat16"),  # AMD Zen 4, Intel Cooper Lake
    (False, True, "AVX10_1_512", "bfloat16"),
    (False, True, "AVX512_CORE_VNNI", "float32"),
    (False, True, "AVX2", "float32"),
    (False, False, None, "float32"),  # Cascade Lake, Zen 3: emulated bfloat16 would be slower
    (None, None, None, "float32"),  # a torch without the probes: unknown hardware, the safe choice
])
def test_mixed_precision_only_where_bfloat16_is_native(monkeypatch, amx, avx512_bf16, limit, precision):
    cpu = torch.device("cpu")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    for probe, present in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if present is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda present=present: present)
    assert engine.training_precision(cpu, True) == precision
    assert engine.training_precision(cpu, False) == "float32"


def test_bfloat16_on_cuda_and_autocast_follows_the_precision():
    cpu = torch.device("cpu")
    assert engine.training_precision(torch.device("cuda"), True) == "bfloat16"
    with engine.autocast(cpu, "bfloat16"):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.bfloat16
    with engine.autocast(cpu, "float32"):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.float32


def test_summary_names_the_kept_epoch_in_the_shared_namespace():
    history = [{"epoch": 1, "train/loss": 1.0, "val/dice": 0.5, "lr": 0.1, "seconds": 2.0},
               {"epoch": 2, "train/loss": 0.5, "val/dice": 0.7, "lr": 0.1, "seconds": 3.0},
               {"epoch": 3, "train/loss": 0.4, "val/dice": 0.7, "lr": 0.1, "seconds": 4.0}]
    summary = engine.summarize_history(history, "best_val")
    assert summary == {"kept/epoch": 2, "kept/train/loss": 0.5, "kept/val/dice": 0.7, "run/epochs": 3,
                       "run/seconds": 9.0}  # earliest epoch on ties
    assert engine.summarize_history(history, "last")["kept/epoch"] == 3


@pytest.mark.parametrize("keep_weights, epochs_written", [("best_val", [1, 2]), ("last", [3])])
def test_keeps_epoch_writes_each_new_best_or_only_the_last(keep_weights, epochs_written):
    history = [{"epoch": epoch, "val/dice": dice} for epoch, dice in ((1, 0.5), (2, 0.7), (3, 0.7))]
    written = [row["epoch"] for row in history if engine.keeps_epoch(history[: row["epoch"]], keep_weights, 3)]
    assert written == epochs_written  # a tie is no new best


def _tiny_training(keep_weights: str):
    config = load_params(REPO / "params.yaml").train.model_copy(
        update={"epochs": 3, "keep_weights": keep_weights, "channels_last": False})
    model = torch.nn.Conv2d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.rand(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float())
    loader = DataLoader(data, batch_size=2, generator=torch.Generator())
    training = engine.Training(model, torch.nn.BCEWithLogitsLoss(), optimizer,
                               torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                               torch.device("cpu"), "float32", config, seed=0)
    return training, loader


@pytest.mark.parametrize("keep_weights, kept_epoch", [("last", 3), ("best_val", 2)])
@pytest.mark.parametrize("interrupted", [False, True])
def test_fit_writes_the_checkpoint_that_keep_weights_names(tmp_path, monkeypatch, keep_weights, kept_epoch,
                                                           interrupted):
    val_dice = iter([0.5, 0.9, 0.7])  # epoch 2 has the best validation Dice, epoch 3 is the last
    monkeypatch.setattr(engine, "validate", lambda *args: {"loss": 0.1, "iou": 0.5, "dice": next(val_dice)})
    training, loader = _tiny_training(keep_weights)
    weights_after = {}

    def on_epoch_end(row):
        weights_after[row["epoch"]] = training.model.weight.detach().clone()
        if interrupted and row["epoch"] == 2:
            raise KeyboardInterrupt  # stopped after epoch 2's files are written

    destinations = checkpoint.Destinations(tmp_path / "checkpoint.pt", tmp_path / "state.pt", {"fingerprint": "f"})
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            engine.fit(training, loader, loader, destinations, on_epoch_end)
        assert (tmp_path / "checkpoint.pt").is_file() == (keep_weights == "best_val")  # 'last' writes at the end
        training, loader = _tiny_training(keep_weights)  # a new process: fresh model, optimizer and schedule
        resume = checkpoint.load_resumable_state(tmp_path / "state.pt", "f")
        history = engine.fit(training, loader, loader, destinations, on_epoch_end, resume=resume)
    else:
        history = engine.fit(training, loader, loader, destinations, on_epoch_end)

    kept = checkpoint.load_raw(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == kept_epoch
    assert torch.equal(kept["model"]["weight"], weights_after[kept_epoch])
    assert engine.summarize_history(history, keep_weights)["kept/epoch"] == kept_epoch


@pytest.mark.parametrize("environ, ceiling", [
    ({}, None), ({"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, None), ({"ONEDNN_MAX_CPU_ISA": "ALL"}, None),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512"}, None),  # not a oneDNN name: oneDNN ignores it
    ({"ONEDNN_MAX_CPU_ISA": "avx2"}, "avx2"), ({"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}, "avx2"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "avx512"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512_bf16"), ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512"}, "avx512_bf16"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}, "amx"), ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX_FP16"}, "amx"),
    ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, "sse41"), ({"ONEDNN_MAX_CPU_ISA": "AVX"}, "avx"),
    ({"DNNL_MAX_CPU_ISA": "AVX2"}, "avx2"),  # the older name, read where the newer is unset
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "DNNL_MAX_CPU_ISA": "AVX2"}, "avx512"),
])
def test_onednn_isa_ceiling_reads_the_limit_as_onednn_does(environ, ceiling):
    assert engine.onednn_isa_ceiling(environ) == ceiling
