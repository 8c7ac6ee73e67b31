#!/usr/bin/env python3
"""
report.py - turns what bench/run measured into its results files.

  report.py misses SAMPLES
      prints the scenarios (s1, s2) in which cutover-proxy missed a
      target, one a line: bench/run profiles the proxy in those
  report.py profile SAMPLES SCENARIO TOOL VIEW FILE
      appends to SAMPLES the top functions of a profile: FILE is the
      output of `callgrind_annotate` or `perf report --stdio` (TOOL
      callgrind or perf), VIEW says which cost: self or inclusive
  report.py write SAMPLES MD JSON
      writes the results: medians over rounds, ratios against nginx,
      the targets marked PASS or MISS. The JSON keeps the samples, so
      SAMPLES may also be an earlier results .json: to render it again

SAMPLES has one JSON object a line, each with a "kind": meta (machine,
versions, parameters), load (loadavg at a point of the run), run (one
timed wrk run of one contender in one scenario), rss, strace, metrics
(a cutover-proxy /metrics snapshot), propagation, seen_cache, idle,
profile. bench/run writes them; the field names are those below.
"""
import json
import re
import statistics
import sys

CONTENDERS = ["direct", "nginx", "haproxy", "cutover"]
SCENARIOS = {
    "s1": "Scenario 1: pass-through (a path no route matches)",
    "s2": "Scenario 2: user route /api/users/{id}, read flag at 50%, 100,000 users, migrate + read guard",
    "s3": "Scenario 3: pass-through, client keep-alive off (Connection: close)",
}
RATIO_KEYS = ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_100k", "peak_rss_mib", "syscalls_per_req"]
PROFILE_TOP = 25


def load(path):
    """The samples: a JSON-lines file, or a results .json (which keeps them)."""
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:  # more than one line: JSON lines
        doc = None
    if isinstance(doc, dict) and "samples" in doc:
        return doc["samples"]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- figures ---------------------------------------------------------------

def round_figures(run, clk_tck):
    """The figures of one timed run."""
    w = run["wrk"]
    cpu_s = run["cpu_ticks"] / clk_tck
    core_s = cpu_s if run["contender"] == "direct" else cpu_s + run["backend_ticks"] / clk_tck
    return {
        "rps": w["requests"] / w["duration_s"],
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000,
        "cpu_s_per_100k": cpu_s / w["requests"] * 1e5,
        # Contender plus backend, over the wall time of the run: near 100%
        # means CPU 1 was the bottleneck, so req/s measures cost.
        "cpu1_busy": core_s / (run["wall_us"] / 1e6),
        "errors": w["socket_errors"] + w["non2xx"],
    }


def scenario_results(samples, clk_tck):
    """{scenario: {contender: figures}} with medians over rounds."""
    out = {}
    for s in SCENARIOS:
        out[s] = {}
        for c in CONTENDERS:
            rounds = [round_figures(r, clk_tck) for r in samples
                      if r["kind"] == "run" and r["scenario"] == s and r["contender"] == c]
            if not rounds:
                continue
            fig = {k: statistics.median([r[k] for r in rounds]) for k in rounds[0] if k != "errors"}
            fig["errors"] = sum(r["errors"] for r in rounds)
            fig["rps_min"] = min(r["rps"] for r in rounds)
            fig["rps_max"] = max(r["rps"] for r in rounds)
            fig["rounds"] = rounds
            for r in samples:
                if r.get("scenario") == s and r.get("contender") == c:
                    if r["kind"] == "rss":
                        fig["peak_rss_mib"] = r["vmhwm_kb"] / 1024
                    elif r["kind"] == "strace":
                        n = r["wrk"]["requests"]
                        fig["syscalls_per_req"] = r["calls"]["total"] / n
                        fig["syscalls"] = {k: v / n for k, v in r["calls"].items() if k != "total"}
                        fig["strace_requests"] = n
            out[s][c] = fig
        for c, fig in out[s].items():
            ref = out[s].get("nginx")
            if ref:
                fig["vs_nginx"] = {k: fig[k] / ref[k] for k in RATIO_KEYS if fig.get(k) and ref.get(k)}
    return out


