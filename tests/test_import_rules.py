"""The rules between the parts (docs/architecture.md) are import-linter contracts in
pyproject.toml, run by `make lint`: they hold for the tree, and a forbidden import fails them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=package_root,
        timeout=120,
    )


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT.exists():
        pytest.fail(f"import-linter is not installed beside {sys.executable} (pip install import-linter)")
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "backend" / "convscope", root / "convscope", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_tree_keeps_every_contract(copy: Path) -> None:
    result = lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("engine/_bad.py", "from convscope.api import jobs\n", "never imports the API or the CLI"),
        ("scan/_bad.py", "import fastapi\n", "never imports the API or the CLI"),
        ("models/_bad.py", "from convscope.engine import Engine\n", "models never import the engine"),
        ("engine/_bad.py", "import convscope.scan.store\n", "the engine never imports the parts built on it"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(copy: Path, module: str, line: str, contract: str) -> None:
    bad = copy / "convscope" / module
    bad.write_text(line)
    try:
        result = lint(copy)
    finally:
        bad.unlink()
    assert result.returncode != 0
    assert "1 broken" in result.stdout, result.stdout
    assert contract in " ".join(result.stdout.split()), result.stdout
