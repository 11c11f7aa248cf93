"""``tally lab run SCENARIO``, ``tally lab compare SCENARIO`` and ``tally lab chaos``: the
incident lab.

Exit codes (the lab contract in DESIGN.md): 0 every invariant held, 1 an invariant was violated,
2 a usage or setup error. Progress goes to stderr; the verdict and figures to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tally.errors import TallyError
from tally.lab import chaos, report
from tally.lab.checker import FIGURES
from tally.lab.cluster_scenarios import CLUSTER_SCENARIOS
from tally.lab.runner import BILLINGS, PROFILES, RunOptions, RunResult, run
from tally.lab.scenarios import SCENARIOS

EXIT_USAGE = 2


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _common(func: Any) -> Any:
    options = [
        click.option("--seed", type=int, default=1, show_default=True, help="Seed of every random choice."),
        click.option("--time-scale", type=float, default=1.0, show_default=True,
                     help="Multiply every timeline offset and the run's duration."),
        click.option("--accounts", type=int, default=None, help="Accounts (default 200)."),
        click.option("--rate", type=float, default=None, help="Client operations per second (default 80)."),
        click.option("--duration", type=float, default=None,
                     help="Workload seconds at time scale 1 (default: the scenario's)."),
        click.option("--dataset-mb", type=int, default=None,
                     help="Ballast on the primary in MB, what a full sync must move (default: "
                          "the scenario's, 16). The lab's WAN links carry 4 MB/s, so each 100 MB "
                          "adds about 25 s to every full sync (and to setup); a sync that outlasts "
                          "the run shows as storm_window.replicas_back false. `tally bench storm` "
                          "measures F1 on its own."),
        click.option("--ledger-url", default=None,
                     help="A PostgreSQL server (postgresql://user@host:5432/db): the run's ledger "
                          "is a fresh database there, which each serve reaches through a proxy "
                          "link (a partition can cut it), dropped once the run is checked. "
                          "Default: a SQLite file in the run directory."),
        click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _summary(result: RunResult) -> str:
    body = result.report
    if "figures" not in body:
        return f"exit {result.exit_code}: {body.get('error', 'failed')}"
    lines = [f"{body['scenario']} · profile {body['profile']} · billing {body['billing']} · "
             f"seed {body['seed']}: exit {result.exit_code} "
             f"({'every invariant held' if body['ok'] else 'INVARIANT VIOLATED'})"]  # fmt: skip
    lines += [f"  {name:40s} {body['figures'][name]}" for name in FIGURES]
    lines += [f"  {'held' if v['held'] else 'VIOLATED':8s} {k}: {v['detail']}"
              for k, v in body["invariants"].items()]  # fmt: skip
    lines.append(f"  report: {result.out / 'report.html'}")
    return "\n".join(lines)


@click.group(
    name="lab",
    help="The incident lab: real Redis processes, Sentinels, fault "
    "proxies and the gateway simulator, checked by an independent checker.\n\n"
    "Scenarios: "
    + ", ".join(SCENARIOS)
    + "; on a Redis Cluster (hardened, tally only): "
    + ", ".join(CLUSTER_SCENARIOS),
)
def lab() -> None:
    pass


@lab.command(name="run")
@click.argument("scenario")
@click.option("--profile", type=click.Choice(PROFILES), default="hardened", show_default=True)
@click.option("--billing", type=click.Choice(BILLINGS), default="tally", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default: lab-runs/SCENARIO-PROFILE-BILLING).")  # fmt: skip
@_common
def run_cmd(scenario: str, profile: str, billing: str, out: Path | None, seed: int,
            time_scale: float, accounts: int | None, rate: float | None, duration: float | None,
            dataset_mb: int | None, ledger_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Run SCENARIO once and check it: exit 0 all invariants held, 1 one violated, 2 error."""
    if scenario not in SCENARIOS and scenario not in CLUSTER_SCENARIOS:
        known = ", ".join([*SCENARIOS, *CLUSTER_SCENARIOS])
        click.echo(f"error: unknown scenario {scenario!r}; one of: {known}", err=True)
        sys.exit(EXIT_USAGE)
    out = out or Path("lab-runs") / f"{scenario}-{profile}-{billing}"
    result = run(RunOptions(scenario, profile, billing, seed, out, time_scale, accounts, rate,
                            duration, _progress, dataset_mb, ledger_url=ledger_url))  # fmt: skip
    click.echo(json.dumps(result.report, indent=2, default=str) if as_json else _summary(result))
    sys.exit(result.exit_code)


@lab.command(name="compare")
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="SCENARIO: directory for both runs and the page (default "
                   "lab-runs/compare-SCENARIO). DIR DIR...: the page (default lab-compare.html).")  # fmt: skip
@_common
def compare_cmd(targets: tuple[str, ...], out: Path | None, seed: int, time_scale: float,
                accounts: int | None, rate: float | None, duration: float | None,
                dataset_mb: int | None, ledger_url: str | None, as_json: bool) -> None:  # fmt: skip
    """`compare SCENARIO`: run it as 2013/legacy and hardened/tally and write one side-by-side
    page; exits 0 when the hardened/tally run held every invariant (the control is expected to
    fail), 2 when either run could not be set up.

    `compare DIR_A DIR_B [...]`: one page from finished run directories (figures, invariants,
    timelines on one time axis); exits 0, or 2 when a directory holds no finished run."""
    if len(targets) == 1 and targets[0] in SCENARIOS:
        _compare_scenario(targets[0], out, seed, time_scale, accounts, rate, duration,
                          dataset_mb, ledger_url, as_json)  # fmt: skip
        return
    if len(targets) < 2:
        click.echo(f"error: {targets[0]!r} is neither a scenario ({', '.join(SCENARIOS)}) nor "
                   "one of two or more run directories", err=True)  # fmt: skip
        sys.exit(EXIT_USAGE)
    try:
        runs = [(Path(t), report.read_run(Path(t))) for t in targets]
    except TallyError as exc:
        click.echo(f"error: {exc}" + (f" ({exc.hint})" if exc.hint else ""), err=True)
        sys.exit(EXIT_USAGE)
    path = report.write_compare(out or Path("lab-compare.html"), runs)
    if as_json:
        click.echo(json.dumps({"report": str(path), "runs": [str(d) for d, _ in runs]}))
    else:
        click.echo(f"side by side: {path}")


