"""The exception tree drawn in ``tally.errors`` is the tree in the code, and an invariant
violation is a crash, never one of tally's handled errors (issue 12)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import tally.errors as errors
from tally.cli.output import handles_errors
from tally.domain.invariant import invariant

_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)")


def drawn_tree() -> dict[str, str]:
    """class name -> parent name, read from the module docstring's drawing."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        body = line[4:] if line.startswith("    ") else None
        found = _LINE.match(body) if body is not None else None
        if found is None:
            continue
        depth = len(found.group("indent")) // 4
        stack = stack[:depth]
        if stack:
            parents[found.group("name")] = stack[-1][1]
        stack.append((depth, found.group("name")))
    return parents


def coded_tree() -> dict[str, str]:
    return {
        name: cls.__bases__[0].__name__
        for name, cls in vars(errors).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == errors.__name__
        and name != "TallyError"
    }


def test_the_drawn_tree_is_the_tree_in_the_code() -> None:
    assert drawn_tree() == coded_tree()


def test_an_invariant_violation_is_an_assertion_error_and_not_a_tally_error() -> None:
    with pytest.raises(AssertionError):
        invariant(False, "impossible")
    assert not issubclass(errors.InvariantViolation, errors.TallyError)


def test_the_cli_never_turns_an_invariant_violation_into_an_exit_code() -> None:
    @click.command()
    @handles_errors
    def broken() -> None:
        invariant(False, "impossible")

    result = CliRunner().invoke(broken, [])
    assert isinstance(result.exception, errors.InvariantViolation)
    assert "error:" not in result.output  # not dressed up as one of tally's errors


BUILTIN_ERRORS = {"ValueError", "RuntimeError", "TypeError", "KeyError", "Exception"}
ADAPTERS = ("store", "ledger", "sync", "billing")


def builtin_raises(root: Path) -> list[str]:
    """``raise ValueError(...)`` and the like in the adapters: callers catch tally's tree."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in BUILTIN_ERRORS:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {func.id}")
    return found


@pytest.mark.parametrize("package", ADAPTERS)
def test_no_builtin_error_is_raised_from_an_adapter(package: str) -> None:
    root = Path(errors.__file__).parent / package
    assert [r for r in builtin_raises(root) if not r.startswith("migrations/")] == []
