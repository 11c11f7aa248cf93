"""The subject of a lab run: ``tally serve`` processes in dc1 and dc2 (``tally.lab.serve``),
driven over HTTP the way a caller and an operator drive them.

Answers become history completions honestly:

* 2xx: ``ok`` (a 202 credit is ``ok`` with result ``pending``: durable, applied later);
* a transfer refusal (402/404/409/422 whose problem body carries the transfer's ``result``):
  ``ok`` with that result (the service decided; a replay answers the same);
* any other 4xx, or a 503 whose code says nothing was applied (``store_read_only``,
  ``store_lost``, ``not_ready``...): ``fail``;
* a timeout, a connection error, a 5xx ``outcome_unknown`` or any other 5xx: ``info`` (it may
  have been applied; the caller retries the SAME transfer id, through the other data center).

Operator actions go through the admin API a real operator uses (freeze, rebuild, remediate,
drain), to the first serve that answers; the processes themselves are part of the fault
surface (kill -9, restart with the same command line, SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tally.errors import InfrastructureError, ProcessError
from tally.lab.billing import CURRENCY, AccountSpec, Completion
from tally.lab.rig import Rig
from tally.lab.serve import ADMIN_KEY, INITIALISED, ServeProcess
from tally.ops.node import free_port

#: the caller's patience: a serve stopped past this is an unknown outcome, retried elsewhere
CLIENT_TIMEOUT_S = 3.0
OPERATOR_TIMEOUT_S = 60.0
SERVE_DCS = ("dc1", "dc2")
DAILY_CAP_MINOR = 10_000_000
DECLINES_MAX = 2
SETTLE_S_MAX = 90.0
OPEN_WORKERS = 8
OPEN_ATTEMPTS = 5  # a set-up call with an unknown outcome is retried as it is, this many times
OPEN_RETRY_PAUSE_S = 0.5
SETTLE_PACE_S = 0.5
#: the final drain: admin drain calls until one settles nothing unfenced, at most this long/many
SETTLE_DRAIN_S_MAX = 30.0
SETTLE_DRAIN_CALLS_MAX = 120
PAGES_MAX = 200
#: the lab's supervisor (what systemd's Restart=on-failure is to an operator): launches of a serve
#: that exited on its own, at most this many per serve and run
SUPERVISOR_STARTS_MAX = 20
#: 503 codes that say the request was refused before anything was written
NOT_APPLIED = frozenset({"store_read_only", "store_lost", "store_loading", "not_ready",
                         "store_not_enough_replicas", "store_backpressure", "shutting_down"})  # fmt: skip


def classify(response: httpx.Response) -> Completion:
    """An HTTP answer as a history completion (module doc)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {"body": body}
    status = response.status_code
    if 200 <= status < 300:
        value = {"result": body.get("result", "ok"), "http": status}
        if "balance_minor" in body:
            value["balance_minor"] = body["balance_minor"]
        return "ok", value
    code = str(body.get("code", ""))
    value = {"http": status, "code": code, "message": str(body.get("detail", ""))[:200]}
    if 400 <= status < 500:
        if "result" in body:  # the service decided on this transfer
            return "ok", {**value, "result": body["result"]}
        return "fail", value
    if status == 503 and code in NOT_APPLIED:
        return "fail", value
    return "info", value


def _rule(a: AccountSpec) -> dict[str, Any]:
    return {"card_id": a.card, "threshold_minor": a.threshold_minor, "target_minor": a.target_minor,
            "daily_cap_minor": DAILY_CAP_MINOR, "declines_max": DECLINES_MAX}  # fmt: skip


def _unknown(exc: BaseException) -> Completion:
    return "info", {"error": type(exc).__name__, "message": str(exc)[:200]}


