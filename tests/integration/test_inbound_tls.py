"""STARTTLS from the applications to the relay (inboundTls), on real Postfix.

The rig makes the relay's certificate with the real cmc-relay-inbound-cert, as cmc-relay-setup
does at first boot, on top of Debian's stock main.cf (which offers STARTTLS with the snakeoil
certificate): ``may`` and ``encrypt`` must offer the generated certificate, ``none`` nothing.
Layout: ``simworld/netns_rig.py``.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from simworld.netns_rig import INBOUND_CERT, REPO, MakeRig, Rig, new_mail, relay_settings

pytestmark = pytest.mark.integration

CHAIN_FILE = "cmc-relay-inbound-tls.pem"


def chain_file(rig: Rig) -> Path:
    return rig.postfix.config_dir / CHAIN_FILE


def certificate_sha256(pem: str) -> str:
    """SHA-256 of the (first) certificate in a PEM file, as a client computes it from the DER."""
    block = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    assert block, "no certificate in the chain file"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(block[0])).hexdigest()


# The verifier's inbound-tls check, run in the relay's namespace against the rig's Postfix.
VERIFY_CHECK = """
import sys
from tests.host_scripts import load_script
verify = load_script("cmc-relay-verify")
level, config_dir = sys.argv[1:]
host = verify.Host(verify.parse_arguments(["--postfix-config-dir", config_dir]),
                   {"CMC_INBOUND_TLS": level})
try:
    print(verify.inbound_tls(host))
except verify.Fail as failure:
    print(f"FAIL {failure}")
"""


def verifier_check(rig: Rig, level: str | None = None) -> str:
    """The inbound-tls check's detail (``FAIL …`` if it fails), for ``level`` as staged."""
    command = rig.network.exec(
        rig.network.relay, sys.executable, "-c", VERIFY_CHECK,
        level or rig.settings.inbound_tls, rig.postfix.config_dir,
    )  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    ).stdout.strip()


def set_level(rig: Rig, level: str) -> None:
    """smtpd_tls_security_level changed on the running relay, as an operator might."""
    conf = str(rig.postfix.config_dir)
    subprocess.run(["postconf", "-c", conf, "-e", f"smtpd_tls_security_level={level}"], check=True)
    subprocess.run(["postfix", "-c", conf, "reload"], check=True, capture_output=True)


def fingerprint(sha256: str) -> str:
    """As openssl prints it and the verifier reports it: AB:CD:…"""
    return ":".join(sha256[i : i + 2] for i in range(0, len(sha256), 2)).upper()


def openssl(*args: str, data: str) -> str:
    return subprocess.run(
        ["openssl", *args], input=data, capture_output=True, text=True, check=True
    ).stdout


