"""Documented recipes (recipes/*.args, `dvc exp run` overrides) stay valid and start training on a CPU."""
import numpy as np
import pytest
import torch
import yaml

from lungseg import data, engine, recipes
from lungseg.augment import build_augmentations
from lungseg.config import parse_params
from lungseg.losses import build_loss
from lungseg.model import build_model
from conftest import REPO, SOURCES, real_pair_names

RECIPES = sorted((REPO / "recipes").glob("*.args"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_is_valid_and_trains_a_step_on_cpu(recipe):
    params = parse_params(recipes.apply(yaml.safe_load((REPO / "params.yaml").read_text()), recipe))
    config = params.train.model_copy(update={"device": "cpu", "batch_size": 2, "epochs": 1})
    manifest = data.collect_records([SOURCES / "montgomery"], skip_bad=False)[0]
    manifest = manifest[manifest["name"].isin(real_pair_names("montgomery", 1))]
    images, masks = data.load_arrays(manifest, config.image_size)
    dataset = data.XrayDataset(images, masks, params.model.intensity, build_augmentations(params.augment))
    loader = data.build_loader(dataset, 2, True, 0, 0)
    torch.manual_seed(0)
    model = build_model(params.model, in_channels=1)
    optimizer = engine.build_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    result = engine.train_one_epoch(model, loader, build_loss(config), optimizer,
                                    engine.build_scheduler(optimizer, config, len(loader)),
                                    torch.device("cpu"), "float32", False)
    assert np.isfinite(result["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_recipe_naming_an_unknown_param_is_refused(tmp_path):
    bad = tmp_path / "bad.args"
    bad.write_text("-S train.epochs=3\n-S train.epoch=3\n")
    with pytest.raises(recipes.RecipeError, match="bad.args:2: params.yaml has no param 'train.epoch'"):
        recipes.apply(yaml.safe_load((REPO / "params.yaml").read_text()), bad)
