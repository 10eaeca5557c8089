"""Mail policy on real Postfix (layout: ``simworld/netns_rig.py``): senders without a real
domain rewritten to senderDomain, only allowedSenderDomains let through, the relay's own mail
forwarded to operatorEmail."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from simworld.netns_rig import MakeRig, Rig, new_mail, relay_settings
from simworld.standin import MessageRecord

pytestmark = pytest.mark.integration

SENDER_DOMAIN = "example.com"
OPERATOR = "ops@example.net"


def headers_of(record: MessageRecord) -> EmailMessage:
    assert record.data is not None, "the stand-in records message data"
    message = email.message_from_bytes(record.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def nothing_relayed_or_queued(rig: Rig) -> bool:
    return rig.standin.stats().sessions_total == 0 and not rig.postfix.queue()


@pytest.mark.parametrize(
    ("sender", "rewritten"),
    [
        ("root@localhost", "root@example.com"),  # cron on an application server
        ("www-data", "www-data@example.com"),  # unqualified
        ("cron@ip-10-0-1-5.ap-northeast-1.compute.internal", "cron@example.com"),
        ("app@ip-10-0-1-5.ec2.internal", "app@example.com"),  # us-east-1's host names
        ("batch@ip-10-0-1-5", "batch@example.com"),  # a bare host name
        ("report@build.corp.internal", "report@example.com"),  # under a rewriteDomains entry
        ("Root@LocalHost", "Root@example.com"),  # domains ignore case; local parts keep it
        ("app@client.example", "app@client.example"),  # a real domain stays as it is
    ],
)
def test_senders_without_a_real_domain_are_rewritten_in_envelope_and_headers(
    make_rig: MakeRig, sender: str, rewritten: str
) -> None:
    rig = make_rig(relay_settings(sender_domain=SENDER_DOMAIN, rewrite_domains=["corp.internal"]))
    mail = new_mail(sender=sender, sender_header=f"<{sender}>")
    rig.send([mail])

    [record] = rig.delivered_once([mail])
    assert record.mail_from == rewritten
    headers = headers_of(record)
    assert headers["From"].addresses[0].addr_spec == rewritten
    assert headers["Sender"].addresses[0].addr_spec == rewritten
    assert record.rcpt_tos == (mail.recipient,), "recipients are never rewritten"


def test_without_sender_domain_senders_travel_as_given(rig: Rig) -> None:
    mail = new_mail(sender="root@localhost")
    rig.send([mail])
    [record] = rig.delivered_once([mail])
    assert record.mail_from == "root@localhost"
    assert headers_of(record)["From"].addresses[0].addr_spec == "root@localhost"


def test_a_sender_outside_the_allowed_domains_is_refused_at_mail_from(make_rig: MakeRig) -> None:
    rig = make_rig(relay_settings(allowed_sender_domains=["example.com", "example.org"]))
    [refused] = rig.submit([new_mail(sender="ceo@attacker.example")])

    assert (refused.stage, refused.code) == ("mail", 554)
    assert refused.text.startswith("5.7.1 ")
    assert "allowedSenderDomains" in refused.text
    assert nothing_relayed_or_queued(rig)
    for refused_too in ("app@sub.example.com", "root@localhost", "www-data"):
        [reply] = rig.submit([new_mail(sender=refused_too)])
        assert (reply.stage, reply.code) == ("mail", 554), refused_too
    assert nothing_relayed_or_queued(rig)

    allowed = [new_mail(sender="app@example.com"), new_mail(sender="news@EXAMPLE.org")]
    rig.send(allowed)
    rig.delivered_once(allowed)


def test_allowed_domains_admit_senders_that_rewriting_makes_allowed(make_rig: MakeRig) -> None:
    """The list applies after rewriting: root@localhost becomes root@example.com, allowed."""
    settings = relay_settings(sender_domain=SENDER_DOMAIN, allowed_sender_domains=[SENDER_DOMAIN])
    rig = make_rig(settings)
    [refused] = rig.submit([new_mail(sender="app@client.example")])
    assert (refused.stage, refused.code) == ("mail", 554)

    mails = [new_mail(sender="root@localhost"), new_mail(sender="cron")]
    rig.send(mails)
    records = rig.delivered_once(mails)
    assert sorted(r.mail_from for r in records) == ["cron@example.com", "root@example.com"]


def test_a_bounce_with_the_null_sender_still_relays(make_rig: MakeRig) -> None:
    rig = make_rig(relay_settings(allowed_sender_domains=[SENDER_DOMAIN]))
    bounce = new_mail(sender="", from_header="Mail Delivery System <MAILER-DAEMON@app.x.test>")
    rig.send([bounce])
    [record] = rig.delivered_once([bounce])
    assert record.mail_from == "<>"  # the null sender, as the stand-in records it


def test_the_relays_own_mail_reaches_the_operator_through_the_service(make_rig: MakeRig) -> None:
    """Cron on the relay mails root; a client writes to postmaster: both go to operatorEmail,
    sent as the relay's root rewritten to senderDomain; no local mailbox fills up."""
    settings = relay_settings(sender_domain=SENDER_DOMAIN, operator_email=OPERATOR)
    rig = make_rig(settings)
    cron = new_mail("root", from_header="root (Cron Daemon)")
    rig.sendmail(cron)
    postmaster = new_mail(f"postmaster@{settings.host_name}")
    rig.send([postmaster])

    by_id = {r.message_id: r for r in rig.delivered_once([cron, postmaster])}
    assert by_id[cron.message_id].rcpt_tos == (OPERATOR,)
    assert by_id[cron.message_id].mail_from == "root@example.com"
    assert headers_of(by_id[cron.message_id])["From"].addresses[0].addr_spec == "root@example.com"
    assert by_id[postmaster.message_id].rcpt_tos == (OPERATOR,)
    assert not list(rig.postfix.mail_spool.iterdir()), "mail was delivered to a local mailbox"
