"""Attacks on the hop to the service (issue 22), against real Postfix and the stand-in.

Each stand-in here plays an attacker on the path: an impostor answering for the service's
name with a certificate from a CA the relay does not trust, or from a trusted CA but for
another name, or a man in the middle stripping STARTTLS. The impostors are as greedy as can
be: they offer AUTH (PLAIN, LOGIN) and accept mail from the relay's address without it. With
the default ``tlsLevel: secure`` none of them gets the API key or a message, in either
``authMode``; the mail waits in the queue. Layout: ``simworld/netns_rig.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cmc_relay.userdata.settings import AuthMode, RelaySettings
from simworld.netns_rig import RELAY_IP, REPO, MakeRig, Rig, new_mail, relay_settings, wait_until

pytestmark = pytest.mark.integration


def settings_for(auth_mode: AuthMode, **changes: Any) -> RelaySettings:
    if auth_mode == "ip":
        return relay_settings(plan="pro", subdomain="acme", auth_mode="ip", **changes)
    return relay_settings(**changes)


def greedy(auth_mode: AuthMode) -> dict[str, Any]:
    """A stand-in that takes whatever the relay gives: AUTH offered (sasl), and mail accepted
    from the relay's address without it."""
    mode = "ip_or_sasl" if auth_mode == "sasl" else "ip"
    return {"auth_mode": mode, "allowed_ips": [RELAY_IP]}


def deferred_reason(rig: Rig) -> str:
    """The reason the one submitted message waits for, once it is in the deferred queue."""
    [queued] = wait_until(
        lambda: [q for q in rig.postfix.queue() if q["queue_name"] == "deferred"],
        60,
        "the message in the deferred queue",
    )
    return str(queued["recipients"][0]["delay_reason"])


def assert_nothing_handed_over(rig: Rig) -> None:
    events = rig.standin.events()
    kinds = {event["event"] for event in events}
    assert "auth" not in kinds, "the impostor was sent AUTH"
    assert "delivery_start" not in kinds, "the impostor was given a MAIL FROM"
    assert rig.standin.stats().messages_accepted == 0
    assert "status=sent" not in rig.postfix.log()


@pytest.mark.parametrize("auth_mode", ["sasl", "ip"])
@pytest.mark.parametrize("impostor", ["another-ca", "another-name"])
def test_impostor_gets_neither_key_nor_mail(
    make_rig: MakeRig, tmp_path: Path, auth_mode: AuthMode, impostor: str
) -> None:
    """Someone answering for the service's name (a private DNS zone, poisoned DNS, BGP) with
    a certificate the relay cannot verify for that name."""
    certificate = (
        {"tls_dir": str(tmp_path / "impostor-ca")}
        if impostor == "another-ca"
        else {"cert_names": ["impostor.example"]}
    )
    rig = make_rig(settings_for(auth_mode), standin={**greedy(auth_mode), **certificate})
    rig.send([new_mail()])

    reason = deferred_reason(rig)
    assert_nothing_handed_over(rig)
    assert "Server certificate not verified" in reason
    assert rig.standin.stats().sessions_total > 0, "the impostor was never reached"


def test_stripped_starttls_in_ip_mode_sends_nothing_in_clear(make_rig: MakeRig) -> None:
    """A man in the middle removes STARTTLS from the genuine service's EHLO reply: without
    AUTH to protect (ip mode), only the TLS level keeps the message off the wire."""
    rig = make_rig(settings_for("ip"), standin={**greedy("ip"), "offer_starttls": False})
    mail = new_mail()
    rig.send([mail])

    reason = deferred_reason(rig)
    assert_nothing_handed_over(rig)
    assert "TLS is required, but was not offered" in reason

    rig.standin.reconfigure(offer_starttls=True)  # the path is clean again
    rig.postfix.flush()
    [record] = rig.delivered_once([mail])
    assert record.tls and record.tls_version in ("TLSv1.2", "TLSv1.3")


def test_api_key_never_goes_over_unverified_tls(make_rig: MakeRig, tmp_path: Path) -> None:
    """Defence in depth: even if the host's TLS level is lowered to ``encrypt`` (which the
    settings refuse with authMode sasl), an impostor with its own CA gets no AUTH."""
    rig = make_rig(
        settings_for("sasl"),
        standin={**greedy("sasl"), "tls_dir": str(tmp_path / "impostor-ca")},
        main_cf={"smtp_tls_security_level": "encrypt"},
    )
    rig.send([new_mail()])

    reason = deferred_reason(rig)
    assert rig.standin.stats().tls_handshakes > 0, "no TLS session: nothing was tested"
    assert_nothing_handed_over(rig)
    # PLAIN and LOGIN ruled out on unverified TLS: Postfix defers rather than go on without.
    assert "cannot authenticate" in reason and "no mechanism available" in reason


# The verifier's smtp-service check, run in the relay's namespace against the rig's Postfix
# and whatever answers for the service there.
VERIFY_CHECK = """
import sys
from tests.host_scripts import load_script
verify = load_script("cmc-relay-verify")
name, port, mode, config_dir, ca = sys.argv[1:]
options = verify.parse_arguments(["--postfix-config-dir", config_dir, "--tls-ca", ca])
env = {"CMC_SMTP_HOST": name, "CMC_SMTP_PORT": port, "CMC_AUTH_MODE": mode}
try:
    print(verify.smtp_service(verify.Host(options, env)))
except verify.Fail as failure:
    print(f"FAIL {failure}")
"""


def verifier_check(rig: Rig) -> str:
    """The smtp-service check's detail (``FAIL …`` if it fails)."""
    settings = rig.settings
    command = rig.network.exec(
        rig.network.relay, sys.executable, "-c", VERIFY_CHECK, settings.relay_host,
        str(settings.smtp_port), settings.auth_mode, rig.postfix.config_dir, rig.trusted_ca,
    )  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    ).stdout.strip()


@pytest.mark.parametrize("auth_mode", ["sasl", "ip"])
def test_verification_fails_on_a_certificate_for_another_name(
    make_rig: MakeRig, auth_mode: AuthMode
) -> None:
    """The deployment's verification names what was presented and the way out."""
    rig = make_rig(settings_for(auth_mode), standin={"cert_names": ["impostor.example"]})
    detail = verifier_check(rig)

    assert detail.startswith("FAIL "), detail
    assert "does not verify for " + rig.settings.relay_host in detail
    assert "impostor.example" in detail and "Testing CA" in detail  # subject/SAN, issuer
    if auth_mode == "ip":
        assert "set tlsLevel encrypt (or may)" in detail
    else:
        assert "sends the API key to a verified service only" in detail
    assert "auth" not in {event["event"] for event in rig.standin.events()}


def test_verification_with_encrypt_reports_the_unverified_certificate(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    """authMode ip, opted out with tlsLevel encrypt: the check passes and says so."""
    settings = settings_for("ip", tls_level="encrypt")
    rig = make_rig(settings, standin={**greedy("ip"), "tls_dir": str(tmp_path / "other-ca")})
    detail = verifier_check(rig)

    assert "STARTTLS not verified (tlsLevel encrypt)" in detail and "Testing CA" in detail
