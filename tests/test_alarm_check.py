"""The alarm evaluator on the component's own alarm definitions (``host_alarms``)."""

from __future__ import annotations

import pytest

from cmc_relay.components.args import AlarmThresholds
from cmc_relay.components.monitoring import AlarmSpec, host_alarms
from cmc_relay.userdata.metrics import (
    DEFAULT_MONITORING,
    INSTANCE_DIMENSION,
    METRICS,
    RELAY_DIMENSION,
)
from simworld.alarm_check import Series, Verdict, evaluate, evaluate_all, period_values, window
from simworld.twin.scenario import sample_lines

INSTANCE = "i-0abc0000000000"
DIMENSIONS = {RELAY_DIMENSION: DEFAULT_MONITORING.relay, INSTANCE_DIMENSION: INSTANCE}
SPECS = {s.suffix: s for s in host_alarms(DEFAULT_MONITORING, AlarmThresholds(3), INSTANCE)}
T0 = 1_800_000_000 - 1_800_000_000 % 300  # a 5-minute boundary


def gauge(*values: float) -> dict[int, dict[str, float]]:
    """One sample a minute from T0 on."""
    return {
        T0 + 60 * n: {"Maximum": v, "Minimum": v, "Sum": v, "SampleCount": 1}
        for n, v in enumerate(values)
    }


def verdicts(series: list[Series], end: int) -> dict[str, Verdict]:
    return {v.alarm: v for v in evaluate_all(SPECS.values(), series, end)}


def test_deferred_needs_all_ten_minutes_above_the_threshold() -> None:
    deferred = SPECS["deferred"]
    assert evaluate(deferred, [5.0] * 10).state == "ALARM"
    almost = evaluate(deferred, [3.0] + [5.0] * 9)  # 3 is not above 3
    assert almost.state == "OK" and almost.streak == 9 and almost.would_fire
    assert "ALARM if it holds 1 more period" in almost.describe()


def test_a_backlog_younger_than_the_window_would_fire_but_is_not_alarm_yet() -> None:
    series = [Series("DeferredMessages", DIMENSIONS, gauge(0, 0, 5, 5))]
    verdict = verdicts(series, T0 + 180)["deferred"]
    assert verdict.values == (None,) * 6 + (0, 0, 5, 5)
    assert (verdict.state, verdict.breaching, verdict.streak) == ("OK", 2, 2)
    assert verdict.would_fire


def test_a_drained_queue_does_not_fire() -> None:
    series = [Series("DeferredMessages", DIMENSIONS, gauge(5, 5, 0))]
    verdict = verdicts(series, T0 + 120)["deferred"]
    assert verdict.state == "OK" and not verdict.would_fire


def test_silence_is_breaching_missing_data() -> None:
    silent = SPECS["silent"]
    assert evaluate(silent, [None] * 5).state == "ALARM"
    assert evaluate(silent, [1.0, None, None, None, None]).state == "OK"  # 4 of 5 breach
    assert evaluate(silent, [1.0] * 4 + [None]).would_fire  # the newest minute is missing
    # No series at all for the host: every alarm of it sees nothing.
    nothing = verdicts([], T0)
    assert nothing["silent"].state == "ALARM"
    assert nothing["deferred"].state == "OK"  # notBreaching


def test_a_publishing_host_is_not_silent() -> None:
    series = [Series("DeferredMessages", DIMENSIONS, gauge(0, 0, 0, 0, 0))]
    verdict = verdicts(series, T0 + 240)["silent"]
    assert verdict.state == "OK" and not verdict.would_fire
    assert verdict.describe() == "silent: OK (0 of 5 x 60s breach, 5 with data)"


def test_missing_treated_as_missing_is_insufficient_data() -> None:
    spec = AlarmSpec("x", "", "NS", "M", {}, "Maximum", 60, 2, "GreaterThanThreshold", 1, "missing")
    assert evaluate(spec, [None, None]).state == "INSUFFICIENT_DATA"
    assert evaluate(spec, [None, 2.0]).state == "OK"  # 1 of 2 periods breaches


def test_counts_add_up_over_the_alarms_five_minutes() -> None:
    minutes = gauge(1, 0, 2, 0, 2, 9)  # the sixth minute starts the next 5-minute period
    assert period_values(minutes, "Sum", 300) == {T0: 5, T0 + 300: 9}
    assert period_values(minutes, "Maximum", 300) == {T0: 2, T0 + 300: 9}
    assert period_values(minutes, "SampleCount", 300) == {T0: 5, T0 + 300: 1}
    refused = [Series("SessionsRefused", DIMENSIONS, gauge(1, 0, 2, 0, 2))]
    assert verdicts(refused, T0 + 240)["refused"].state == "ALARM"  # 5 >= 5 in 5 minutes
    fewer = [Series("SessionsRefused", DIMENSIONS, gauge(1, 0, 2, 0, 1))]
    assert verdicts(fewer, T0 + 240)["refused"].state == "OK"


def test_another_hosts_metrics_are_not_this_hosts() -> None:
    other = {**DIMENSIONS, INSTANCE_DIMENSION: "i-0other"}
    series = [Series("DeferredMessages", other, gauge(*[9.0] * 10))]
    assert verdicts(series, T0 + 540)["deferred"].state == "OK"
    assert verdicts(series, T0 + 540)["silent"].state == "ALARM"


def test_window_ends_with_the_period_holding_end() -> None:
    values = {T0: 1.0, T0 + 60: 2.0}
    assert window(values, 60, 3, T0 + 119) == [None, 1.0, 2.0]
    assert window(values, 60, 2, T0 + 59) == [None, 1.0]


def test_series_from_the_readers_json() -> None:
    item = {"name": "Sent", "dimensions": DIMENSIONS, "minutes": {str(T0): {"Sum": 2.0}}}
    series = Series.from_json(item)
    assert series.latest("Sum") == (T0, 2.0)
    assert Series("Sent", DIMENSIONS, {}).latest("Sum") is None


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_host_alarm_can_be_evaluated(spec: AlarmSpec) -> None:
    assert evaluate(spec, [0.0] * spec.evaluation_periods).state in ("OK", "ALARM")


def test_sample_lines_show_every_metric_newest_first_by_its_statistic() -> None:
    series = [
        Series("DeferredMessages", DIMENSIONS, gauge(5, 0)),
        Series("OldestMessageAge", DIMENSIONS, gauge(61.5)),
    ]
    lines = sample_lines(series)
    assert len(lines) == len(METRICS)
    assert lines[1] == "DeferredMessages = 0 Count"  # the newest minute, not the largest
    assert "OldestMessageAge = 61.5 Seconds" in lines
    assert "Sent = no sample" in lines
