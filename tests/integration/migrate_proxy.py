#!/usr/bin/python3
"""
migrate_proxy.py - the proxy's side of lazy migration, with real proxies,
a real redis-server, echo upstreams and, where a user must really migrate,
`cutover-migrate run` reading a MongoDB playing legacy
(tests/mongo_double.py, or CUTOVER_TEST_MONGO_URI) and writing to
import_service.py.

  - first-seen: 20 concurrent first requests per proxy for one user,
    through two proxy processes of two workers each, put the user on
    <p>:migrate exactly once (several users)
  - read_guard: with the read flag at 100% and no worker, no read of an
    unmigrated user reaches the service (reason not-migrated) and each
    user is put on the priority stream once; a worker started then
    migrates them, the proxies learn it from the channel (and a proxy
    started later from HSCAN) and the reads go to the service
  - refresh: a migrated user's write that goes to legacy (write flag off)
    re-enqueues the user (reason refresh) after legacy answered 2xx, and
    the worker brings the service's copy up to date; a failed legacy write
    does not; an unmigrated user's legacy write that races the user's
    migration still ends with the service holding that write
  - migrate-first: a write for an unmigrated user waits for the worker,
    then goes to the service; without a worker it goes to legacy after
    migrate_wait, or gets a 503 with migrate_timeout = "503"; a waiting
    write whose client hung up is not carried out
  - Redis down: requests are still served, first-seen enqueues are
    counted in cutover_migrate_dropped_total; Redis back: enqueues resume
"""
import datetime
import itertools
import json
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import Echo, ImportService, Migrator, Mongo, Proxy, metric_sum, migration_keys, poll  # noqa: E402

ROUTES = """
route user {
	methods = { "GET", "HEAD", "PUT", "PATCH", "DELETE" }
	path = "/api/users/{id}"
	user = { "path:id" }
	read_flag = "users-read"
	write_flag = "users-write"
	migrate = true
	read_guard = %(read_guard)s
	unmigrated_writes = "%(unmigrated_writes)s"
	migrate_wait = %(migrate_wait)d
}

route wait-then-legacy {
	methods = { "PUT" }
	path = "/t/legacy/{id}"
	user = { "path:id" }
	write_flag = "users-write"
	migrate = true
	read_guard = true
	unmigrated_writes = "migrate-first"
	migrate_wait = 500
}

route wait-then-503 {
	methods = { "PUT" }
	path = "/t/503/{id}"
	user = { "path:id" }
	write_flag = "users-write"
	migrate = true
	read_guard = true
	unmigrated_writes = "migrate-first"
	migrate_wait = 500
	migrate_timeout = "503"
}

# The tests' barrier: a first-seen enqueue on the worker's own Redis link
# (a flag that does not exist: always legacy).
route sentinel {
	methods = { "GET" }
	path = "/sentinel/{id}"
	user = { "path:id" }
	read_flag = "no-such-flag"
	migrate = true
}
"""

EPOCH = datetime.datetime(2024, 1, 1)
_sentinels = itertools.count()


def routes(read_guard=True, unmigrated_writes="legacy", migrate_wait=10000):
    return ROUTES % {"read_guard": "true" if read_guard else "false", "unmigrated_writes": unmigrated_writes,
                     "migrate_wait": migrate_wait}


