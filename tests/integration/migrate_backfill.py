#!/usr/bin/python3
"""
migrate_backfill.py - TAP test of `cutover-migrate backfill`.

Starts a redis-server and a MongoDB playing legacy (tests/mongo_double.py,
or the server of CUTOVER_TEST_MONGO_URI, whose database
cutover_backfill_PID is dropped at the end), seeds it with pymongo and
runs the real binary:

  - 50,000 string ids walked in pages of 500, killed with SIGKILL about
    half way, restarted: every user on <p>:migrate exactly once with
    reason backfill, all in <p>:seen, and at the kill the stream held
    exactly the users up to the stored cursor (script atomicity);
  - string and ObjectId ids in one collection, users already in <p>:seen
    skipped, invalid ids skipped and logged, ObjectIds as lowercase hex,
    a second run resuming after the ObjectId cursor;
  - --rate (a lower bound on the time), SIGTERM (exit 0, resumable), a
    Redis restart in mid-walk, legacy unreachable at the start;
  - --direct through a small HTTP sink that fails its first PUTs: users
    migrated end to end (PUT, HSET <p>:migrated, PUBLISH), none enqueued;
  - the progress bar on a terminal (a pty), the log line elsewhere;
  - option errors and a stored cursor that is not one.

Python 3 stdlib plus Debian's python3-redis and python3-pymongo.
"""
import datetime
import json
import os
import pty
import select
import signal
import subprocess
import tempfile
import time

import harness
from harness import PREFIX, PYTHON, Process, RedisServer, poll

MIGRATE = os.path.join(harness.BUILDDIR, "cutover-migrate")
MONGO_DOUBLE = os.path.join(harness.SRCDIR, "tests", "mongo_double.py")
REAL_MONGO = os.environ.get("CUTOVER_TEST_MONGO_URI")
DB_NAME = "cutover_backfill_%d" % os.getpid()
TMP = tempfile.TemporaryDirectory(prefix="cutover-it-backfill-")

BIG = 50000      # users of the kill -9 run
RATED = 2000     # users of the --rate, SIGTERM and outage runs

CONF = """
redis {
	url = "%(redis)s"
	prefix = "%(prefix)s"
}
legacy {
	uri = "%(uri)s"
	database = "%(db)s"
	collection = "%(collection)s"
	id_type = "%(id_type)s"
}
sink {
	type = "http"
	url = "%(sink)s"
	timeout = 2000
}
version_field = "updatedAt"
mapping {
	drop = { "passwordHash" }
	rename = { "emailAddress:email" }
}
retry {
	attempts = 5
	backoff = 50
	backoff_max = 400
}
"""

# The service's import endpoint, enough for --direct: stores each PUT's
# JSON body, answers 500 to the first N PUTs (argv[1]) and 200 after;
# GET answers {"puts": n, "users": {id: body}}.
SINK = r'''
import http.server, json, signal, socketserver, sys, threading, urllib.parse
fail_first = int(sys.argv[1])
lock = threading.Lock()
state = {"puts": 0, "users": {}}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    def log_message(self, *args):
        pass
    def reply(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        user = urllib.parse.unquote(self.path.rsplit("/", 1)[1])
        with lock:
            state["puts"] += 1
            ok = state["puts"] > fail_first
            if ok:
                state["users"][user] = json.loads(body)
        self.reply(200 if ok else 500, {"stored": ok})
    def do_GET(self):
        with lock:
            self.reply(200, state)
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Handler)
signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
print("port %d" % server.server_address[1])
print("ready", flush=True)
server.serve_forever()
'''


def banner_port(proc, what):
    """The N of a child's "port N" then "ready" lines."""
    first = proc.wait_line(lambda line: True, 20)
    ready = proc.wait_line(lambda line: True, 20)
    if not (first or "").startswith("port ") or ready != "ready":
        raise RuntimeError("%s did not start (%r, %r):\n%s" % (what, first, ready, proc.stderr()))
    return int(first.split()[1])


