"""Tables of the training side: the manifest of prepared pairs and CSV outputs (pandas), written atomically."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.errors import UserError
from lungseg.runtime import files

MANIFEST_COLUMNS = ["name", "source", "label", "split", "lung_fraction", "lung_box_share", "height", "width",
                    "image_path", "mask_path"]


class ManifestError(UserError, ValueError):
    """The manifest is not one that prepare wrote."""


def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    files.write_text(path, table.to_csv(index=False, float_format="%.6f"))


def write_manifest(path: str | Path, manifest: pd.DataFrame) -> None:
    write_csv(path, manifest[MANIFEST_COLUMNS])


def read_manifest(path: str | Path) -> pd.DataFrame:
    manifest = pd.read_csv(path)
    missing = set(MANIFEST_COLUMNS) - set(manifest.columns)
    if missing:
        raise ManifestError(f"{path}: manifest lacks columns {sorted(missing)}")
    return manifest


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest's rows of one split (train, val or test)."""
    return manifest[manifest["split"] == split]
