"""The journal line and tx record formats shared with the store (docs/contracts.md)."""

from __future__ import annotations

import re

from tally.domain.ids import check_id
from tally.domain.limits import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX, ID_LEN_MAX
from tally.domain.money import CURRENCY_EXPONENTS, check_amount_minor, check_currency
from tally.domain.results import Result
from tally.domain.transfers import TransferKind
from tally.errors import TallyError
from tally.ledger.models import (
    DrainedLine,
    HoldLine,
    JournalLine,
    LineBatch,
    Position,
    RejectedLine,
    StreamId,
)

FIELDS = 8
LINES_PER_ENTRY_MAX = 100_000


class MalformedLine(ValueError):
    pass


def _int(text: str, what: str) -> int:
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        raise MalformedLine(f"{what} {text!r:.30} is not an integer")
    return int(text)


def parse_line(text: str) -> JournalLine:
    """``transfer_id|k|account_id|amount_minor|currency|result_code|balance_after|ts_ms``, plus
    ``|recharge_id`` on a debit that opened an auto-recharge."""
    parts = text.split("|")
    if len(parts) not in (FIELDS, FIELDS + 1):
        raise MalformedLine(f"expected {FIELDS} fields (9 with a recharge id), got {len(parts)}")
    tid, kind, account, amount, currency, code, balance, ts = parts[:FIELDS]
    recharge_id = parts[FIELDS] if len(parts) > FIELDS else None
    try:
        check_id(tid, "transfer id")
        check_id(account, "account id")
        line = JournalLine(
            transfer_id=tid,
            kind=TransferKind.from_code(kind),
            account_id=account,
            amount_minor=check_amount_minor(_int(amount, "amount")),
            currency=check_currency(currency),
            result=Result(_int(code, "result")),
            balance_after_minor=_int(balance, "balance") if balance else None,
            ts_ms=_int(ts, "ts_ms"),
            recharge_id=None if recharge_id is None else check_id(recharge_id, "recharge id"),
        )
    except (KeyError, ValueError, TallyError) as exc:  # ValueError covers Result(99)
        raise MalformedLine(str(exc)) from exc
    if line.balance_after_minor is not None and abs(line.balance_after_minor) > BALANCE_MINOR_MAX:
        raise MalformedLine(f"balance {line.balance_after_minor} out of bounds")
    return line


HOLD_PREFIX = "@h|"
HOLD_FIELDS = 11
HOLD_EVENTS = {"p": "placed", "c": "captured", "v": "voided", "x": "expired"}


def is_hold_line(text: str) -> bool:
    """Hold event lines start with ``@h|`` (a transfer id never starts with ``@``)."""
    return text.startswith(HOLD_PREFIX)


def parse_hold_line(text: str) -> HoldLine:
    parts = text.split("|")
    if len(parts) != HOLD_FIELDS:
        raise MalformedLine(f"a hold line has {HOLD_FIELDS} fields, got {len(parts)}")
    _, event, hold_id, account, amount, currency, code, balance, held, expires, ts = parts
    try:
        line = HoldLine(
            event=HOLD_EVENTS[event],
            hold_id=check_id(hold_id, "hold id"),
            account_id=check_id(account, "account id"),
            amount_minor=check_amount_minor(_int(amount, "amount")),
            currency=check_currency(currency),
            result=_int(code, "result"),
            balance_after_minor=_int(balance, "balance") if balance else None,
            held_after_minor=_int(held, "held") if held else None,
            expires_at_ms=_int(expires, "expires_at"),
            ts_ms=_int(ts, "ts_ms"),
        )
    except (KeyError, ValueError, TallyError) as exc:
        raise MalformedLine(str(exc)) from exc
    return line


def format_hold_line(line: HoldLine) -> str:
    event = next(k for k, v in HOLD_EVENTS.items() if v == line.event)
    opt = ["" if v is None else str(v) for v in (line.balance_after_minor, line.held_after_minor)]
    return "|".join(
        (
            "@h",
            event,
            line.hold_id,
            line.account_id,
            str(line.amount_minor),
            line.currency,
            str(line.result),
            *opt,
            str(line.expires_at_ms),
            str(line.ts_ms),
        )
    )


def parse_hold_lines(
    shard: int, stream_id: StreamId, fields: dict[str, str]
) -> list[tuple[HoldLine, Position]]:
    """The well-formed hold lines of one entry (reconcile reads them beside ``parse_entry``)."""
    out: list[tuple[HoldLine, Position]] = []
    epoch_id, data = fields.get("e", ""), fields.get("d")
    if not epoch_id or data is None:
        return out
    for no, text in enumerate(data.split("\n")[:LINES_PER_ENTRY_MAX]):
        if is_hold_line(text):
            try:
                out.append((parse_hold_line(text), Position(epoch_id, shard, stream_id, no)))
            except MalformedLine:
                continue
    return out


