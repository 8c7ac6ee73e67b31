#!/usr/bin/python3
"""
proxy_repoint.py - SIGHUP with another Redis (URL, then prefix): the
proxy's flags and its migration links move to it without a restart, and
keep serving while they do.

Two redis-servers, A and B, with the same flag configured differently:
users-read at 100% in A, disabled in B, at 100% again under a second
prefix in B. Each reload must change where reads go, and the first-seen
enqueues of new users must land in the store the config now names.
"""
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import Echo, Proxy, poll, run_ctl  # noqa: E402

ROUTES = """
route user {
	methods = { "GET" }
	path = "/api/users/{id}"
	user = { "path:id" }
	read_flag = "users-read"
	migrate = true
}
"""


def flags(t, url, prefix, percent):
    """users-read in the store at url/prefix: at percent, or disabled when
    percent is None."""
    cmds = [("flag", "create", "users-read")]
    if percent is not None:
        cmds += [("flag", "enable", "users-read"), ("flag", "set", "users-read", "--percent", "%d%%" % percent)]
    bad = [" ".join(c) + ": " + err for c in cmds for rc, _, err in [run_ctl(*c, redis_url=url, prefix=prefix)]
           if rc != 0]
    t.ok(not bad, "users-read in %s under %s: %s" % (url, prefix, "disabled" if percent is None else
                                                         "%d%%" % percent), "\n".join(bad))


def routes_to(p, upstream, user):
    return poll(lambda: p.get("/api/users/" + user).upstream == upstream, 10)


def seen(srv, prefix, user):
    r = srv.client()
    try:
        return r.sismember(prefix + ":seen", user)
    finally:
        r.close()


def seen_after_get(p, srv, prefix, user):
    """Whether user is in prefix's seen set of srv; if not, reads it
    through the proxy (on a new connection, so any worker) to be seen."""
    if seen(srv, prefix, user):
        return True
    p.get("/api/users/" + user)
    return False


def body(t):
    with harness.RedisServer() as a, harness.RedisServer() as b:
        other = harness.PREFIX + "-other"
        flags(t, a.url(), harness.PREFIX, 100)
        flags(t, b.url(), harness.PREFIX, None)
        flags(t, b.url(), other, 100)
        legacy, service = Echo("legacy"), Echo("service")
        p = Proxy(legacy, service, routes=ROUTES, workers=2, redis_url=a.url())
        t.ok(routes_to(p, "service", "u1"), "on Redis A (users-read at 100%): reads go to the service")
        t.ok(poll(lambda: seen(a, harness.PREFIX, "u1"), 5), "and u1 is enqueued in A")

        t.ok(p.reload(redis_url=b.url()), "SIGHUP naming Redis B: the reload is applied", p.log_tail(5))
        t.ok(routes_to(p, "legacy", "u2"), "B's flags are in use: users-read disabled, reads go to legacy")
        users = ["u%d" % n for n in range(2, 12)]
        t.ok(poll(lambda: all(seen_after_get(p, b, harness.PREFIX, u) for u in users), 10),
             "first-seen users now land in B, through both workers (their links moved; one seen while a link was "
             "still connecting is enqueued when seen again)", p.log_tail(10))
        t.ok(not any(seen(a, harness.PREFIX, "u%d" % n) for n in range(2, 12)), "and none of them in A")

        t.ok(p.reload(prefix=other), "SIGHUP naming another prefix in B: applied", p.log_tail(5))
        t.ok(routes_to(p, "service", "u20"), "that prefix's flags are in use (users-read at 100%)")
        t.ok(poll(lambda: seen_after_get(p, b, other, "u20"), 10), "and u20 is enqueued under the new prefix")
        moved = lambda w: p.stderr().count("worker %d: migration link moves to" % w) == 2  # noqa: E731
        t.ok(poll(lambda: p.get("/api/users/u21") and moved(0) and moved(1), 10),
             "each worker's two moves are logged", p.log_tail(8))
        t.eq(p.stop(), 0, "the proxy exits 0 on SIGTERM")
        legacy.stop()
        service.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy", "cutoverctl"))
