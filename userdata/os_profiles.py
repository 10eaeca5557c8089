"""Every fact about each supported operating system, in one table: where its EC2 image is
published, which packages the relay installs, which ports its package mirrors use, where its
CA bundle is, whether its Postfix chroots, which agents it lacks, and what its image twin is
built from (``simworld.twin.images`` reads that; this module imports nothing from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cmc_relay.userdata.settings import OsName


@dataclass(frozen=True)
class ImageFilter:
    """Where the official image of an OS is published, and how its names spell architectures."""

    owner: str
    name_pattern: str
    arch_names: dict[str, str]

    def name(self, architecture: str) -> str:
        return self.name_pattern.format(arch=self.arch_names[architecture])


@dataclass(frozen=True)
class OsProfile:
    """One supported operating system, as the relay host meets it."""

    image: ImageFilter
    packages: tuple[str, ...]
    # The package mirrors' ports, which the host's security group lets out.
    package_ports: tuple[int, ...]
    ca_file: str
    login_user: str
    # The OS's own master.cf chroots Postfix's services; tlsproxy (master.cf) follows it.
    postfix_chroot: bool
    ssm_agent_preinstalled: bool  # the image ships SSM Agent; else the payload installs it
    ssm_agent_unit: str  # the agent's systemd unit (after our install, where we install it)
    # The OS's repositories carry the CloudWatch agent (a package above); else the payload
    # downloads it from AWS.
    cloudwatch_agent_packaged: bool
    # Security updates by unattended-upgrades (Debian, Ubuntu; a package above); Amazon Linux
    # 2023 locks its repositories to the image's release, so its updates come with a new image.
    unattended_upgrades: bool = False
    # The Debian suite its image twin (simworld.twin) is built from; None: no twin.
    twin_suite: str | None = None

    @property
    def agent_downloads(self) -> tuple[str, ...]:
        """The agents cmc-relay-install-agent fetches from AWS at first boot, by its names."""
        missing = {
            "ssm": not self.ssm_agent_preinstalled,
            "cloudwatch": not self.cloudwatch_agent_packaged,
        }
        return tuple(name for name, download in missing.items() if download)


# logrotate rotates the mail log; minimal images may lack it.
_COMMON_PACKAGES = ("postfix", "dnsmasq", "ca-certificates", "python3-boto3", "logrotate")
# Checks the agent packages' signatures; Debian 13's apt uses sqv, so gpgv may be absent.
_AGENT_VERIFIER = "gpgv"
_DEBIAN_PACKAGES = (*_COMMON_PACKAGES, "libsasl2-modules", _AGENT_VERIFIER, "unattended-upgrades")
_DEBIAN_ARCH_NAMES: Final = {"x86_64": "amd64", "arm64": "arm64"}
_DEBIAN_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
# Package mirrors: Amazon Linux's are HTTPS only; Debian's and Ubuntu's EC2 mirrors use HTTP.
_HTTP_AND_HTTPS = (80, 443)


def _debian(release: str, suite: str) -> OsProfile:
    """Debian's official EC2 images (bookworm and trixie) configure the network with netplan,
    systemd-networkd and systemd-resolved. They ship no SSM Agent (AWS documents installing
    it by hand on Debian): cmc-relay-install-agent does, and the CloudWatch agent, which no
    Debian or Ubuntu repository carries."""
    return OsProfile(
        image=ImageFilter("136693071363", f"debian-{release}-{{arch}}-*", _DEBIAN_ARCH_NAMES),
        packages=_DEBIAN_PACKAGES,
        package_ports=_HTTP_AND_HTTPS,
        ca_file=_DEBIAN_CA_FILE,
        login_user="admin",
        postfix_chroot=True,
        ssm_agent_preinstalled=False,
        ssm_agent_unit="amazon-ssm-agent",
        cloudwatch_agent_packaged=False,
        unattended_upgrades=True,
        twin_suite=suite,
    )


OS_PROFILES: Final[dict[OsName, OsProfile]] = {
    "al2023": OsProfile(
        image=ImageFilter(
            "amazon", "al2023-ami-2023.*-{arch}", {"x86_64": "x86_64", "arm64": "arm64"}
        ),
        packages=(*_COMMON_PACKAGES, "cyrus-sasl-plain", "amazon-cloudwatch-agent"),
        package_ports=(443,),
        ca_file="/etc/pki/tls/certs/ca-bundle.crt",
        login_user="ec2-user",
        postfix_chroot=False,
        ssm_agent_preinstalled=True,
        ssm_agent_unit="amazon-ssm-agent",
        cloudwatch_agent_packaged=True,
    ),
    "debian-12": _debian("12", "bookworm"),
    "debian-13": _debian("13", "trixie"),
    "ubuntu-24.04": OsProfile(
        image=ImageFilter(
            "099720109477",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*",
            _DEBIAN_ARCH_NAMES,
        ),
        packages=_DEBIAN_PACKAGES,
        package_ports=_HTTP_AND_HTTPS,
        ca_file=_DEBIAN_CA_FILE,
        login_user="ubuntu",
        postfix_chroot=True,
        ssm_agent_preinstalled=True,  # as a snap
        ssm_agent_unit="snap.amazon-ssm-agent.amazon-ssm-agent",
        cloudwatch_agent_packaged=False,
        unattended_upgrades=True,
    ),
}
