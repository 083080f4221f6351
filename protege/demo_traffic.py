"""The demo's application and its operator.

``App`` is an application sending support tickets of the synthetic task through the official
``openai`` client (a quarter of them streamed), as many users; ``Operator`` moves the task's
rollout through the gateway's admin API and reads the gateway's Prometheus metrics to watch
the monitors.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import httpx
from prometheus_client.parser import text_string_to_metric_families

from protege.demo_procs import DemoError
from trainer import synthetic

USERS: Final = 60  # distinct users the traffic comes from (splits and canaries go by user)
STREAM_EVERY: Final = 4  # one request in this many is streamed
MAX_TOKENS: Final = 32  # the answer is a short JSON object


@dataclass(frozen=True)
class Sent:
    """One request's outcome as the application saw it."""

    ok: bool
    stream: bool
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Batch:
    sent: list[Sent]
    seconds: float

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.sent if s.error is not None]

    def line(self) -> str:
        streamed = sum(s.stream for s in self.sent)
        failed = len(self.errors)
        text = f"{len(self.sent)} requests ({streamed} streamed) in {self.seconds:.1f} s"
        return text + (f", {failed} failed: {self.errors[0]}" if failed else ", all answered")


class App:
    """An application of many users sending tickets to the gateway through ``openai``."""

    def __init__(self, gateway_url: str, model: str, seed: int, concurrency: int = 4) -> None:
        try:
            import openai
        except ImportError as exc:  # a dev/demo dependency, not one of the gateway's
            raise DemoError("protege demo sends its traffic with the openai package: "
                            "pip install openai") from exc  # fmt: skip
        self._client = openai.OpenAI(
            base_url=f"{gateway_url}/v1", api_key="demo-app", max_retries=0, timeout=120.0
        )
        self._model = model
        self._rng = random.Random(seed)
        self._concurrency = concurrency

    def send(self, n: int, email_share: float = 0.0) -> Batch:
        """``n`` tickets from random users, ``concurrency`` at a time, a share ``email_share``
        of them long forwarded e-mail threads; never raises for a failed request (it is
        counted)."""
        jobs = []
        for i in range(n):
            if email_share:
                text, _ = synthetic.mixed(self._rng, email_share)
            else:
                text, _ = synthetic.ticket(self._rng)
            jobs.append((text, f"user{self._rng.randrange(USERS)}", i % STREAM_EVERY == 1))
        started = time.monotonic()
        with ThreadPoolExecutor(self._concurrency) as pool:
            sent = list(pool.map(self._one, jobs))
        return Batch(sent, time.monotonic() - started)

    def _one(self, job: tuple[str, str, bool]) -> Sent:
        text, user, stream = job
        started = time.monotonic()
        try:
            self._ask(text, user, stream)
        except Exception as exc:  # counted and shown; the demo goes on
            return Sent(False, stream, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        return Sent(True, stream, time.monotonic() - started)

    def _ask(self, text: str, user: str, stream: bool) -> str:
        kwargs: dict[str, Any] = {
            "model": self._model, "messages": synthetic.messages(text), "user": user,
            "temperature": 0, "max_tokens": MAX_TOKENS,
        }  # fmt: skip
        if not stream:
            answer = self._client.chat.completions.create(**kwargs)
            return answer.choices[0].message.content or ""
        chunks = self._client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class Metrics:
    """One scrape of a Prometheus endpoint: (sample name, labels, value)."""

    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls([
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ])  # fmt: skip

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name``'s samples matching ``labels``, summed per value of ``label``."""
        out: dict[str, float] = {}
        for sample, have, value in self.samples:
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                out[have.get(label, "")] = out.get(have.get(label, ""), 0.0) + value
        return out


class Operator:
    """The person running the rollout: the admin API and the gateway's metrics."""

    def __init__(self, gateway_url: str, token: str, task: str) -> None:
        self._http = httpx.Client(
            base_url=gateway_url, headers={"authorization": f"Bearer {token}"}, timeout=30.0
        )
        self.task = task

    def set(self, **fields: Any) -> dict[str, Any]:
        """Change the task's rollout (the fields given; the others are kept)."""
        return self._call("PUT", f"/admin/routes/{self.task}", json=fields)

    def reset(self) -> dict[str, Any]:
        """Back to the config file's rollout (teacher mode)."""
        return self._call("DELETE", f"/admin/routes/{self.task}")

    def rollout(self) -> dict[str, Any]:
        return self._call("GET", f"/admin/routes/{self.task}")

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kw)
        if response.status_code != 200:
            message = response.json().get("error", {}).get("message", response.text)
            raise DemoError(f"the admin API refused {method} {path}: {message}")
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> Metrics:
        return Metrics.parse(self._http.get("/metrics").text)

    def wait_shadowed(self, before: Metrics, expected: int, timeout_s: float) -> dict[str, int]:
        """Wait until ``expected`` shadow calls finished since ``before``; how many did, by
        outcome (scored, unscored, failed, skipped)."""
        name, deadline = "protege_shadow_requests_total", time.monotonic() + timeout_s
        while True:
            done = delta(self.metrics(), before, name, "outcome", task=self.task)
            if sum(done.values()) >= expected or time.monotonic() > deadline:
                return {k: int(v) for k, v in done.items()}
            time.sleep(0.5)

    def close(self) -> None:
        self._http.close()


def delta(
    after: Metrics, before: Metrics, name: str, label: str, **labels: str
) -> dict[str, float]:
    """Per value of ``label``, how much ``name`` grew between two scrapes."""
    grown = after.by(name, label, **labels)
    for key, value in before.by(name, label, **labels).items():
        grown[key] = grown.get(key, 0.0) - value
    return {k: v for k, v in grown.items() if v}


def mean_of(after: Metrics, before: Metrics, histogram: str, **labels: str) -> tuple[float, int]:
    """(mean, count) of a histogram's observations between two scrapes."""
    counts = [m.total(f"{histogram}_count", **labels) for m in (after, before)]
    sums = [m.total(f"{histogram}_sum", **labels) for m in (after, before)]
    n = int(counts[0] - counts[1])
    return ((sums[0] - sums[1]) / n if n else float("nan")), n


def share(counts: Iterable[tuple[str, float]], of: str) -> float:
    pairs = list(counts)
    total = sum(v for _, v in pairs)
    return sum(v for k, v in pairs if k == of) / total if total else 0.0
