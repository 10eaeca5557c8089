"""The relay's own SMTP door (issue 22): greeting, HELO, VRFY, inbound TLS floor and the
Received: header policy, on real Postfix in the rig (``simworld/netns_rig.py``).

The clients run in the relay's namespace from an address inside allowedCidrs: an
application server, or whatever took one over.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from simworld.netns_rig import CLIENT_INSIDE, REPO, MakeRig, Rig, new_mail, relay_settings

pytestmark = pytest.mark.integration

# Raw SMTP commands, one reply each: [[code, text], ...], the greeting first.
CONVERSATION = """
import json, smtplib, sys
server, source, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = smtplib.SMTP(timeout=30, source_address=(source, 0))
replies = [client.connect(server, 25)]
replies += [client.docmd(command) for command in commands]
print(json.dumps([[code, text.decode()] for code, text in replies]))
"""

# STARTTLS offering only TLS 1.0 and 1.1, to the relay and, as a control, to a local server
# that allows them: proof that this machine's OpenSSL lets the client try (@SECLEVEL=0), so
# a failure with the relay is the relay's refusal.
OLD_TLS = """
import json, smtplib, socket, ssl, sys, threading, trustme
server, source = sys.argv[1:]

def old_client():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    return context

def control():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    trustme.CA().issue_cert("control.test").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    def serve():
        connection, _ = listener.accept()
        try:
            context.wrap_socket(connection, server_side=True).close()
        except ssl.SSLError:
            connection.close()
    threading.Thread(target=serve, daemon=True).start()
    with socket.create_connection(listener.getsockname(), timeout=10) as raw:
        with old_client().wrap_socket(raw) as tls:
            return tls.version()

def relay():
    with smtplib.SMTP(server, 25, "client.example", 30, (source, 0)) as client:
        client.ehlo()
        try:
            client.starttls(context=old_client())
        except (ssl.SSLError, smtplib.SMTPServerDisconnected) as error:
            return "refused: " + str(error)
        return client.sock.version()

print(json.dumps({"control": control(), "relay": relay()}))
"""


def in_relay_ns(rig: Rig, script: str, *args: str) -> Any:
    command = rig.network.exec(rig.network.relay, sys.executable, "-c", script, *args)
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, timeout=60)
    return json.loads(out.stdout)


def converse(rig: Rig, *commands: str) -> list[tuple[int, str]]:
    """The relay's greeting and its reply to each command, from a client inside allowedCidrs."""
    args = (rig.network.relay_ip, CLIENT_INSIDE, json.dumps(commands))
    return [(code, text) for code, text in in_relay_ns(rig, CONVERSATION, *args)]


def test_greeting_names_no_software_or_os(rig: Rig) -> None:
    [(code, banner)] = converse(rig)
    assert (code, banner) == (220, f"{rig.settings.host_name} ESMTP")


def test_mail_without_helo_is_refused(rig: Rig) -> None:
    _, (code, text) = converse(rig, "MAIL FROM:<app@client.example>")
    assert code == 503 and "HELO/EHLO" in text


@pytest.mark.parametrize(
    ("helo", "accepted"),
    [
        ("app..client.example", False),  # an empty label
        ("app server", False),
        (CLIENT_INSIDE, True),  # a bare address: not RFC 5321, but let through
        ("appserver", True),  # application servers often say their short name
        (f"[{CLIENT_INSIDE}]", True),
    ],
)
def test_helo_name_is_checked(rig: Rig, helo: str, accepted: bool) -> None:
    replies = converse(
        rig, f"EHLO {helo}", "MAIL FROM:<app@client.example>", "RCPT TO:<user@example.com>"
    )
    code, text = replies[-1]
    if accepted:
        assert code == 250, text
    else:
        assert code == 501 and "Helo command rejected: Invalid name" in text, (code, text)


def test_vrfy_is_off(rig: Rig) -> None:
    _, _, (code, text) = converse(rig, "EHLO client.example", "VRFY root")
    assert code == 502 and "VRFY command is disabled" in text
    assert "VRFY" not in converse(rig, "EHLO client.example")[1][1]


def test_inbound_tls_below_1_2_is_refused(rig: Rig) -> None:
    result = in_relay_ns(rig, OLD_TLS, rig.network.relay_ip, CLIENT_INSIDE)
    assert result["control"] in ("TLSv1", "TLSv1.1"), "this client cannot offer old TLS here"
    assert result["relay"].startswith("refused: "), result
    assert "SSL_accept error" in rig.postfix.log()


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keepReceivedHeaders"])
def test_received_headers_leave_only_when_asked(make_rig: MakeRig, keep: bool) -> None:
    rig = make_rig(relay_settings(keep_received_headers=keep))
    mail = new_mail()
    rig.send([mail])
    [record] = rig.delivered_once([mail])

    assert record.data is not None
    headers = record.data.partition(b"\r\n\r\n")[0].decode()
    leaked = [line for line in headers.splitlines() if line.startswith("Received:")]
    if keep:
        assert leaked and CLIENT_INSIDE in headers and rig.settings.host_name in headers
    else:
        assert not leaked, headers
        assert CLIENT_INSIDE not in headers and rig.settings.host_name not in headers
