"""``protege logs reconcile``: does the store hold every exchange the gateway answered?

Compares the gateway's answered-request counter (``protege_requests_total``) with the distinct
``request_id``s in the store, accounting for records the gateway dropped on purpose (spool cap)
and records still waiting in the spool. Counters restart with the gateway process, so compare
over one gateway lifetime (the tests do; operators should after a restart). The workers of
``protege gateway --workers N`` count together (multiprocess metrics), across a worker's
restart too; their lifetime is the parent's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.segment import scan_segment, sealed_segments
from core.settings import writer_spools


@dataclass(frozen=True)
class Reconciliation:
    answered: int  # requests the gateway answered (its counter)
    dropped: int  # records the gateway did not capture on purpose (spool full, errors)
    spooled: int  # records still in the local spool, not yet shipped
    stored: int  # distinct request ids in the store

    @property
    def missing(self) -> int:
        """Answered exchanges found nowhere: not stored, not spooled, not knowingly dropped."""
        return max(0, self.answered - self.dropped - self.spooled - self.stored)

    def lines(self) -> list[str]:
        return [
            f"answered by the gateway   {self.answered:>12,}",
            f"dropped (counted)         {self.dropped:>12,}",
            f"in the spool, not shipped {self.spooled:>12,}",
            f"distinct in the store     {self.stored:>12,}",
            f"missing                   {self.missing:>12,}",
        ]


def gateway_counts(metrics_text: str, task: str | None = None) -> tuple[int, int]:
    """(answered, dropped) from a gateway's /metrics page, optionally for one task."""
    answered = dropped = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "protege_requests_total":
                if task is None or sample.labels.get("task") == task:
                    answered += sample.value
            elif sample.name == "protege_spool_dropped_total" and task is None:
                dropped += sample.value
    return int(answered), int(dropped)


def fetch_gateway_counts(gateway_url: str, task: str | None = None) -> tuple[int, int]:
    resp = httpx.get(gateway_url.rstrip("/") + "/metrics", timeout=10)
    resp.raise_for_status()
    return gateway_counts(resp.text, task)


def spooled_records(spool: Path) -> int:
    """Whole records in the sealed and open segments of the spool and of every gateway
    worker's spool in it (``protege gateway --workers N``)."""
    total = 0
    for directory in writer_spools(spool):
        paths = sealed_segments(directory) + sorted(directory.glob("*.open"))
        total += sum(scan_segment(p).records for p in paths if p.exists())
    return total
