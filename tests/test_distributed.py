"""The torch.distributed helpers: process layout, batch split, shards, and reductions over real gloo processes."""
import json

import pytest
import torch
import yaml
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from lungseg import data, distributed, engine
from lungseg.config import ConfigError, parse_params
from lungseg.distributed import DistributedConfigError, Processes

from conftest import REPO


def test_layout_comes_from_torchrun_environment():
    assert distributed.processes_from_env({}) == Processes(0, 1, 0)
    layout = distributed.processes_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert layout.world_size == 4 and layout.local_rank == 1 and not layout.is_main and layout.is_distributed
    with pytest.raises(DistributedConfigError, match="integers"):
        distributed.processes_from_env({"WORLD_SIZE": "two"})


def test_batch_is_split_evenly_or_refused():
    assert distributed.per_process_batch(8, 2) == 4
    with pytest.raises(DistributedConfigError, match="cannot be split evenly across 3 processes"):
        distributed.per_process_batch(8, 3)


def test_params_refuse_a_batch_that_nproc_does_not_divide():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(batch_size=6, nproc=4)
    with pytest.raises(ConfigError, match="batch_size 6 must be a multiple of nproc 4"):
        parse_params(raw)


def test_shards_cover_every_item_exactly_once():
    dataset = TensorDataset(torch.arange(11))
    shards = [distributed.shard(dataset, Processes(rank, 3)) for rank in range(3)]
    items = sorted(int(shard[i][0]) for shard in shards for i in range(len(shard)))
    assert items == list(range(11))
    assert distributed.shard(dataset, Processes()) is dataset


def _validation_inputs():
    torch.manual_seed(0)
    images = torch.rand(10, 1, 32, 32)
    masks = (torch.rand(10, 1, 32, 32) > 0.6).float()
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    return TensorDataset(images, masks), model


def _validate_as_rank(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset, model = _validation_inputs()
        shard = distributed.shard(dataset, Processes(rank, world_size))
        loader = data.build_loader(shard, 3, False, 0, 0)
        result = engine.validate(model, loader, torch.nn.BCEWithLogitsLoss(), torch.device("cpu"), "float32", False)
        if rank == 0:
            with open(result_file, "w") as handle:
                json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_validation_over_two_processes_equals_one_process(tmp_path):
    dataset, model = _validation_inputs()
    single = engine.validate(model, data.build_loader(dataset, 3, False, 0, 0), torch.nn.BCEWithLogitsLoss(),
                             torch.device("cpu"), "float32", False)
    mp.spawn(_validate_as_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "result.json")), nprocs=2)
    double = json.loads((tmp_path / "result.json").read_text())
    assert double["dice"] == pytest.approx(single["dice"], abs=1e-12)
    assert double["iou"] == pytest.approx(single["iou"], abs=1e-12)
    # Loss is a mean per batch weighted by batch size, so shards batch differently: equal up to float error.
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)
