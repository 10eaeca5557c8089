"""Every argument of the component, declared once: what its declaration in ``RelayHostArgs``
(``components/args.py``: name, Python type, docstring) does not say.

``RelayHostArgs`` stays the typed, documented declaration that Python callers' type checkers and
Pulumi's schema analyzer read; it cannot carry more (the analyzer reads plain annotations, no
``Annotated`` metadata). This table adds, per argument and in the same order: the kind of value
a stack config key holds, its default, its choices, whether it is a secret, and why it must be
known when the program runs (an argument that decides which resources exist cannot wait for
another resource's output). From the two come, and nowhere else:

- the stack config key (the argument's name in camelCase) and how ``__main__.py`` reads it;
- the component's checks that a value which must be known is not an ``Output``;
- the package schema's enums, defaults and secret marks (``components/provider.py``);
- the checks of ``Pulumi.yaml``'s ``config:`` and the README's configuration table
  (``tests/test_arguments.py``, which also checks this table against ``RelayHostArgs``).

To add an argument: a field with its docstring in ``RelayHostArgs``; an ``Argument`` line here
at the same position; its use (a check in ``args.py`` or ``userdata/settings.py``, the resource
or file it feeds); a ``Pulumi.yaml`` declaration and a README table row, which the tests name
when missing. Its type in ``RelayHostArgs`` is ``pulumi.Input[T]`` unless ``known_when_run``
says why it cannot be (and a list whose length decides a count is ``Sequence[Input[T]]``).
"""

from dataclasses import dataclass
from typing import Final, Literal

from cmc_relay.userdata.settings import (
    AUTH_MODES,
    DEFAULT_OS,
    EGRESS_MODES,
    INBOUND_TLS_LEVELS,
    OS_NAMES,
    PLANS,
    TLS_LEVELS,
    VERIFICATION_MODES,
    config_key,
)

Kind = Literal["string", "integer", "boolean", "array", "object"]


@dataclass(frozen=True)
class Argument:
    """One component argument beyond its ``RelayHostArgs`` field."""

    name: str
    """The Python argument name (snake_case); the config key and schema name are camelCase."""
    kind: Kind
    """The value's kind, as stack config and the package schema type it."""
    default: str | int | bool | None = None
    """The default a missing value means, when it is one fixed value (None: no such value)."""
    choices: tuple[str, ...] = ()
    """The allowed values of a choice (an enum in the package schema)."""
    secret: bool = False
    """Read with ``get_secret`` and marked secret in the schema."""
    known_when_run: str = ""
    """Why it must be a plain value, never an Output; empty: any ``pulumi.Input``."""
    presence_matters: bool = False
    """Giving the default explicitly is not the same as leaving it out (it is refused in some
    combinations): the schema declares no default, which SDKs would send."""
    network: bool = False
    """The stack program resolves it itself (from AWS when unset), not read as config."""
    config: bool = True
    """Stack config can set it (under ``key``); False: the stack program derives it."""

    @property
    def key(self) -> str:
        """The stack config key and the package schema's property name."""
        return config_key(self.name)


_GRAPH = "it decides which resources the component creates"
_IMAGE_ARCH = "its architecture is part of the image pin's name"
_IMAGE = "it names the image pin resource, which is replaced when it changes"
_REBOOT = "it sets each host's reboot tags and metadata when the program runs"

