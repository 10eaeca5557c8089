"""Small programs the twins' world runs in its network namespace, beside the twin.

    python -m simworld.agents aws --host IP --port N --region R --name NAME \
        [--tls-dir DIR --cert-name NAME ...] [--s3-object BUCKET/KEY=FILE ...]  < secret.json
    python -m simworld.agents submit --source IP --server IP --port N --message-id ID \
        [--body TEXT] ...
    python -m simworld.agents probe --source IP --server IP --stop-file PATH [--max-seconds S]
    python -m simworld.agents metrics --endpoint URL --ca FILE --region R --namespace NS --since T

``aws`` is a local AWS (moto's server): it reads the secret's JSON value as the first line on
stdin, so the value is never a process argument, prints ``ARN <arn>`` and serves until killed;
every further line on stdin is a new value of the secret (a rotation), answered ``ROTATED``,
or ``{"s3_object": "BUCKET/KEY=FILE"}``, that file put there (as a deployment stores a new
bundle of the relay), answered ``PUT BUCKET/KEY``.
With ``--tls-dir`` it serves HTTPS with a certificate for the ``--cert-name`` values from the
stand-in's test CA in that directory, as AWS's regional endpoints do; ``--s3-object`` puts a
file into a bucket of that region (public reads, as AWS's distribution buckets allow).
``submit`` is a mail client of the relay; it prints one JSON
line with the SMTP outcome. ``probe`` is a client that keeps connecting (greeting, EHLO, QUIT)
until the stop file exists: one JSON line, how many sessions and how many were refused, and
each session's start (epoch seconds) and outcome.
``metrics`` reads back what hosts published to (moto's) CloudWatch:
one JSON line, every metric of the namespace with its dimensions and its statistics per minute.
"""

from __future__ import annotations

import argparse
import email.policy
import json
import smtplib
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Final

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from simworld.standin.tls import CA_CERT_FILE, server_context


def serve_aws(args: argparse.Namespace) -> None:
    endpoint, verify = f"http://{args.host}:{args.port}", None
    if args.tls_dir:
        # The address too: the seeding below connects to it.
        context = server_context(Path(args.tls_dir), (*args.cert_name, args.host))
        app = DomainDispatcherApplication(create_backend_app)
        server = make_server(args.host, args.port, app, threaded=True, ssl_context=context)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint, verify = f"https://{args.host}:{args.port}", f"{args.tls_dir}/{CA_CERT_FILE}"
    else:
        ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False).start()
    session: dict[str, Any] = {
        "endpoint_url": endpoint,
        "verify": verify,
        "region_name": args.region,
        "aws_access_key_id": "sandbox",
        "aws_secret_access_key": "sandbox",
    }
    s3 = boto3.client("s3", **session)
    for spec in args.s3_object:
        put_s3_object(s3, args.region, spec)
    secrets = boto3.client("secretsmanager", **session)
    arn = secrets.create_secret(Name=args.name, SecretString=sys.stdin.readline().strip())["ARN"]
    print(f"ARN {arn}", flush=True)
    for line in sys.stdin:  # until stdin closes; the server's thread serves on
        request = json.loads(line)
        if isinstance(request, dict) and set(request) == {"s3_object"}:
            location = put_s3_object(s3, args.region, request["s3_object"])
            print(f"PUT {location}", flush=True)
            continue
        version = secrets.put_secret_value(SecretId=arn, SecretString=line.strip())["VersionId"]
        print(f"ROTATED {version}", flush=True)
    threading.Event().wait()


def put_s3_object(s3: Any, region: str, spec: str) -> str:
    """``BUCKET/KEY=FILE``: the file put there (the bucket made if new); returns BUCKET/KEY."""
    location, _, path = spec.partition("=")
    bucket, _, key = location.partition("/")
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    s3.put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes(), ACL="public-read")
    return location


def submit(args: argparse.Namespace) -> dict[str, object]:
    """Send one message through the relay from ``args.source``: the relay's last reply."""
    message = EmailMessage()
    message["From"], message["To"] = args.mail_from, args.rcpt
    message["Subject"], message["Message-ID"] = "cmc-relay sandbox", args.message_id
    message.set_content(args.body)
    code, reply = 0, b""
    try:
        with smtplib.SMTP(args.server, args.port, timeout=30, source_address=(args.source, 0)) as s:
            s.ehlo()
            for step in (
                lambda: s.mail(args.mail_from),
                lambda: s.rcpt(args.rcpt),
                # CRLF line ends, as SMTP has them (smtplib sends bytes as they are).
                lambda: s.data(message.as_bytes(policy=email.policy.SMTP)),
            ):
                code, reply = step()
                if code >= 400:
                    break
    except (OSError, smtplib.SMTPException) as error:
        return {"accepted": False, "code": None, "reply": f"{type(error).__name__}: {error}"}
    return {"accepted": code == 250, "code": code, "reply": reply.decode(errors="replace")}


