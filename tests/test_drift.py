"""Input drift: windowed live profiles, the drift monitor's worker and gauges, routing checks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from structlog.testing import capture_logs

import gateway.drift
from core.profile import CHARSETS, FEATURES, Profile, drift
from core.text import prompt_text
from gateway.drift import (
    DriftMonitor,
    WindowedProfile,
    dominant_charset,
    length_bin,
    out_of_bounds,
    reference_of,
)
from gateway.metrics import Metrics

_VERBS = ("reset", "change", "cancel", "update", "check", "track", "refund", "return")
_NOUNS = ("password", "order", "subscription", "address", "parcel", "invoice", "account")
_CYRILLIC = ("пожалуйста", "помогите", "заказ", "пароль", "доставка", "счёт", "адрес")
_OTHER_WORDS = ("deploy", "kernel", "latency", "cluster", "replica", "shard", "quorum")


def ticket(rng: random.Random, words: tuple[str, ...] = _VERBS + _NOUNS, pad: int = 1) -> str:
    """One synthetic support prompt; ``pad`` repeats its body to make it longer."""
    head = (
        f"Hi, please {rng.choice(_VERBS)} my {rng.choice(_NOUNS)}, order #{rng.randint(1, 9999)}."
    )
    body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
    return head + (" " + body) * pad


def cyrillic(rng: random.Random) -> str:
    return " ".join(rng.choice(_CYRILLIC) for _ in range(rng.randint(5, 30)))


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


@cache
def reference() -> Profile:
    rng = random.Random(1)
    return Profile.of(ticket(rng) for _ in range(1000))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(metrics: Metrics, clock: Clock) -> Iterator[DriftMonitor]:
    mon = DriftMonitor(
        metrics, queue_max=10_000, interval_s=3600, min_samples=30, clock=clock, max_rate=None
    )
    mon.start()
    yield mon
    mon.stop()


def gauge(metrics: Metrics, label: str, feature: str, measure: str) -> float | None:
    labels = {"task": label, "feature": feature, "measure": measure}
    return metrics.registry.get_sample_value("protege_input_drift", labels)


def feed(monitor: DriftMonitor, task: str, texts: list[str]) -> None:
    for text in texts:
        monitor.observe(task, user(text))
    monitor.flush(timeout=10)


# WindowedProfile


@pytest.mark.parametrize(
    ("times", "now", "expected"),
    [
        ([0.0], 0.0, 1),
        ([0.0], 9.99, 1),  # bucket [0, 1) is still one of the ten latest at 9.99
        ([0.0], 10.0, 0),  # ...and has expired at 10
        ([0.0, 5.0, 12.0], 12.0, 2),
        ([0.0, 10.0], 10.0, 1),  # the ring slot of t=0 is reused for t=10
        ([0.0, 0.5, 9.0], 9.5, 3),
        ([5.0, 3.0], 5.0, 2),  # a time earlier than one seen counts as that one
        ([], 0.0, 0),
    ],
)
def test_window_keeps_the_latest_buckets(times: list[float], now: float, expected: int) -> None:
    """A text counts while its one-second bucket is one of the ten latest (window 10 s)."""
    window = WindowedProfile(window_s=10, buckets=10)
    for t in times:
        window.add(f"text at {t}", t)
    assert window.n(now) == expected
    assert window.profile(now).n == expected


def test_window_profile_merges_live_buckets() -> None:
    """The live profile equals the profile of the live texts, whatever bucket they fell in."""
    window = WindowedProfile(window_s=10, buckets=5)
    texts = [f"please reset password {i}" for i in range(12)]
    for i, text in enumerate(texts):
        window.add(text, float(i))
    live = window.profile(11.0)  # buckets of 2 s: [2, 12) is live
    expected = Profile.of(texts[2:])
    assert live.n == expected.n
    for feature in FEATURES:
        assert live.counts[feature] == pytest.approx(expected.counts[feature])


@pytest.mark.parametrize(("window_s", "buckets"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_window_rejects_bad_sizes(window_s: float, buckets: int) -> None:
    """A window needs a positive span and at least one bucket."""
    with pytest.raises(ValueError, match="window_s"):
        WindowedProfile(window_s, buckets)


# DriftMonitor


@pytest.mark.parametrize(
    ("name", "make", "drifts"),
    [
        ("same", ticket, False),
        ("cyrillic", cyrillic, True),
        ("longer", lambda rng: ticket(rng, pad=20), True),
        ("vocabulary", lambda rng: ticket(rng, words=_OTHER_WORDS), True),
    ],
)
def test_score_separates_shifted_traffic(
    monitor: DriftMonitor, name: str, make: Any, drifts: bool
) -> None:
    """Traffic drawn like the reference scores under 0.1; shifted traffic scores above it."""
    monitor.set_reference("t", "t", reference(), window_s=60)
    rng = random.Random(name)
    feed(monitor, "t", [make(rng) for _ in range(300)])
    score = monitor.score("t")
    assert score is not None
    assert (score > 0.1) is drifts, score


def test_gauges_hold_psi_and_js_per_feature(monitor: DriftMonitor, metrics: Metrics) -> None:
    """After a recompute every feature has a psi and a js gauge, equal to drift(ref, live)."""
    monitor.set_reference("t", "label-t", reference(), window_s=60)
    rng = random.Random(2)
    texts = [ticket(rng) for _ in range(40)]
    feed(monitor, "t", texts)
    expected = drift(reference(), Profile.of(texts))
    for feature in FEATURES:
        for measure in ("psi", "js"):
            value = gauge(metrics, "label-t", feature, measure)
            assert value == pytest.approx(expected[feature][measure])
    assert metrics.registry.get_sample_value("protege_drift_profiled_total") == 40


def test_score_waits_for_min_samples(monitor: DriftMonitor, metrics: Metrics) -> None:
    """With fewer than min_samples prompts in the window there is no score and no gauge."""
    monitor.set_reference("t", "t", reference(), window_s=60)
    feed(monitor, "t", [ticket(random.Random(i)) for i in range(29)])
    assert monitor.score("t") is None
    assert gauge(metrics, "t", "length", "psi") is None


def test_window_expiry_clears_score_and_gauges(
    monitor: DriftMonitor, metrics: Metrics, clock: Clock
) -> None:
    """Once the prompts age out of the window the score and gauges go away."""
    monitor.set_reference("t", "t", reference(), window_s=60)
    feed(monitor, "t", [ticket(random.Random(i)) for i in range(40)])
    assert monitor.score("t") is not None
    clock.now += 60
    monitor.flush(timeout=10)
    assert monitor.score("t") is None
    assert gauge(metrics, "t", "tokens", "js") is None


def test_set_reference_none_removes_gauges(monitor: DriftMonitor, metrics: Metrics) -> None:
    """Dropping a task's reference removes its gauges and its score."""
    monitor.set_reference("t", "t", reference(), window_s=60)
    feed(monitor, "t", [ticket(random.Random(i)) for i in range(40)])
    monitor.set_reference("t", "t", None, window_s=60)
    assert monitor.score("t") is None
    assert all(gauge(metrics, "t", f, m) is None for f in FEATURES for m in ("psi", "js"))


