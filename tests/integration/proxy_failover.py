#!/usr/bin/python3
"""
proxy_failover.py - cutover-proxy when things go wrong: a flag killed at
100% sends every worker's traffic back to legacy within 50 ms of
`cutoverctl flag kill` returning, while a slow request already on the
service completes; Redis stopped (routing goes on from the last
snapshot) and restarted (changes apply again); the service upstream gone
(reads behind read_fallback served by legacy, writes 502 with a JSON body,
the breaker opens and /metrics says so); an upstream too slow (504).
"""
import re
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ctl_all, eval_users, metric_sum, run_ctl






def worker_totals(p):
    totals = {}
    for name, labels, value in p.metrics():
        if name == "cutover_requests_total":
            totals[labels.get("worker")] = totals.get(labels.get("worker"), 0) + value
    return totals


def connections_per_worker(p, per_worker=2, attempts=40):
    """Keep-alive connections to the proxy, grouped by the worker that
    serves them (found from the worker label of cutover_requests_total:
    one request at a time, so the counter that moved is its worker's)."""
    by = {}
    for _ in range(attempts):
        c = p.connection()
        before = worker_totals(p)
        p.get("/api/users/probe", conn=c)
        after = worker_totals(p)
        moved = [w for w in after if after[w] != before.get(w, 0)]
        if len(moved) == 1 and len(by.get(moved[0], [])) < per_worker:
            by.setdefault(moved[0], []).append(c)
        else:
            c.close()
        if len(by) >= 2 and all(len(cs) >= per_worker for cs in by.values()):
            break
    return by


def audit_ms(srv, ctl_out):
    """When (Redis time, ms) the change cutoverctl printed "(version N)" for
    was written, from the audit stream; None if not found."""
    m = re.search(r"\(version (\d+)\)", ctl_out)
    if not m:
        return None
    r = srv.client()
    try:
        for entry_id, fields in r.xrevrange("%s:flags:audit" % harness.PREFIX, count=20):
            if fields.get("version") == m.group(1):
                return int(entry_id.split("-")[0])
    finally:
        r.close()
    return None


def test_kill(t, srv, p, service):
    harness.change_flags(t, srv, p, "users-read at 100%", ("flag", "set", "users-read", "--percent", "100%"))
    by = connections_per_worker(p)
    conns = [c for cs in by.values() for c in cs]
    t.ok(len(by) == 2 and len(conns) == 4, "two keep-alive connections on each of the 2 workers",
         "workers seen: %r" % {w: len(cs) for w, cs in by.items()})
    slow_result = {}

    def slow():
        try:
            slow_result["r"] = p.get("/api/users/slowpoke/slow?ms=500", timeout=10)
        except Exception as e:  # reported below
            slow_result["error"] = repr(e)
    slow_thread = threading.Thread(target=slow)
    latencies, why = [], []
    for round_no in range(5):
        if round_no:
            harness.change_flags(t, srv, p, "unkill", ("flag", "unkill", "users-read"))
        before = [p.get("/api/users/k%d" % k, conn=c).route for k, c in enumerate(conns)]
        if before != ["service"] * len(conns):
            why.append("round %d: before the kill the connections went to %r" % (round_no, before))
            continue
        if round_no == 0:
            slow_thread.start()
            if not service.wait_inflight(1, 5):
                why.append("the slow request never reached the service")
        rc, out, err = run_ctl("flag", "kill", "users-read")
        t0, wall0 = time.monotonic(), time.time()
        if rc != 0:
            why.append("flag kill: exit %s %s" % (rc, err))
            continue
        first_legacy = {}
        while len(first_legacy) < len(conns) and time.monotonic() - t0 < 2:
            for k, c in enumerate(conns):
                if k in first_legacy:
                    continue
                r = p.get("/api/users/k%d" % k, conn=c)
                if r.route == "legacy":
                    first_legacy[k] = (time.monotonic() - t0) * 1000
                    e = p.access_entry(r.request_id, 2) or {}
                    if e.get("reason") != "kill":
                        why.append("round %d: reason %r, not kill" % (round_no, e.get("reason")))
        if len(first_legacy) < len(conns):
            why.append("round %d: still on the service 2 s after the kill: connections %r"
                       % (round_no, sorted(set(range(len(conns))) - set(first_legacy))))
            continue
        worst = max(first_legacy.values())
        latencies.append(worst)
        written = audit_ms(srv, out)
        t.diag("kill -> legacy on every worker: %.1f ms after `flag kill` returned%s" % (
            worst, "" if written is None else
            " (%.1f ms after the kill was written to Redis; cutoverctl exited %.1f ms after writing)"
            % (wall0 * 1000 + worst - written, wall0 * 1000 - written)))
    t.ok(not why and len(latencies) == 5, "5 kills at 100%: every connection, on both workers, goes to legacy "
         "(reason kill)", "\n".join(why))
    med = statistics.median(latencies) if latencies else float("inf")
    t.ok(med < 50, "kill to legacy on every worker: median %.1f ms < 50 ms (max %.1f ms)"
         % (med, max(latencies or [0])), repr(latencies))
    if slow_thread.ident:
        slow_thread.join(10)
    r = slow_result.get("r")
    t.ok(r is not None and r.status == 200 and r.route == "service" and r.upstream == "service"
         and r.elapsed >= 0.5,
         "the slow request in flight on the service when the flag was killed completes normally (200 from the "
         "service)", repr(slow_result))
    for c in conns:
        c.close()


