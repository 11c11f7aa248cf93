"""Hostile and malformed requests get a 4xx problem, never a 500, and never write anything."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.serve.harness import Served

ACCOUNT = "acct-target"
GOOD = {"transfer_id": "t-1", "account_id": ACCOUNT, "amount_minor": 5}

BAD_DEBITS: dict[str, object] = {
    "negative amount": {**GOOD, "amount_minor": -5},
    "zero amount": {**GOOD, "amount_minor": 0},
    "fractional amount": {**GOOD, "amount_minor": 5.5},
    "integral float amount": {**GOOD, "amount_minor": 5.0},
    "amount as a string": {**GOOD, "amount_minor": "5"},
    "amount as a boolean": {**GOOD, "amount_minor": True},
    "amount above the bound": {**GOOD, "amount_minor": 10**13 + 1},
    "amount with 5000 digits": {**GOOD, "amount_minor": int("9" * 4000)},
    "unknown currency": {**GOOD, "currency": "XXX"},
    "lowercase currency": {**GOOD, "currency": "usd"},
    "overlong transfer id": {**GOOD, "transfer_id": "t" * 65},
    "empty transfer id": {**GOOD, "transfer_id": ""},
    "cyrillic look-alike in the account id": {**GOOD, "account_id": "acct-t\u0430rget"},
    "zero-width space in the id": {**GOOD, "transfer_id": "t-1\u200b"},
    "newline in the id": {**GOOD, "transfer_id": "t-1\nx"},
    "reserved system account": {**GOOD, "account_id": "@usage_revenue:USD"},
    "a recharge credit's reserved id": {**GOOD, "transfer_id": "rc-" + "0" * 29},
    "a hold capture's reserved id": {**GOOD, "transfer_id": "hc-" + "a1" * 14 + "f"},
    "unknown field": {**GOOD, "admin": True},
    "missing field": {"transfer_id": "t-1", "account_id": ACCOUNT},
    "a list instead of an object": [GOOD],
    "null": None,
}


@pytest.fixture(scope="module")
def api(shared_served: Served) -> Iterator[httpx.Client]:
    with shared_served.client() as client:
        client.post("/v1/accounts", json={"id": ACCOUNT, "currency": "USD"})
        credit = {
            "transfer_id": "fund-target",
            "account_id": ACCOUNT,
            "amount_minor": 1000,
            "currency": "USD",
        }
        client.post("/v1/credits", json=credit)
        yield client


def _unchanged(api: httpx.Client) -> None:
    assert api.get(f"/v1/accounts/{ACCOUNT}").json()["balance_minor"] == 1000


@pytest.mark.parametrize("body", BAD_DEBITS.values(), ids=BAD_DEBITS.keys())
def test_a_malformed_debit_is_a_4xx_problem_and_moves_no_money(
    api: httpx.Client, body: object
) -> None:
    reply = api.post("/v1/debits", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["code"]
    _unchanged(api)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"\xff\xfe\x00",
        b'{"transfer_id": "t-1", "transfer_id": "t-2"',
        b"[" * 5000 + b"]" * 5000,
        b"",
    ],
    ids=["truncated", "not utf-8", "unterminated", "deeply nested", "empty"],
)
def test_a_body_that_is_not_json_is_a_400_problem(api: httpx.Client, raw: bytes) -> None:
    reply = api.post("/v1/debits", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/problem+json"
    _unchanged(api)


def test_a_huge_body_is_refused_before_it_is_read(api: httpx.Client) -> None:
    reply = api.post(
        "/v1/debits/batch", content=b"x" * 5_000_000, headers={"content-type": "application/json"}
    )
    assert (reply.status_code, reply.json()["code"]) == (413, "body_too_large")


def test_a_huge_chunked_body_is_cut_off_at_the_cap(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 6.4 MB, no Content-Length
            yield b"[" * 65536

    reply = api.post("/v1/debits", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413
    _unchanged(api)


def test_a_batch_above_the_item_limit_is_refused_whole(api: httpx.Client) -> None:
    debits = [{**GOOD, "transfer_id": f"big-{i}"} for i in range(1001)]
    reply = api.post("/v1/debits/batch", json={"debits": debits})
    assert reply.status_code == 400
    _unchanged(api)


def test_a_batch_with_one_bad_item_writes_none_of_them(api: httpx.Client) -> None:
    debits = [{**GOOD, "transfer_id": f"mixed-{i}"} for i in range(3)] + [
        {**GOOD, "amount_minor": -1}
    ]
    assert api.post("/v1/debits/batch", json={"debits": debits}).status_code == 400
    _unchanged(api)


@pytest.mark.parametrize(
    "path",
    ["/v1/accounts/" + "a" * 65, "/v1/accounts/acct%E2%80%8B", "/v1/accounts/@usage_revenue:USD"],
)
def test_bad_account_ids_in_the_path_are_4xx(api: httpx.Client, path: str) -> None:
    reply = api.get(path)
    assert 400 <= reply.status_code < 500


def test_bad_page_cursors_and_limits_are_4xx(api: httpx.Client) -> None:
    for params in (
        {"after": "garbage"},
        {"after": "x" * 500},
        {"after": "\u00b2:x"},  # str.isdigit says yes; int() says no
        {"after": "\u0661\u0662:x"},  # Arabic-Indic digits: int() would accept them
        {"after": "99999999999999999999999:x"},  # past 64 bits: SQLite overflows
        {"after": "-1:x"},
        {"after": "1:"},
        {"limit": 0},
        {"limit": 10**6},
        {"limit": "many"},
    ):
        reply = api.get(f"/v1/accounts/{ACCOUNT}/transfers", params=params)
        assert reply.status_code == 400, (params, reply.text)
        assert reply.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"],
)
def test_a_body_that_is_not_declared_json_is_415(api: httpx.Client, content_type: str) -> None:
    body = b'{"transfer_id": "ct-1", "account_id": "acct-target", "amount_minor": 5}'
    reply = api.post("/v1/debits", content=body, headers={"content-type": content_type})
    assert (reply.status_code, reply.json()["code"]) == (415, "unsupported_media_type")
    assert reply.headers["content-type"] == "application/problem+json"
    _unchanged(api)


def test_a_json_body_with_a_charset_or_a_json_suffix_type_is_accepted(api: httpx.Client) -> None:
    for i, content_type in enumerate(
        ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
    ):
        body = f'{{"transfer_id": "cs-{i}", "account_id": "nobody-here", "amount_minor": 5}}'
        reply = api.post("/v1/debits", content=body, headers={"content-type": content_type})
        assert (reply.status_code, reply.json()["code"]) == (404, "account_not_found")


def test_a_request_with_a_lying_content_length_does_not_hang_the_server(
    shared_served: Served,
) -> None:
    with socket.create_connection(("127.0.0.1", shared_served.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/debits HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 4")