class ServeBilling:
    name = "tally"
    entry_points: tuple[str, ...] = SERVE_DCS

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        redis_url = rig.redis_url()
        self.serves: list[ServeProcess] = []
        for dc in SERVE_DCS:
            host = rig.cluster.dc_address(dc)
            self.serves.append(ServeProcess(
                name=f"serve-{dc}", dc=dc, host=host, port=free_port(host),
                home=rig.out_dir / "serve" / dc, redis_url=redis_url,
                ledger_url=rig.serve_ledger_url(dc), gateway_url=rig.serve_gateway_url(dc),
                source_address=host, skip_preflight=not rig.hardened,
            ))  # fmt: skip
        self.key = ""
        self._local = threading.local()
        self._clients: list[httpx.Client] = []  # every thread's client, closed by close()
        self.operator_log: list[dict[str, Any]] = []
        self.exit_codes: dict[str, int | None] = {}
        self._stopped: set[str] = set()  # data centers whose serve a fault stopped on purpose
        self.supervisor_starts: dict[str, int] = {s.name: 0 for s in self.serves}

    # -- processes -----------------------------------------------------------------------------
    def serve(self, dc: str) -> ServeProcess:
        for s in self.serves:
            if s.dc == dc:
                return s
        raise KeyError(f"no serve in {dc!r}: the lab runs {', '.join(SERVE_DCS)}")

    def start(self) -> None:
        """dc1 first: it initialises the deployment and prints the admin key; the others are
        launched as soon as the deployment is initialised (two first starts would both
        initialise; their start-up then overlaps the rest of dc1's), and all answer."""
        first = self.serves[0]
        first.launch()
        if not first.wait_printed(INITIALISED):  # a run's ledger and store are always new
            first.wait_ready()  # raises with the reason when it exited
            raise ProcessError(f"{first.name} initialised no deployment; see {first.log_path}")
        for other in self.serves[1:]:
            other.launch()
        first.wait_printed(ADMIN_KEY)
        key = first.admin_key()
        if key is None:
            first.wait_ready()  # raises with the reason when it exited
            raise ProcessError(f"{first.name} printed no admin key; see {first.log_path}")
        self.key = key
        for serve in self.serves:
            serve.wait_ready()

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=CLIENT_TIMEOUT_S, trust_env=False,
                headers={"Authorization": f"Bearer {self.key}"},
            )  # fmt: skip
            self._local.client = client
            self._all_clients().append(client)
        return client

    def _all_clients(self) -> list[httpx.Client]:
        return self._clients

    def _call(self, via: int, method: str, path: str, body: Any = None,
              timeout: float = CLIENT_TIMEOUT_S) -> httpx.Response:  # fmt: skip
        serve = self.serves[via % len(self.serves)]
        return self._client().request(method, serve.url + path, json=body, timeout=timeout)

    # -- the caller ----------------------------------------------------------------------------
    def open_accounts(self, accounts: list[AccountSpec]) -> None:
        """Start the serves, then each account through the API as a client would (create, fund,
        give it its card and rule), ``OPEN_WORKERS`` accounts at a time."""
        self.start()
        with ThreadPoolExecutor(OPEN_WORKERS, thread_name_prefix="lab-open") as pool:
            for done in pool.map(self._open_one, accounts):
                if done is not None:
                    raise ProcessError(done)

    def _open_one(self, a: AccountSpec) -> str | None:
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/v1/accounts", {"id": a.id, "currency": CURRENCY}),
            ("PUT", f"/v1/accounts/{a.id}/recharge-rule", _rule(a)),
        ]
        if a.initial_minor:
            calls.insert(1, ("POST", "/v1/credits", {
                "transfer_id": f"seed-{a.id}", "account_id": a.id,
                "amount_minor": a.initial_minor, "currency": CURRENCY}))  # fmt: skip
        for method, path, body in calls:
            failed = self._set_up(method, path, body)
            if failed is not None:
                return failed
        return None

    def _set_up(self, method: str, path: str, body: dict[str, Any]) -> str | None:
        """One set-up call as a caller makes it: an unknown outcome (a 5xx, a broken
        connection: on a loaded machine a replica's WAIT can outlast its timeout) is retried
        as it is, at most ``OPEN_ATTEMPTS`` times; a retried create that finds the account
        there was the first attempt's. None when done, else why not."""
        last = "not tried"
        for attempt in range(OPEN_ATTEMPTS):
            try:
                r = self._call(attempt, method, path, body, timeout=OPERATOR_TIMEOUT_S)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(OPEN_RETRY_PAUSE_S)
                continue
            if r.status_code < 300 or (attempt and r.status_code == 409 and path == "/v1/accounts"):
                return None
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code < 500:
                break
            time.sleep(OPEN_RETRY_PAUSE_S)
        return f"{method} {path}: {last}"

    def debit(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion:
        body = {"transfer_id": tid, "account_id": account, "amount_minor": amount_minor}
        try:
            return classify(self._call(via, "POST", "/v1/debits", body))
        except httpx.HTTPError as exc:
            return _unknown(exc)

    def debit_batch(self, items: list[tuple[str, str, int]], via: int = 0) -> list[Completion]:
        body = {"debits": [{"transfer_id": t, "account_id": a, "amount_minor": m}
                           for t, a, m in items]}  # fmt: skip
        try:
            r = self._call(via, "POST", "/v1/debits/batch", body)
        except httpx.HTTPError as exc:
            return [_unknown(exc)] * len(items)
        if r.status_code != 200:
            return [classify(r)] * len(items)
        results = r.json().get("results") or []
        if len(results) != len(items):
            return [("info", {"http": 200, "message": "batch answer of another length"})] * len(
                items
            )
        out: list[Completion] = []
        for item in results:
            value = {"result": item.get("result"), "balance_minor": item.get("balance_minor"),
                     "http": 200}  # fmt: skip
            if item.get("status") == "unknown":  # the store failed before deciding it: retry
                out.append(("info", {**value, "code": item.get("result")}))
            elif item.get("result") in NOT_APPLIED:  # refused by a lost shard: nothing written
                out.append(("fail", {**value, "code": item.get("result")}))
            else:
                out.append(("ok", value))
        return out

    def top_up(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion:
        body = {"transfer_id": tid, "account_id": account, "amount_minor": amount_minor,
                "currency": CURRENCY}  # fmt: skip
        try:
            return classify(self._call(via, "POST", "/v1/credits", body))
        except httpx.HTTPError as exc:
            return _unknown(exc)

    def set_rule(self, account: AccountSpec, via: int = 0) -> Completion:
        try:
            return classify(self._call(via, "PUT", f"/v1/accounts/{account.id}/recharge-rule",
                                       _rule(account)))  # fmt: skip
        except httpx.HTTPError as exc:
            return _unknown(exc)

    def read(self, account: str, via: int = 0) -> Completion:
        try:
            return classify(self._call(via, "GET", f"/v1/accounts/{account}"))
        except httpx.HTTPError as exc:
            return _unknown(exc)

    # -- holds (sessions whose cost is known at the end) -----------------------------------------
    holds = True

    def hold(self, hid: str, account: str, amount_minor: int, expires_in_s: int,
             via: int = 0) -> Completion:  # fmt: skip
        body = {"hold_id": hid, "account_id": account, "amount_minor": amount_minor,
                "expires_in_s": expires_in_s}  # fmt: skip
        return self._hold_call(via, "POST", "/v1/holds", body)

    def capture(self, hid: str, amount_minor: int, via: int = 0) -> Completion:
        return self._hold_call(via, "POST", f"/v1/holds/{hid}/capture",
                               {"amount_minor": amount_minor})  # fmt: skip

    def void(self, hid: str, via: int = 0) -> Completion:
        return self._hold_call(via, "POST", f"/v1/holds/{hid}/void", None)

    def _hold_call(self, via: int, method: str, path: str, body: Any) -> Completion:
        try:
            r = self._call(via, method, path, body)
        except httpx.HTTPError as exc:
            return _unknown(exc)
        type_, value = classify(r)
        if type_ == "ok" and isinstance(answer := r.json(), dict):
            value["status"] = answer.get("status")  # the hold's state as the service answered
        return type_, value

    def start_background(self) -> None:
        """The serve processes run their own drainer, credit applier and recharge completer."""

    def stop_background(self) -> None:
        """Nothing runs here: see ``settle``."""

    # -- the operator --------------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """To the first serve that answers (dc1, then dc2)."""
        last: Exception | None = None
        for via in range(len(self.serves)):
            if not self.serves[via].is_running() or self.serves[via].paused:
                continue
            try:
                r = self._call(via, method, path, body, timeout=OPERATOR_TIMEOUT_S)
            except httpx.HTTPError as exc:
                last = exc
                continue
            try:
                return r.status_code, r.json()
            except ValueError:
                return r.status_code, r.text[:300]
        raise InfrastructureError(f"no serve answered {method} {path}: {last}")

    def operator(self, action: str) -> str:
        if action == "freeze":
            status, body = self._admin("POST", "/v1/admin/freeze",
                                       {"on": True, "reason": "lab: mitigation in progress"})  # fmt: skip
            return f"freeze: {status}" + ("" if status == 200 else f" {body}")
        if action == "unfreeze":
            status, body = self._admin("POST", "/v1/admin/freeze",
                                       {"on": False, "reason": "lab: mitigation done"})  # fmt: skip
            return f"unfreeze: {status}" + ("" if status == 200 else f" {body}")
        if action == "rebuild":
            status, body = self._admin("POST", "/v1/admin/rebuild", {"force": False})
            if status == 200:
                return f"rebuilt: {json.dumps(body, default=str)[:300]}"
            return f"no rebuild ({status} {body.get('code') if isinstance(body, dict) else body})"
        if action == "remediate":
            self._admin("POST", "/v1/admin/drain")
            status, body = self._admin("POST", "/v1/admin/remediate", {"apply": True})
            return f"remediation {status}: {json.dumps(body, default=str)[:300]}"
        return f"{action}: nothing to do for tally"

    def supervise(self) -> list[str]:
        """Launch again a serve that exited on its own (not one a fault killed): a serve
        started while it cannot reach the primary exits at once (``store_unavailable``), and
        an operator's supervisor starts it again. Called from the run's main thread between
        steps; bounded by ``SUPERVISOR_STARTS_MAX`` per serve."""
        launched = []
        for serve in self.serves:
            if serve.dc in self._stopped or serve.process is None or serve.is_running():
                continue
            if self.supervisor_starts[serve.name] >= SUPERVISOR_STARTS_MAX:
                continue
            serve.exits.append(int(serve.process.returncode))
            serve.process = None
            serve.launch()
            self.supervisor_starts[serve.name] += 1
            launched.append(serve.name)
        return launched

    def serve_action(self, action: str, dc: str) -> str:
        serve = self.serve(dc)
        self._stopped.discard(dc)
        if action == "kill":
            self._stopped.add(dc)
            pid = serve.pid()
            serve.kill()
            return f"{serve.name} (pid {pid}) SIGKILLed"
        if action == "start":
            if serve.is_running():
                return f"{serve.name} already running"
            serve.start()
            return f"{serve.name} started again with the same command line (pid {serve.pid()})"
        if action == "launch":  # chaos: the next steps keep their times on a loaded machine
            if serve.is_running():
                return f"{serve.name} already running"
            serve.launch()
            return (f"{serve.name} launched again with the same command line (pid {serve.pid()}), "
                    "not waiting for it to answer")  # fmt: skip
        if action == "pause":
            serve.pause()
            return f"{serve.name} SIGSTOPped"
        if action == "resume":
            serve.resume()
            return f"{serve.name} SIGCONTed"
        raise ValueError(f"unknown serve action {action!r}")

    def close_account(self, account: str) -> str:
        """Close ``account``; ``mid-recharge``: the account of a recharge still unfinished now
        (the first the API lists), so the close lands between its charge and its credit."""
        if account == "mid-recharge":
            found = self._first_unfinished_account()
            if found is None:
                return "no recharge in flight: nothing closed"
            account = found
        status, body = self._admin("POST", f"/v1/accounts/{account}/close")
        state = body.get("status") if isinstance(body, dict) else body
        return f"account {account} closed: {status} {state}"

    def _first_unfinished_account(self) -> str | None:
        after = None
        for _ in range(PAGES_MAX):
            path = "/v1/recharges?limit=500" + (f"&after={after}" if after else "")
            status, body = self._admin("GET", path)
            if status != 200 or not isinstance(body, dict):
                return None
            for rc in body.get("items") or []:
                if not rc.get("finished"):
                    return str(rc["account_id"])
            after = body.get("next_cursor")
            if not after:
                return None
        return None

    # -- the end -------------------------------------------------------------------------------
    def _unfinished(self) -> int | None:
        """Recharges not yet finished, as the API lists them (None: no serve answered)."""
        unfinished, after = 0, None
        for _ in range(PAGES_MAX):
            path = "/v1/recharges?limit=500" + (f"&after={after}" if after else "")
            try:
                status, body = self._admin("GET", path)
            except InfrastructureError:
                return None
            if status != 200 or not isinstance(body, dict):
                return None
            items = body.get("items") or []
            unfinished += sum(1 for rc in items if not rc.get("finished"))
            after = body.get("next_cursor")
            if not after:
                return unfinished
        return unfinished

    def settle(self) -> dict[str, Any]:
        """Every serve running again, their completers given time to finish every recharge and
        their drainers the journal (bounded), then SIGINT to each: the clean shutdown drains
        once more; each exit code is kept (0 expected)."""
        for serve in self.serves:
            serve.resume()
            if not serve.is_running():
                with contextlib.suppress(Exception):
                    serve.start()
        deadline = time.monotonic() + SETTLE_S_MAX
        unfinished: int | None = None
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            unfinished = self._unfinished()
            if unfinished == 0:
                break
            time.sleep(SETTLE_PACE_S)
        waited = time.monotonic()
        drain = self._drain_until_settled(waited + SETTLE_DRAIN_S_MAX)
        drained = time.monotonic()
        for serve in self.serves:  # both at once: each drains on its way out
            serve.send_interrupt()
        for serve in self.serves:
            self.exit_codes[serve.name] = serve.wait_exit()
        return {
            "rounds": rounds,
            # where the settling's time goes: recharges, the admin drain, the serves' exits
            "seconds": {
                "recharges": round(waited - deadline + SETTLE_S_MAX, 1),
                "drain": round(drained - waited, 1),
                "exit": round(time.monotonic() - drained, 1),
            },
            "drain": drain,
            "supervisor_starts": dict(self.supervisor_starts),
            "unfinished_recharges": unfinished,
            "serve_exit_codes": dict(self.exit_codes),
            "serve_starts": {s.name: s.starts for s in self.serves},
            "serve_clean_exit": all(code == 0 for code in self.exit_codes.values()),
        }

    def _drain_until_settled(self, deadline: float) -> dict[str, Any]:
        """``POST /v1/admin/drain`` through EACH serve (each drains what its own consumer
        holds) until a pass where every one settles nothing and its fence held nothing back,
        or the deadline. One call stops at its first round that settles nothing, and a FENCED
        round settles nothing: a replica still catching up after the heal (more than the
        fence's 500 ms on a loaded machine) leaves entries in the journal, which the checker
        then sees as Redis ahead of the ledger. ``{calls, entries, settled}``: ``settled``
        False when the deadline came first (the undrained tail then shows as drift)."""
        calls = entries = 0
        fenced: dict[int, int] = {}
        while calls < SETTLE_DRAIN_CALLS_MAX:
            quiet = True
            for via in range(len(self.serves)):
                calls += 1
                done, now_fenced = self._drain_through(via)
                entries += max(done, 0)
                quiet &= done == 0 and fenced.get(via) == now_fenced
                fenced[via] = now_fenced
            if quiet:
                return {"calls": calls, "entries": entries, "settled": True}
            if time.monotonic() >= deadline:
                break
            time.sleep(SETTLE_PACE_S)
        return {"calls": calls, "entries": entries, "settled": False}

    def _drain_through(self, via: int) -> tuple[int, int]:
        """(entries settled, the drainer's fenced rounds so far) of one admin drain through
        serve ``via``; (-1, -1) when it did not answer one."""
        try:
            r = self._call(via, "POST", "/v1/admin/drain", timeout=OPERATOR_TIMEOUT_S)
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return -1, -1
        stats = body.get("stats") if isinstance(body, dict) else None
        if r.status_code != 200 or not isinstance(stats, dict):
            return -1, -1
        return int(body.get("entries") or 0), int(stats.get("fenced") or 0)

    def close(self) -> None:
        for client in self._all_clients():
            with contextlib.suppress(Exception):
                client.close()
        for serve in self.serves:
            if serve.is_running():
                serve.kill()

    def background_errors(self) -> dict[str, Any]:
        return {s.name: {"exits": s.exits, "starts": s.starts} for s in self.serves}
