#!/usr/bin/python3
"""
proxy_ops.py - running cutover-proxy: --check-config (the shipped file,
broken files named FILE:LINE:) and --version; /readyz before and after
the first flag snapshot, /healthz, /flags, /metrics and the admin token;
the access log's fields and every reason; SIGUSR1 (log reopened after a
rename), SIGHUP (a good config applies, a broken one is refused while the
old one keeps serving) and SIGTERM (stop accepting, finish the request in
flight, exit 0).
"""
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ctl_all, eval_users, metric_sum, run_proxy

SECRET = "force-me-0123456789-secret"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# A valid config without comments (libconfuse miscounts lines after
# comments), one option per line, so that an error's line is known.
BASE = """listen = { "127.0.0.1:18080" }
admin_listen = "127.0.0.1:19901"
workers = 2
redis {
	url = "redis://127.0.0.1:6379/0"
	prefix = "cutover"
}
upstream legacy {
	address = "127.0.0.1:3000"
}
upstream service {
	address = "127.0.0.1:3001"
}
route me {
	methods = { "GET" }
	path = "/api/me"
	user = { "header:X-User-Id" }
	read_flag = "users-read"
}
"""






def write(dirname, name, text):
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_cli(t, tmp):
    shipped = os.path.join(harness.SRCDIR, "conf", "cutover.conf")
    rc, out, err = run_proxy("--check-config", "-c", shipped)
    t.ok(rc == 0 and "OK" in out, "--check-config on the shipped conf/cutover.conf: exit 0", "exit %s\n%s%s"
         % (rc, out, err))
    path = write(tmp, "base.conf", BASE)
    rc, out, err = run_proxy("-t", "-c", path)
    t.ok(rc == 0, "-t on a small valid file: exit 0", "exit %s\n%s%s" % (rc, out, err))

    lines = BASE.splitlines()
    cases = [
        ("a syntax error", 3, "workers = = 2"),
        ("an unknown option", 3, "wokers = 2"),
        ("a number that is not decimal", 3, "workers = 0x2"),
        ("a bad port", 9, '\taddress = "127.0.0.1:99999"'),
        ("a path without its leading /", 16, '\tpath = "api/me"'),
        ("an unknown user source", 17, '\tuser = { "nowhere:id" }'),
        ("a bad flag name", 18, '\tread_flag = "users read"'),
        ("an option set twice", 2, 'workers = 2\nworkers = 3'),
    ]
    for desc, line, text in cases:
        broken = lines[:line - 1] + text.split("\n") + lines[line:]
        want_line = line + text.count("\n")
        path = write(tmp, "broken.conf", "\n".join(broken) + "\n")
        rc, out, err = run_proxy("--check-config", "-c", path)
        t.ok(rc == 1 and ("%s:%d: " % (path, want_line)) in err,
             "--check-config with %s: exit 1, '%s:%d: reason'" % (desc, os.path.basename(path), want_line),
             "exit %s\nstdout %r\nstderr %r" % (rc, out, err))
    path = write(tmp, "short-secret.conf", BASE + 'force_header = "X-Force"\nforce_secret = "short"\n')
    rc, out, err = run_proxy("--check-config", "-c", path)
    t.ok(rc == 1 and ("%s:%d: " % (path, len(lines) + 2)) in err and "force_secret" in err,
         "--check-config: a force_secret under 16 characters is refused on its line", err)
    path = write(tmp, "no-legacy.conf", BASE.replace('upstream legacy {\n\taddress = "127.0.0.1:3000"\n}\n', ""))
    rc, out, err = run_proxy("--check-config", "-c", path)
    t.ok(rc == 1 and path + ":" in err and "legacy" in err, "--check-config: a missing upstream is named", err)
    missing = os.path.join(tmp, "nope.conf")
    rc, out, err = run_proxy("--check-config", "-c", missing)
    t.ok(rc == 1 and missing + ":" in err, "--check-config on a file that does not exist: exit 1, names it", err)

    with open(shipped) as f:
        text = f.read().splitlines()
    where = next(i for i, line in enumerate(text) if line.startswith("workers"))
    text[where] = "workers = lots"
    path = write(tmp, "shipped-broken.conf", "\n".join(text) + "\n")
    rc, out, err = run_proxy("--check-config", "-c", path)
    m = re.search(re.escape(path) + r":(\d+): ", err)
    t.ok(rc == 1 and m, "--check-config on the shipped file with 'workers = lots': exit 1, FILE:LINE:", err)
    t.eq(int(m.group(1)) if m else None, where + 1,
         "the line reported for the shipped file (with its comments) is the broken line")

    with open(os.path.join(harness.SRCDIR, "configure.ac")) as f:
        version = re.search(r"AC_INIT\(\[cutover\], \[([^]]+)\]", f.read()).group(1)
    rc, out, err = run_proxy("--version")
    t.eq((rc, out), (0, "cutover-proxy %s\n" % version), "--version prints the version")
    rc, out, err = run_proxy()
    t.ok(rc == 1 and "usage:" in err, "no arguments: usage on stderr, exit 1", "exit %s\n%s" % (rc, err))


