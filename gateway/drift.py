"""Input drift: live prompt profiles per task, compared with the adapter's reference profile.

The trainer publishes the profile of an adapter's training prompts as ``input_profile`` in its
``protege.json`` (``reference_of`` reads it). ``DriftMonitor`` keeps a windowed live profile per
task and exports PSI and JS per feature as ``protege_input_drift``:

    event loop    observe(task, messages): a deque append, O(1), never blocks; dropped and
                  counted when the worker is behind
    worker        prompt_text + Profile.add into the task's WindowedProfile; every interval_s
                  drift(reference, live) per task -> gauges and score
    event loop    score(task): a dict and attribute read, for hybrid routing

``out_of_bounds`` is the cheap per-request check hybrid routing makes on one prompt before it
asks the student: longer than anything trained on, or written in a script the training prompts
(almost) never used.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from core.profile import (
    _CLASS_CHARS,
    _TABLE,
    CHARSETS,
    FEATURES,
    LENGTH_BINS,
    TOKEN_BINS,
    Profile,
    drift,
)
from core.text import prompt_text
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBucket
from gateway.window import BUCKETS, Buckets

log = structlog.get_logger("gateway")

MEASURES: Final = ("psi", "js")
CHARSET_FLOOR: Final = 0.005  # a script under this share of the reference's characters is rare
_SAMPLE_CHARS: Final = 256  # out_of_bounds classifies at most this many evenly spaced characters
_MAX_BATCH: Final = 1024  # prompts profiled between two looks at the recompute deadline
_DROP_LOG_S: Final = 60.0  # at most one warning about dropped prompts per minute
_BINS: Final = {"length": LENGTH_BINS, "charset": len(CHARSETS), "tokens": TOKEN_BINS}


def merge(profiles: Iterable[Profile]) -> Profile:
    """One profile holding the bin counts and texts of all ``profiles``."""
    out = Profile()
    for profile in profiles:
        for feature, bins in profile.counts.items():
            out.counts[feature] = [a + b for a, b in zip(out.counts[feature], bins, strict=True)]
        out.n += profile.n
    return out


class WindowedProfile:
    """The profile of the texts added in the last ``window_s`` seconds (see ``gateway.window``).
    One thread owns an instance."""

    def __init__(self, window_s: float, buckets: int = BUCKETS) -> None:
        self._buckets = Buckets(window_s, Profile, buckets)

    def add(self, text: str, now: float) -> None:
        self._buckets.current(now).add(text)

    def _live(self, now: float) -> list[Profile]:
        return self._buckets.live(now)

    def profile(self, now: float) -> Profile:
        """The texts of the live buckets, merged into one profile."""
        return merge(self._live(now))

    def n(self, now: float) -> int:
        """How many texts the live buckets hold."""
        return sum(p.n for p in self._live(now))


def score_of(scores: Mapping[str, Mapping[str, float]]) -> float:
    """The one number routing compares with its threshold: the worst measure of any feature."""
    return max(max(measures.values()) for measures in scores.values())


@dataclass(eq=False)
class _Task:
    """One task's monitoring state; replaced whole when its reference changes."""

    label: str
    reference: Profile
    window: WindowedProfile
    score: float | None = None
    exported: bool = False  # whether its gauges are set
    sampled: TokenBucket | None = None  # the prompts profiled (at most max_rate a second)


