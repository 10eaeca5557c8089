"""Benchmarks of the relay against the physical limits of the service: throughput against
sessions x 1000 / receiving interval, retry recovery against the retry timers, and what the DNS
cache saves. Run with ``python -m benchmarks``; ``REPORT.md`` holds the committed results."""
