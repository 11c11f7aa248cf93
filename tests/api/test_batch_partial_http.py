"""A batch the store answered for part of only (one shard's dataset lost, the others serving:
a Redis Cluster shard restarted empty, made here on one primary by removing one logical shard's
epoch key) gets one answer per item: decided items their outcome, the lost shard's items
``refused``/``store_lost``. Before, the whole batch was ``503 store_lost`` ("nothing was
written") although the other shards' debits were applied (the cluster lab's
shard-restarted-empty counted 4-41 such refused-but-applied debits per run)."""

from __future__ import annotations

import itertools

from tally.store.keys import SHARDS_DEFAULT, KeyLayout
from tests.serve.harness import Served

LAYOUT = KeyLayout("tally", SHARDS_DEFAULT)


def _accounts_on_two_shards() -> tuple[str, str]:
    names = (f"acct-{n}" for n in itertools.count())
    first = next(names)
    other = next(a for a in names if LAYOUT.shard_of(a) != LAYOUT.shard_of(first))
    return first, other


def test_a_batch_half_on_a_lost_shard_answers_each_item(served: Served) -> None:
    kept, lost = _accounts_on_two_shards()
    with served.client() as api:
        for acct in (kept, lost):
            assert api.post("/v1/accounts", json={"id": acct, "currency": "USD"}).status_code == 201
            credit = {"transfer_id": f"fund-{acct}", "account_id": acct, "amount_minor": 100}
            assert api.post("/v1/credits", json={**credit, "currency": "USD"}).status_code == 201
        # ids in their account's own shard, so each debit is one script call on one shard
        ids = {
            acct: next(
                f"t-{n}"
                for n in itertools.count()
                if LAYOUT.shard_of(f"t-{n}") == LAYOUT.shard_of(acct)
            )
            for acct in (kept, lost)
        }
        epoch_key = LAYOUT.epoch(LAYOUT.shard_of(lost))
        with served.redis() as store:
            epoch = store.get(epoch_key)
            assert epoch is not None and store.delete(epoch_key) == 1
        debits = [
            {"transfer_id": ids[kept], "account_id": kept, "amount_minor": 7},
            {"transfer_id": ids[lost], "account_id": lost, "amount_minor": 7},
        ]
        answer = api.post("/v1/debits/batch", json={"debits": debits})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["ok"], body["refused"], body["unknown"]) == (1, 1, 0)
        first, second = body["results"]
        assert (first["status"], first["result"], first["balance_minor"]) == ("ok", "ok", 93)
        assert (second["status"], second["result"], second["result_code"]) == (
            "refused",
            "store_lost",
            14,
        )
        assert api.get(f"/v1/accounts/{kept}").json()["balance_minor"] == 93
        # a batch wholly on the lost shard is still the 503 problem
        whole = api.post("/v1/debits/batch", json={"debits": debits[1:]})
        assert whole.status_code == 503 and whole.json()["code"] == "store_lost"
        # what the answer said is what happened: with the shard back, the refused debit is
        # applied for the first time (not a replay), the decided one replays its first outcome
        with served.redis() as store:
            store.set(epoch_key, epoch)
        again = api.post("/v1/debits/batch", json={"debits": debits})
        assert again.status_code == 200, again.text
        assert [(r["status"], r["balance_minor"]) for r in again.json()["results"]] == [
            ("ok", 93),
            ("ok", 93),
        ]
        assert api.get(f"/v1/accounts/{lost}").json()["balance_minor"] == 93
        single = api.post("/v1/debits", json=debits[1])
        assert single.headers.get("Idempotent-Replayed") == "true"
        assert single.json() == {**again.json()["results"][1]}
