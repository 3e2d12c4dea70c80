"""The README's and docs' ```bash blocks that call the service run against the test service, as written:
only the address, the API key placeholder and $TOKEN (an App Check token) are this service's."""
from __future__ import annotations

import pytest

from tests.docs_blocks import (API_KEY_PLACEHOLDER, CURL_FAILS_ON_HTTP_ERRORS, RUN, SERVICE_URL, Block, all_blocks,
                               block_environment, report, run_block, scratch_directory)
from tests.integration.conftest import create_key

pytestmark = pytest.mark.integration

SERVICE_RUNS = [block for block in all_blocks() if block.language == RUN and block.needs_service]


@pytest.fixture(scope="module")
def docs_key(service) -> str:
    """A key of the docs' own, so their jobs never touch the balance other tests watch."""
    return create_key(service["args"], credits=10_000, rate_per_s=1000, burst=1000)


def run_against(service, key: str, block: Block, directory):
    text = block.text.replace(SERVICE_URL, service["url"]).replace(API_KEY_PLACEHOLDER, key)
    return run_block(text, cwd=scratch_directory(directory), env=block_environment(TOKEN=service["app_check"]),
                     prelude=CURL_FAILS_ON_HTTP_ERRORS, timeout_s=240)


def test_the_docs_call_the_service():
    assert len(SERVICE_RUNS) >= 3  # the README's two APIs and docs/api.md at least


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", SERVICE_RUNS, ids=[block.name for block in SERVICE_RUNS])
def test_bash_block_runs_against_the_service(block, service, docs_key, tmp_path):
    result = run_against(service, docs_key, block, tmp_path / "run")
    assert result.returncode == 0, report(block, result)


def test_an_http_error_fails_its_block(service, docs_key, tmp_path):
    """Guards the runner: curl alone exits 0 on a 404 or a 401, so a broken example would pass."""
    for text in (f"curl {SERVICE_URL}/no-such-route\n",
                 f"curl -H 'X-Api-Key: ck_live_000000000000_nope' -F image=@photo.jpg {SERVICE_URL}/api/v1/colorize\n"):
        block = Block(tmp_path, 0, RUN, text)
        assert run_against(service, docs_key, block, tmp_path / str(len(text))).returncode != 0, text
