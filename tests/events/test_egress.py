"""The egress policy: webhooks go only to the hosts ``TALLY_WEBHOOK_HOSTS`` names.

Without it, an admin key (or a fuzzer holding one: the schemathesis test) could make ``tally
serve`` POST to any host; the test suite itself must never send traffic off this machine. A
request is checked when the endpoint is registered and again before every delivery (an endpoint
registered before the policy was set gets nothing outside it). The transport here is httpx's
MockTransport: it records what would have gone out, so even the control sends nothing.
"""

from __future__ import annotations

import httpx
import pytest

from tally.config import Settings, child_env
from tally.domain.events import EndpointRefused, check_host, parse_hosts
from tally.errors import ConfigError
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_webhooks import WebhookBook
from tally.service.delivery import DeliveryOptions, DeliveryWorker

OUTSIDE = "https://hooks.example.com/tally"  # never contacted: see the module docstring
LOOPBACK = frozenset({"127.0.0.1", "localhost"})


def _recording_client(seen: list[str]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    return httpx.Client(transport=httpx.MockTransport(handle))


def _deliver_one(ledger: SqlLedger, hosts: frozenset[str] | None) -> tuple[list[str], str]:
    book = WebhookBook(ledger)
    endpoint, _secret = book.register(OUTSIDE, None)  # registered before any policy
    with ledger.unit() as uow:
        uow.emit("billing.frozen", {"reason": "test"})
    seen: list[str] = []
    worker = DeliveryWorker(
        ledger,
        owner="egress",
        options=DeliveryOptions(attempts_max=1),
        client=_recording_client(seen),
        hosts=hosts,
    )
    worker.run_once()
    states = {d.state for d in book.deliveries(endpoint.id)}
    return seen, ",".join(sorted(states))


def test_a_delivery_outside_the_allowed_hosts_is_never_sent_and_dead_letters(
    ledger: SqlLedger,
) -> None:
    """Without the check before the POST (hosts=None, the control) the request goes out."""
    sent, _ = _deliver_one(ledger, None)
    assert sent == [OUTSIDE]


def test_the_policy_stops_a_delivery_registered_before_it(ledger: SqlLedger) -> None:
    sent, states = _deliver_one(ledger, LOOPBACK)
    assert sent == []
    assert states == "dead"  # attempts_max=1: refused once, dead-lettered, visible to operators


def test_registration_outside_the_allowed_hosts_is_refused_and_writes_nothing(
    ledger: SqlLedger,
) -> None:
    book = WebhookBook(ledger)
    with pytest.raises(EndpointRefused) as refused:
        book.register(OUTSIDE, None, hosts=LOOPBACK)
    assert refused.value.code == "webhook_url_not_allowed"
    assert book.active() == []
    endpoint, _ = book.register("http://127.0.0.1:9/hook", None, hosts=LOOPBACK)
    assert [e.id for e in book.active()] == [endpoint.id]


def test_hosts_parse_and_compare_as_written_lowercased() -> None:
    assert parse_hosts(None) is None and parse_hosts(" ") is None
    assert parse_hosts("Hooks.Example.com, 127.0.0.1,[::1]") == {
        "hooks.example.com",
        "127.0.0.1",
        "::1",
    }
    check_host("http://[::1]:8080/x", frozenset({"::1"}))
    check_host("https://HOOKS.example.com/", frozenset({"hooks.example.com"}))
    with pytest.raises(EndpointRefused):
        check_host("https://hooks.example.com.evil.test/", frozenset({"hooks.example.com"}))
    with pytest.raises(EndpointRefused):
        parse_hosts("a.example,,b.example")
    with pytest.raises(EndpointRefused):
        parse_hosts("10.0.0.0/8")


def test_a_bad_policy_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("TALLY_WEBHOOK_HOSTS", "https://hooks.example.com")
    with pytest.raises(ConfigError, match="TALLY_WEBHOOK_HOSTS"):
        Settings.resolve(home=str(tmp_path))


def test_the_suite_and_every_process_it_starts_keep_webhooks_on_loopback() -> None:
    """The guard the schemathesis run relies on: its ``tally serve`` inherits the policy."""
    assert parse_hosts(child_env().get("TALLY_WEBHOOK_HOSTS")) == {"127.0.0.1", "localhost", "::1"}
