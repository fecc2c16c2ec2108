import copy

import pytest
import yaml

from lungseg.config import ConfigError, flatten, load_params, parse_params
from conftest import REPO

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    raw = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train.image_size % 32 == 0
    assert params.model.encoder in ("resnet18", "resnet34", "resnet50", "resnet101")


@pytest.mark.parametrize("path", ["train.epoch", "model.encoder_depth", "nonsense"])
def test_unknown_keys_are_rejected_by_name(path):
    raw = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = 1
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        parse_params(raw)


@pytest.mark.parametrize(
    "path, value",
    [
        ("train.epochs", 0),
        ("train.batch_size", -1),
        ("train.learning_rate", 0),
        ("train.image_size", 100),
        ("model.encoder", "resnet152"),
        ("prepare.split.test", 0.5),
        ("augment.gamma_limit", [120, 80]),
        ("train.device", "tpu"),
    ],
)
def test_bad_values_are_rejected_by_name(path, value):
    with pytest.raises(ConfigError, match=path.split(".")[0]):
        parse_params(with_change(path, value))


def test_unreadable_params_file_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match=str(bad)):
        load_params(bad)


def test_flatten_uses_dotted_names():
    assert flatten({"train": {"epochs": 3, "x": {"y": None}}}) == {"train.epochs": 3, "train.x.y": None}


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "learning_rate", float("inf"), "finite number"),
    ("model", "input_mean", float("nan"), "finite number"),
    ("model", "input_std", float("inf"), "finite number"),
    ("train", "weight_decay", float("inf"), "finite number"),
    ("train", "epochs", True, "valid integer"),
    ("train", "learning_rate", True, "not true/false"),
    ("train", "image_size", 224.0, "valid integer"),
])
def test_non_finite_and_mistyped_numbers_are_refused_by_name(section, key, value, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*{message}"):
        parse_params(raw)


def test_a_seed_beyond_32_bits_is_refused_before_any_stage_runs():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["seed"] = 2**70
    with pytest.raises(ConfigError, match="seed: Input should be less than or equal to"):
        parse_params(raw)
