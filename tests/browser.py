"""A real headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download cannot work offline, so it drives the system Chromium
(``executable_path``); the Debian package is installed by ``.ci/run`` when missing. Each
``launch`` gets a fresh temporary profile (user-data-dir) that Playwright deletes on close.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No network besides what the page asks for, no first-run UI, no GPU (none in CI), no sandbox
# (CI runs as root, where Chromium's sandbox refuses to start).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (a Playwright ``Browser``); fails under ``REQUIRE_BROWSER=1`` when missing."""
    if not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and REQUIRE_BROWSER=1")
        pytest.skip(f"{reason}; set REQUIRE_BROWSER=1 to make this a failure")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def console_errors(page) -> list[str]:
    """Collects the page's uncaught errors and console errors (a broken script fails its test)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return errors
