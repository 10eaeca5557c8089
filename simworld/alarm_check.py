"""Which of a relay's alarms CloudWatch would put in ALARM, given the datapoints it holds. Pure.

moto stores metrics but evaluates no alarm, so the sandbox and the twin tests judge the
component's own alarm definitions (``components.monitoring.AlarmSpec``) here, as CloudWatch
does: the alarm's statistic over each of its periods, the last ``evaluation_periods`` periods
(all of them must breach: the component sets no DatapointsToAlarm), the comparison with the
threshold and ``treat_missing_data`` for a period without a datapoint:

- no datapoint in the whole window: ``breaching`` -> ALARM, ``notBreaching`` -> OK,
  ``missing`` or ``ignore`` -> INSUFFICIENT_DATA (an alarm without a previous state);
- some datapoints: a missing period breaches only under ``breaching``.

"Would fire" on fewer periods than the alarm needs (a twin runs for minutes, the deferred alarm
looks at 10): ``Verdict.streak`` counts the newest periods that breach in a row, and an alarm
``would_fire`` if it is in ALARM or its newest period breaches, i.e. it goes to ALARM once the
condition has held for ``periods - streak`` more periods. ``Verdict.describe`` says which.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from cmc_relay.components.monitoring import AlarmSpec

State = Literal["ALARM", "OK", "INSUFFICIENT_DATA"]
# A metric's statistics per minute: {minute's start (epoch seconds): {statistic: value}}.
Minutes = Mapping[int, Mapping[str, float]]

COMPARISONS: Final[Mapping[str, Callable[[float, float], bool]]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
# How minutes add up to a longer period, per statistic.
ROLL_UP: Final[Mapping[str, Callable[[Iterable[float]], float]]] = {
    "Maximum": max,
    "Minimum": min,
    "Sum": sum,
    "SampleCount": sum,
}
# The state of an alarm with no datapoint in its window, by treat_missing_data.
ALL_MISSING: Final[Mapping[str, State]] = {"breaching": "ALARM", "notBreaching": "OK"}


@dataclass(frozen=True)
class Series:
    """One metric (name and dimensions) as CloudWatch holds it."""

    name: str
    dimensions: Mapping[str, str]
    minutes: Minutes

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Series:
        """An item of ``python -m simworld.agents metrics``' output."""
        minutes = {int(t): dict(stats) for t, stats in item["minutes"].items()}
        return cls(item["name"], dict(item["dimensions"]), minutes)

    def latest(self, statistic: str) -> tuple[int, float] | None:
        """The newest minute and its value of ``statistic``; None before any sample."""
        if not self.minutes:
            return None
        minute = max(self.minutes)
        return minute, self.minutes[minute][statistic]


def period_values(minutes: Minutes, statistic: str, period: int) -> dict[int, float]:
    """``statistic`` per ``period`` (a multiple of a minute), keyed by the period's start."""
    grouped: dict[int, list[float]] = {}
    for minute, stats in minutes.items():
        grouped.setdefault(minute - minute % period, []).append(stats[statistic])
    return {start: ROLL_UP[statistic](values) for start, values in grouped.items()}


def window(values: Mapping[int, float], period: int, periods: int, end: int) -> list[float | None]:
    """The ``periods`` periods up to the one holding ``end``, oldest first; None: no datapoint."""
    last = end - end % period
    return [values.get(last - period * back) for back in reversed(range(periods))]


@dataclass(frozen=True)
class Verdict:
    alarm: str  # the AlarmSpec's suffix
    state: State
    periods: int  # the evaluation window, in periods
    period: int  # seconds
    breaching: int  # periods of the window that breach (missing ones as treat_missing_data says)
    streak: int  # the newest periods breaching in a row
    values: tuple[float | None, ...]  # the window, oldest first

    @property
    def would_fire(self) -> bool:
        return self.state == "ALARM" or self.streak > 0

    def describe(self) -> str:
        window = f"{self.periods} x {self.period}s"
        if self.state == "ALARM":
            return f"{self.alarm}: ALARM ({self.breaching} of {self.periods} periods breach)"
        if self.streak:
            more = self.periods - self.streak
            return (
                f"{self.alarm}: {self.state}, would fire: the last {self.streak} of {window} "
                f"breach; ALARM if it holds {more} more period(s)"
            )
        with_data = sum(value is not None for value in self.values)
        return (
            f"{self.alarm}: {self.state} ({self.breaching} of {window} breach, "
            f"{with_data} with data)"
        )


def evaluate(spec: AlarmSpec, values: Sequence[float | None]) -> Verdict:
    """The alarm's state on its window ``values`` (oldest first, as ``window`` returns)."""
    compare = COMPARISONS[spec.comparison_operator]
    missing_breaches = spec.treat_missing_data == "breaching"
    breaches = [
        missing_breaches if value is None else compare(value, spec.threshold) for value in values
    ]
    streak = next((n for n, b in enumerate(reversed(breaches)) if not b), len(breaches))
    state: State
    if all(value is None for value in values):
        state = ALL_MISSING.get(spec.treat_missing_data, "INSUFFICIENT_DATA")
    else:
        state = "ALARM" if sum(breaches) >= spec.evaluation_periods else "OK"
    return Verdict(
        spec.suffix, state, spec.evaluation_periods, spec.period, sum(breaches), streak,
        tuple(values),
    )  # fmt: skip


def series_for(spec: AlarmSpec, series: Iterable[Series]) -> Series | None:
    """The series the alarm watches: its metric name with exactly its dimensions."""
    dimensions = dict(spec.dimensions)
    return next(
        (s for s in series if s.name == spec.metric_name and dict(s.dimensions) == dimensions),
        None,
    )


def evaluate_all(specs: Iterable[AlarmSpec], series: Sequence[Series], end: int) -> list[Verdict]:
    """Every alarm at time ``end`` (epoch seconds: the newest sample's, so a minute the
    publisher has not reached yet is not counted as missing)."""
    verdicts = []
    for spec in specs:
        watched = series_for(spec, series)
        minutes = watched.minutes if watched is not None else {}
        values = period_values(minutes, spec.statistic, spec.period)
        verdicts.append(evaluate(spec, window(values, spec.period, spec.evaluation_periods, end)))
    return verdicts
