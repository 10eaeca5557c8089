"""A stand-in for AWS's SSM Agent package, served by the twin's S3 as AWS serves the real one.

The real ``amazon-ssm-agent.deb`` comes from AWS's regional bucket and cannot be fetched here,
so the twin's S3 holds a small package of the same name whose service stays up (it talks to no
Systems Manager), signed by a test key. The twin renders its payload with that test key in
place of AWS's (``ssm_agent_key``): the download, the signature check, ``dpkg -i`` and the unit
are the payload's own, only the key and the package's contents differ (a listed deviation).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PACKAGE: Final = "amazon-ssm-agent"
VERSION: Final = "3.3.0.0-cmc-twin1"
UNIT: Final = """\
[Unit]
Description=amazon-ssm-agent (stand-in of the cmc-relay image twin)
After=network-online.target

[Service]
ExecStart=/usr/bin/amazon-ssm-agent
Restart=always

[Install]
WantedBy=multi-user.target
"""
PROGRAM: Final = """\
#!/bin/sh
echo "amazon-ssm-agent stand-in $0: no Systems Manager in the twin; staying up"
exec sleep infinity
"""


@dataclass(frozen=True)
class AgentPackage:
    deb: Path
    signature: Path
    public_key: str  # ASCII-armored, what the payload is rendered with


def _gpg(home: Path, *args: str) -> str:
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"gpg {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _control(arch: str) -> str:
    return (
        f"Package: {PACKAGE}\nVersion: {VERSION}\nArchitecture: {arch}\n"
        "Maintainer: cmc-relay image twin <twin@invalid>\n"
        "Description: stand-in for AWS's SSM Agent in the cmc-relay image twin\n"
    )


def agent_package(cache: Path, arch: str = "amd64") -> AgentPackage:
    """The signed stand-in package, built once into ``cache``."""
    home = cache / "ssm-agent"
    deb, signature = home / f"{PACKAGE}.deb", home / f"{PACKAGE}.deb.sig"
    key_file = home / "public-key.asc"
    if not (deb.exists() and signature.exists() and key_file.exists()):
        gnupg = home / "gnupg"
        gnupg.mkdir(parents=True, exist_ok=True, mode=0o700)
        _gpg(gnupg, "--passphrase", "", "--quick-gen-key", "cmc-relay twin SSM Agent stand-in",
             "ed25519", "sign", "never")  # fmt: skip
        key_file.write_text(_gpg(gnupg, "--armor", "--export"))
        with tempfile.TemporaryDirectory() as tree:
            files = {
                "DEBIAN/control": (_control(arch), 0o644),
                "usr/bin/amazon-ssm-agent": (PROGRAM, 0o755),
                "lib/systemd/system/amazon-ssm-agent.service": (UNIT, 0o644),
            }
            for path, (content, mode) in files.items():
                target = Path(tree) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                os.chmod(target, mode)
            subprocess.run(
                ["dpkg-deb", "--root-owner-group", "--build", tree, str(deb)],
                check=True, capture_output=True,
            )  # fmt: skip
        signature.unlink(missing_ok=True)
        _gpg(gnupg, "--output", str(signature), "--detach-sign", str(deb))
    return AgentPackage(deb, signature, key_file.read_text())
