"""Test-split scoring: dataset-level counts summed, per-image distribution, both post-processing variants."""
import numpy as np
import pandas as pd
import pytest

from lungseg import evaluation
from lungseg.data import collect_records, read_mask
from conftest import SOURCES, copy_pairs, real_pair_names


@pytest.fixture
def test_rows(tmp_path):
    folder = copy_pairs("montgomery", real_pair_names("montgomery", 1), tmp_path / "montgomery")
    other = copy_pairs("shenzhen", real_pair_names("shenzhen", 1), tmp_path / "shenzhen")
    return collect_records([folder, other], skip_bad=False)[0]


def everything_is_lung(inputs: np.ndarray) -> np.ndarray:
    return np.full((inputs.shape[0],) + inputs.shape[2:], 10.0, np.float32)


def test_scores_are_counted_at_full_resolution_and_summed_over_the_split(test_rows):
    inference = evaluation.Inference(everything_is_lung, 64, "none", 0.5, postprocess=False, batch_size=3)
    per_image = evaluation.score_split(test_rows, inference)
    truth = [read_mask(path) for path in test_rows["mask_path"]]
    assert list(per_image["truth_pixels"]) == [int(t.sum()) for t in truth]
    assert list(per_image["predicted_pixels"]) == [t.size for t in truth]
    expected = [2 * t.sum() / (t.sum() + t.size) for t in truth]
    assert np.allclose(per_image["dice"], expected)
    metrics = evaluation.split_metrics(per_image, "test")
    total_truth, total = sum(t.sum() for t in truth), sum(t.size for t in truth)
    assert metrics["test/dice"] == pytest.approx(2 * total_truth / (total_truth + total))  # not a mean of ratios
    assert metrics["test/images"] == 4 and metrics["test/dice_min"] == pytest.approx(min(expected))
    assert {"test/montgomery/dice", "test/shenzhen/dice", "test/postprocess_on/dice",
            "test/postprocess_off/dice"} <= set(metrics)


def test_the_chosen_variant_fills_the_headline_columns(test_rows):
    raw = evaluation.score_split(test_rows, evaluation.Inference(everything_is_lung, 64, "none", 0.5, False))
    post = evaluation.score_split(test_rows, evaluation.Inference(everything_is_lung, 64, "none", 0.5, True))
    assert (raw["dice"] == raw["dice_raw"]).all() and (post["dice"] == post["dice_post"]).all()
    assert (raw["dice_post"] == post["dice_post"]).all()


def test_cases_are_best_median_and_worst():
    per_image = pd.DataFrame({"name": ["a", "b", "c", "d"], "dice": [0.9, 0.99, 0.5, 0.95]})
    assert evaluation.pick_cases(per_image) == [("best", "b"), ("median", "a"), ("worst", "c")]


def test_one_image_scores_like_the_paper_equations():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 pixels
    prediction = np.zeros((4, 4), bool)
    prediction[1:3] = True  # 8 pixels, 4 shared
    scores = evaluation.score_masks(prediction, truth)
    assert scores["dice"] == 0.5 and scores["iou"] == pytest.approx(4 / 12)
