"""
world.py - the whole migration story on one machine, shared by the
README's main job (scripts/story.py, run by scripts/demo) and its
end-to-end test (tests/integration/story.py).

World starts, on free ports, with harness.py's classes:
  redis-server                                  harness.RedisServer
  a MongoDB: tests/mongo_double.py or a real    harness.Mongo (given)
  examples/legacy_app.py, the monolith          App, on the legacy database
  examples/user_service.py, the users service   App, on its own database,
    (events on <prefix>:service:events)           requests logged on stderr
  cutover-proxy in front of both                harness.Proxy, routes of conf/story/routes.conf
  cutover-migrate run                           harness.Migrator
  cutover-migrate syncback                      harness.Migrator
and the flags users-read and users-write, created with one salt so that
the write rollout nests inside the read rollout.

It answers what both the demo and the test look at: where requests went
(the proxy's /metrics), the migration and sync-back status (cutoverctl
migration status --json), an email change made through the proxy and
followed to the monolith's order page. Traffic drives steady client
traffic through the proxy and remembers every acknowledged write.

Python 3 with Debian's python3-redis and python3-pymongo.
"""
import http.client
import json
import os
import random
import signal
import threading
import time
import urllib.parse

import harness
from harness import PYTHON, SRCDIR, poll

EXAMPLES = os.path.join(SRCDIR, "examples")
READ_FLAG, WRITE_FLAG = "users-read", "users-write"
SALT = "users"  # one salt for both flags: at any percentage, writes nest in reads
JSON = {"Content-Type": "application/json"}

# The proxy's routes for the example apps (legacy-first creates).
ROUTES_FILE = os.path.join(SRCDIR, "conf", "story", "routes.conf")
CREATE_LEGACY_FIRST = 'create = "legacy-first"'


def routes(create="legacy-first"):
    """conf/story/routes.conf with the create-user route's strategy."""
    with open(ROUTES_FILE) as f:
        text = f.read()
    if CREATE_LEGACY_FIRST not in text:
        raise RuntimeError("%s has no line %s" % (ROUTES_FILE, CREATE_LEGACY_FIRST))
    return text.replace(CREATE_LEGACY_FIRST, 'create = "%s"' % create)


# Legacy users are {_id, email, name, updatedAt} (and sync-back's
# state_field, which the worker leaves out); the service's import takes
# them as they are.
MAPPING = {"keep": [], "drop": [], "rename": [], "default": []}

# The service's events back into legacy (harness.Migrator's syncback
# setting): its own bookkeeping stays out (updatedAt there is a string in
# the event, a date in legacy); the legacy app hard-deletes.
SYNCBACK = {"deletes": "delete", "tombstone_field": "deleted", "state_field": "_cutover",
            "write_concern": "majority", "mapping": {"drop": ["version", "updatedAt"]}}

# What `cutoverctl migration verify` compares: legacy's user with the
# service's GET, but for the fields each side keeps for itself.
VERIFY = """
verify {
	url = %(url)s
	ignore = { "version", "updatedAt" }
}
"""


class App(harness.Process):
    """An example app (examples/SCRIPT) on a free port, the same one when
    started again; stop() wants exit 0."""

    def __init__(self, script, *args):
        self.port = None
        super().__init__([PYTHON, os.path.join(EXAMPLES, script), "--port", "0"] + list(args),
                         name=script[:-3], read_stdout=True, expect_rc=0)

    def start(self):
        if self.port:
            self.argv[self.argv.index("--port") + 1] = str(self.port)
        super().start()
        self.port = harness._start_banner(self, self.name)

    def call(self, method, path, body=None, timeout=10.0):
        """One request straight to the app; body: a dict sent as JSON."""
        data = None if body is None else json.dumps(body).encode()
        return harness.http_request("127.0.0.1", self.port, method, path, JSON if data else None, data,
                                    timeout=timeout)


def upstream_counts(metrics):
    """{"legacy": n, "service": n, "5xx": n} of the proxy's
    cutover_requests_total (parsed /metrics)."""
    out = {"legacy": 0, "service": 0, "5xx": 0}
    for name, labels, value in metrics:
        if name != "cutover_requests_total":
            continue
        if labels.get("upstream") in out:
            out[labels["upstream"]] += value
        if labels.get("status", "").startswith("5"):
            out["5xx"] += value
    return out


