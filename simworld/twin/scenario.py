"""What a twin proves, step by step, as observations (the tests and the sandbox judge them).

``first_boot`` → ``queue_while_down`` → ``reboot`` → ``rotation``, ``change_in_place`` (a
config change as ``pulumi up`` brings it to a running host) and ``replacement`` (the host
replaced by a second twin of its stack that takes over its queue volume, ``replace_host``):
each step records what it saw in
``Findings``, reporting as it goes through ``say``; none of them asserts. A step that cannot
go on (the twin did not boot, a message never arrived) raises.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cmc_relay.components.args import AlarmThresholds
from cmc_relay.components.monitoring import host_alarms
from cmc_relay.userdata.metrics import DEFAULT_MONITORING, INSTANCE_DIMENSION, METRICS, metric
from cmc_relay.userdata.settings import RelaySettings
from simworld.alarm_check import Series, Verdict, evaluate_all
from simworld.queue_volume import Volume
from simworld.rig.process import wait_until
from simworld.standin import MessageRecord
from simworld.twin import world as net
from simworld.twin.session import PAYLOAD_STORE, Prober, Submission, TwinBoot, clean_log_problems

Say = Callable[[str], None]
# The fetch timer's period is secretRefreshMinutes; systemd adds up to RandomizedDelaySec.
TIMER_RANDOM_DELAY: Final = 30
# The publisher runs on the minute: a sample is in CloudWatch within a minute and a bit.
SAMPLE_WAIT: Final = 150
# Thresholds the twin's backlog of 5 messages crosses (the defaults are for production).
TWIN_THRESHOLDS: Final = AlarmThresholds(deferred_messages=3)
DEFERRED: Final = metric("queue.deferred")


@dataclass
class Boot:
    """One boot's state as systemd, cloud-init and the relay's own verifier see it."""

    seconds: float = 0.0
    system_state: str = ""
    cloud_init: dict[str, Any] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    failed_units: list[str] = field(default_factory=list)
    active: dict[str, str] = field(default_factory=dict)
    resolv_conf: list[str] = field(default_factory=list)
    verify_exit: int = -1
    verify: dict[str, Any] = field(default_factory=dict)
    agent_installs: list[str] = field(default_factory=list)  # the installer's lines, this far
    cloudwatch_agent_config: str = ""  # what fetch-config kept for the agent to run
    unattended_upgrades: str = ""  # dpkg's status of the package
    auto_upgrades: dict[str, str] = field(default_factory=dict)  # APT::Periodic, as apt reads it
    reboot_required: str = ""  # the publisher's RebootRequired, sampled on this boot

    def failed_checks(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.verify.get("checks", []) if not c["ok"]]


@dataclass
class Findings:
    os: str
    settings: RelaySettings | None = None
    first: Boot = field(default_factory=Boot)
    relayed: MessageRecord | None = None
    outsider: Submission | None = None
    secret_places: list[str] = field(default_factory=list)
    imds: list[dict[str, Any]] = field(default_factory=list)
    queued_before_reboot: int = 0
    reboot_required_before: str = ""  # RebootRequired once an update asked for the reboot
    after_reboot: Boot = field(default_factory=Boot)
    queued_after_reboot: int = 0
    resolv_after_renewal: list[str] = field(default_factory=list)
    queued_deliveries: dict[str, int] = field(default_factory=dict)  # Message-ID: deliveries
    cron_mail: MessageRecord | None = None
    rotation_seconds: float | None = None
    rotation_record: MessageRecord | None = None
    rotated_at: float = 0.0
    booted_at: float = 0.0  # epoch seconds: metrics are read from here on
    deferred_seconds: float | None = None  # from the backlog's submission to its sample
    samples_while_down: list[Series] = field(default_factory=list)
    alarms_while_down: list[Verdict] = field(default_factory=list)
    delivered_at: float = 0.0
    deferred_after_delivery: float | None = None  # the first sample of a later minute
    samples_at_end: list[Series] = field(default_factory=list)
    alarms_at_end: list[Verdict] = field(default_factory=list)
    in_place: InPlaceChange | None = None
    replaced: ReplacedHost | None = None

    def credentials_requests(self) -> list[dict[str, Any]]:
        return [e for e in self.imds if "/iam/security-credentials/" in e["path"]]


@dataclass
class Applied:
    """One ``cmc-relay-apply`` of a new bundle, as the component's ``<host>-apply`` runs it."""

    sha256: str
    seconds: float  # from the apply's start to its verified end
    with_store_seconds: float  # from storing the bundle and moving the pointer
    result: subprocess.CompletedProcess[str]


