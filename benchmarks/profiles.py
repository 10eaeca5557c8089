"""The Postfix settings compared: what the payload renders, and what a user would otherwise run.

Each profile is a change to the rendered main.cf parameters (the rig applies it on top of the
debian-12 rendering); None drops a parameter so Postfix's built-in default applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cmc_relay.userdata.render import postfix_parameters
from cmc_relay.userdata.settings import RelaySettings

# The guide's session limit and retry timers (G9, G10).
GUIDE_LIMITS: Final = (
    "default_destination_concurrency_limit",
    "queue_run_delay",
    "minimal_backoff_time",
    "maximal_backoff_time",
)
# What main.cf.j2 adds on top of the guide to keep within G9 at full speed.
TUNING: Final = (
    "smtp_tls_connection_reuse",
    "smtp_connection_cache_destinations",
    "smtp_initial_destination_concurrency",
    "smtp_skip_quit_response",
)


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    main_cf: Mapping[str, str | None] = field(default_factory=dict)


TUNED: Final = Profile("tuned", "as rendered: the guide's settings plus the tuning")
GUIDE: Final = Profile(
    "guide", "the guide's settings only (G9, G10), no tuning", dict.fromkeys(TUNING)
)
STOCK: Final = Profile(
    "stock",
    "Postfix's stock concurrency and retry timers (no G9, G10, no tuning)",
    dict.fromkeys((*TUNING, *GUIDE_LIMITS)),
)
PROFILES: Final = {p.name: p for p in (TUNED, GUIDE, STOCK)}


def without(knob: str) -> Profile:
    """The rendered settings less one tuning knob: what that knob is worth."""
    return Profile(f"tuned-{knob}", f"as rendered, without {knob}", {knob: None})


def check_profiles(settings: RelaySettings) -> None:
    """Every parameter the profiles drop is one the payload renders, so a renamed or removed
    knob stops the benchmark instead of silently comparing equal settings."""
    missing = set(TUNING + GUIDE_LIMITS) - postfix_parameters(settings).keys()
    if missing:
        raise ValueError(f"main.cf.j2 no longer renders {sorted(missing)}: update profiles.py")
