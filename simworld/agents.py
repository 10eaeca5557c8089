"""Small programs the sandbox runs inside its network namespace (outside the relay's chroot).

    python -m simworld.agents aws --host IP --port N --region R --name NAME  < secret.json
    python -m simworld.agents syslog SOCKET LOGFILE
    python -m simworld.agents submit --source IP --server IP --port N --message-id ID ...

``aws`` is a local Secrets Manager (moto's server): it reads the secret's JSON value on stdin,
so the value is never a process argument, prints ``ARN <arn>`` and serves until killed.
``syslog`` stands in for the syslog daemon the sandbox does not have: it appends every datagram
sent to ``/dev/log`` to a file. ``submit`` is a mail client of the relay; it prints one JSON
line with the SMTP outcome.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import socket
import sys
import threading
from collections.abc import Sequence
from email.message import EmailMessage

import boto3
from moto.server import ThreadedMotoServer


def serve_aws(host: str, port: int, region: str, name: str, secret_json: str) -> None:
    ThreadedMotoServer(ip_address=host, port=port, verbose=False).start()
    client = boto3.client(
        "secretsmanager",
        endpoint_url=f"http://{host}:{port}",
        region_name=region,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    )
    arn = client.create_secret(Name=name, SecretString=secret_json)["ARN"]
    print(f"ARN {arn}", flush=True)
    threading.Event().wait()  # the server's thread serves until the sandbox ends


def serve_syslog(socket_path: str, log_path: str) -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        open(log_path, "ab", buffering=0) as log,
    ):
        sock.bind(socket_path)
        print("READY", flush=True)
        while True:
            log.write(sock.recv(65536).rstrip(b"\0\n") + b"\n")


def submit(args: argparse.Namespace) -> dict[str, object]:
    """Send one message through the relay from ``args.source``: the relay's last reply."""
    message = EmailMessage()
    message["From"], message["To"] = args.mail_from, args.rcpt
    message["Subject"], message["Message-ID"] = "cmc-relay sandbox", args.message_id
    message.set_content("Relayed by the local sandbox.\n")
    code, reply = 0, b""
    try:
        with smtplib.SMTP(args.server, args.port, timeout=30, source_address=(args.source, 0)) as s:
            s.ehlo()
            for step in (
                lambda: s.mail(args.mail_from),
                lambda: s.rcpt(args.rcpt),
                lambda: s.data(message.as_bytes()),
            ):
                code, reply = step()
                if code >= 400:
                    break
    except (OSError, smtplib.SMTPException) as error:
        return {"accepted": False, "code": None, "reply": f"{type(error).__name__}: {error}"}
    return {"accepted": code == 250, "code": code, "reply": reply.decode(errors="replace")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simworld.agents")
    commands = parser.add_subparsers(dest="command", required=True)
    aws = commands.add_parser("aws", help="Secrets Manager emulator holding one secret")
    aws.add_argument("--host", required=True)
    aws.add_argument("--port", type=int, required=True)
    aws.add_argument("--region", required=True)
    aws.add_argument("--name", required=True)
    syslog = commands.add_parser("syslog", help="append /dev/log datagrams to a file")
    syslog.add_argument("socket")
    syslog.add_argument("log")
    client = commands.add_parser("submit", help="send one message through the relay")
    for option in ("--source", "--server", "--mail-from", "--rcpt", "--message-id"):
        client.add_argument(option, required=True)
    client.add_argument("--port", type=int, default=25)
    args = parser.parse_args(argv)
    if args.command == "aws":
        serve_aws(args.host, args.port, args.region, args.name, sys.stdin.read())
    elif args.command == "syslog":
        serve_syslog(args.socket, args.log)
    else:
        print(json.dumps(submit(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