def propagation(samples):
    return next((r["result"] for r in samples if r["kind"] == "propagation"), None)


def targets(res, prop):
    """The issue's targets, each a dict: the medians compared, the verdict,
    and the same comparison round by round (contenders alternate within a
    round, so a round's ratio is the least disturbed by other load)."""
    out = []

    def compare(scenario, text, c, n, key, factor, fmt, higher_is_better):
        limit = factor * n[key]
        ok = c[key] >= limit if higher_is_better else c[key] <= limit
        ratios = [a[key] / b[key] for a, b in zip(c["rounds"], n["rounds"])]
        met = sum((r >= factor) if higher_is_better else (r <= factor) for r in ratios)
        out.append({"scenario": scenario, "target": text, "cutover": fmt % c[key], "limit": fmt % limit,
                    "pass": ok, "round_ratios": ratios, "rounds_met": f"{met}/{len(ratios)} rounds"})

    s1, s2 = res["s1"], res["s2"]
    if "cutover" in s1 and "nginx" in s1:
        compare("s1", "scenario 1 req/s >= nginx scenario 1", s1["cutover"], s1["nginx"], "rps", 1,
                "%.0f", True)
        compare("s1", "scenario 1 CPU/request <= nginx scenario 1", s1["cutover"], s1["nginx"],
                "cpu_s_per_100k", 1, "%.3f s/100k", False)
    if "cutover" in s2 and "nginx" in s1:
        compare("s2", "scenario 2 req/s >= 0.9 x nginx scenario 1", s2["cutover"], s1["nginx"], "rps", 0.9,
                "%.0f", True)
        compare("s2", "scenario 2 p99 <= 1.1 x nginx scenario 1 p99", s2["cutover"], s1["nginx"], "p99_ms",
                1.1, "%.3f ms", False)
    if prop:
        met = sum(s < 20 for s in prop["samples_ms"])
        out.append({"scenario": None, "target": "flag propagation p99 < 20 ms", "cutover": f"{prop['p99_ms']:.2f} ms",
                    "limit": "20 ms", "pass": prop["p99_ms"] < 20, "round_ratios": [],
                    "rounds_met": f"{met}/{len(prop['samples_ms'])} toggles under 20 ms"})
    return out


def seen_cache_layout(users, limit):
    """Bytes idset.c holds for `users` distinct ids: 8-byte slots, a power
    of two from 1024; the add that would pass 70% full doubles the set, or,
    in a forgetful set (the seen cache) holding `limit` ids, empties it."""
    cap = 1024
    while users > cap * 7 // 10:
        if cap * 7 // 10 >= limit:
            users -= cap * 7 // 10
        else:
            cap *= 2
    return cap * 8


# ---- commands --------------------------------------------------------------

def cmd_misses(path):
    samples = load(path)
    meta = next(r for r in samples if r["kind"] == "meta")
    res = scenario_results(samples, int(meta["clk_tck"]))
    for s in sorted({t["scenario"] for t in targets(res, None) if not t["pass"]}):
        print(s)


def cmd_profile(path, scenario, tool, view, file):
    """Keeps the top functions. A line of callgrind_annotate is
    '  1,234 (12.34%)  file:function [object]', one of perf report
    '  12.34%  [4.56%]  comm  object  [.] function'. callgrind_annotate
    lists a function once per source file it has code from (inlines):
    self costs add up, inclusive ones are the largest. Unnamed code (an
    address) and the program total say nothing and are left out."""
    costs, objects = {}, {}
    with open(file) as f:
        for line in f:
            if tool == "callgrind":
                m = re.match(r"\s*[\d,]+ \(\s*([\d.]+)%\)\s+(\S.*?)(?: \[(.*)\])?$", line)
                if not m or m.group(2) == "PROGRAM TOTALS":
                    continue
                percent, func, obj = float(m.group(1)), m.group(2).rsplit(":", 1)[-1], m.group(3)
            else:
                m = re.match(r"\s*([\d.]+)%\s+(?:[\d.]+%\s+)?\S+\s+(\S+)\s+\[.\]\s+(.*)$", line)
                if not m:
                    continue
                percent, func, obj = float(m.group(1)), m.group(3).strip(), m.group(2)
            if func.startswith("0x"):
                continue
            costs[func] = costs.get(func, 0) + percent if view == "self" else max(costs.get(func, 0), percent)
            if obj:
                objects[func] = obj.rsplit("/", 1)[-1]
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:PROFILE_TOP]
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "profile", "scenario": scenario, "tool": tool, "view": view,
                            "top": [{"percent": round(v, 2), "function": k, "object": objects.get(k, "")}
                                    for k, v in top]}) + "\n")


