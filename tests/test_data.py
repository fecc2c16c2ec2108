import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungseg.augment import build_augmentations
from lungseg.config import load_params
from lungseg.data import (DataError, XrayDataset, assign_splits, build_loader, collect_records, find_pairs,
                          label_from_name, read_mask, split_counts)
from lungseg.runtime import imaging
from lungseg.runtime.decode import ImageReadError, read_grayscale
from conftest import REPO, SOURCES, copy_pairs, real_pair_names

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@pytest.fixture
def sources(tmp_path):
    """Two small real sources: 5 normal + 5 TB pairs each."""
    return [copy_pairs(s, real_pair_names(s, 5), tmp_path / s) for s in ("montgomery", "shenzhen")]


def test_labels_come_from_the_name():
    assert label_from_name("CHNCXR_0001_0") == "normal"
    assert label_from_name("MCUCXR_0104_1") == "tb"
    assert label_from_name("patient42") == "unlabelled"


def test_records_of_real_pairs(sources):
    records, problems = collect_records(sources, skip_bad=False)
    assert problems == []
    assert len(records) == 20
    assert set(records["source"]) == {"montgomery", "shenzhen"}
    assert records["lung_fraction"].between(0.05, 0.6).all()
    assert (records[["height", "width"]] == 512).all().all()


def test_real_lungs_fill_a_third_of_their_box_whatever_their_share_of_the_film(sources):
    from lungseg.data import column_range

    records, _ = collect_records(sources, skip_bad=False)
    low, high = column_range(records, "lung_box_share")
    # Lungs, the heart between them and the box's margin: narrower than the films' 0.05-0.6.
    assert 0.15 < low < 0.4 < high < 0.55


def test_split_is_deterministic_and_stratified(sources):
    records, _ = collect_records(sources, skip_bad=False)
    first = assign_splits(records, FRACTIONS, seed=1)
    again = assign_splits(records.sample(frac=1.0, random_state=0), FRACTIONS, seed=1).loc[records.index]
    assert first.equals(again)  # row order does not matter, only names and seed
    counts = records.assign(split=first).groupby(["source", "label", "split"]).size()
    for source in ("montgomery", "shenzhen"):
        for label in ("normal", "tb"):
            assert counts[(source, label, "train")] == 3
            assert counts[(source, label, "val")] == 1
            assert counts[(source, label, "test")] == 1


def test_changing_the_seed_changes_the_split(sources):
    records, _ = collect_records(sources, skip_bad=False)
    assert not assign_splits(records, FRACTIONS, seed=1).equals(assign_splits(records, FRACTIONS, seed=2))


def test_adding_a_source_keeps_the_existing_split(sources):
    records, _ = collect_records(sources[:1], skip_bad=False)
    both, _ = collect_records(sources, skip_bad=False)
    alone = assign_splits(records, FRACTIONS, seed=5)
    together = assign_splits(both, FRACTIONS, seed=5)[both["source"] == "montgomery"]
    assert alone.tolist() == together.tolist()


def test_empty_split_is_refused(sources):
    records, _ = collect_records(sources[:1], skip_bad=False)
    with pytest.raises(DataError, match="'val' is empty"):
        assign_splits(records.head(2), FRACTIONS, seed=0)


def test_split_counts_per_source(sources):
    records, _ = collect_records(sources, skip_bad=False)
    counts = split_counts(records.assign(split=assign_splits(records, FRACTIONS, seed=0)))
    assert counts["total"] == 20 and counts["train"]["total"] == 12 and counts["test"]["shenzhen"] == 2


def first_pair(source_dir):
    image = sorted((source_dir / "images").iterdir())[0]
    return image, source_dir / "masks" / f"{image.stem}.png"


def test_corrupt_image_is_named(sources):
    image, _ = first_pair(sources[0])
    image.write_bytes(image.read_bytes()[:400])  # a JPEG cut short
    with pytest.raises(ImageReadError, match=image.name):
        collect_records(sources, skip_bad=False)


def test_not_an_image_is_named(sources):
    image, _ = first_pair(sources[0])
    image.write_text("hello")
    with pytest.raises(ImageReadError, match=f"{image.name}.*not an image"):
        collect_records(sources, skip_bad=False)


def test_size_mismatch_is_named(sources):
    _, mask = first_pair(sources[1])
    Image.open(mask).resize((256, 256), Image.NEAREST).save(mask)
    with pytest.raises(DataError, match=f"{mask.name}.*256x256 differs from image size 512x512"):
        collect_records(sources, skip_bad=False)


def test_non_binary_mask_is_named(sources):
    _, mask = first_pair(sources[0])
    values = np.asarray(Image.open(mask)).copy()
    values[:10, :10] = 128
    Image.fromarray(values).save(mask)
    with pytest.raises(ImageReadError, match=f"{mask.name}.*not binary"):
        collect_records(sources, skip_bad=False)


