"""The repository's layout: nothing outside ``tests/`` imports from ``tests``.

What the sandbox, the tests and the benchmarks share lives in ``simworld/``.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED = {"tests", ".venv", "venv", "build", "dist", ".git", "__pycache__", "node_modules"}


def python_files_outside_tests() -> list[Path]:
    files = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if any(part in SKIPPED or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        files.append(path)
    return sorted(files)


def imports_of_tests(path: Path) -> list[str]:
    """``import tests...`` and ``from tests... import`` statements in ``path``, as ``file:line``."""
    with warnings.catch_warnings():  # e.g. invalid escapes in docstrings: not this test's business
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "tests" or name.startswith("tests.") for name in names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_walk_sees_the_shared_packages() -> None:
    seen = {path.relative_to(REPO).parts[0] for path in python_files_outside_tests()}
    assert {"simworld", "sandbox", "benchmarks", "components", "userdata"} <= seen


def test_nothing_outside_tests_imports_tests() -> None:
    offenders = [hit for path in python_files_outside_tests() for hit in imports_of_tests(path)]
    assert not offenders, f"import from tests outside tests/ (move it to simworld/): {offenders}"