def test_redis_down(t, srv, p):
    harness.change_flags(t, srv, p, "unkill, 50%", ("flag", "unkill", "users-read"),
           ("flag", "set", "users-read", "--percent", "50%"))
    users = ["rd%d" % i for i in range(30)]
    ev = eval_users("users-read", users)
    want = {u: "service" if ev[u]["on"] else "legacy" for u in users}
    t.ok(set(want.values()) == {"service", "legacy"}, "at 50% the sample has users on both sides", repr(want))
    offset = p.stderr_size()
    srv.stop(save=True)
    t.ok(p.wait_stderr("flag watcher", 5, since=offset),
         "Redis stopped: the proxy logs that its flag watcher lost it", p.log_tail(10))
    bad = []
    for rnd in range(3):
        for u in users:
            r = p.get("/api/users/" + u)
            if r.status != 200 or (r.route, r.upstream) != (want[u], want[u]):
                bad.append((rnd, u, want[u], r.status, r.route))
    t.ok(not bad, "with Redis down, every user is routed from the last snapshot (%d requests)" % (3 * len(users)),
         repr(bad[:10]))
    t.eq((p.admin("/readyz").status, p.admin("/healthz").status), (200, 200),
         "with Redis down the proxy stays ready and healthy (it has a snapshot)")
    srv.start()
    rc, out, err = run_ctl("flag", "set", "users-read", "--percent", "0%")
    t.ok(rc == 0, "Redis back on the same port, with its data: flag set to 0%", err)
    on = [u for u in users if want[u] == "service"]
    moved = harness.poll(lambda: all(p.get("/api/users/" + u).route == "legacy" for u in on), 10, 0.05)
    t.ok(moved, "the change made after Redis came back applies: the users on the service go to legacy",
         p.log_tail(10))


