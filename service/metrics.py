"""Prometheus metrics with label values from closed sets only.

A label value taken from a request (a key id, a source, an error message) would make one
series per distinct value and let any client grow the scrape without bound. So every label
here is checked against a set fixed at start: the config's emitters and event types, the
outcome and status vocabularies; anything else is counted as `other`. Each app has its own
registry, so tests and embedders can build several apps in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine import Config

from .problems import OUTCOMES

STATUSES = ("accepted", "duplicate", "rejected")
DELIVERY_OUTCOMES = ("done", "retry", "failed", "disabled", "lost")
OTHER = "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _closed(value: Any, allowed: frozenset[str] | tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self, config: Config, version: str, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        self._emitters = frozenset(config.emitters)
        self._types = frozenset(config.events)
        self._requests = Counter("webinar_flows_ingest_requests_total", "Ingestion requests by outcome.",
                                 ["outcome"], registry=self.registry)
        self._events = Counter("webinar_flows_events_total", "Events processed, by emitter, type and status.",
                               ["emitter", "type", "status"], registry=self.registry)
        self._duration = Histogram("webinar_flows_ingest_duration_seconds", "Ingestion request duration.",
                                   registry=self.registry)
        self._batch = Histogram("webinar_flows_commit_batch_size", "Events per group-commit transaction.",
                                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=self.registry)
        depth = Gauge("webinar_flows_writer_queue_depth", "Events waiting for the writer.", registry=self.registry)
        depth.set_function(queue_depth)
        Gauge("webinar_flows_build_info", "The running version and config.", ["version", "config_hash"],
              registry=self.registry).labels(version=version, config_hash=config.hash).set(1)

        self._consumers = frozenset(config.consumers)
        self._attempts = Counter("webinar_flows_delivery_attempts_total",
                                 "Push delivery attempts, by consumer and outcome (done, retry, failed, disabled, lost).",
                                 ["consumer", "outcome"], registry=self.registry)
        self._backlog = Gauge("webinar_flows_delivery_backlog",
                              "Items a push consumer has not received yet (pending or not yet taken).", ["consumer"],
                              registry=self.registry)
        self._failed = Gauge("webinar_flows_delivery_failed", "Items set aside as failed, per push consumer.",
                             ["consumer"], registry=self.registry)

        # the labelled children, looked up once per label set (`labels()` costs more than `inc()`);
        # the keys are the closed values, so these dicts are bounded like the series are
        self._request_children: dict[str, Any] = {}
        self._event_children: dict[tuple[str, str, str], Any] = {}

    def request(self, outcome: str, seconds: float) -> None:
        outcome = _closed(outcome, OUTCOMES)
        child = self._request_children.get(outcome)
        if child is None:
            child = self._request_children[outcome] = self._requests.labels(outcome=outcome)
        child.inc()
        self._duration.observe(seconds)

    def events(self, emitter: str, results: list[dict[str, Any]]) -> None:
        emitter = _closed(emitter, self._emitters)
        for result in results:
            labels = (emitter, _closed(result.get("type"), self._types), _closed(result.get("status"), STATUSES))
            child = self._event_children.get(labels)
            if child is None:
                child = self._event_children[labels] = self._events.labels(*labels)
            child.inc()

    def commit(self, size: int) -> None:
        """Called on the writer thread; prometheus_client's metrics are thread-safe."""
        self._batch.observe(size)

    def delivery(self, consumer: str, outcomes: list[str]) -> None:
        """Called by the deliverer's thread after each round of sends."""
        name = _closed(consumer, self._consumers)
        for outcome in outcomes:
            self._attempts.labels(consumer=name, outcome=_closed(outcome, DELIVERY_OUTCOMES)).inc()

    def delivery_state(self, consumer: str, backlog: int, failed: int) -> None:
        name = _closed(consumer, self._consumers)
        self._backlog.labels(consumer=name).set(backlog)
        self._failed.labels(consumer=name).set(failed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
