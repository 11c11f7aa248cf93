"""The browser check can fail: a page that runs a broken script and asks for a remote image is
caught on both counts (the request goes to the closed loopback proxy, never off the machine)."""

from __future__ import annotations

from pathlib import Path

from tests.browser import render


def test_the_browser_check_sees_a_script_error_and_a_remote_fetch(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body><svg width='4' height='4'></svg>"
        "<img src='https://example.com/pixel.png'><script>missing.call()</script></body></html>"
    )
    rendered = render(page)
    assert "<svg" in rendered.dom
    assert any("missing is not defined" in line for line in rendered.console_errors)
    assert rendered.fetched == ["https://example.com/pixel.png"]
