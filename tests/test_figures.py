"""Figures are files a person looks at: they must be written, be pictures, and not need a display."""
import numpy as np
from PIL import Image

from lungseg import figures


def test_overlay_tints_only_the_masked_pixels():
    image = np.full((10, 10), 100, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    picture = figures.overlay(image, [mask], [figures.TRUTH_COLOUR])
    assert picture.shape == (10, 10, 3) and picture.dtype == np.uint8
    assert (picture[5:] == 100).all() and (picture[:5, :, 1] > 100).all()


def test_grid_places_tiles_row_by_row():
    tiles = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    canvas = figures.grid(tiles, columns=3)
    assert canvas.shape == (2 * 6, 3 * 6, 3)
    assert (canvas[6:10, 6:10] == 4).all()


def test_curves_histogram_and_cases_are_written_as_pngs(tmp_path, real_xray):
    history = [{"epoch": e, **{f"{s}/{m}": 0.5 + 0.1 * e for s in ("train", "val") for m in ("loss", "iou", "dice")}}
               for e in (1, 2, 3)]
    figures.training_curves(history, str(tmp_path / "curves.png"))
    figures.dice_histogram(np.array([0.9, 0.95, 0.97]), str(tmp_path / "hist.png"))
    image, mask = real_xray
    figures.cases_figure([("best", image, mask, mask), ("worst", image, mask, ~mask)], str(tmp_path / "cases.png"))
    for name in ("curves.png", "hist.png", "cases.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
