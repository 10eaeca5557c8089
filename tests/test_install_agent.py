"""userdata/scripts/cmc-relay-install-agent (SSM Agent and the CloudWatch agent): its pure
parts imported, and the script run against a local IMDSv2 and a local HTTPS "regional
distribution" (trustme's CA) serving a package signed with a throwaway gpg key (and, for the
CloudWatch agent, that key), to show it refuses a package whose signature does not match or is
not by the pinned key. Nothing is installed on this machine: the packages are random bytes,
so a run that gets past the signature check ends at dpkg -i, which refuses a non-archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme

from cmc_relay.userdata.render import agent_pins, aws_ssm_agent_key
from simworld.rig.process import command_lines
from simworld.twin.aws_agents import agent_packages, ending_gpg_agent
from tests.host_scripts import SCRIPTS, load_script

SCRIPT = SCRIPTS / "cmc-relay-install-agent"
GPG = shutil.which("gpg")
needs_gpg = pytest.mark.skipif(not (GPG and shutil.which("gpgv")), reason="gpg/gpgv missing")


agent = load_script(SCRIPT.name)
SSM, CLOUDWATCH = agent.AGENTS["ssm"], agent.AGENTS["cloudwatch"]


@pytest.mark.parametrize(
    ("region", "arch", "url"),
    [
        ("ap-northeast-1", "amd64", "https://s3.ap-northeast-1.amazonaws.com/amazon-ssm-ap-northeast-1/latest/debian_amd64/amazon-ssm-agent.deb"),
        ("us-east-1", "arm64", "https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/latest/debian_arm64/amazon-ssm-agent.deb"),
        ("us-gov-west-1", "amd64", "https://s3.us-gov-west-1.amazonaws.com/amazon-ssm-us-gov-west-1/latest/debian_amd64/amazon-ssm-agent.deb"),
        ("cn-north-1", "arm64", "https://s3.cn-north-1.amazonaws.com.cn/amazon-ssm-cn-north-1/latest/debian_arm64/amazon-ssm-agent.deb"),
    ],
)  # fmt: skip
def test_package_url_is_the_regional_distribution(region: str, arch: str, url: str) -> None:
    assert agent.package_url(SSM, region, arch) == url
    assert agent.package_url(SSM, region, arch, "ubuntu") == url  # one package for both


@pytest.mark.parametrize(
    ("region", "arch", "distro", "url"),
    [
        ("ap-northeast-1", "amd64", "debian", "https://amazoncloudwatch-agent-ap-northeast-1.s3.ap-northeast-1.amazonaws.com/debian/amd64/latest/amazon-cloudwatch-agent.deb"),
        ("us-east-1", "arm64", "ubuntu", "https://amazoncloudwatch-agent-us-east-1.s3.us-east-1.amazonaws.com/ubuntu/arm64/latest/amazon-cloudwatch-agent.deb"),
        ("cn-north-1", "amd64", "debian", "https://amazoncloudwatch-agent-cn-north-1.s3.cn-north-1.amazonaws.com.cn/debian/amd64/latest/amazon-cloudwatch-agent.deb"),
    ],
)  # fmt: skip
def test_cloudwatch_agent_url_is_the_regional_download(
    region: str, arch: str, distro: str, url: str
) -> None:
    """AWS's regional download of the CloudWatch agent: a package per OS and architecture."""
    assert agent.package_url(CLOUDWATCH, region, arch, distro) == url


def test_the_cloudwatch_agent_key_is_aws_documented_download() -> None:
    """AWS's documented URL of amazon-cloudwatch-agent.gpg; a test distribution serves it at
    the same path."""
    url = "https://amazoncloudwatch-agent.s3.amazonaws.com/assets/amazon-cloudwatch-agent.gpg"
    assert agent.key_url(CLOUDWATCH, None) == url
    assert agent.key_url(CLOUDWATCH, "https://t.test/cw/") == (
        "https://t.test/cw/assets/amazon-cloudwatch-agent.gpg"
    )
    assert (SSM.key, SSM.fingerprint_variable) == (None, None)  # the payload ships SSM's key