def fmt_ratio(fig, key, fmt):
    value = fig.get(key)
    if value is None:
        return "-"
    ratio = fig.get("vs_nginx", {}).get(key)
    return (fmt % value) + (f" ({ratio:.2f}x)" if ratio is not None else "")


def cmd_write(path, md_path, json_path):
    samples = load(path)
    meta = next(r for r in samples if r["kind"] == "meta")
    res = scenario_results(samples, int(meta["clk_tck"]))
    prop = propagation(samples)
    tgt = targets(res, prop)
    loads = [r for r in samples if r["kind"] == "load"]
    seen = next((r for r in samples if r["kind"] == "seen_cache"), None)
    idle = {r["contender"]: r["result"] for r in samples if r["kind"] == "idle"}
    profiles = [r for r in samples if r["kind"] == "profile"]
    s2_metrics = next((r["metrics"] for r in samples if r["kind"] == "metrics" and r["scenario"] == "s2"), {})
    decisions = {k: v for k, v in s2_metrics.items()
                 if 'route="user"' in k or k.startswith("cutover_migrate_")}

    if seen:
        seen["layout_bytes"] = seen_cache_layout(seen["users"], seen["limit"])
        seen["layout_bytes_per_million"] = seen["layout_bytes"] * 1e6 / seen["users"]
        if seen.get("metrics"):
            seen["measured_bytes"] = seen["metrics"]["cutover_migrate_cache_bytes"]
            seen["measured_bytes_per_million"] = seen["measured_bytes"] * 1e6 / seen["users"]

    L = []
    add = L.append
    add(f"# cutover-proxy benchmark: {meta['date']}, {meta['hostname']}")
    add("")
    add(f"`{meta['command']}` ({meta['mode']}): {meta['rounds']} rounds of {meta['run_s']} s per contender "
        f"and scenario, contenders alternating within each round (direct, nginx, HAProxy, cutover); "
        f"`wrk -t1 -c{meta['connections']}`. Figures are medians over the rounds; "
        "`(1.05x)` is the ratio to nginx in the same scenario.")
    add("")
    add("## Machine")
    add("")
    add(f"- CPU: {meta['cpu_model']}, {meta['cores']} cores; {meta['memory']} memory; kernel {meta['kernel']}")
    add(f"- Load average (1, 5, 15 min) before: {loads[0]['loadavg']}; after: {loads[-1]['loadavg']}. "
        "Other work shares this machine, which is why rounds alternate and medians are reported; "
        "the req/s range column shows the spread.")
    add("- Load at each phase: " + "; ".join(f"{r['at']} {r['loadavg']}" for r in loads))
    add(f"- Pinned (taskset): CPU 0 runs the load side: wrk (one thread), Redis, strace, the Python "
        f"helpers. CPU 1 runs the contender (one worker/thread) and the backend nginx (one worker) "
        f"it forwards to, so req/s is bounded by what the contender costs on top of the backend; "
        f"`direct` is the backend alone on CPU 1, the physical limit. "
        f"The four proxies of the propagation test are not pinned.")
    add("")
    add("## Versions")
    add("")
    for k in ("cutover", "nginx", "haproxy", "wrk", "redis", "strace", "valgrind", "perf"):
        if meta.get(k):
            add(f"- {k}: {meta[k]}")
    add("")
    add("## Targets")
    add("")
    add("Medians decide. The last columns make the same comparison round by round (cutover / nginx "
        "in each round), to show how firm a verdict is against the noise of other work on the machine.")
    add("")
    add("| target | cutover | limit | result | per-round ratios | met in |")
    add("|---|---|---|---|---|---|")
    for t in tgt:
        add(f"| {t['target']} | {t['cutover']} | {t['limit']} | {'PASS' if t['pass'] else 'MISS'} "
            f"| {' '.join(f'{r:.2f}' for r in t['round_ratios']) or '-'} | {t['rounds_met']} |")
    add("")
    for s, title in SCENARIOS.items():
        if not res[s]:
            continue
        add(f"## {title}")
        add("")
        add("| contender | req/s | req/s range | p50 ms | p99 ms | p99.9 ms | CPU s / 100k req | peak RSS MiB "
            "| syscalls / req | CPU 1 busy | errors |")
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for c, f in res[s].items():
            add(f"| {c} | {fmt_ratio(f, 'rps', '%.0f')} | {f['rps_min']:.0f}-{f['rps_max']:.0f} "
                f"| {fmt_ratio(f, 'p50_ms', '%.3f')} | {fmt_ratio(f, 'p99_ms', '%.3f')} "
                f"| {fmt_ratio(f, 'p999_ms', '%.3f')} | {fmt_ratio(f, 'cpu_s_per_100k', '%.3f')} "
                f"| {fmt_ratio(f, 'peak_rss_mib', '%.1f')} | {fmt_ratio(f, 'syscalls_per_req', '%.2f')} "
                f"| {f['cpu1_busy'] * 100:.0f}% | {f['errors']} |")
        add("")
        add("System calls per request (strace -c), the largest:")
        add("")
        for c, f in res[s].items():
            if f.get("syscalls"):
                top = sorted(f["syscalls"].items(), key=lambda kv: -kv[1])[:6]
                add(f"- {c}: " + ", ".join(f"{k} {v:.2f}" for k, v in top) +
                    f" (over {f['strace_requests']} requests)")
        if s == "s2" and decisions:
            add("")
            add("cutover-proxy's decisions for the user route and its migration counters in this scenario (its /metrics after the warm-up and the rounds):")
            add("")
            for k, v in sorted(decisions.items()):
                add(f"- `{k}` {v:,.0f}")
        add("")
    if prop:
        add("## Flag propagation")
        add("")
        add(f"`cutoverctl flag kill` / `unkill` toggled {prop['toggles']} times; time from the command "
            f"returning until all {prop['proxies']} cutover-proxy processes (one worker each) route a fixed "
            "user the new way, polled over keep-alive connections (bench/propagation.py, time.monotonic).")
        add("")
        add(f"- p50 {prop['p50_ms']:.2f} ms, p99 {prop['p99_ms']:.2f} ms (nearest rank), max {prop['max_ms']:.2f} ms")
        add(f"- the cutoverctl command itself: p50 {prop['command_p50_ms']:.2f} ms")
        add("")
    if seen:
        add("## Seen-cache memory")
        add("")
        if "measured_bytes" in seen:
            m = seen["metrics"]
            add(f"Measured: {seen['users']:,} distinct users sent through one worker "
                f"(wrk, bench/wrk.lua with BENCH_USERS), then `cutover_migrate_cache_bytes` read from /metrics: "
                f"{seen['measured_bytes']:,} bytes, **{seen['measured_bytes_per_million'] / 2**20:.1f} MiB per "
                f"million users** ({seen['measured_bytes_per_million'] / 1e6:.1f} bytes per user). "
                f"Enqueued {m.get('cutover_migrate_enqueued_total', 0):,.0f}, dropped "
                f"{m.get('cutover_migrate_dropped_total', 0):,.0f} (a dropped user is not cached). "
                f"Process RSS after: {seen['vmrss_kb'] / 1024:.1f} MiB.")
            add("")
        add(f"From the layout (proxy/idset.c: 8-byte slots, a power of two, at most 70% full; "
            f"limits.seen_cache = {seen['limit']:,} per worker): {seen['layout_bytes']:,} bytes for "
            f"{seen['users']:,} users, {seen['layout_bytes_per_million'] / 2**20:.1f} MiB per million. "
            "Depending on where a count falls between two doublings a user costs 11.4 to 22.9 bytes "
            "(conf/cutover.conf says 8-16). The gauge also counts the migrated-set copy "
            "(8 KiB while empty).")
        add("")
    if idle:
        add("## Idle client connections")
        add("")
        add("bench/idle_conns.py opens the connections and reads VmRSS (open), then sends one keep-alive "
            "request on each, one at a time, reads the response and, after the last, reads VmRSS again "
            "(served). HAProxy is left out: it reserves two "
            "descriptors per connection and the open-file limit here cannot hold that.")
        add("")
        add("| process | connections | RSS before MiB | RSS open MiB | RSS served MiB | bytes/conn open "
            "| bytes/conn served |")
        add("|---|---|---|---|---|---|---|")
        for c, r in idle.items():
            ref = idle.get("nginx")
            ratio = lambda k: f" ({r[k] / ref[k]:.2f}x)" if ref and ref[k] and c != "nginx" else ""
            add(f"| {c} | {r['connections']:,} | {r['rss_before_kb'] / 1024:.1f} | {r['rss_open_kb'] / 1024:.1f} "
                f"| {r['rss_served_kb'] / 1024:.1f} | {r['bytes_per_open_conn']:,}{ratio('bytes_per_open_conn')} "
                f"| {r['bytes_per_served_conn']:,}{ratio('bytes_per_served_conn')} |")
        add("")
    if profiles:
        add("## Profile of cutover-proxy (targets missed)")
        add("")
        add("cutover-proxy alone on CPU 1 (with the backend) under wrk in each scenario with a missed target, "
            "after a warm-up that is not in the profile (callgrind: its instrumentation is switched on after "
            "it; in scenario 2 the warm-up sees every user). callgrind counts instructions (Ir), perf samples "
            "time. Self cost is the function's own code; inclusive adds what it calls.")
        add("")
        for p in profiles:
            add(f"{p['tool']}, {SCENARIOS[p['scenario']].split(':')[0].lower()}, {p['view']} cost, "
                f"top {len(p['top'])}:")
            add("")
            add("| % | function | object |")
            add("|---|---|---|")
            for t in p["top"]:
                add(f"| {t['percent']:.2f} | `{t['function']}` | {t['object']} |")
            add("")
    add("## How it was measured")
    add("")
    add("- req/s and latency: wrk's own figures; p50/p99/p99.9 from `latency:percentile()` in bench/wrk.lua.")
    add("- CPU: utime+stime of the contender's process from /proc/PID/stat around each run (nginx: its "
        "worker; cutover-proxy: the whole process, all threads; direct: the backend's worker), per "
        "100,000 requests. CPU 1 busy adds the backend's worker.")
    add("- Peak RSS: VmHWM of the same process at the end of the scenario's rounds; each scenario starts "
        "fresh processes.")
    add("- System calls: a separate run per contender under `strace -c -f -p PID`, total calls divided by "
        "that run's requests.")
    add("- CPU 1 busy under 100% means CPU 1 had time to spare: taken by other work on the machine, or "
        "the load side (CPU 0) was the limit; req/s is then not a measure of cost, CPU per request still is.")
    add("- Warm-up: an unrecorded run per contender before each scenario; cutover-proxy's in scenario 2 "
        f"({meta['warmup_users_s']} s) is long enough to see every user id once, so the rounds measure the "
        "steady state, where first-seen enqueues are cache hits and each request of an unmigrated user in "
        "the flag's 50% still puts that user on the priority stream (one Redis call).")
    add("")
    with open(md_path, "w") as f:
        f.write("\n".join(L))

    doc = {
        "meta": meta,
        "load": loads,
        "scenarios": res,
        "targets": tgt,
        "propagation": prop,
        "seen_cache": seen,
        "idle_connections": idle,
        "profiles": profiles,
        "s2_decisions": decisions,
        "samples": samples,
    }
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    args = sys.argv[1:]
    if args[:1] == ["misses"] and len(args) == 2:
        cmd_misses(args[1])
    elif args[:1] == ["profile"] and len(args) == 6:
        cmd_profile(*args[1:])
    elif args[:1] == ["write"] and len(args) == 4:
        cmd_write(*args[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
