"""A stand-in for the store's Lua scripts, writing Redis data in the documented format
(docs/contracts.md): account hashes, tx records and journal entries, atomically per call."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from tally.domain.accounts import Account
from tally.ledger.models import Epoch
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout

# ARGV: tag, expected epoch value, epoch id, then 6 per transfer: id, k, account, amount, currency,
# the tx hash key (the shard of the transfer ID, contracts.md)
APPLY_LUA = r"""
local tag, want, epoch_id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', tag .. ':epoch') ~= want then return {'store_lost'} end
local t = redis.call('TIME')
local ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out, lines = {}, {}
for b = 4, #ARGV, 6 do
  local id, k, acct, amt, cur = ARGV[b], ARGV[b+1], ARGV[b+2], ARGV[b+3], ARGV[b+4]
  local txkey = ARGV[b+5]
  local rec = redis.call('HGET', txkey, id)
  if rec then
    table.insert(out, 'replay:' .. rec)
  else
    local akey = tag .. ':a:' .. acct
    local a = redis.call('HMGET', akey, 'cur', 'st', 'lim', 'bal')
    local code, bal = 0, ''
    if not a[1] then code = 8
    elseif a[1] ~= cur then code = 10; bal = a[4]
    elseif (k == 'd' and a[2] ~= 'a') or a[2] == 'c' then code = 9; bal = a[4]
    else
      local b0, n = tonumber(a[4]), tonumber(amt)
      if k == 'd' and b0 - n < -tonumber(a[3]) then code = 7; bal = a[4]
      else
        if k == 'd' then b0 = b0 - n else b0 = b0 + n end
        bal = string.format('%d', b0)
        redis.call('HSET', akey, 'bal', bal)
      end
    end
    local r = k .. '|' .. acct .. '|' .. amt .. '|' .. cur .. '|' .. code .. '|' .. bal
    redis.call('HSET', txkey, id, r)
    table.insert(lines, id .. '|' .. r .. '|' .. ts)
    table.insert(out, tostring(code))
  end
end
if #lines > 0 then
  redis.call('XADD', tag .. ':journal', '*', 'e', epoch_id, 'd', table.concat(lines, '\n'))
end
return out
"""


@dataclass
class FakeStoreWriter:
    client: redis.Redis
    layout: KeyLayout
    epoch_id: str

    def account(
        self,
        account_id: str,
        currency: str = "USD",
        *,
        limit_minor: int = 0,
        status: str = "a",
        balance_minor: int = 0,
    ) -> None:
        self.client.hset(
            self.layout.account_key(account_id),
            mapping={"cur": currency, "st": status, "lim": limit_minor, "bal": balance_minor},
        )

    def apply(self, transfers: Sequence[tuple[str, str, str, int, str]]) -> list[str]:
        """(id, 'd'|'c', account, amount, currency) -> results in order (code or 'replay:...')."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(transfers):
            by_shard[self.layout.shard_of(t[2])].append(i)
        results: list[str] = [""] * len(transfers)
        for shard, idx in by_shard.items():
            args: list[str | int] = [
                self.layout.tag(shard),
                self.layout.epoch_value(self.epoch_id),
                self.epoch_id,
            ]
            for i in idx:
                args += [*transfers[i], self.layout.tx_for(transfers[i][0])]
            out = self.client.eval(APPLY_LUA, 0, *args)
            if out == [b"store_lost"]:
                raise RuntimeError("store_lost")
            for i, r in zip(idx, out, strict=True):
                results[i] = r.decode() if isinstance(r, bytes) else str(r)
        return results

    def debit(self, tid: str, account: str, amount: int, currency: str = "USD") -> str:
        return self.apply([(tid, "d", account, amount, currency)])[0]

    def credit(self, tid: str, account: str, amount: int, currency: str = "USD") -> str:
        return self.apply([(tid, "c", account, amount, currency)])[0]


def prepare_store(client: redis.Redis, layout: KeyLayout, epoch_id: str) -> None:
    """What init does on the Redis side: streams + drainer group, then the epoch keys."""
    for key in layout.journals():
        client.xgroup_create(key, "drainer", id="0", mkstream=True)
    for shard in range(layout.shards):
        client.set(layout.epoch(shard), layout.epoch_value(epoch_id))


def journal_lines(client: redis.Redis, layout: KeyLayout) -> list[str]:
    out = []
    for key in layout.journals():
        for _id, fields in client.xrange(key):
            out += fields[b"d"].decode().split("\n")
    return out


def open_deployment(
    client: redis.Redis, layout: KeyLayout, ledger: SqlLedger, accounts: Sequence[str]
) -> tuple[Epoch, FakeStoreWriter]:
    """A new epoch in the ledger and the store, and ``accounts`` in both (limit 100)."""
    epoch = ledger.init_epoch(layout.namespace, layout.shards)
    prepare_store(client, layout, epoch.epoch_id)
    writer = FakeStoreWriter(client, layout, epoch.epoch_id)
    for account_id in accounts:
        ledger.create_account(Account(account_id, "USD", 100))
        writer.account(account_id, limit_minor=100)
    return epoch, writer
