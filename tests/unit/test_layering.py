"""The layers import only downwards: pipeline <- storage/auth <- service <- deployments.

Read from the source with ``ast`` (every import statement, also those inside functions and
``TYPE_CHECKING`` blocks), so a lazy import cannot hide an upward dependency.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each top-level package must never import (first component of the module name).
FORBIDDEN: dict[str, frozenset[str]] = {
    "pipeline": frozenset({"storage", "auth", "service", "deployments", "ray", "starlette", "tools", "tests"}),
    "storage": frozenset({"pipeline", "service", "deployments", "ray", "starlette", "tools", "tests"}),
    "auth": frozenset({"pipeline", "service", "deployments", "ray", "starlette", "tools", "tests"}),
    "service": frozenset({"ray", "deployments", "tools", "tests"}),
    "deployments": frozenset({"tools", "tests"}),
    # The client talks to the service over HTTP only: it ships alone, with httpx and tqdm.
    "colorize_client": frozenset({"pipeline", "storage", "auth", "service", "deployments", "ray", "starlette",
                                  "tools", "tests", "bench", "torch", "numpy", "PIL"}),
}


def shipped_packages() -> list[str]:
    """The packages the wheel (and the Docker image) contain, as pyproject.toml lists them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``path``; relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join([*base, node.module] if node.module else base)))
    return found


def violations(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for line, name in imported_modules(path) if name.split(".")[0] in forbidden]


def test_every_shipped_package_has_a_rule():
    assert shipped_packages() == sorted(FORBIDDEN)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_crosses_a_layer_upwards(package):
    assert violations(package) == []


def test_the_reader_sees_absolute_relative_and_lazy_imports():
    """Guards the test itself: a reader that found nothing would pass every rule above."""
    stage = dict((name, line) for line, name in imported_modules(ROOT / "deployments" / "stage.py"))
    assert "ray" in stage and "service.stages" in stage and "deployments.batching" in stage  # `from .batching`
    loaders = {name for _, name in imported_modules(ROOT / "service" / "stages.py")}
    assert "pipeline.stages.face_remaster" in loaders  # imported inside a function


def test_the_ingress_and_the_launcher_do_not_import_torch():
    """The Ingress replica and ``deployments.launch`` import ``deployments.app`` (and with it the Stage
    class): torch (hundreds of MB, seconds) belongs in stage replicas only, imported when they load."""
    import os
    import subprocess
    import sys

    code = ("import sys, deployments.app, deployments.launch, service.app; "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"torch was imported at module level on the ingress's path\n{result.stderr}"
