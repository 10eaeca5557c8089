"""Ephemeral stacks of the relay host in a real AWS account, through Pulumi's Automation API.

Each run gets a uniquely named stack on a throwaway ``file://`` backend with a passphrase
secrets provider, runs the stack program (``__main__.py``) in-process, and destroys and
removes the stack afterwards, even after a failure. If the destroy itself fails, the backend
is kept (its path is printed) so the resources can still be destroyed by hand.

Configuration comes from the environment (see ``ENVIRONMENT``); nothing runs without
``CMC_RELAY_E2E=1``, AWS credentials and the ``pulumi`` CLI.
"""

from __future__ import annotations

import runpy
import secrets
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from pulumi import automation as auto

from cmc_relay.userdata.render import MAIL_LOG

ROOT: Final = Path(__file__).parent.parent.parent
PROJECT: Final = "cmc-relay"  # the stack program reads its config under this name
ENVIRONMENT: Final = {
    "CMC_RELAY_E2E": "1 to run (the test creates real AWS resources, which cost money)",
    "CMC_RELAY_E2E_REGION": "AWS region (default: AWS_REGION or AWS_DEFAULT_REGION)",
    "CMC_RELAY_E2E_SUBNET_ID": "public subnet for the host (required)",
    "CMC_RELAY_E2E_SECRET_ARN": "existing credentials secret, or else:",
    "CMC_RELAY_E2E_API_USER": "API user, with CMC_RELAY_E2E_API_KEY (the stack creates the secret)",
    "CMC_RELAY_E2E_API_KEY": "API key",
    "CMC_RELAY_E2E_SMTP_HOST": "the service's sandbox host (default: the trial plan's)",
    "CMC_RELAY_E2E_RECIPIENT": "where the test message goes (required)",
    "CMC_RELAY_E2E_SENDER": "the test message's sender (default: the recipient)",
    "CMC_RELAY_E2E_OS": "debian-13 (default), debian-12, al2023 or ubuntu-24.04",
}
RELAY_TIMEOUT_SECONDS: Final = 300


def skip_reasons(
    env: Mapping[str, str], pulumi_cli: str | None, has_credentials: bool
) -> list[str]:
    """Every unmet prerequisite of the e2e test, in words; [] when it can run."""
    reasons = []
    if env.get("CMC_RELAY_E2E") != "1":
        reasons.append("CMC_RELAY_E2E=1 is not set (the test creates real AWS resources)")
    if pulumi_cli is None:
        reasons.append("the pulumi CLI is not on PATH")
    if not has_credentials:
        reasons.append("no AWS credentials were found")
    if reasons:
        return reasons
    if not region(env):
        reasons.append("no region: set CMC_RELAY_E2E_REGION")
    for required in ("CMC_RELAY_E2E_SUBNET_ID", "CMC_RELAY_E2E_RECIPIENT"):
        if not env.get(required):
            reasons.append(f"{required} is not set ({ENVIRONMENT[required]})")
    api = ("CMC_RELAY_E2E_API_USER", "CMC_RELAY_E2E_API_KEY")
    if not env.get("CMC_RELAY_E2E_SECRET_ARN") and not all(env.get(key) for key in api):
        reasons.append(
            "no credentials for the service: set CMC_RELAY_E2E_SECRET_ARN, or "
            "CMC_RELAY_E2E_API_USER and CMC_RELAY_E2E_API_KEY"
        )
    return reasons


def region(env: Mapping[str, str]) -> str | None:
    return env.get("CMC_RELAY_E2E_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")


def stack_config(env: Mapping[str, str]) -> dict[str, auto.ConfigValue]:
    """The ephemeral stack's config, from the environment."""
    config = {
        "aws:region": auto.ConfigValue(region(env) or ""),
        f"{PROJECT}:plan": auto.ConfigValue("trial"),
        f"{PROJECT}:subnetId": auto.ConfigValue(env["CMC_RELAY_E2E_SUBNET_ID"]),
        f"{PROJECT}:os": auto.ConfigValue(env.get("CMC_RELAY_E2E_OS", "debian-13")),
        f"{PROJECT}:verification": auto.ConfigValue("ssm"),
        f"{PROJECT}:ephemeral": auto.ConfigValue("true"),
    }
    if env.get("CMC_RELAY_E2E_SMTP_HOST"):
        config[f"{PROJECT}:smtpHost"] = auto.ConfigValue(env["CMC_RELAY_E2E_SMTP_HOST"])
    if env.get("CMC_RELAY_E2E_SECRET_ARN"):
        arn = env["CMC_RELAY_E2E_SECRET_ARN"]
        config[f"{PROJECT}:credentialsSecretArn"] = auto.ConfigValue(arn)
    else:
        config[f"{PROJECT}:apiUser"] = auto.ConfigValue(env["CMC_RELAY_E2E_API_USER"])
        config[f"{PROJECT}:apiKey"] = auto.ConfigValue(env["CMC_RELAY_E2E_API_KEY"], secret=True)
    return config


