"""The journal line and tx record formats shared with the store (docs/contracts.md)."""

from __future__ import annotations

from tally.domain.ids import check_id
from tally.domain.limits import BALANCE_MINOR_MAX
from tally.domain.money import check_amount_minor, check_currency
from tally.domain.results import Result
from tally.domain.transfers import TransferKind
from tally.errors import TallyError
from tally.ledger.models import DrainedLine, JournalLine, Position, RejectedLine, StreamId

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
        try:
            drained.append(DrainedLine(parse_line(line_text), pos))
        except MalformedLine:
            rejected.append(RejectedLine("malformed", line_text[:2000], pos))
    return drained, rejected