def test_may_offers_the_generated_certificate_and_accepts_plain_clients(rig: Rig) -> None:
    assert rig.settings.inbound_tls == "may"  # the default
    over_tls, plain = new_mail(), new_mail()
    [reply] = rig.submit([over_tls], starttls=True)
    assert reply.accepted, reply
    assert reply.tls in ("TLSv1.2", "TLSv1.3")
    [plain_reply] = rig.submit([plain])
    assert plain_reply.accepted and plain_reply.tls is None
    rig.delivered_once([over_tls, plain])

    # The certificate offered is the one made at boot: for the host's name, from the 0600 file
    # that holds its key, and nowhere else (no temporary copy left behind).
    pem_file = chain_file(rig)
    pem = pem_file.read_text()
    assert reply.tls_cert_sha256 == certificate_sha256(pem)
    kinds = re.findall(r"-----BEGIN ([A-Z ]+)-----", pem)
    assert kinds == ["PRIVATE KEY", "CERTIFICATE"]  # key first: smtpd_tls_chain_files' order
    name = rig.settings.host_name
    text = openssl("x509", "-noout", "-subject", "-ext", "subjectAltName", data=pem)
    assert re.search(rf"subject=\s*CN\s*=\s*{re.escape(name)}\n", text), text
    assert f"DNS:{name}" in text
    key_type = openssl("x509", "-noout", "-text", data=pem)
    assert "id-ecPublicKey" in key_type and "prime256v1" in key_type  # EC P-256
    info = pem_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 0, 0)
    holders = [p.name for p in rig.postfix.config_dir.iterdir() if "PRIVATE KEY" in read(p)]
    assert holders == [CHAIN_FILE]
    assert sorted(p.name for p in pem_file.parent.glob(f"{CHAIN_FILE}*")) == [CHAIN_FILE]
    assert re.search(r"smtpd\[\d+\]: Anonymous TLS connection established from", rig.postfix.log())
    detail = verifier_check(rig)
    assert re.fullmatch(r"may: TLSv1\.[23], sha256 Fingerprint=[0-9A-F:]+, notAfter=.+", detail)
    assert f"Fingerprint={fingerprint(certificate_sha256(pem))}," in detail

    # Re-running (cmc-relay-setup is safe to re-run) keeps the key a client may have pinned.
    again = subprocess.run(
        [str(INBOUND_CERT), name, str(rig.postfix.config_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == f"cmc-relay-inbound-cert: kept {pem_file}\n"
    assert pem_file.read_text() == pem


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def test_encrypt_refuses_plain_clients_before_anything_is_queued(make_rig: MakeRig) -> None:
    rig = make_rig(relay_settings(inbound_tls="encrypt"))
    plain, over_tls = new_mail(), new_mail()
    [refused] = rig.submit([plain])
    assert (refused.stage, refused.code) == ("mail", 530), refused
    assert "STARTTLS" in refused.text
    assert rig.postfix.queue() == []
    assert rig.postfix.queue_ids(plain.message_id) == set()

    [reply] = rig.submit([over_tls], starttls=True)
    assert reply.accepted and reply.tls in ("TLSv1.2", "TLSv1.3"), reply
    assert reply.tls_cert_sha256 == certificate_sha256(chain_file(rig).read_text())
    rig.delivered_once([over_tls])
    assert plain.message_id not in {r.message_id for r in rig.standin.messages()}
    assert verifier_check(rig).startswith("encrypt: TLSv1.")

    set_level(rig, "may")  # TLS still offered, but no longer required
    assert verifier_check(rig) == (
        "FAIL plain clients can send: MAIL FROM without STARTTLS not refused"
    )


def test_none_offers_no_starttls_despite_debians_stock_snakeoil(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    """Debian's stock main.cf offers STARTTLS (security level may) with the snakeoil pair of
    package ssl-cert; with none the relay must not. This machine may lack ssl-cert, so a
    stand-in pair takes the stock parameters' place."""
    snakeoil = tmp_path / "snakeoil.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=snakeoil", "-keyout", snakeoil, "-out", snakeoil],
        check=True, capture_output=True,
    )  # fmt: skip
    stock = {"smtpd_tls_cert_file": str(snakeoil), "smtpd_tls_key_file": str(snakeoil)}
    rig = make_rig(relay_settings(inbound_tls="none"), main_cf=stock)
    mail = new_mail()
    [reply] = rig.submit([mail], starttls=True)
    assert (reply.stage, reply.code, reply.text) == ("starttls", 0, "STARTTLS not offered")
    assert not chain_file(rig).exists()  # no certificate made
    rig.send([mail])  # plain, as such clients do
    rig.delivered_once([mail])
    assert verifier_check(rig) == "STARTTLS not offered"

    # The control: the stock level back, and the snakeoil pair is offered.
    set_level(rig, "may")
    [control] = rig.submit([new_mail()], starttls=True)
    assert control.accepted and control.tls_cert_sha256 == certificate_sha256(snakeoil.read_text())
    assert verifier_check(rig) == "FAIL STARTTLS offered, inboundTls none"