class Setup:
    """One test's world: its own key prefix and flags, proxies in front of
    the shared echo upstreams, and (on demand) a worker."""

    def __init__(self, fx, tag, read=None, write=None):
        self.fx = fx
        self.prefix = harness.PREFIX + ":" + tag
        self.keys = migration_keys(self.prefix)
        self.r = fx.srv.client()
        cmds = []
        for flag, pct in (("users-read", read), ("users-write", write)):
            cmds += [("flag", "create", flag), ("flag", "enable", flag)]
            if pct is not None:
                cmds.append(("flag", "set", flag, "--percent", "%d%%" % pct))
        bad = "\n".join(filter(None, (self.ctl(*c) for c in cmds)))
        if bad:
            raise RuntimeError("cutoverctl: " + bad)
        self.db = None
        self.proxies = []
        self.workers = []

    def ctl(self, *args):
        rc, out, err = harness.run_ctl(*args, prefix=self.prefix)
        return None if rc == 0 else "%s -> exit %s: %s" % (" ".join(args), rc, err.strip())

    def proxy(self, **kw):
        kw.setdefault("routes", routes())
        p = Proxy(self.fx.legacy, self.fx.service, prefix=self.prefix, **kw)
        self.proxies.append(p)
        return p

    def seed(self, users):
        """Legacy documents for users, in this test's database."""
        if self.db is None:
            self.db = self.fx.mongo.database(self.prefix.split(":")[-1])
        docs = [{"_id": u, "name": "legacy " + u, "emailAddress": u + "@example.com",
                 "updatedAt": EPOCH + datetime.timedelta(seconds=k)} for k, u in enumerate(users)]
        self.db.users.insert_many(docs)
        return {d["_id"]: d for d in docs}

    def worker(self, **kw):
        w = Migrator(self.fx.mongo.uri, self.db.name, self.fx.svc.url(), prefix=self.prefix, **kw)
        self.workers.append(w)
        return w

    def entries(self, stream="migrate", user=None):
        """[(id, fields)] of a stream, only user's if given."""
        return [(i, f) for i, f in self.r.xrange(self.keys[stream]) if user is None or f.get("user") == user]

    def settle(self, proxies=None, timeout=10.0):
        """Waits until every Redis command that each worker of each proxy
        sent so far has run: a first-seen request for a new sentinel user,
        on new connections until each worker has served one (found from
        the worker label of cutover_requests_total), then waits for those
        users in <p>:seen. A worker's link is one connection, so its
        earlier commands ran before its sentinel's. Returns the sentinel
        requests made, or None when a worker's sentinel never arrived."""
        made = 0
        for p in proxies or self.proxies:
            users = {}
            nworkers = p.settings.get("workers", 2)
            for _ in range(80):
                before = worker_totals(p)
                user = "zz-sentinel-%d" % next(_sentinels)
                p.get("/sentinel/" + user)
                made += 1
                moved = [w for w, n in worker_totals(p).items() if n != before.get(w, 0)]
                if len(moved) == 1 and moved[0] not in users:
                    users[moved[0]] = user
                if len(users) >= nworkers:
                    break
            if len(users) < nworkers:
                return None
            if not poll(lambda: all(self.r.sismember(self.keys["seen"], u) for u in users.values()), timeout):
                return None
        return made

    def close(self):
        for w in self.workers:
            w.stop()
        for p in self.proxies:
            p.stop()


class Fixture:
    def __init__(self, srv, mongo, svc, legacy, service):
        self.srv, self.mongo, self.svc, self.legacy, self.service = srv, mongo, svc, legacy, service


def worker_totals(p):
    totals = {}
    for name, labels, value in p.metrics():
        if name == "cutover_requests_total":
            totals[labels.get("worker")] = totals.get(labels.get("worker"), 0) + value
    return totals


def metric(p, name):
    return metric_sum(p.metrics(), name)


def evals(r):
    return r.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)


# --- first-seen, once across proxies ----------------------------------------------

