"""Finding and validating image/mask pairs, the stratified split, and the training Dataset."""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from lungseg.errors import UserError
from lungseg.runtime import imaging
from lungseg.runtime.decode import ImageReadError, read_grayscale

LABELS = {"0": "normal", "1": "tb"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # X-rays in a source folder; masks are always lossless PNG
SPLITS = ("train", "val", "test")


class DataError(UserError, ValueError):
    """A problem with the source data; the message names the file or folder and the problem."""


@dataclass(frozen=True)
class Pair:
    name: str
    source: str
    image_path: Path
    mask_path: Path


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary lung mask as bool (H, W); fails unless the file holds exactly two levels (or all background)."""
    path = Path(path)
    values = read_grayscale(path)
    levels = np.unique(values)
    if len(levels) > 2:
        raise ImageReadError(f"{path}: mask is not binary ({len(levels)} distinct values, expected 2)")
    if len(levels) == 2 and levels[0] != 0:
        raise ImageReadError(f"{path}: mask background must be 0, found levels {levels.tolist()}")
    return values > 0


def label_from_name(name: str) -> str:
    """'CHNCXR_0001_0' -> 'normal', '..._1' -> 'tb'; names without the suffix are 'unlabelled'."""
    suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
    return LABELS.get(suffix, "unlabelled")


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files by name without suffix; two files of one name (a.png and a.jpg) are refused by name."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise DataError(f"{path}: {found[path.stem].name} has the same name; keep one of the two")
            found[path.stem] = path
    return found


def find_pairs(source_dirs: list[Path]) -> tuple[list[Pair], list[str]]:
    """Match images/<name>.png|.jpg|.jpeg with masks/<name>.png in every source folder.

    Returns the pairs and the problems found (an image without mask or a mask without image).
    A missing or empty source folder, or a name used by two sources, is raised at once.
    """
    pairs: list[Pair] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for source_dir in source_dirs:
        source_dir = Path(source_dir)
        image_dir, mask_dir = source_dir / "images", source_dir / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: source folder does not exist (expected images/ and masks/ under it)")
        images, masks = _images_by_stem(image_dir), _images_by_stem(mask_dir)
        if not images and not masks:
            raise DataError(f"{source_dir}: source folder holds no PNG/JPEG images")
        for stem in sorted(set(images) - set(masks)):
            problems.append(f"{images[stem]}: image has no mask (expected {mask_dir / (stem + '.png')})")
        for stem in sorted(set(masks) - set(images)):
            problems.append(f"{masks[stem]}: mask has no image (expected {image_dir / (stem + '.png')})")
        for stem in sorted(set(images) & set(masks)):
            if stem in seen:
                raise DataError(f"{images[stem]}: name {stem!r} is also used by {seen[stem]}; names must be unique")
            seen[stem] = images[stem]
            pairs.append(Pair(stem, source_dir.name, images[stem], masks[stem]))
    return pairs, problems


def validate_pair(pair: Pair) -> dict:
    """Read both files and check them; returns a manifest row or raises ImageReadError/DataError."""
    image = read_grayscale(pair.image_path)
    mask = read_mask(pair.mask_path)
    if image.shape != mask.shape:
        raise DataError(
            f"{pair.mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image size {image.shape[1]}x{image.shape[0]} ({pair.image_path})"
        )
    lung_fraction = float(mask.mean())
    if lung_fraction == 0.0:
        raise DataError(f"{pair.mask_path}: mask is empty (no lung pixels)")
    return {
        "name": pair.name,
        "source": pair.source,
        "label": label_from_name(pair.name),
        "lung_fraction": lung_fraction,
        "lung_box_share": imaging.lung_box_share(mask, imaging.regions(mask)),
        "height": image.shape[0],
        "width": image.shape[1],
        "image_path": str(pair.image_path),
        "mask_path": str(pair.mask_path),
    }


def collect_records(source_dirs: list[Path], skip_bad: bool) -> tuple[pd.DataFrame, list[str]]:
    """Find and validate every pair. With skip_bad=False the first problem raises; else problems are listed."""
    pairs, problems = find_pairs(source_dirs)
    if problems and not skip_bad:
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    rows = []
    for pair in pairs:
        try:
            rows.append(validate_pair(pair))
        except (ImageReadError, DataError) as err:
            if not skip_bad:
                raise
            problems.append(str(err))
    if not rows:
        raise DataError(f"no usable image/mask pairs in {', '.join(str(s) for s in source_dirs)}")
    return pd.DataFrame(rows), problems


def assign_splits(records: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Deterministic split stratified by (source, label).

    Each stratum is shuffled by a generator seeded from the seed and the stratum's name, so the split depends
    only on the seed, the fractions and the file names: not on image size, training params, or on other
    sources being added.
    """
    split = pd.Series("", index=records.index, dtype=object)
    for (source, label), group in records.groupby(["source", "label"], sort=True):
        stratum_seed = [seed, zlib.crc32(f"{source}/{label}".encode())]
        order = group.sort_values("name").index.to_numpy()
        order = order[np.random.default_rng(stratum_seed).permutation(len(order))]
        n_val = int(round(len(order) * fractions["val"]))
        n_test = int(round(len(order) * fractions["test"]))
        split[order[:n_test]] = "test"
        split[order[n_test : n_test + n_val]] = "val"
        split[order[n_test + n_val :]] = "train"
    for name in SPLITS:
        if not (split == name).any():
            raise DataError(f"split {name!r} is empty with {len(records)} pairs and fractions {fractions}")
    return split


def split_counts(manifest: pd.DataFrame) -> dict:
    """Counts per split and per source, for metrics/data.json."""
    counts: dict = {"total": int(len(manifest))}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        counts[split] = {"total": int(len(part))}
        for source, n in part.groupby("source").size().items():
            counts[split][str(source)] = int(n)
    return counts


def column_range(rows: pd.DataFrame, column: str) -> tuple[float, float]:
    """The smallest and largest value of a manifest column over the rows (the model card's plausibility ranges
    of lung_fraction and lung_box_share)."""
    return float(rows[column].min()), float(rows[column].max())


def source_description(folder: Path) -> dict:
    """A source folder's SOURCE.md front matter (between '---' lines): name, licence, citation, ...;
    {"licence": "not stated"} when the folder has none."""
    described = {"source": folder.name}
    text = (folder / "SOURCE.md").read_text() if (folder / "SOURCE.md").is_file() else ""
    if text.startswith("---\n") and "\n---" in text[4:]:
        front = yaml.safe_load(text[4 : text.index("\n---", 4)])
        if isinstance(front, dict):
            described.update({str(k): v for k, v in front.items()})
    described.setdefault("licence", "not stated (no front matter in SOURCE.md)")
    return described


def source_licences(manifest: pd.DataFrame) -> list[dict]:
    """The description of every source folder the manifest's pairs come from."""
    folders = sorted({Path(path).parent.parent for path in manifest["image_path"]})
    return [source_description(folder) for folder in folders]


def load_arrays(manifest: pd.DataFrame, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read the rows' pairs resized to the model: images (N, S, S) uint8 and soft masks (N, S, S) uint8."""
    images = np.empty((len(manifest), image_size, image_size), dtype=np.uint8)
    masks = np.empty_like(images)
    for i, row in enumerate(manifest.itertuples()):
        images[i] = imaging.resize_image(read_grayscale(row.image_path), image_size)
        masks[i] = imaging.resize_mask_soft(read_mask(row.mask_path), image_size)
    return images, masks


class XrayDataset(Dataset):
    """In-memory X-rays with an optional albumentations transform, then the model's intensity normalisation
    (after augmentation, as deployment normalises whatever grey levels a film arrives with).

    Items are (image (1, S, S) float32 in 0..1, mask (1, S, S) float32 lung fraction in 0..1).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, intensity: str, transform=None):
        self.images, self.masks, self.intensity, self.transform = images, masks, intensity, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = imaging.normalise_intensity(np.ascontiguousarray(image), self.intensity)
        image = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)[None]
        mask = torch.from_numpy(np.ascontiguousarray(mask)).float().div_(255.0)[None]
        return image, mask


def _seed_worker_transform(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the loader's seeded generator."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(info.seed % 2**32)


def worker_count(setting: int | str, device_type: str, cores: int | None = None) -> int:
    """train.num_workers: a number, or 'auto': none on a CPU (the cores train), one per spare core on a GPU
    host (augmentation in worker processes keeps the GPU fed), at most 8."""
    if setting != "auto":
        return int(setting)
    cores = cores or len(os.sched_getaffinity(0))
    return 0 if device_type == "cpu" else max(1, min(8, cores - 1))


def build_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, sampler: Sampler | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of `dataset`; a given sampler (e.g. distributed) decides the order instead of `shuffle`. Worker
    processes live for the whole run (persistent), and pinned memory lets copies to a GPU overlap compute."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker_transform if num_workers > 0 else None,
    )
