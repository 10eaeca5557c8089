"""SMTP AUTH as the API user over TLS (G6, G7, G11), and what happens when either fails.

The password table is written by the real cmc-relay-fetch-secret from (moto's) Secrets
Manager, so these tests prove the chain secret -> table -> AUTH.
"""

from __future__ import annotations

import re

import pytest

from simworld.netns_rig import API_USER, Mail, MakeRig, Rig, new_mail, wait_until

pytestmark = pytest.mark.integration


def wait_until_deferred(rig: Rig, mail: Mail) -> str:
    """The deferral reason once the message sits in the deferred queue (not bounced)."""
    attempt = rig.postfix.first_attempt(mail.message_id)
    assert attempt.status == "deferred", attempt
    [queued] = wait_until(
        lambda: [q for q in rig.postfix.queue() if q["queue_name"] == "deferred"],
        30,
        "the message in the deferred queue",
    )
    assert "status=bounced" not in rig.postfix.log()
    return str(queued["recipients"][0]["delay_reason"])


def test_auth_as_the_api_user_over_tls_on_every_session(rig: Rig) -> None:
    mails = [new_mail() for _ in range(5)]
    rig.send(mails)
    records = rig.delivered_once(mails)

    assert all(r.tls and r.auth_user == API_USER for r in records)
    stats = rig.standin.stats()
    assert stats.tls_handshakes == stats.sessions_total > 0
    auths = [e for e in rig.standin.events() if e["event"] == "auth"]
    assert auths, "no AUTH command reached the service"
    assert all(e["tls"] and e["user"] == API_USER and e["result"] == "ok" for e in auths)
    # G11: smtp_tls_loglevel 1 logs each session's TLS (the smtp client's line; tlsproxy,
    # which holds the TLS side of reused connections, logs the same).
    established = re.findall(
        rf"postfix/smtp\[\d+\]: .*TLS connection established to "
        rf"{re.escape(rig.settings.relay_host)}\[",
        rig.postfix.log(),
    )
    assert len(established) == stats.sessions_total


@pytest.mark.parametrize(
    "auth_in_clear", [True, False], ids=["auth-offered-in-clear", "auth-not-offered"]
)
def test_stripped_starttls_sends_no_password_and_defers(
    make_rig: MakeRig, auth_in_clear: bool
) -> None:
    """A downgraded session must not carry the API key, and the mail must wait, not bounce.
    Without AUTH offered the service answers 530, which the reply filter makes a 454.
    The default tlsLevel secure never gets this far ("TLS is required", see
    test_service_tls.py); this is the SASL options' and the reply filter's own defence, with
    the host's level lowered to may as an operator's edit would (the settings refuse it)."""
    rig = make_rig(
        standin={"offer_starttls": False, "auth_over_plaintext": auth_in_clear},
        main_cf={"smtp_tls_security_level": "may"},
    )
    mail = new_mail()
    rig.send([mail])

    reason = wait_until_deferred(rig, mail)
    stats = rig.standin.stats()
    assert (stats.auth_attempts, stats.auth_plaintext, stats.messages_accepted) == (0, 0, 0)
    if auth_in_clear:
        assert "SASL authentication failed" in reason
    else:
        assert stats.error_replies.get("530"), "the service was never asked"
        assert "454 4.7.0 Authentication required" in reason

    # STARTTLS back, and the level: at may the session is not verified, so no AUTH either.
    rig.standin.reconfigure(offer_starttls=True)
    conf = str(rig.postfix.config_dir)
    rig.postfix.command("postconf", "-c", conf, "-e", "smtp_tls_security_level=secure")
    rig.postfix.command("postfix", "-c", conf, "reload")
    rig.postfix.flush()
    [record] = rig.delivered_once([mail])
    assert record.tls and record.auth_user == API_USER
    assert rig.standin.stats().auth_plaintext == 0


def test_wrong_api_key_defers_until_the_secret_is_fixed(make_rig: MakeRig) -> None:
    """535 defers (4.7.8) rather than bouncing; the fetch script installs the fixed key."""
    rig = make_rig(api_key="not-the-key")
    assert rig.credentials is not None
    mail = new_mail()
    rig.send([mail])

    reason = wait_until_deferred(rig, mail)
    assert "535" in reason
    assert rig.standin.stats().auth_failed >= 1

    rig.credentials.store(rig.api_key)
    fetched = rig.credentials.install()
    assert "postfix reloaded" in fetched.stdout
    rig.postfix.flush()
    [record] = rig.delivered_once([mail])
    assert record.auth_user == API_USER
