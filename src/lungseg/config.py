"""params.yaml -> typed, validated configuration.

Every section is a strict pydantic model: an unknown key or a bad value is rejected with a message that
names the key, so a typo in params.yaml fails before any long work starts. Numbers must be finite (no .inf or
.nan), integers must be integers (`epochs: true` is refused), and true/false is not a number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, field_validator, \
    model_validator

from lungseg.encoders import ENCODER_CHANNELS
from lungseg.errors import UserError

MAX_SEED = 2**31 - 1  # numpy's and albumentations' generators take 32-bit seeds; epochs are added to it


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


Real = Annotated[float, BeforeValidator(_not_bool)]

KeepWeights = Literal["best_val", "last"]  # train.keep_weights: the highest-val-Dice epoch, or the last


class ConfigError(UserError, ValueError):
    """params.yaml is unreadable or holds an unknown key or a bad value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SplitConfig(_Strict):
    """Fractions of each (source, label) stratum that go to each split."""

    train: Real = Field(gt=0, lt=1)
    val: Real = Field(gt=0, lt=1)
    test: Real = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class PrepareConfig(_Strict):
    sources: list[str] = Field(min_length=1)
    split: SplitConfig
    on_bad_pair: Literal["fail", "skip"] = "fail"


def _ordered_pair(name: str, low_bound: float, value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if not low_bound < low <= high:
        raise ValueError(f"{name} must be {low_bound} < low <= high, got {list(value)}")
    return value


class AugmentConfig(_Strict):
    rotate_limit: Real = Field(ge=0, le=45)
    scale_range: tuple[Real, Real]
    shift_limit: Real = Field(ge=0, lt=0.5)
    affine_p: Real = Field(ge=0, le=1)
    white_border_share: Real = Field(ge=0, le=1)
    brightness_limit: Real = Field(ge=0, lt=1)
    contrast_range: tuple[Real, Real]
    brightness_contrast_p: Real = Field(ge=0, le=1)
    gamma_limit: tuple[Real, Real]
    gamma_p: Real = Field(ge=0, le=1)
    marker_p: Real = Field(ge=0, le=1)
    horizontal_flip_p: Real = Field(ge=0, le=1)
    preview_count: StrictInt = Field(ge=1, le=64)

    @field_validator("gamma_limit", "scale_range", "contrast_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float], info) -> tuple[float, float]:
        return _ordered_pair(info.field_name, -1 if info.field_name == "contrast_range" else 0, value)


class ModelConfig(_Strict):
    encoder: Literal[tuple(ENCODER_CHANNELS)]  # type: ignore[valid-type]
    encoder_weights: str | None = None
    decoder_channels: tuple[StrictInt, StrictInt, StrictInt, StrictInt, StrictInt]
    batch_norm: bool
    intensity: Literal["none", "equalize_histogram", "equalize_adaptive"] = "none"
    input_mean: Real
    input_std: Real = Field(gt=0)

    @field_validator("decoder_channels")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(c <= 0 for c in value):
            raise ValueError(f"decoder_channels must be positive, got {list(value)}")
        return value


class TrainConfig(_Strict):
    image_size: StrictInt = Field(ge=64)
    epochs: StrictInt = Field(gt=0)
    batch_size: StrictInt = Field(gt=0)
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: Real = Field(gt=0)
    weight_decay: Real = Field(ge=0)
    scheduler: Literal["constant", "cosine", "onecycle"]
    dice_weight: Real = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    mixed_precision: bool
    channels_last: bool
    num_threads: StrictInt = Field(ge=0)
    num_workers: Literal["auto"] | Annotated[StrictInt, Field(ge=0)]
    nproc: StrictInt = Field(ge=1)
    keep_weights: KeepWeights

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        # The encoder halves the resolution five times; skip connections need exact matches.
        if value % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the encoder downsamples 5 times), got {value}")
        return value

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> "TrainConfig":
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of nproc {self.nproc}: "
                             f"each optimizer step's batch is split evenly across the processes")
        return self


class EvaluateConfig(_Strict):
    threshold: Real = Field(gt=0, lt=1)
    postprocess: bool
    lung_crop_margin: Annotated[Real, Field(ge=0, le=1)] | None
    batch_size: StrictInt = Field(gt=0)


class ExportConfig(_Strict):
    opset: StrictInt = Field(ge=13)
    parity_images: StrictInt = Field(gt=0)
    max_logit_diff: Real = Field(gt=0)
    min_mask_agreement: Real = Field(gt=0, le=1)


class RobustnessConfig(_Strict):
    max_images: StrictInt = Field(ge=0)  # test images scored under every perturbation; 0 = the whole split


class Params(_Strict):
    """The whole of params.yaml."""

    seed: StrictInt = Field(ge=0, le=MAX_SEED)
    prepare: PrepareConfig
    augment: AugmentConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    robustness: RobustnessConfig


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; raises ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            key = ".".join(str(part) for part in item["loc"])
            problems.append(f"  {key}: {item['msg']}")
        raise ConfigError(f"{source}: invalid parameters\n" + "\n".join(problems)) from None


def load_params(path: str | Path) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read parameters: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return parse_params(raw, source=str(path))


def flat_params(params: Params) -> dict[str, object]:
    """All params with dotted names ('train.epochs'), as the MLflow runs record them."""
    return flatten(params.model_dump(mode="json"))


def flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}, for experiment trackers."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