def probe(args: argparse.Namespace) -> dict[str, object]:
    """Sessions one after the other until ``--stop-file`` exists (or ``--max-seconds`` or
    ``--max-sessions`` pass): a session is refused when it gets no 220 greeting and 250 to
    EHLO (a refused or reset connection, a timeout, a 4xx or 5xx greeting). ``outcomes``: each
    session's start (epoch seconds) and whether it was answered."""
    sessions, refused, reasons = 0, 0, []
    outcomes: list[tuple[float, bool]] = []
    deadline = time.monotonic() + args.max_seconds
    while not Path(args.stop_file).exists() and time.monotonic() < deadline:
        if sessions >= args.max_sessions:
            break
        sessions += 1
        started = time.time()
        try:
            with smtplib.SMTP(args.server, 25, timeout=10, source_address=(args.source, 0)) as s:
                code, reply = s.ehlo()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
            outcomes.append((round(started, 3), True))
        except (OSError, smtplib.SMTPException) as error:
            refused += 1
            reasons.append(f"{type(error).__name__}: {error}"[:200])
            outcomes.append((round(started, 3), False))
        time.sleep(args.interval)
    return {"sessions": sessions, "refused": refused, "reasons": reasons[:5], "outcomes": outcomes}


# What a minute of samples adds up to: enough to roll minutes up to any alarm's period.
STATISTICS: Final = ("Maximum", "Minimum", "Sum", "SampleCount")


def read_metrics(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every metric of ``args.namespace``: name, dimensions and ``{minute: {statistic: value}}``
    from the minute of ``args.since`` (epoch seconds) on."""
    # Periods start at StartTime: from a whole minute, they are the clock's minutes.
    start = datetime.fromtimestamp(args.since - args.since % 60, UTC)
    cloudwatch = boto3.client(
        "cloudwatch", endpoint_url=args.endpoint, verify=args.ca, region_name=args.region,
        aws_access_key_id="sandbox", aws_secret_access_key="sandbox",
    )  # fmt: skip
    found = []
    for listed in cloudwatch.list_metrics(Namespace=args.namespace)["Metrics"]:
        points = cloudwatch.get_metric_statistics(
            Namespace=args.namespace, MetricName=listed["MetricName"],
            Dimensions=listed["Dimensions"], StartTime=start,
            EndTime=datetime.now(UTC) + timedelta(minutes=2), Period=60, Statistics=STATISTICS,
        )["Datapoints"]  # fmt: skip
        minutes = {}
        for point in points:
            stats: dict[str, Any] = dict(point)
            minutes[str(int(point["Timestamp"].timestamp()))] = {s: stats[s] for s in STATISTICS}
        dimensions = {d["Name"]: d["Value"] for d in listed["Dimensions"]}
        found.append({"name": listed["MetricName"], "dimensions": dimensions, "minutes": minutes})
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simworld.agents")
    commands = parser.add_subparsers(dest="command", required=True)
    aws = commands.add_parser("aws", help="Secrets Manager emulator holding one secret")
    aws.add_argument("--host", required=True)
    aws.add_argument("--port", type=int, required=True)
    aws.add_argument("--region", required=True)
    aws.add_argument("--name", required=True)
    aws.add_argument("--tls-dir", help="serve HTTPS with a certificate from this test CA")
    aws.add_argument("--cert-name", action="append", default=[], help="a name the cert covers")
    aws.add_argument("--s3-object", action="append", default=[], help="BUCKET/KEY=FILE")
    client = commands.add_parser("submit", help="send one message through the relay")
    for option in ("--source", "--server", "--mail-from", "--rcpt", "--message-id"):
        client.add_argument(option, required=True)
    client.add_argument("--port", type=int, default=25)
    client.add_argument("--body", default="Relayed by the local sandbox.\n")
    prober = commands.add_parser("probe", help="connect again and again, count refusals")
    for option in ("--source", "--server", "--stop-file"):
        prober.add_argument(option, required=True)
    prober.add_argument("--interval", type=float, default=0.1, help="seconds between sessions")
    prober.add_argument("--max-seconds", type=float, default=300)
    prober.add_argument("--max-sessions", type=int, default=5000)
    metrics = commands.add_parser("metrics", help="what CloudWatch holds, per minute")
    for option in ("--endpoint", "--ca", "--region", "--namespace"):
        metrics.add_argument(option, required=True)
    metrics.add_argument("--since", type=float, required=True, help="epoch seconds")
    args = parser.parse_args(argv)
    if args.command == "aws":
        serve_aws(args)
    elif args.command == "metrics":
        print(json.dumps(read_metrics(args)), flush=True)
    elif args.command == "probe":
        print(json.dumps(probe(args)), flush=True)
    else:
        print(json.dumps(submit(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
