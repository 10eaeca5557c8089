"""A stand-in for the EC2 instance metadata service (IMDS), as an instance with
``http_tokens = required`` for its role's credentials sees it.

    python -m simworld.twin.imds --config imds.json --events imds-events.jsonl

It listens on ``169.254.169.254:80`` (or ``--listen``) and answers the paths cloud-init's Ec2
datasource, botocore and the on-host scripts read: ``latest`` and dated API versions, directory
listings (a trailing ``/``), ``meta-data/…``, ``user-data`` (the gzipped bytes EC2 hands over)
and ``dynamic/instance-identity/document``. IMDSv2 sessions come from
``PUT /latest/api/token``. The role's credentials (``meta-data/iam/security-credentials/…``)
are refused without a valid token (401), as ``http_tokens = required`` does; the rest is
answered with or without one, because cloud-init in a container does not identify EC2 and so
asks without a token (a deviation every twin report lists). Every request is one JSON line in
the events file: method, path, whether it carried a valid token, status.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

API_VERSIONS: Final = ("latest", "2021-03-23", "2018-09-24", "2016-09-02", "2009-04-04")
TOKEN_PATH: Final = "/latest/api/token"
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"
CREDENTIALS_PREFIX: Final = "meta-data/iam/security-credentials"

Tree = Mapping[str, Any]  # a directory: name -> str/bytes (a leaf) or another directory


def instance_tree(config: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata tree of one instance from its config (see ``main``); with ``tags`` (key:
    value) its tags are in ``meta-data/tags/instance/``, as with instance tags enabled."""
    mac, region, role = config["mac"], config["region"], config["role"]
    zone, iam = f"{region}a", f"arn:aws:iam::{config['account_id']}"
    document = {
        "accountId": config["account_id"],
        "architecture": "x86_64",
        "availabilityZone": zone,
        "imageId": config["ami_id"],
        "instanceId": config["instance_id"],
        "instanceType": config["instance_type"],
        "privateIp": config["local_ipv4"],
        "region": region,
        "version": "2017-09-30",
    }
    interface = {
        "device-number": "0",
        "interface-id": "eni-0twin0000000000001",
        "local-hostname": config["local_hostname"],
        "local-ipv4s": config["local_ipv4"],
        "mac": mac,
        "owner-id": config["account_id"],
        "subnet-id": "subnet-0twin000000000001",
        "subnet-ipv4-cidr-block": config["subnet_cidr"],
        "vpc-id": "vpc-0twin000000000001",
        "vpc-ipv4-cidr-block": config["vpc_cidr"],
        "vpc-ipv4-cidr-blocks": config["vpc_cidr"],
    }
    meta_data = {
        "ami-id": config["ami_id"],
        "ami-launch-index": "0",
        "hostname": config["local_hostname"],
        "instance-id": config["instance_id"],
        "instance-type": config["instance_type"],
        "local-hostname": config["local_hostname"],
        "local-ipv4": config["local_ipv4"],
        "mac": mac,
        "placement": {"availability-zone": zone, "region": region},
        "services": {"domain": "amazonaws.com", "partition": "aws"},
        "network": {"interfaces": {"macs": {mac: interface}}},
        "iam": {
            "info": json.dumps(
                {
                    "Code": "Success",
                    "InstanceProfileArn": f"{iam}:instance-profile/{role}",
                    "InstanceProfileId": "AIPATWIN00000000000001",
                }
            ),
            "security-credentials": {role: ""},  # filled per request (fresh expiry)
        },
    }
    if "tags" in config:  # instance_metadata_tags = "enabled": the instance's tags, by key
        meta_data["tags"] = {"instance": dict(config["tags"])}
    return {
        "meta-data": meta_data,
        "user-data": base64.b64decode(config["user_data_base64"]),
        "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
    }


def role_credentials() -> str:
    """Credentials for the role; moto accepts any, so they are random and short-lived."""
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600))
    return json.dumps(
        {
            "Code": "Success",
            "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIATWIN" + secrets.token_hex(6).upper(),
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(60),
            "Expiration": expires,
        }
    )


def lookup(tree: Tree, path: str) -> tuple[int, bytes]:
    """Status and body for ``path`` below an API version (``meta-data/mac``, ``meta-data/``)."""
    node: Any = tree
    parts = [part for part in path.split("/") if part]
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return 404, b"Not Found"
        node = node[part]
    if isinstance(node, Mapping):
        names = [f"{name}/" if isinstance(child, Mapping) else name for name, child in node.items()]
        return 200, "\n".join(names).encode()
    return 200, node if isinstance(node, bytes) else str(node).encode()


class Metadata:
    """Tokens and the tree, shared by the server's threads."""

    def __init__(self, tree: Tree, events: Path | None) -> None:
        self.tree = tree
        self.tokens: dict[str, float] = {}
        self.events = events
        self.lock = threading.Lock()

    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def valid(self, token: str | None) -> bool:
        with self.lock:
            return token is not None and self.tokens.get(token, 0) > time.monotonic()

    def record(self, **event: Any) -> None:
        if self.events is None:
            return
        line = json.dumps({"t": time.time(), **event}) + "\n"
        with self.lock, self.events.open("a") as log:
            log.write(line)


def handler(metadata: Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # every request is an event instead

        def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        # Each request is recorded before its reply, so a client that has the reply finds
        # the event.
        def do_PUT(self) -> None:
            ttl = self.headers.get(TTL_HEADER)
            status, body = (404 if self.path != TOKEN_PATH else 400), b""
            valid_ttl = ttl is not None and ttl.isdigit() and 1 <= int(ttl) <= 21600
            if self.path == TOKEN_PATH and valid_ttl:
                assert ttl is not None
                status, body = 200, metadata.issue(int(ttl)).encode()
            metadata.record(method="PUT", path=self.path, token=False, status=status)
            self.reply(status, body)

        def do_GET(self) -> None:
            with_token = metadata.valid(self.headers.get(TOKEN_HEADER))
            if self.headers.get(TOKEN_HEADER) is not None and not with_token:
                status, body = 401, b""  # an expired or unknown token is refused, as on EC2
            else:
                status, body = self.answer(with_token)
            metadata.record(method="GET", path=self.path, token=with_token, status=status)
            self.reply(status, body)

        def answer(self, with_token: bool) -> tuple[int, bytes]:
            version, _, rest = self.path.lstrip("/").partition("/")
            if self.path == "/":
                return 200, "\n".join(API_VERSIONS).encode()
            if version not in API_VERSIONS:
                return 404, b"Not Found"
            if rest.startswith(f"{CREDENTIALS_PREFIX}/") and rest != f"{CREDENTIALS_PREFIX}/":
                if not with_token:
                    return 401, b""  # http_tokens = required
                status, _ = lookup(metadata.tree, rest)
                return (200, role_credentials().encode()) if status == 200 else (404, b"")
            return lookup(metadata.tree, rest)

    return Handler


@contextlib.contextmanager
def on_loopback(tree: Tree) -> Iterator[str]:
    """The IMDS stand-in serving ``tree`` on a free loopback port (IMDSv2 tokens); its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Metadata(tree, None)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simworld.twin.imds")
    parser.add_argument("--config", type=Path, required=True, help="instance facts (JSON)")
    parser.add_argument("--events", type=Path, help="append one JSON line per request")
    parser.add_argument("--listen", default="169.254.169.254:80")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    metadata = Metadata(instance_tree(json.loads(args.config.read_text())), args.events)
    server = ThreadingHTTPServer((host, int(port)), handler(metadata))
    print(f"READY {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