def test_new_reference_resets_the_window(monitor: DriftMonitor, metrics: Metrics) -> None:
    """A new adapter's reference starts from an empty live window."""
    monitor.set_reference("t", "t", reference(), window_s=60)
    feed(monitor, "t", [ticket(random.Random(i)) for i in range(40)])
    monitor.set_reference("t", "t", reference(), window_s=60)
    feed(monitor, "t", [ticket(random.Random(i)) for i in range(10)])
    assert monitor.score("t") is None
    assert gauge(metrics, "t", "charset", "psi") is None


def test_shared_label_keeps_gauges_of_other_task(monitor: DriftMonitor, metrics: Metrics) -> None:
    """Two tasks folded into one label: removing one leaves the other's gauges in place."""
    for task in ("a", "b"):
        monitor.set_reference(task, "other", reference(), window_s=60)
        feed(monitor, task, [ticket(random.Random(i)) for i in range(40)])
    monitor.set_reference("a", "other", None, window_s=60)
    assert gauge(metrics, "other", "length", "psi") is not None


def test_observe_drops_when_queue_full(metrics: Metrics) -> None:
    """observe returns at once with no worker running, and counts what the full queue drops."""
    monitor = DriftMonitor(metrics, queue_max=3)
    monitor.set_reference("t", "t", reference(), window_s=60)
    for _ in range(5):
        monitor.observe("t", user("hello"))
    monitor.observe("unmonitored", user("hello"))  # ignored, not dropped
    assert metrics.registry.get_sample_value("protege_drift_dropped_total") == 2
    monitor.stop()


def test_observe_profiles_at_most_max_rate_prompts_per_second(metrics: Metrics) -> None:
    """Beyond max_rate prompts of a task in one second, the rest are sampled out (not queued,
    not counted as dropped); the next second takes more again."""
    now = [100.0]
    monitor = DriftMonitor(metrics, queue_max=1000, clock=lambda: now[0], max_rate=5)
    monitor.set_reference("t", "t", reference(), window_s=60)
    monitor.start()
    for _ in range(8):
        monitor.observe("t", user("hello"))
    now[0] = 101.2
    for _ in range(3):
        monitor.observe("t", user("hello"))
    monitor.flush(timeout=10)
    monitor.stop()
    assert metrics.registry.get_sample_value("protege_drift_profiled_total") == 8
    assert metrics.registry.get_sample_value("protege_drift_dropped_total") == 0


