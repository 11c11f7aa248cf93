"""Values the ledger hands out: epochs, credit intents, journal lines, reports. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tally.domain.accounts import SystemAccount
from tally.domain.results import Result
from tally.domain.transfers import TransferKind


class EpochStatus(StrEnum):
    building = "building"
    current = "current"
    retired = "retired"


class EpochKind(StrEnum):
    init = "init"
    rebuild = "rebuild"


@dataclass(frozen=True, slots=True)
class Epoch:
    epoch_id: str
    namespace: str
    shards: int
    status: EpochStatus


@dataclass(frozen=True, slots=True)
class EpochView:
    """The deployment epoch and each logical shard's own epoch id: the deployment's, or the
    epoch a one-shard rebuild (``tally rebuild --shard K``, a Redis Cluster) gave that shard.
    What a shard's epoch key must hold, what its journal entries carry (``e=``), and what the
    drainer accepts from that shard."""

    epoch: Epoch
    shard_ids: tuple[str, ...]

    def of(self, shard: int) -> str:
        return self.shard_ids[shard]

    def for_shard(self, shard: int) -> Epoch:
        """The deployment epoch as one shard sees it (its own id)."""
        e = self.epoch
        return Epoch(self.shard_ids[shard], e.namespace, e.shards, e.status)

    @property
    def overrides(self) -> tuple[str, ...]:
        """``shard_ids`` when some shard has its own epoch, () when all share the deployment's
        (what a store keeps: ``ShardScripts.set_epoch``)."""
        if all(i == self.epoch.epoch_id for i in self.shard_ids):
            return ()
        return self.shard_ids


class IntentState(StrEnum):
    pending = "pending"
    settled = "settled"


@dataclass(frozen=True, slots=True)
class CreditIntent:
    id: str
    account_id: str
    amount_minor: int
    currency: str
    source: SystemAccount
    state: IntentState
    result: Result | None
    created_at_ms: int
    settled_at_ms: int | None


@dataclass(frozen=True, slots=True)
class RecordedIntent:
    """What ``record_credit_intent`` did. ``result`` is ``ok`` (new intent), ``exists`` (same id,
    same parameters: ``intent`` is the stored one) or an ``exists_with_different_*`` code (the id
    is taken by another intent or transfer; ``intent`` is the stored intent if there is one)."""

    result: Result
    intent: CreditIntent | None

    @property
    def conflict(self) -> Result | None:
        """The ``exists_with_different_*`` code, or None when the intent is recorded (new or
        replayed with the same parameters) and the credit may be applied."""
        return self.result if self.result.is_replay_conflict else None


@dataclass(frozen=True, slots=True, order=True)
class StreamId:
    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str | bytes) -> StreamId:
        raw = text.decode() if isinstance(text, bytes) else text
        ms, _, seq = raw.partition("-")
        return cls(int(ms), int(seq or 0))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


@dataclass(frozen=True, slots=True)
class JournalLine:
    """One line of a journal entry, as the store wrote it (docs/contracts.md)."""

    transfer_id: str
    kind: TransferKind
    account_id: str
    amount_minor: int
    currency: str
    result: Result
    balance_after_minor: int | None
    ts_ms: int
    #: The auto-recharge this debit opened (the line's optional 9th field).
    recharge_id: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a journal line sits: epoch, shard, stream entry id and line number in the entry."""

    epoch_id: str
    shard: int
    stream_id: StreamId
    line_no: int


@dataclass(frozen=True, slots=True)
class DrainedLine:
    line: JournalLine
    position: Position


#: One journal line as the ledger stages it, in the staging table's column order (``sql_apply``):
#: (n, transfer_id, kind value, account_id, amount_minor, currency, result code,
#:  balance_after_minor, ts_ms, epoch_id, shard, stream_ms, stream_seq, line_no, recharge_id).
#: ``n`` is the line's index in its batch. Plain tuples: the drainer builds one per transfer.
StagedRow = tuple[
    int, str, str, str, int, str, int, int | None, int, str, int, int, int, int, str | None
]


@dataclass(frozen=True, slots=True)
class HoldLine:
    """One hold event line of the journal (``store/lua/hold.lua``):
    ``@h|event|hold|account|amount|currency|code|balance|held|expires_at|ts_ms``. ``event`` is
    ``placed`` / ``captured`` / ``voided`` / ``expired``; ``amount_minor`` is the held amount,
    or for a capture the captured amount (its debit is an ordinary debit line beside it)."""

    event: str
    hold_id: str
    account_id: str
    amount_minor: int
    currency: str
    result: int
    balance_after_minor: int | None
    held_after_minor: int | None
    expires_at_ms: int
    ts_ms: int


@dataclass
class LineBatch:
    """Journal lines bound for one ledger transaction, in columns rather than objects (the
    drainer parses ~100k lines/s into this). ``texts[n]`` is row n's line as the store wrote
    it (kept for ``journal_conflicts``); ``rejected``: lines that will never apply."""

    rows: list[StagedRow] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rejected: list[RejectedLine] = field(default_factory=list)
    #: hold event lines, in journal order (``sql_holds`` applies them)
    holds: list[tuple[HoldLine, Position]] = field(default_factory=list)

    def add_line(self, line: JournalLine, position: Position, text: str) -> None:
        self.rows.append(
            (
                len(self.rows),
                line.transfer_id,
                line.kind.value,
                line.account_id,
                line.amount_minor,
                line.currency,
                int(line.result),
                line.balance_after_minor,
                line.ts_ms,
                position.epoch_id,
                position.shard,
                position.stream_id.ms,
                position.stream_id.seq,
                position.line_no,
                line.recharge_id,
            )
        )
        self.texts.append(text)

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected) + len(self.holds)


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A journal line the ledger will never apply, kept verbatim in ``journal_conflicts``."""

    reason: str  # "malformed" | "foreign_epoch"
    text: str
    position: Position
    transfer_id: str | None = None


@dataclass(frozen=True, slots=True)
class ApplyReport:
    inserted: int = 0
    duplicates: int = 0  # same id, same parameters: a redelivery, a no-op
    conflicts: int = 0  # same id, other parameters, or malformed: recorded, never applied
    foreign: int = 0  # lines of another epoch: recorded, never applied
    intents_settled: int = 0


@dataclass(frozen=True, slots=True)
class TransferRecord:
    id: str
    kind: TransferKind
    account_id: str
    debit_account_id: str
    credit_account_id: str
    amount_minor: int
    currency: str
    result: Result
    balance_after_minor: int | None
    ts_ms: int
    epoch_id: str


@dataclass(frozen=True, slots=True)
class TransfersPage:
    items: list[TransferRecord]
    next_cursor: str | None  # pass as ``after`` for the next page; None at the end