def _compare_scenario(scenario: str, out: Path | None, seed: int, time_scale: float,
                      accounts: int | None, rate: float | None, duration: float | None,
                      dataset_mb: int | None, ledger_url: str | None, as_json: bool) -> None:  # fmt: skip
    out = out or Path("lab-runs") / f"compare-{scenario}"
    results = []
    for profile, billing in (("2013", "legacy"), ("hardened", "tally")):
        _progress(f"== {scenario}: {profile} profile, {billing} billing ==")
        results.append(run(RunOptions(scenario, profile, billing, seed, out / f"{profile}-{billing}",
                                      time_scale, accounts, rate, duration, _progress,
                                      dataset_mb, ledger_url=ledger_url)))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    runs = [(r.out, r.report) for r in results]
    path = report.write_compare(out / "report.html", runs)
    combined = {"scenario": scenario, "runs": [r.report for r in results], "report": str(path)}
    (out / "report.json").write_text(json.dumps(combined, indent=2, default=str))
    if as_json:
        click.echo(json.dumps(combined, indent=2, default=str))
    else:
        click.echo("\n\n".join(_summary(r) for r in results) + f"\n\nside by side: {path}")
    if any(r.exit_code == EXIT_USAGE for r in results):
        sys.exit(EXIT_USAGE)
    sys.exit(results[1].exit_code)


@lab.command(name="chaos")
@click.option("--profile", type=click.Choice(PROFILES), default="hardened", show_default=True)
@click.option("--billing", type=click.Choice(BILLINGS), default="tally", show_default=True)
@click.option(
    "--faults-max",
    type=click.IntRange(1, chaos.FAULTS_MAX_LIMIT),
    default=2,
    show_default=True,
    help="Faults active at once.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Run this many seeds: SEED, SEED+1, ...; a summary at the end.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the runs, one per seed (default: lab-runs/chaos).")  # fmt: skip
@_common
def chaos_cmd(profile: str, billing: str, faults_max: int, runs: int, out: Path | None,
              seed: int, time_scale: float, accounts: int | None, rate: float | None,
              duration: float | None, dataset_mb: int | None, ledger_url: str | None,
              as_json: bool) -> None:  # fmt: skip
    """A seeded random fault schedule from the lab's whole vocabulary (partitions, kill -9,
    SIGSTOP and restarts of redis-server and `tally serve`, the 2013 operator's mistakes,
    gateway faults, freezes), every fault healed before a quiet tail, judged by the invariants
    and the liveness rule. `--duration` is the workload's seconds (default 120). Exit 0 when
    every run held, 1 when one did not, 2 when one could not be set up."""
    out = out or Path("lab-runs") / "chaos"
    results: list[RunResult] = []
    for n in range(runs):
        run_seed = seed + n
        _progress(f"== chaos seed {run_seed} ({n + 1}/{runs}) ==")
        options = RunOptions(chaos.CHAOS, profile, billing, run_seed, out / f"seed-{run_seed}",
                             time_scale, accounts, rate, duration, _progress, dataset_mb,
                             faults_max, ledger_url=ledger_url)  # fmt: skip
        results.append(run(options))
    rows = [_chaos_row(r) for r in results]
    summary = {
        "seeds": [r["seed"] for r in rows],
        "runs": rows,
        "held": sum(1 for r in rows if r["exit_code"] == 0),
        "invariant_violations": sum(r["invariants_violated"] for r in rows),
        "liveness_violations": sum(1 for r in rows if r["liveness_held"] is False),
    }
    (out / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for r in rows:
            click.echo(f"seed {r['seed']}: exit {r['exit_code']}, {r['faults']} faults, "
                       f"{r['invariants_violated']} invariant(s) violated, liveness "
                       f"{'held' if r['liveness_held'] else 'VIOLATED'} "
                       f"(worst {r['liveness_worst_s']} s)")  # fmt: skip
        click.echo(f"{summary['held']}/{len(rows)} runs held; "
                   f"{summary['invariant_violations']} invariant violations, "
                   f"{summary['liveness_violations']} liveness violations; {out / 'summary.json'}")  # fmt: skip
    codes = [r.exit_code for r in results]
    sys.exit(EXIT_USAGE if EXIT_USAGE in codes else (1 if any(codes) else 0))


def _chaos_row(result: RunResult) -> dict[str, Any]:
    body = result.report
    live = body.get("liveness") or {}
    # which invariant and what it saw, so a failed run explains itself from the summary alone
    violated = {name: v.get("detail") for name, v in (body.get("invariants") or {}).items()
                if not v.get("held")}  # fmt: skip
    return {
        "seed": body.get("seed"),
        "exit_code": result.exit_code,
        "faults": len(body.get("schedule") or []),
        "invariants_violated": len(violated),
        "violated": violated,
        "liveness_held": live.get("held"),
        "liveness_worst_s": live.get("worst_s"),
        "error": body.get("error"),
        "out": str(result.out),
    }