class DriftMonitor:
    """Live input profiles per task, kept on one worker thread; drift exported as gauges.

    ``observe`` and ``score`` are what the event loop calls per request: both are O(1) and never
    wait on the worker (the monitor's lock guards only reference changes and gauge updates, and
    ``observe`` sets the worker's wake-up event at most once per pass of the worker). Prompts are
    profiled off the loop; drift is recomputed at most every ``interval_s``
    (and on ``flush``). A task's score and gauges exist once its live window holds
    ``min_samples`` prompts, and go away while it holds fewer: below about 200 prompts PSI
    reads sampling noise as drift (a window of 30 same-distribution prompts scores ~0.15).

    At most ``max_rate`` prompts per task per second are profiled (a token bucket; None: all of
    them): a window needs a few hundred prompts, not every request (20 a second fill a 5-minute
    window with 6,000), and profiling costs ~150 µs per KB of prompt on a thread that shares the
    interpreter with the event loop: at 50 a second, 1 to 2 % of a loaded gateway's CPU for
    1 KB prompts.
    """

    def __init__(
        self,
        metrics: Metrics,
        queue_max: int,
        interval_s: float = 5.0,
        min_samples: int = 200,
        clock: Callable[[], float] = time.monotonic,
        max_rate: float | None = 20,
    ) -> None:
        if queue_max < 1 or interval_s <= 0 or min_samples < 1:
            raise ValueError(
                "queue_max and min_samples must be >= 1 and interval_s > 0, got "
                f"{queue_max}, {min_samples}, {interval_s}"
            )
        self._metrics = metrics
        self._queue_max = queue_max
        self._interval_s = interval_s
        self._min_samples = min_samples
        self._clock = clock
        self._max_rate = max_rate
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[tuple[_Task, Any] | threading.Event] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # task map changes against gauge updates; never per request
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next_recompute = -math.inf
        self._drops = self._drops_logged = 0
        self._next_drop_log = -math.inf

    # Called on the event loop.

    def observe(self, task: str, messages: Any) -> None:
        """Queues the request's messages for the task's live profile; never blocks."""
        state = self._tasks.get(task)
        if state is None:
            return
        if state.sampled is not None and not state.sampled.take(self._clock()):
            return  # sampled out: the window has enough of this second's prompts
        if len(self._queue) >= self._queue_max:
            self._drops += 1
            self._metrics.drift_dropped.inc()
            return
        self._queue.append((state, messages))
        if not self._wake.is_set():
            self._wake.set()

    def score(self, task: str) -> float | None:
        """The task's latest drift score; None without a reference or with too few prompts."""
        state = self._tasks.get(task)
        return None if state is None else state.score

    def set_reference(
        self, task: str, label: str, reference: Profile | None, window_s: float
    ) -> None:
        """Monitors ``task`` against ``reference`` from an empty window (None: stops it)."""
        new = None
        if reference is not None:
            new = _Task(label, reference, WindowedProfile(window_s))
            if self._max_rate is not None:
                new.sampled = TokenBucket(self._max_rate, self._clock())
        with self._lock:
            old = self._tasks.pop(task, None)
            if new is not None:
                self._tasks[task] = new
            if old is not None and old.exported:
                old.exported = False
                self._unexport(old.label)

    # Lifecycle.

    def start(self) -> None:
        if self._thread is not None or self._stopping:
            raise RuntimeError("DriftMonitor.start() may be called once, before stop()")
        self._thread = threading.Thread(target=self._run, name="protege-drift", daemon=False)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the worker (prompts still queued are left out) and joins it. Idempotent."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("drift_stop_timed_out", timeout_s=timeout)

    def flush(self, timeout: float) -> None:
        """Waits until every prompt queued so far is profiled and drift recomputed.

        Blocks the calling thread (off the event loop: ``asyncio.to_thread``); raises
        TimeoutError when the worker has not caught up within ``timeout`` seconds.
        """
        if self._thread is None or self._stopping:
            raise RuntimeError("DriftMonitor.flush() needs a started monitor, not yet stopped")
        done = threading.Event()
        self._queue.append(done)  # a marker, exempt from queue_max
        self._wake.set()
        if not done.wait(timeout):
            raise TimeoutError(f"drift monitor still behind after {timeout} s")

    # Everything below runs on the worker thread, except _unexport (under the lock).

    def _run(self) -> None:
        while True:
            self._wake.wait(max(0.0, self._next_recompute - self._clock()))
            self._wake.clear()
            if self._stopping:
                return
            self._guarded(self._drain)
            if self._clock() >= self._next_recompute:
                self._guarded(self._recompute)
            self._guarded(self._log_drops)
            if self._queue:
                self._wake.set()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            log.exception("drift_worker_step_failed", step=step.__name__)

    def _drain(self) -> None:
        profiled, flushes = 0, []
        for _ in range(min(len(self._queue), _MAX_BATCH)):
            item = self._queue.popleft()
            if isinstance(item, threading.Event):
                flushes.append(item)
                continue
            state, messages = item
            try:
                state.window.add(prompt_text(messages), self._clock())
            except Exception:
                log.exception("drift_profile_failed", task=state.label)
            else:
                profiled += 1
        if profiled:
            self._metrics.drift_profiled.inc(profiled)
        if flushes:
            self._recompute()
            for done in flushes:
                done.set()

    def _recompute(self) -> None:
        now = self._clock()
        self._next_recompute = now + self._interval_s
        with self._lock:
            tasks = list(self._tasks.items())
        for task, state in tasks:
            try:
                live = state.window.profile(now)
                scores = drift(state.reference, live) if live.n >= self._min_samples else None
                self._publish(task, state, scores)
            except Exception:
                log.exception("drift_recompute_failed", task=state.label)

    def _publish(self, task: str, state: _Task, scores: dict[str, dict[str, float]] | None) -> None:
        with self._lock:
            if self._tasks.get(task) is not state:  # its reference changed meanwhile
                return
            if scores is None:
                state.score = None
                if state.exported:
                    state.exported = False
                    self._unexport(state.label)
                return
            for feature, measures in scores.items():
                for measure, value in measures.items():
                    self._metrics.drift.labels(state.label, feature, measure).set(value)
            state.exported = True
            state.score = score_of(scores)

    def _unexport(self, label: str) -> None:
        """Removes the label's gauges unless another task with that label still sets them."""
        if any(s.exported and s.label == label for s in self._tasks.values()):
            return
        for feature in FEATURES:
            for measure in MEASURES:
                self._metrics.drift.remove(label, feature, measure)

    def _log_drops(self) -> None:
        dropped = self._drops - self._drops_logged
        if dropped and (now := self._clock()) >= self._next_drop_log:
            log.warning("drift_prompts_dropped", dropped=dropped, queue_max=self._queue_max)
            self._drops_logged += dropped
            self._next_drop_log = now + _DROP_LOG_S


