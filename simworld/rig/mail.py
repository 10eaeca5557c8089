"""Test messages and the relay's answers to them."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Mail:
    """A test message with a unique Message-ID and body."""

    recipient: str
    message_id: str
    data: str
    sender: str = "app@client.example"

    @property
    def body_sha256(self) -> str:
        """As the stand-in computes it: the bytes after the header block."""
        return hashlib.sha256(self.data.partition("\r\n\r\n")[2].encode()).hexdigest()


def new_mail(
    recipient: str = "user@example.com",
    *,
    padding: int = 0,
    sender: str = Mail.sender,
    from_header: str | None = None,
    sender_header: str | None = None,
) -> Mail:
    """A message from ``sender`` (envelope; "" is the null sender of bounces), with a From:
    header of ``<sender>`` unless ``from_header`` is given, and a Sender: header if given."""
    token = uuid.uuid4().hex
    message_id = f"<{token}@cmcrt.test>"
    body = f"cmc relay integration test {token}\r\n" + ("x" * 76 + "\r\n") * (padding // 78)
    headers = {"From": from_header or f"<{sender}>", "Sender": sender_header}
    data = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if value) + (
        f"To: <{recipient}>\r\nSubject: relay test\r\nMessage-ID: {message_id}\r\n\r\n{body}"
    )
    return Mail(recipient, message_id, data, sender)


def new_mails(count: int, recipient: str = "user@example.com") -> list[Mail]:
    return [new_mail(recipient) for _ in range(count)]


@dataclass(frozen=True)
class Reply:
    """The relay's final answer to one submitted message."""

    stage: str
    code: int
    text: str
    tls: str | None = None
    """With ``starttls``: the TLS version the session negotiated."""
    tls_cert_sha256: str | None = None
    """With ``starttls``: the SHA-256 of the certificate the relay offered (DER, hex)."""

    @property
    def accepted(self) -> bool:
        return self.stage == "data" and self.code == 250
