"""Postfix in the rig: one private instance in the relay namespace, configured from Debian's
stock files and the payload by the shipped cmc-relay-setup; its queue and mail log read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmc_relay.userdata.render import SCRIPT_DIR, STAGE_DIR, parse_main_cf, write_files
from cmc_relay.userdata.settings import RelaySettings
from simworld.rig.network import Network
from simworld.rig.process import REPO, run, wait_until

SCRIPTS: Final = REPO / "userdata" / "scripts"
INBOUND_CERT: Final = SCRIPTS / "cmc-relay-inbound-cert"
SETUP: Final = SCRIPTS / "cmc-relay-setup"

# Debian 12's postfix package: its stock config and the chroot sync its init and unit run.
DEBIAN_MAIN_CF: Final = (
    Path("/usr/share/postfix/main.cf.debian"),
    Path("/usr/share/postfix/main.cf.tls"),
)
DEBIAN_MASTER_CF: Final = Path("/usr/share/postfix/master.cf.dist")
CONFIGURE_INSTANCE: Final = Path("/usr/lib/postfix/configure-instance.sh")
# What Debian's postinst adds to main.cf for "Internet Site", the installer's default answer,
# beyond what the rendered parameters set anyway (myhostname, mydestination, mynetworks).
DEBIAN_INTERNET_SITE: Final = {
    "smtpd_relay_restrictions": (
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
    ),
    "alias_maps": "hash:/etc/aliases",
    "alias_database": "hash:/etc/aliases",
    "relayhost": "",
    "mailbox_size_limit": "0",
    "recipient_delimiter": "+",
    "inet_interfaces": "all",
    "inet_protocols": "all",
}
REQUIRED_FILES: Final = (*DEBIAN_MAIN_CF, DEBIAN_MASTER_CF, CONFIGURE_INSTANCE)


@dataclass(frozen=True)
class Delivery:
    """One ``to=<…>, relay=…, status=…`` line of the mail log."""

    queue_id: str
    recipient: str
    relay: str
    status: str
    detail: str


_DELIVERY = re.compile(
    r": (?P<qid>\w+): to=<(?P<to>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]+), "
    r".*? status=(?P<status>\w+) \((?P<detail>.*)\)$"
)
_MESSAGE_ID = re.compile(r": (?P<qid>\w+): message-id=(?P<mid>\S+)")


class Postfix:
    """One Postfix instance: private config, queue and data directories, in the relay ns."""

    def __init__(self, network: Network, root: Path) -> None:
        self.network = network
        self.config_dir = root / "postfix"
        self.stage_dir = root / "stage"
        """The payload's staged files, as in /etc/cmc-relay."""
        self.script_dir = root / "sbin"
        """The shipped scripts the payload has, as in /usr/local/sbin."""
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.mail_spool = root / "mail"
        self.maillog = root / "maillog"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(*self.network.exec(self.network.relay, *args))

    def start(self) -> None:
        # Debian's unit runs this before every start: it copies the namespace's resolv.conf
        # (and hosts, CA dir, NSS libraries) into the chroot the smtp client runs in.
        self.command("env", f"MAIL_CONFIG={self.config_dir}", str(CONFIGURE_INSTANCE))
        try:
            self.command("postfix", "-c", str(self.config_dir), "start")
        except RuntimeError as error:  # the reason is in the mail log
            raise RuntimeError(f"{error}\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        if (self.queue_dir / "pid" / "master.pid").exists():
            subprocess.run(
                self.network.exec(self.network.relay, "postfix", "-c", self.config_dir, "stop"),
                capture_output=True,
                check=False,
                timeout=60,
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        run("postqueue", "-c", self.config_dir, "-f")

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one object per queued message (queue_name, recipients, …)."""
        out = run("postqueue", "-c", self.config_dir, "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queued(self, queue_name: str) -> int:
        """How many messages are in one of the queues (``hold``, ``deferred``, …)."""
        return sum(entry["queue_name"] == queue_name for entry in self.queue())

    def wait_for_empty_queue(self, timeout: float = 60) -> None:
        try:
            wait_until(lambda: not self.queue(), timeout, "an empty queue", interval=0.25)
        except TimeoutError:
            queued = self.queue()
            reasons = {r.get("delay_reason", "") for q in queued for r in q["recipients"]}
            raise TimeoutError(
                f"Postfix still holds {len(queued)} messages after {timeout} s: {reasons}"
            ) from None

    def log(self) -> str:
        return self.maillog.read_text() if self.maillog.exists() else ""

    def deliveries(self) -> list[Delivery]:
        return [
            Delivery(m["qid"], m["to"], m["relay"], m["status"], m["detail"])
            for m in map(_DELIVERY.search, self.log().splitlines())
            if m
        ]

    def queue_ids(self, message_id: str) -> set[str]:
        """Queue IDs Postfix gave the message with this Message-ID."""
        return {
            m["qid"]
            for m in map(_MESSAGE_ID.search, self.log().splitlines())
            if m and m["mid"] == message_id
        }

    def deliveries_of(self, message_id: str) -> list[Delivery]:
        ids = self.queue_ids(message_id)
        return [d for d in self.deliveries() if d.queue_id in ids]

    def first_attempt(self, message_id: str, timeout: float = 60) -> Delivery:
        """The outcome of the message's first delivery attempt, once logged."""
        return wait_until(
            lambda: next(iter(self.deliveries_of(message_id)), None),
            timeout,
            f"a delivery attempt for {message_id}",
        )


def configure_postfix(
    postfix: Postfix,
    settings: RelaySettings,
    secret_arn: str | None,
    ca_file: Path,
    main_cf: Mapping[str, str | None] | None = None,
) -> None:
    """Turn settings into the rig's Postfix config: the one path every test takes.

    As on the host: Debian's stock main.cf (main.cf.debian + main.cf.tls, plus what its postinst
    adds for "Internet Site") and master.cf, its aliases, then the payload staged as cloud-init
    stages it (relay.env, main.cf, master.cf, the lookup tables; ``write_files``) and applied by
    the shipped cmc-relay-setup's ``configure_postfix`` step, pointed at the rig's directories:
    ``postconf -e``, ``postconf -M``, the tables installed, ``postmap`` (G5), and the inbound
    STARTTLS certificate made by cmc-relay-inbound-cert when the payload ships it.

    ``main_cf`` changes the rendered parameters (benchmarks compare against Postfix's stock
    settings): a value replaces or adds one, None drops it so Postfix's default applies.

    Rig overrides in the staged main.cf, and nothing else:

    - ``config_directory``, ``queue_directory``, ``data_directory``: private to this rig.
    - ``/etc/postfix/`` in rendered values (transport, relay_password, reply filter) ->
      the private config directory.
    - ``alias_maps``, ``alias_database``: a private copy of postinst's ``hash:/etc/aliases``.
    - ``mail_spool_directory``: private, instead of /var/mail (local delivery is checked there).
    - ``maillog_file``: the rig's own file instead of the host's /var/log/cmc-relay/mail.log
      (``maillog_file_prefixes`` widened to allow it).
    - ``smtp_tls_CAfile``: the rig's test CA instead of the OS bundle (``Rig.trusted_ca``).

    master.cf stays Debian's: smtpd listens on *:25, confined by the namespace; smtp runs
    chrooted, and ``Postfix.start`` syncs the chroot as Debian does.
    """
    root = postfix.config_dir.parent
    conf = postfix.config_dir
    for directory in (conf, postfix.queue_dir, postfix.data_dir):
        directory.mkdir(exist_ok=directory == postfix.queue_dir)  # it may be a mount point
    shutil.chown(postfix.data_dir, "postfix")  # as Debian's package owns /var/lib/postfix
    postfix.mail_spool.mkdir()
    postfix.mail_spool.chmod(0o1777)  # like /var/mail: local(8) creates mailboxes in it
    (conf / "main.cf").write_text("".join(p.read_text() for p in DEBIAN_MAIN_CF))
    shutil.copyfile(DEBIAN_MASTER_CF, conf / "master.cf")
    installer = (f"{name}={value}" for name, value in DEBIAN_INTERNET_SITE.items())
    run("postconf", "-c", conf, "-e", *installer)
    (conf / "aliases").write_text("postmaster: root\n")
    run("postalias", "-c", conf, conf / "aliases")
    payload = {file["path"]: file["content"] for file in write_files(settings, secret_arn)}
    changed = {**parse_main_cf(payload[f"{STAGE_DIR}/main.cf"]), **(main_cf or {})}
    rendered = {
        name: value.replace("/etc/postfix/", f"{conf}/")
        for name, value in changed.items()
        if value is not None
    }
    overrides = {
        "config_directory": str(conf),
        "queue_directory": str(postfix.queue_dir),
        "data_directory": str(postfix.data_dir),
        "alias_maps": f"hash:{conf}/aliases",
        "alias_database": f"hash:{conf}/aliases",
        "mail_spool_directory": str(postfix.mail_spool),
        "maillog_file": str(postfix.maillog),
        "maillog_file_prefixes": f"/var, /dev/stdout, {root}",
        "smtp_tls_CAfile": str(ca_file),
    }
    payload[f"{STAGE_DIR}/main.cf"] = "".join(
        f"{name} = {value}\n" for name, value in {**rendered, **overrides}.items()
    )
    postfix.script_dir.mkdir()
    for path, content in payload.items():
        folder, _, name = path.rpartition("/")
        if path.startswith(f"{STAGE_DIR}/"):
            staged = postfix.stage_dir / path.removeprefix(f"{STAGE_DIR}/")
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(content)
        elif folder == SCRIPT_DIR and (SCRIPTS / name).exists():
            # Where the setup looks for the scripts it calls: those the payload ships.
            (postfix.script_dir / name).symlink_to(SCRIPTS / name)
    env = {
        **os.environ,
        "MAIL_CONFIG": str(conf),
        "CMC_RELAY_STAGE_DIR": str(postfix.stage_dir),
        "CMC_RELAY_SCRIPT_DIR": str(postfix.script_dir),
    }
    run("bash", SETUP, "configure_postfix", env=env)
    run("postfix", "-c", conf, "check")
