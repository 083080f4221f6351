"""The gateway's metric classes: prometheus_client's, with ``labels`` served from a cache."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import Counter, Gauge, Histogram


def test_cached_children_are_the_exported_ones() -> None:
    """labels() gives the same child each time, and what it counts is what is exported."""
    registry = CollectorRegistry()
    hits = Counter("hits", "Hits.", ["task"], registry=registry)
    latency = Histogram("latency_seconds", "Latency.", ["task"], registry=registry)
    assert hits.labels("a") is hits.labels("a")
    assert hits.labels("a") is not hits.labels("b")
    for _ in range(3):
        hits.labels("a").inc()
        latency.labels("a").observe(0.2)
    assert registry.get_sample_value("hits_total", {"task": "a"}) == 3
    assert registry.get_sample_value("latency_seconds_count", {"task": "a"}) == 3
    assert hits.labels(task="a") is hits.labels("a")  # by name: prometheus_client's own path


def test_removed_child_is_not_served_from_the_cache() -> None:
    """After remove() or clear(), labels() makes a new child that is exported again."""
    registry = CollectorRegistry()
    drift = Gauge("drift", "Drift.", ["task", "feature"], registry=registry)
    drift.labels("a", "length").set(0.5)
    drift.remove("a", "length")
    assert b'drift{feature="length",task="a"}' not in generate_latest(registry)
    drift.labels("a", "length").set(0.25)
    assert registry.get_sample_value("drift", {"task": "a", "feature": "length"}) == 0.25
    drift.clear()
    drift.labels("a", "length").set(0.75)
    assert registry.get_sample_value("drift", {"task": "a", "feature": "length"}) == 0.75
