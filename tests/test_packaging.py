"""The distributions a release publishes: built, checked as PyPI would, and holding only the
``cmc_relay`` package with everything the host's payload needs."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from tests.distributions import REPO, Distributions, project_version

CHANGELOG = REPO / "CHANGELOG.md"
# Release notes do not change once released. A new entry that lands here (a merge that put it
# under an old heading) belongs under "## [Unreleased]".
RELEASED_NOTES_SHA256 = {
    "0.3.0": "ae6f6e667e58eb35f0548e4a1dfefe005f729d7009e30fa02fd95b9d390a14d9",
    "0.2.0": "d49996e7ce8fd251c1f300708431bd4576adbaaab3046d0798300b23cf883abb",
    "0.1.0": "7880035756e3cb1118d8cd584c77c6f46578322900482fd6fb6b29d514c387bd",
}


def members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def metadata(wheel: Path) -> dict[str, list[str]]:
    dist_info = f"cmc_relay_host-{project_version()}.dist-info"
    text = members(wheel)[f"{dist_info}/METADATA"].decode()
    headers = HeaderParser().parsestr(text)
    return {key: headers.get_all(key, []) for key in set(headers.keys())}


def test_twine_check_passes_for_the_sdist_and_the_wheel(distributions: Distributions) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict",
         str(distributions.sdist), str(distributions.wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_the_wheel_holds_only_the_cmc_relay_package(distributions: Distributions) -> None:
    top_level = {name.split("/")[0] for name in members(distributions.wheel)}
    assert top_level == {"cmc_relay", f"cmc_relay_host-{project_version()}.dist-info"}


def test_the_wheel_ships_every_module_template_script_and_key(
    distributions: Distributions,
) -> None:
    """What the component reads at deployment: its modules, the payload's templates, the
    on-host scripts, AWS's key, and ``py.typed`` for the consumer's type checker."""
    expected = {"cmc_relay/__init__.py", "cmc_relay/py.typed"}
    for folder in ("components", "userdata"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(f"cmc_relay/{path.relative_to(REPO).as_posix()}")
    shipped = {name for name in members(distributions.wheel) if name.startswith("cmc_relay/")}
    assert shipped == expected
    assert any(name.startswith("cmc_relay/userdata/templates/") for name in shipped)
    assert "cmc_relay/userdata/scripts/cmc-relay-setup" in shipped
    assert "cmc_relay/userdata/keys/amazon-ssm-agent.asc" in shipped


def test_the_sdist_builds_the_same_wheel_as_the_tree(distributions: Distributions) -> None:
    print(f"builds: {distributions.seconds:.1f}s")
    assert members(distributions.wheel) == members(distributions.wheel_from_tree)


def test_the_sdist_carries_the_license_and_the_changelog(distributions: Distributions) -> None:
    with tarfile.open(distributions.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= names
    assert not any(name.startswith("tests/") for name in names)  # the tests need the checkout


def test_the_metadata_names_the_version_license_and_floors(distributions: Distributions) -> None:
    fields = metadata(distributions.wheel)
    assert fields["Version"] == [project_version()]
    assert fields["License-Expression"] == ["Apache-2.0"]
    assert fields["License-File"] == ["LICENSE"]
    license_file = f"cmc_relay_host-{project_version()}.dist-info/licenses/LICENSE"
    assert members(distributions.wheel)[license_file] == (REPO / "LICENSE").read_bytes()
    assert "pulumi<4,>=3.211" in fields["Requires-Dist"]


def test_the_license_is_the_apache_2_0_text() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text


def released_sections() -> list[tuple[str, str]]:
    """(version, body) of each ``## [X.Y.Z] - date`` section of the changelog, newest first."""
    text = CHANGELOG.read_text()
    heads = list(re.finditer(r"^## \[(.+?)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE))
    assert heads and heads[0].group(1) == "Unreleased", "keep ## [Unreleased] at the top"
    sections = []
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        if head.group(1) != "Unreleased":
            assert head.group(2), f"{head.group(0)}: a release has its date"
            end = after.start() if after else len(text)
            sections.append((head.group(1), text[head.end() : end]))
    return sections


def semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_changelog_releases_are_newest_first_and_not_ahead_of_the_package() -> None:
    versions = [version for version, _ in released_sections()]
    assert versions == sorted(versions, key=semver, reverse=True)
    assert semver(project_version()) >= semver(versions[0])


def test_released_notes_are_not_edited() -> None:
    bodies = dict(released_sections())
    for version, digest in RELEASED_NOTES_SHA256.items():
        assert hashlib.sha256(bodies[version].encode()).hexdigest() == digest, version


def test_every_release_says_how_to_upgrade() -> None:
    for version, body in released_sections():
        assert "\n### Upgrading\n" in body, version