def syncback_lag(status):
    """Seconds sync-back is behind the service's events (the age of the
    oldest event not yet applied to legacy), from `migration status
    --json`; None when sync-back is not in use."""
    sb = status.get("syncback") if isinstance(status, dict) else None
    return float(sb["oldest_unacked_s"]) if isinstance(sb, dict) else None


class World:
    """Everything of the story, started in __init__ (see the module's
    comment); close() stops it all.

    prefix    the Redis key prefix (the flags, the streams)
    mongo     a harness.Mongo; ldb, sdb: the pymongo Databases of legacy
              and of the service
    create    the create-user route's strategy: legacy-first or service
    log       log(what, text) prints a line of progress, e.g. ("redis",
              "127.0.0.1:6379"); or None
    """

    def __init__(self, prefix, mongo, ldb, sdb, create="legacy-first", log=None):
        self.prefix = prefix
        self.mongo, self.ldb, self.sdb = mongo, ldb, sdb
        self.log = log or (lambda what, text: None)
        self.stream = prefix + ":service:events"
        self.migrate = self.syncback = self.proxy = None
        self.redis = harness.RedisServer()
        self.redis.start()
        self.r = self.redis.client()
        self.log("redis", "redis-server on 127.0.0.1:%d" % self.redis.port)
        self.legacy = App("legacy_app.py", "--mongo", mongo.uri, "--db", ldb.name)
        self.service = App("user_service.py", "--mongo", mongo.uri, "--db", sdb.name, "--redis", self.redis.url(),
                           "--prefix", prefix, "--stream", self.stream, "--verbose")
        self.log("legacy", "examples/legacy_app.py on :%d, database %s" % (self.legacy.port, ldb.name))
        self.log("service", "examples/user_service.py on :%d, database %s, events on %s"
                 % (self.service.port, sdb.name, self.stream))
        for flag, what in ((READ_FLAG, "GET /api/users/{id}"), (WRITE_FLAG, "writes of /api/users/{id}")):
            self.ctl_ok("flag", "create", flag, "--salt", SALT, "--owner", "team-users",
                        "--description", what + " served by the users service")
            self.ctl_ok("flag", "enable", flag)
        self.proxy = harness.Proxy(self.legacy, self.service, redis_url=self.redis.url(), prefix=prefix,
                                   routes=routes(create))
        self.log("proxy", "cutover-proxy on :%d (admin :%d), routes of conf/story/routes.conf"
                 % (self.proxy.port, self.proxy.admin_port))
        verify = VERIFY % {"url": json.dumps("http://127.0.0.1:%d/api/users/{id}" % self.service.port)}
        settings = dict(redis_url=self.redis.url(), prefix=prefix, mapping=MAPPING,
                        syncback=dict(SYNCBACK, stream=self.stream), extra=verify)
        sink = "http://127.0.0.1:%d/internal/import/users/{id}" % self.service.port
        self.migrate = harness.Migrator(mongo.uri, ldb.name, sink, **settings)
        self.syncback = harness.Migrator(mongo.uri, ldb.name, sink, command="syncback", **settings)
        self.log("workers", "cutover-migrate run, cutover-migrate syncback")

    # --- cutoverctl and the flags ----------------------------------------------

    def ctl(self, *args, json=False, timeout=30):
        """cutoverctl ARGS against this world: (exit code, stdout, stderr)."""
        return harness.run_ctl(*args, redis_url=self.redis.url(), prefix=self.prefix, json=json, actor="story",
                               timeout=timeout)

    def ctl_ok(self, *args):
        rc, out, err = self.ctl(*args)
        if rc != 0:
            raise RuntimeError("cutoverctl %s: exit %s: %s" % (" ".join(args), rc, err.strip()))
        return out

    def sync_flags(self, timeout=5.0):
        """True once the proxy holds the flags' current version."""
        version = int(self.r.get(self.prefix + ":flags:version") or 0)
        return self.proxy.wait_flags_version(version, timeout)

    def flag(self, *args):
        """cutoverctl flag ARGS, then waits for the proxy to have the
        change. Returns (exit code, stdout + stderr, seconds taken)."""
        t0 = time.monotonic()
        rc, out, err = self.ctl("flag", *args, timeout=120)
        took = time.monotonic() - t0
        if rc == 0 and not self.sync_flags():
            rc, err = -1, err + "the proxy did not pick up the change within 5 s\n"
        return rc, out + err, took

    def kill_args(self, flag):
        """`flag kill FLAG`, then waiting until sync-back has applied to
        legacy every change the service made until then."""
        return ("kill", flag, "--wait-synced", "--timeout", "60")

    def decisions(self, flag, users):
        """{user: True if flag sends the user to the service}."""
        rc, out, err = self.ctl("flag", "eval", flag, *users, json=True, timeout=60)
        if rc != 0:
            raise RuntimeError("flag eval: exit %s: %s" % (rc, err.strip()))
        return {d["user"]: d["on"] for d in map(json.loads, out.splitlines())}

    # --- what to look at ------------------------------------------------------------

    def status(self):
        """`cutoverctl migration status --json` as a dict, or None."""
        rc, out, err = self.ctl("migration", "status", json=True)
        try:
            return json.loads(out) if rc == 0 else None
        except ValueError:
            return None

    def drained(self):
        """True once the migrate queues and sync-back have nothing left."""
        st = self.status() or {}
        return st.get("queued") == 0 and st.get("priority") == 0 and not st.get("pending") \
            and syncback_lag(st) == 0

    def verify(self, timeout=20.0):
        """`cutoverctl migration verify --all --json` once the queues have
        drained (or timeout passed): (exit code, the report as a dict or
        None, the output's tail)."""
        poll(self.drained, timeout, 0.1)
        rc, out, err = self.ctl("migration", "verify", "-c", self.migrate.conf, "--all", json=True, timeout=120)
        try:
            report = json.loads(out)
        except ValueError:
            report = None
        return rc, report if isinstance(report, dict) else None, out[-3000:] + err[-2000:]

    def counts(self):
        """The proxy's requests by upstream (upstream_counts)."""
        return upstream_counts(self.proxy.metrics())

    def migrated(self, user):
        return bool(self.r.hexists(self.prefix + ":migrated", user))

    def service_requests(self, user):
        """The requests the service logged for user's API path, e.g.
        ["GET", "PATCH"] (imports not included)."""
        needle = " /api/users/%s " % urllib.parse.quote(user, safe="")
        return [line.split('"')[1].split()[0] for line in self.service.stderr().splitlines()
                if needle in line and line.count('"') >= 2]

    def email_change(self, user, order, timeout=10.0):
        """Changes user's email with the admin form through the proxy, then
        reads the order (one of user's) through the proxy until its
        populated email is the new one. Returns {"route", "status",
        "email", "delay"}: delay, seconds from the change's answer to the
        first order read showing it, None if none did within timeout."""
        email = "%s.%d@example.org" % (user, random.randrange(10 ** 9))
        r = self.proxy.request("POST", "/admin/users/%s/email" % urllib.parse.quote(user, safe=""), JSON,
                               json.dumps({"email": email}).encode())
        out = {"route": r.route, "status": r.status, "email": email, "delay": None}
        if r.status != 200:
            return out
        t0 = time.monotonic()

        def shows():
            doc = self.proxy.get("/api/orders/" + order).json() or {}
            return isinstance(doc.get("user"), dict) and doc["user"].get("email") == email
        if poll(shows, timeout, 0.005):
            out["delay"] = time.monotonic() - t0
        return out

    def logs(self):
        """[(name, path)] of every log file of the world."""
        out = [("redis", self.redis.logfile)]
        if self.mongo.double is not None:
            out.append(("mongo double", self.mongo.double.errpath))
        for name, p in self.processes():
            if p is not None and p is not self.redis and p is not self.mongo.double:
                out.append((name, p.errpath))
        if self.proxy is not None:
            out.append(("access log", self.proxy.access_log))
        return out

    def processes(self):
        """[(name, process)] in start order (None for one not started)."""
        return [("redis", self.redis), ("mongo", self.mongo.double), ("legacy", self.legacy),
                ("service", self.service), ("proxy", self.proxy), ("migrate", self.migrate),
                ("syncback", self.syncback)]

    def pids(self):
        """{name: pid} of the processes running now."""
        out = {}
        for name, p in self.processes():
            if p is not None and p.proc is not None and p.proc.poll() is None:
                out[name] = p.proc.pid
        return out

    # --- restarts and the end -------------------------------------------------------------

    def restart(self, name, sig=signal.SIGTERM, while_down=None):
        """Stops one process (sig; redis: SHUTDOWN SAVE), calls while_down()
        if given, and starts the process again on the same port with the
        same config. Returns the outage (monotonic start, end): from the
        stop to the proxy serving again (the proxy: ready; Redis: every
        proxy worker's migration link up again)."""
        t0 = time.monotonic()
        p = dict(self.processes())[name]
        if p is self.redis:
            self.redis.stop(save=True)
        elif sig == signal.SIGKILL:
            p.kill()
        else:
            p.stop(sig)
        if while_down is not None:
            while_down()
        p.start()
        if p is self.proxy and not self.proxy.wait_ready():
            raise RuntimeError("cutover-proxy did not get ready again:\n" + self.proxy.log_tail())
        if p is self.redis:
            workers = self.proxy.settings.get("workers", 2)
            up = lambda: harness.metric_sum(self.proxy.metrics(), "cutover_migrate_links_up") == workers  # noqa: E731
            if not poll(up, 15, 0.02):
                raise RuntimeError("the proxy's migration links did not come back:\n" + self.proxy.log_tail())
        return t0, time.monotonic()

    def close(self):
        """Stops everything, last started first; the Mongo is the caller's."""
        for name, p in reversed(self.processes()):
            if p is None or p is self.mongo.double:
                continue
            if p is self.redis:
                self.r.close()
                p.close()
            else:
                p.stop()


