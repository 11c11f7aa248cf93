"""Checking caller input before it reaches the store: cheap, so the batch path stays fast."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tally.domain.ids import RESERVED_ID_LEN, id_fullmatch, is_reserved_transfer_id, is_valid_id
from tally.domain.limits import AMOUNT_MINOR_MAX, BATCH_MAX, OCCURRED_AT_MS_MAX
from tally.domain.money import CURRENCY_EXPONENTS
from tally.errors import (
    InvalidAmount,
    InvalidId,
    InvariantViolation,
    UnknownCurrency,
    UsageError,
)
from tally.store.redis_store import RawTransfer

#: (transfer id, account id, amount_minor[, currency[, occurred_at_ms]]); occurred_at_ms None or
#: absent: now, by the Redis server's clock (README, "Idempotency window")
DebitItem = tuple[str, str, int] | tuple[str, str, int, str] | tuple[str, str, int, str, int | None]


def raw_transfers(kind: str, items: Iterable[Sequence[object]]) -> list[RawTransfer]:
    """The batch path: the same checks as ``raw_transfer``, inlined, and each account id checked
    once per batch (usage batches repeat accounts)."""
    out: list[RawTransfer] = []
    accounts_ok: set[str] = set()
    for n, item in enumerate(items):
        if n >= BATCH_MAX:
            raise UsageError(f"a batch holds at most {BATCH_MAX} transfers")
        size = len(item)
        occurred: object = None
        if size == 3:
            tid, aid, amount = item
            currency: object = ""
        elif size == 4:
            tid, aid, amount, currency = item
        elif size == 5:
            tid, aid, amount, currency, occurred = item
        else:
            raise UsageError(
                f"item {n}: expected (transfer_id, account_id, amount_minor[, currency"
                "[, occurred_at_ms]])"
            )
        if (
            type(tid) is not str
            or not id_fullmatch(tid)
            or (len(tid) == RESERVED_ID_LEN and is_reserved_transfer_id(tid))
            or type(aid) is not str
            or (aid not in accounts_ok and not id_fullmatch(aid))
            or type(amount) is not int
            or not 0 < amount <= AMOUNT_MINOR_MAX
            or type(currency) is not str
            or (currency != "" and currency not in CURRENCY_EXPONENTS)
            or not (occurred is None or _occurred_ok(occurred))
        ):
            raw_transfer(kind, tid, aid, amount, currency, occurred, where=f"item {n}: ")  # raises
            raise InvariantViolation(f"item {n} failed the fast check but passed the full one")
        accounts_ok.add(aid)
        out.append((tid, kind, aid, amount, currency, occurred))  # type: ignore[arg-type]
    return out


def _occurred_ok(occurred: object) -> bool:
    return type(occurred) is int and 0 <= occurred <= OCCURRED_AT_MS_MAX


def raw_transfer(
    kind: str,
    tid: object,
    aid: object,
    amount: object,
    currency: object,
    occurred_at_ms: object = None,
    *,
    where: str = "",
    system: bool = False,
) -> RawTransfer:
    """``system``: tally's own transfer (a recharge's credit), whose id may have the reserved
    form; every caller-supplied transfer id must not."""
    if not is_valid_id(tid):
        raise InvalidId(f"{where}transfer id {str(tid)[:80]!r} is not a valid id")
    if not system and is_reserved_transfer_id(tid):  # type: ignore[arg-type]
        raise InvalidId(
            f"{where}transfer id {tid!r} has the form tally reserves for its own transfers "
            "(rc- or hc- followed by 29 lowercase hex digits: recharge credits, hold captures); "
            "choose another id"
        )
    if not is_valid_id(aid):
        raise InvalidId(f"{where}account id {str(aid)[:80]!r} is not a valid id")
    if type(amount) is not int or not 0 < amount <= AMOUNT_MINOR_MAX:
        raise InvalidAmount(
            f"{where}amount {str(amount)[:40]!r} is not 1..{AMOUNT_MINOR_MAX} minor units"
        )
    if type(currency) is not str or (currency != "" and currency not in CURRENCY_EXPONENTS):
        raise UnknownCurrency(f"{where}unknown currency {str(currency)[:8]!r}")
    if occurred_at_ms is not None and not _occurred_ok(occurred_at_ms):
        raise UsageError(
            f"{where}occurred_at_ms {str(occurred_at_ms)[:40]!r} is not epoch milliseconds "
            f"0..{OCCURRED_AT_MS_MAX}"
        )
    return (tid, kind, aid, amount, currency, occurred_at_ms)  # type: ignore[return-value]
