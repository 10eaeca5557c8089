"""Build and cache the image twins: a root file system per Debian release, and a local mirror
of Debian's archive holding exactly the .debs the payload's packages need on that root.

The root is made by ``debootstrap`` (minbase with systemd) and apt, then configured as Debian's
EC2 image is: sources, first-boot state (empty machine-id, no SSH host keys, no cloud-init
state), networkd and resolved enabled. The mirror keeps Debian's real, signed ``InRelease``
files and ``Packages.xz`` indexes, so apt in the twin checks the archive's signatures as it
does on EC2; only the pool is cut down to the packages the payload installs.

Both are cached under ``CMC_TWIN_CACHE`` (default ``/var/cache/cmc-relay-twins``): the root as
long as its recipe is unchanged, the mirror for a day (or until a suite's ``Valid-Until``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cmc_relay.userdata.os_profiles import OS_PROFILES
from simworld.twin.images import (
    ARCHIVE,
    BOOTSTRAP_PACKAGES,
    IMAGE_CLOUD_CFG,
    IMAGE_LOCALE,
    TwinImage,
)
from simworld.twin.machine import nspawn_command

CACHE_ENV: Final = "CMC_TWIN_CACHE"
DEFAULT_CACHE: Final = Path("/var/cache/cmc-relay-twins")
RECIPE_VERSION: Final = 2  # bump when the way a root is made changes
MIRROR_MAX_AGE: Final = 24 * 3600
ARCH: Final = "amd64"
# What apt in the image fetches for a suite (by hash, as the archive's InRelease allows).
INDEXES: Final = (f"main/binary-{ARCH}/Packages.xz", "main/i18n/Translation-en.xz")
# A root being built needs no fsync per file: a crash means building it again anyway.
_UNSAFE_IO: Final = ("-o", "Dpkg::Options::=--force-unsafe-io")
_APT_ENV: Final = {"DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
# apt-get --print-uris: 'URI' FILE SIZE [HASHTYPE:DIGEST]; apt prints no hash for some suites,
# and at boot it checks every .deb against the signed index's SHA256 anyway.
_PRINT_URI = re.compile(
    r"^'(?P<uri>[^']+)' \S+ \d+ ?((?P<algo>MD5Sum|SHA1|SHA256|SHA512):(?P<digest>[0-9a-f]+))?"
)
_HASHES: Final = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}


class BuildError(RuntimeError):
    """A twin could not be built; the message names the step (and package) that failed."""


@dataclass(frozen=True)
class Twin:
    """A built twin: its image, cached root and the mirror for its payload."""

    image: TwinImage
    root: Path
    mirror: Path
    build_seconds: float
    cached: bool


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))


def recipe_key(image: TwinImage) -> str:
    """Changes whenever what the root is built from changes."""
    recipe = {
        "v": RECIPE_VERSION,
        "suite": image.suite,
        "packages": image.packages,
        "bootstrap": BOOTSTRAP_PACKAGES,
        "cloud_cfg": IMAGE_CLOUD_CFG,
        "locale": IMAGE_LOCALE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def payload_packages(image: TwinImage) -> tuple[str, ...]:
    """What the payload's cloud-init package module installs on this OS."""
    return tuple(OS_PROFILES[image.os].packages)


