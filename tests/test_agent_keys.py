"""The agents' signing keys the payload pins: a test that fails 90 days before one expires.

gpgv still accepts an expired key's old signatures, so expiry itself breaks nothing; but AWS
signs new packages with its next key around then, and a host whose payload lacks that key
gets no SSM Agent (README, "When AWS rotates an agent's signing key"). 90 days leave time to
ship the next key beside the current one.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from cmc_relay.userdata.render import aws_ssm_agent_key
from tests.host_scripts import load_script

agent = load_script("cmc-relay-install-agent")

WARNING: datetime.timedelta = datetime.timedelta(days=90)
KEY_EXPIRATION_SUBPACKET = 9  # RFC 4880, 5.2.3.6: seconds after the key's creation
PUBLIC_KEY, SIGNATURE = 6, 2


def packets(binary: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet (RFC 4880, 4.2), in order."""
    at = 0
    while at < len(binary):
        octet = binary[at]
        if octet & 0x40:  # new format
            tag, first = octet & 0x3F, binary[at + 1]
            if first < 192:
                head, size = 2, first
            elif first < 224:
                head, size = 3, ((first - 192) << 8) + binary[at + 2] + 192
            else:
                head, size = 6, int.from_bytes(binary[at + 2 : at + 6], "big")
        else:
            tag, width = (octet >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}[octet & 3]
            head, size = 1 + width, int.from_bytes(binary[at + 1 : at + 1 + width], "big")
        yield tag, binary[at + head : at + head + size]
        at += head + size


def subpackets(data: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at < len(data):
        first = data[at]
        if first < 192:
            head, size = 1, first
        elif first < 255:
            head, size = 2, ((first - 192) << 8) + data[at + 1] + 192
        else:
            head, size = 5, int.from_bytes(data[at + 1 : at + 5], "big")
        yield data[at + head] & 0x7F, data[at + head + 1 : at + head + size]
        at += head + size


def expiries(keyring: bytes) -> list[tuple[datetime.datetime, datetime.datetime | None]]:
    """(created, expires or None) of each primary key, from its key packet and the last
    signature that follows it with a key expiration time (its self-signature)."""
    found: list[tuple[datetime.datetime, datetime.datetime | None]] = []
    created = 0
    for tag, body in packets(keyring):
        if tag == PUBLIC_KEY:
            assert body[0] == 4, "a v4 key"
            created = int.from_bytes(body[1:5], "big")
            found.append((datetime.datetime.fromtimestamp(created, datetime.UTC), None))
        elif tag == SIGNATURE and body[0] == 4:
            hashed = body[6 : 6 + int.from_bytes(body[4:6], "big")]
            for kind, value in subpackets(hashed):
                if kind == KEY_EXPIRATION_SUBPACKET:
                    seconds = int.from_bytes(value, "big")
                    expires = datetime.datetime.fromtimestamp(created + seconds, datetime.UTC)
                    found[-1] = (found[-1][0], expires)
    return found


def test_the_shipped_ssm_agent_key_is_read_as_gpg_reads_it() -> None:
    """AWS's key: created 2026-06-04, expires 2027-11-25 (gpg --show-keys says 1780581487 and
    1827151087)."""
    [(created, expires)] = expiries(agent.dearmor(aws_ssm_agent_key()))
    assert created.timestamp() == 1780581487
    assert expires is not None and expires.timestamp() == 1827151087


def test_no_pinned_agent_key_expires_within_90_days() -> None:
    """Fails 90 days before a key of the shipped keyring expires: ship AWS's next key."""
    now = datetime.datetime.now(datetime.UTC)
    for created, expires in expiries(agent.dearmor(aws_ssm_agent_key())):
        assert expires is None or expires - now > WARNING, (
            f"the SSM Agent key created {created:%Y-%m-%d} expires {expires:%Y-%m-%d}: add "
            "AWS's next key to userdata/keys/amazon-ssm-agent.asc (README: When AWS rotates)"
        )
