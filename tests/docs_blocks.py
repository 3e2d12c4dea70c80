"""The fenced blocks of the README and docs/, and how the tests run them.

The convention (docs/development.md, "Docs whose commands run"): ```bash blocks run, ```shell
blocks are syntax-checked with ``bash -n``, ```yaml/```json/```python blocks are parsed, ```text
blocks are left alone; any other fence is an error. Blocks that call the service at
``SERVICE_URL`` run in the integration suite against its test service, the others in the unit suite.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import encode, photo

ROOT = Path(__file__).resolve().parents[1]
SERVICE_URL = "http://127.0.0.1:8000"
API_KEY_PLACEHOLDER = "INSERT_YOUR_USER_API_KEY"
RUN, SYNTAX, TEXT = "bash", "shell", "text"
PARSED = ("yaml", "json", "python")
LANGUAGES = (RUN, SYNTAX, TEXT, *PARSED)
# What the scratch directory of a running block holds besides photo.jpg: files the docs' commands read.
LINKED_FILES = ("serve_config.yaml", "serve_config.demo.yaml", "serve_config.cpu.yaml", "cluster.yaml")
# A curl that fails on HTTP errors, so a doc example that stops working fails its block.
CURL_FAILS_ON_HTTP_ERRORS = 'curl() { command curl --fail-with-body --silent --show-error "$@"; }\n'


@dataclass(frozen=True)
class Block:
    path: Path
    line: int      # of the opening fence, 1-based
    language: str  # the fence's info string ("" when none)
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def needs_service(self) -> bool:
        return SERVICE_URL in self.text


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "auth" / "README.md"]


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block (``` or ~~~, possibly indented) of a Markdown file."""
    found, opened, body = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if opened is None:
            if stripped.startswith(("```", "~~~")):
                opened, body = (number, stripped[:3], stripped[3:].strip()), []
        elif stripped == opened[1]:
            found.append(Block(path, opened[0], opened[2], "\n".join(body) + "\n"))
            opened = None
        else:
            body.append(line)
    if opened is not None:
        raise ValueError(f"{path.relative_to(ROOT)}:{opened[0]}: a fenced block is never closed")
    return found


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)]


def scratch_directory(directory: Path) -> Path:
    """Where a block runs: ``photo.jpg`` (a small greyscale photo) and links to the serve configs."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "photo.jpg").write_bytes(encode(photo(160, 96)))
    for name in LINKED_FILES:
        (directory / name).symlink_to(ROOT / name)
    return directory


def block_environment(**variables: str) -> dict[str, str]:
    """This interpreter's scripts first on PATH (python, colorize-admin), this checkout on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


def run_block(text: str, *, cwd: Path, env: dict[str, str], timeout_s: float = 120,
              prelude: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + text], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def report(block: Block, result: subprocess.CompletedProcess) -> str:
    return (f"{block.name}: the ```{block.language} block exited {result.returncode}\n--- block\n{block.text}"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
