"""Stand-ins for AWS's agent packages, served by the twin's S3 as AWS serves the real ones.

The real ``amazon-ssm-agent.deb`` and ``amazon-cloudwatch-agent.deb`` come from AWS's buckets
and cannot be fetched here, so the twin's S3 holds small packages of the same names whose
services stay up (they talk to no Systems Manager and ship no log), signed by one test key. The
twin renders its payload with that key in place of AWS's SSM Agent key (``ssm_agent_key``) and
its fingerprint in place of AWS's CloudWatch agent one (``cloudwatch_agent_fingerprint``; the
key itself is served where AWS serves its own): the downloads, the signature checks,
``dpkg -i`` and the units are the payload's own, only the key and the packages' contents
differ (a listed deviation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

VERSION: Final = "0.0.0-cmc-twin1"  # older than any of AWS's: a real one would replace it
CLOUDWATCH_AGENT_DIR: Final = "/opt/aws/amazon-cloudwatch-agent"


def _unit(name: str, program: str) -> str:
    return f"""\
[Unit]
Description={name} (stand-in of the cmc-relay image twin)
After=network-online.target

[Service]
ExecStart={program}
Restart=always

[Install]
WantedBy=multi-user.target
"""


def _program(name: str, what: str) -> str:
    return f"""\
#!/bin/sh
echo "{name} stand-in $0: {what} in the twin; staying up"
exec sleep infinity
"""


# The real ctl's fetch-config, for the one form cmc-relay-setup uses: the config must be JSON,
# is kept where the real agent keeps the configs it runs, and -s (re)starts the agent.
CLOUDWATCH_AGENT_CTL: Final = f"""\
#!/bin/sh
# amazon-cloudwatch-agent-ctl stand-in of the cmc-relay image twin: -a fetch-config -m ec2
# [-s] -c file:PATH only.
set -eu
action= config= start=
while [ $# -gt 0 ]; do
  case "$1" in
    -a) action=$2; shift 2 ;;
    -m) shift 2 ;;
    -c) config=$2; shift 2 ;;
    -s) start=1; shift ;;
    *) echo "stand-in: unsupported option $1" >&2; exit 1 ;;
  esac
done
[ "$action" = fetch-config ] || {{ echo "stand-in: only -a fetch-config" >&2; exit 1; }}
case "$config" in
  file:*) path=${{config#file:}} ;;
  *) echo "stand-in: only -c file:PATH" >&2; exit 1 ;;
esac
python3 -m json.tool "$path" >/dev/null
dir={CLOUDWATCH_AGENT_DIR}/etc/amazon-cloudwatch-agent.d
mkdir -p "$dir"
cp "$path" "$dir/file_$(basename "$path")"
if [ -n "$start" ]; then
  systemctl enable amazon-cloudwatch-agent
  systemctl restart amazon-cloudwatch-agent
fi
"""


@dataclass(frozen=True)
class StandIn:
    package: str  # the .deb's name, and dpkg's
    files: dict[str, tuple[str, int]]  # path in the package: content, mode


STAND_INS: Final = {
    "ssm": StandIn(
        "amazon-ssm-agent",
        {
            "usr/bin/amazon-ssm-agent": (
                _program("amazon-ssm-agent", "no Systems Manager"),
                0o755,
            ),
            "lib/systemd/system/amazon-ssm-agent.service": (
                _unit("amazon-ssm-agent", "/usr/bin/amazon-ssm-agent"),
                0o644,
            ),
        },
    ),
    "cloudwatch": StandIn(
        "amazon-cloudwatch-agent",
        {
            f"{CLOUDWATCH_AGENT_DIR[1:]}/bin/amazon-cloudwatch-agent-ctl": (
                CLOUDWATCH_AGENT_CTL,
                0o755,
            ),
            f"{CLOUDWATCH_AGENT_DIR[1:]}/bin/amazon-cloudwatch-agent": (
                _program("amazon-cloudwatch-agent", "no CloudWatch Logs"),
                0o755,
            ),
            "lib/systemd/system/amazon-cloudwatch-agent.service": (
                _unit(
                    "amazon-cloudwatch-agent",
                    f"{CLOUDWATCH_AGENT_DIR}/bin/amazon-cloudwatch-agent",
                ),
                0o644,
            ),
        },
    ),
}


@dataclass(frozen=True)
class AgentPackages:
    debs: dict[str, Path]  # by agent (ssm, cloudwatch); each signature beside it, .deb.sig
    public_key: Path  # ASCII-armored, the test key that signed them
    fingerprint: str  # its primary key's, what the payload pins for the CloudWatch agent

    def signature(self, agent: str) -> Path:
        return self.debs[agent].with_name(self.debs[agent].name + ".sig")


def _gpg(home: Path, *args: str) -> str:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"gpg {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def ending_gpg_agent(home: Path) -> Iterator[None]:
    """gpg starts an agent for each home it uses, which would outlive the run: the one of
    ``home`` is ended when the block is left, however it is left."""
    try:
        yield
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False)  # fmt: skip


def _control(package: str, arch: str) -> str:
    return (
        f"Package: {package}\nVersion: {VERSION}\nArchitecture: {arch}\n"
        "Maintainer: cmc-relay image twin <twin@invalid>\n"
        f"Description: stand-in for AWS's {package} in the cmc-relay image twin\n"
    )


def _build(stand_in: StandIn, arch: str, deb: Path) -> None:
    with tempfile.TemporaryDirectory() as tree:
        os.chmod(tree, 0o755)  # the package's ./, as dpkg-deb records it
        files = {"DEBIAN/control": (_control(stand_in.package, arch), 0o644), **stand_in.files}
        for path, (content, mode) in files.items():
            target = Path(tree) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            os.chmod(target, mode)
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", tree, str(deb)],
            check=True, capture_output=True,
        )  # fmt: skip


def pins(agent: AgentPackages, arch: str = "amd64") -> str:
    """What the twin's payload pins in place of ``agent_pins``: each stand-in's version and
    SHA-256, so the installer downloads it by version and checks its hash."""
    return json.dumps(
        {
            stand_in.package: {
                "version": VERSION,
                "sha256": {arch: hashlib.sha256(agent.debs[name].read_bytes()).hexdigest()},
            }
            for name, stand_in in STAND_INS.items()
        }
    )


def agent_packages(cache: Path, arch: str = "amd64") -> AgentPackages:
    """The signed stand-in packages, built once into ``cache``."""
    home = cache / "aws-agents"
    gnupg, key_file = home / "gnupg", home / "public-key.asc"
    with ending_gpg_agent(gnupg):
        if not key_file.exists():
            gnupg.mkdir(parents=True, exist_ok=True, mode=0o700)
            _gpg(gnupg, "--passphrase", "", "--quick-gen-key",
                 "cmc-relay twin AWS agent stand-ins", "ed25519", "sign", "never")  # fmt: skip
            key_file.write_text(_gpg(gnupg, "--armor", "--export"))
        debs = {}
        for agent, stand_in in STAND_INS.items():
            debs[agent] = deb = home / f"{stand_in.package}.deb"
            signature = deb.with_name(deb.name + ".sig")
            if not (deb.exists() and signature.exists()):
                _build(stand_in, arch, deb)
                signature.unlink(missing_ok=True)
                _gpg(gnupg, "--output", str(signature), "--detach-sign", str(deb))
        colons = _gpg(gnupg, "--with-colons", "--fingerprint")
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line[:4] == "fpr:")
    return AgentPackages(debs, key_file, fingerprint)
