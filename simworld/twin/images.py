"""The image twins: what each one is built from, as data (the platform list is data, not code).

A twin is a root file system made from Debian's archive with the package set of Debian's
official EC2 image for that release (the cloud team's image build config: netplan and
systemd-networkd, systemd-resolved owning ``/etc/resolv.conf``, cloud-init with ``awscli``,
``amazon-ec2-utils`` and ``cloud-guest-utils``), not the relay payload's packages: those come
at boot through cloud-init's package module, from a local mirror of the archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.settings import OsName

ARCHIVE: Final = "http://deb.debian.org/debian"
SECURITY_ARCHIVE: Final = "http://deb.debian.org/debian-security"
# What debootstrap lays down before apt adds the image's packages with their dependencies.
BOOTSTRAP_PACKAGES: Final = ("systemd", "systemd-sysv", "dbus")
# Debian's EC2 image package set (both releases), besides what `minbase` brings.
EC2_IMAGE_PACKAGES: Final = (
    "cloud-init",
    "netplan.io",
    "systemd-resolved",
    "libnss-myhostname",
    "polkitd",
    "sudo",
    "openssh-server",
    "unattended-upgrades",
    "awscli",
    "amazon-ec2-utils",
    "cloud-guest-utils",
    "ca-certificates",
    "iproute2",
    "procps",
    "udev",  # a VM's, always there on EC2 (a container's debootstrap would lack it)
    "locales",
)
# cloud-init settings of Debian's EC2 images: their login user is ``admin``.
IMAGE_CLOUD_CFG: Final = """\
# Debian's EC2 image (as the cloud team's build config sets it up)
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, audio, cdrom, dialout, dip, floppy, netdev, plugdev, sudo, video]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""
IMAGE_LOCALE: Final = "en_US.UTF-8"  # cloud-init's default locale on Debian


@dataclass(frozen=True)
class TwinImage:
    """One Debian release as its EC2 image has it."""

    os: OsName
    suite: str
    packages: tuple[str, ...] = EC2_IMAGE_PACKAGES

    @property
    def suites(self) -> tuple[tuple[str, str], ...]:
        """(archive, suite) pairs of the image's apt sources, as Debian's images list them."""
        return (
            (ARCHIVE, self.suite),
            (ARCHIVE, f"{self.suite}-updates"),
            (SECURITY_ARCHIVE, f"{self.suite}-security"),
        )

    def sources(self) -> str:
        """``/etc/apt/sources.list.d/debian.sources`` of the image (deb822)."""
        stanzas = []
        for archive in dict.fromkeys(archive for archive, _ in self.suites):
            suites = " ".join(suite for a, suite in self.suites if a == archive)
            stanzas.append(
                f"Types: deb\nURIs: {archive}\nSuites: {suites}\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            )
        return "\n".join(stanzas)


# Every OS whose profile names the Debian suite of its twin (userdata.os_profiles).
TWINS: Final[dict[str, TwinImage]] = {
    name: TwinImage(os=name, suite=profile.twin_suite)
    for name, profile in OS_PROFILES.items()
    if profile.twin_suite is not None
}
