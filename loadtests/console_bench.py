"""How fast the console's catalog answers on a big store (``console_store.py``: 1M exchanges).

Each query: its cold first call (on a fresh ``Catalog``: the first one also lists the store),
then the median of 5 after that warm-up. Targets: first page < 1 s, filtered page < 1 s, text
search < 3 s. Also, as a baseline of the same run: a whole-store search for a word in no row
(every prompt and answer read) and a plain pyarrow scan of the ``request`` and ``response``
columns (what any full text scan must at least decode), after the process's peak RSS.

    .venv/bin/python loadtests/console_bench.py [--dir loadtests/results/console-store]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.read import iter_exchanges
from loadtests.console_store import DEFAULT_DIR, END, RARE_WORD, TASKS, ensure_store
from protege.console.queries import Catalog, ExchangeFilter

TARGETS = {"first page": 1.0, "filtered page": 1.0, "text search": 3.0}


def timed(call: Callable[[], Any], runs: int = 5) -> tuple[float, float, Any]:
    """(cold first call, median of ``runs`` after it, the last answer), in seconds."""
    started = time.perf_counter()
    answer = call()
    cold = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - started)
    return cold, statistics.median(times), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    uri = f"file://{ensure_store(args.dir)}"
    catalog = Catalog(uri)
    task = TASKS[0]
    first_id: list[str] = []

    def first() -> Any:
        page = catalog.exchanges(ExchangeFilter())
        first_id[:] = [page.rows[7].request_id]
        return page

    week = (END - timedelta(days=7), END)
    queries: list[tuple[str, Callable[[], Any]]] = [
        ("first page", first),
        ("filtered page", lambda: catalog.exchanges(ExchangeFilter(
            task=task, route="shadow", since=END - timedelta(days=5),
            until=END - timedelta(days=2)))),
        ("text search", lambda: catalog.exchanges(ExchangeFilter(text=RARE_WORD.capitalize()))),
        ("worst disagreements, 7 days", lambda: catalog.disagreements(task, *week)),
        ("one exchange by id", lambda: catalog.exchange(first_id[0])),
        ("a task's 30 days", lambda: catalog.days(task, (END - timedelta(days=30)).date(),
                                                  END.date())),
        ("text search, no match (whole store)",
         lambda: catalog.exchanges(ExchangeFilter(text="qqxqq"))),
    ]  # fmt: skip
    print(f"store {uri}\n")
    print(f"| query | cold s | median s | rows | target | result |\n|{' --- |' * 6}")
    for name, call in queries:
        cold, median, answer = timed(call)
        target = TARGETS.get(name)
        verdict = "" if target is None else ("PASS" if max(cold, median) < target else "FAIL")
        rows = len(answer.rows) if hasattr(answer, "rows") else len(answer or [])
        limit = f"< {target:g} s" if target else ""
        print(f"| {name} | {cold:.3f} | {median:.3f} | {rows} | {limit} | {verdict} |",
              flush=True)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the queries: {peak:.0f} MiB")
    started = time.perf_counter()
    for _ in iter_exchanges(uri, columns=["request", "response"]):
        pass
    print(f"baseline: pyarrow scan of request+response, whole store: "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
