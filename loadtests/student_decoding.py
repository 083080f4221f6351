"""The student under clients that set no temperature: before and after the decoding policy and
the learned output schema, in one run.

    python loadtests/student_decoding.py [--out DIR] [--requests 200] [--train-requests 200]
        [--store URI --adapter TASK/VERSION]

The demo task's adapter is trained and published as a user would (``protege demo``, the stages
after ``publish`` skipped), unless ``--store``/``--adapter`` name one already published. Then
the demo teacher, ``protege student`` (the real SmolLM2) and one gateway start; the gateway has
one alias per arm, all routed to the task in ``student`` mode on that adapter:

    as sampled     ``student_decoding: {published: false}``: the student gets what the client
                   sent, so it samples at LoRAX's default temperature of 1
    policy         the published decoding policy, not the schema (``output_schema: false``)
    policy+schema  everything published (the default)
    temperature 0  as sampled, but the client sends ``temperature: 0`` (the reference)

The same ``--requests`` fresh tickets go to each arm through the ``openai`` client, as the demo
application sends them (``max_tokens`` 32, no ``temperature``). Per arm: exact match with the
teacher's answer (the demo teacher is always right), the share of invalid answers (not a JSON
object of the teacher's keys and values: an invented category, an extra key, not JSON), who
answered (``x-protege-backend``), and the ``detail.decoding`` the gateway applied. Prints one
table, writes ``DIR/results.json``; exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protege.demo import TASK  # noqa: E402
from protege.demo_procs import Children, child_env, free_port  # noqa: E402
from trainer import synthetic  # noqa: E402

DEMO_SKIP: Final = "student,shadow,canary,full"
MAX_TOKENS: Final = 32  # as the demo application sends
CONCURRENCY: Final = 8
READY_S: Final = 300.0
# arm -> (alias, the route's student_decoding, what the client adds to its request)
ARMS: Final[dict[str, tuple[str, dict[str, Any] | None, dict[str, Any]]]] = {
    "as sampled": ("as-sampled", {"published": False}, {}),
    "policy": ("policy", {"output_schema": False}, {}),
    "policy+schema": ("policy-schema", None, {}),
    "temperature 0": ("as-sampled", {"published": False}, {"temperature": 0}),
}


@dataclass
class Arm:
    name: str
    requests: int = 0
    exact: int = 0
    invalid: int = 0
    failed: int = 0
    student: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few invalid answers, as sent

    def row(self) -> list[str]:
        n = max(self.requests, 1)
        return [
            self.name, str(self.requests), f"{self.exact / n:.1%}", f"{self.invalid / n:.1%}",
            str(self.failed), f"{self.student}/{self.requests}", f"{self.seconds:.1f}",
        ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".protege/student-decoding"))
    p.add_argument("--requests", type=int, default=200, help="tickets per arm")
    p.add_argument("--train-requests", type=int, default=200, help="the demo's training data")
    p.add_argument("--store", help="a store with a published adapter of the demo task")
    p.add_argument("--adapter", help="<task>/<version> in --store (default: train one now)")
    p.add_argument("--seed", type=int, default=11, help="seeds the fresh tickets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    children = Children(args.out / "logs", child_env())
    try:
        store, adapter = _published(args, children)
        print(f"adapter {adapter} in {store}")
        manifest = _manifest(store, adapter)
        policy = {k: v for k, v in manifest["decoding"].items() if k != "basis"}
        print(f"published decoding: {policy}")
        print(f"published output schema: {json.dumps(manifest['output_schema'])}")
        gateway = _serve(args, children, store, adapter)
        tickets = _tickets(args.requests, args.seed)
        arms = [_run_arm(name, gateway, tickets) for name in ARMS]
    finally:
        children.stop_all()  # the gateway ships every record on its way out
    decoding = _applied(store)
    _print(arms, decoding)
    results = {"adapter": adapter, "requests": args.requests, "arms": [asdict(a) for a in arms],
               "applied": decoding, "decoding": manifest["decoding"],
               "output_schema": manifest["output_schema"]}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / 'results.json'}")
    return 0


def _published(args: argparse.Namespace, children: Children) -> tuple[str, str]:
    """The store and the adapter: given, or trained and published by the demo now."""
    if args.store and args.adapter:
        return args.store, args.adapter
    work = args.out / "demo"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    code = children.run(
        "demo",
        ["protege.cli", "demo", "--workdir", str(work), "--requests", str(args.train_requests),
         "--skip", DEMO_SKIP, "--device", "cpu"],
        print,
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"protege demo exited with {code}")
    print(f"demo: traffic, training and publication in {time.monotonic() - started:.0f} s")
    store = f"file://{work.resolve() / 'store'}"
    versions = sorted(p.name for p in (work / "store" / "adapters" / TASK).iterdir())
    return store, f"{TASK}/{versions[-1]}"


def _manifest(store: str, adapter: str) -> dict[str, Any]:
    path = Path(store.removeprefix("file://")) / "adapters" / adapter / "protege.json"
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def _serve(args: argparse.Namespace, children: Children, store: str, adapter: str) -> str:
    """Teacher, student and gateway running; the gateway's URL."""
    ports = {name: free_port() for name in ("teacher", "student", "gateway", "sidecar")}
    children.start("teacher", ["protege.demo_teacher", "--port", str(ports["teacher"])])
    children.start("student", ["protege.cli", "student", "--store", store, "--device", "cpu",
                               "--port", str(ports["student"])])  # fmt: skip
    config = _config(args.out, store, adapter, ports)
    path = args.out / "protege.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    children.start("gateway", ["protege.cli", "up", "--config", str(path)])
    teacher, student = (f"http://127.0.0.1:{ports[k]}" for k in ("teacher", "student"))
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    children.wait_ready("teacher", f"{teacher}/health", READY_S)
    children.wait_ready("student", f"{student}/health", READY_S)
    children.wait_ready("gateway", f"{gateway}/readyz", READY_S)
    return gateway