def test_not_ready(t, srv, legacy, service):
    srv.stop(save=True)
    p = harness.Proxy(legacy, service, wait_ready=False)
    r = harness.wait_http("http://127.0.0.1:%d/healthz" % p.admin_port, 10)
    t.ok(r is not None and r.body == b"ok\n", "/healthz answers 200 ok while Redis is down", repr(r))
    r = p.admin("/readyz")
    t.ok(r.status == 503 and b"not ready" in r.body, "/readyz is 503 before the first flag snapshot", repr(r))
    r = p.get("/api/users/anyone")
    e = p.access_entry(r.request_id) or {}
    t.eq((r.status, r.route, e.get("reason")), (200, "legacy", "no-flags-yet"),
         "requests meanwhile go to legacy (reason no-flags-yet)")
    srv.start()
    t.ok(p.wait_ready(15), "Redis up: /readyz turns 200 once the flags are loaded", p.log_tail(10))
    r = p.admin("/readyz")
    t.ok(r.status == 200 and b"flags loaded" in r.body, "and says the flags are loaded", repr(r))
    rc = p.stop()
    t.eq(rc, 0, "that proxy exits 0 on SIGTERM")


def test_admin(t, srv, p):
    harness.change_flags(t, srv, p, "users-read 100%", ("flag", "set", "users-read", "--percent", "100%"))
    r = p.admin("/healthz")
    t.eq((r.status, r.body), (200, b"ok\n"), "/healthz: 200 ok")
    t.eq(p.admin("/readyz").status, 200, "/readyz: 200 with the flags loaded")
    doc = p.admin("/flags").json() or {}
    flags = {f.get("name"): f for f in doc.get("flags", [])}
    t.ok(doc.get("version") == harness.store_version(srv) and flags.get("users-read", {}).get("percent") == 10000
         and flags["users-read"].get("enabled") is True and "users-write" in flags,
         "/flags: the snapshot in force as JSON, with the store's version", repr(doc))
    t.eq(p.admin("/nope").status, 404, "an unknown admin path: 404")

    before = p.metrics()
    n = 7
    for i in range(n):
        p.get("/api/users/m%d" % i)
    m = p.metrics()
    labels = dict(route="user", upstream="service", reason="bucket", status="200")
    got = metric_sum(m, "cutover_requests_total", **labels) - metric_sum(before, "cutover_requests_total", **labels)
    t.eq(got, n, "/metrics: cutover_requests_total{route,upstream,reason,status} counts the requests")
    series = [(ls, v) for name, ls, v in m if name == "cutover_requests_total"]
    t.ok(series and all({"route", "upstream", "reason", "status"} <= set(ls) for ls, _ in series),
         "every cutover_requests_total series has route, upstream, reason and status labels", repr(series))
    buckets = [(ls["le"], v) for name, ls, v in m if name == "cutover_upstream_seconds_bucket"
               and ls.get("upstream") == "service"]
    count = metric_sum(m, "cutover_upstream_seconds_count", upstream="service")
    counts = [v for _, v in buckets]
    t.ok(buckets and buckets[-1][0] == "+Inf" and counts == sorted(counts) and counts[-1] == count
         and count - metric_sum(before, "cutover_upstream_seconds_count", upstream="service") == n
         and metric_sum(m, "cutover_upstream_seconds_sum", upstream="service") > 0,
         "cutover_upstream_seconds: a histogram (cumulative buckets, +Inf = count, _sum) that counted them",
         repr(buckets) + " count %r" % count)
    t.eq(metric_sum(m, "cutover_flags_version"), harness.store_version(srv),
         "cutover_flags_version is the store's version")
    t.ok(not harness.metric_has(m, "__unparsed__"), "every /metrics line is Prometheus text",
         repr([x for x in m if x[0] == "__unparsed__"]))
    r = p.admin("/metrics")
    t.ok(r.header("Content-Type", "").startswith("text/plain"), "/metrics is text/plain", repr(r.headers))


