"""The twin builder's pure parts, and a fault on real Debian tooling: a package the archive
lacks is named. (A boot that fails is tests/test_sandbox.py's.)"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from simworld.twin import build as twin_build
from simworld.twin.images import TWINS

IN_RELEASE = """\
Origin: Debian
Valid-Until: Wed, 09 Dec 2026 20:00:00 UTC
SHA256:
 1111111111111111111111111111111111111111111111111111111111111111 1234 main/binary-amd64/Packages
 2222222222222222222222222222222222222222222222222222222222222222 567 main/binary-amd64/Packages.xz
"""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="twins need root (namespaces, nspawn)")


def test_sources_list_every_suite_of_the_image() -> None:
    sources = TWINS["debian-13"].sources()
    assert "URIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\n" in sources
    assert "URIs: http://deb.debian.org/debian-security\nSuites: trixie-security\n" in sources
    assert sources.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2


def test_the_recipe_key_follows_what_the_root_is_built_from() -> None:
    image = TWINS["debian-12"]
    assert twin_build.recipe_key(image) == twin_build.recipe_key(dataclasses.replace(image))
    more = dataclasses.replace(image, packages=(*image.packages, "vim"))
    assert twin_build.recipe_key(more) != twin_build.recipe_key(image)
    assert twin_build.recipe_key(TWINS["debian-13"]) != twin_build.recipe_key(image)


def test_index_hash_and_validity_from_in_release() -> None:
    assert twin_build.index_sha256(IN_RELEASE, "main/binary-amd64/Packages.xz") == "2" * 64
    with pytest.raises(twin_build.BuildError, match=r"lists no main/i18n/Translation-en\.xz"):
        twin_build.index_sha256(IN_RELEASE, "main/i18n/Translation-en.xz")
    assert twin_build.valid_until(IN_RELEASE) == 1796846400.0
    assert twin_build.valid_until("Origin: Debian\n") is None


@pytest.mark.parametrize(
    ("line", "path", "digest"),
    [
        (
            "'http://deb.debian.org/debian/pool/main/p/postfix/postfix_3.7.11-0%2bdeb12u1_amd64.deb'"
            " postfix_3.7.11-0+deb12u1_amd64.deb 1500000 MD5Sum:0123456789abcdef0123456789abcdef",
            "debian/pool/main/p/postfix/postfix_3.7.11-0+deb12u1_amd64.deb",
            "0123456789abcdef0123456789abcdef",
        ),
        (  # the security suite's lines carry no hash
            "'http://deb.debian.org/debian-security/pool/updates/main/c/cyrus-sasl2/x_1_amd64.deb'"
            " x_1_amd64.deb 66868 ",
            "debian-security/pool/updates/main/c/cyrus-sasl2/x_1_amd64.deb",
            None,
        ),
    ],
)
def test_print_uris_lines_map_to_mirror_paths(line: str, path: str, digest: str | None) -> None:
    match = twin_build._PRINT_URI.match(line)
    assert match is not None
    assert match["digest"] == digest
    assert twin_build._mirror_path(Path("/m"), match["uri"]) == Path("/m") / path


@pytest.mark.integration
@needs_root
def test_a_package_the_archive_lacks_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = TWINS["debian-13"]
    root, _ = twin_build.build_root(image, twin_build.cache_dir())
    monkeypatch.setattr(twin_build, "payload_packages", lambda _: ("postfix", "no-such-pkg-cmc"))
    with pytest.raises(twin_build.BuildError, match=r"the archive has no no-such-pkg-cmc$"):
        twin_build.build_mirror(image, root, tmp_path)
