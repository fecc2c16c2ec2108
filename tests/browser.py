"""Headless Chromium for the tests that need a real browser: Debian's /usr/bin/chromium driven by Playwright
(nothing downloaded). Skipped where either is missing, unless LUNGSEG_REQUIRE_BROWSER=1 (CI) makes it a failure."""
import contextlib
import os
import shutil

import pytest

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        found = None
    if not found:
        if os.environ.get("LUNGSEG_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium and Playwright are required here (LUNGSEG_REQUIRE_BROWSER=1)")
        pytest.skip("needs Debian's chromium package and the playwright Python package")
    return found


@contextlib.contextmanager
def browser_page(downloads: bool = False, width: int = 1400, height: int = 900):
    """A fresh page in headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(accept_downloads=downloads, viewport={"width": width, "height": height})
            yield context.new_page()
        finally:
            browser.close()
