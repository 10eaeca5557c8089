"""Submit mail to the relay over SMTP, run inside the relay's network namespace by the rig.

    ip netns exec NS python smtp_client.py < request.json > replies.json

The request is a JSON object: ``server``, ``port``, ``source`` (the client address to bind),
``declare_size`` (send ``SIZE=`` with MAIL FROM when offered), optionally ``starttls`` (STARTTLS
before the first MAIL, the certificate not verified) and ``messages`` (each with ``sender``,
``recipients`` and ``data``). All messages go over one session. The answer is a JSON list with
one reply per message: ``stage`` (the command that got the final reply: ``mail``, ``rcpt`` or
``data``; ``starttls`` when STARTTLS was asked for and failed, code 0 if it was not offered),
``code`` and ``text``; with ``starttls``, also ``tls`` (the negotiated version) and
``tls_cert_sha256`` (of the relay's certificate, DER, hex).
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import ssl
import sys
from typing import Any


def reply(stage: str, code: int, text: bytes | str) -> dict[str, Any]:
    return {
        "stage": stage,
        "code": code,
        "text": text.decode() if isinstance(text, bytes) else text,
    }


def send(client: smtplib.SMTP, message: dict[str, Any], declare_size: bool) -> dict[str, Any]:
    data = message["data"].encode()
    options = [f"SIZE={len(data)}"] if declare_size and client.has_extn("size") else []
    code, text = client.mail(message["sender"], options)
    if code != 250:
        return reply("mail", code, text)
    for recipient in message["recipients"]:
        code, text = client.rcpt(recipient)
        if code not in (250, 251):
            return reply("rcpt", code, text)
    try:
        code, text = client.data(data)
    except smtplib.SMTPDataError as error:  # refused before 354
        return reply("data", error.smtp_code, error.smtp_error)
    return reply("data", code, text)


def start_tls(client: smtplib.SMTP) -> dict[str, Any]:
    """STARTTLS as a client of a self-signed relay does (no verification): the session's TLS
    fields, or the failed reply."""
    if not client.has_extn("starttls"):
        return reply("starttls", 0, "STARTTLS not offered")
    try:
        client.starttls(context=ssl._create_unverified_context())
    except smtplib.SMTPResponseException as error:
        return reply("starttls", error.smtp_code, error.smtp_error)
    client.ehlo("client.example")
    tls = client.sock
    assert isinstance(tls, ssl.SSLSocket)
    der = tls.getpeercert(binary_form=True) or b""
    return {"tls": tls.version(), "tls_cert_sha256": hashlib.sha256(der).hexdigest()}


def main() -> None:
    request = json.load(sys.stdin)
    replies = []
    with smtplib.SMTP(
        request["server"], request["port"], source_address=(request["source"], 0), timeout=60
    ) as client:
        client.ehlo("client.example")
        session = start_tls(client) if request.get("starttls") else {}
        if "stage" in session:  # STARTTLS failed: no message is sent
            json.dump([session for _ in request["messages"]], sys.stdout)
            return
        for message in request["messages"]:
            answer = {**send(client, message, request["declare_size"]), **session}
            replies.append(answer)
            if answer["stage"] != "data" or answer["code"] != 250:
                client.rset()
    json.dump(replies, sys.stdout)


if __name__ == "__main__":
    main()