@dataclass
class InPlaceChange:
    """What a change applied in place left: the apply, and whether the host is the same."""

    applied: Applied
    same_boot: bool
    same_postfix_master: bool  # a reload, not a restart
    live: bool  # the new setting is what Postfix uses
    verify: dict[str, Any]


@dataclass
class Replacement:
    """One host replaced by the next instance of its stack, which takes over its queue volume:
    when each part of the hand-off ended (epoch seconds) and what the probes of the old and the
    new address saw (``Prober.stop``)."""

    old_address: str
    old_instance: str
    clean_stop: bool  # the old instance powered off by itself
    stop_started: float
    stopped: float
    detached: float
    new_started: float
    asked: float  # the new instance's setup began to wait for the volume
    attached: float
    booted: float
    old_probe: dict[str, Any]
    new_probe: dict[str, Any]

    def serving(self) -> float | None:
        """The start of the first session the new host answered after the attach."""
        return next(
            (at for at, ok in self.new_probe["outcomes"] if ok and at >= self.attached), None
        )

    def figures(self) -> dict[str, float]:
        """The refused window and its parts, in seconds (the new host must have served)."""
        serving = self.serving()
        if serving is None:
            raise BootFailed(f"the new host never answered after the attach: {self.new_probe}")
        return {
            "refused_window_s": round(serving - self.stop_started, 1),
            "a_stop_s": round(self.stopped - self.stop_started, 1),
            "detach_s": round(self.detached - self.stopped, 1),
            "b_boot_to_setup_waiting_s": round(self.asked - self.new_started, 1),
            "attach_to_serving_s": round(serving - self.attached, 1),
            # On EC2 the new host is already waiting when the old one stops (README, steps 1-4).
            "ec2_order_window_s": round(
                self.detached - self.stop_started + serving - self.attached, 1
            ),
            "b_boot_to_serving_s": round(serving - self.new_started, 1),
            "b_boot_to_booted_s": round(self.booted - self.new_started, 1),
        }


@dataclass
class ReplacedHost:
    """What the sandbox's replacement left: the hand-off, the new host's verifier, and how
    often each message queued on the old host arrived."""

    replacement: Replacement
    verify: dict[str, Any]
    deliveries: dict[str, int]


class BootFailed(RuntimeError):
    """The twin's first boot went wrong: nothing after it would mean anything."""


QUEUED: Final = tuple(f"<queued-{n}@twin.test>" for n in range(5))
UNITS: Final = (
    "postfix",
    "dnsmasq",
    "amazon-ssm-agent",
    "cmc-relay-fetch-secret.timer",
    "amazon-cloudwatch-agent",
    "cmc-relay-metrics.timer",
    "cmc-relay-logrotate.timer",
    "apt-daily.timer",  # refreshes the package lists for unattended-upgrades
    "apt-daily-upgrade.timer",  # runs unattended-upgrades
)
APT_PERIODIC: Final = ("Update-Package-Lists", "Unattended-Upgrade")
REBOOT_FLAG: Final = "/run/reboot-required"
CLOUDWATCH_AGENT_RUNNING: Final = (
    "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.d/"
    "file_amazon-cloudwatch-agent.json"
)