def test_first_seen_once(t, fx):
    s = Setup(fx, "once")
    p1, p2 = s.proxy(routes=routes(read_guard=False)), s.proxy(routes=routes(read_guard=False))
    users = ["once%d" % i for i in range(6)]
    evals0 = evals(s.r)
    enq0 = metric(p1, "cutover_migrate_enqueued_total") + metric(p2, "cutover_migrate_enqueued_total")
    bad = []
    for u in users:
        conns = [(p, p.connection()) for p in (p1, p2) for _ in range(20)]
        for p, c in conns:
            c.connect()
        gate = threading.Barrier(len(conns))
        results = []

        def hit(p, c, u=u):
            try:
                gate.wait(10)
                results.append(p.get("/api/users/" + u, conn=c).status)
            except Exception as e:  # reported below
                results.append(repr(e))
            finally:
                c.close()
        threads = [threading.Thread(target=hit, args=pc) for pc in conns]
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        if results != [200] * len(conns):
            bad.append("%s: %r" % (u, results))
    t.ok(not bad, "%d users x 40 concurrent first requests (20 per proxy, 2 proxies of 2 workers): all 200"
         % len(users), "\n".join(bad))
    sentinels = s.settle()
    t.ok(sentinels is not None, "every proxy worker's enqueues have run (sentinel barrier)")
    counts = {u: [f.get("reason") for _, f in s.entries(user=u)] for u in users}
    t.ok(all(c == ["first-seen"] for c in counts.values()),
         "each user is on %s exactly once, reason first-seen" % s.keys["migrate"], repr(counts))
    t.ok(all(s.r.sismember(s.keys["seen"], u) for u in users), "and each is in %s" % s.keys["seen"])
    scripts = evals(s.r) - evals0 - (sentinels or 0)
    t.ok(scripts >= 2 * len(users),
         "the race was real: %d first-seen scripts ran for %d users (>= 2 each: both proxies tried)"
         % (scripts, len(users)))
    enq = metric(p1, "cutover_migrate_enqueued_total") + metric(p2, "cutover_migrate_enqueued_total") - enq0
    t.eq(enq, len(users) + (sentinels or 0), "cutover_migrate_enqueued_total, summed over both proxies, counts "
         "each user once (plus the %s sentinels)" % sentinels)
    s.close()


# --- the read guard -----------------------------------------------------------------

def test_read_guard(t, fx):
    s = Setup(fx, "guard", read=100, write=100)
    p1, p2 = s.proxy(), s.proxy()
    users = ["rg%d" % i for i in range(5)]
    docs = s.seed(users)
    service0 = fx.service.stats()["requests"]
    bad = []
    for u in users:
        for p in (p1, p2, p1, p2, p1, p2):
            r = p.get("/api/users/" + u)
            e = p.access_entry(r.request_id, 2) or {}
            if (r.status, r.route, r.upstream, e.get("reason"), e.get("decision")) != \
                    (200, "legacy", "legacy", "not-migrated", "legacy"):
                bad.append((u, r.status, r.route, r.upstream, e.get("reason")))
    t.ok(not bad, "read flag at 100%%, read_guard on, no worker: %d reads of unmigrated users go to legacy "
         "(X-Cutover-Route legacy, access log reason not-migrated)" % (6 * len(users)), repr(bad[:5]))
    t.eq(fx.service.stats()["requests"] - service0, 0, "not one of them reached the service (its own count)")
    t.ok(s.settle() is not None, "every proxy worker's enqueues have run (sentinel barrier)")
    prio = {u: [f.get("reason") for _, f in s.entries("priority", u)] for u in users}
    t.ok(all(v == ["read-guard"] for v in prio.values()),
         "each user is on %s exactly once (6 reads through 2 proxies, within the 30 s quiet period)"
         % s.keys["priority"], repr(prio))
    ttl = [s.r.ttl(s.keys["priority"][:-len("priority")] + "prio:" + u) for u in users]
    t.ok(all(0 < x <= 30 for x in ttl), "each has its <p>:migrate:prio:<user> marker with a TTL <= 30 s", repr(ttl))
    t.ok(all([f.get("reason") for _, f in s.entries(user=u)] == ["first-seen"] for u in users),
         "and is on %s once (first-seen)" % s.keys["migrate"])
    w = s.worker()
    done = poll(lambda: all(s.r.hexists(s.keys["migrated"], u) for u in users), 15)
    t.ok(done, "cutover-migrate started: every user is migrated (HSET %s)" % s.keys["migrated"], w.log_tail(10))
    t.ok(all((fx.svc.user(u) or {}).get("doc", {}).get("name") == docs[u]["name"] for u in users),
         "the service's import endpoint has each user")

    def on_service(p, u):
        return p.get("/api/users/" + u).route == "service"
    learned = poll(lambda: all(on_service(p, u) for p in (p1, p2) for u in users), 5)
    t.ok(learned, "both proxies learn it from %s: the users' reads go to the service" % s.keys["changed"])
    service1 = fx.service.stats()["requests"]
    bad = []
    for p in (p1, p2):
        for k in range(10):  # new connections: both workers of each proxy
            u = users[k % len(users)]
            r = p.get("/api/users/" + u)
            e = p.access_entry(r.request_id, 2) or {}
            if (r.status, r.route, r.upstream, e.get("reason")) != (200, "service", "service", "bucket"):
                bad.append((u, r.status, r.route, r.upstream, e.get("reason")))
    t.ok(not bad and fx.service.stats()["requests"] - service1 == 20,
         "20 more reads, on every worker of both proxies: all served by the service (reason bucket)", repr(bad))
    t.ok(poll(lambda: all(metric(p, "cutover_migrated_users_known") >= len(users) for p in (p1, p2)), 3),
         "cutover_migrated_users_known >= %d on both proxies" % len(users))
    p3 = s.proxy()
    r = p3.get("/api/users/" + users[0])
    first = poll(lambda: metric(p3, "cutover_migrate_links_up") == 2, 5) and r.route == "service"
    t.ok(first, "a proxy started after the migration knows the users from its HSCAN at connect (its first read "
         "goes to the service)", repr(r))
    w.stop()
    s.close()


