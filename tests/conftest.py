from __future__ import annotations

import pytest

from tests.distributions import Distributions, build


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    """The sdist and wheels, built once for the packaging and consumer tests."""
    built = build(tmp_path_factory.mktemp("distributions"))
    print(f"built the sdist and two wheels in {built.seconds:.1f}s")
    return built
