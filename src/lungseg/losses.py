"""Training losses: BCEWithLogits, optionally plus a soft Dice term."""
from __future__ import annotations

import torch
from torch import nn

from lungseg.config import TrainConfig


class BCEDiceLoss(nn.Module):
    """BCEWithLogitsLoss + dice_weight * (1 - soft Dice over the batch). Targets may be soft (0..1)."""

    def __init__(self, dice_weight: float, smooth: float = 1.0):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.dice_weight, self.smooth = dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()  # (B, 1, S, S); loss in fp32 under autocast
        loss = self.bce(logits, target)
        if self.dice_weight > 0:
            probabilities = torch.sigmoid(logits)
            intersection = (probabilities * target).sum()
            dice = (2 * intersection + self.smooth) / (probabilities.sum() + target.sum() + self.smooth)
            loss = loss + self.dice_weight * (1 - dice)
        return loss


def build_loss(config: TrainConfig) -> nn.Module:
    return BCEDiceLoss(config.dice_weight)