def write_conf(name, srv, prefix, collection, uri, id_type="string", sink="http://127.0.0.1:9/u/{id}"):
    path = os.path.join(TMP.name, name + ".conf")
    with open(path, "w") as f:
        f.write(CONF % {"redis": srv.url(), "prefix": prefix, "uri": uri, "db": DB_NAME,
                        "collection": collection, "id_type": id_type, "sink": sink})
    return path


def backfill(conf, *args, expect_rc=0):
    """cutover-migrate backfill -c conf ARGS, started."""
    return Process([MIGRATE, "backfill", "-c", conf] + list(args), name="backfill", expect_rc=expect_rc)


def finish(t, proc, timeout, desc):
    """Waits for proc to exit by itself within timeout (a test point);
    returns its stderr."""
    started = time.monotonic()
    rc = proc.wait(timeout)
    t.ok(rc is not None, "%s: exits by itself within %d s (%.1f s)" % (desc, timeout, time.monotonic() - started),
         proc.log_tail())
    proc.stop()
    return proc.stderr()


def stream(r, prefix):
    """[(user, reason)] of <prefix>:migrate, in order."""
    return [(f.get("user"), f.get("reason")) for _, f in r.xrange(prefix + ":migrate")]


def cursor(r, prefix):
    raw = r.get(prefix + ":backfill:cursor")
    return None if raw is None else json.loads(raw)


def summary(stderr):
    lines = [line for line in stderr.splitlines() if "backfill done" in line or "backfill stopped" in line]
    return lines[-1] if lines else ""


def body(t):
    import pymongo
    from bson.objectid import ObjectId

    if REAL_MONGO:
        uri = REAL_MONGO
    else:
        double = Process([PYTHON, MONGO_DOUBLE, "--port", "0"], name="mongo-double", read_stdout=True,
                         expect_rc=0)
        uri = "mongodb://127.0.0.1:%d/" % banner_port(double, "mongo_double.py")
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    db = client[DB_NAME]
    started = time.monotonic()
    db.users.insert_many([{"_id": "u%05d" % n, "name": "User %d" % n} for n in range(1, BIG + 1)])
    db.rated.insert_many([{"_id": "r%04d" % n} for n in range(1, RATED + 1)])
    t.diag("seeded %d + %d users in %.1f s" % (BIG, RATED, time.monotonic() - started))

    with RedisServer() as srv:
        r = srv.client()
        try:
            big_run(t, r, srv, uri)
            mixed_ids(t, r, srv, uri, db, ObjectId)
            rate_and_signals(t, r, srv, uri)
            redis_restart(t, uri)
            legacy_down(t, r, srv)
            direct(t, r, srv, uri, db)
            progress(t, srv, uri)
            bad_input(t, r, srv, uri)
        finally:
            r.close()
    if REAL_MONGO:
        client.drop_database(DB_NAME)
    client.close()
    if not REAL_MONGO:
        double.stop()


