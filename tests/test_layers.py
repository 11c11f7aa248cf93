"""The layers stay visible: the domain does no I/O, nothing outside the lab imports the lab.
The contracts live in pyproject.toml ([tool.importlinter]); this runs them."""

from __future__ import annotations

from pathlib import Path

from importlinter import cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == cli.EXIT_STATUS_SUCCESS


def test_the_domain_contract_would_catch_an_io_import(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The check can fail: a copy of the contracts pointed at a module that imports redis."""
    pkg = tmp_path / "fakepkg"
    (pkg / "domain").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "domain" / "__init__.py").write_text("import redis\n")
    (tmp_path / "contracts.toml").write_text(
        '[tool.importlinter]\nroot_package = "fakepkg"\ninclude_external_packages = true\n'
        '[[tool.importlinter.contracts]]\nname = "domain does no I/O"\ntype = "forbidden"\n'
        'source_modules = ["fakepkg.domain"]\nforbidden_modules = ["redis"]\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        cli.lint_imports(config_filename=str(tmp_path / "contracts.toml"))
        != cli.EXIT_STATUS_SUCCESS
    )