# --- refresh after a legacy write -----------------------------------------------------

def test_refresh(t, fx):
    s = Setup(fx, "refresh", read=100, write=0)
    p = s.proxy()
    s.seed(["ref1", "ref2", "nm1", "race1"])
    w = s.worker()
    r = p.get("/api/users/ref1")
    t.eq(r.route, "legacy", "ref1's first read goes to legacy (not migrated yet)")
    t.ok(poll(lambda: all(p.get("/api/users/" + u).route == "service" for u in ("ref1", "ref2")), 10),
         "the worker migrates ref1 and ref2 (priority), the proxy learns it: their reads go to the service")
    w.stop()  # what the proxy enqueues now stays on the stream, to be seen

    def reasons(user):
        return [f.get("reason") for _, f in s.entries(user=user)]
    s.db.users.update_one({"_id": "ref1"}, {"$set": {"name": "renamed in legacy",
                                                     "updatedAt": EPOCH + datetime.timedelta(days=1)}})
    r = p.request("PUT", "/api/users/ref1", body=b'{"name": "renamed in legacy"}')
    e = p.access_entry(r.request_id, 2) or {}
    t.ok((r.status, r.route, e.get("reason")) == (200, "legacy", "bucket"),
         "write flag at 0%%: ref1's write goes to legacy (reason bucket)", repr((r, e)))
    t.ok(poll(lambda: reasons("ref1").count("refresh") == 1, 5),
         "after legacy answered 200, ref1 is put on %s again, reason refresh" % s.keys["migrate"],
         repr(s.entries(user="ref1")))
    r = p.request("PUT", "/api/users/ref2", headers={"X-Echo-Status": "500"}, body=b"{}")
    r2 = p.request("PUT", "/api/users/nm1", body=b"{}")
    t.eq((r.status, r.route, r2.status, r2.route), (500, "legacy", 200, "legacy"),
         "ref2's legacy write answered 500; nm1's (never read, so not migrated) write answered 200")
    t.ok(s.settle() is not None, "every proxy worker's enqueues have run (sentinel barrier)")
    t.eq((reasons("ref2").count("refresh"), sorted(reasons("nm1"))), (0, ["first-seen", "refresh"]),
         "no refresh after a failed legacy write; a successful one re-enqueues an unmigrated user too (a "
         "migration may be in flight)")
    w = s.worker()
    caught_up = poll(lambda: (fx.svc.user("ref1") or {}).get("doc", {}).get("name") == "renamed in legacy", 10)
    t.ok(caught_up, "a worker migrates ref1 again: the service's copy has legacy's new data",
         repr(fx.svc.user("ref1")))
    # A write for a user not migrated yet goes to legacy while the worker
    # migrates that user from the priority entry the same request made:
    # the worker may copy the document from before the write.
    bad = s.ctl("flag", "set", "users-write", "--percent", "100%")
    t.ok(bad is None and p.wait_flags_version(flag_version(s), 5), "write flag at 100%", bad)
    result = {}

    def slow_write():
        result["r"] = p.request("PUT", "/api/users/race1", headers={"X-Echo-Sleep-Ms": "2000"},
                                body=b'{"name": "written during the migration"}', timeout=10)
    th = threading.Thread(target=slow_write)
    th.start()
    migrated_meanwhile = poll(lambda: s.r.hexists(s.keys["migrated"], "race1"), 5) and th.is_alive()
    # legacy commits the write before it answers
    s.db.users.update_one({"_id": "race1"}, {"$set": {"name": "written during the migration",
                                                      "updatedAt": EPOCH + datetime.timedelta(days=2)}})
    th.join(10)
    r = result.get("r")
    t.ok(migrated_meanwhile and r is not None and (r.status, r.route) == (200, "legacy"),
         "race1: an unmigrated user's write goes to legacy (not-migrated, slow) while the worker migrates the user "
         "from the priority entry that same write made", repr(r))
    in_sync = poll(lambda: (fx.svc.user("race1") or {}).get("doc", {}).get("name") == "written during the migration",
                   10)
    t.ok(in_sync, "race1: the service's copy ends up with the write legacy took during the migration (the legacy "
         "write is followed by a refresh)", "the service keeps %r; entries for race1: %r"
         % ((fx.svc.user("race1") or {}).get("doc"), s.entries(user="race1")))
    w.stop()
    s.close()


