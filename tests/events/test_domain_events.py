"""The pure parts: how a wait reason is named for dependents, endpoint URL and secret checks,
the payload's shape."""

from __future__ import annotations

import pytest

from tally.domain.events import (
    EndpointRefused,
    WaitReason,
    check_secret,
    check_types,
    check_url,
    iso_ms,
    new_secret,
    payload,
    wait_reason,
)


@pytest.mark.parametrize(
    ("detail", "reason"),
    [
        ("frozen: incident 42", WaitReason.frozen),
        ("circuit_open: 5 gateway failures in a row", WaitReason.circuit_open),
        ("store_not_primary: role slave", WaitReason.store_unhealthy),
        ("store_epoch_invalid: dataset empty", WaitReason.store_unhealthy),
        ("replica_lag: every replica 9 s or more behind > 2 s", WaitReason.store_unhealthy),
        ("drain_lag: 60000 journal entries > 50000", WaitReason.store_unhealthy),
        ("StoreUnavailable: connection refused", WaitReason.store_unhealthy),
        ("gateway_unknown: timeout", WaitReason.gateway_unavailable),
        ("in_flight: another recharge of this account is being driven", WaitReason.pending),
        ("credit_pending: the store has not applied the credit yet", WaitReason.pending),
    ],
)
def test_wait_reasons_are_named_for_dependents(detail: str, reason: WaitReason) -> None:
    assert wait_reason(detail) is reason


@pytest.mark.parametrize(
    "url",
    ["ftp://h/x", "h/x", "http://", "https://u:p@h/x", "http://h/a b", "x" * 3000, ""],
)
def test_only_http_urls_with_a_host_and_no_credentials_are_endpoints(url: str) -> None:
    with pytest.raises(EndpointRefused) as refused:
        check_url(url)
    assert refused.value.code == "webhook_url_invalid"


def test_secrets_are_whsec_base64_of_24_to_64_bytes() -> None:
    assert check_secret(new_secret(b"k" * 24)) == new_secret(b"k" * 24)
    for bad in (new_secret(b"k" * 24)[:-8], "whsec_" + "QQ==" * 40, "k" * 40, "whsec_%%%"):
        with pytest.raises(EndpointRefused) as refused:
            check_secret(bad)
        assert refused.value.code == "webhook_secret_invalid"


def test_event_type_filters_are_known_and_distinct() -> None:
    assert check_types(None) is None
    for bad in ([], ["nope"], ["balance.low", "balance.low"]):
        with pytest.raises(EndpointRefused):
            check_types(bad)


def test_the_payload_carries_id_cursor_type_utc_timestamp_and_data() -> None:
    assert payload("evt_1", 7, "balance.low", 1_700_000_000_123, '{"a":1}') == {
        "id": "evt_1",
        "cursor": 7,
        "type": "balance.low",
        "timestamp": "2023-11-14T22:13:20.123Z",
        "data": {"a": 1},
    }
    assert iso_ms(5) == "1970-01-01T00:00:00.005Z"
