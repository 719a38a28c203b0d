"""Prometheus metrics of one Controller (its own registry, so several can live in a process)."""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]
# The *_created timestamp series say when a counter was made; dashboards use the counters.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("capsat_requests", "requests by endpoint and outcome",
                                ["endpoint", "status"], registry=r)
        self.routed = Counter("capsat_routed", "decisions by chosen candidate", ["model"],
                              registry=r)
        self.answered = Counter("capsat_answered", "calls answered by each candidate",
                                ["model"], registry=r)
        self.backend_errors = Counter("capsat_backend_errors", "failed backend calls by "
                                      "candidate and kind", ["model", "kind"], registry=r)
        self.fallbacks = Counter("capsat_fallbacks", "requests answered by another candidate "
                                 "than the one chosen first", registry=r)
        self.spend = Counter("capsat_spend", "cost of finished calls, in the prices' unit",
                             ["model"], registry=r)
        self.routing_seconds = Histogram("capsat_routing_seconds", "time to decide (scoring "
                                         "and policy)", buckets=LATENCY_BUCKETS, registry=r)
        self.backend_seconds = Histogram("capsat_backend_seconds", "backend call time (to the "
                                         "last byte)", ["model"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.batch_size = Histogram("capsat_batch_size", "requests scored per predict_proba "
                                    "call", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.budget_remaining = Gauge("capsat_budget_remaining", "budget left in this window",
                                      registry=r)
        self.dual_price = Gauge("capsat_budget_dual_price", "the budget's dual price (accuracy "
                                "per unit of cost)", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
