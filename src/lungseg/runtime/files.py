"""Writing result files safely: atomically, under hidden temporary names, with the caller's umask.

A file appears under its final name only when it is complete: it is written to `.lungseg-tmp-*` in the same
folder, then renamed. A failed write (a full disk, an unwritable folder) removes its temporary and raises
OutputError naming the file; a kill leaves at most hidden temporaries, which `clear_temporaries` removes and
input listing never picks up.
"""
from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

from lungseg.errors import UserError

TEMPORARY_PREFIX = ".lungseg-tmp-"


class OutputError(UserError, OSError):
    """A result cannot be written (full disk, no permission, a path below a regular file, ...)."""


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically; mode 0666 minus the umask, like any file the user's tools create."""
    path = Path(path)
    temporary = path.parent / f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}-{path.name}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before it has its name: a power cut leaves no empty result
        os.replace(temporary, path)
    except OSError as err:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # the folder itself is unusable: there is no temporary to remove
            pass
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None


def write_text(path: str | Path, text: str) -> None:
    """UTF-8; a file name that is not valid UTF-8 (held by Python as surrogates) is written as its own bytes."""
    write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def write_json(path: str | Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (H, W) / (H, W, 3) or uint16 (H, W) array as PNG bytes.

    Compression level 1: masks and overlays compress nearly as well as at PIL's default 6, several times faster.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_png(path: str | Path, array: np.ndarray) -> None:
    write_bytes(path, png_bytes(array))


def write_jpeg(path: str | Path, array: np.ndarray, quality: int = 90) -> None:
    """A uint8 (H, W) / (H, W, 3) array as JPEG: for pictures people look at, where PNG would be 5x larger."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    write_bytes(path, buffer.getvalue())


def clear_temporaries(folder: str | Path, spare_folders_holding: str | None = None) -> int:
    """Remove the hidden temporaries an interrupted run left in `folder` (and below); returns how many. A
    sub-folder holding a file named `spare_folders_holding` (another run's claim on it) is left alone, and so is
    everything below it."""
    removed = 0
    for root, folders, names in os.walk(folder):
        if spare_folders_holding and spare_folders_holding in names and Path(root) != Path(folder):
            folders[:] = []
            continue
        for name in names:
            leftover = Path(root) / name
            if name.startswith(TEMPORARY_PREFIX) and leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed
