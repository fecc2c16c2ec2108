import numpy as np
import pytest
import torch

from lungseg.metrics import SegmentationScores, confusion_counts, iou_dice, summarize


def masks(*rows: str) -> torch.Tensor:
    """Masks drawn as strings: '#' is lung."""
    return torch.tensor([[c == "#" for c in row] for row in rows])[None]


def test_hand_counted_case():
    truth = masks("##..", "##..")  # 4 pixels
    prediction = masks("###.", "#...")  # 4 pixels, 3 shared
    counts = confusion_counts(prediction, truth)
    assert counts.tolist() == [[3, 4, 4]]
    iou, dice = iou_dice(counts.numpy()[0])
    assert iou == pytest.approx(3 / 5)  # union = 4 + 4 - 3
    assert dice == pytest.approx(2 * 3 / 8)


def test_empty_prediction_scores_zero():
    iou, dice = iou_dice(confusion_counts(masks("....", "...."), masks("#...", ".##.")).numpy()[0])
    assert (iou, dice) == (0.0, 0.0)


def test_empty_truth_scores_zero():
    iou, dice = iou_dice(confusion_counts(masks("#...", "...."), masks("....", "....")).numpy()[0])
    assert (iou, dice) == (0.0, 0.0)


def test_both_empty_agree_perfectly():
    iou, dice = iou_dice(confusion_counts(masks("....",), masks("....",)).numpy()[0])
    assert (iou, dice) == (1.0, 1.0)


def test_full_masks():
    iou, dice = iou_dice(confusion_counts(masks("##", "##"), masks("##", "##")).numpy()[0])
    assert (iou, dice) == (1.0, 1.0)


def test_dataset_level_sums_counts_instead_of_averaging():
    scores = SegmentationScores()
    scores.update(masks("##", "##"), masks("##", "##"))  # perfect, 4 pixels
    scores.update(masks("#.", ".."), masks("##", "##"))  # 1 of 4 found
    per_image = iou_dice(scores.per_image_counts)[1]
    assert per_image.tolist() == pytest.approx([1.0, 2 / 5])
    assert scores.dataset_scores()["dice"] == pytest.approx(2 * 5 / (8 + 5))  # not the mean 0.7


def test_summarize_worst_share():
    values = np.linspace(0.0, 1.0, 40)  # worst 5% of 40 -> the 2 lowest
    summary = summarize(values)
    assert summary["min"] == 0.0
    assert summary["worst5pct"] == pytest.approx(values[:2].mean())
    assert summary["mean"] == pytest.approx(0.5)
