"""One composition root for the recharge machinery (issue 12): ``tally serve``, the CLI and the
lab build saga, completer, gate, circuit and health probe through ``tally.bootstrap.recharging``,
and no other module constructs them (a second wiring is how serve's probe stopped following
Sentinel while the lab's private one did)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tally"
ROOT_MODULE = SRC / "bootstrap.py"
RECHARGE_PACKAGE = SRC / "billing" / "recharge"
#: Constructing any of these is wiring recharge machinery.
WIRING = {"RechargeSaga", "Completer", "Gate", "RedisHealth", "FollowingHealth", "ClusterHealth"}
USERS = {
    "serve": SRC / "service" / "runner.py",
    "cli": SRC / "cli" / "recharge_cmd.py",
}


def _called_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                base = func.value.id if isinstance(func.value, ast.Name) else ""
                names.add(f"{base}.{func.attr}" if func.attr == "build" else func.attr)
    return names


def wiring_outside_the_root(src: Path) -> dict[str, set[str]]:
    """module -> the wiring it constructs itself, for every module but the root and the
    recharge package (which defines the parts)."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        if path == ROOT_MODULE or RECHARGE_PACKAGE in path.parents:
            continue
        names = _called_names(ast.parse(path.read_text(), str(path)))
        wired = {n for n in names if n in WIRING or n in ("rc.build", "recharge.build")}
        if wired:
            found[str(path.relative_to(src))] = wired
    return found


def _imports_root(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "tally.bootstrap"
        and any(alias.name == "recharging" for alias in node.names)
        for node in ast.walk(tree)
    ) and "recharging" in _called_names(tree)


def test_no_module_but_the_composition_root_wires_recharge_machinery() -> None:
    assert wiring_outside_the_root(SRC) == {}


def test_serve_the_cli_and_the_lab_build_it_from_the_root() -> None:
    assert {name: _imports_root(path) for name, path in USERS.items()} == dict.fromkeys(USERS, True)


def test_the_lab_builds_no_recharge_wiring_its_subject_is_tally_serve() -> None:
    """Issue 13: the lab drives real `tally serve` processes; a lab module that built the
    recharge machinery itself would be a second, unproven composition again."""
    assert {p.name for p in (SRC / "lab").glob("*.py") if _imports_root(p)} == set()


def test_the_check_would_catch_a_second_wiring(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "billing.py").write_text(
        "from tally.billing import recharge\n"
        "probe = RedisHealth(client, layout, ledger)\n"
        "wiring = recharge.build(engine, gateway, probe)\n"
    )
    assert wiring_outside_the_root(tmp_path) == {
        "lab/billing.py": {"RedisHealth", "recharge.build"}
    }
