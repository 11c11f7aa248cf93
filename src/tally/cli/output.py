"""Printing results for people (default) or machines (``--json``), and the exit-code contract:
0 ok, 1 business refusal, 2 usage or infrastructure error."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from tally.errors import StoreLost, TallyError, UsageError

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def emit(as_json: bool, data: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(data, sort_keys=True) if as_json else human)


def error_code(exc: TallyError) -> str:
    if isinstance(exc, StoreLost):
        return "store_lost"
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def handles_errors(func: F) -> F:
    """Turn tally's errors into a clear message and exit code 2 (never a traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TallyError as exc:
            code = error_code(exc)
            if kwargs.get("as_json"):
                payload = {
                    "error": code,
                    "message": exc.args[0] if exc.args else "",
                    "hint": exc.hint,
                }
                click.echo(json.dumps(payload, sort_keys=True))
            click.echo(f"error: {code}: {exc}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def usage(message: str) -> UsageError:
    return UsageError(message)
