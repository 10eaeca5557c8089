"""The IMDS stand-in on loopback: listings, user data, IMDSv2 tokens, and the role's
credentials refused without a token (``http_tokens = required``)."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from simworld.twin import imds

USER_DATA = gzip.compress(b"#cloud-config\n{}\n", mtime=0)
FACTS = {
    "mac": "0e:c2:7e:00:00:0a",
    "region": "ap-northeast-1",
    "role": "relay-role",
    "account_id": "123456789012",
    "ami_id": "ami-0123456789abcdef0",
    "instance_id": "i-0123456789abcdef0",
    "instance_type": "t3.small",
    "local_ipv4": "10.0.1.10",
    "local_hostname": "ip-10-0-1-10.ap-northeast-1.compute.internal",
    "subnet_cidr": "10.0.1.0/24",
    "vpc_cidr": "10.0.0.0/16",
    "user_data_base64": base64.b64encode(USER_DATA).decode(),
}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    events = tmp_path / "events.jsonl"
    metadata = imds.Metadata(imds.instance_tree(FACTS), events)
    server = ThreadingHTTPServer(("127.0.0.1", 0), imds.handler(metadata))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", events
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {imds.TOKEN_HEADER: token} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def token(base_url: str, ttl: str = "60") -> str:
    request = urllib.request.Request(
        base_url + imds.TOKEN_PATH, method="PUT", headers={imds.TTL_HEADER: ttl}
    )
    with urllib.request.urlopen(request) as response:
        return response.read().decode()


def test_listings_and_leaves_as_ec2_answers_them(base: tuple[str, Path]) -> None:
    url, _ = base
    assert get(url + "/")[1].decode().splitlines()[0] == "latest"
    status, listing = get(url + "/2021-03-23/meta-data/")
    assert status == 200
    assert {"instance-id", "placement/", "network/", "iam/"} <= set(listing.decode().split())
    assert get(url + "/latest/meta-data/placement/region") == (200, b"ap-northeast-1")
    macs = get(url + "/latest/meta-data/network/interfaces/macs/")[1].decode()
    assert macs == "0e:c2:7e:00:00:0a/"
    assert get(url + "/latest/user-data") == (200, USER_DATA)
    document = json.loads(get(url + "/latest/dynamic/instance-identity/document")[1])
    assert document["instanceId"] == "i-0123456789abcdef0"
    assert get(url + "/latest/meta-data/no-such-thing")[0] == 404
    assert get(url + "/1999-01-01/meta-data/")[0] == 404


def test_role_credentials_need_a_token(base: tuple[str, Path]) -> None:
    url, events = base
    path = "/latest/meta-data/iam/security-credentials/"
    assert get(url + path)[1] == b"relay-role"  # the listing names the role
    assert get(url + path + "relay-role")[0] == 401
    status, body = get(url + path + "relay-role", token(url))
    assert status == 200
    assert json.loads(body)["Code"] == "Success"
    assert get(url + path + "relay-role", "not-a-token")[0] == 401
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    credential_reads = [e for e in logged if e["path"].endswith("/relay-role")]
    assert [(e["token"], e["status"]) for e in credential_reads] == [
        (False, 401), (True, 200), (False, 401),
    ]  # fmt: skip


@pytest.mark.parametrize("ttl", ["0", "21601", "x"])
def test_a_token_needs_a_valid_ttl(base: tuple[str, Path], ttl: str) -> None:
    url, _ = base
    with pytest.raises(urllib.error.HTTPError) as refused:
        token(url, ttl)
    assert refused.value.code == 400


def test_instance_tags_only_when_enabled() -> None:
    """EC2 serves ``tags/instance/`` only with instance tags in metadata enabled (a ``tags``
    fact here): each key a leaf holding its value."""
    assert "tags" not in imds.instance_tree(FACTS)["meta-data"]
    tree = imds.instance_tree({**FACTS, "tags": {"Name": "relay", "cmc-relay-host-index": "1"}})
    assert imds.lookup(tree, "meta-data/tags/instance/") == (200, b"Name\ncmc-relay-host-index")
    assert imds.lookup(tree, "meta-data/tags/instance/cmc-relay-host-index") == (200, b"1")