def run_stack_program() -> None:
    runpy.run_path(str(ROOT / "__main__.py"))


@contextmanager
def ephemeral_stack(config: Mapping[str, auto.ConfigValue]) -> Iterator[auto.Stack]:
    """A new stack on a throwaway local backend; destroyed and removed on the way out."""
    backend = Path(tempfile.mkdtemp(prefix="cmc-relay-e2e-"))
    passphrase = backend / "passphrase"
    passphrase.write_text(secrets.token_urlsafe(32))
    passphrase.chmod(0o600)
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    stack = auto.create_stack(
        name,
        project_name=PROJECT,
        program=run_stack_program,
        opts=auto.LocalWorkspaceOptions(
            env_vars={
                "PULUMI_BACKEND_URL": backend.as_uri(),
                "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase),
                # The SSM driver runs as `python -m components.ssm_verify` from this checkout.
                "PYTHONPATH": str(ROOT),
            },
            secrets_provider="passphrase",
            project_settings=auto.ProjectSettings(
                name=PROJECT, runtime="python", backend=auto.ProjectBackend(backend.as_uri())
            ),
        ),
    )
    destroyed = False
    try:
        # An inline program declares no plugins: install the versions this venv's SDKs use.
        for plugin, distribution in (("aws", "pulumi_aws"), ("command", "pulumi_command")):
            stack.workspace.install_plugin(plugin, f"v{metadata.version(distribution)}")
        stack.set_all_config(dict(config))
        yield stack
    finally:
        try:
            stack.destroy(on_output=print, show_secrets=False)
            destroyed = True
            stack.workspace.remove_stack(name)
        finally:
            if destroyed:
                shutil.rmtree(backend, ignore_errors=True)
            else:
                print(
                    f"destroy of stack {name} failed: its state is kept in {backend} "
                    f"(PULUMI_BACKEND_URL={backend.as_uri()}, "
                    f"PULUMI_CONFIG_PASSPHRASE_FILE={passphrase}); destroy it by hand"
                )


def output(result: auto.UpResult, name: str) -> Any:
    return result.outputs[name].value


def relay_test_script(sender: str, recipient: str) -> str:
    """Shell script for the host: submit a message to the relay, wait until it is sent on.

    Passes once Postfix logs ``status=sent`` for the message's queue id (the service accepted
    it), in the journal, a syslog file or the relay's mail log. Fails, never passes, where no
    log line can be found: it then prints the queue instead.
    """
    submit = """
import smtplib, sys
from email.message import EmailMessage
message = EmailMessage()
message["From"], message["To"] = sys.argv[1], sys.argv[2]
message["Subject"] = "cmc-relay ephemeral stack test"
message.set_content("Relayed by an ephemeral cmc-relay test stack.")
with smtplib.SMTP("127.0.0.1", 25) as smtp:
    smtp.ehlo()
    smtp.mail(sys.argv[1])
    smtp.rcpt(sys.argv[2])
    code, reply = smtp.data(message.as_bytes())
    assert code == 250, reply
    print(reply.decode().rsplit(" ", 1)[-1])  # 2.0.0 Ok: queued as QUEUEID
"""
    log = (
        "{ journalctl --no-pager -o cat -t postfix/smtp 2>/dev/null;"
        f' cat /var/log/maillog /var/log/mail.log {MAIL_LOG} 2>/dev/null; }} | grep -F "$qid:"'
    )
    tries = RELAY_TIMEOUT_SECONDS // 10
    return (
        "set -u\n"
        f"qid=$(python3 -c {shlex.quote(submit)} {shlex.quote(sender)} {shlex.quote(recipient)})"
        " || exit 1\n"
        f"for _ in $(seq {tries}); do\n"
        f'  if {log} | grep -q "status=sent"; then {log}; exit 0; fi\n'
        "  sleep 10\n"
        "done\n"
        f'echo "no status=sent logged for $qid; its log lines and the queue:" >&2\n'
        f"{log} >&2\n"
        "postqueue -p >&2\n"
        "exit 1\n"
    )


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds
