"""The GPU check's dry run (2 epochs, 64 px, a few images, CPU) goes through every step the real check takes,
so the script cannot rot between the sessions that have a GPU."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def test_the_dry_run_trains_scores_and_exports_both_recipes(tmp_path):
    scratch = tmp_path / "scratch"  # the check's own temporary folder, which must not outlive it
    scratch.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--dry-run", "--out",
                             str(tmp_path), "--wheels", str(tmp_path / "no-wheels")],
                            cwd=REPO, capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not list(scratch.glob("lungseg-gpu-check-*")), "the check left its checkpoints behind"
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["recipes"]) == {"paper-resnet101", "lungseg-resnet101-gpu"}
    for measured in report["recipes"].values():
        assert measured["epochs_run"] == 2 and measured["images_per_second"] > 0
        assert 0 <= measured["test"]["test/dice"] <= 1 and "test/montgomery/dice" in measured["test"]
        assert "test/dice_worst5pct" in measured["test"] and measured["training_gflop_per_image"] > 0
        assert "checkpoint" not in measured  # no path into the removed working folder
    assert report["export"]["export/mask_agreement"] > 0.9999
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "gpu_check.log").read_text()


def test_a_terminated_check_removes_its_working_folder(tmp_path):
    """SIGTERM (what `timeout` sends) mid-run: the check stops with 143 and leaves no checkpoints behind."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    check = subprocess.Popen([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--dry-run", "--out",
                              str(tmp_path), "--wheels", str(tmp_path / "no-wheels")],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 300
    while not list(scratch.glob("lungseg-gpu-check-*")) and time.monotonic() < deadline and check.poll() is None:
        time.sleep(0.2)
    assert list(scratch.glob("lungseg-gpu-check-*")), "the check never made its working folder"
    time.sleep(3)  # into the work: imports, data, the first recipe
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=120) == 128 + signal.SIGTERM
    assert not list(scratch.glob("lungseg-gpu-check-*")), "a terminated check left its working folder"