def flag_version(s):
    return int(s.r.get(s.prefix + ":flags:version") or 0)


# --- migrate-first writes ---------------------------------------------------------------

def test_migrate_first(t, fx):
    s = Setup(fx, "first", read=100, write=100)
    p = s.proxy(routes=routes(unmigrated_writes="migrate-first", migrate_wait=10000))
    s.seed(["mf1", "mf-gone", "mf-legacy", "mf-503"])
    legacy0 = fx.legacy.stats()["requests"]
    r = p.request("PUT", "/t/legacy/mf-legacy", body=b'{"a": 1}')
    e = p.access_entry(r.request_id, 2) or {}
    t.ok((r.status, r.route, r.upstream, e.get("reason")) == (200, "legacy", "legacy", "migrate-timeout")
         and r.elapsed >= 0.45,
         "no worker, migrate_wait 500: the write waits %.2f s, then goes to legacy (reason migrate-timeout)"
         % r.elapsed, repr((r, e)))
    r = p.request("PUT", "/t/503/mf-503", body=b'{"a": 1}')
    e = p.access_entry(r.request_id, 2) or {}
    doc = r.json() or {}
    t.ok(r.status == 503 and doc.get("status") == 503 and doc.get("request_id") == r.request_id
         and e.get("reason") == "migrate-timeout" and r.elapsed >= 0.45,
         "with migrate_timeout = \"503\": a 503 with a JSON body after %.2f s" % r.elapsed, repr((r, e)))
    t.eq(fx.legacy.stats()["requests"] - legacy0, 1, "the 503 reached no upstream")
    # A client that hangs up while its write waits.
    raw = p.raw()
    raw.send("PUT /api/users/mf-gone HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    t.ok(poll(lambda: s.entries("priority", "mf-gone"), 5), "mf-gone's write waits (on the priority stream)")
    raw.close()
    result = {}
    body = b'{"name": "written first in the service"}'

    def put():
        result["t0"] = time.monotonic()
        result["r"] = p.request("PUT", "/api/users/mf1", body=body, timeout=15)
    th = threading.Thread(target=put)
    th.start()
    waiting = poll(lambda: s.entries("priority", "mf1"), 5)
    legacy0 = fx.legacy.stats()["requests"]
    t.ok(waiting and th.is_alive(), "mf1's PUT is in flight, waiting in the proxy (mf1 on the priority stream)")
    started = time.monotonic()
    w = s.worker()
    th.join(15)
    r = result.get("r")
    e = p.access_entry(r.request_id, 2) if r is not None else {}
    t.ok(r is not None and (r.status, r.route, r.upstream) == (200, "service", "service")
         and json.loads(r.json()["body"]) == json.loads(body) and r.elapsed < 10,
         "the worker, started %.2f s into the wait, migrates mf1; the PUT then reaches the service with its body "
         "(%.2f s after the worker started; migrate_wait is 10 s)"
         % (started - result.get("t0", 0), time.monotonic() - started), repr(r))
    t.ok(s.r.hexists(s.keys["migrated"], "mf1") and (e or {}).get("reason") == "bucket",
         "mf1 is migrated, and the access log gives the flag's reason (bucket)", repr(e))
    t.ok(poll(lambda: s.r.hexists(s.keys["migrated"], "mf-gone"), 5) and p.alive(),
         "mf-gone, whose client hung up while waiting, is migrated too; the proxy is still up")
    puts = lambda u: [(x.get("decision"), x.get("status")) for x in p.access_entries()  # noqa: E731
                      if x.get("user") == u and x.get("method") == "PUT"]
    t.eq((puts("mf1"), fx.legacy.stats()["requests"] - legacy0), ([("service", 200)], 0),
         "the access log has mf1's one PUT, to the service; legacy got nothing")
    gone = poll(lambda: puts("mf-gone"), 2)
    t.ok(gone and all(d not in ("legacy", "service") for d, _ in gone),
         "mf-gone's write, whose client hung up while it waited, was not sent to any upstream", "access log: %r" % gone)
    r = p.request("PUT", "/api/users/mf1", body=b"{}")
    t.ok(r.route == "service" and r.elapsed < 1, "mf1's next write goes to the service at once", repr(r))
    w.stop()
    # SIGTERM while a write waits (migrate_wait 10 s): it is answered within the drain.
    s.seed(["mf-drain"])
    th = threading.Thread(target=lambda: result.update(drain=p.request("PUT", "/api/users/mf-drain", body=b"{}",
                                                                       timeout=15)))
    th.start()
    waiting = poll(lambda: s.entries("priority", "mf-drain"), 5)
    p.send_signal(signal.SIGTERM)
    th.join(15)
    r = result.get("drain")
    e = (p.access_entry(r.request_id, 2) if r is not None else None) or {}
    t.ok(waiting and r is not None and (r.status, r.route) == (200, "legacy") and r.elapsed < 8
         and e.get("reason") == "migrate-draining",
         "SIGTERM while a migrate-first write waits: it stops waiting and goes to legacy as on its timeout "
         "(reason migrate-draining), answered in %.2f s of a 10 s wait" % (r.elapsed if r else -1), repr((r, e)))
    t.eq(p.wait(10), 0, "and the proxy then exits 0")
    s.close()


# --- Redis down ---------------------------------------------------------------------------------

def test_redis_down(t, fx):
    s = Setup(fx, "redis", read=100, write=100)
    s.r.hset(s.keys["migrated"], "rd-migrated", "1")
    p = s.proxy()
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 2, 5)
         and p.get("/api/users/rd-migrated").route == "service",
         "both workers' migration links are up; a user migrated before the proxy started reads from the service")
    dropped0 = metric(p, "cutover_migrate_dropped_total")
    fx.srv.stop(save=True)
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 0, 10), "Redis stopped: the links are down")
    users = ["rd%d" % i for i in range(10)]
    got = [(p.get("/api/users/" + u).status, p.get("/api/users/" + u).route) for u in users]
    got.append((p.get("/api/users/rd-migrated").status, p.get("/api/users/rd-migrated").route))
    t.eq(got, [(200, "legacy")] * len(users) + [(200, "service")],
         "with Redis down requests are still served: unmigrated users from legacy, the migrated one from the "
         "service (the proxy's copy of the migrated set)")
    dropped = metric(p, "cutover_migrate_dropped_total") - dropped0
    t.ok(dropped >= 2 * len(users),
         "cutover_migrate_dropped_total counts the enqueues that could not be sent (%d >= %d)"
         % (dropped, 2 * len(users)))
    fx.srv.start()
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 2, 15),
         "Redis back: both workers' links reconnect", p.log_tail(10))
    back = ["rdb%d" % i for i in range(5)]
    for u in back + users[:3]:
        p.get("/api/users/" + u)
    queued = poll(lambda: all(len(s.entries(user=u)) == 1 for u in back + users[:3]), 5)
    t.ok(queued, "enqueues resume: new users, and users dropped during the outage when seen again, are on %s"
         % s.keys["migrate"], repr({u: s.entries(user=u) for u in back + users[:3]}))
    t.ok(p.alive(), "the proxy did not crash")
    s.close()


