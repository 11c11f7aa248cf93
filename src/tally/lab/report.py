"""report.html: the run for people. Hand-made inline SVG (no plotting dependency): timelines of
throughput, primary latency, replication state and errors, each with the fault markers; the
figures and invariants tables. ``write_compare`` puts runs side by side on one time axis (each
run's seconds from its own start, over the longest run's span). The page loads nothing: no
script, no external asset (a test opens it in headless Chromium with the network cut off)."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tally.errors import UsageError
from tally.lab.checker import FIGURES, INVARIANTS, _jsonl

BIN_S = 1.0
WIDTH, HEIGHT, PAD_L, PAD_B, PAD_T = 640, 150, 48, 22, 10
COLOURS = {"ok": "#2a7", "fail": "#d33", "info": "#e90", "lat": "#36c", "up": "#2a7",
           "full": "#d33", "partial": "#36c"}  # fmt: skip
STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f4f4f4}.bad{background:#fdd}.good{background:#dfd}
.cols{display:flex;gap:24px;flex-wrap:wrap}.col{flex:1;min-width:600px}
svg{background:#fafafa;border:1px solid #ddd;margin:4px 0}code{background:#f4f4f4;padding:1px 4px}
h3{margin:14px 0 2px}.small{color:#666;font-size:12px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def series(run_dir: Path) -> dict[str, Any]:
    """Per-second series from the run's raw files, relative to the first history entry."""
    history = _jsonl(run_dir / "history.jsonl")
    monitor = _jsonl(run_dir / "monitor.jsonl") + _jsonl(run_dir / "ping.jsonl")
    events = _jsonl(run_dir / "events.jsonl")
    starts = [int(h["t_ms"]) for h in history if h["type"] == "invoke"]
    t0 = min(starts) if starts else min((int(m["t_ms"]) for m in monitor), default=0)
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for h in history:
        if h["type"] != "invoke":
            counts[h["type"]][int((int(h["t_ms"]) - t0) / 1000 / BIN_S)] += 1
    pings: dict[int, list[float]] = defaultdict(list)
    for m in monitor:
        if m.get("kind") == "ping" and m.get("ms") is not None:
            pings[int((int(m["t_ms"]) - t0) / 1000 / BIN_S)].append(float(m["ms"]))
    links, syncs = [], []
    for m in monitor:
        if m.get("kind") != "nodes":
            continue
        t = (int(m["t_ms"]) - t0) / 1000
        nodes = m.get("nodes") or {}
        links.append((t, sum(1 for n in nodes.values() if n.get("link") == "up"),
                      sum(1 for n in nodes.values() if n.get("role") == "master"
                          and n.get("epoch", 0) > 0)))  # fmt: skip
        syncs.append((t, sum(int(n.get("sync_full", 0)) for n in nodes.values()),
                      sum(int(n.get("sync_partial_ok", 0)) for n in nodes.values())))  # fmt: skip
    marks = [((int(e["t_ms"]) - t0) / 1000, e.get("action", ""), bool(e.get("fault")))
             for e in events if e.get("action") != "settled"]  # fmt: skip
    end = max([b for c in counts.values() for b in c] + [int(t) for t, *_ in links] + [1])
    lat = {b: sorted(v)[min(len(v) - 1, int(0.99 * len(v)))] for b, v in pings.items()}
    return {"end": end, "counts": counts, "lat": lat, "links": links, "syncs": syncs,
            "marks": marks}  # fmt: skip


