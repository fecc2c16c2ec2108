"""Documented recipes (recipes/*.args, `dvc exp run` overrides) stay valid and start training on a CPU."""
import copy

import numpy as np
import pytest
import torch
import yaml

from lungseg import data, engine
from lungseg.augment import build_augmentations
from lungseg.config import parse_params
from lungseg.losses import build_loss
from lungseg.model import build_model
from conftest import REPO, SOURCES, real_pair_names

RECIPES = sorted((REPO / "recipes").glob("*.args"))


def apply_overrides(raw: dict, args_file) -> dict:
    """Apply `-S key=value` lines the way `dvc exp run -S` does (values parsed as YAML)."""
    raw = copy.deepcopy(raw)
    for line in args_file.read_text().split("\n"):
        if not line.strip():
            continue
        flag, assignment = line.split(maxsplit=1)
        assert flag == "-S", line
        key, value = assignment.split("=", 1)
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        assert last in node, f"{args_file.name}: unknown param {key}"
        node[last] = yaml.safe_load(value)
    return raw


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_is_valid_and_trains_a_step_on_cpu(recipe):
    params = parse_params(apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), recipe))
    config = params.train.model_copy(update={"device": "cpu", "batch_size": 2, "epochs": 1})
    manifest = data.collect_records([SOURCES / "montgomery"], skip_bad=False)[0]
    manifest = manifest[manifest["name"].isin(real_pair_names("montgomery", 1))]
    images, masks = data.load_arrays(manifest, config.image_size)
    loader = data.build_loader(data.XrayDataset(images, masks, build_augmentations(params.augment)), 2, True, 0, 0)
    torch.manual_seed(0)
    model = build_model(params.model, in_channels=1)
    optimizer = engine.build_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    result = engine.train_one_epoch(model, loader, build_loss(config), optimizer,
                                    engine.build_scheduler(optimizer, config, len(loader)),
                                    torch.device("cpu"), "float32", False)
    assert np.isfinite(result["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
