"""A minimal SMTP client straight to the stand-in, run inside the relay's namespace by the bench:
the most this rig lets any client reach, to tell the relay's own cost from the stand-in's.

    ip netns exec NS python direct_client.py < request.json

The request is a JSON object: ``servers`` (addresses, used in turn), ``port``, ``ca_file``,
``user``, ``password``, ``sessions`` and ``messages``. Each session is one thread with one
connection (STARTTLS, AUTH) that sends its share of the messages back to back, one
transaction at a time, and quits. Each transaction takes two round trips, as the ideal client
of the latency bound does (``bounds.ideal_rate``): MAIL, RCPT and DATA in one write (the
stand-in announces PIPELINING), then the message once the 354 is in. Prints
``{"started": unix_time}``, taken before connecting.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import sys
import threading
import time
from typing import Any

ENVELOPE = b"MAIL FROM:<app@client.example>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
MESSAGE = "Subject: x\r\n\r\nx\r\n.\r\n"


def session(request: dict[str, Any], number: int, count: int, errors: list[str]) -> None:
    context = ssl.create_default_context(cafile=request["ca_file"])
    server = request["servers"][number % len(request["servers"])]
    try:
        with smtplib.SMTP(server, request["port"], timeout=60) as client:
            client.starttls(context=context)
            client.login(request["user"], request["password"])
            for i in range(count):
                client.send(ENVELOPE)
                replies = [client.getreply()[0] for _ in range(3)]
                if replies != [250, 250, 354]:
                    raise smtplib.SMTPException(f"envelope: {replies}")
                client.send(f"Message-ID: <{number}.{i}@direct.test>\r\n{MESSAGE}")
                code, text = client.getreply()
                if code != 250:
                    raise smtplib.SMTPException(f"end of data: {code} {text!r}")
    except (OSError, smtplib.SMTPException) as error:
        errors.append(f"session {number}: {error!r}")


def main() -> None:
    request = json.load(sys.stdin)
    sessions, messages = request["sessions"], request["messages"]
    shares = [messages // sessions + (n < messages % sessions) for n in range(sessions)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=session, args=(request, n, share, errors))
        for n, share in enumerate(shares)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit("; ".join(errors))
    json.dump({"started": started}, sys.stdout)


if __name__ == "__main__":
    main()
