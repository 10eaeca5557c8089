"""Results (the JSON document) to Markdown: one run's tables, and the committed report, whose
prose is ``templates/report.md.j2``. Pure; the tables are in ``tables``, the targets and
findings in ``verdicts``, the chart in ``chart``.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from benchmarks import tables, verdicts
from benchmarks.tables import Row

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # Markdown, not HTML
)


def results_markdown(results: Row) -> str:
    """The tables of one run (written next to its JSON)."""
    p = results["parameters"]
    sections = [
        f"# Benchmark run {results['started_at']}\n",
        f"Machine: {tables.machine_line(results)}. Wall time {results['wall_s']:.0f} s.\n",
    ]
    if results.get("throughput"):
        sections.append(
            f"## Throughput\n\n{p['messages']} messages per run, stand-in session cap "
            f"{p['session_cap']} (= maxConnections).\n\n"
            + tables.throughput_table(results["throughput"])
        )
    if results.get("ceiling"):
        sections.append(
            "## A minimal client straight to the stand-in\n\n"
            + tables.throughput_table(results["ceiling"])
        )
    if results.get("ablation"):
        sections.append(
            f"## Each tuning knob's share ({p['ablation_interval_ms']} ms)\n\n"
            + tables.throughput_table(results["ablation"])
        )
    if results.get("churn"):
        sections.append(
            "## Connection retirement (smtp_connection_reuse_time_limit = 1s)\n\n"
            + tables.throughput_table(results["churn"])
        )
    if results.get("recovery"):
        sections.append("## Recovery\n\n" + tables.recovery_table(results["recovery"]))
    if results.get("latency"):
        sections.append("## Latency\n\n" + tables.latency_table(results["latency"]))
        sections.append("Round trips per RTT\n\n" + tables.round_trips_table(results["latency"]))
    if results.get("relays"):
        sections.append("## Several sending IPs\n\n" + tables.relays_table(results["relays"]))
    if results.get("soak"):
        sections.append("## Soak\n\n" + tables.soak_table(results["soak"]))
    if results.get("throughput"):
        sections.append("## DNS\n\n" + tables.dns_tables(results))
    sections.append("## Targets (rendered settings)\n\n" + verdicts.target_lines(results))
    if results.get("failures"):
        sections.append(tables.failures_section(results))
    return "\n".join(sections)


def report_markdown(results: Row) -> str:
    """The committed report: method, targets, the chart, every table, and how to rerun."""
    template = _templates.get_template("report.md.j2")
    return template.render(
        results=results, p=results["parameters"], tables=tables, verdicts=verdicts
    )
