"""Shared options (--redis-url, --ledger-url, --home) and opening the deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    func = click.option("--home", envvar="TALLY_HOME", help="Local state dir (default ./.tally).")(
        func
    )
    func = click.option(
        "--ledger-url", envvar="TALLY_LEDGER_URL", help="sqlite:///file or postgresql://..."
    )(func)
    return click.option("--redis-url", envvar="TALLY_REDIS_URL", help="redis://host:port/db")(func)


def settings_from(redis_url: str | None, ledger_url: str | None, home: str | None) -> Settings:
    return Settings.resolve(redis_url=redis_url, ledger_url=ledger_url, home=home)


def deployment(redis_url: str | None, ledger_url: str | None, home: str | None) -> Deployment:
    return open_deployment(settings_from(redis_url, ledger_url, home))