def test_admin_token(t, legacy, service):
    token = "admin-token-0123456789"
    p = harness.Proxy(legacy, service, top={"admin_token": token}, wait_ready=False)
    r = harness.wait_http("http://127.0.0.1:%d/healthz" % p.admin_port, 10)
    t.ok(r is not None and r.status == 200, "admin_token set: /healthz still 200 without it", repr(r))
    got = {path: p.admin(path).status for path in ("/metrics", "/flags", "/readyz")}
    t.eq(got, {"/metrics": 401, "/flags": 401, "/readyz": 401}, "/metrics, /flags and /readyz without the token: 401")
    got = {h: p.admin("/metrics", {"Authorization": h}).status
           for h in ("Bearer wrong", "Bearer " + token[:-1], "Bearer " + token + "x", token, "Basic " + token)}
    t.ok(set(got.values()) == {401}, "a wrong or malformed token: 401", repr(got))
    r = p.admin("/metrics", {"Authorization": "Bearer " + token})
    t.ok(r.status == 200 and b"cutover_requests_total" in r.body, "with 'Authorization: Bearer TOKEN': 200",
         repr(r))
    t.eq(p.stop(), 0, "that proxy exits 0 on SIGTERM")


def test_access_log(t, srv, p, service):
    harness.change_flags(t, srv, p, "lists", ("flag", "set", "users-read", "--percent", "0%"),
           ("flag", "allow", "users-read", "al-allowed"), ("flag", "deny", "users-read", "al-denied"),
           ("cohort", "add", "beta", "al-cohort"), ("flag", "cohort", "add", "users-read", "beta"),
           ("flag", "disable", "users-write"))
    ev = eval_users("users-read", ["al-allowed", "al-denied", "al-cohort", "al-plain"])
    cases = [
        ("no-route", "GET", "/elsewhere", {}, "legacy", None, "-", None),
        ("no-user", "GET", "/api/me", {}, "legacy", None, "me", None),
        ("flag-off", "PUT", "/api/users/al-plain", {}, "legacy", "al-plain", "user", "users-write"),
        ("deny", "GET", "/api/users/al-denied", {}, "legacy", "al-denied", "user", "users-read"),
        ("allow", "GET", "/api/users/al-allowed", {}, "service", "al-allowed", "user", "users-read"),
        ("cohort", "GET", "/api/me", {"X-User-Id": "al-cohort"}, "service", "al-cohort", "me", "users-read"),
        ("bucket", "GET", "/api/users/al-plain", {}, "legacy", "al-plain", "user", "users-read"),
        ("force", "GET", "/api/users/al-plain", {"X-Cutover-Force": "service " + SECRET}, "service", "al-plain",
         "user", None),
    ]
    responses = []
    for reason, method, path, headers, decision, user, route, flag in cases:
        r = p.request(method, path, headers, body=b"{}" if method == "PUT" else None)
        responses.append(r)
        e = p.access_entry(r.request_id) or {}
        if reason == "force":  # decided before the user id is looked for
            user = e.get("user") if e.get("user") in (None, user) else user
        ok = (r.status, r.route, e.get("reason"), e.get("decision"), e.get("user"), e.get("route"), e.get("method"),
              e.get("path"), e.get("status")) == (200, decision, reason, decision, user, route, method, path, 200)
        if flag:
            ok = ok and e.get("flag") == flag
        if user in ev and flag == "users-read":
            ok = ok and e.get("bucket") == ev[user]["bucket"]
        t.ok(ok, "access log, reason %s: %s %s -> %s, user %s, route %s" % (reason, method, path, decision, user,
                                                                             route), repr(e))
    harness.change_flags(t, srv, p, "kill users-write", ("flag", "enable", "users-write"), ("flag", "kill", "users-write"))
    r = p.request("DELETE", "/api/users/al-plain")
    e = p.access_entry(r.request_id) or {}
    t.eq((r.route, e.get("reason"), e.get("flag"), e.get("method")), ("legacy", "kill", "users-write", "DELETE"),
         "access log, reason kill: a write with its flag killed goes to legacy")
    harness.change_flags(t, srv, p, "users-read 100%", ("flag", "set", "users-read", "--percent", "100%"))
    service.kill()
    r = p.get("/api/users/al-fallback")
    e = p.access_entry(r.request_id) or {}
    t.eq((r.status, r.route, e.get("reason"), e.get("decision")), (200, "legacy", "fallback", "legacy"),
         "access log, reason fallback: service down, a read served by legacy")
    service.start()

    e = p.access_entry(responses[4].request_id) or {}
    keys = ["time", "request_id", "method", "path", "user", "route", "decision", "reason", "flag", "bucket", "status",
            "bytes", "upstream_ms", "total_ms"]
    t.ok(all(k in e for k in keys), "every line has %s" % ", ".join(keys), repr(e))
    t.ok(TIME.match(str(e.get("time"))) and isinstance(e.get("bucket"), int) and 0 <= e["bucket"] < 10000
         and e.get("bytes") == len(responses[4].body) and isinstance(e.get("upstream_ms"), (int, float))
         and isinstance(e.get("total_ms"), (int, float)) and 0 <= e["upstream_ms"] <= e["total_ms"] < 5000,
         "time is UTC with ms, bucket 0..9999, bytes the body's length, 0 <= upstream_ms <= total_ms", repr(e))
    e = p.access_entry(responses[0].request_id) or {}
    t.ok(e.get("bucket") == -1 and e.get("user") is None and e.get("flag") is None,
         "without a flag decision: bucket -1, user and flag null", repr(e))