def reference_of(manifest: Mapping[str, Any]) -> Profile | None:
    """The reference profile an adapter's ``protege.json`` carries; None when it has none."""
    data = manifest.get("input_profile")
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(f"input_profile must be an object, got {type(data).__name__}")
    try:
        profile = Profile.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"input_profile is malformed: {exc!r}") from exc
    for feature, size in _BINS.items():
        bins = profile.counts[feature]
        if len(bins) != size or not all(b >= 0 and math.isfinite(b) for b in bins):
            raise ValueError(
                f"input_profile.counts.{feature} must hold {size} finite counts >= 0, "
                f"got {len(bins)} counts, min {min(bins, default=0)}"
            )
    return profile


def length_bin(chars: int) -> int:
    """The length bin ``Profile`` counts a text of ``chars`` characters in."""
    return min(LENGTH_BINS - 1, max(0, chars.bit_length() - 4))


def dominant_charset(text: str) -> int:
    """Index in ``CHARSETS`` of the most frequent class among up to 256 evenly spaced chars."""
    step = max(1, -(-len(text) // _SAMPLE_CHARS))
    sample = text[::step]
    marked = sample.translate(_TABLE)
    # ASCII holds only letters, digits, space and punctuation: the rest of it is punctuation
    counts = [marked.count(m) for m in (_CLASS_CHARS[:3] if sample.isascii() else _CLASS_CHARS)]
    counts.append(len(marked) - sum(counts))
    return counts.index(max(counts))


def out_of_bounds(text: str, reference: Profile, max_chars: int | None) -> str | None:
    """Why the student should not see ``text`` ("too_long", "charset"), or None.

    "too_long": over ``max_chars``, or, without it, in a length bin past the reference's last
    non-empty one. "charset": the text's dominant character class holds under 0.5 % of the
    reference's charset mass. An empty reference (or feature) rules nothing out.
    """
    if max_chars is not None:
        if len(text) > max_chars:
            return "too_long"
    else:
        filled = [i for i, c in enumerate(reference.counts["length"]) if c > 0]
        if filled and length_bin(len(text)) > filled[-1]:
            return "too_long"
    charset = reference.counts["charset"]
    total = sum(charset)
    if text and total > 0 and charset[dominant_charset(text)] < CHARSET_FLOOR * total:
        return "charset"
    return None
