"""Figures about the subject's processes and the caller, read from a finished run's files (the
monitor's samples, the gateway's records, the timeline's events, the client history): what the
serve scenarios state they must show. Pure reads, like the checker: never tally's own view."""

from __future__ import annotations

from typing import Any

from tally.lab.history import Operation

PRIMARY = "r1"


def first_failover_ms(monitor: list[dict[str, Any]]) -> int | None:
    """When the monitor first saw a node other than the original primary as master."""
    for sample in monitor:
        if sample.get("kind") != "nodes":
            continue
        nodes = sample.get("nodes") or {}
        if any(n != PRIMARY and (s or {}).get("role") == "master" for n, s in nodes.items()):
            return int(sample["t_ms"])
    return None


def charges_after(gateway: list[dict[str, Any]], since_ms: int) -> int:
    return sum(
        1
        for r in gateway
        if r.get("kind") == "charge"
        and r.get("status") == "succeeded"
        and int(r.get("created_ms", 0)) > since_ms
    )


def ids_retried_through_other_dc(history: list[Operation]) -> int:
    """Transfer ids whose attempts went through more than one data center's entry point."""
    via: dict[str, set[str]] = {}
    for op in history:
        tid, entry = op.value.get("id"), op.value.get("via")
        if tid and entry:
            via.setdefault(str(tid), set()).add(str(entry))
    return sum(1 for entries in via.values() if len(entries) > 1)


def lab_figures(
    *,
    monitor: list[dict[str, Any]],
    gateway: list[dict[str, Any]],
    events: list[dict[str, Any]],
    history: list[Operation],
    serve_starts: dict[str, int],
) -> dict[str, Any]:
    failover = first_failover_ms(monitor)
    ok_events = [e for e in events if e.get("ok")]
    return {
        "charges_after_failover": None if failover is None else charges_after(gateway, failover),
        "serve_restarts": sum(max(0, n - 1) for n in serve_starts.values()),
        "serve_killed_mid_charge": sum(
            1
            for e in ok_events
            if e.get("action") == "serve_kill_mid_charge" and "awaited" in str(e.get("detail"))
        ),
        "ids_retried_through_other_dc": ids_retried_through_other_dc(history),
        "accounts_closed": sum(
            1
            for e in ok_events
            if e.get("action") == "close_account" and "closed: 200" in str(e.get("detail"))
        ),
    }
