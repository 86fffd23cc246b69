"""The packages' import rules, read from the code (every import, function-level ones included):

- `shared/` imports nothing upstream (`backfill`, `live`, `streams`, `embedder`); inside it, `contract/`
  imports neither `store/` nor `broker/`;
- `backfill/` (bulk work) imports nothing from `live/`; `live/` takes from `backfill/` only the bulk
  paths it builds on (recompute, verify, a run's selection);
- no cycle between packages (`shared`'s three kinds and its top counted apart).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "backfill", "live", "streams", "embedder", "prometheus")
SHARED_KINDS = ("contract", "store", "broker")
LIVE_MAY_USE_FROM_BACKFILL = {"backfill.recompute", "backfill.verify", "backfill.selection"}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] == "shared" and len(parts) > 2 and parts[1] in SHARED_KINDS:
        return f"shared.{parts[1]}"
    return parts[0]


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of a project module."""
    found = []
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            me = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.append((me, node.module))
                elif isinstance(node, ast.Import):
                    found.extend((me, alias.name) for alias in node.names)
    return [(a, b) for a, b in found if package_of(b)]


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in imports():
        pa, pb = package_of(a), package_of(b)
        if pa and pb and pa != pb:
            graph[pa].add(pb)
    return graph


def test_shared_imports_nothing_upstream_and_the_contract_stands_alone():
    upstream = ("backfill", "live", "streams", "embedder", "prometheus")
    bad = [(a, b) for a, b in imports() if a.startswith("shared.") and b.split(".")[0] in upstream]
    bad += [(a, b) for a, b in imports() if a.startswith("shared.contract.") and package_of(b) != "shared.contract"
            and b.startswith("shared.")]  # fmt: skip
    assert bad == []


def test_bulk_work_and_the_live_service_keep_apart():
    assert [(a, b) for a, b in imports() if a.startswith("backfill.") and b.startswith("live")] == []
    used = {b for a, b in imports() if a.startswith("live.") and b.startswith("backfill")}
    assert used <= LIVE_MAY_USE_FROM_BACKFILL, sorted(used - LIVE_MAY_USE_FROM_BACKFILL)


def test_no_cycle_between_packages():
    graph = edges()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert sorted(p for p in list(graph) if reaches(p, p, {p})) == []