def observe(boot: TwinBoot, state: str, started: float, verify: bool = True) -> Boot:
    seen = Boot(seconds=time.monotonic() - started, system_state=state)
    seen.cloud_init = boot.cloud_init_status()
    seen.log_problems = clean_log_problems(boot.run("cat", "/var/log/cloud-init.log").stdout)
    seen.failed_units = boot.failed_units()
    seen.active = {unit: boot.run("systemctl", "is-active", unit).stdout.strip() for unit in UNITS}
    seen.resolv_conf = boot.resolv_conf()
    output = boot.run("cat", "/var/log/cloud-init-output.log").stdout.splitlines()
    seen.agent_installs = [line for line in output if line.startswith("cmc-relay-install-agent:")]
    seen.cloudwatch_agent_config = boot.run("cat", CLOUDWATCH_AGENT_RUNNING).stdout
    status = ("dpkg-query", "-W", "-f=${Status}", "unattended-upgrades")
    seen.unattended_upgrades = boot.run(*status).stdout
    for name in APT_PERIODIC:
        shell = boot.run("apt-config", "shell", "V", f"APT::Periodic::{name}").stdout.strip()
        seen.auto_upgrades[name] = shell.removeprefix("V=").strip("'")
    seen.reboot_required = reboot_required_sample(boot)
    if verify:
        run_verifier(boot, seen)
    return seen


def reboot_required_sample(boot: TwinBoot) -> str:
    """One run of the publisher's service, as its timer runs it: the RebootRequired it
    printed (its newest line naming every value it published; systemd's own lines follow)."""
    boot.run("systemctl", "start", "cmc-relay-metrics.service")
    journal = boot.run("journalctl", "-u", "cmc-relay-metrics", "-o", "cat", "-n", "20").stdout
    published = [line for line in journal.splitlines() if "RebootRequired=" in line]
    values = dict(v.split("=", 1) for v in published[-1].split()) if published else {}
    return values.get("RebootRequired", "")


def run_verifier(boot: TwinBoot, seen: Boot) -> None:
    seen.verify_exit, seen.verify = boot.verify()


def verifier_line(seen: Boot) -> str:
    checks = seen.verify.get("checks", [])
    failed = seen.failed_checks()
    return f"verifier: {sum(c['ok'] for c in checks)} of {len(checks)} checks passed" + (
        f"; failed: {failed}" if failed else ""
    )


def apply_change(boot: TwinBoot, changed: RelaySettings) -> Applied:
    """``changed`` stored (bundle, then pointer) and applied to the running host."""
    published = time.monotonic()
    bundle = boot.publish(changed)
    started = time.monotonic()
    result = boot.run("/usr/local/sbin/cmc-relay-apply", bundle.sha256, timeout=300)
    ended = time.monotonic()
    return Applied(bundle.sha256, ended - started, ended - published, result)


def boot_id(boot: TwinBoot) -> str:
    return boot.run("cat", "/proc/sys/kernel/random/boot_id", check=True).stdout.strip()


def postfix_master(boot: TwinBoot) -> str:
    return boot.run("cat", "/var/spool/postfix/pid/master.pid", check=True).stdout.strip()


ADDED_NETWORK: Final = "10.0.9.0/24"
IN_PLACE_TARGET: Final = 30  # seconds, the bound for a change applied in place