def big_run(t, r, srv, uri):
    """50,000 users, a kill -9 half way, a resume."""
    p = PREFIX + "big"
    conf = write_conf("big", srv, p, "users", uri)
    started = time.monotonic()
    proc = backfill(conf, "--batch", "500")
    half = poll(lambda: r.xlen(p + ":migrate") >= BIG // 2 or not proc.alive(), 60, 0.002)
    proc.kill()
    at = cursor(r, p)
    queued = r.xlen(p + ":migrate")
    t.ok(half and queued < BIG, "big: killed with SIGKILL mid-walk (%d of %d enqueued, %.1f s in)"
         % (queued, BIG, time.monotonic() - started), proc.log_tail())
    n = int(at[1:]) if isinstance(at, str) and at.startswith("u") else -1
    t.ok(n == queued == r.scard(p + ":seen") and n % 500 == 0,
         "big: at the kill, stream and seen hold exactly the users up to the cursor %r (whole pages)" % at,
         "cursor %r, XLEN %d, SCARD %d" % (at, queued, r.scard(p + ":seen")))
    resumed = time.monotonic()
    err = finish(t, backfill(conf, "--batch", "500"), 60, "big: the restarted backfill")
    t.diag("big: first run %.1f s, resumed run %.1f s" % (resumed - started, time.monotonic() - resumed))
    t.ok("resumes after _id %s" % json.dumps(at) in err, "big: the second run resumes after the stored cursor",
         err[-2000:])
    entries = stream(r, p)
    users = [u for u, _ in entries]
    want = {"u%05d" % n for n in range(1, BIG + 1)}
    t.eq(len(entries), BIG, "big: exactly 50,000 entries on <p>:migrate")
    t.ok(all(reason == "backfill" for _, reason in entries), "big: every entry has reason backfill")
    t.eq(len(set(users)), len(users), "big: no user enqueued twice")
    t.ok(set(users) == want, "big: the stream holds every legacy user")
    t.ok(r.scard(p + ":seen") == BIG and set(r.smembers(p + ":seen")) == want,
         "big: all 50,000 users are in <p>:seen")
    t.eq(r.get(p + ":backfill:total"), str(BIG), "big: <p>:backfill:total is the legacy count")
    t.ok("%d enqueued, 0 skipped" % (BIG - queued) in summary(err), "big: the summary counts the resumed run",
         summary(err))


def mixed_ids(t, r, srv, uri, db, ObjectId):
    """String and ObjectId ids, users already seen, invalid ids."""
    p = PREFIX + "mix"
    strings = ["m%04d" % n for n in range(1, 1001)]
    oids = [ObjectId() for _ in range(500)]
    invalid = ["bad\x01id", "y" * 300]
    db.mixed.insert_many([{"_id": s} for s in strings + invalid] + [{"_id": o} for o in oids])
    hexes = [str(o) for o in oids]
    seen_before = strings[:100] + hexes[:50]
    r.sadd(p + ":seen", *seen_before)
    conf = write_conf("mixed", srv, p, "mixed", uri, id_type="objectid")
    err = finish(t, backfill(conf, "--batch", "128"), 30, "mixed")
    users = [u for u, _ in stream(r, p)]
    want = set(strings[100:] + hexes[50:])
    t.ok(len(users) == len(want) and set(users) == want,
         "mixed: strings then ObjectIds enqueued, the 150 users already seen skipped",
         "%d enqueued, %d wanted; missing %r" % (len(users), len(want), sorted(want - set(users))[:5]))
    t.ok(all(u in strings or (len(u) == 24 and u == u.lower()) for u in users),
         "mixed: ObjectIds enqueued as 24 lowercase hex digits")
    t.eq(r.scard(p + ":seen"), 1500, "mixed: every valid user is in <p>:seen, none of the invalid ones")
    t.ok(err.count("cannot be a user id") == 2 and "has a control character" in err and "longer than 256" in err,
         "mixed: the 2 invalid ids are logged", err[-2000:])
    t.ok("1350 enqueued, 150 skipped (already seen), 2 invalid" in summary(err), "mixed: the summary's counts",
         summary(err))
    t.eq(cursor(r, p), {"$oid": max(hexes)}, "mixed: the cursor is the last ObjectId, as extended JSON")
    later = [ObjectId() for _ in range(10)]
    db.mixed.insert_many([{"_id": o} for o in later])
    err = finish(t, backfill(conf, "--batch", "128"), 30, "mixed, again")
    users = [u for u, _ in stream(r, p)]
    t.ok(len(users) == 1360 and set(users[1350:]) == {str(o) for o in later},
         "mixed: a second run resumes after the ObjectId cursor: only the 10 new users",
         summary(err))


def rate_and_signals(t, r, srv, uri):
    """--rate as a lower bound on the time; SIGTERM mid-walk."""
    p = PREFIX + "rate"
    conf = write_conf("rate", srv, p, "rated", uri)
    started = time.monotonic()
    err = finish(t, backfill(conf, "--rate", "1000", "--batch", "200"), 30, "rate")
    elapsed = time.monotonic() - started
    t.ok(elapsed >= 1.5 and r.xlen(p + ":migrate") == RATED,
         "rate: %d users at --rate 1000 take %.2f s (>= 1.5 s)" % (RATED, elapsed))
    t.ok("backfill: " in err and "\r" not in err, "rate: not a terminal: progress as log lines, no bar",
         err[-1500:])

    p = PREFIX + "term"
    conf = write_conf("term", srv, p, "rated", uri)
    proc = backfill(conf, "--rate", "500", "--batch", "100")
    t.ok(poll(lambda: r.xlen(p + ":migrate") >= 300, 20, 0.01), "term: the walk is under way")
    rc = proc.stop(signal.SIGTERM, timeout=5)
    at, queued = cursor(r, p), r.xlen(p + ":migrate")
    t.eq(rc, 0, "term: SIGTERM: exit 0")
    t.ok(isinstance(at, str) and int(at[1:]) == queued < RATED and "backfill stopped" in proc.stderr(),
         "term: stopped mid-walk with the cursor at the last page enqueued (%r, %d)" % (at, queued),
         proc.log_tail())
    finish(t, backfill(conf), 30, "term, resumed")
    users = [u for u, _ in stream(r, p)]
    t.ok(len(users) == RATED and len(set(users)) == RATED, "term: the resumed run completes, no duplicates")


def redis_restart(t, uri):
    """Redis goes away in mid-walk: waited out, nothing lost or doubled."""
    p = PREFIX + "down"
    with RedisServer() as srv2:
        r2 = srv2.client()
        conf = write_conf("down", srv2, p, "rated", uri)
        proc = backfill(conf, "--rate", "1000", "--batch", "100")
        t.ok(poll(lambda: r2.xlen(p + ":migrate") >= 300, 20, 0.01), "redis down: the walk is under way")
        r2.close()
        srv2.stop(save=True)
        gone = proc.stderr_size()
        time.sleep(1.0)
        t.ok(proc.alive() and "Redis" in proc.stderr()[gone:], "redis down: the backfill waits, logging why",
             proc.log_tail())
        srv2.start()
        finish(t, proc, 30, "redis down")
        r2 = srv2.client()
        users = [u for u, _ in stream(r2, p)]
        t.ok(len(users) == RATED and set(users) == {"r%04d" % n for n in range(1, RATED + 1)}
             and r2.scard(p + ":seen") == RATED,
             "redis down: afterwards every user enqueued once (%d entries)" % len(users))
        r2.close()


def legacy_down(t, r, srv):
    """Legacy unreachable from the start: logged, retried, SIGTERM ends it."""
    p = PREFIX + "nolegacy"
    uri = "mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=300" % harness.free_port()
    proc = backfill(write_conf("nolegacy", srv, p, "users", uri))
    t.ok(proc.wait_stderr("the backfill waits", 10), "legacy down: logged, and waited out", proc.log_tail())
    t.eq(proc.stop(signal.SIGTERM, timeout=5), 0, "legacy down: SIGTERM during the wait: exit 0")
    t.ok(r.get(p + ":backfill:cursor") is None and r.xlen(p + ":migrate") == 0,
         "legacy down: no cursor, nothing enqueued")


def direct(t, r, srv, uri, db):
    """--direct: migrated through the sink (whose first 5 PUTs fail)."""
    p = PREFIX + "direct"
    when = datetime.datetime(2024, 5, 1, 12, 0, 0)
    ids = ["d%03d" % n for n in range(1, 301)]
    db.direct.insert_many([{"_id": i, "name": "N " + i, "emailAddress": i + "@example.com",
                            "passwordHash": "x", "updatedAt": when} for i in ids])
    r.sadd(p + ":seen", *ids[:20])
    sink = Process([PYTHON, "-c", SINK, "5"], name="sink", read_stdout=True, expect_rc=0)
    port = banner_port(sink, "the sink")
    conf = write_conf("direct", srv, p, "direct", uri, sink="http://127.0.0.1:%d/import/{id}" % port)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(p + ":migrated:changed")
    err = finish(t, backfill(conf, "--direct", "--batch", "64"), 30, "direct")
    state = json.loads(harness.http_request("127.0.0.1", port, "GET", "/state", timeout=5).body)
    want = set(ids[20:])
    t.ok(set(state["users"]) == want, "direct: the 280 users not seen before are in the service",
         "%d stored" % len(state["users"]))
    doc = state["users"].get("d150", {})
    t.ok(doc.get("email") == "d150@example.com" and "passwordHash" not in doc and "emailAddress" not in doc,
         "direct: through the mapping", repr(doc))
    t.ok(state["puts"] == 285, "direct: the 5 failed PUTs were tried again (%d PUTs)" % state["puts"])
    t.ok(set(r.hkeys(p + ":migrated")) == want, "direct: HSET <p>:migrated for each of them")
    published = set()
    deadline = time.monotonic() + 5
    while len(published) < len(want) and time.monotonic() < deadline:
        message = ps.get_message(timeout=0.1)
        if message:
            published.add(message["data"])
    ps.close()
    t.ok(published == want, "direct: PUBLISH <p>:migrated:changed for each (%d)" % len(published))
    t.ok(r.xlen(p + ":migrate") == 0 and r.scard(p + ":seen") == 300,
         "direct: nothing enqueued, all 300 users in <p>:seen")
    t.ok(r.hlen(p + ":migrate:attempts") == 0 and r.xlen(p + ":migrate:dead") == 0,
         "direct: no attempts left counted, nobody dead-lettered")
    t.ok("280 migrated (0 dead-lettered), 20 skipped (already seen)" in summary(err), "direct: the summary",
         summary(err))
    t.eq(cursor(r, p), "d300", "direct: the cursor moved to the last user")
    sink.stop()


def progress(t, srv, uri):
    """On a terminal: one line, redrawn with \\r, kept at the end."""
    conf = write_conf("tty", srv, PREFIX + "tty", "rated", uri)
    master, slave = pty.openpty()
    proc = subprocess.Popen([MIGRATE, "backfill", "-c", conf, "--batch", "100", "--rate", "4000"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            break
        if ready and not chunk:
            break
        out += chunk
    os.close(master)
    try:
        rc = proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    text = out.decode("utf-8", "replace")
    t.eq(rc, 0, "tty: exit 0")
    t.ok(harness.sanitizer_problem("backfill on a pty", rc, text) is None, "tty: no sanitizer report", text[-3000:])
    bars = [b for b in text.split("\r") if "ETA" in b]
    t.ok(len(bars) >= 3 and "2000/2000 100.0%" in bars[-1] and "backfill: " not in text,
         "tty: a bar redrawn in place (%d times), 100%% at the end, no progress log lines" % len(bars),
         repr(text[-600:]))


def bad_input(t, r, srv, uri):
    p = PREFIX + "bad"
    conf = write_conf("bad", srv, p, "rated", uri)
    proc = Process([MIGRATE, "run", "-c", conf, "--rate", "5"], name="run --rate", expect_rc=1)
    proc.wait(10)
    t.ok("options of backfill" in proc.stderr(), "run --rate: refused (exit 1)", proc.log_tail())
    proc.stop()
    proc = backfill(conf, "--batch", "0", expect_rc=1)
    proc.wait(10)
    t.ok("--batch must be a number" in proc.stderr(), "--batch 0: refused (exit 1)", proc.log_tail())
    proc.stop()
    r.set(p + ":backfill:cursor", "{not json")
    proc = backfill(conf, expect_rc=1)
    proc.wait(10)
    t.ok("is not a backfill cursor" in proc.stderr() and r.xlen(p + ":migrate") == 0,
         "a stored cursor that is not one: exit 1, nothing enqueued", proc.log_tail())
    proc.stop()
    finish(t, backfill(conf, "--restart"), 20, "--restart")
    t.eq(r.xlen(p + ":migrate"), RATED, "--restart: deletes it and walks from the start")


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
