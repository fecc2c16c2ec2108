"""BCE + soft Dice: the loss the headline numbers are trained with."""
import pytest
import torch
from torch import nn

from lungseg.config import load_params
from lungseg.losses import BCEDiceLoss, build_loss
from conftest import REPO


def test_bce_alone_equals_torch_bce_with_logits():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert torch.allclose(BCEDiceLoss(dice_weight=0)(logits, target), nn.BCEWithLogitsLoss()(logits, target))


def test_dice_term_is_zero_for_a_perfect_confident_prediction_and_grows_with_errors():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50  # sigmoid ~ 0 or 1
    loss = BCEDiceLoss(dice_weight=1.0)
    assert loss(perfect, target).item() == pytest.approx(0, abs=1e-6)
    wrong = -perfect
    assert loss(wrong, target) > loss(torch.zeros_like(perfect), target) > loss(perfect, target)


def test_soft_targets_and_bfloat16_logits_give_a_float32_loss():
    logits = torch.randn(2, 1, 8, 8).to(torch.bfloat16)
    target = torch.rand(2, 1, 8, 8)  # lung fraction per pixel after resizing
    value = BCEDiceLoss(dice_weight=1.0)(logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_factory_follows_params():
    config = load_params(REPO / "params.yaml").train
    assert build_loss(config).dice_weight == config.dice_weight
