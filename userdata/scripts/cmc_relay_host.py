"""What the on-host scripts share: their exit codes, messages, the env file, instance metadata
(IMDSv2) and retrying with backoff.

Installed beside them in /usr/local/sbin: Python puts a script's own directory first on
sys.path, so ``import cmc_relay_host`` finds this file there (and beside the scripts in the
repository). The standard library only, for the OSes' own python3.
"""

from __future__ import annotations

import enum
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import NoReturn, TextIO, TypeVar

T = TypeVar("T")

METADATA_SERVICE = "http://169.254.169.254"
# The SDKs' variable for another metadata service (a test's).
METADATA_SERVICE_VARIABLE = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
# Where the OS keeps the programs the scripts run (postconf, systemctl, dpkg) when a unit or
# cloud-init starts them with a short PATH.
SYSTEM_PATH = ":/usr/sbin:/sbin"


class Exit(enum.IntEnum):
    """The scripts' exit codes: a number means the same whichever script exits with it (each
    script's --help names those it uses). cmc-relay-bootstrap, which runs from the user data
    before this file is installed, keeps its own (1 refused, 2 bad settings, 6 S3 failing):
    changing its text would replace every host."""

    OK = 0
    FAILED = 1  # the job failed: a check, an unexpected error, not applied
    BAD_SETTINGS = 2  # the arguments, the env file or a config file
    NOT_FOUND = 3  # the secret the settings name does not exist
    ACCESS_DENIED = 4  # the instance role may not read it
    REFUSED = 5  # what was fetched is not what it must be: a secret's value, a hash, a signature
    UNAVAILABLE = 6  # AWS or a download kept failing (network, credentials) until the deadline
    HOST_FAILED = 7  # this host's side: a file, postmap, a reload, dpkg, systemctl, Postfix
    NO_METADATA = 8  # instance metadata lacks what is needed (Region, instance id, a tag)
    NOT_EC2 = 9  # not an EC2 instance: nothing done
    RESTORE_FAILED = 10  # not applied, and the previous configuration not restored either


class Failure(Exception):
    """A failure the script ends with: its message and exit code."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.code = code


class TryAgain(Failure):
    """A failure another attempt may not meet: the network, credentials not there yet, a
    throttle, access the instance role gets a little after boot."""

    def __init__(self, message: str, code: Exit = Exit.UNAVAILABLE) -> None:
        super().__init__(message, code)


def program() -> str:
    return os.path.basename(sys.argv[0])


def say(message: str, stream: TextIO | None = None) -> None:
    """One line of the script's report, named after it (stdout unless ``stream``)."""
    print(f"{program()}: {message}", file=stream or sys.stdout, flush=True)


def warn(message: str) -> None:
    say(message, sys.stderr)


def die(code: Exit, message: str) -> NoReturn:
    warn(message)
    sys.exit(code)


def with_system_path() -> None:
    """The OS's sbin directories on PATH, for the programs the scripts run."""
    os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + SYSTEM_PATH


def read_env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines (relay.env, bundle.env; also main.cf's ``name = value``), by name;
    comments and other lines skipped. OSError if it cannot be read."""
    with open(path, encoding="utf-8") as lines:
        pairs = [
            line.split("=", 1)
            for line in lines
            if "=" in line and not line.lstrip().startswith("#")
        ]
    return {name.strip(): value.strip() for name, value in pairs}


def with_retries(attempt: Callable[[], T], max_wait: float, report: Callable[[str], None]) -> T:
    """``attempt()`` again while it raises TryAgain, backing off 1, 2, 4 … 30 s, until it
    works or ``max_wait`` seconds have passed: then its last TryAgain, "gave up" added.
    ``report`` hears each failure that is retried."""
    deadline, delay = time.monotonic() + max_wait, 1.0
    while True:
        try:
            return attempt()
        except TryAgain as failure:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TryAgain(f"{failure}; gave up after {max_wait:g}s", failure.code) from None
            report(f"{failure}; retrying")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 30)


def http_get(url: str, timeout: float, method: str = "GET", **headers: str) -> bytes:
    """The answer's body; TryAgain for what may pass (the network, 5xx, 408, 429), ValueError
    for any other HTTP error."""
    request = urllib.request.Request(url, None, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        if error.code < 500 and error.code not in (408, 429):
            raise ValueError(f"HTTP {error.code} for {url}") from None
        raise TryAgain(f"{url}: HTTP {error.code}") from None
    except OSError as error:  # no route yet, DNS, resets, timeouts
        raise TryAgain(f"{url}: {getattr(error, 'reason', error)}") from None


class InstanceMetadata:
    """This instance's metadata over IMDSv2: a session token first, then GETs with it;
    each request retried until ``max_wait`` (``with_retries``)."""

    def __init__(self, max_wait: float, timeout: float, report: Callable[[str], None]) -> None:
        self.service = (os.environ.get(METADATA_SERVICE_VARIABLE) or METADATA_SERVICE).rstrip("/")
        self.max_wait, self.timeout, self.report = max_wait, timeout, report
        self.token: str | None = None

    def request(self, path: str, method: str = "GET", **headers: str) -> str:
        url = f"{self.service}/latest/{path}"
        answer = with_retries(
            lambda: http_get(url, self.timeout, method, **headers), self.max_wait, self.report
        )
        return answer.decode().strip()

    def get(self, path: str) -> str:
        """``meta-data/…`` (or any path under /latest/); TryAgain or ValueError if it fails."""
        if self.token is None:
            ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
            self.token = self.request("api/token", "PUT", **ttl)
        return self.request(path, **{"X-aws-ec2-metadata-token": self.token})
