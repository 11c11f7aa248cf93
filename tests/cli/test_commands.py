from __future__ import annotations

import importlib

import click
import pytest

from tally.cli.main import COMMANDS


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_listed_command_imports_and_is_a_click_command(name: str) -> None:
    module, attribute, _ = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command)
    assert command.name == name
