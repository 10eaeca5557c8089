"""The app servers' metrics agent, as the consumer's own ``userdata.metrics``.

Same module name as the relay's ``cmc_relay.userdata.metrics``, none of its contents: a relay
that imported ``userdata.metrics`` would get this module and fail.
"""

from __future__ import annotations

AGENT_SCRIPT = """#!/bin/sh
# the application servers' own metrics agent
systemctl enable --now app-metrics.timer
"""