def change_in_place(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """A new network in allowedCidrs, as ``pulumi up`` brings it: a new bundle applied to the
    running host, which keeps its boot and its Postfix master and is verified again."""
    machine, master = boot_id(boot), postfix_master(boot)
    changed = dataclasses.replace(
        boot.settings, allowed_cidrs=(*boot.settings.allowed_cidrs, ADDED_NETWORK)
    )
    applied = apply_change(boot, changed)
    networks = boot.run("postconf", "-h", "mynetworks").stdout
    verify = json.loads(applied.result.stdout) if applied.result.returncode == 0 else {}
    findings.in_place = seen = InPlaceChange(
        applied, boot_id(boot) == machine, postfix_master(boot) == master,
        ADDED_NETWORK in networks, verify,
    )  # fmt: skip
    if applied.result.returncode == 0:
        boot.settings = changed
    checks = verify.get("checks", [])
    say(
        f"in-place change, allowedCidrs + {ADDED_NETWORK}: cmc-relay-apply "
        f"{applied.seconds:.1f}s ({applied.with_store_seconds:.1f}s with storing the bundle; "
        f"target {IN_PLACE_TARGET}s: {applied.seconds / IN_PLACE_TARGET:.2f} of it); "
        f"same boot {seen.same_boot}, same Postfix master {seen.same_postfix_master}, "
        f"network live {seen.live}, verifier {sum(c['ok'] for c in checks)} of {len(checks)} "
        "checks passed"
    )


def queue_length(boot: TwinBoot) -> int:
    out = boot.run("postqueue", "-j").stdout
    return len([line for line in out.splitlines() if line.strip()])


SETUP_LOG: Final = "/var/log/cloud-init-output.log"
WAITING: Final = "cmc-relay-queue-volume: waiting for the queue volume"


def setup_log(boot: TwinBoot) -> str:
    return boot.run("cat", SETUP_LOG).stdout


def tail(boot: TwinBoot) -> str:
    return "\n".join(setup_log(boot).splitlines()[-20:])


def attach_when_asked(
    boot: TwinBoot,
    volume: Volume,
    timeout: float = 600,
    meanwhile: Callable[[], None] | None = None,
) -> float:
    """Once the instance's setup waits for its queue volume, run ``meanwhile`` (if
    given), then attach it; returns when the setup began to wait (epoch seconds, as near as
    a poll each second tells)."""

    def asking() -> bool:
        if boot.run("test", "-e", "/run/cloud-init/result.json").returncode == 0:
            raise BootFailed(
                f"{boot.image.os}: the first boot failed: cloud-init ended without waiting for "
                f"the queue volume:\n{tail(boot)}"
            )
        return f"{WAITING} {boot.queue_device}" in setup_log(boot)

    wait_until(asking, timeout, "the setup waiting for the queue volume", interval=1)
    asked = time.time()
    if meanwhile is not None:
        meanwhile()
    boot.attach_volume(volume.attach())
    return asked


def replace_host(
    boot: TwinBoot, volume: Volume, work: Path, meanwhile: Callable[[], None] | None = None
) -> Replacement:
    """The running instance replaced by the next of its stack, probed from the application
    network at both addresses (probe files in ``work``): a clean stop (EC2's), the volume
    detached once nothing holds it, the next instance booted from the same user data and
    given the volume while its setup waits for it (after ``meanwhile``, on the new instance
    while it waits). The twin boots the new instance only after
    the old one stopped (one NIC for the stack's instances); on EC2 it is already waiting."""
    old_address, old_instance = boot.address, boot.instance_id
    new_address = net.INSTANCE_IPS[boot.instance + 1]
    probers = [
        Prober(boot, work, address, interval=0.25, max_seconds=900)
        for address in (old_address, new_address)
    ]
    try:
        time.sleep(2)  # sessions before the stop too
        stop_started = time.time()
        clean = boot.stop()
        stopped = time.time()
        # Nothing holds the device once the old mount namespace is gone (as EC2 detaches a
        # volume only once the instance has stopped).
        wait_until(lambda: not volume.in_use(), 10, "the volume released", interval=0.2)
        volume.detach()
        detached = time.time()
        boot.next_instance()
        boot.prepare()
        new_started = time.time()
        boot.start()
        asked = attach_when_asked(boot, volume, meanwhile=meanwhile)
        attached = time.time()
        boot.boot()
        booted = time.time()
        time.sleep(2)
        old_probe, new_probe = (prober.stop() for prober in probers)
    finally:
        for prober in probers:
            prober.kill()
    return Replacement(
        old_address, old_instance, clean, stop_started, stopped, detached, new_started, asked,
        attached, booted, old_probe, new_probe,
    )  # fmt: skip


REPLACED: Final = tuple(f"<replaced-{n}@twin.test>" for n in range(3))
REPLACEMENT_TARGET: Final = 120  # seconds of refused connections, the bound


def replacement(boot: TwinBoot, volume: Volume, findings: Findings, say: Say) -> None:
    """The host replaced as ``pulumi up`` replaces a single host, with mail the service
    defers on its queue volume: the next instance of the stack takes the volume, is verified,
    the stack's record follows it, and when the service takes mail again each message
    arrives once."""
    assert boot.world is not None and boot.world.standin is not None
    world, standin, name = boot.world, boot.world.standin, boot.settings.host_name
    world.point(name, boot.address)
    standin.reconfigure(data_451_messages=100_000)  # the service defers every message
    codes = {boot.submit(net.CLIENT_IP, message_id).code for message_id in REPLACED}
    queued = boot.queued_message_ids
    wait_until(lambda: set(REPLACED) <= queued(), 60, "the messages queued", interval=1)
    say(f"service deferring; {len(REPLACED)} submitted ({codes}), queued on the volume")
    replaced = replace_host(boot, volume, boot.work)
    _, verify = boot.verify()
    world.point(name, boot.address)  # the record follows the verified replacement
    standin.reconfigure(data_451_messages=0)
    for message_id in REPLACED:
        boot.wait_for_message(message_id, timeout=120)
    time.sleep(12)  # a duplicate would come with the next retry (backoff 5-10 s)
    deliveries = {m: len(boot.messages(m)) for m in REPLACED}
    findings.replaced = ReplacedHost(replaced, verify, deliveries)
    figures = replaced.figures()
    window = figures["refused_window_s"]
    checks = verify.get("checks", [])
    say(
        f"replacement: {replaced.old_instance} stopped, {boot.instance_id} took its queue "
        f"volume; clients refused for {window:.1f}s (target {REPLACEMENT_TARGET}s: "
        f"{window / REPLACEMENT_TARGET:.2f} of it; {figures['ec2_order_window_s']:.1f}s in "
        f"EC2's order, the new host booted first); verifier {sum(c['ok'] for c in checks)} of "
        f"{len(checks)} checks passed; {name} -> {boot.address}; the queued messages "
        f"delivered: {sorted(deliveries.values())} times"
    )


def first_boot(boot: TwinBoot, findings: Findings, say: Say, volume: Volume | None = None) -> None:
    """Build (or reuse) the twin, start its world, boot it from the rendered payload (with
    ``volume``: attached as its queue volume while its setup waits for it)."""
    findings.settings = boot.settings
    twin = boot.build()
    how = "from the cache" if twin.cached else "built"
    name = f"{boot.image.os} ({boot.image.suite})"
    say(f"twin {name}: root and mirror {how}, {twin.build_seconds:.1f}s")
    boot.start_world()
    say("world: DHCP, VPC resolver, IMDS, AWS (moto, HTTPS), Debian mirror, CMC stand-in")
    say(f"secret: {boot.secret_arn} (moto's Secrets Manager)")
    assert boot.bundle is not None
    where = f"s3://{PAYLOAD_STORE.bucket}/{boot.bundle.key}"
    say(f"bundle: {len(boot.bundle.data)} bytes gzipped at {where} (moto's S3)")
    packed = boot.render()
    findings.booted_at = time.time()
    say(f"user data: {len(packed)} bytes gzipped, served by the IMDS stand-in")
    boot.prepare()
    boot_started = time.monotonic()
    if volume is not None:
        boot.start()
        attach_when_asked(boot, volume)
    state = boot.boot()
    took = time.monotonic() - boot_started
    say(f"systemd: {state} after {took:.1f}s (cloud-init, apt and the setup included)")
    findings.first = first = observe(boot, state, boot_started)
    status, units = first.cloud_init, first.failed_units or "none"
    source = status.get("datasource")
    say(f"cloud-init: {status.get('status')}, datasource {source}; failed units: {units}")
    if status.get("status") != "done" or first.failed_units:
        raise BootFailed(
            f"{boot.image.os}: the first boot failed: {status.get('errors') or first.log_problems}"
            f"; failed units {first.failed_units}; {first.failed_checks()}"
        )
    submitted = boot.submit(net.CLIENT_IP, "<first@twin.test>")
    say(f"submitted from {net.CLIENT_IP}: {submitted.code} {submitted.reply}")
    if submitted.accepted:
        findings.relayed = record = boot.wait_for_message("<first@twin.test>")
        how = f"AUTH as {record.auth_user} over {record.tls_version}"
        say(f"delivered to the stand-in from {record.client_ip}: {how}")
    findings.outsider = refused = boot.submit(net.OUTSIDER_IP, "<outsider@twin.test>")
    say(f"from {net.OUTSIDER_IP} (outside allowedCidrs): {refused.code} {refused.reply}")
    say(verifier_line(first))
    findings.secret_places = boot.secret_places()
    findings.imds = boot.world.imds_events() if boot.world else []


def first_deferred(
    boot: TwinBoot, findings: Findings, minute: float, wanted: float | None = None
) -> tuple[int, float, list[Series]]:
    """The twin's first DeferredMessages sample in a minute from ``minute`` on (the first equal
    to ``wanted``, if given): its minute, its value, and every series moto holds; waits up to
    SAMPLE_WAIT seconds."""

    def sampled() -> tuple[int, float, list[Series]] | None:
        series = boot.metric_samples(findings.booted_at)
        for one in series:
            if one.name == DEFERRED.name and one.dimensions[INSTANCE_DIMENSION] == boot.instance_id:
                for m in sorted(one.minutes):
                    value = one.minutes[m][DEFERRED.statistic]
                    if m >= minute and wanted in (None, value):
                        return m, value, series
        return None

    what = f"a {DEFERRED.name} sample" + (f" of {wanted:g}" if wanted is not None else "")
    return wait_until(sampled, SAMPLE_WAIT, f"{what} in moto", interval=5)


def twin_alarms(boot: TwinBoot, series: list[Series], at: int | None = None) -> list[Verdict]:
    """The component's alarms on the twin (TWIN_THRESHOLDS), at minute ``at`` (default: the
    newest sample of any metric)."""
    specs = host_alarms(DEFAULT_MONITORING, TWIN_THRESHOLDS, boot.instance_id)
    newest = max((minute for one in series for minute in one.minutes), default=0)
    return evaluate_all(specs, series, newest if at is None else at)


def queue_while_down(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """The service goes down; a message submitted now must wait in the queue, and the backlog
    show in CloudWatch within two minutes, crossing the deferred alarm's threshold."""
    assert boot.world is not None and boot.world.standin is not None
    boot.world.standin.down()
    down_at = time.time()
    codes = {boot.submit(net.CLIENT_IP, message_id).code for message_id in QUEUED}
    time.sleep(3)  # Postfix tries once and defers
    findings.queued_before_reboot = queued = queue_length(boot)
    say(f"service down; {len(QUEUED)} submitted ({codes}); {queued} message(s) queued")

    minute, _, series = first_deferred(boot, findings, down_at - down_at % 60, len(QUEUED))
    findings.samples_while_down = series
    findings.deferred_seconds = took = time.time() - down_at
    say(f"CloudWatch (moto): {DEFERRED.name} = {len(QUEUED)} after {took:.0f}s")
    # At the backlog's minute: the reader reads one metric after another while the publisher
    # goes on, so another metric may already show a later minute without a deferred datapoint.
    findings.alarms_while_down = verdicts = twin_alarms(boot, series, at=minute)
    for verdict in verdicts:
        say(f"  alarm {verdict.describe()}")


def reboot(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """Reboot: the services come back by themselves, the resolver keeps the cache first (also
    after a DHCP renewal); the verifier runs again if the service is up."""
    assert boot.world is not None and boot.world.standin is not None
    service_up = not boot.world.standin.is_down
    # As an update of the kernel or libc does: the flag the metric reads, which the reboot
    # clears (/run is a tmpfs).
    boot.run("sh", "-c", f"echo '*** System restart required ***' > {REBOOT_FLAG}", check=True)
    findings.reboot_required_before = reboot_required_sample(boot)
    say(f"{REBOOT_FLAG} written: RebootRequired = {findings.reboot_required_before}")
    started = time.monotonic()
    state = boot.reboot()
    findings.after_reboot = seen = observe(boot, state, started, verify=service_up)
    say(f"rebooted: systemd {state} after {seen.seconds:.1f}s; {json.dumps(seen.active)}")
    findings.queued_after_reboot = queue_length(boot)
    boot.run("networkctl", "renew", net.NIC, check=True)
    time.sleep(2)
    findings.resolv_after_renewal = renewed = boot.resolv_conf()
    say(f"resolv.conf after the reboot {seen.resolv_conf}, after a DHCP renewal {renewed}")
    if service_up:
        say(verifier_line(seen))


def deliver_queued(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """The service returns: what waited through the reboot is delivered, once."""
    assert boot.world is not None and boot.world.standin is not None
    say(f"{findings.queued_after_reboot} message(s) still queued after the reboot; service back")
    boot.world.standin.up()
    for message_id in QUEUED:
        boot.wait_for_message(message_id, timeout=60)
    time.sleep(12)  # a duplicate would come with the next retry (backoff 5-10 s)
    findings.delivered_at = time.time()
    findings.queued_deliveries = {m: len(boot.messages(m)) for m in QUEUED}
    say(f"the queued messages delivered: {sorted(findings.queued_deliveries.values())} times")
    run_verifier(boot, findings.after_reboot)
    say(verifier_line(findings.after_reboot))


CRON_MAIL: Final = "<cron@twin.test>"


def cron_mail(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """After the reboot, cron on the relay mails root, as cron does: through sendmail. It must
    reach operatorEmail through the service, its sender rewritten to senderDomain."""
    message = f"From: root (Cron Daemon)\nSubject: cron\nMessage-ID: {CRON_MAIL}\n\ndone\n"
    boot.run("/usr/sbin/sendmail", "-i", "root", input=message, check=True)
    findings.cron_mail = record = boot.wait_for_message(CRON_MAIL)
    say(f"cron's mail to root: sent as {record.mail_from} to {', '.join(record.rcpt_tos)}")


def rotation(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """A new secret value (the old one refused from now on) must be in use within the
    timer's period plus its randomized delay."""
    findings.rotated_at = time.time()
    boot.rotate("rotated-" + boot.password[::-1])
    time.sleep(3)  # cached connections (authenticated with the old key) expire after 2 s idle
    submitted = boot.submit(net.CLIENT_IP, "<rotated@twin.test>")
    bound = boot.settings.secret_refresh_minutes * 60 + TIMER_RANDOM_DELAY + 20
    record = boot.wait_for_message("<rotated@twin.test>", timeout=bound)
    findings.rotation_record = record
    findings.rotation_seconds = took = record.accepted_at - findings.rotated_at
    say(f"rotated the secret; submitted {submitted.code}; the new key in use after {took:.0f}s")


def metrics_after_delivery(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """The first sample of a minute after the backlog's delivery: the deferred queue empty."""
    after = findings.delivered_at - findings.delivered_at % 60 + 60
    _, value, findings.samples_at_end = first_deferred(boot, findings, after)
    findings.deferred_after_delivery = value
    say(f"CloudWatch (moto): {DEFERRED.name} = {value:g} after the delivery")


def sample_lines(series: Sequence[Series]) -> list[str]:
    """The newest sample of every metric, as ``name = value unit``, in METRICS' order."""
    by_name = {one.name: one for one in series}
    lines = []
    for known in METRICS:
        newest = by_name[known.name].latest(known.statistic) if known.name in by_name else None
        shown = f"{newest[1]:g} {known.unit}" if newest is not None else "no sample"
        lines.append(f"{known.name} = {shown}")
    return lines


def operator_view(boot: TwinBoot, findings: Findings, say: Say) -> None:
    """What an operator would see in CloudWatch now: the twin's newest sample of every metric
    and its alarms' states. Waits (SAMPLE_WAIT) for a first sample; without one it records
    none (the sandbox's judge fails on that)."""

    def twins() -> list[Series]:
        series = boot.metric_samples(findings.booted_at)
        return [s for s in series if s.dimensions.get(INSTANCE_DIMENSION) == boot.instance_id]

    try:
        findings.samples_at_end = series = wait_until(twins, SAMPLE_WAIT, "a sample", interval=5)
    except TimeoutError:
        say(f"CloudWatch (moto): no sample from {boot.instance_id} within {SAMPLE_WAIT}s")
        return
    where = f"{DEFAULT_MONITORING.namespace}, {INSTANCE_DIMENSION}={boot.instance_id}"
    say(f"CloudWatch (moto), {where}, newest samples:")
    for line in sample_lines(series):
        say(f"  {line}")
    findings.alarms_at_end = verdicts = twin_alarms(boot, series)
    say(f"alarms (deferred threshold {TWIN_THRESHOLDS.deferred_messages} on the twin):")
    for verdict in verdicts:
        say(f"  {verdict.describe()}")


# The sample after the delivery comes before the rotation, whose message may wait deferred
# until the new key is in use.
ALL_STEPS: Final = (
    first_boot, queue_while_down, reboot, deliver_queued, metrics_after_delivery, cron_mail,
    rotation, operator_view,
)  # fmt: skip
