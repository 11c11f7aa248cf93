"""Which primary the engine uses when the Sentinels disagree (``tally.store.discovery``).

Found by ``tally lab chaos --seed 2``: r1 (the primary) was killed while dc2 was cut off, and
started again while Sentinel was promoting r3. For about a second r1 answered ROLE master and
the Sentinels still named it (the promotion was not confirmed yet); a replica that still
followed r1 could then acknowledge writes the failover discards, and a drainer fenced by that
replica could settle them in the ledger. The locator used to take the first Sentinel's
answer. The Sentinels here are fakes at the ``_execute`` seam (no server): what each one
answers is the point, and a real failover cannot be stopped at that second on purpose.

Without the fix (the first-answer rule, checked by running these against the old
``_ask_sentinels``): the first test got ('127.0.1.1', 7001), the old primary, instead of an
error; the second got the cut-off Sentinel's old primary."""

from __future__ import annotations

from typing import Any

import pytest

from tally.errors import StoreUnavailable
from tally.store import discovery
from tally.store.discovery import PrimaryLocator, SentinelAnswer, SentinelTarget, choose_primary

OLD, NEW = ("127.0.1.1", 7001), ("127.0.3.1", 7003)
SENTINELS = ((("127.0.1.1", 26001)), ("127.0.2.1", 26002), ("127.0.3.1", 26003))


def _state(address: tuple[str, int], flags: str, epoch: int) -> list[bytes]:
    """``SENTINEL MASTER`` as RESP2 answers it: a flat list of names and values."""
    return [b"name", b"lab", b"ip", address[0].encode(), b"port", str(address[1]).encode(),
            b"flags", flags.encode(), b"config-epoch", str(epoch).encode()]  # fmt: skip


def _locator(monkeypatch: pytest.MonkeyPatch, views: dict[int, Any]) -> PrimaryLocator:
    """A locator whose Sentinels (by port) answer ``views[port]``: (named, state) or an error."""

    def fake_execute(client: Any, *args: object) -> Any:
        port = client.connection_pool.connection_kwargs["port"]
        view = views[port]
        if isinstance(view, Exception):
            raise view
        named, state = view
        if args[1] == "GET-MASTER-ADDR-BY-NAME":
            return [named[0].encode(), str(named[1]).encode()]
        return state

    monkeypatch.setattr(discovery, "_execute", fake_execute)
    return PrimaryLocator(SentinelTarget(SENTINELS, "lab"))


def test_a_sentinel_failing_over_the_named_primary_means_no_primary_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    views = {
        26001: (OLD, _state(OLD, "master", 1)),  # not the leader: knows nothing yet
        26002: (OLD, _state(OLD, "master", 1)),
        26003: (OLD, _state(OLD, "master,failover_in_progress", 1)),  # the leader, promoting
    }
    locator = _locator(monkeypatch, views)
    with pytest.raises(StoreUnavailable, match=r"failing over 127\.0\.1\.1:7001"):
        locator._ask_sentinels(locator.target)  # type: ignore[arg-type]


def test_a_sentinel_cut_off_during_a_failover_is_outvoted_by_the_newer_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    views = {
        26001: (OLD, _state(OLD, "master", 1)),  # cut off while the others failed over
        26002: (NEW, _state(NEW, "master", 2)),
        26003: ConnectionError("unreachable"),
    }
    locator = _locator(monkeypatch, views)
    assert locator._ask_sentinels(locator.target) == NEW  # type: ignore[arg-type]


def test_a_confirmed_promotion_is_used_before_the_switch_is_announced() -> None:
    """GET-MASTER-ADDR-BY-NAME names the promoted replica once the leader confirmed it; the
    other Sentinels still hold the old primary under the same epoch."""
    leader = SentinelAnswer("s3", NEW, OLD, frozenset({"master", "failover_in_progress"}), 1)
    other = SentinelAnswer("s1", OLD, OLD, frozenset({"master"}), 1)
    assert choose_primary([other, leader], []) == NEW


def test_agreeing_sentinels_name_their_primary_and_none_answering_is_unavailable() -> None:
    a = SentinelAnswer.parse("s1", [b"127.0.1.1", b"7001"], _state(OLD, "master", 3))
    assert (a.named, a.configured, a.config_epoch, a.failing_over) == (OLD, OLD, 3, False)
    assert choose_primary([a, a], []) == OLD
    with pytest.raises(StoreUnavailable, match="no Sentinel named a primary: s1: down"):
        choose_primary([], ["s1: down"])
