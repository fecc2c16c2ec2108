"""The README's MLflow picture: two runs of this repository's store compared in the MLflow UI, as a user sees
them after ticking both and pressing Compare. Starts `lungseg ui` on the store, opens MLflow's compare page for
the two runs in headless Chromium (Debian's chromium package, driven by Playwright), plots their test and
robustness scores side by side and saves a screenshot.

    .venv/bin/dvc exp run -n one-pass -S evaluate.lung_crop_margin=null   # after dvc repro: a run nested under it
    .venv/bin/python tools/mlflow_compare.py repro-55317199 one-pass --output docs/mlflow_compare.png
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from lungseg import tracking

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMIUM_FLAGS  # the tests' headless-Chromium flags: one home for them

PLOTTED_METRICS = ["test/dice", "test/iou", "test/dice_worst5pct", "test/montgomery/dice", "test/shenzhen/dice",
                   "robustness/largest_dice_drop"]


def run_ids(tracking_uri: str, names: list[str]) -> tuple[str, list[str]]:
    """The experiment id and the id of each named run (the newest run of that name)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(tracking.experiment_name(os.environ))
    if experiment is None:
        sys.exit(f"{tracking_uri}: no experiment {tracking.experiment_name(os.environ)!r}")
    ids = []
    for name in names:
        found = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            sys.exit(f"{tracking_uri}: no run named {name!r}")
        ids.append(found[0].info.run_id)
    return experiment.experiment_id, ids


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"lungseg ui stopped: {process.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"lungseg ui did not answer {url} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs=2, help="two run names (DVC experiment names, or repro-<commit>)")
    parser.add_argument("--output", default="docs/mlflow_compare.png")
    parser.add_argument("--port", type=int, default=5123)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    uri = tracking.resolve_tracking_uri(os.environ, Path.cwd())
    experiment_id, ids = run_ids(uri, args.runs)
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id])})
    server = subprocess.Popen([sys.executable, "-m", "lungseg.cli", "ui", "--port", str(args.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{args.port}/health", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 940})
            page.goto(f"http://127.0.0.1:{args.port}/#/compare-runs?{query}")
            page.get_by_text("Comparing 2 Runs").first.wait_for(timeout=60_000)
            page.get_by_text("Run details").first.wait_for(timeout=60_000)
            if page.get_by_role("button", name="Close").count():
                page.get_by_role("button", name="Close").first.click()  # MLflow's assistant panel
            # The parallel-coordinates plot over what a reader compares first: test scores and robustness.
            page.get_by_role("button", name="Clear All").click()
            metrics_box = page.locator("input[role=combobox]").nth(1)
            for metric in PLOTTED_METRICS:
                metrics_box.click()
                metrics_box.fill(metric)
                page.get_by_title(metric, exact=True).first.click()
            page.keyboard.press("Escape")
            time.sleep(2)  # let the plot finish drawing
            page.screenshot(path=args.output, full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.output}: {args.runs[0]} ({ids[0]}) against {args.runs[1]} ({ids[1]}), "
          f"{Path(args.output).stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