def test_redis_down_owed(t, fx):
    """Refreshes made while Redis is down are owed, not dropped, up to
    limits.migrate_backlog; beyond it they are dropped, counted and
    logged."""
    s = Setup(fx, "owed", read=100, write=0)
    users = ["ow%d" % i for i in range(5)]
    s.r.hset(s.keys["migrated"], mapping={u: "1" for u in users})
    p = s.proxy(workers=1, limits={"migrate_backlog": 3})
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 1, 5), "owed: the migration link is up")
    dropped0 = metric(p, "cutover_migrate_dropped_total")
    offset = p.stderr_size()
    fx.srv.stop(save=True)
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 0, 10), "Redis stopped: the link is down")
    got = [p.request("PUT", "/api/users/" + u, body=b"{}") for u in users]
    t.eq([(r.status, r.route) for r in got], [(200, "legacy")] * len(users),
         "writes of migrated users go to legacy (write flag at 0%) and are answered")
    t.eq(metric(p, "cutover_migrate_dropped_total") - dropped0, len(users) + 2,
         "with a backlog of 3, three refreshes are owed and two dropped: cutover_migrate_dropped_total counts "
         "those two and the five first-seen enqueues (dropped by design: sent when the users are seen again)")
    t.ok(p.wait_stderr("dropping the refresh of user ow3", 5, since=offset),
         "the first drop is logged, naming the user", p.log_tail(5))
    fx.srv.start()
    t.ok(poll(lambda: metric(p, "cutover_migrate_links_up") == 1, 15), "Redis back: the link reconnects")
    owed = poll(lambda: sorted(u for u in users if any(f.get("reason") == "refresh" for _, f in s.entries(user=u)))
                == users[:3], 10)
    t.ok(owed, "the three owed refreshes reach %s once Redis is back, in order of their writes" % s.keys["migrate"],
         repr({u: s.entries(user=u) for u in users}))
    s.close()


def body(t):
    with harness.RedisServer() as srv:
        mongo = Mongo()
        svc = ImportService()
        legacy, service = Echo("legacy"), Echo("service")
        fx = Fixture(srv, mongo, svc, legacy, service)
        for test in (test_first_seen_once, test_read_guard, test_refresh, test_migrate_first, test_redis_down,
                     test_redis_down_owed):
            t0 = time.monotonic()
            test(t, fx)
            t.diag("%s: %.1f s" % (test.__name__, time.monotonic() - t0))
        for x in (svc, legacy, service):
            x.stop()
        mongo.close()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy", "cutover-migrate"))
