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
from tally.lab.serve import ADMIN_KEY, ServeProcess
from tally.ops.node import free_port

#: the caller's patience: a serve stopped past this is an unknown outcome, retried elsewhere
CLIENT_TIMEOUT_S = 3.0
OPERATOR_TIMEOUT_S = 60.0
SERVE_DCS = ("dc1", "dc2")
DAILY_CAP_MINOR = 10_000_000
DECLINES_MAX = 2
SETTLE_S_MAX = 90.0
OPEN_WORKERS = 8
SETTLE_PACE_S = 0.5
PAGES_MAX = 200
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

    # -- processes -----------------------------------------------------------------------------
    def serve(self, dc: str) -> ServeProcess:
        for s in self.serves:
            if s.dc == dc:
                return s
        raise KeyError(f"no serve in {dc!r}: the lab runs {', '.join(SERVE_DCS)}")

    def start(self) -> None:
        """dc1 first: it initialises the deployment and prints the admin key; the others are
        launched as soon as it has (two first starts would both initialise), and all answer."""
        first = self.serves[0]
        first.launch()
        first.wait_printed(ADMIN_KEY)
        key = first.admin_key()
        if key is None:
            first.wait_ready()  # raises with the reason when it exited
            raise ProcessError(f"{first.name} printed no admin key; see {first.log_path}")
        self.key = key
        for other in self.serves[1:]:
            other.launch()
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
            r = self._call(0, method, path, body, timeout=OPERATOR_TIMEOUT_S)
            if r.status_code >= 300:
                return f"{method} {path}: {r.status_code} {r.text[:200]}"
        return None

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

    def serve_action(self, action: str, dc: str) -> str:
        serve = self.serve(dc)
        if action == "kill":
            pid = serve.pid()
            serve.kill()
            return f"{serve.name} (pid {pid}) SIGKILLed"
        if action == "start":
            if serve.is_running():
                return f"{serve.name} already running"
            serve.start()
            return f"{serve.name} started again with the same command line (pid {serve.pid()})"
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
        with contextlib.suppress(InfrastructureError):
            self._admin("POST", "/v1/admin/drain")
        for serve in self.serves:  # both at once: each drains on its way out
            serve.send_interrupt()
        for serve in self.serves:
            self.exit_codes[serve.name] = serve.wait_exit()
        return {
            "rounds": rounds,
            "unfinished_recharges": unfinished,
            "serve_exit_codes": dict(self.exit_codes),
            "serve_starts": {s.name: s.starts for s in self.serves},
            "serve_clean_exit": all(code == 0 for code in self.exit_codes.values()),
        }

    def close(self) -> None:
        for client in self._all_clients():
            with contextlib.suppress(Exception):
                client.close()
        for serve in self.serves:
            if serve.is_running():
                serve.kill()

    def background_errors(self) -> dict[str, Any]:
        return {s.name: {"exits": s.exits, "starts": s.starts} for s in self.serves}