def test_sigusr1(t, p):
    r = p.get("/before-rotate")
    rotated = p.access_log + ".1"
    os.rename(p.access_log, rotated)
    p.send_signal(signal.SIGUSR1)

    def logged_in_new_file():
        r = p.get("/after-rotate")
        try:
            with open(p.access_log) as f:
                return r.request_id in f.read()
        except OSError:
            return False
    ok = harness.poll(logged_in_new_file, 5, 0.02)
    t.ok(ok, "SIGUSR1 after a rename: new requests are logged in a new file at the configured path", p.log_tail(5))
    r2 = p.get("/after-rotate-2")
    with open(rotated) as f:
        old = f.read()
    with open(p.access_log) as f:
        new = f.read()
    t.ok(r.request_id in old and r2.request_id in new and r2.request_id not in old,
         "the renamed file keeps the old lines and gets no new ones", "old:\n%s\nnew:\n%s" % (old[-600:], new[-600:]))


def test_sighup(t, srv, p):
    r = p.get("/reload-check")
    t.eq((r.route, r.upstream), ("legacy", "legacy"), "before the reload: X-Cutover-Route present, default legacy")
    good = p.conf + ".good"
    os.replace(p.conf, good)
    with open(good) as f:
        text = f.read()
    p.write_config(text.replace("workers = 2", "workers = = 2"))
    offset = p.stderr_size()
    p.send_signal(signal.SIGHUP)
    t.ok(p.wait_stderr("reload rejected", 5, since=offset) and p.conf + ":" in p.stderr()[offset:],
         "SIGHUP with a broken config: the proxy logs that it rejected it, naming FILE:LINE",
         p.log_tail(5))
    r = p.get("/reload-check")
    t.ok(p.alive() and r.status == 200 and (r.route, r.upstream) == ("legacy", "legacy"),
         "and keeps serving with the old config", repr(r))
    p.write_config(p.render(top={"route_header": False, "default": "service",
                                 "force_header": "X-Cutover-Force", "force_secret": SECRET}))
    offset = p.stderr_size()
    p.send_signal(signal.SIGHUP)
    ok = harness.poll(lambda: (lambda r: r.route is None and r.upstream == "service")(p.get("/reload-check")), 5)
    t.ok(ok and p.wait_stderr("reloaded", 2, since=offset),
         "SIGHUP with route_header = false and default = service: applies (header gone, unmatched paths to the "
         "service) and is logged", p.log_tail(5))
    r = p.get("/api/me", {"X-Cutover-Force": "legacy " + SECRET})
    t.eq((r.status, r.route, r.upstream), (200, None, "legacy"), "the rest of the config still applies after it")


