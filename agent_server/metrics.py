"""Prometheus metrics (prometheus-client), one registry per app.

Counters that move on every frame (frames sent) are plain integers in the runtime,
read by a collector at scrape time, so the hot path pays nothing for metrics. Per-run
observations (status, duration, time to first token) are recorded when a run finishes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agent_server.runs import Run, RunManager
from agent_server.streams import Streams
from agent_server.supervise import Supervisor

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Live(Collector):
    def __init__(self, runs: RunManager, streams: Streams, supervisor: Supervisor) -> None:
        self.runs = runs
        self.streams = streams
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "agent_server_runs_active", "Runs executing now.", value=self.runs.active
        )
        yield GaugeMetricFamily(
            "agent_server_runs_queued",
            "Runs accepted and waiting for a slot.",
            value=self.runs.queued,
        )
        yield GaugeMetricFamily(
            "agent_server_subscribers", "Streams open to clients.", value=self.streams.active
        )
        yield CounterMetricFamily(
            "agent_server_frames_sent", "Frames written to clients.", value=self.streams.frames_sent
        )
        yield CounterMetricFamily(
            "agent_server_subscribers_dropped_slow",
            "Subscribers dropped for falling too far behind.",
            value=self.streams.dropped_slow,
        )
        yield GaugeMetricFamily(
            "agent_server_retained_log_bytes",
            "Bytes of finished runs' logs kept for late joiners (compressed).",
            value=self.runs.retained_bytes,
        )
        health = self.runs.broker.health
        yield GaugeMetricFamily(
            "agent_server_broker_up",
            "1 while this worker reaches its broker (always 1 for memory://).",
            value=int(health.up),
        )
        yield CounterMetricFamily(
            "agent_server_broker_errors",
            "Broker calls that failed because it was unreachable.",
            value=health.errors,
        )
        yield CounterMetricFamily(
            "agent_server_broker_outages",
            "Times the broker became unreachable.",
            value=health.outages,
        )
        restarts = CounterMetricFamily(
            "agent_server_background_restarts",
            "Restarts of a background job after it failed (see agent_server/supervise.py).",
            labels=["job"],
        )
        for job, count in sorted(self.supervisor.restarts.items()):
            restarts.add_metric([job], count)
        yield restarts


class Metrics:
    def __init__(self, runs: RunManager, streams: Streams, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry()
        self.runs_total = Counter(
            "agent_server_runs", "Finished runs by status.", ["status"], registry=self.registry
        )
        self.run_duration = Histogram(
            "agent_server_run_duration_seconds",
            "Run duration, from acceptance to the terminal frame.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "agent_server_time_to_first_token_seconds",
            "From acceptance to the first token frame.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(runs, streams, supervisor))
        runs.on_finish.append(self.observe)

    def observe(self, run: Run) -> None:
        self.runs_total.labels(run.status.value).inc()
        if run.ended_at is not None:
            self.run_duration.observe(run.ended_at - run.created_at)
        if run.first_token_at is not None:
            self.first_token.observe(run.first_token_at - run.created_at)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
