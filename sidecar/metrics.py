"""Prometheus metrics of the sidecar (its own /metrics port), all prefixed ``protege_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.segment import recovery_counters


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.backlog_bytes = Gauge(
            "protege_spool_backlog_bytes", "Bytes of sealed segments waiting to ship.", registry=r
        )
        self.backlog_segments = Gauge(
            "protege_spool_backlog_segments", "Sealed segments waiting to ship.", registry=r
        )
        self.oldest_age = Gauge(
            "protege_spool_oldest_segment_age_seconds",
            "Age of the oldest segment still in the spool (0 when empty).",
            registry=r,
        )
        self.records_shipped = Counter(
            "protege_shipped_records", "Records stored as Parquet.", registry=r
        )
        self.bytes_shipped = Counter(
            "protege_shipped_bytes", "Parquet bytes uploaded to the store.", registry=r
        )
        self.segments_shipped = Counter(
            "protege_shipped_segments", "Segments stored and removed from the spool.", registry=r
        )
        self.upload_errors = Counter(
            "protege_upload_errors", "Failed store operations (each is retried).", registry=r
        )
        self.upload_retries = Counter(
            "protege_upload_retries", "Store operations retried after a failure.", registry=r
        )
        self.quarantined = Counter(
            "protege_quarantined_segments",
            "Damaged segments moved aside instead of shipped.",
            registry=r,
        )
        self.last_upload = Gauge(
            "protege_last_upload_timestamp_seconds",
            "Unix time of the last successful upload (0 before the first).",
            registry=r,
        )
        # The gateway's counters too, for the open segments of crashed writers recovered here.
        self.spool_torn, self.spool_sealed = recovery_counters(r)
        self.compacted_parts = Counter(
            "protege_compacted_parts", "Parts merged away by compaction.", registry=r
        )