def test_service_down(t, srv, p, service):
    harness.change_flags(t, srv, p, "everything at 100%", ("flag", "set", "users-read", "--percent", "100%"),
           ("flag", "set", "users-write", "--percent", "100%"))
    r = p.get("/api/users/sd0")
    t.eq((r.route, r.upstream), ("service", "service"), "before: a read goes to the service")
    service.kill()
    r = p.get("/api/users/sd1")
    e = p.access_entry(r.request_id, 2) or {}
    t.ok(r.status == 200 and (r.route, r.upstream) == ("legacy", "legacy"),
         "service down: a read on a read_fallback route is served by legacy (X-Cutover-Route: legacy)", repr(r))
    t.eq((e.get("reason"), e.get("decision"), e.get("status")), ("fallback", "legacy", 200),
         "the access log says reason fallback, decision legacy")
    r = p.request("PUT", "/api/users/sd1", body=b'{"x":1}', tag=False)
    doc = r.json() or {}
    t.ok(r.status == 502 and r.header("Content-Type", "").startswith("application/json") and doc.get("request_id")
         and doc.get("request_id") == r.header("X-Request-Id"),
         "a write gets 502 with a JSON body naming the request_id (the X-Request-Id header too)", repr(r))
    e = p.access_entry(doc.get("request_id"), 2) or {}
    t.eq((e.get("status"), e.get("method")), (502, "PUT"), "and its access log line says 502")
    r = p.get("/api/users/sd1/orders")
    t.ok(r.status == 502 and (r.json() or {}).get("request_id") == r.request_id,
         "a read on a route without read_fallback gets 502 too", repr(r))
    opened, bad = 0, []
    for i in range(40):
        r = p.get("/api/users/sd%d" % (i + 2))
        if r.status != 200 or r.route != "legacy":
            bad.append((i, r.status, r.route))
        m = p.metrics()
        opened = metric_sum(m, "cutover_breaker_opened_total")
        if opened >= 1:
            break
    m = p.metrics()
    t.ok(opened >= 1 and metric_sum(m, "cutover_breakers_open") >= 1 and not bad,
         "after breaker_failures (3) failed reads: cutover_breaker_opened_total %d >= 1 and cutover_breakers_open "
         "%d >= 1; every read was served by legacy" % (opened, metric_sum(m, "cutover_breakers_open")), repr(bad))
    t.ok(metric_sum(m, "cutover_upstream_errors_total", upstream="service") >= 3,
         "cutover_upstream_errors_total{upstream=\"service\"} counts the failed connects",
         repr([x for x in m if x[0] == "cutover_upstream_errors_total"]))
    ok = []
    for i in range(6):
        r = p.get("/api/users/open%d" % i)
        e = p.access_entry(r.request_id, 2) or {}
        ok.append((r.status, r.route, e.get("reason")))
    t.ok(ok.count((200, "legacy", "fallback")) == 6, "reads keep falling back while the breaker is open", repr(ok))


def test_timeout(t, srv, legacy, service):
    p = harness.Proxy(legacy, service, upstream={"legacy": {"read_timeout": 300}})
    r = p.get("/slow?ms=2000")
    doc = r.json() or {}
    t.ok(r.status == 504 and doc.get("request_id") == r.request_id and doc.get("status") == 504 and "error" in doc
         and r.elapsed < 1.5,
         "legacy read_timeout 300 ms, a 2 s answer: 504 with a JSON body (error, status, request_id) after "
         "%.2f s" % r.elapsed, repr(r))
    e = p.access_entry(r.request_id, 2) or {}
    t.eq((e.get("status"), e.get("path")), (504, "/slow?ms=2000"), "the access log says 504")
    r = p.get("/fine")
    t.eq((r.status, r.upstream), (200, "legacy"), "the proxy goes on serving after the timeout")
    rc = p.stop()
    t.ok(rc == 0, "that proxy exits 0 on SIGTERM", p.log_tail())


def body(t):
    with harness.RedisServer() as srv:
        bad = ctl_all(("flag", "create", "users-read"), ("flag", "enable", "users-read"),
                      ("flag", "create", "users-write"), ("flag", "enable", "users-write"))
        t.ok(not bad, "flags created", bad)
        legacy, service = harness.Echo("legacy"), harness.Echo("service")
        p = harness.Proxy(legacy, service)
        test_kill(t, srv, p, service)
        test_redis_down(t, srv, p)
        test_service_down(t, srv, p, service)
        rc = p.stop()
        t.ok(rc == 0, "SIGTERM: the proxy exits 0, no sanitizer report", "exit %s\n%s" % (rc, p.log_tail()))
        test_timeout(t, srv, legacy, service)
        legacy.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy",))
