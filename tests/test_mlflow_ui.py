"""The MLflow UI as a new user opens it (`lungseg ui`), in a real browser, on a store holding two runs made the
way the train and evaluate stages make them: it lands on the training runs, lists both with their test Dice,
and compares them."""
import os
import subprocess
import sys

import pytest

from browser import browser_page
from conftest import REPO, free_port, wait_for_http

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tiny runs in a fresh SQLite store, logged through lungseg.tracking as the stages log them."""
    root = tmp_path_factory.mktemp("store")
    script = """
import os, sys
from pathlib import Path
from lungseg import tracking
root = Path(sys.argv[1])
uri = tracking.resolve_tracking_uri({}, root)
for name, dice in (("lr-high", 0.9412), ("lr-low", 0.9587)):
    with tracking.training_run(uri, {"DVC_EXP_NAME": name}, root, None, {"train.learning_rate": name},
                               root / "params.yaml", {"training_precision": "float32"}) as run_id:
        for epoch in (1, 2):
            tracking.log_metrics({"val/dice": dice - 0.01 / epoch}, step=epoch)
    tracking.add_to_run(run_id, {"train.learning_rate": name}, {"test/dice": dice}, [], {}, root)
"""
    (root / "params.yaml").write_text("seed: 1\n")
    subprocess.run([sys.executable, "-c", script, str(root)], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return root


@pytest.fixture(scope="module")
def ui(store):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lungseg.cli", "ui", "--port", str(port)], cwd=store,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wait_for_http(f"http://127.0.0.1:{port}/health", process, timeout=120)
    yield port
    process.terminate()
    process.wait(timeout=30)


def test_the_ui_lands_on_the_training_runs_and_compares_them(ui, store):
    from lungseg import tracking

    url = tracking.ui_url("127.0.0.1", ui, tracking.resolve_tracking_uri({}, store), {})
    with browser_page(width=1800, height=1000) as page:  # wide enough for a metric column beside the defaults
        page.goto(url)
        page.get_by_text("lr-high").first.wait_for(timeout=60_000)
        assert page.get_by_text("Model training").first.is_visible()  # the training view, not GenAI traces
        page.get_by_role("button", name="Columns").click()
        page.get_by_text("test/dice").first.click()
        page.keyboard.press("Escape")
        page.get_by_text("0.9587").first.wait_for()
        table = page.inner_text("body")
        assert "lr-low" in table and "0.9587" in table and "0.9412" in table
        for row in page.get_by_label("Press Space to toggle row selection").all():
            row.check()
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Comparing 2 Runs").first.wait_for(timeout=60_000)
        compared = page.inner_text("body")
        assert "test/dice" in compared and "0.959" in compared and "0.941" in compared