ARGUMENTS: Final[tuple[Argument, ...]] = (
    Argument("vpc_id", "string", network=True, config=False),  # the subnet's VPC
    Argument("subnet_id", "string", network=True),
    Argument("allowed_cidrs", "array", network=True),
    Argument("allowed_security_group_ids", "array"),
    Argument("plan", "string", "trial", PLANS, known_when_run=_GRAPH),
    Argument("subdomain", "string"),
    Argument("smtp_host", "string"),
    Argument("smtp_port", "integer", 10025),
    Argument("auth_mode", "string", "sasl", AUTH_MODES, known_when_run=_GRAPH),
    Argument("credentials_secret_arn", "string"),
    Argument("api_user", "string"),
    Argument("api_key", "string", secret=True),
    Argument("kms_key_arn", "string"),
    Argument(
        "os",
        "string",
        DEFAULT_OS,
        OS_NAMES,
        known_when_run=_GRAPH + " (package mirror rules) and which image is looked up",
    ),
    Argument("instance_type", "string", "t3.small", known_when_run=_IMAGE_ARCH),
    Argument("ami_id", "string"),
    Argument("image_refresh", "string", known_when_run=_IMAGE),
    Argument("max_connections", "integer", 10),
    Argument("tls_level", "string", "secure", TLS_LEVELS),
    Argument("message_size_limit", "integer", 10_240_000),
    Argument("host_name", "string", "cmc-relay.internal"),
    Argument("dns_zone", "string", "private"),
    Argument("secret_refresh_minutes", "integer", 5),
    Argument("tags", "object"),
    Argument("verification", "string", "ssm", VERIFICATION_MODES, known_when_run=_GRAPH),
    Argument("ssh_public_key", "string"),
    Argument("ssh_private_key", "string", secret=True),
    Argument("ssh_allowed_cidrs", "array"),
    Argument("ephemeral", "boolean", False),
    Argument("replicas", "integer", 1, known_when_run=_GRAPH),
    Argument("subnet_ids", "array"),  # read here and, for the checks, by network()
    Argument("egress", "string", "eip", EGRESS_MODES, known_when_run=_GRAPH),
    Argument("nat_gateway_ips", "array"),
    Argument("pro_max_sessions", "integer", 100, presence_matters=True),
    # Its default depends on replicas.
    Argument("drain_on_delete", "boolean", known_when_run=_GRAPH),
    Argument("drain_timeout_seconds", "integer", 600, presence_matters=True),
    Argument("queue_volume_gb", "integer", 10),
    Argument("discard_queue_on_destroy", "boolean", False),
    Argument("sender_domain", "string"),
    Argument("rewrite_domains", "array"),
    Argument("allowed_sender_domains", "array"),
    Argument("operator_email", "string"),
    Argument("inbound_tls", "string", "may", INBOUND_TLS_LEVELS),
    Argument("keep_received_headers", "boolean", False),
    Argument("inbound_tls_secret_arn", "string"),
    Argument("reboot_window", "string", known_when_run=_REBOOT),
    Argument("client_message_rate_limit", "integer", 1000),
    Argument("client_recipient_rate_limit", "integer", 5000),
    Argument("client_connection_limit", "integer", 20),
    Argument("metrics_namespace", "string", "CMCRelay"),
    Argument("log_retention_days", "integer", 30),
    Argument("log_kms_key_arn", "string"),
    Argument("alarms", "boolean", True, known_when_run=_GRAPH),
    Argument("alarm_topic_arn", "string"),
    Argument("alarm_email", "string"),
    Argument("alarm_deferred_threshold", "integer", 100, presence_matters=True),
    Argument("alarm_oldest_message_minutes", "integer", 30, presence_matters=True),
    Argument("alarm_bounced_threshold", "integer", 1, presence_matters=True),
    Argument("alarm_refused_threshold", "integer", 5, presence_matters=True),
    Argument("alarm_queue_free_percent", "integer", 20, presence_matters=True),
    Argument("alarm_reboot_required_days", "integer", 3, presence_matters=True),
    Argument("alarm_sent_threshold", "integer", 5000, presence_matters=True),
)
BY_NAME: Final = {argument.name: argument for argument in ARGUMENTS}
# argument name -> stack config key, for error messages and the stack's config reading.
CONFIG_KEYS: Final = {argument.name: argument.key for argument in ARGUMENTS if argument.config}
# Arguments that must be plain values, and why (the message that refuses an Output says it).
KNOWN_WHEN_RUN: Final = {a.name: a.known_when_run for a in ARGUMENTS if a.known_when_run}
# Lists whose length is a count of resources (one rule or host per element): a plain list,
# whose elements may be Outputs.
COUNTED_LISTS: Final = {
    "allowed_cidrs": "one security group rule per network",
    "allowed_security_group_ids": "one security group rule per group",
    "ssh_allowed_cidrs": "one security group rule per network",
    "subnet_ids": "one host per subnet",
}