class Traffic:
    """Steady traffic through the proxy, as the monolith's clients would
    send it, from `threads` threads with a keep-alive connection each, at
    about `rate` requests a second in all:
      read    GET /api/users/{id} of any user             70%
      order   GET /api/orders/{id} of any order           15%
      write   PATCH /api/users/{id} {name}, or the admin
              form's email change, of one of the thread's
              own users (writers, dealt out)               10%
      create  POST /api/users                              5%
    A write or create not acknowledged (a 5xx, a broken connection, no
    answer) is sent again until it is, as a careful client does, for up to
    retry_for seconds. Each user is written by one thread only, so its last
    acknowledged value per field is well defined: acked[(user, field)],
    and how it went in how[(user, field)]: (X-Cutover-Route, monotonic time
    of the first attempt, of the answer). A write given up on is left in
    unacked[(user, field)] (its value may or may not have been applied).
    Creates: created, their ids, and how[id]."""

    def __init__(self, proxy, users, orders, writers, rate=100.0, threads=3, retry_for=20.0):
        self.proxy, self.users, self.orders = proxy, list(users), list(orders)
        self.rate, self.nthreads, self.retry_for = rate, threads, retry_for
        self.writers = [list(writers)[i::threads] for i in range(threads)]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.acked, self.unacked, self.how = {}, {}, {}
        self.created = []           # ids of acknowledged creates
        self.routes = {}            # (kind, X-Cutover-Route) -> count
        self.errors = []            # (kind, what) of answers that were not 2xx
        self.retries = 0
        self.sent = 0
        self.writes = 0             # acknowledged
        self.threads = []

    def start(self):
        for i in range(self.nthreads):
            th = threading.Thread(target=self._run, args=(i,), daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def stop(self, timeout=None):
        """Stops the threads once their request in hand is done (a write
        being retried: acknowledged or given up)."""
        self.stopping.set()
        for th in self.threads:
            th.join(timeout if timeout is not None else self.retry_for + 15)
        return self

    def _request(self, conn, method, path, body):
        """One request on the thread's connection (a new one after an
        error): (Response or None, connection)."""
        try:
            if conn is None:
                conn = self.proxy.connection(timeout=10)
            r = self.proxy.request(method, path, JSON if body is not None else None,
                                   None if body is None else json.dumps(body).encode(), conn=conn)
            return r, conn
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            return e, None

    def _count(self, kind, r):
        with self.lock:
            self.sent += 1
            route = r.route if isinstance(r, harness.Response) else None
            self.routes[(kind, route)] = self.routes.get((kind, route), 0) + 1
            if not isinstance(r, harness.Response) or not 200 <= r.status < 300:
                what = r.status if isinstance(r, harness.Response) else type(r).__name__
                self.errors.append((kind, what))

    def _until_acked(self, conn, kind, method, path, body):
        """Sends a write until it is acknowledged or retry_for passes:
        (Response or None, connection); the Response has .how."""
        t0 = time.monotonic()
        deadline = t0 + self.retry_for
        while True:
            r, conn = self._request(conn, method, path, body)
            self._count(kind, r)
            if isinstance(r, harness.Response) and 200 <= r.status < 300:
                r.how = (r.route, t0, time.monotonic())
                return r, conn
            if time.monotonic() >= deadline:
                return None, conn
            with self.lock:
                self.retries += 1
            time.sleep(0.05)  # a client's pause before it tries again

    def _run(self, i):
        rnd = random.Random(i)
        conn = None
        mine = self.writers[i]
        interval = self.nthreads / self.rate
        next_at = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            n += 1
            x = rnd.random()
            if x < 0.70 or (x < 0.95 and not mine):
                r, conn = self._request(conn, "GET", "/api/users/" + rnd.choice(self.users), None)
                self._count("read", r)
            elif x < 0.85:
                r, conn = self._request(conn, "GET", "/api/orders/" + rnd.choice(self.orders), None)
                self._count("order", r)
            elif x < 0.95:
                user = rnd.choice(mine)
                if rnd.random() < 0.7:
                    field, value = "name", "name %d-%d" % (i, n)
                    method, path = "PATCH", "/api/users/" + user
                else:
                    field, value = "email", "%s.%d-%d@example.com" % (user, i, n)
                    method, path = "POST", "/admin/users/%s/email" % user
                with self.lock:
                    self.unacked[(user, field)] = value
                r, conn = self._until_acked(conn, "write", method, path, {field: value})
                if r is not None:
                    with self.lock:
                        self.writes += 1
                        self.acked[(user, field)] = value
                        self.how[(user, field)] = r.how
                        del self.unacked[(user, field)]
            else:
                email = "new-%d-%d@example.com" % (i, n)
                r, conn = self._until_acked(conn, "create", "POST", "/api/users", {"email": email, "name": "New"})
                if r is not None and isinstance(r.json(), dict) and isinstance(r.json().get("_id"), str):
                    with self.lock:
                        self.created.append(r.json()["_id"])
                        self.how[r.json()["_id"]] = r.how
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                self.stopping.wait(pause)
            elif pause < -1:
                next_at = time.monotonic()  # behind by more than a second: do not burst to catch up
        if conn is not None:
            conn.close()

    def missing(self, db, which=None):
        """What the database db (a users collection's Database) lacks of the
        acknowledged writes and creates (those for which which(route, t0,
        t1), see how, is true, when given): a list of strings, empty if
        nothing. A field given up on may hold that value instead."""
        def wanted(key):
            return which is None or which(*self.how[key])
        bad = []
        ids = sorted({u for u, _ in self.acked} | set(self.created))
        docs = {d["_id"]: d for d in db.users.find({"_id": {"$in": ids}})}
        for (user, field), value in sorted(self.acked.items()):
            got = docs.get(user, {}).get(field)
            if wanted((user, field)) and got != value and got != self.unacked.get((user, field)):
                bad.append("%s.%s is %r, not %r" % (user, field, got, value))
        bad += ["created user %s is missing" % u for u in self.created if wanted(u) and u not in docs]
        return bad

    def summary(self):
        """Counts: requests sent, writes acknowledged, the users' fields
        they wrote, creates acknowledged, retries, answers not 2xx."""
        with self.lock:
            return {"sent": self.sent, "writes": self.writes, "fields": len(self.acked), "creates": len(self.created),
                    "retries": self.retries, "errors": len(self.errors)}