def run(command: Sequence[str], step: str) -> str:
    """Run a build step; a failure raises ``BuildError`` with the step and the tool's words."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BuildError(f"{step} failed (exit {result.returncode}):\n{tail}")
    return str(result.stdout)


def in_root(root: Path, command: Sequence[str], step: str) -> str:
    """A command inside the root (not booted): nspawn gives it /proc, /dev and the network."""
    nspawn = nspawn_command(root, network=True)
    nspawn += [f"--setenv={name}={value}" for name, value in _APT_ENV.items()]
    return run([*nspawn, "--", *command], step)


def missing_packages(
    root: Path, names: Iterable[str], apt_options: Sequence[str] = ()
) -> list[str]:
    """Names apt in the root has no candidate for (a clear error instead of apt's)."""
    missing = []
    for name in names:
        policy = in_root(root, ["apt-cache", *apt_options, "policy", name], f"apt-cache {name}")
        if "Candidate:" not in policy or "Candidate: (none)" in policy:
            missing.append(name)
    return missing


def apt_install(root: Path, packages: Sequence[str], step: str) -> None:
    try:
        in_root(
            root,
            ["apt-get", *_UNSAFE_IO, "install", "-y", "-q", "--no-install-recommends", *packages],
            step,
        )
    except BuildError as error:
        missing = missing_packages(root, packages)
        if missing:
            raise BuildError(f"{step}: the archive has no package {', '.join(missing)}") from error
        raise


def configure_image(root: Path, image: TwinImage) -> None:
    """What Debian's EC2 image build leaves behind, so the twin's first boot is a first boot."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(image.sources())
    (root / "etc/machine-id").write_text("")  # systemd treats the boot as the first
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # cloud-init makes the host keys on first boot
    shutil.rmtree(root / "var/lib/cloud", ignore_errors=True)
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/cloud/cloud.cfg.d/01_debian_cloud.cfg").write_text(IMAGE_CLOUD_CFG)
    (root / "etc/locale.gen").write_text(f"{IMAGE_LOCALE} UTF-8\n")
    in_root(root, ["locale-gen"], "locale-gen")
    # As Debian's cloud images have it: resolved's full list, not its stub.
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/resolv.conf")
    in_root(
        root, ["systemctl", "enable", "systemd-networkd", "systemd-resolved"], "enable networkd"
    )
    in_root(root, ["apt-get", "clean"], "apt-get clean")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def build_root(image: TwinImage, cache: Path) -> tuple[Path, bool]:
    """The cached root of ``image``, built if its recipe changed; (path, was cached)."""
    home = cache / image.os
    root, stamp = home / "root", home / "root.recipe"
    key = recipe_key(image)
    if root.is_dir() and stamp.exists() and stamp.read_text() == key:
        return root, True
    fresh = home / "root.new"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    fresh.mkdir(parents=True)
    include = ",".join(BOOTSTRAP_PACKAGES)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={include}",
            image.suite,
            str(fresh),
            ARCHIVE,
        ],
        f"debootstrap {image.suite}",
    )
    (fresh / "etc/apt/sources.list.d/debian.sources").write_text(image.sources())
    (fresh / "etc/apt/sources.list").unlink(missing_ok=True)
    in_root(fresh, ["apt-get", "update", "-q", "--error-on=any"], f"apt-get update ({image.suite})")
    apt_install(fresh, image.packages, f"installing {image.os}'s EC2 image packages")
    configure_image(fresh, image)
    fresh.rename(root)
    stamp.write_text(key)
    return root, False


# --- the mirror -----------------------------------------------------------------------------


def _lists_name(archive: str, suite: str) -> str:
    """apt's file name for a suite's InRelease in its lists directory."""
    return f"{archive.removeprefix('http://').replace('/', '_')}_dists_{suite}_InRelease"


def index_sha256(in_release: str, path: str) -> str:
    """The SHA256 an InRelease file gives for ``path`` (e.g. ``main/binary-amd64/Packages.xz``)."""
    section = in_release.split("\nSHA256:\n", 1)[1]
    for line in section.splitlines():
        if not line.startswith(" "):
            break
        digest, _size, name = line.split()
        if name == path:
            return digest
    raise BuildError(f"InRelease lists no {path}")


def valid_until(in_release: str) -> float | None:
    match = re.search(r"^Valid-Until: (.+)$", in_release, re.M)
    if not match:
        return None
    return (
        time.mktime(time.strptime(match.group(1).strip(), "%a, %d %b %Y %H:%M:%S UTC"))
        - time.timezone
    )


def _download(uri: str, target: Path, digest: str | None, algorithm: str = "sha256") -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(uri, timeout=120) as response:
        data = response.read()
    if digest is not None and hashlib.new(algorithm, data).hexdigest() != digest:
        raise BuildError(f"{uri}: checksum does not match the archive's index")
    target.write_bytes(data)


def _mirror_path(mirror: Path, uri: str) -> Path:
    """Where the mirror keeps what ``uri`` (on deb.debian.org) names."""
    return mirror / urllib.parse.unquote(uri.split("://", 1)[1].split("/", 1)[1])


def mirror_fresh(mirror: Path) -> bool:
    stamp = mirror / "mirror.json"
    if not stamp.exists():
        return False
    meta = json.loads(stamp.read_text())
    now = time.time()
    expiry = [until for until in meta["valid_until"] if until is not None]
    return now - meta["built"] < MIRROR_MAX_AGE and all(now < until for until in expiry)


def build_mirror(image: TwinImage, root: Path, cache: Path) -> Path:
    """Debian's signed indexes for the image's suites and the .debs the payload needs."""
    packages = payload_packages(image)
    # What apt fetches depends on the root's installed set as much as on the payload's list.
    tag = hashlib.sha256(" ".join((recipe_key(image), *packages)).encode()).hexdigest()[:12]
    mirror = cache / image.os / f"mirror-{tag}"
    if mirror_fresh(mirror):
        return mirror
    shutil.rmtree(mirror, ignore_errors=True)
    lists = root / "var/tmp/twin-mirror-lists"
    shutil.rmtree(lists, ignore_errors=True)
    (lists / "partial").mkdir(parents=True)
    apt_lists = ["-o", "Dir::State::Lists=/var/tmp/twin-mirror-lists"]
    try:
        in_root(
            root,
            ["apt-get", *apt_lists, "update", "-q", "--error-on=any"],
            f"apt-get update ({image.suite})",
        )
        expiry = []
        for archive, suite in image.suites:
            in_release = (lists / _lists_name(archive, suite)).read_text()
            expiry.append(valid_until(in_release))
            dists = _mirror_path(mirror, f"{archive}/dists/{suite}")
            dists.mkdir(parents=True)
            (dists / "InRelease").write_text(in_release)
            for index in INDEXES:
                digest = index_sha256(in_release, index)
                _download(f"{archive}/dists/{suite}/{index}", dists / index, digest)
                by_hash = dists / index.rsplit("/", 1)[0] / "by-hash/SHA256" / digest
                by_hash.parent.mkdir(parents=True)
                os.link(dists / index, by_hash)
        try:
            uris = in_root(
                root, ["apt-get", *apt_lists, "install", "--print-uris", "-qq", *packages], "apt"
            )
        except BuildError as error:
            missing = missing_packages(root, packages, apt_lists)
            if not missing:
                raise
            raise BuildError(
                f"the payload's packages for {image.os}: the archive has no {', '.join(missing)}"
            ) from error
        for line in uris.splitlines():
            if match := _PRINT_URI.match(line):
                target = _mirror_path(mirror, match["uri"])
                algorithm = _HASHES[match["algo"]] if match["algo"] else "sha256"
                _download(match["uri"], target, match["digest"], algorithm)
    finally:
        shutil.rmtree(lists, ignore_errors=True)
    (mirror / "mirror.json").write_text(
        json.dumps({"built": time.time(), "valid_until": expiry, "packages": packages})
    )
    return mirror


def build(image: TwinImage, cache: Path | None = None) -> Twin:
    """The twin of ``image``: root and mirror, from the cache where they are current."""
    cache = cache or cache_dir()
    started = time.monotonic()
    root, cached = build_root(image, cache)
    mirror = build_mirror(image, root, cache)
    return Twin(image, root, mirror, time.monotonic() - started, cached)
