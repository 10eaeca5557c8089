"""The repository's layout: nothing outside ``tests/`` imports from ``tests``; the product
(``cmc_relay``: the ``components/`` and ``userdata/`` folders) is imported only under its
namespace and imports nothing of the simulated world or the benchmarks.

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


def parse(path: Path) -> ast.Module:
    """``path``'s syntax tree. Python 3.11.7 (this machine's) keeps ast.parse's depth counter
    per interpreter: a parse beside it (another thread) or inside it (a finalizer the collector
    runs meanwhile) makes it raise a spurious SystemError (CPython gh-106905, seen in CI after
    test_inputs' long exception chains): the same source is then parsed again."""
    source = path.read_text()
    with warnings.catch_warnings():  # e.g. invalid escapes in docstrings: not this test's business
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        for _ in range(2):
            try:
                return ast.parse(source, filename=str(path))
            except SystemError as error:
                if "recursion depth mismatch" not in str(error):
                    raise
        return ast.parse(source, filename=str(path))


def imports_of(path: Path, packages: set[str]) -> list[str]:
    """Absolute imports of any of ``packages`` (or their modules) in ``path``, as ``file:line``."""
    tree = parse(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] in packages for name in names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


CONSUMER = REPO / "tests" / "consumer"  # a consumer's project: its own components/, userdata/


def python_files_everywhere() -> list[Path]:
    """This repository's Python files, without the consumer's project."""
    tests = [path for path in (REPO / "tests").rglob("*.py") if not path.is_relative_to(CONSUMER)]
    return sorted({*python_files_outside_tests(), *tests})


def product_files() -> list[Path]:
    return [
        path
        for path in python_files_outside_tests()
        if path.relative_to(REPO).parts[0] in {"cmc_relay", "components", "userdata"}
    ]


def test_the_walk_sees_the_shared_packages() -> None:
    seen = {path.relative_to(REPO).parts[0] for path in python_files_outside_tests()}
    assert {"simworld", "sandbox", "benchmarks", "components", "userdata"} <= seen


def test_nothing_outside_tests_imports_tests() -> None:
    offenders = [
        hit for path in python_files_outside_tests() for hit in imports_of(path, {"tests"})
    ]
    assert not offenders, f"import from tests outside tests/ (move it to simworld/): {offenders}"


def test_the_product_is_imported_only_under_its_namespace() -> None:
    """``components`` and ``userdata`` are generic names a consumer's project may have too."""
    generic = {"components", "userdata"}
    offenders = [hit for path in python_files_everywhere() for hit in imports_of(path, generic)]
    assert not offenders, f"import cmc_relay.components / cmc_relay.userdata instead: {offenders}"


def test_the_product_imports_no_simulation_or_benchmark() -> None:
    offenders = [
        hit for path in product_files() for hit in imports_of(path, {"simworld", "benchmarks"})
    ]
    assert not offenders, f"the shipped package must not need the test world: {offenders}"


def test_the_namespace_links_are_the_design_folders() -> None:
    for folder in ("components", "userdata"):
        link = REPO / "cmc_relay" / folder
        assert link.is_symlink() and link.resolve() == REPO / folder
