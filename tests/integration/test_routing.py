"""Where the rendered relay sends mail, and what it refuses at its own door.

Real Postfix with the debian-12 rendering, in network namespaces (layout:
``simworld/netns_rig.py``).
"""

from __future__ import annotations

import pytest

from simworld.netns_rig import (
    CLIENT_OUTSIDE,
    RELAY_IP,
    SERVICE_IPS,
    MakeRig,
    Rig,
    new_mail,
    relay_settings,
)

pytestmark = pytest.mark.integration


def test_local_names_stay_local_and_the_rest_is_relayed(rig: Rig) -> None:
    """G2: the host's own names and localhost are delivered locally; G3: others go out."""
    settings = rig.settings
    local = [
        new_mail(f"root@{settings.host_name}"),
        new_mail(f"root@{settings.short_host_name}"),
        new_mail("root@localhost"),
        new_mail("postmaster@localhost.localdomain"),  # aliased to root
    ]
    external = new_mail("user@example.com")
    rig.send([*local, external])

    [record] = rig.delivered_once([external])
    assert record.rcpt_tos == ("user@example.com",)
    for mail in local:
        delivery = rig.postfix.first_attempt(mail.message_id)
        assert (delivery.relay, delivery.status) == ("local", "sent"), mail.recipient
    mailbox = (rig.postfix.mail_spool / "root").read_text()
    assert all(mail.message_id in mailbox for mail in local)
    relayed = {r.message_id for r in rig.standin.messages()}
    assert relayed == {external.message_id}, "local mail reached the service"


def test_open_relay_refused(rig: Rig) -> None:
    """Only allowedCidrs may relay: anyone else gets "Relay access denied" at RCPT."""
    stranger, member = new_mail(), new_mail()
    [refused] = rig.submit([stranger], source=CLIENT_OUTSIDE)
    assert (refused.stage, refused.code) == ("rcpt", 554)
    assert "Relay access denied" in refused.text

    rig.send([member])  # from inside 192.0.2.0/26
    rig.delivered_once([member])
    assert stranger.message_id not in {r.message_id for r in rig.standin.messages()}


@pytest.mark.parametrize("declare_size", [True, False], ids=["size-declared", "size-unknown"])
def test_oversized_message_refused_by_the_relay(make_rig: MakeRig, declare_size: bool) -> None:
    """message_size_limit: Postfix itself answers 552 5.3.4 while the client is connected,
    at MAIL FROM when SIZE is declared, else at the end of DATA. The service never sees it."""
    limit = 100_000
    rig = make_rig(relay_settings(message_size_limit=limit))  # stand-in allows 10 MB
    [reply] = rig.submit([new_mail(padding=limit + 10_000)], declare_size=declare_size)

    assert (reply.stage, reply.code) == ("mail" if declare_size else "data", 552)
    assert reply.text.startswith("5.3.4 ")  # Postfix's own; the stand-in saw nothing
    assert rig.standin.stats().sessions_total == 0
    assert not rig.postfix.queue()


def test_pro_ip_mode_delivers_without_auth(make_rig: MakeRig) -> None:
    """G4, G8: Pro plan with IP address authentication; the host is SUBDOMAIN.smtps.jp and
    the service lets the relay's registered address in without SMTP AUTH."""
    settings = relay_settings(plan="pro", subdomain="acme", auth_mode="ip")
    rig = make_rig(settings, standin={"auth_mode": "ip", "allowed_ips": [RELAY_IP]})
    mail = new_mail()
    rig.send([mail])

    [record] = rig.delivered_once([mail])
    assert (record.client_ip, record.auth_user, record.tls) == (RELAY_IP, None, True)
    assert rig.standin.stats().auth_attempts == 0
    [delivery] = rig.postfix.deliveries_of(mail.message_id)
    assert delivery.relay in {f"acme.smtps.jp[{ip}]:10025" for ip in SERVICE_IPS}
