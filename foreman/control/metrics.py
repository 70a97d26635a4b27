"""Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

Each gateway has its own :class:`~prometheus_client.CollectorRegistry` (no globals).
What requests do is counted as they end (:meth:`Metrics.observe`); what the gateway
*is* (gate, target, residency) is read at scrape time by a collector, so nothing
can drift. Names and units (seconds, tokens):

* ``foreman_requests_total{route,method,status}``; ``foreman_request_duration_seconds{route}``
  and ``foreman_time_to_first_byte_seconds{route}`` (histograms);
  ``foreman_gate_wait_seconds`` (histogram, gated requests);
* ``foreman_chats_in_flight``, ``foreman_chats_waiting``, ``foreman_embeds_in_flight``;
* ``foreman_target_reachable`` (0/1), ``foreman_last_successful_poll_timestamp_seconds``,
  ``foreman_models`` (in the inventory), ``foreman_models_resident``, ``foreman_warmups_total``;
* ``foreman_jobs_queued{lane}``, ``foreman_jobs_finished_total{state}`` (the job queue);
* ``foreman_tokens_total{model,direction}`` (``in``: ``prompt_eval_count``, ``out``:
  ``eval_count``, read from the final NDJSON line or the whole answer, never changing a byte;
  on the OpenAI and Anthropic faces from ``usage``, in the answer or its events).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..dataplane.faces import usage_counts

if TYPE_CHECKING:
    from ..backends.ollama.inventory import Inventory
    from ..backends.ollama.residency import Residency
    from ..dataplane.exchange import Exchange
    from ..dataplane.gate import Gate

__all__ = ["Metrics", "Watched", "route_label"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)

#: Route labels: Ollama's endpoints by name, everything else as "other" (bounded cardinality).
_ROUTES = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
    "/api/tags": "tags",
    "/api/ps": "ps",
    "/api/show": "show",
    "/v1/chat/completions": "openai_chat",
    "/v1/completions": "openai_completions",
    "/v1/embeddings": "openai_embeddings",
    "/v1/responses": "openai_responses",
    "/v1/models": "openai_models",
    "/v1/messages": "anthropic_messages",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}


def route_label(key: str | None) -> str:
    """The ``route`` label for a route key (see :func:`foreman.dataplane.native.route_key`)."""
    label = _ROUTES.get(key or "")
    if label is None:
        label = "openai_model" if (key or "").startswith("/v1/models/") else "other"
    return label


class JobCounts(Protocol):
    """What the metrics read of the job queue (:class:`foreman.jobs.Jobs`)."""

    depths: dict[str, int]  # queued jobs by lane
    finished: dict[str, int]  # jobs ended by this process, by state


class Watched(Protocol):
    """What the metrics read of the gateway at every scrape (:class:`foreman.gateway.Gateway`)."""

    gate: Gate
    inventory: Inventory
    residency: Residency
    jobs: Any  # a JobCounts, or None before the queue starts

    @property
    def embeds_in_flight(self) -> int: ...


class Metrics:
    """foreman's metrics for one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "foreman_requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "foreman_request_duration_seconds",
            "Time from a request's first byte to its last answer byte.",
            ("route",),
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "foreman_time_to_first_byte_seconds",
            "Time from a request's first byte to its status line.",
            ("route",),
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.gate_wait = Histogram(
            "foreman_gate_wait_seconds",
            "Time chat and generate requests waited at the gate.",
            buckets=_WAIT,
            registry=self.registry,
        )
        self.tokens = Counter(
            "foreman_tokens",
            "Tokens by model: in (prompt_eval_count) and out (eval_count).",
            ("model", "direction"),
            registry=self.registry,
        )

        self._counters: dict[tuple[str, str, int | None], Any] = {}
        self._timers: dict[str, tuple[Any, Any]] = {}

    def watch(self, gw: Watched) -> None:
        """Report ``gw``'s state at every scrape."""
        self.registry.register(_GatewayCollector(gw))

    def observe(self, exchange: Exchange, route: str, now: float) -> None:
        """Count one finished request (``now`` on the same clock as ``exchange.started``)."""
        key = (route, exchange.method, exchange.status)
        counter = self._counters.get(key)
        if counter is None:  # labels() costs more than the rest of this: kept per key
            status = str(exchange.status) if exchange.status is not None else "none"
            counter = self._counters[key] = self.requests.labels(route, exchange.method, status)
        counter.inc()
        timers = self._timers.get(route)
        if timers is None:
            timers = self._timers[route] = (
                self.duration.labels(route),
                self.first_byte.labels(route),
            )
        timers[0].observe(now - exchange.started)
        if exchange.first_byte is not None:
            timers[1].observe(exchange.first_byte - exchange.started)
        if exchange.gate_wait is not None:
            self.gate_wait.observe(exchange.gate_wait)
        if exchange.final_line is not None and exchange.model:
            self.count_tokens(exchange.model, exchange.final_line)
        elif exchange.tokens is not None and exchange.model:
            self._add_tokens(exchange.model, exchange.tokens)

    def count_tokens(self, model: str, final: bytes) -> None:
        """Add the counts of an answer's final object (``done: true``), if it has them."""
        try:
            answer = json.loads(final)
        except ValueError:
            return
        if not isinstance(answer, dict):
            return
        if answer.get("done") is not True:  # an OpenAI or Anthropic answer: its usage
            counts = usage_counts(answer)
            if counts is not None:
                self._add_tokens(model, counts)
            return
        for field, direction in (("prompt_eval_count", "in"), ("eval_count", "out")):
            count = answer.get(field)
            if isinstance(count, int) and count > 0:
                self.tokens.labels(model, direction).inc(count)

    def _add_tokens(self, model: str, counts: tuple[int, int]) -> None:
        for count, direction in zip(counts, ("in", "out"), strict=True):
            if count > 0:
                self.tokens.labels(model, direction).inc(count)