def test_the_os_name_comes_from_os_release(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n')
    assert agent.os_release_id(str(release)) == "ubuntu"
    release.write_text('NAME="Debian GNU/Linux"\nID="debian"\n')
    assert agent.os_release_id(str(release)) == "debian"


@pytest.mark.parametrize(
    ("region", "arch", "base"),
    [
        ("ap-northeast-1", "i386", None),
        ("Tokyo", "amd64", None),
        ("ap-northeast-1/../x", "amd64", None),
        ("ap-northeast-1", "amd64", "http://mirror.example/amazon-ssm"),  # HTTPS only
    ],
)
@pytest.mark.parametrize("package", ["ssm", "cloudwatch"])
def test_package_url_refuses_what_aws_does_not_publish(
    package: str, region: str, arch: str, base: str | None
) -> None:
    with pytest.raises(ValueError):
        agent.package_url(agent.AGENTS[package], region, arch, "debian", base)


def test_package_url_refuses_an_os_aws_builds_no_package_for() -> None:
    with pytest.raises(ValueError, match="'fedora'"):
        agent.package_url(CLOUDWATCH, "ap-northeast-1", "amd64", "fedora")


def test_package_url_takes_a_test_distribution() -> None:
    url = agent.package_url(SSM, "ap-northeast-1", "amd64", "debian", "https://twin.test/ssm/")
    assert url == "https://twin.test/ssm/latest/debian_amd64/amazon-ssm-agent.deb"
    url = agent.package_url(CLOUDWATCH, "ap-northeast-1", "arm64", "ubuntu", "https://t.test/cw")
    assert url == "https://t.test/cw/ubuntu/arm64/latest/amazon-cloudwatch-agent.deb"


@pytest.mark.parametrize(
    ("have", "version", "action"),
    [
        (None, "3.3.1000.0-1", "install"),
        ("3.3.1000.0-1", "3.3.1000.0-1", "same"),
        ("3.3.900.0-1", "3.3.1000.0-1", "install"),  # an upgrade
        ("3.3.1100.0-1", "3.3.1000.0-1", "newer-installed"),  # never a downgrade
    ],
)
def test_install_decision(have: str | None, version: str, action: str) -> None:
    def numbers(v: str) -> list[int]:
        return [int(n) for n in v.replace("-", ".").split(".")]

    assert agent.decide(have, version, lambda a, b: numbers(a) > numbers(b)) == action
    if shutil.which("dpkg"):
        assert agent.decide(have, version, agent.newer) == action


def test_the_shipped_key_is_an_armored_public_key() -> None:
    binary = agent.dearmor(aws_ssm_agent_key())
    assert binary[0] & 0x80  # an OpenPGP packet
    with pytest.raises(ValueError, match="no ASCII-armored public key block"):
        agent.dearmor("not a key")


def make_signer(home: Path, name: str) -> dict[str, Any]:
    """A throwaway key (in its own GNUPGHOME), a package it signed, and a tampered copy."""
    if not (GPG and shutil.which("gpgv")):
        pytest.skip("gpg/gpgv missing")
    home.chmod(0o700)
    with ending_gpg_agent(home):
        gpg = [GPG, "--homedir", str(home), "--batch", "--quiet", "--passphrase", ""]
        uid = f"{name} <{name}@example.invalid>"
        subprocess.run([*gpg, "--quick-gen-key", uid, "rsa2048", "sign", "1d"], check=True)
        key = subprocess.run(
            [*gpg, "--armor", "--export", uid], check=True, capture_output=True
        ).stdout.decode()
        deb = home / "agent.deb"
        deb.write_bytes(os.urandom(4096))
        subprocess.run([*gpg, "--detach-sign", "-o", f"{deb}.sig", str(deb)], check=True)
        tampered = home / "tampered.deb"
        tampered.write_bytes(deb.read_bytes()[:-1] + b"\0")
        fingerprint = subprocess.run(
            [*gpg, "--with-colons", "--fingerprint", uid],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    fpr = next(line.split(":")[9] for line in fingerprint.splitlines() if line[:4] == "fpr:")
    return {"key": key, "deb": deb, "sig": Path(f"{deb}.sig"), "tampered": tampered, "fpr": fpr}


def gpg_agents_of(home: Path) -> list[str]:
    """PIDs of gpg-agents running for ``home``."""
    home_argument = str(home).encode()
    return [
        pid
        for pid, line in command_lines().items()
        if (argv := line.split(b"\0"))[0].endswith(b"gpg-agent") and home_argument in argv
    ]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_signer(tmp_path_factory.mktemp("gnupg"), "twin")


@pytest.fixture(scope="module")
def other_signer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Another throwaway key: its signatures are valid, but it is not the pinned key."""
    return make_signer(tmp_path_factory.mktemp("gnupg-other"), "other")


@needs_gpg
def test_signing_leaves_no_gpg_agent_running(signer: dict[str, Any], tmp_path: Path) -> None:
    """gpg starts an agent per home; the test keys' and the twin's stand-in packages' end."""
    assert gpg_agents_of(signer["deb"].parent) == []
    agent_packages(tmp_path)
    assert len(list((tmp_path / "aws-agents").glob("*.deb.sig"))) == 2  # it signed both
    assert gpg_agents_of(tmp_path / "aws-agents" / "gnupg") == []


@needs_gpg
def test_a_good_signature_names_the_signer(signer: dict[str, Any], tmp_path: Path) -> None:
    keys, fpr = agent.dearmor(signer["key"]), signer["fpr"]
    assert agent.verify(keys, signer["sig"], signer["deb"], str(tmp_path)) == fpr
    assert agent.verify(keys, signer["sig"], signer["deb"], str(tmp_path), frozenset([fpr])) == fpr


@needs_gpg
def test_a_tampered_package_is_refused(signer: dict[str, Any], tmp_path: Path) -> None:
    keys = agent.dearmor(signer["key"])
    with pytest.raises(ValueError, match="BAD signature"):
        agent.verify(
            keys, signer["sig"], signer["tampered"], str(tmp_path), frozenset([signer["fpr"]])
        )


@needs_gpg
def test_a_package_signed_by_another_key_is_refused(signer: dict[str, Any], tmp_path: Path) -> None:
    """The throwaway package against AWS's real key: not AWS's signature."""
    with pytest.raises(ValueError, match="No public key"):
        keys = agent.dearmor(aws_ssm_agent_key())
        agent.verify(keys, signer["sig"], signer["deb"], str(tmp_path))


@needs_gpg
def test_a_valid_signature_by_a_key_other_than_the_pinned_one_is_refused(
    signer: dict[str, Any], other_signer: dict[str, Any], tmp_path: Path
) -> None:
    """A downloaded key vouches for nothing: the other key's own, valid signature, checked
    with the other key, is refused when the pinned fingerprint is not that key's."""
    keys, other, pinned = agent.dearmor(other_signer["key"]), other_signer["fpr"], signer["fpr"]
    with pytest.raises(ValueError, match=f"signed by key {other}, not by the pinned {pinned}"):
        agent.verify(
            keys, other_signer["sig"], other_signer["deb"], str(tmp_path), frozenset([pinned])
        )


@needs_gpg
def test_around_a_rotation_the_current_and_the_next_key_both_verify(
    signer: dict[str, Any], other_signer: dict[str, Any], tmp_path: Path
) -> None:
    """A key file of two armored blocks (the current key, then the next) is one keyring, and
    two pinned fingerprints accept either key's signature: a package signed with AWS's next
    key installs as soon as its key is shipped, before the current one is removed."""
    keys = agent.dearmor(signer["key"] + "\n" + other_signer["key"])
    assert keys == agent.dearmor(signer["key"]) + agent.dearmor(other_signer["key"])
    both = frozenset([signer["fpr"], other_signer["fpr"]])
    for by in (signer, other_signer):
        assert agent.verify(keys, by["sig"], by["deb"], str(tmp_path), both) == by["fpr"]


def test_a_broken_second_key_block_is_refused() -> None:
    broken = aws_ssm_agent_key() + aws_ssm_agent_key().replace("=", "!", 1)
    with pytest.raises(ValueError, match="broken ASCII-armored public key block"):
        agent.dearmor(broken)


def test_an_armored_or_binary_downloaded_key_is_a_keyring() -> None:
    armored = aws_ssm_agent_key()
    assert agent.keyring(armored.encode()) == agent.dearmor(armored)
    assert agent.keyring(agent.dearmor(armored)) == agent.dearmor(armored)


class World(BaseHTTPRequestHandler):
    """IMDSv2 (http) or the distribution (https), by the server it is attached to."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.requests.append(f"PUT {self.path}")
        ok = (
            self.path == "/latest/api/token"
            and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        )
        self.reply(200, b"TOKEN") if ok else self.reply(400)

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        if self.path == "/latest/meta-data/placement/region":
            ok = self.headers["X-aws-ec2-metadata-token"] == "TOKEN"
            self.reply(200, b"ap-northeast-1\n") if ok else self.reply(401)
        elif self.path in self.files:
            self.reply(200, self.files[self.path])
        else:
            self.reply(404)


def serve(server: HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    https = HTTPServer(("127.0.0.1", 0), World)
    https.socket = context.wrap_socket(https.socket, server_side=True)
    imds = HTTPServer(("127.0.0.1", 0), World)
    shipped_pins = tmp_path_factory.mktemp("pins") / "agent-pins.json"
    shipped_pins.write_text(agent_pins())  # as the bundle ships them: none yet
    for distribution in serve(https):
        for metadata in serve(imds):
            yield {
                "base": f"https://{distribution}/ssm",
                "imds": f"http://{metadata}",
                "ca": str(bundle),
                "pins": str(shipped_pins),
            }


def run_script(
    world: dict[str, str],
    package: str,
    key: Path | str,
    *args: str,
    fingerprint: str = "",
    pins: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": world["imds"],
        agent.AGENTS[package].base_variable: world["base"],
        "SSL_CERT_FILE": world["ca"],
        "CMC_CLOUDWATCH_AGENT_FINGERPRINT": fingerprint,
        "CMC_AGENT_PINS": str(pins or world["pins"]),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), package, str(key), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dpkg_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout


@needs_gpg
@pytest.mark.parametrize(
    ("package", "path"),
    [
        ("ssm", "/ssm/latest/debian_{arch}/amazon-ssm-agent.deb"),
        ("cloudwatch", "/ssm/{distro}/{arch}/latest/amazon-cloudwatch-agent.deb"),
    ],
)
def test_the_script_refuses_a_package_with_a_bad_signature(
    world: dict[str, str], signer: dict[str, Any], tmp_path: Path, package: str, path: str
) -> None:
    path = path.format(arch=dpkg_arch().strip(), distro=agent.os_release_id())
    World.files = {
        path: signer["tampered"].read_bytes(),
        f"{path}.sig": signer["sig"].read_bytes(),
        KEY_PATH: signer["key"].encode(),
    }
    World.requests.clear()
    key = tmp_path / "key.asc"
    key.write_text(signer["key"])
    result = run_script(world, package, key, fingerprint=signer["fpr"])
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"REFUSED to install {world['base'].removesuffix('/ssm')}{path}: bad" in result.stdout
    assert "bad signature" in result.stdout and "BAD signature" in result.stdout
    assert World.requests[:2] == ["PUT /latest/api/token", "GET /latest/meta-data/placement/region"]
    downloaded = [f"GET {KEY_PATH}"] if package == "cloudwatch" else []  # SSM's key is shipped
    assert World.requests[2:] == [*downloaded, f"GET {path}.sig", f"GET {path}"]
    assert "dpkg -i" not in result.stdout


KEY_PATH = "/ssm/assets/amazon-cloudwatch-agent.gpg"  # under the test distribution's base


@needs_gpg
@pytest.mark.parametrize("pinned", ["signer", "other"])
def test_the_cloudwatch_agent_is_installed_only_if_signed_by_the_pinned_key(
    world: dict[str, str],
    signer: dict[str, Any],
    other_signer: dict[str, Any],
    pinned: str,
) -> None:
    """The distribution serves the signer's key and a package the signer validly signed:
    accepted with the signer's fingerprint pinned (it gets to dpkg -i, which refuses random
    bytes), refused before dpkg -i with another key's pinned."""
    path = f"/ssm/{agent.os_release_id()}/{dpkg_arch().strip()}/latest/amazon-cloudwatch-agent.deb"
    World.files = {
        path: signer["deb"].read_bytes(),
        f"{path}.sig": signer["sig"].read_bytes(),
        KEY_PATH: signer["key"].encode(),
    }
    fingerprint = {"signer": signer, "other": other_signer}[pinned]["fpr"]
    result = run_script(world, "cloudwatch", "", fingerprint=fingerprint)
    if pinned == "signer":
        assert f"signature good, by {signer['fpr']}" in result.stdout, result.stdout
        assert result.returncode == 7 and "dpkg -i failed" in result.stdout, result.stdout
    else:
        assert result.returncode == 5, result.stdout + result.stderr
        assert f"signed by key {signer['fpr']}, not by the pinned {fingerprint}" in result.stdout
        assert "signature good" not in result.stdout and "dpkg -i" not in result.stdout


@pytest.mark.parametrize(
    "fingerprint",
    [
        "",
        "937616f3450b7d806cbd9725d58167303b789c72",
        "3B789C72",
        "937616F3450B7D806CBD9725D58167303B789C72 3B789C72",  # one of two is not
    ],
)
def test_the_cloudwatch_agent_needs_a_pinned_fingerprint(fingerprint: str) -> None:
    """Checked before anything is asked of the network: no metadata service is given."""
    env = {"PATH": os.environ["PATH"], "CMC_CLOUDWATCH_AGENT_FINGERPRINT": fingerprint}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "cloudwatch"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CMC_CLOUDWATCH_AGENT_FINGERPRINT: not key fingerprints" in result.stdout


@needs_gpg
def test_the_script_reports_a_missing_package(
    world: dict[str, str], signer: dict[str, Any], tmp_path: Path
) -> None:
    World.files = {}
    key = tmp_path / "key.asc"
    key.write_text(signer["key"])
    result = run_script(world, "cloudwatch", key, "", "5", fingerprint=signer["fpr"])
    assert result.returncode == 6, result.stdout + result.stderr
    assert "HTTP 404" in result.stdout


def test_the_script_does_nothing_off_ec2(tmp_path: Path) -> None:
    data = tmp_path / "instance-data.json"
    data.write_text(json.dumps({"v1": {"platform": "nocloud"}}))
    key = tmp_path / "key.asc"
    key.write_text(aws_ssm_agent_key())
    env = {"PATH": os.environ["PATH"]}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "ssm", str(key), str(data)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 9, result.stdout + result.stderr
    assert "not an EC2 instance (cloud-init platform nocloud)" in result.stdout


def test_the_script_needs_a_key(tmp_path: Path) -> None:
    key = tmp_path / "key.asc"
    key.write_text("garbage")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "ssm", str(key)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "no ASCII-armored public key block" in result.stdout


def test_the_script_needs_an_agent_it_knows() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "xray"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "AGENT: ssm, cloudwatch" in result.stdout


def test_without_a_key_file_the_script_says_so(tmp_path: Path) -> None:
    """Without SSM Agent's key file, the install stops before any download and names it."""
    key = tmp_path / "amazon-ssm-agent.asc"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "ssm", str(key)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{key}: [Errno 2] No such file or directory" in result.stdout


def packets(binary: bytes) -> list[bytes]:
    """OpenPGP packets (RFC 4880, 4.2), each with its header, in order."""
    found, at = [], 0
    while at < len(binary):
        tag = binary[at]
        assert tag & 0x80, "not an OpenPGP packet"
        if tag & 0x40:  # new format
            first = binary[at + 1]
            if first < 192:
                head, size = 2, first
            elif first < 224:
                head, size = 3, ((first - 192) << 8) + binary[at + 2] + 192
            else:
                head, size = 6, int.from_bytes(binary[at + 2 : at + 6], "big")
        else:  # old format: length type in the low two bits
            width = {0: 1, 1: 2, 2: 4}[tag & 3]
            head, size = 1 + width, int.from_bytes(binary[at + 1 : at + 1 + width], "big")
        found.append(binary[at : at + head + size])
        at += head + size
    return found


def test_the_shipped_key_is_aws_published_key_without_the_cross_certification() -> None:
    """Byte for byte AWS's key packet, user ID and self-signature; of the published block only
    the certification by AWS's older key 7DD097A3DAD7F5FC is left out."""
    published = (Path(__file__).parent / "data" / "amazon-ssm-agent.published.asc").read_text()
    full, shipped = packets(agent.dearmor(published)), packets(agent.dearmor(aws_ssm_agent_key()))
    assert len(full) == 4 and shipped == full[:3]
    assert b"SSM Agent <ssm-agent-signer@amazon.com>" in shipped[1]
    assert bytes.fromhex("7DD097A3DAD7F5FC") in full[3]  # the issuer of the dropped packet
    assert bytes.fromhex("2784DBF388D19D46") in shipped[2]  # self-signed


@needs_gpg
@pytest.mark.parametrize("package", ["ssm", "cloudwatch"])
@pytest.mark.parametrize("matches", [True, False])
def test_a_pinned_package_is_downloaded_by_version_and_refused_unless_its_hash_matches(
    world: dict[str, str], signer: dict[str, Any], tmp_path: Path, package: str, matches: bool
) -> None:
    """The pinned version's URL, not latest; a package of another SHA-256 is refused before
    its signature is checked; the pinned one goes on to the signature and dpkg -i (which
    refuses the signer's random bytes: exit 7)."""
    arch, version = dpkg_arch().strip(), "3.3.1000.0"
    name = agent.AGENTS[package].package
    distro, base = agent.os_release_id(), "https://x/ssm"
    url = agent.package_url(agent.AGENTS[package], "ap-northeast-1", arch, distro, base, version)
    path = url.removeprefix("https://x")  # the same path under the test distribution
    deb = signer["deb"].read_bytes()
    World.files = {
        path: deb,
        f"{path}.sig": signer["sig"].read_bytes(),
        KEY_PATH: signer["key"].encode(),
    }
    World.requests.clear()
    digest = hashlib.sha256(deb if matches else b"another build").hexdigest()
    pins = tmp_path / "agent-pins.json"
    pins.write_text(json.dumps({**json.loads(agent_pins()), name: {
        "version": version, "sha256": {arch: digest}}}))  # fmt: skip
    key = tmp_path / "key.asc"
    key.write_text(signer["key"])
    result = run_script(world, package, key, fingerprint=signer["fpr"], pins=pins)
    assert f"GET {path}" in World.requests and "latest" not in " ".join(World.requests[2:])
    assert f"{name} {version}, SHA-256 {digest}" in result.stdout
    if matches:
        assert f"signature good, by {signer['fpr']}" in result.stdout, result.stdout
        assert result.returncode == 7 and "dpkg -i failed" in result.stdout, result.stdout
    else:
        assert result.returncode == 5, result.stdout
        got = hashlib.sha256(deb).hexdigest()
        assert f"SHA-256 {got}, not the pinned {digest}" in result.stdout
        assert "signature good" not in result.stdout and "dpkg -i" not in result.stdout


def test_the_shipped_pins_name_both_agents() -> None:
    """Each agent pinned ({"version", "sha256": {ARCH: ...}}) or null: latest, signature only."""
    pins = json.loads(agent_pins())
    assert set(pins) == {a.package for a in agent.AGENTS.values()}
    for pinned in pins.values():
        assert pinned is None or set(pinned["sha256"]) == {"amd64", "arm64"}