def _config(out: Path, store: str, adapter: str, ports: dict[str, int]) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    for alias, decoding, _ in ARMS.values():
        if any(r["alias"] == alias for r in routes):
            continue
        route: dict[str, Any] = {"alias": alias, "task": TASK}
        if decoding is not None:
            route["student_decoding"] = decoding
        if not routes:
            route["rollout"] = {"mode": "student", "adapter": adapter,
                                "guardrails": {"enabled": False}}  # fmt: skip
        routes.append(route)
    spool = out / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    return {
        "teacher": {"base_url": f"http://127.0.0.1:{ports['teacher']}"},
        "student": {"base_url": f"http://127.0.0.1:{ports['student']}/v1",
                    "connect_timeout_s": 2, "read_timeout_s": 300},
        "routes": routes,
        "store": store,
        "spool": {"dir": str(spool), "segment_max_age_s": 1},
        "server": {"host": "127.0.0.1", "port": ports["gateway"]},
        "rollouts": {"sync_interval_s": 2},
        "sidecar": {"poll_interval_s": 0.25, "metrics_port": ports["sidecar"],
                    "compaction": {"enabled": False}},
    }  # fmt: skip


def _tickets(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [synthetic.ticket(rng)[0] for _ in range(n)]


def _run_arm(name: str, gateway: str, tickets: list[str]) -> Arm:
    import openai

    alias, _, extra = ARMS[name]
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="bench", max_retries=0,
                           timeout=300.0)  # fmt: skip
    arm = Arm(name)
    started = time.monotonic()

    def one(text: str) -> tuple[str | None, str | None]:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=alias, messages=synthetic.messages(text),  # type: ignore[arg-type]
                max_tokens=MAX_TOKENS, user=f"user{hash(text) % 60}", **extra,
            )  # fmt: skip
        except openai.OpenAIError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return raw.parse().choices[0].message.content or "", raw.headers.get("x-protege-backend")

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for text, (answer, backend) in zip(tickets, pool.map(one, tickets), strict=True):
            arm.requests += 1
            if answer is None:
                arm.failed += 1
                continue
            arm.student += backend == "student"
            expected = json.loads(synthetic.teacher_answer(text))
            value = _parsed(answer)
            arm.exact += value == expected
            if not _valid(value):
                arm.invalid += 1
                if len(arm.examples) < 5:
                    arm.examples.append(answer)
    arm.seconds = time.monotonic() - started
    print(f"{name}: {arm.exact}/{arm.requests} exact, {arm.invalid} invalid, "
          f"{arm.failed} failed, {arm.seconds:.1f} s")  # fmt: skip
    return arm


def _parsed(answer: str) -> Any:
    try:
        return json.loads(answer)
    except json.JSONDecodeError:
        return None


def _valid(value: Any) -> bool:
    """A JSON object of the teacher's keys with one of the teacher's values."""
    return (
        isinstance(value, dict)
        and set(value) == {"category"}
        and value["category"] in synthetic.CATEGORIES
    )


def _applied(store: str) -> dict[str, int]:
    """How often each ``detail.decoding`` was applied, over the student records shipped."""
    from core.read import read_exchanges

    counts: dict[str, int] = {}
    table = read_exchanges(store, task=TASK, columns=["backend", "detail"])
    for record in table.to_pylist():
        if record["backend"] != "student":
            continue
        detail = json.loads(record["detail"] or "{}")
        key = json.dumps(detail.get("decoding"), sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _print(arms: list[Arm], applied: dict[str, int]) -> None:
    header = ["arm", "requests", "exact match", "invalid", "failed", "student", "seconds"]
    rows = [header, *(a.row() for a in arms)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for arm in arms:
        for example in arm.examples:
            print(f"  invalid ({arm.name}): {example!r}")
    print("detail.decoding on the stored student records:")
    for key, count in sorted(applied.items(), key=lambda kv: -kv[1]):
        print(f"  {count:5d}  {key}")


if __name__ == "__main__":
    sys.exit(main())
