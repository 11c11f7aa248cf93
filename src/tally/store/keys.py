"""Where everything lives in Redis.

Accounts are spread over a fixed number of *logical shards*. Every key of one shard carries the
same hash tag, so a later Redis Cluster keeps one shard (and so one account, its transfer
records and its journal) on one node, and one script call may touch a whole shard's accounts:
that is what lets ``debit_many`` process thousands of transfers per script call.

    {ns}:{{{ns}.{s}}}:epoch        string   the dataset epoch ("<epoch id>/<shards>")
    {ns}:{{{ns}.{s}}}:tx           hash     transfer id -> "k|account|amount|currency|code|balance"
                                            (in the shard of the TRANSFER id: ``tx_for``);
                                            generation 0 of the idempotency window
    {ns}:{{{ns}.{s}}}:tx:1         hash     the same, generation 1
    {ns}:{{{ns}.{s}}}:txgen        string   "<current generation 0|1>|<started, server ms>"
                                            (absent: generation 0, never rotated)
    {ns}:{{{ns}.{s}}}:journal      stream   one entry per script call: e=<epoch>, d=<lines>
    {ns}:{{{ns}.{s}}}:a:<account>  hash     cur, st (a/s/c), lim, bal
    {ns}:{{{ns}.{s}}}:h:<hold>     hash     a balance hold (lua/hold.lua), in its ACCOUNT's shard
    {ns}:{{{ns}.{s}}}:hexp         zset     the shard's open holds by expiry: score expires_at
                                            ms (server clock), member "account|hold"
    {ns}:{{{ns}.{s}}}:hroute       hash     hold id -> account id (in the shard of the HOLD id)
    {ns}:rebuilding                string   the epoch a rebuild in progress is writing

Account hash field ``hd``: the sum of the account's open holds (absent: 0); the available
balance is ``bal - hd + lim``.

Transfer ids are unique across the whole deployment, so a transfer's record lives in the shard
of its id, not of its account: one script reads and writes both (one primary holds every shard
today). A later Redis Cluster, where the two may sit on different nodes, splits this into
"reserve the id in its shard" then "apply in the account's shard", both idempotent.

Journal line (one per non-replayed transfer, newline separated, fields split on '|'):
    transfer_id|kind(d/c)|account_id|amount_minor|currency|result_code|balance_after|ts_ms
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from tally.errors import ConfigError

SHARDS_DEFAULT = 16
SHARDS_MAX = 1024


@dataclass(frozen=True, slots=True)
class KeyLayout:
    namespace: str = "tally"
    shards: int = SHARDS_DEFAULT

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= SHARDS_MAX:
            raise ConfigError(f"shards must be 1..{SHARDS_MAX}, got {self.shards}")
        if not self.namespace.isidentifier():
            raise ConfigError(f"namespace must be an identifier, got {self.namespace!r}")

    def shard_of(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode()) % self.shards

    def tag(self, shard: int) -> str:
        return f"{self.namespace}:{{{self.namespace}.{shard}}}"

    def epoch(self, shard: int) -> str:
        return f"{self.tag(shard)}:epoch"

    def tx(self, shard: int) -> str:
        return f"{self.tag(shard)}:tx"

    def tx_generation(self, shard: int, generation: int) -> str:
        """The tx hash of one generation of the idempotency window (0 is the original ``tx``)."""
        return self.tx(shard) if generation == 0 else f"{self.tag(shard)}:tx:{generation}"

    def tx_generations_key(self, shard: int) -> str:
        return f"{self.tag(shard)}:txgen"

    def tx_for(self, transfer_id: str) -> str:
        """The hash that holds this transfer id's record."""
        return self.tx(self.shard_of(transfer_id))

    def journal(self, shard: int) -> str:
        return f"{self.tag(shard)}:journal"

    def account(self, shard: int, account_id: str) -> str:
        return f"{self.tag(shard)}:a:{account_id}"

    def account_key(self, account_id: str) -> str:
        return self.account(self.shard_of(account_id), account_id)

    def account_prefix(self, shard: int) -> str:
        return f"{self.tag(shard)}:a:"

    def hold(self, shard: int, hold_id: str) -> str:
        """A hold's record: ``shard`` is its ACCOUNT's shard."""
        return f"{self.tag(shard)}:h:{hold_id}"

    def hold_expiries(self, shard: int) -> str:
        return f"{self.tag(shard)}:hexp"

    def hold_routes(self, shard: int) -> str:
        """Hold id -> account id; ``shard`` is the HOLD id's shard (``shard_of(hold_id)``)."""
        return f"{self.tag(shard)}:hroute"

    @property
    def rebuilding(self) -> str:
        return f"{self.namespace}:rebuilding"

    @property
    def pattern(self) -> str:
        """Matches every key tally owns in this namespace (for SCAN, never KEYS)."""
        return f"{self.namespace}:*"

    def epoch_value(self, epoch_id: str) -> str:
        """The epoch key's value binds the epoch id to the shard count: a client configured with
        another shard count sees ``store_lost`` instead of looking in the wrong shard."""
        return f"{epoch_id}/{self.shards}"

    def journals(self) -> list[str]:
        return [self.journal(s) for s in range(self.shards)]
