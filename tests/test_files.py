"""Result files appear complete or not at all, with the user's umask, and a failed write names its file."""
import os
import stat

import numpy as np
import pytest

from lungseg.runtime import files


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    files.write_png(tmp_path / "a" / "mask.png", np.zeros((4, 4), np.uint8))
    files.write_json(tmp_path / "a" / "x.json", {"k": 1})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mask.png", "x.json"]
    assert files.read_json(tmp_path / "a" / "x.json") == {"k": 1}


def test_files_get_the_callers_umask_not_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        files.write_text(tmp_path / "report.csv", "a\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.csv").stat().st_mode) == 0o644


def test_a_failed_write_names_the_file_and_cleans_up(tmp_path):
    (tmp_path / "plain").write_text("a regular file")
    with pytest.raises(files.OutputError, match="plain/mask.png: cannot write"):
        files.write_png(tmp_path / "plain" / "mask.png", np.zeros((2, 2), np.uint8))


def test_leftover_temporaries_of_a_killed_run_are_cleared(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f"{files.TEMPORARY_PREFIX}abc-mask.png").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"done")
    assert files.clear_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.png"]


def test_a_sub_folder_another_run_holds_keeps_its_temporaries(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".claim").write_text("")
    (tmp_path / "sub" / f"{files.TEMPORARY_PREFIX}x-a.png").write_bytes(b"being written")
    (tmp_path / f"{files.TEMPORARY_PREFIX}y-b.png").write_bytes(b"left by a killed run")
    assert files.clear_temporaries(tmp_path, spare_folders_holding=".claim") == 1
    assert (tmp_path / "sub" / f"{files.TEMPORARY_PREFIX}x-a.png").exists()
    assert files.clear_temporaries(tmp_path) == 1