def format_line(line: JournalLine) -> str:
    balance = "" if line.balance_after_minor is None else str(line.balance_after_minor)
    return "|".join(
        (
            line.transfer_id,
            line.kind.code,
            line.account_id,
            str(line.amount_minor),
            line.currency,
            str(int(line.result)),
            balance,
            str(line.ts_ms),
            *(() if line.recharge_id is None else (line.recharge_id,)),
        )
    )


def split_entry(data: str) -> list[str]:
    lines = data.split("\n") if data else []
    if len(lines) > LINES_PER_ENTRY_MAX:
        raise MalformedLine(f"entry has {len(lines)} lines, more than {LINES_PER_ENTRY_MAX}")
    return lines


def format_tx_record(
    kind: TransferKind,
    account_id: str,
    amount_minor: int,
    currency: str,
    result: Result,
    balance_after_minor: int | None,
) -> str:
    """The store's ``tx`` hash value: ``k|account|amount|currency|code|balance``."""
    balance = "" if balance_after_minor is None else str(balance_after_minor)
    return f"{kind.code}|{account_id}|{amount_minor}|{currency}|{int(result)}|{balance}"


def parse_entry(
    shard: int, stream_id: StreamId, fields: dict[str, str]
) -> tuple[list[DrainedLine], list[RejectedLine]]:
    epoch_id = fields.get("e", "")
    drained: list[DrainedLine] = []
    rejected: list[RejectedLine] = []
    data = fields.get("d")
    if not epoch_id or data is None:
        pos = Position(epoch_id, shard, stream_id, 0)
        return [], [RejectedLine("malformed", repr(fields)[:2000], pos)]
    try:
        lines = split_entry(data)
    except MalformedLine:
        return [], [RejectedLine("malformed", data[:2000], Position(epoch_id, shard, stream_id, 0))]
    for no, line_text in enumerate(lines):
        pos = Position(epoch_id, shard, stream_id, no)
        if is_hold_line(line_text):
            continue  # hold events: ``parse_hold_lines``
        try:
            drained.append(DrainedLine(parse_line(line_text), pos))
        except MalformedLine:
            rejected.append(RejectedLine("malformed", line_text[:2000], pos))
    return drained, rejected


# The fast path of ``parse_entry_into``: one fullmatch accepts only canonical lines (the Lua
# script writes nothing else), a subset of what ``parse_line`` accepts, with the same values.
# Anything it does not match goes through ``parse_line``, so malformed lines are refused exactly
# as before.
_ID = rf"[A-Za-z0-9][A-Za-z0-9_.:\-]{{0,{ID_LEN_MAX - 1}}}"
_CANONICAL_LINE = re.compile(
    rf"({_ID})\|([dc])\|({_ID})\|([1-9][0-9]{{0,17}})\|([A-Z]{{3}})\|(0|[1-9][0-9]?)"
    rf"\|(-?(?:0|[1-9][0-9]{{0,17}}))?\|(0|[1-9][0-9]{{0,18}})(?:\|({_ID}))?"
).fullmatch
_KINDS = {k.code: k.value for k in TransferKind}
_CODES = {str(int(r)): int(r) for r in Result}


def parse_entry_into(
    batch: LineBatch, shard: int, stream_id: StreamId, fields: dict[str, str]
) -> None:
    """``parse_entry`` straight into a ``LineBatch``: the same lines accepted, the same ones
    rejected, without an object per line."""
    epoch_id = fields.get("e", "")
    data = fields.get("d")
    if not epoch_id or data is None:
        pos = Position(epoch_id, shard, stream_id, 0)
        batch.rejected.append(RejectedLine("malformed", repr(fields)[:2000], pos))
        return
    try:
        lines = split_entry(data)
    except MalformedLine:
        pos = Position(epoch_id, shard, stream_id, 0)
        batch.rejected.append(RejectedLine("malformed", data[:2000], pos))
        return
    rows, texts, ms, seq = batch.rows, batch.texts, stream_id.ms, stream_id.seq
    for no, text in enumerate(lines):
        m = _CANONICAL_LINE(text)
        if m is not None:
            tid, kind, account, amount, currency, code, balance, ts, recharge_id = m.groups()
            amount_minor = int(amount)
            balance_minor = int(balance) if balance else None
            if (
                amount_minor <= AMOUNT_MINOR_MAX
                and currency in CURRENCY_EXPONENTS
                and code in _CODES
                and (balance_minor is None or abs(balance_minor) <= BALANCE_MINOR_MAX)
            ):
                rows.append(
                    (
                        len(rows),
                        tid,
                        _KINDS[kind],
                        account,
                        amount_minor,
                        currency,
                        _CODES[code],
                        balance_minor,
                        int(ts),
                        epoch_id,
                        shard,
                        ms,
                        seq,
                        no,
                        recharge_id,
                    )
                )
                texts.append(text)
                continue
        pos = Position(epoch_id, shard, stream_id, no)
        try:
            if is_hold_line(text):
                batch.holds.append((parse_hold_line(text), pos))
                continue
            batch.add_line(parse_line(text), pos, text)
        except MalformedLine:
            batch.rejected.append(RejectedLine("malformed", text[:2000], pos))
