"""Post-boot verification and the drain before deletion: what runs on the host, and how a
deployment runs it. Pure."""

import shlex
from collections.abc import Sequence
from typing import Final

VERIFIER: Final = "/usr/local/sbin/cmc-relay-verify"
# The verifier judges the host; it must only start once cloud-init has finished configuring
# it, whatever cloud-init's own verdict (the verifier's checks say what went wrong).
HOST_SCRIPT: Final = f"cloud-init status --wait >/dev/null; {VERIFIER}"
# Boot, package installation, cloud-init and, for ssm, the agent's registration.
TIMEOUT_SECONDS: Final = 1200
SSH_TIMEOUT: Final = f"{TIMEOUT_SECONDS // 60}m"
# The first ssh step only proves that the host accepts the key: any command will do.
SSH_READY_SCRIPT: Final = "true"


def verify_then_forget_key(authorized_keys: str, public_key: str, check: str = HOST_SCRIPT) -> str:
    """The shell body of ssh verification: ``check``, and once it has passed, the deployment's
    key taken out of ``authorized_keys`` (the file keeps its owner and mode), so no standing
    SSH access is left. A failed check keeps the key: the next ``pulumi up`` verifies again."""
    keys, key = shlex.quote(authorized_keys), shlex.quote(public_key)
    forget = (
        f"grep -vxF -e {key} {keys} > {keys}.cmc-relay; cat {keys}.cmc-relay > {keys}; "
        f"rm -f {keys}.cmc-relay"
    )
    return f"{check} && {{ {forget}; }}"


def ssh_verify_script(login_user: str, public_key: str) -> str:
    """What the deployment runs over ssh, as the OS's login user (the key cloud-init put in
    its ~/.ssh/authorized_keys)."""
    body = verify_then_forget_key(f"/home/{login_user}/.ssh/authorized_keys", public_key)
    return f"sudo sh -c {shlex.quote(body)}"


DRAIN: Final = "/usr/local/sbin/cmc-relay-drain"
# Beyond the drain's own limit: Systems Manager's delivery of the command, Postfix's reload.
DRAIN_MARGIN_SECONDS: Final = 300


# How many messages Postfix's queue holds, from its files: Postfix need not be running.
QUEUE_COUNT: Final = (
    'cd "$(postconf -h queue_directory)" && '
    "n=$(find maildrop incoming active deferred hold -type f 2>/dev/null | wc -l) && "
    'if [ "$n" -gt 0 ]; then echo "$n messages queued" >&2; exit 1; fi; echo "queue empty"'
)
QUEUE_CHECK_TIMEOUT_SECONDS: Final = 300
QUEUE_KEPT: Final = (
    "not deleting this relay host with its queue: deliver it first (drain_on_delete, config "
    "drainOnDelete), or set discard_queue_on_destroy (config discardQueueOnDestroy) to true "
    "and run pulumi up before deleting it with its mail"
)
QUEUE_DISCARDED: Final = "discard_queue_on_destroy: the queue volume is deleted with any mail"


DRIVER_MODULE: Final = "cmc_relay.components.ssm_verify"
PYTHON_OVERRIDE: Final = "CMC_RELAY_PYTHON"


def deployer_python(deploy_python: str, module: str, arguments: Sequence[str]) -> str:
    """A shell command running ``python -m module arguments`` with the first interpreter that
    has this package: ``$CMC_RELAY_PYTHON``, the one that ran ``pulumi up`` (``deploy_python``),
    the active virtualenv's, then ``python3`` on the PATH.

    The command is stored in the stack's state and may run at a later destroy or replacement,
    from another checkout, virtualenv or CI runner: no single path or working directory can be
    relied on then, so each candidate is tried in turn (and a missing one is skipped).
    """
    run = shlex.join(["-m", module, *arguments])
    candidates = " ".join(
        [f'"${{{PYTHON_OVERRIDE}:-}}"', shlex.quote(deploy_python),
         '"${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}"', "python3"]
    )  # fmt: skip
    missing = f"echo 'no Python with the cmc_relay package found: set {PYTHON_OVERRIDE} to one' >&2"
    return (
        f"for py in {candidates}; do "
        f'[ -n "$py" ] && "$py" -c "import cmc_relay" >/dev/null 2>&1 && exec "$py" {run}; '
        f"done; {missing}; exit 127"
    )


def ssm_driver_command(
    python: str,
    instance_id: str,
    region: str,
    timeout: int = TIMEOUT_SECONDS,
    options: Sequence[str] = (),
) -> str:
    """The local command running the SSM driver (``python``: the deploying interpreter, the
    first candidate after ``$CMC_RELAY_PYTHON``; see :func:`deployer_python`)."""
    return deployer_python(
        python,
        DRIVER_MODULE,
        ["--instance-id", instance_id, "--region", region, "--timeout", str(timeout), *options],
    )


def drain_driver_command(python: str, instance_id: str, region: str, timeout: int) -> str:
    """The SSM driver running the drain, which waits up to ``timeout`` s for an empty queue."""
    return ssm_driver_command(
        python,
        instance_id,
        region,
        timeout + DRAIN_MARGIN_SECONDS,
        ["--run", f"{DRAIN} --timeout {timeout}", "--purpose", "drain"],
    )


def queue_check_command(python: str, instance_id: str, region: str, discard: bool) -> str:
    """Run before a host and its queue volume are deleted for good (not replaced): fails,
    saying why and what to do, unless the queue is empty or ``discard`` is set. A host that
    cannot be asked (stopped, unreachable) counts as holding mail."""
    if discard:
        return f"echo {shlex.quote(QUEUE_DISCARDED)}"
    driver = ssm_driver_command(
        python,
        instance_id,
        region,
        QUEUE_CHECK_TIMEOUT_SECONDS,
        ["--run", QUEUE_COUNT, "--purpose", "queue check"],
    )
    return f"( {driver} ) || {{ echo {shlex.quote(QUEUE_KEPT)} >&2; exit 1; }}"


APPLY: Final = "/usr/local/sbin/cmc-relay-apply"


def apply_script(sha256: str) -> str:
    """What runs on the host to apply the bundle of that hash in place: once cloud-init has
    finished (a new host has that bundle already, and the apply says so)."""
    return f"cloud-init status --wait >/dev/null; {APPLY} {shlex.quote(sha256)}"


def apply_driver_command(python: str, instance_id: str, region: str, sha256: str) -> str:
    """The SSM driver running ``apply_script``: exit 0 applied and verified, else the host's
    reason (it then serves with its previous configuration)."""
    return ssm_driver_command(
        python, instance_id, region, options=["--run", apply_script(sha256), "--purpose", "apply"]
    )


def ssh_apply_script(sha256: str) -> str:
    """``apply_script`` over ssh, as the OS's default user."""
    return f"sudo sh -c {shlex.quote(apply_script(sha256))}"
