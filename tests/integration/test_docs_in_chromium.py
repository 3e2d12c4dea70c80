"""/docs renders in a real browser from the service alone: headless Chromium (Debian's package)
loads the page under its Content-Security-Policy, which allows nothing from another origin,
and Swagger UI draws every documented path."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from service.web.openapi import openapi_document

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_docs_page_renders_every_path(service, tmp_path):
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
         f"{service['url']}/docs"],
        capture_output=True, text=True, timeout=90, check=True).stdout
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert rendered == set(openapi_document()["paths"]), rendered
    assert "OAS 3.1" in dom