def test_sigterm(t, p, echoes):
    idle = p.raw()
    idle.send("GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
    first = idle.read_response()
    result = {}

    def slow():
        try:
            result["r"] = p.get("/slow?ms=1000", timeout=10)
        except Exception as e:
            result["error"] = repr(e)
    th = threading.Thread(target=slow)
    th.start()
    t.ok(first.status == 200 and harness.poll(lambda: sum(e.stats()["inflight"] for e in echoes) >= 1, 5),
         "a slow request is in flight, and an idle keep-alive connection is open")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    stopped = harness.poll(refused, 3)
    in_flight = th.is_alive()
    t.ok(stopped and in_flight, "SIGTERM: the proxy stops accepting (connections refused) while the request is "
         "still in flight (%.2f s)" % (time.monotonic() - t0))
    t.ok(idle.at_eof(3), "the idle keep-alive connection is closed")
    th.join(10)
    r = result.get("r")
    t.ok(r is not None and r.status == 200 and r.elapsed >= 1.0,
         "the request in flight completes with 200", repr(result))
    t.ok(r is not None and (r.header("Connection") or "").lower() == "close",
         "and its response says Connection: close", repr(r))
    rc = p.wait(10)
    t.ok(rc == 0 and time.monotonic() - t0 < 5, "then the proxy exits 0 (%.2f s after SIGTERM)"
         % (time.monotonic() - t0), "exit %s\n%s" % (rc, p.log_tail()))
    p.stop()
    idle.close()


def body(t):
    tmp = tempfile.mkdtemp(prefix="cutover-it-ops-")
    harness._tempdirs.append(tmp)
    test_cli(t, tmp)
    with harness.RedisServer() as srv:
        bad = ctl_all(("flag", "create", "users-read"), ("flag", "enable", "users-read"),
                      ("flag", "create", "users-write"), ("flag", "enable", "users-write"))
        t.ok(not bad, "flags created", bad)
        legacy, service = harness.Echo("legacy"), harness.Echo("service")
        test_not_ready(t, srv, legacy, service)
        test_admin_token(t, legacy, service)
        p = harness.Proxy(legacy, service, top={"force_header": "X-Cutover-Force", "force_secret": SECRET})
        test_admin(t, srv, p)
        test_access_log(t, srv, p, service)
        test_sigusr1(t, p)
        test_sighup(t, srv, p)
        test_sigterm(t, p, (legacy, service))
        legacy.stop()
        service.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy",))