def test_worker_logs_errors_and_keeps_going(
    monitor: DriftMonitor, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt that fails to profile is logged at error level; later prompts still count."""
    monitor.set_reference("t", "t", reference(), window_s=60)

    def text_or_fail(messages: Any) -> str:
        if messages == "unreadable":
            raise ValueError("cannot profile this")
        return prompt_text(messages)

    monkeypatch.setattr(gateway.drift, "prompt_text", text_or_fail)
    with capture_logs() as logs:
        monitor.observe("t", "unreadable")
        feed(monitor, "t", ["fine"])
    failures = [e for e in logs if e["event"] == "drift_profile_failed"]
    assert [e["log_level"] for e in failures] == ["error"]
    assert metrics.registry.get_sample_value("protege_drift_profiled_total") == 1


def test_stop_is_idempotent_and_safe_unstarted(metrics: Metrics) -> None:
    """stop may be called on a monitor never started, and again."""
    monitor = DriftMonitor(metrics, queue_max=10)
    monitor.stop()
    monitor.stop()


def test_flush_needs_a_started_monitor(metrics: Metrics) -> None:
    """flush on a monitor without a worker raises rather than waiting in vain."""
    with pytest.raises(RuntimeError, match="started"):
        DriftMonitor(metrics, queue_max=10).flush(timeout=1)


def test_start_after_stop_raises(metrics: Metrics) -> None:
    """A stopped monitor does not start again."""
    monitor = DriftMonitor(metrics, queue_max=10)
    monitor.stop()
    with pytest.raises(RuntimeError, match="once"):
        monitor.start()


# Routing checks and manifests


def _reference_of_texts(*texts: str) -> Profile:
    return Profile.of(texts)


@pytest.mark.parametrize(
    ("text", "max_chars", "expected"),
    [
        ("reset my password please", None, None),
        ("reset my password please", 10, "too_long"),
        ("reset my password please", 24, None),
        ("x" * 200, None, "too_long"),  # length bin past the reference's longest (<32 chars)
        ("x" * 200, 1000, None),  # max_chars, when set, decides alone
        ("пожалуйста помогите", None, "charset"),
        ("пожалуйста помогите", 1000, "charset"),
        ("reset пароль password please", None, None),  # letters still dominate
        ("", None, None),
    ],
)
def test_out_of_bounds(text: str, max_chars: int | None, expected: str | None) -> None:
    """Too long for the reference or max_chars, or written in a script it (almost) lacks."""
    ref = _reference_of_texts("reset my password", "where is my order 42", "change my address")
    assert out_of_bounds(text, ref, max_chars) == expected


def test_out_of_bounds_with_empty_reference() -> None:
    """A reference with no texts rules nothing out."""
    assert out_of_bounds("пожалуйста" * 1000, Profile(), None) is None


@pytest.mark.parametrize("chars", [0, 1, 15, 16, 31, 32, 1000, 32767, 32768, 100_000])
def test_length_bin_matches_profile(chars: int) -> None:
    """out_of_bounds bins a length exactly as Profile does."""
    profile = Profile.of(["a" * chars])
    assert profile.counts["length"][length_bin(chars)] == 1


@pytest.mark.parametrize(
    ("text", "charset"),
    [
        ("hello world", "letters"),
        ("12345 678", "digits"),
        ("?! ... ,,", "punct"),
        ("   \t\n ab", "space"),
        ("пароль", "cyrillic"),
        ("日本語", "cjk"),
        ("😀😀😀 ok", "other"),
    ],
)
def test_dominant_charset(text: str, charset: str) -> None:
    """The dominant class uses Profile's classes, on long texts too (sampled)."""
    assert CHARSETS[dominant_charset(text)] == charset
    assert CHARSETS[dominant_charset(text * 500)] == charset


def _manifest(profile: Any) -> dict[str, Any]:
    return {"task": "t", "input_profile": profile}


def test_reference_of_round_trips() -> None:
    """A manifest's input_profile comes back as the profile that was published."""
    assert reference_of(_manifest(reference().to_dict())) == reference()


def test_reference_of_missing() -> None:
    """A manifest without input_profile has no reference."""
    assert reference_of({"task": "t"}) is None


def _with(**changes: Any) -> dict[str, Any]:
    data = Profile.of(["a b"]).to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "profile",
    [
        [1, 2, 3],
        {"version": 2, "n": 1, "counts": {}},
        _with(counts={"length": [0.0] * 12}),
        _with(counts={"length": [0.0] * 3, "charset": [0.0] * 12, "tokens": [0.0] * 256}),
        _with(counts={"length": [-1.0] * 12, "charset": [0.0] * 12, "tokens": [0.0] * 256}),
        _with(counts={"length": ["x"] * 12, "charset": [0.0] * 12, "tokens": [0.0] * 256}),
        _with(n="many"),
    ],
)
def test_reference_of_malformed(profile: Any) -> None:
    """A malformed input_profile raises ValueError naming it."""
    with pytest.raises(ValueError, match="input_profile"):
        reference_of(_manifest(profile))