def _svg(title: str, end: float, lines: list[tuple[str, list[tuple[float, float]], str]],
         marks: list[tuple[float, str, bool]], *, log_y: bool = False) -> str:  # fmt: skip
    import math

    ys = [y for _, pts, _ in lines for _, y in pts] or [1.0]
    top = max(ys) or 1.0
    f = (lambda y: math.log10(1 + y)) if log_y else (lambda y: y)
    top_f = f(top) or 1.0
    w, h = WIDTH - PAD_L - 8, HEIGHT - PAD_B - PAD_T

    def x(t: float) -> float:
        return PAD_L + w * max(0.0, min(t, end)) / max(end, 1)

    def y(v: float) -> float:
        return PAD_T + h - h * f(v) / top_f

    parts = [f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
             f'<text x="{PAD_L}" y="{PAD_T + 2}" font-size="11" fill="#444">{_esc(title)}</text>',
             f'<text x="2" y="{PAD_T + 10}" font-size="10">{top:g}</text>',
             f'<text x="2" y="{PAD_T + h}" font-size="10">0</text>',
             f'<line x1="{PAD_L}" y1="{PAD_T + h}" x2="{PAD_L + w}" y2="{PAD_T + h}" stroke="#999"/>']  # fmt: skip
    for tick in range(0, int(end) + 1, max(1, int(end) // 10 or 1)):
        parts.append(f'<text x="{x(tick) - 6:.1f}" y="{HEIGHT - 6}" font-size="10">{tick}s</text>')
    for t, name, fault in marks:
        colour = "#c00" if fault else "#08a"
        parts.append(f'<line x1="{x(t):.1f}" y1="{PAD_T}" x2="{x(t):.1f}" y2="{PAD_T + h}" '
                     f'stroke="{colour}" stroke-dasharray="3,3"><title>{_esc(name)} at '
                     f'{t:.1f}s</title></line>')  # fmt: skip
    for i, (label, pts, colour) in enumerate(lines):
        if pts:
            path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in sorted(pts))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'points="{path}"/>')  # fmt: skip
        parts.append(f'<text x="{PAD_L + 150 + 90 * i}" y="{PAD_T + 2}" font-size="11" '
                     f'fill="{colour}">{_esc(label)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def plots(run_dir: Path, end: float | None = None) -> str:
    """The run's timelines; ``end`` (seconds) sets a time axis shared with other runs."""
    s = series(run_dir)
    end, marks = max(s["end"], end or 0), s["marks"]
    bins = range(0, int(end) + 1)
    thr = [(k, [(float(b), float(s["counts"][k].get(b, 0))) for b in bins], COLOURS[k])
           for k in ("ok", "fail", "info")]  # fmt: skip
    lat = [("p99 ms (log)", [(float(b), v) for b, v in s["lat"].items()], COLOURS["lat"])]
    rep = [("replica links up", [(t, float(u)) for t, u, _ in s["links"]], COLOURS["up"]),
           ("primaries with epoch", [(t, float(p)) for t, _, p in s["links"]], "#777")]  # fmt: skip
    sync = [("full syncs", [(t, float(f)) for t, f, _ in s["syncs"]], COLOURS["full"]),
            ("partial syncs", [(t, float(p)) for t, _, p in s["syncs"]], COLOURS["partial"])]  # fmt: skip
    return "".join([
        "<h3>Throughput (completions per second)</h3>", _svg("ops/s", end, thr, marks),
        "<h3>Primary latency (PING p99 per second)</h3>", _svg("ms", end, lat, marks, log_y=True),
        "<h3>Replication state</h3>", _svg("count", end, rep, marks),
        "<h3>Sync counters (sum over nodes; restarts reset a node's counters)</h3>",
        _svg("count", end, sync, marks),
    ])  # fmt: skip


def _figures_table(bodies: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_esc(b.get('profile'))} / {_esc(b.get('billing'))}</th>" for b in bodies)
    rows = [f"<tr><th>figure</th>{head}</tr>"]
    for name in FIGURES:
        cells = "".join(f"<td>{_esc((b.get('figures') or {}).get(name, '—'))}</td>" for b in bodies)
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _invariants_table(bodies: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_esc(b.get('profile'))} / {_esc(b.get('billing'))}</th>" for b in bodies)
    rows = [f"<tr><th>invariant</th>{head}</tr>"]
    for name in INVARIANTS:
        cells = []
        for b in bodies:
            inv = (b.get("invariants") or {}).get(name, {})
            held = inv.get("held")
            cls = "good" if held else "bad"
            cells.append(f'<td class="{cls}">{"held" if held else "VIOLATED"}<br>'
                         f'<span class="small">{_esc(inv.get("detail", ""))}</span></td>')  # fmt: skip
        rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _timeline_table(body: dict[str, Any]) -> str:
    rows = ["<tr><th>t</th><th>action</th><th>what happened</th></tr>"]
    for e in body.get("timeline", []):
        kind = "fault" if e.get("fault") else "operator"
        rows.append(f"<tr><td>{_esc(e.get('at_s', ''))}s</td><td>{kind}: {_esc(e.get('action'))}"
                    f"</td><td>{_esc(e.get('detail', ''))}</td></tr>")  # fmt: skip
    return "<table>" + "".join(rows) + "</table>"


def _verdict(body: dict[str, Any]) -> str:
    ok = body.get("ok")
    return (f'<p class="{"good" if ok else "bad"}"><b>exit {body.get("exit_code")}: '
            f'{"every invariant held" if ok else "an invariant was violated"}</b></p>')  # fmt: skip


def _schedule(body: dict[str, Any], end: float) -> str:
    """A chaos run's schedule on the plots' time axis: one bar per fault, from its start to its
    heal (the plan's seconds times the run's time scale), and the liveness verdict."""
    windows = body.get("schedule") or []
    if not windows:
        return ""
    scale = float(body.get("time_scale") or 1.0)
    w, row = WIDTH - PAD_L - 8, 14

    def x(t: float) -> float:
        return PAD_L + w * max(0.0, min(t * scale, end)) / max(end, 1)

    height = PAD_T + row * len(windows) + PAD_B
    parts = [f'<svg width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">']
    for i, win in enumerate(windows):
        top = PAD_T + row * i
        a, b = x(float(win["at_s"])), x(float(win["healed_at_s"]))
        label = f"{win['fault']} {win.get('target', '')}"
        parts.append(f'<rect x="{a:.1f}" y="{top}" width="{max(b - a, 1.0):.1f}" height="{row - 3}"'
                     f' fill="#c00" opacity="0.6"><title>{_esc(label)}: {win["at_s"]}s to '
                     f'{win["healed_at_s"]}s</title></rect>'
                     f'<text x="2" y="{top + row - 4}" font-size="10">{_esc(label[:24])}</text>')  # fmt: skip
    parts.append("</svg>")
    live = body.get("liveness") or {}
    verdict = (f"<p>liveness: {'held' if live.get('held') else 'VIOLATED'}, worst "
               f"{_esc(live.get('worst_s'))} s against a bound of {_esc(live.get('bound_s'))} s"
               f" after {_esc(live.get('since_s'))} s</p>") if live else ""  # fmt: skip
    return f"<h3>Chaos schedule (seed {_esc(body.get('seed'))})</h3>{''.join(parts)}{verdict}"


def _column(run_dir: Path, body: dict[str, Any], end: float | None = None) -> str:
    axis = max(series(run_dir)["end"], end or 0)
    return "".join([
        f"<h2>{_esc(body.get('profile'))} profile, {_esc(body.get('billing'))} billing</h2>",
        _verdict(body), f"<p>reproduce: <code>{_esc(body.get('reproduce', ''))}</code></p>",
        plots(run_dir, end), _schedule(body, axis), "<h3>Timeline</h3>", _timeline_table(body),
        f"<h3>Settle</h3><pre>{_esc(json.dumps(body.get('settle', {}), indent=1))}</pre>",
        f"<h3>Extras</h3><pre>{_esc(json.dumps(body.get('extras', {}), indent=1))}</pre>",
    ])  # fmt: skip


def _page(title: str, summary: str, tables: str, columns: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1><p>{_esc(summary)}</p>"
            f"{tables}<div class='cols'>{columns}</div></body></html>")  # fmt: skip


def write_html(run_dir: Path, body: dict[str, Any]) -> Path:
    title = f"tally lab: {body.get('scenario')} ({body.get('profile')}, {body.get('billing')})"
    tables = (
        "<h2>Figures</h2>"
        + _figures_table([body])
        + "<h2>Invariants</h2>"
        + _invariants_table([body])
    )
    page = _page(
        title, body.get("summary", ""), tables, f"<div class='col'>{_column(run_dir, body)}</div>"
    )
    path = Path(run_dir) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def read_run(run_dir: Path) -> dict[str, Any]:
    """A finished run's report.json, or UsageError saying what is missing."""
    path = Path(run_dir) / "report.json"
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{run_dir} is not a lab run directory: cannot read {path.name} ({exc})",
            hint="give directories written by `tally lab run ... --out DIR`",
        ) from exc
    if not isinstance(body, dict) or "figures" not in body:
        raise UsageError(f"{path} holds no figures: the run did not finish")
    return body


def write_compare(path: Path, runs: list[tuple[Path, dict[str, Any]]]) -> Path:
    """One page, ``path``: the runs' figures and invariants side by side, and their timelines
    with fault markers on one time axis."""
    bodies = [b for _, b in runs]
    scenarios = sorted({str(b.get("scenario")) for b in bodies}) or ["?"]
    title = f"tally lab compare: {' vs '.join(scenarios)}"
    tables = (
        "<h2>Figures</h2>"
        + _figures_table(bodies)
        + "<h2>Invariants</h2>"
        + _invariants_table(bodies)
    )
    end = max((series(d)["end"] for d, _ in runs), default=1)
    cols = "".join(f"<div class='col'>{_column(d, b, end)}</div>" for d, b in runs)
    page = _page(title, bodies[0].get("summary", "") if bodies else "", tables, cols)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
