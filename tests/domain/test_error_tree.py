"""The exception tree drawn in ``tally.errors`` is the tree in the code, and an invariant
violation is a crash, never one of tally's handled errors (issue 12)."""

from __future__ import annotations

import inspect
import re

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
