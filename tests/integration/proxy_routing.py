#!/usr/bin/python3
"""
proxy_routing.py - cutover-proxy in front of two real upstreams
(echo_upstream.py as legacy and service) with flags in a real Redis:
each request reaches the upstream its route's flag picks for its user
(reads by read_flag, writes by write_flag, unmatched paths to legacy),
allow/deny/cohort lists, the user id from the path, a header, a cookie, a
JWT claim and a JSON body, a 10% rollout over 10,000 users that matches
`cutoverctl flag eval` exactly and stays sticky at 20%, the headers the
upstream gets and the client gets back, and the force header.
"""
import base64
import json
import re
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ctl_all, eval_users

SECRET = "force-me-0123456789-secret"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")






def jwt(claims):
    def part(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return "%s.%s.%s" % (part({"alg": "HS256", "typ": "JWT"}), part(claims), "c2lnbmF0dXJl")


def where(r):
    """(X-Cutover-Route, the upstream that answered) of a response."""
    return r.route, r.upstream


def test_read_write(t, srv, p):
    harness.change_flags(t, srv, p, "50% each", ("flag", "set", "users-read", "--percent", "50%"),
           ("flag", "set", "users-write", "--percent", "50%"))
    users = ["rw%d" % i for i in range(40)]
    reads, writes = eval_users("users-read", users), eval_users("users-write", users)
    want = {u: ("service" if reads[u]["on"] else "legacy", "service" if writes[u]["on"] else "legacy") for u in users}
    t.ok(any(r != w for r, w in want.values()) and any(r == "service" and w == "legacy" for r, w in want.values())
         and any(r == "legacy" and w == "service" for r, w in want.values()),
         "sample has users whose read and write decisions differ both ways", repr(want))
    bad = {"GET": [], "HEAD": [], "writes": [], "sub": [], "echo": []}
    conn = p.connection()
    try:
        for u in users:
            rd, wr = want[u]
            r = p.get("/api/users/" + u, conn=conn)
            if r.status != 200 or where(r) != (rd, rd):
                bad["GET"].append((u, rd, r.status, where(r)))
            doc = r.json() or {}
            if (doc.get("method"), doc.get("path")) != ("GET", "/api/users/" + u):
                bad["echo"].append((u, doc.get("method"), doc.get("path")))
            r = p.request("HEAD", "/api/users/" + u, conn=conn)
            if r.status != 200 or r.route != rd or r.body:
                bad["HEAD"].append((u, rd, r.status, r.route, r.body[:50]))
            for method in ("PUT", "PATCH", "DELETE"):
                r = p.request(method, "/api/users/" + u, body=b'{"name":"x"}',
                              headers={"Content-Type": "application/json"}, conn=conn)
                doc = r.json() or {}
                if r.status != 200 or where(r) != (wr, wr) or doc.get("method") != method \
                        or doc.get("body") != '{"name":"x"}':
                    bad["writes"].append((u, method, wr, r.status, where(r), doc.get("method")))
            r = p.request("POST", "/api/users/%s/notes" % u, body=b"note", conn=conn)
            r2 = p.get("/api/users/%s/notes?page=2" % u, conn=conn)
            if where(r) != (wr, wr) or where(r2) != (rd, rd) or (r2.json() or {}).get("path") != \
                    "/api/users/%s/notes?page=2" % u:
                bad["sub"].append((u, rd, wr, where(r), where(r2)))
    finally:
        conn.close()
    t.ok(not bad["GET"], "GET /api/users/{id}: the read flag's decision, in X-Cutover-Route and the upstream "
         "that answered (%d users)" % len(users), repr(bad["GET"]))
    t.ok(not bad["echo"], "the upstream gets the method and the raw request target", repr(bad["echo"]))
    t.ok(not bad["HEAD"], "HEAD follows the read flag, and gets no body", repr(bad["HEAD"]))
    t.ok(not bad["writes"], "PUT, PATCH and DELETE follow the write flag, with their body", repr(bad["writes"]))
    t.ok(not bad["sub"], "/api/users/{id}/*: POST by the write flag, GET (with a query) by the read flag",
         repr(bad["sub"]))


def test_unmatched(t, srv, p):
    harness.change_flags(t, srv, p, "100% each", ("flag", "set", "users-read", "--percent", "100%"),
           ("flag", "set", "users-write", "--percent", "100%"))
    r = p.get("/api/users/anyone")
    t.eq(where(r), ("service", "service"), "at 100% a matched request goes to the service")
    bad = []
    for method, path in (("GET", "/"), ("GET", "/api/other"), ("GET", "/API/users/anyone"),
                         ("GET", "/apix/users/anyone"), ("GET", "/api/users"), ("OPTIONS", "/api/users/anyone"),
                         ("POST", "/api/users/anyone"), ("GET", "/api/me/anyone"), ("GET", "/static/app.js")):
        r = p.request(method, path)
        e = p.access_entry(r.request_id, 2) or {}
        if r.status != 200 or where(r) != ("legacy", "legacy") or (r.json() or {}).get("path") != path:
            bad.append((method, path, r.status, where(r)))
        if (e.get("reason"), e.get("route"), e.get("decision")) != ("no-route", "-", "legacy"):
            bad.append((method, path, "access log", e))
    t.ok(not bad, "paths and methods no route takes go to legacy, even with every flag at 100%", repr(bad))
    entries = [e for e in p.access_entries() if e.get("path") == "/static/app.js"]
    t.ok(entries and entries[-1].get("reason") == "no-route" and entries[-1].get("decision") == "legacy",
         "the access log says no-route for them", repr(entries[-1:]))


def reason_of(p, r):
    """(reason, user) of r's access log line."""
    e = p.access_entry(r.request_id, 2) or {}
    return e.get("reason"), e.get("user")


def test_lists(t, srv, p):
    harness.change_flags(t, srv, p, "lists at 0%", ("flag", "set", "users-read", "--percent", "0%"),
           ("flag", "allow", "users-read", "qa-alice"), ("cohort", "add", "beta", "c-carol", "bad-bob"),
           ("flag", "cohort", "add", "users-read", "beta"), ("flag", "deny", "users-read", "bad-bob"))
    got = {}
    for u in ("qa-alice", "c-carol", "bad-bob", "plain-pete"):
        r = p.get("/api/users/" + u)
        got[u] = (where(r), reason_of(p, r))
    t.eq(got["qa-alice"], (("service", "service"), ("allow", "qa-alice")),
         "at 0%, a user on the allow list goes to the service (reason allow)")
    t.eq(got["c-carol"], (("service", "service"), ("cohort", "c-carol")),
         "at 0%, a member of a cohort of the flag goes to the service (reason cohort)")
    t.eq(got["bad-bob"], (("legacy", "legacy"), ("deny", "bad-bob")),
         "a denied user stays on legacy, cohort member or not (reason deny)")
    t.eq(got["plain-pete"], (("legacy", "legacy"), ("bucket", "plain-pete")),
         "anyone else at 0% stays on legacy (reason bucket)")
    r = p.get("/api/users/qa%2Dali%63e")
    t.eq((where(r), reason_of(p, r), (r.json() or {}).get("path")),
         (("service", "service"), ("allow", "qa-alice"), "/api/users/qa%2Dali%63e"),
         "a percent-encoded path parameter is decoded for the user id (the upstream gets the path as sent)")
    harness.change_flags(t, srv, p, "100%", ("flag", "set", "users-read", "--percent", "100%"))
    r1, r2 = p.get("/api/users/bad-bob"), p.get("/api/users/plain-pete")
    t.eq((where(r1), where(r2)), (("legacy", "legacy"), ("service", "service")),
         "at 100% the denied user still stays on legacy, everyone else moves")
    harness.change_flags(t, srv, p, "disabled", ("flag", "disable", "users-read"))
    r = p.get("/api/users/qa-alice")
    t.eq((where(r), reason_of(p, r)), (("legacy", "legacy"), ("flag-off", "qa-alice")),
         "a disabled flag sends even allowed users to legacy (reason flag-off)")
    harness.change_flags(t, srv, p, "enabled at 0%", ("flag", "enable", "users-read"),
           ("flag", "set", "users-read", "--percent", "0%"))


def test_me_sources(t, srv, p):
    # users-read at 0% with qa-alice allowed: only she goes to the service.
    cases = [
        ("X-User-Id", {"X-User-Id": "qa-alice"}, "service", "qa-alice"),
        ("X-User-Id with spaces around", {"X-User-Id": "  qa-alice "}, "service", "qa-alice"),
        ("cookie uid among others", {"Cookie": "theme=dark; uid=qa-alice; lang=en"}, "service", "qa-alice"),
        ("quoted cookie", {"Cookie": 'uid="qa-alice"'}, "service", "qa-alice"),
        ("JWT sub claim", {"Authorization": "Bearer " + jwt({"sub": "qa-alice", "iat": 1})}, "service",
         "qa-alice"),
        ("header before cookie", {"X-User-Id": "someone", "Cookie": "uid=qa-alice"}, "legacy", "someone"),
        ("cookie before JWT", {"Cookie": "uid=qa-alice",
                               "Authorization": "Bearer " + jwt({"sub": "someone"})}, "service", "qa-alice"),
        ("JWT without the claim", {"Authorization": "Bearer " + jwt({"name": "qa-alice"})}, "legacy", None),
        ("a token that is not a JWT", {"Authorization": "Bearer not-a-jwt"}, "legacy", None),
        ("no user at all", {}, "legacy", None),
    ]
    for desc, headers, want, user in cases:
        r = p.get("/api/me", headers)
        reason, got_user = reason_of(p, r)
        want_reason = "no-user" if user is None else "allow" if want == "service" else "bucket"
        t.eq((r.status, where(r), got_user, reason), (200, (want, want), user, want_reason),
             "GET /api/me, %s: %s (user %s, reason %s)" % (desc, want, user, want_reason))


def test_body_user(t, srv, p):
    harness.change_flags(t, srv, p, "write flag at 0% with an allowed email", ("flag", "set", "users-write", "--percent", "0%"),
           ("flag", "allow", "users-write", "carol@example.com"))
    body = json.dumps({"name": "Carol", "email": "carol@example.com", "tags": ["a", "b"]}).encode()
    r = p.request("POST", "/api/users", body=body, headers={"Content-Type": "application/json"})
    doc = r.json() or {}
    t.ok(r.status == 200 and where(r) == ("service", "service") and doc.get("body") == body.decode()
         and doc.get("headers", {}).get("content-length") == str(len(body)),
         "POST /api/users: the user id from body:email picks the service; the body arrives intact", repr(r))
    t.eq(reason_of(p, r), ("allow", "carol@example.com"), "the access log names the user from the body")
    body2 = json.dumps({"email": "dave@example.com"}).encode()
    r = p.request("POST", "/api/users", body=body2, headers={"Content-Type": "application/json"})
    t.ok(r.status == 200 and where(r) == ("legacy", "legacy") and (r.json() or {}).get("body") == body2.decode(),
         "another email stays on legacy, body intact", repr(r))
    r = p.request("POST", "/api/users", body=b'{"name":"no email"}', headers={"Content-Type": "application/json"})
    t.eq((r.status, where(r), reason_of(p, r)[0]), (200, ("legacy", "legacy"), "no-user"),
         "a JSON body without the field: no user, legacy")
    r = p.request("POST", "/api/users", body=b"")
    t.eq((r.status, where(r)), (200, ("legacy", "legacy")), "an empty body: no user, legacy")


def test_distribution(t, srv, p):
    harness.change_flags(t, srv, p, "10%", ("flag", "set", "users-read", "--percent", "10%"))
    users = ["u%d" % i for i in range(10000)]

    def run_all(users):
        """GET /api/users/<u> for every user, 4 threads on keep-alive
        connections: {user: (X-Cutover-Route, upstream that answered)}."""
        routes = {}
        lock = threading.Lock()
        n = 4
        deadline = time.monotonic() + 60

        def work(k):
            conn = p.connection(timeout=5)
            try:
                for u in users[k::n]:
                    if time.monotonic() > deadline:
                        break  # the missing users fail the test
                    try:
                        r = p.get("/api/users/" + u, conn=conn)
                        res = (r.route, r.upstream) if r.status == 200 else ("status %d" % r.status, None)
                    except Exception as e:
                        conn.close()
                        res = ("error %r" % e, None)
                    with lock:
                        routes[u] = res
            finally:
                conn.close()
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return routes

    t0 = time.monotonic()
    at10 = run_all(users)
    dt = time.monotonic() - t0
    t.diag("10,000 requests in %.1f s" % dt)
    bad = {u: v for u, v in at10.items() if v not in (("service", "service"), ("legacy", "legacy"))}
    t.ok(not bad and len(at10) == len(users), "10,000 users: every request answered 200 by the upstream its "
         "X-Cutover-Route names", repr(list(bad.items())[:10]))
    on10 = {u for u, v in at10.items() if v[0] == "service"}
    t.ok(900 <= len(on10) <= 1100, "at 10%%: %d of 10,000 users on the service (10%% +-1%%)" % len(on10))
    ev = eval_users("users-read", users)
    mismatch = [(u, at10.get(u), ev[u]) for u in users if (at10.get(u, (None,))[0] == "service") != ev[u]["on"]]
    t.ok(not mismatch, "every decision matches cutoverctl flag eval (%d users)" % len(users), repr(mismatch[:10]))
    logged = {}
    for e in p.access_entries():
        if e.get("route") == "user" and e.get("user") in ev:
            logged[e["user"]] = e
    sample = users[::97]
    bad_log = [(u, logged.get(u), ev[u]) for u in sample
               if u not in logged or logged[u].get("bucket") != ev[u]["bucket"]
               or logged[u].get("reason") != ev[u]["reason"] or logged[u].get("flag") != "users-read"
               or logged[u].get("decision") != ("service" if ev[u]["on"] else "legacy")]
    t.ok(not bad_log, "the access log's bucket, reason, flag and decision match flag eval (%d sampled)" % len(sample),
         repr(bad_log[:5]))

    harness.change_flags(t, srv, p, "20%", ("flag", "set", "users-read", "--percent", "20%"))
    at20 = run_all(users)
    on20 = {u for u, v in at20.items() if v == ("service", "service")}
    t.ok(1900 <= len(on20) <= 2100, "at 20%%: %d of 10,000 users on the service (20%% +-1%%)" % len(on20))
    t.ok(on10 <= on20, "raising 10% to 20% keeps every user who was on the service there (sticky)",
         repr(sorted(on10 - on20)[:10]))
    ev20 = eval_users("users-read", users)
    mismatch = [u for u in users if (u in on20) != ev20[u]["on"]]
    t.ok(not mismatch, "and every decision at 20% matches flag eval", repr(mismatch[:10]))


def raw_get(p, head_lines):
    c = p.raw()
    try:
        c.send("\r\n".join(head_lines) + "\r\n\r\n")
        return c.read_response()
    finally:
        c.close()


def test_headers(t, srv, p):
    harness.change_flags(t, srv, p, "users-read 100%", ("flag", "set", "users-read", "--percent", "100%"))
    r = raw_get(p, [
        "GET /api/users/hdr?q=1 HTTP/1.1",
        "Host: front.example:8080",
        "Connection: keep-alive, X-Secret-Hop",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Proxy-Connection: keep-alive",
        "X-Secret-Hop: must-not-pass",
        "X-Custom: hello world",
        "X-Multi: a",
        "X-Multi: b",
        "Accept: application/json",
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: spoofed.example",
        "X-Request-Id: req-abc-123",
    ])
    doc = r.json() or {}
    h = doc.get("headers", {})
    t.ok(r.status == 200 and doc.get("upstream") == "service", "a request with every kind of header is proxied",
         repr(r))
    hop = [n for n in ("connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                       "proxy-connection", "x-secret-hop") if n in h]
    t.ok(not hop, "hop-by-hop request headers (Connection and what it names, Keep-Alive, TE, Trailer, Upgrade, "
         "Proxy-*) do not reach the upstream", "reached it: %r" % {n: h[n] for n in hop})
    t.eq((h.get("x-custom"), h.get("x-multi"), h.get("accept"), h.get("host")),
         ("hello world", "a, b", "application/json", "front.example:8080"),
         "ordinary headers reach the upstream (a repeated one in order), Host unchanged")
    t.eq(h.get("x-forwarded-for"), "203.0.113.7, 127.0.0.1", "X-Forwarded-For: the client address is appended")
    t.eq(h.get("x-forwarded-proto"), "http", "X-Forwarded-Proto is the proxy's own (http), not the client's")
    t.eq(h.get("x-forwarded-host"), "front.example:8080", "X-Forwarded-Host is the client's Host")
    t.eq(h.get("x-request-id"), "req-abc-123", "a sane X-Request-Id from the client is passed on")
    t.eq(r.header("X-Request-Id"), "req-abc-123", "and echoed in the response")
    e = p.access_entry("req-abc-123", 2) or {}
    t.eq(e.get("path"), "/api/users/hdr?q=1", "and it is the access log's request_id")

    r = p.get("/api/users/hdr", tag=False)
    rid = ((r.json() or {}).get("headers") or {}).get("x-request-id", "")
    t.ok(REQUEST_ID.match(rid) and p.access_entry(rid, 2),
         "without X-Request-Id the proxy makes one (32 hex digits): the upstream gets it, the access log has it",
         "upstream got %r" % rid)
    t.eq(r.header("X-Request-Id"), rid or "(none generated)", "and the generated id is echoed in the response")
    ids = {}
    for bad_id in ("has space", "x" * 65, 'quo"te', "back\\slash", ""):
        r = p.get("/api/users/hdr", {"X-Request-Id": bad_id})
        ids[bad_id] = ((r.json() or {}).get("headers") or {}).get("x-request-id", "")
    t.ok(all(REQUEST_ID.match(v) for v in ids.values()) and len(set(ids.values())) == len(ids),
         "unusable X-Request-Ids (space, 65 bytes, quote, backslash, empty) are replaced by fresh generated ones",
         repr(ids))

    r = raw_get(p, ["GET /api/users/hdr HTTP/1.1", "Host: h", "X-Forwarded-For: 198.51.100.1",
                    "X-Forwarded-For: 198.51.100.2"])
    t.eq(((r.json() or {}).get("headers") or {}).get("x-forwarded-for"), "198.51.100.1, 198.51.100.2, 127.0.0.1",
         "two X-Forwarded-For headers: both hops are kept, then the client address")

    r = p.get("/api/users/hdr/hop")
    names = {n.lower() for n, _ in r.headers}
    leaked = sorted(names & {"x-upstream-hop", "keep-alive", "upgrade", "trailer", "proxy-authenticate"})
    conn = r.header("Connection") or ""
    t.ok(r.status == 200 and not leaked and "x-upstream-hop" not in conn.lower()
         and r.header("X-Upstream-Ordinary") == "kept",
         "hop-by-hop response headers (Connection and what it names, Keep-Alive, Upgrade, Trailer, Proxy-*) "
         "are stripped, ordinary ones kept", "leaked %r, Connection %r\n%r" % (leaked, conn, r.headers))


def test_force(t, srv, p):
    harness.change_flags(t, srv, p, "users-read 0%", ("flag", "set", "users-read", "--percent", "0%"))
    r = p.get("/api/users/tester", {"X-Cutover-Force": "service " + SECRET})
    doc = r.json() or {}
    t.ok(r.status == 200 and where(r) == ("service", "service") and "x-cutover-force" not in doc.get("headers", {}),
         "X-Cutover-Force: service <secret> goes to the service at 0%, and the header does not reach it", repr(r))
    t.eq(reason_of(p, r)[0], "force", "access log reason: force")
    for desc, value in (("a wrong secret", "service not-the-secret-at-all"),
                        ("the secret cut short", "service " + SECRET[:-1]),
                        ("the secret with more after it", "service " + SECRET + "x"), ("no secret", "service"),
                        ("the secret alone", SECRET)):
        r = p.get("/api/users/tester", {"X-Cutover-Force": value})
        doc = r.json() or {}
        t.ok(r.status == 200 and where(r) == ("legacy", "legacy") and "x-cutover-force" not in doc.get("headers", {})
             and reason_of(p, r)[0] == "bucket",
             "X-Cutover-Force with %s is ignored (legacy, reason bucket) and stripped" % desc, repr(r))
    harness.change_flags(t, srv, p, "users-read 100%", ("flag", "set", "users-read", "--percent", "100%"))
    r = p.get("/api/users/tester", {"X-Cutover-Force": "legacy " + SECRET})
    t.eq((where(r), reason_of(p, r)[0]), (("legacy", "legacy"), "force"),
         "X-Cutover-Force: legacy <secret> keeps a user on legacy at 100%")


def body(t):
    with harness.RedisServer() as srv:
        bad = ctl_all(("flag", "create", "users-read"), ("flag", "enable", "users-read"),
                      ("flag", "create", "users-write"), ("flag", "enable", "users-write"))
        t.ok(not bad, "flags created", bad)
        legacy, service = harness.Echo("legacy"), harness.Echo("service")
        p = harness.Proxy(legacy, service, top={"force_header": "X-Cutover-Force", "force_secret": SECRET})
        test_read_write(t, srv, p)
        test_unmatched(t, srv, p)
        test_lists(t, srv, p)
        test_me_sources(t, srv, p)
        test_body_user(t, srv, p)
        test_distribution(t, srv, p)
        test_headers(t, srv, p)
        test_force(t, srv, p)
        rc = p.stop()
        t.ok(rc == 0, "SIGTERM: the proxy exits 0, no sanitizer report", "exit %s\n%s" % (rc, p.log_tail()))
        for e in (legacy, service):
            e.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy",))
