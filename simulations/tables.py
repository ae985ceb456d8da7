#!/usr/bin/env python3
"""Writes the result tables of simulations/README.md from simulations/results/*/report.json.

Every table between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` is replaced;
nothing else in the README is touched. Figures are never copied by hand: rerun
`simulations/regenerate.sh` (all runs, then this) or `simulations/regenerate.sh --tables-only`.
A report without provenance (made before reports recorded their commit) is shown as stale.
"""

import json
import pathlib
import re
import subprocess
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ["small", "perfect-100k", "join-100k", "lossy-100k", "churn-100k", "million",
         "three-million", "stock-vs-tuned", "sybil"]


def load(name):
    p = HERE / "results" / name / "report.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


def description(name):
    p = HERE / f"{name}.toml"
    return tomllib.loads(p.read_text()).get("description", "") if p.exists() else ""


def n(x):
    return f"{x:,}"


def ms(p):
    return f"{p['p50']:.0f} / {p['p90']:.0f} / {p['p99']:.0f}"


def pct(x):
    return f"{x * 100:.2f}%"


def last_code_commit():
    """The newest commit that changed what a simulation runs (src/, build.rs, Cargo.*), not
    counting the files of test modules only (`src/**/*tests.rs`, each `#[cfg(test)]`): a
    test's change cannot change a figure."""
    try:
        return subprocess.run(["git", "log", "-1", "--format=%H", "--", "src", "build.rs",
                               "Cargo.toml", "Cargo.lock", ":(exclude,glob)src/**/*tests.rs"],
                              cwd=HERE.parent, check=True,
                              capture_output=True, text=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


LAST_CODE = last_code_commit()


def current(commit):
    """Whether a report made at `commit` still describes the code at HEAD."""
    if LAST_CODE is None:
        return True
    r = subprocess.run(["git", "merge-base", "--is-ancestor", LAST_CODE, commit], cwd=HERE.parent,
                       capture_output=True)
    return r.returncode == 0


def prov(r):
    p = r.get("provenance")
    if not p:
        return "**stale** (no provenance)"
    dirty = {True: ", dirty", False: "", None: ", dirty?"}[p.get("dirty")]
    stale = "" if current(p["commit"]) else f", **stale**: the code changed since (`{LAST_CODE[:7]}`)"
    return (f"`{p['commit'][:7]}`{dirty}, load {p['load_at_start']:.1f}→{p['load_at_end']:.1f}"
            f"{stale}")


def msgs(r):
    first = r.get("messages_to_first_peer")
    first = f"{first['mean']:.1f}" if first else "–"
    return f"{first} / {r['messages_per_lookup']['mean']:.1f}"


def ratio(r):
    q = r.get("ratio_to_perfect")
    return f"{q['first_peer_p50']:.2f} / {q['first_peer_p99']:.2f}" if q else "1 (is the limit)"


def row(name, what, r, wall=True):
    return "| " + " | ".join([
        name, what, n(r["nodes"]), f"{n(r['lookups'])} ({r['aborted']})", pct(r["success_rate"]),
        ms(r["first_peer_ms"]), ms(r["lookup_ms"]),
        f"{r['hops']['mean']:.2f} / {r['hops']['p99']:.0f}", msgs(r), ratio(r),
        f"{r['sim_seconds']:.0f}",
        f"{r['wall_seconds']:.1f}" if wall else "(in the above)",
        n(round(r["peak_rss_mb"])) if wall else "",
        prov(r) if wall else "",
    ]) + " |"


def results_table(reports):
    out = [
        "| scenario | what it shows | nodes | lookups (aborted) | success | first peer ms p50 / p90 / p99 "
        "| lookup ms p50 / p90 / p99 | hops mean / p99 | msgs to first peer / to completion (mean) "
        "| × perfect first-peer p50 / p99 | sim s | wall s | peak RSS MB | measured at |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = reports.get(name)
        if r is None:
            out.append(f"| {name} | {description(name)} | not run | | | | | | | | | | | |")
            continue
        out.append(row(name, description(name), r))
        if r.get("variant"):
            v = r["variant"]
            out.append(row(f"↳ variant `{v['scenario']}`", "the same network, the variant's tunables",
                           v, wall=False))
    return "\n".join(out)


def baselines_table(reports):
    out = [
        "| scenario | lookups | first peer ms p50 / p90 / p99 | lookup ms p50 / p90 / p99 | hops mean "
        "| msgs to first peer / to completion (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = reports.get(name)
        if not r or not r.get("perfect"):
            continue
        p = r["perfect"]
        out.append("| " + " | ".join([
            name, n(p["lookups"]), ms(p["first_peer_ms"]), ms(p["lookup_ms"]),
            f"{p['hops']['mean']:.2f}", msgs(p)]) + " |")
    return "\n".join(out)


def validation_table(reports):
    r = reports.get("stock-vs-tuned")
    if not r or not r.get("variant") or not r.get("perfect"):
        return "_stock-vs-tuned has not been run._"
    v, p = r["variant"], r["perfect"]

    def cell(x):
        return (f"first peer {x['first_peer_ms']['p50']:.0f} / {x['first_peer_ms']['p99']:.0f} ms; "
                f"completion {x['lookup_ms']['p50'] / 1000:.1f} s / {x['lookup_ms']['p99'] / 1000:.1f} s; "
                f"{x['timeouts_per_lookup']['mean']:.2f} timeouts; msgs {msgs(x)}; "
                f"success {pct(x['success_rate'])}; first peer p50 = "
                f"{x['first_peer_ms']['p50'] / p['first_peer_ms']['p50']:.2f}× the perfect-table "
                f"{p['first_peer_ms']['p50']:.0f} ms")

    return "\n".join([
        "| regime | published | simulated |",
        "| --- | --- | --- |",
        "| stock: alpha 3, no widening, 20 s timeouts | Crosby & Wallach 2007: median lookup ≈ 1 min on "
        f"the Mainline DHT of the time | {cell(r)} |",
        "| tuned (`[variant]`): alpha 4, widen after 500 ms, 2 s timeout | Jimenez, Osmani & Knutsson "
        f"2011: median 100–200 ms with fresh tables, parallel queries, short timeouts | {cell(v)} |",
        "",
        f"Completion time, stock ÷ tuned: **{r['lookup_ms']['p50'] / v['lookup_ms']['p50']:.1f}×** "
        f"(p50). Measured at {prov(r)}.",
    ])


def status(ok):
    return "**met**" if ok else "**missed**"


def targets_table(reports):
    out = ["| target | figure | status |", "| --- | --- | --- |"]
    s = reports.get("small")
    if s:
        out.append(f"| small.toml ≥ 99% success (CI) | {pct(s['success_rate'])} of {n(s['counted'])} "
                   f"| {status(s['success_rate'] >= 0.99)} |")
    for name, limit in [("join-100k", 60), ("churn-100k", 60)]:
        r = reports.get(name)
        if not r:
            continue
        # The same run on one thread where it was made (the output is identical): on this
        # 2-vCPU box one thread is often faster, and either count is "this machine".
        runs = [r] + [x for x in [load(name + "-1thread")] if x and "wall_seconds" in x]
        figs = "; ".join(f"{x['wall_seconds']:.1f} s on {x['threads']} thread"
                         f"{'s' if x['threads'] != 1 else ''}" for x in runs)
        best = min(x["wall_seconds"] for x in runs)
        out.append(f"| {name}: wall ≤ {limit} s (issue 11) "
                   f"| {figs}, baseline run included; load "
                   f"{(r.get('provenance') or {}).get('load_at_start', float('nan')):.1f} at start "
                   f"| {status(best <= limit)}"
                   f"{'' if all(x['wall_seconds'] <= limit for x in runs) else ' on 1 thread, missed on ' + str(r['threads']) if best <= limit else ''} |")
    m = reports.get("million")
    if m and m.get("perfect"):
        p = m["perfect"]
        f1 = p.get("messages_to_first_peer", {}).get("mean")
        ok = (245 <= p["first_peer_ms"]["p50"] <= 330 and 390 <= p["first_peer_ms"]["p99"] <= 570
              and f1 is not None and 11 <= f1 <= 24)
        out.append("| perfect-table limit (1M, RTT log-normal 100 ms σ 0.6, alpha 4, k 8): median "
                   "245–330 ms, p99 390–570 ms, 11–24 msgs to the first peer — ranges worked out "
                   "for the pair-RTT-only model of issue 4 "
                   f"| {p['first_peer_ms']['p50']:.0f} / {p['first_peer_ms']['p99']:.0f} ms, "
                   f"{msgs(p)} msgs, {p['hops']['mean']:.2f} hops "
                   f"| {status(ok) if ok else 'not comparable: the model now adds a per-host access delay (median 5 ms at each end) and jitter; messages ' + ('within' if f1 is not None and 11 <= f1 <= 24 else 'outside') + ' the range'} |")
        q = m["ratio_to_perfect"]
        f1m = (m.get("messages_to_first_peer") or {}).get("mean")
        ok = (m["success_rate"] >= 0.995 and q["first_peer_p50"] <= 1.25
              and m["first_peer_ms"]["p99"] <= 1000 and f1m is not None and f1m <= 40)
        out.append("| default parameters, 1M, churn, 1% loss: success ≥ 99.5%, median ≤ 1.25× the limit, "
                   f"p99 ≤ 1 s, ≤ 40 msgs | {pct(m['success_rate'])} ({m['aborted']} aborted), median "
                   f"{m['first_peer_ms']['p50']:.0f} ms = {q['first_peer_p50']:.2f}×, p99 "
                   f"{m['first_peer_ms']['p99']:.0f} ms, {msgs(m)} msgs | {status(ok)} |")
        out.append(f"| million.toml: peak RSS ≤ 8 GiB (issue 11) | {m['peak_rss_mb'] / 1024:.1f} GiB, "
                   f"{m['peak_rss_mb'] * 1024 / m['nodes']:.1f} KB per node "
                   f"| {status(m['peak_rss_mb'] <= 8 * 1024)} |")
        out.append(f"| million.toml: wall ≤ 5 min (issue 11) | {m['wall_seconds'] / 60:.1f} min, "
                   f"baseline included; load {(m.get('provenance') or {}).get('load_at_start', 0):.1f} "
                   f"at start | {status(m['wall_seconds'] <= 300)} |")
    t = reports.get("three-million")
    if t:
        out.append(f"| three-million.toml: completes under 24 GiB (issue 11) | peak "
                   f"{t['peak_rss_mb'] / 1024:.1f} GiB, {t['wall_seconds'] / 60:.1f} min, success "
                   f"{pct(t['success_rate'])} | {status(t['peak_rss_mb'] < 24 * 1024)} |")
    y = reports.get("sybil")
    if y:
        for r in [y] + y.get("attack_runs", []):
            out.append(f"| sybil, 20% attackers, `{r['attack']['behaviour']}`: ≥ 95% success "
                       f"| {pct(r['success_rate'])} | {status(r['success_rate'] >= 0.95)} |")
    return "\n".join(out)


def upkeep_table(reports):
    out = [
        "| scenario | refresh queries per node-hour | table entries alive at the end "
        "| datagrams per node per s (mean / p99) | routing-table entries (mean) | measured at |",
        "|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = reports.get(name)
        if not r:
            continue
        pn = r["per_node"]
        if "refresh_queries_per_node_hour" not in pn:
            out.append(f"| {name} | **stale** (report older than the upkeep figures) | | | | {prov(r)} |")
            continue
        out.append("| " + " | ".join([
            name, f"{pn['refresh_queries_per_node_hour']:.1f}", pct(pn["table_alive"]),
            f"{pn['datagrams_per_s']['mean']:.2f} / {pn['datagrams_per_s']['p99']:.2f}",
            f"{pn['routing_table']['mean']:.1f}", prov(r)]) + " |")
    return "\n".join(out)


DETERMINISTIC_SKIP = {"wall_seconds", "peak_rss_mb", "provenance", "threads", "parallel_work_s",
                      "serial_s"}


def deterministic(r):
    if isinstance(r, dict):
        return {k: deterministic(v) for k, v in r.items() if k not in DETERMINISTIC_SKIP}
    if isinstance(r, list):
        return [deterministic(x) for x in r]
    return r


def engine_table(reports):
    out = [
        "| scenario | threads | wall s | main run: serial s | main run: parallel work s (summed over threads) "
        "| main run at best on 16 cores (serial + work / 16) | measured at |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = reports.get(name)
        if not r or "serial_s" not in r:
            continue
        best16 = r["serial_s"] + r["parallel_work_s"] / 16
        out.append("| " + " | ".join([
            name, str(r["threads"]), f"{r['wall_seconds']:.1f}", f"{r['serial_s']:.1f}",
            f"{r['parallel_work_s']:.1f}", f"{best16:.1f}", prov(r)]) + " |")
    for base in ("churn-100k", "join-100k"):
        one = load(base + "-1thread")
        two = reports.get(base)
        if not (one and two and "serial_s" in one):
            continue
        same_json = deterministic(one) == deterministic(two)
        a = HERE / "results" / (base + "-1thread") / "lookups.csv"
        b = HERE / "results" / base / "lookups.csv"
        same_csv = a.exists() and b.exists() and a.read_bytes() == b.read_bytes()
        out.append("")
        out.append(f"{base} on 1 thread: {one['wall_seconds']:.1f} s, on {two['threads']}: "
                   f"{two['wall_seconds']:.1f} s — **{one['wall_seconds'] / two['wall_seconds']:.2f}×** "
                   f"on this {two['provenance']['machine']['cores']}-core machine; report "
                   f"{'identical' if same_json else '**different**'}, lookups.csv "
                   f"{'byte-identical' if same_csv else '**different**'} (1 thread measured at "
                   f"{prov(one)}; parallel work {one['parallel_work_s']:.1f} s on 1 thread against "
                   f"{two['parallel_work_s']:.1f} s summed over {two['threads']}).")
    return "\n".join(out)


def bench_table(reports):
    """The summary BENCHMARKS.md carries (the same reports, fewer columns)."""
    out = [
        "| scenario | nodes | success | first peer ms p50 / p90 / p99 | × perfect p50 / p99 "
        "| msgs to first peer / to completion | wall s | peak RSS MB | measured at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = reports.get(name)
        if not r:
            continue
        out.append("| " + " | ".join([
            name, n(r["nodes"]), pct(r["success_rate"]), ms(r["first_peer_ms"]), ratio(r), msgs(r),
            f"{r['wall_seconds']:.1f}", n(round(r["peak_rss_mb"])), prov(r)]) + " |")
    return "\n".join(out)


def sybil_table(reports):
    y = reports.get("sybil")
    if not y:
        return "_sybil has not been run._"
    out = [
        "| behaviour | lookups (aborted) | success | first peer ms p50 / p90 / p99 | lookup ms p50 / p90 / p99 "
        "| hops mean | msgs to first peer / to completion | timeouts/lookup | datagrams to attackers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [y] + y.get("attack_runs", []):
        out.append("| " + " | ".join([
            r["attack"]["behaviour"], f"{n(r['lookups'])} ({r['aborted']})", pct(r["success_rate"]),
            ms(r["first_peer_ms"]), ms(r["lookup_ms"]), f"{r['hops']['mean']:.2f}", msgs(r),
            f"{r['timeouts_per_lookup']['mean']:.2f}", n(r["attack"]["queries_to_attackers"])]) + " |")
    p = y.get("perfect")
    if p:
        out.append("")
        out.append(f"Perfect baseline of this network (no attackers): first peer {ms(p['first_peer_ms'])} ms, "
                   f"msgs {msgs(p)}. {n(y['attack']['attackers'])} attackers of {n(y['nodes'])} slots. "
                   f"Wall {y['wall_seconds']:.0f} s for all runs and the baseline; measured at {prov(y)}.")
    return "\n".join(out)


def main():
    reports = {name: r for name in ORDER if (r := load(name)) is not None}
    blocks = {
        "results": results_table(reports),
        "baselines": baselines_table(reports),
        "validation": validation_table(reports),
        "targets": targets_table(reports),
        "sybil": sybil_table(reports),
        "upkeep": upkeep_table(reports),
        "engine": engine_table(reports),
    }
    fill(HERE / "README.md", blocks)
    fill(HERE.parent / "BENCHMARKS.md", {"simulations": bench_table(reports)})


def fill(path, blocks):
    text = path.read_text()
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pat.search(text):
            sys.exit(f"{path.name} has no <!-- generated:{name} --> block")
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    path.write_text(text)


if __name__ == "__main__":
    main()
