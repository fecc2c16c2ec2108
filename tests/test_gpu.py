"""What a GPU user hits, on a real CUDA device: bfloat16 autocast with channels_last, the train engine, resume,
and DistributedDataParallel over NCCL. Skipped without a GPU; `make gpu-check` runs them on a GPU host."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lungseg import checkpoint, data, distributed, engine
from lungseg.config import load_params
from lungseg.losses import build_loss
from lungseg.model import build_model
from conftest import REPO, free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SIZE = 128


@pytest.fixture
def setup():
    params = load_params(REPO / "params.yaml")
    config = params.train.model_copy(update={"device": "cuda", "image_size": SIZE, "epochs": 2, "batch_size": 4})
    cuda = torch.device("cuda")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, SIZE, SIZE), dtype=np.uint8)
    masks = np.zeros_like(images)
    masks[:, 30:100, 20:60] = 255
    loader = data.build_loader(data.XrayDataset(images, masks, params.model.intensity), 4, True, 0, 2,
                               pin_memory=True)
    return params, config, cuda, loader


def training(params, config, device):
    torch.manual_seed(0)
    model = build_model(params.model, 1).to(device).to(memory_format=torch.channels_last)
    optimizer = engine.build_optimizer(model, config)
    return engine.Training(model, build_loss(config), optimizer, engine.build_scheduler(optimizer, config, 2),
                           device, engine.training_precision(device, True), config, params.seed)


def test_bfloat16_autocast_with_channels_last_forward_and_backward(setup):
    params, config, cuda, _ = setup
    model = build_model(params.model, 1).to(cuda).to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, SIZE, SIZE, device=cuda).contiguous(memory_format=torch.channels_last)
    with engine.autocast(cuda, "bfloat16"):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (4, 1, SIZE, SIZE)
    build_loss(config)(logits, torch.rand_like(logits.float())).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_train_engine_runs_and_resumes_on_cuda(setup, tmp_path):
    params, config, cuda, loader = setup
    destinations = checkpoint.Destinations(tmp_path / "checkpoint.pt", tmp_path / "state.pt",
                                           {"fingerprint": "gpu", "config": {}, "in_channels": 1})

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(training(params, config, cuda), loader, loader, destinations, stop_after_first)
    state = checkpoint.load_resumable_state(tmp_path / "state.pt", "gpu")
    assert state is not None and len(state["history"]) == 1
    history = engine.fit(training(params, config, cuda), loader, loader, destinations, lambda row: None,
                         resume=state)
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(np.isfinite(row["train/loss"]) for row in history)


def test_distributed_data_parallel_over_nccl_in_one_process(setup):
    params, config, cuda, loader = setup
    port = free_port()
    # torch refuses a device_id without an index (distributed.start gives each process cuda:<local rank>)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))
    try:
        model = torch.nn.parallel.DistributedDataParallel(build_model(params.model, 1).to(cuda), device_ids=[0])
        run = training(params, config, cuda)
        run.model = model
        run.optimizer = engine.build_optimizer(model, config)
        run.scheduler = engine.build_scheduler(run.optimizer, config, 2)
        result = engine.train_one_epoch(model, loader, run.loss_fn, run.optimizer, run.scheduler, cuda,
                                        run.precision, True)
        assert np.isfinite(result["loss"])
        assert distributed.sum_across(torch.tensor([1.0, 2.0], dtype=torch.float64)).tolist() == [1.0, 2.0]
    finally:
        dist.destroy_process_group()
