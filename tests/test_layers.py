"""The packages' layers: which package may import which, read from every import in the tree.

    protege ──► gateway, sidecar, trainer.serve ──► trainer ──► core
                gateway ──► core      sidecar ──► core

``core`` imports no other package of ours; ``gateway``, ``sidecar`` and ``trainer`` import
``core`` and never each other; ``trainer.serve`` may import ``trainer`` (not the reverse);
``protege`` (the command line and the demo) may import all of them; nothing imports
``loadtests``. Imports inside functions count like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVED = ("core", "gateway", "sidecar", "trainer", "trainer.serve", "protege")
ALLOWED: Mapping[str, frozenset[str]] = {
    "core": frozenset(),
    "gateway": frozenset({"core"}),
    "sidecar": frozenset({"core"}),
    "trainer": frozenset({"core"}),
    "trainer.serve": frozenset({"core", "trainer"}),
    "protege": frozenset({"core", "gateway", "sidecar", "trainer", "trainer.serve"}),
    "tests": frozenset(SERVED),
    "loadtests": frozenset({*SERVED, "tests"}),
}
Arrow = tuple[str, str, str]  # (importing package, imported package, where)


def package_of(module: str) -> str | None:
    """The layer a dotted module name belongs to; None for modules not of this project."""
    parts = module.split(".")
    if parts[0] not in ALLOWED:
        return None
    return "trainer.serve" if parts[:2] == ["trainer", "serve"] else parts[0]


def imported(tree: ast.AST) -> Iterable[tuple[str, int]]:
    """``(module, line)`` of every absolute import in ``tree``, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("trainer", "gateway", "sidecar", "core", "protege"):
                # ``from trainer import serve`` imports trainer.serve
                yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)
            else:
                yield node.module, node.lineno


def arrows(sources: Mapping[str, str]) -> list[Arrow]:
    """The arrows between packages in ``sources`` (path relative to the root -> its text)."""
    out = []
    for path, text in sorted(sources.items()):
        source = package_of(path.removesuffix(".py").replace("/", "."))
        if source is None:
            continue
        for module, line in imported(ast.parse(text, path)):
            target = package_of(module)
            if target is not None and target != source:
                out.append((source, target, f"{path}:{line} imports {module}"))
    return out


def violations(found: Iterable[Arrow]) -> list[str]:
    """Every arrow the layers forbid, then any cycle between packages."""
    found = list(found)
    bad = [where for source, target, where in found if target not in ALLOWED[source]]
    graph: dict[str, set[str]] = {}
    for source, target, _ in found:
        graph.setdefault(source, set()).add(target)
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        bad.append(f"packages import each other: {' -> '.join(exc.args[1])}")
    return bad


def tree_sources() -> dict[str, str]:
    out = {}
    for top in ALLOWED:
        for path in (ROOT / top).rglob("*.py"):
            out[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return out


def test_the_tree_keeps_its_layers() -> None:
    """No import in the source tree crosses a layer the wrong way, and no package cycle exists."""
    sources = tree_sources()
    assert {"core/record.py", "gateway/app.py", "sidecar/ship.py"} <= sources.keys()
    found = arrows(sources)
    assert ("sidecar", "core", "sidecar/ship.py") in {(s, t, w.split(":")[0]) for s, t, w in found}
    assert violations(found) == []


@pytest.mark.parametrize(
    ("path", "text", "named"),
    [
        ("gateway/spool.py", "from sidecar.ship import Shipper\n", "gateway/spool.py:1"),
        ("sidecar/ship.py", "def f():\n    import gateway.app\n", "sidecar/ship.py:2"),
        ("core/store.py", "from trainer import publish\n", "core/store.py:1"),
        ("trainer/dataset.py", "from gateway.errors import ApiError\n", "trainer/dataset.py:1"),
        ("trainer/loop.py", "from trainer.serve import engine\n", "trainer/loop.py:1"),
        ("protege/cli.py", "import loadtests.procs\n", "protege/cli.py:1"),
        ("tests/test_x.py", "from loadtests import report\n", "tests/test_x.py:1"),
    ],
)
def test_a_forbidden_arrow_is_named(path: str, text: str, named: str) -> None:
    """Each kind of forbidden import is reported with its file and line."""
    bad = violations(arrows({path: text}))
    assert bad and bad[0].startswith(named)


def test_a_cycle_between_packages_is_reported() -> None:
    """gateway ⇄ sidecar is reported as a cycle as well as two forbidden arrows."""
    bad = violations(
        arrows({"gateway/a.py": "import sidecar.b\n", "sidecar/b.py": "import gateway.a\n"})
    )
    assert len(bad) == 3 and "import each other" in bad[-1]


def test_allowed_arrows_pass() -> None:
    """The arrows the layers allow are not reported."""
    sources = {
        "trainer/serve/app.py": "from trainer.publish import x\nfrom core.store import y\n",
        "protege/cli.py": "from gateway.app import a\nfrom trainer.serve import b\n",
        "loadtests/run.py": "from tests.s3_server import S3Server\n",
    }
    assert violations(arrows(sources)) == []
