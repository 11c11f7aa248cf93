"""The ledger's modules import each other without a cycle, type-only imports included (issue 12:
sql_apply -> sql_recharge -> sql_ledger -> sql_apply)."""

from __future__ import annotations

import ast
from pathlib import Path

LEDGER = Path(__file__).resolve().parents[2] / "src" / "tally" / "ledger"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "tally.ledger":
                found |= {f"tally.ledger.{a.name}" for a in node.names}
            elif node.module.startswith("tally.ledger."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tally.ledger.")}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])) is not None:
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])) is not None:
            return found
    return None


def test_the_ledger_modules_import_each_other_without_a_cycle() -> None:
    graph = {f"tally.ledger.{p.stem}": imports_of(p) for p in LEDGER.glob("*.py")}
    assert cycle(graph) is None


def test_the_check_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