class _GatewayCollector(Collector):
    def __init__(self, gw: Watched) -> None:
        self._gw = gw

    def describe(self) -> list[Metric]:
        return []  # collected fresh each time

    def collect(self) -> Iterator[Metric]:
        gw = self._gw
        gate = gw.gate.statistics()
        inventory, residency = gw.inventory, gw.residency
        yield _gauge(
            "foreman_chats_in_flight", "Chats running at the target (0 or 1).", gate.in_flight
        )
        yield _gauge("foreman_chats_waiting", "Chats waiting at the gate.", gate.waiting)
        yield _gauge(
            "foreman_embeds_in_flight", "Embed requests at the target.", gw.embeds_in_flight
        )
        yield _gauge(
            "foreman_target_reachable",
            "1 while the last /api/tags poll succeeded.",
            0 if inventory.degraded.value else 1,
        )
        yield _gauge(
            "foreman_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful /api/tags poll (0: none yet).",
            inventory.last_success or 0,
        )
        yield _gauge("foreman_models", "Models in the target's inventory.", len(inventory.models))
        yield _gauge(
            "foreman_models_resident",
            "Models loaded at the target (/api/ps).",
            len(residency.resident or ()),
        )
        warmups = CounterMetricFamily("foreman_warmups", "Warm-ups of the embedder sent.")
        warmups.add_metric([], residency.warmups)
        yield warmups
        jobs: JobCounts | None = gw.jobs
        if jobs is not None:
            depth = GaugeMetricFamily(
                "foreman_jobs_queued", "Jobs waiting in the queue, by lane.", labels=["lane"]
            )
            for lane, count in jobs.depths.items():
                depth.add_metric([lane], count)
            yield depth
            finished = CounterMetricFamily(
                "foreman_jobs_finished", "Jobs that ended, by state.", labels=["state"]
            )
            for state, count in jobs.finished.items():
                finished.add_metric([state], count)
            yield finished
        if gw.store_health is not None:  # which replica answers, and its database's state
            info = GaugeMetricFamily(
                "foreman_replica_info",
                "This replica (1): its id and its database (sqlite | postgresql).",
                labels=["replica", "database"],
            )
            info.add_metric([gw.store_health.replica, gw.store_health.store.dialect], 1)
            yield info
            yield _gauge(
                "foreman_database_reachable",
                "1 while the database answers (always 1 with SQLite).",
                int(gw.store_health.reachable),
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
