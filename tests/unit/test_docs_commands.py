"""The README's and docs' blocks still work: ```bash blocks run (those needing the service run in
tests/integration/test_docs_curl.py), ```shell blocks pass ``bash -n``, yaml/json/python blocks parse."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.docs_blocks import (LANGUAGES, PARSED, ROOT, RUN, SYNTAX, Block, all_blocks, block_environment,
                               blocks_of, report, run_block, scratch_directory)

BLOCKS = all_blocks()
COMMANDS = [block for block in BLOCKS if block.language in (RUN, SYNTAX)]
LOCAL_RUNS = [block for block in BLOCKS if block.language == RUN and not block.needs_service]


def by_name(blocks: list[Block]) -> dict:
    return {"argvalues": blocks, "ids": [block.name for block in blocks]}


def test_every_block_says_how_it_is_checked():
    unknown = [f"{block.name}: ```{block.language}" for block in BLOCKS if block.language not in LANGUAGES]
    assert not unknown, ("use ```bash (runs), ```shell (bash -n only), ```yaml/json/python (parsed) or "
                         "```text (diagrams) — docs/development.md, 'Docs whose commands run':\n" + "\n".join(unknown))


def test_the_reader_finds_the_blocks_that_matter():
    """Guards the tests below: a parser that found nothing would let every block rot."""
    readme = blocks_of(ROOT / "README.md")
    assert readme[0].language == SYNTAX and "make demo" in readme[0].text and "make test" in readme[0].text
    assert any(b.language == RUN and "/api/v1/colorize" in b.text and b.needs_service for b in readme)
    assert any("python -m tools.config_table" in block.text for block in LOCAL_RUNS)
    assert any("colorize-admin keys create" in block.text for block in LOCAL_RUNS)
    assert any("python -m deployments.launch" in block.text for block in LOCAL_RUNS)


@pytest.mark.parametrize("block", **by_name(COMMANDS))
def test_command_block_is_valid_bash(block):
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, report(block, result)


@pytest.mark.parametrize("block", **by_name([b for b in BLOCKS if b.language in PARSED]))
def test_data_block_parses(block):
    parse = {"yaml": yaml.safe_load, "json": json.loads,
             "python": lambda text: compile(text, block.name, "exec")}[block.language]
    parse(block.text)


@pytest.fixture()
def ledger(tmp_path) -> dict[str, str]:
    """A scratch credit ledger with one key, for colorize-admin blocks: $COLORIZE_DATABASE_URL, $KEY_ID."""
    from auth.accounts import Accounts
    from auth.db import make_engine

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    engine = make_engine(url)
    try:
        key = Accounts(engine).create_key(credits=10, name="docs")
    finally:
        engine.dispose()
    return {"COLORIZE_DATABASE_URL": url, "KEY_ID": key.key_id}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", **by_name(LOCAL_RUNS))
def test_bash_block_runs(block, tmp_path, ledger):
    result = run_block(block.text, cwd=scratch_directory(tmp_path / "run"), env=block_environment(**ledger))
    assert result.returncode == 0, report(block, result)


def test_a_failing_command_fails_its_block(tmp_path):
    """Guards the runner: without -e and pipefail a broken first command would pass unnoticed."""
    for text in ("false\ntrue\n", "false | cat\n", "echo $UNSET_VARIABLE_OF_NOBODY\n"):
        assert run_block(text, cwd=tmp_path, env=block_environment()).returncode != 0, text
