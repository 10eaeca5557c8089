"""AWS in the rig: moto's server on loopback, Secrets Manager holding the API key, and the
real cmc-relay-fetch-secret writing Postfix's password table from it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import boto3
from moto.server import ThreadedMotoServer

from simworld.rig.process import REPO, run

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

FETCH_SECRET: Final = REPO / "userdata" / "scripts" / "cmc-relay-fetch-secret"
API_USER: Final = "cmc-api-user"
AWS_REGION: Final = "ap-northeast-1"


class Secrets:
    """Secrets Manager (moto, on loopback in the root namespace) for the fetch script."""

    def __init__(self, endpoint: str, client: SecretsManagerClient) -> None:
        self.endpoint = endpoint
        self.client = client

    def create(self, name: str, password: str) -> str:
        secret = json.dumps({"username": API_USER, "password": password})
        return self.client.create_secret(Name=name, SecretString=secret)["ARN"]

    def update(self, arn: str, password: str) -> None:
        secret = json.dumps({"username": API_USER, "password": password})
        self.client.put_secret_value(SecretId=arn, SecretString=secret)

    def fetch(self, env_file: Path, config_dir: Path) -> subprocess.CompletedProcess[str]:
        """The real cmc-relay-fetch-secret (with the venv's boto3) writing the table."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        return run(
            sys.executable, FETCH_SECRET, "--env-file", env_file,
            "--postfix-config-dir", config_dir, "--max-wait", "10",
            env=env,
        )  # fmt: skip


@contextlib.contextmanager
def moto_on_loopback() -> Iterator[str]:
    """moto's server (every AWS API) on loopback, port picked by the OS, for as long as the
    block runs: its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def secrets_service() -> Iterator[Secrets]:
    """moto's Secrets Manager on loopback, for as long as the block runs."""
    with moto_on_loopback() as endpoint:
        client = boto3.client(
            "secretsmanager",
            region_name=AWS_REGION,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        yield Secrets(endpoint, client)


@dataclass
class Credentials:
    """The API key's way to Postfix: a secret in Secrets Manager (moto), the rendered relay.env
    naming it, and the real cmc-relay-fetch-secret writing the password table from it."""

    secrets: Secrets
    arn: str
    env_file: Path
    config_dir: Path

    def store(self, api_key: str) -> None:
        self.secrets.update(self.arn, api_key)

    def install(self) -> subprocess.CompletedProcess[str]:
        return self.secrets.fetch(self.env_file, self.config_dir)