def test_empty_mask_is_named(sources):
    _, mask = first_pair(sources[0])
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(mask)
    with pytest.raises(DataError, match=f"{mask.name}.*empty"):
        collect_records(sources, skip_bad=False)


def test_image_without_mask_and_mask_without_image(sources):
    image, mask = first_pair(sources[0])
    mask.unlink()
    with pytest.raises(DataError, match=f"{image.name}: image has no mask"):
        collect_records(sources, skip_bad=False)
    other_image, _ = first_pair(sources[1])
    other_image.unlink()
    _, problems = find_pairs(sources)
    assert any("mask has no image" in p for p in problems)


def test_skip_mode_lists_bad_pairs_and_keeps_the_rest(sources):
    _, mask = first_pair(sources[0])
    mask.write_text("broken")
    records, problems = collect_records(sources, skip_bad=True)
    assert len(records) == 19
    assert len(problems) == 1 and mask.name in problems[0]


def test_missing_or_empty_source_folder(sources, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        collect_records([tmp_path / "nowhere"], skip_bad=False)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="holds no PNG"):
        collect_records([tmp_path / "empty"], skip_bad=False)


def test_duplicate_names_across_sources(sources, tmp_path):
    clone = copy_pairs("montgomery", real_pair_names("montgomery", 1), tmp_path / "again")
    with pytest.raises(DataError, match="also used by"):
        collect_records([sources[0], clone], skip_bad=False)


def test_rgb_and_16_bit_images_are_converted_explicitly(tmp_path, real_xray):
    image, mask = real_xray
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.array_equal(read_grayscale(tmp_path / "rgb.png"), image)
    assert np.array_equal(read_grayscale(tmp_path / "deep.png"), image)
    Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "mask_rgb.png")
    assert np.array_equal(read_mask(tmp_path / "mask_rgb.png"), mask)


def test_png_and_jpeg_images_mix_in_one_source(sources):
    image, _ = first_pair(sources[0])
    Image.open(image).save(image.with_suffix(".png"))
    image.unlink()
    records, problems = collect_records(sources, skip_bad=False)
    assert problems == [] and len(records) == 20
    assert {Path(p).suffix for p in records["image_path"]} == {".png", ".jpg"}


def test_two_images_of_one_name_are_refused_by_name(sources):
    image, _ = first_pair(sources[0])
    Image.open(image).save(image.with_suffix(".png"))
    with pytest.raises(DataError, match=f"{image.stem}.png: {image.name} has the same name"):
        collect_records(sources, skip_bad=False)


def _batches_within(loader, seconds: float = 60) -> list[torch.Tensor]:
    """The loader's images, batch by batch; fails instead of hanging when its workers deadlock."""
    images: list[torch.Tensor] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            images.extend(batch[0] for batch in loader)
        except BaseException as failure:  # raised again in the test, not lost in the thread
            failures.append(failure)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"the loader had not finished within {seconds} s: its workers hang"
    if failures:
        raise failures[0]
    return images


def test_loader_workers_draw_their_own_augmentations(real_xray):
    params = load_params(REPO / "params.yaml")
    cv2.setNumThreads(2)  # a pool to inherit, even on a one-core machine
    try:
        # A full-size warp puts OpenCV's thread pool to work in this process before the workers fork, as the
        # training process's own OpenCV calls do: a worker that then sets OpenCV's thread count deadlocks
        # (OpenCV 5.0), so the workers leave it alone and use the pool they inherit (CLAHE in the intensity step).
        image = cv2.warpAffine(real_xray[0], np.float32([[1, 0, 3], [0, 1, 2]]), real_xray[0].shape[::-1])
        image, mask = imaging.resize_image(image, 64), imaging.resize_mask_soft(real_xray[1], 64)
        dataset = XrayDataset(np.stack([image] * 4), np.stack([mask] * 4), params.model.intensity,
                              build_augmentations(params.augment))
        # Unshuffled batches of one: items 0 and 2 come from worker 0, items 1 and 3 from worker 1.
        first, second = _batches_within(build_loader(dataset, 1, False, 0, num_workers=2))[:2]
        again = _batches_within(build_loader(dataset, 1, False, 0, num_workers=2))[:2]
        other_seed = _batches_within(build_loader(dataset, 1, False, 1, num_workers=2))[:2]
    finally:
        cv2.setNumThreads(-1)
    assert not torch.equal(first, second)  # forked copies of one random state would draw the same
    assert torch.equal(again[0], first) and torch.equal(again[1], second)  # the seeded loader repeats them
    assert not torch.equal(other_seed[0], first)  # and the loader's seed, not the worker's number, sets them
