#!/usr/bin/python3
"""
migrate_worker.py - `cutover-migrate run`, the lazy-migration worker, end to
end: a real redis-server, a MongoDB playing legacy (tests/mongo_double.py,
or CUTOVER_TEST_MONGO_URI), import_service.py playing the user service's
import endpoint, users enqueued with `cutoverctl migration enqueue` or
XADD. No proxy.

  - delivery: every user in the service with the mapped fields and its
    X-Cutover-Version, HSET <p>:migrated, PUBLISH <p>:migrated:changed,
    XACK (nothing pending), `cutoverctl migration status`, the metrics file
  - dead letters: not-found, sink-4xx (at once), malformed entries
  - the service's version guard: a 409 counts as delivered, its copy kept
  - the service down for a while (retries, nothing acked, then recovery)
    and for good (dead-lettered after retry.attempts, `migration dead
    retry` brings the user back)
  - kill -9 in the middle of a batch of 10,000 users, then a restart:
    nothing lost, nothing dead, nothing pending
  - SIGTERM during a batch: exit 0, everything delivered acked and
    everything acked delivered
  - throughput for batch 10, 100 and 1000 (a diagnostic, not asserted)
"""
import datetime
import json
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ImportService, Migrator, Mongo, migration_keys, poll, run_ctl  # noqa: E402

GROUP = "migrators"
EPOCH = datetime.datetime(2024, 1, 1)


# --- helpers -----------------------------------------------------------------

def version_of(i):
    """The legacy updatedAt of the i-th seeded user (ms precision)."""
    return EPOCH + datetime.timedelta(milliseconds=i * 1001)


def iso_ms(dt):
    """A date as the migrator writes X-Cutover-Version: ...T12:00:00.000Z."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def legacy_doc(user, i):
    doc = {"_id": user, "name": "Name %d" % i, "emailAddress": "%s@example.com" % user,
           "passwordHash": "$2b$secret%d" % i, "legacyFlags": [i, "x"], "updatedAt": version_of(i),
           "plan": {"tier": "gold" if i % 2 else "free", "seats": i % 7}}
    if i % 3 == 0:
        doc["locale"] = "fr"
    if i % 5 == 0:
        doc["marketingOptIn"] = True
    return doc


def seed(db, users, start=0):
    """Inserts legacy documents for users; returns {user: document}."""
    docs = {u: legacy_doc(u, start + k) for k, u in enumerate(users)}
    if docs:
        db.users.insert_many(list(docs.values()))
    return docs


def parse_date(v):
    """A relaxed extended JSON date ({"$date": "...Z"}) as a naive datetime."""
    if not isinstance(v, dict) or not isinstance(v.get("$date"), str):
        return None
    text = v["$date"].rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.datetime.strptime(text, fmt)
        except ValueError:
            pass
    return None


def mapping_problems(doc, stored):
    """What is wrong with the service's copy (stored: import_service's
    {"doc", "version"}) of legacy document doc under conf/migrate.conf's
    mapping; [] if nothing."""
    if stored is None:
        return ["not in the service"]
    got = stored["doc"]
    want = {k: v for k, v in doc.items() if k not in ("passwordHash", "legacyFlags", "emailAddress", "updatedAt")}
    want["email"] = doc["emailAddress"]
    want.setdefault("locale", "en")
    want.setdefault("marketingOptIn", False)
    bad = []
    for k, v in want.items():
        if got.get(k) != v:
            bad.append("%s: got %r, want %r" % (k, got.get(k), v))
    if parse_date(got.get("updatedAt")) != doc["updatedAt"]:
        bad.append("updatedAt: got %r, want %s" % (got.get("updatedAt"), doc["updatedAt"]))
    extra = set(got) - set(want) - {"updatedAt"}
    if extra:
        bad.append("fields that should not be there: %r" % sorted(extra))
    if stored.get("version") != iso_ms(doc["updatedAt"]):
        bad.append("X-Cutover-Version %r, want %r" % (stored.get("version"), iso_ms(doc["updatedAt"])))
    return bad


def xadd_users(r, prefix, users, stream="migrate", reason="manual"):
    """Appends an entry per user; returns their ids."""
    pipe = r.pipeline(transaction=False)
    for u in users:
        pipe.xadd(migration_keys(prefix)[stream], {"user": u, "reason": reason, "at": "0"})
    return pipe.execute()


def id_le(a, b):
    """Stream id a <= stream id b."""
    return tuple(map(int, a.split("-"))) <= tuple(map(int, b.split("-")))


def pending(r, prefix):
    """Entries delivered to the group and not acked, over both streams."""
    total = 0
    for stream in ("migrate", "priority"):
        try:
            total += r.xpending(migration_keys(prefix)[stream], GROUP)["pending"]
        except harness.redis.ResponseError:  # no stream or group yet
            pass
    return total


def decoded(b):
    """bytes as text when they are UTF-8, else as they are."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def dead_entries(srv, prefix):
    """The dead-letter stream as [{field: value}], values decoded as UTF-8
    where they can be (else left as bytes)."""
    rb = srv.client(decode=False)
    try:
        out = []
        for entry_id, fields in rb.xrange(migration_keys(prefix)["dead"]):
            e = {"_id": entry_id.decode()}
            for k, v in fields.items():
                e[k.decode()] = decoded(v)
            out.append(e)
        return out
    finally:
        rb.close()


def status(prefix):
    rc, out, err = run_ctl("migration", "status", prefix=prefix, json=True)
    try:
        return json.loads(out) if rc == 0 else {"exit": rc, "stderr": err}
    except ValueError:
        return {"unparsed": out}


def metric_problems(metrics, **want):
    """Counters of the metrics file that differ from want (a value, or a
    (min, max) range)."""
    if metrics is None:
        return ["no metrics file"]
    bad = []
    for k, v in want.items():
        got = metrics.get(k)
        ok = (v[0] <= got <= v[1]) if isinstance(v, tuple) and isinstance(got, int) else got == v
        if not ok:
            bad.append("%s: %r, want %r" % (k, got, v))
    return bad


class Fixture:
    """What the tests share: Redis, legacy MongoDB, the import service."""

    def __init__(self, srv, mongo, svc):
        self.srv, self.mongo, self.svc = srv, mongo, svc
        self.r = srv.client()

    def fresh(self, tag):
        """A prefix and a legacy database of the test's own, and an import
        service that holds nothing and fails nothing (once the PUTs of the
        previous test, slow ones too, are over)."""
        self.svc.mode(delay_ms=0, hang_up=0)
        poll(lambda: self.svc.stats()["inflight"] == 0, 10)
        self.svc.reset()
        self.svc.mode(status=0, fail_first=0, delay_ms=0, users={u: 0 for u in self.svc.stats()["mode"]["users"]})
        return harness.PREFIX + ":" + tag, self.mongo.database(tag)

    def migrator(self, prefix, db, **settings):
        return Migrator(self.mongo.uri, db.name, self.svc.url(), prefix=prefix, **settings)


# --- the tests ------------------------------------------------------------------

def test_basic(t, fx):
    prefix, db = fx.fresh("basic")
    keys = migration_keys(prefix)
    users = ["b%02d" % i for i in range(40)]
    odd = ["ü/x y+1", "with%percent"]  # percent-encoded in the PUT's path
    docs = seed(db, users + odd)
    xadd_users(fx.r, prefix, ["b00"], stream="priority", reason="read-guard")  # b00 on both streams
    rc, out, err = run_ctl("migration", "enqueue", *users, prefix=prefix)
    t.ok(rc == 0 and out.count("enqueued as") == len(users), "cutoverctl migration enqueue: %d users" % len(users),
         out + err)
    xadd_users(fx.r, prefix, odd)
    sub = fx.srv.client().pubsub()
    sub.subscribe(keys["changed"])
    w = fx.migrator(prefix, db, batch=16)
    everyone = set(users + odd)
    done = poll(lambda: fx.r.hlen(keys["migrated"]) >= len(everyone) and pending(fx.r, prefix) == 0, 20)
    t.ok(done, "all %d users are recorded in %s" % (len(everyone), keys["migrated"]),
         "migrated %d; worker log:\n%s" % (fx.r.hlen(keys["migrated"]), w.log_tail(10)))
    stored = fx.svc.users()
    bad = {u: mapping_problems(docs[u], stored.get(u)) for u in everyone}
    bad = {u: p for u, p in bad.items() if p}
    t.ok(not bad and set(stored) == everyone,
         "every user is in the service once, mapped as conf/migrate.conf says (passwordHash and legacyFlags "
         "dropped, emailAddress renamed to email, locale and marketingOptIn defaulted where absent, the date as "
         "extended JSON), with X-Cutover-Version = updatedAt; ids with '/', ' ', '%' and UTF-8 survive the URL",
         "%r\nservice holds %d: %r" % (dict(list(bad.items())[:5]), len(stored), sorted(stored)[:10]))
    migrated = fx.r.hgetall(keys["migrated"])
    now_ms = time.time() * 1000
    t.ok(set(migrated) == everyone and all(abs(now_ms - int(v)) < 60000 for v in migrated.values()),
         "%s holds exactly those users, each with a time in ms" % keys["migrated"], repr(migrated)[:500])
    seen = set()

    def collect():
        while True:
            m = sub.get_message(timeout=0.05)
            if m is None:
                return seen >= everyone
            if m["type"] == "message":
                seen.add(m["data"])
    t.ok(poll(collect, 5), "a subscriber of %s saw every user published" % keys["changed"],
         "missing %r" % sorted(everyone - seen)[:10])
    sub.close()
    t.eq(pending(fx.r, prefix), 0, "every entry is acked: XPENDING counts none")
    t.eq(fx.svc.stats()["puts_by_user"].get("b00"), 1,
         "b00, on both streams in the same batch, was delivered once (and both entries acked)")
    st = status(prefix)
    t.ok(st.get("migrated") == len(everyone) and st.get("pending") == {} and st.get("dead") == 0
         and st.get("oldest_lag_s") == 0,
         "cutoverctl migration status --json: migrated %d, dead 0, oldest lag 0, no consumer with pending entries"
         % len(everyone), repr(st))
    t.ok(st.get("queued") == 0 and st.get("priority") == 0,
         "and queued 0, priority 0: acked entries are not counted as queued", repr(st))
    m = w.wait_metrics(lambda m: m.get("migrated") == len(everyone), 5)
    t.ok(not metric_problems(m, processed=len(everyone) + 1, migrated=len(everyone), dead=0, failed=0, retried=0,
                             deferred=0, redis_errors=0, legacy_errors=0)
         and m["batch_latency_ms"]["batches"] >= 3 and m["last_error"] is None and m["updated_at"].endswith("Z"),
         "the metrics file: processed %d entries (b00's two), migrated %d, nothing failed, batch latencies of >= 3 "
         "batches (batch 16)" % (len(everyone) + 1, len(everyone)), repr(m))
    # An entry again for a migrated user: delivered again, harmlessly.
    xadd_users(fx.r, prefix, ["b00"], reason="refresh")
    again = poll(lambda: (fx.svc.user("b00") or {}).get("puts") == 2 and pending(fx.r, prefix) == 0, 5)
    t.ok(again and not mapping_problems(docs["b00"], fx.svc.user("b00")) and pending(fx.r, prefix) == 0,
         "a second entry for a migrated user (reason refresh) is delivered again (same version: 200) and acked",
         repr(fx.svc.user("b00")))
    rc, out, err = run_ctl("migration", "forget", "b01", prefix=prefix)
    t.ok(rc == 0 and "was migrated" in out and not fx.r.hexists(keys["migrated"], "b01"),
         "cutoverctl migration forget b01: no longer recorded as migrated", out + err)
    rc, out, err = run_ctl("migration", "enqueue", "b01", prefix=prefix)
    again = poll(lambda: fx.r.hexists(keys["migrated"], "b01") and pending(fx.r, prefix) == 0, 5)
    t.ok(rc == 0 and again and fx.svc.user("b01")["puts"] == 2, "enqueued again, b01 is migrated again", out + err)
    rc = w.stop()
    t.ok(rc == 0, "SIGTERM: the worker exits 0, no sanitizer report", w.log_tail())
    m = w.metrics() or {}
    t.ok(m.get("migrated") == len(everyone) + 2 and m.get("processed") == len(everyone) + 3,
         "the metrics file written at exit has the final counts", repr(m))


def test_dead_letters(t, fx):
    prefix, db = fx.fresh("dead")
    keys = migration_keys(prefix)
    docs = seed(db, ["ok1", "bad422"])
    db.users.insert_many([{"_id": "map-twice", "emailAddress": "a@example.com", "email": "b@example.com"},
                          {"_id": "map-version", "name": "x", "updatedAt": [2024, 1]}])
    fx.svc.mode(users={"bad422": 422})
    xadd_users(fx.r, prefix, ["ghost1", "bad422", "ok1", "map-twice", "map-version"])
    rb = fx.srv.client(decode=False)
    malformed = [({b"reason": b"manual"}, "no user field"),
                 ({b"user": b"\xff\xfeab", b"reason": b"manual"}, "not UTF-8"),
                 ({b"user": b"", b"reason": b"manual"}, "empty"),
                 ({b"user": b"a\x01b", b"reason": b"manual"}, "has a control character"),
                 ({b"user": b"nul\x00inside", b"reason": b"manual"}, "has a control character"),
                 ({b"user": b"x" * 257, b"reason": b"manual"}, "longer than 256 bytes")]
    for fields, _ in malformed:
        rb.xadd(keys["migrate"], fields)
    rb.close()
    w = fx.migrator(prefix, db, retry={"attempts": 3})
    ndead = 4 + len(malformed)
    done = poll(lambda: fx.r.xlen(keys["dead"]) >= ndead and fx.r.hexists(keys["migrated"], "ok1")
                and pending(fx.r, prefix) == 0, 10)
    dead = dead_entries(fx.srv, prefix)
    t.ok(done and len(dead) == ndead, "%d dead-letter entries, and ok1 migrated" % ndead,
         "%r\n%s" % (dead, w.log_tail(10)))
    by_user = {e.get("user"): e for e in dead}
    g = by_user.get("ghost1", {})
    t.ok(g.get("reason") == "not-found" and "no document" in g.get("error", "") and g.get("attempts") == "0"
         and g.get("at", "").isdigit(),
         "a user missing from legacy: reason not-found, with error, attempts 0 and at", repr(g))
    b = by_user.get("bad422", {})
    t.ok(b.get("reason") == "sink-4xx" and b.get("error", "").startswith("HTTP 422") and b.get("attempts") == "0",
         "a 422 from the service: reason sink-4xx, error 'HTTP 422: ...'", repr(b))
    t.eq(fx.svc.stats()["puts_by_user"].get("bad422"), 1, "the 4xx user was sent once: dead-lettered at once")
    m1, m2 = by_user.get("map-twice", {}), by_user.get("map-version", {})
    t.ok(m1.get("reason") == "mapping" and "'emailAddress' to 'email'" in m1.get("error", "")
         and m2.get("reason") == "mapping" and "version field 'updatedAt'" in m2.get("error", "")
         and fx.svc.user("map-twice") is None and "map-version" not in fx.svc.stats()["puts_by_user"],
         "a rename onto a field the document has too, and a version field of a type with no header form (an "
         "array): reason mapping, nothing sent", "%r\n%r" % (m1, m2))
    got = sorted(((e.get("reason"), e.get("user"), e.get("error")) for e in dead
                  if e.get("user") not in ("ghost1", "bad422", "map-twice", "map-version")), key=repr)
    want = sorted((("malformed", decoded(f.get(b"user", b"")), why) for f, why in malformed), key=repr)
    t.eq(got, want, "malformed entries (no user field, not UTF-8, empty, a control character, a NUL, 257 bytes): "
         "reason malformed, the user field as sent (empty when missing), why in error")
    t.eq(pending(fx.r, prefix), 0, "every entry, dead-lettered ones too, is acked")
    t.eq(sorted(fx.r.hkeys(keys["migrated"])), ["ok1"], "only ok1 is recorded as migrated")
    t.ok(not mapping_problems(docs["ok1"], fx.svc.user("ok1")) and fx.svc.user("bad422") is None,
         "ok1 is in the service, bad422 is not")
    m = w.wait_metrics(lambda m: m.get("dead") == ndead, 5)
    t.ok(not metric_problems(m, processed=5 + len(malformed), migrated=1, dead=ndead, not_found=1, sink_4xx=1,
                             mapping=2, malformed=len(malformed), attempts_exhausted=0, failed=0)
         and m.get("last_error"),
         "the metrics file counts them: dead %d = not_found 1 + sink_4xx 1 + mapping 2 + malformed %d; last_error "
         "set"
         % (ndead, len(malformed)), repr(m))
    rc, out, err = run_ctl("migration", "dead", "list", prefix=prefix, json=True)
    lines = out.splitlines()
    t.ok(rc == 0 and len(lines) == ndead and all(u in out for u in ("ghost1", "bad422", "not-found", "sink-4xx",
                                                                    "map-twice", "mapping")),
         "cutoverctl migration dead list --json shows the %d entries" % ndead, out + err)
    raw = subprocess.run(harness.ctl_argv(["migration", "dead", "list"], prefix=prefix, json=True),
                         stdin=subprocess.DEVNULL, capture_output=True, env=harness._child_env(), timeout=10).stdout
    invalid = []
    for line in raw.splitlines():
        try:
            json.loads(line.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError too
            invalid.append("%r: %s" % (line[:80], e))
    t.ok(not invalid, "every line of dead list --json is JSON (UTF-8), the non-UTF-8 user's too",
         "\n".join(invalid))
    rc = w.stop()
    t.ok(rc == 0, "the worker exits 0 on SIGTERM", w.log_tail())
    # With no worker running: every dead-letter entry back on the stream.
    rb = fx.srv.client(decode=False)
    before = rb.xlen(keys["migrate"])
    rc, out, err = run_ctl("migration", "dead", "retry", prefix=prefix)
    back = sorted((f.get(b"user") for _, f in rb.xrange(keys["migrate"])[before:]), key=repr)
    rb.close()
    want = sorted((e["user"] if isinstance(e["user"], bytes) else e["user"].encode() for e in dead), key=repr)
    t.ok(rc == 0 and fx.r.xlen(keys["dead"]) == 0 and len(back) == ndead,
         "cutoverctl migration dead retry (no ids): all %d entries leave the dead-letter stream for %s"
         % (ndead, keys["migrate"]), out + err)
    t.ok(back == want, "each goes back with its user exactly as it was (the one with a NUL is not cut short into "
         "another user id)", "got %r\nwant %r" % (back, want))


def test_version_guard(t, fx):
    prefix, db = fx.fresh("vguard")
    keys = migration_keys(prefix)
    docs = seed(db, ["vg-newer", "vg-older"])
    db.users.insert_one({"_id": "vg-num", "name": "numeric", "updatedAt": 5})
    newer = iso_ms(docs["vg-newer"]["updatedAt"] + datetime.timedelta(days=365))
    older = iso_ms(docs["vg-older"]["updatedAt"] - datetime.timedelta(days=365))
    fx.svc.put("vg-newer", {"name": "edited in the service"}, newer)
    fx.svc.put("vg-older", {"name": "stale copy"}, older)
    fx.svc.put("vg-num", {"name": "numeric, newer"}, 10)
    xadd_users(fx.r, prefix, ["vg-newer", "vg-older", "vg-num"])
    w = fx.migrator(prefix, db)
    done = poll(lambda: fx.r.hlen(keys["migrated"]) >= 3 and pending(fx.r, prefix) == 0, 10)
    t.ok(done and pending(fx.r, prefix) == 0 and fx.r.xlen(keys["dead"]) == 0,
         "a 409 from the service's version guard counts as delivered: all 3 recorded in %s, acked, none dead"
         % keys["migrated"], "%r\n%s" % (fx.r.hgetall(keys["migrated"]), w.log_tail(10)))
    n = fx.svc.user("vg-newer") or {}
    num = fx.svc.user("vg-num") or {}
    t.ok(n.get("doc") == {"name": "edited in the service"} and n.get("version") == newer
         and num.get("doc") == {"name": "numeric, newer"} and num.get("version") == "10",
         "the service's newer copies (a date, and the number 10 against legacy's 5) are not overwritten",
         "%r\n%r" % (n, num))
    t.ok(not mapping_problems(docs["vg-older"], fx.svc.user("vg-older")),
         "an older copy in the service is replaced by legacy's", repr(fx.svc.user("vg-older")))
    st = fx.svc.stats()
    t.eq((st["conflicts"], st["puts"]), (2, 3), "the service answered 409 twice out of 3 PUTs")
    m = w.wait_metrics(lambda m: m.get("migrated") == 3, 5)
    t.ok(not metric_problems(m, migrated=3, dead=0, failed=0), "the metrics file counts the 409s as migrated",
         repr(m))
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_service_down_then_back(t, fx):
    prefix, db = fx.fresh("down")
    keys = migration_keys(prefix)
    users = ["sd%d" % i for i in range(5)]
    docs = seed(db, users)
    fx.svc.mode(status=500)
    xadd_users(fx.r, prefix, users)
    w = fx.migrator(prefix, db, retry={"attempts": 20, "backoff": 50, "backoff_max": 200})

    def attempts_at_least(n):
        a = fx.r.hgetall(keys["attempts"])
        return len(a) == len(users) and all(int(v) >= n for v in a.values())
    retried = poll(lambda: attempts_at_least(2), 15)
    attempts = fx.r.hgetall(keys["attempts"])
    t.ok(retried, "the service answering 500: every user's failures are counted in %s, and retried (>= 2 attempts "
         "each: taken over again after claim_idle)" % keys["attempts"], "%r\n%s" % (attempts, w.log_tail(10)))
    t.ok(pending(fx.r, prefix) == len(users) and fx.r.hlen(keys["migrated"]) == 0 and fx.r.xlen(keys["dead"]) == 0,
         "while it is down nothing is acked (%d pending), nothing recorded as migrated, nothing dead" % len(users),
         "pending %d, migrated %d, dead %d" % (pending(fx.r, prefix), fx.r.hlen(keys["migrated"]),
                                               fx.r.xlen(keys["dead"])))
    st = status(prefix)
    t.ok(sum(st.get("pending", {}).values()) == len(users) and st.get("oldest_lag_s", 0) > 0.5
         and st.get("migrated") == 0,
         "cutoverctl migration status: %d pending for the worker's consumer, an oldest lag > 0.5 s" % len(users),
         repr(st))
    m = w.wait_metrics(lambda m: m.get("failed", 0) >= 2 * len(users) and m.get("retried", 0) >= len(users), 5)
    t.ok(m is not None and m.get("migrated") == 0 and "HTTP 500" in (m.get("last_error") or ""),
         "the metrics file counts failed >= %d and retried >= %d, last_error says HTTP 500"
         % (2 * len(users), len(users)), repr(w.metrics()))
    fx.svc.mode(status=0)
    done = poll(lambda: fx.r.hlen(keys["migrated"]) == len(users) and pending(fx.r, prefix) == 0, 15)
    t.ok(done and pending(fx.r, prefix) == 0 and fx.r.xlen(keys["dead"]) == 0 and fx.r.hlen(keys["attempts"]) == 0,
         "the service back: every user delivered and acked, none dead, their attempt counts cleared",
         "migrated %r pending %d attempts %r" % (fx.r.hkeys(keys["migrated"]), pending(fx.r, prefix),
                                                 fx.r.hgetall(keys["attempts"])))
    bad = {u: mapping_problems(docs[u], fx.svc.user(u)) for u in users}
    t.ok(not any(bad.values()), "and the service holds each of them, mapped", repr(bad))
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_service_down_for_good(t, fx):
    prefix, db = fx.fresh("gone")
    keys = migration_keys(prefix)
    docs = seed(db, ["dg1"])
    fx.svc.mode(status=500)
    xadd_users(fx.r, prefix, ["dg1"])
    w = fx.migrator(prefix, db, retry={"attempts": 3, "backoff": 50, "backoff_max": 200})
    dead = poll(lambda: fx.r.xlen(keys["dead"]) >= 1 and pending(fx.r, prefix) == 0, 15)
    entries = dead_entries(fx.srv, prefix)
    e = entries[0] if entries else {}
    t.ok(dead and len(entries) == 1 and e.get("user") == "dg1" and e.get("reason") == "attempts"
         and e.get("attempts") == "3" and "HTTP 500" in e.get("error", ""),
         "after retry.attempts (3) failures the user is dead-lettered: reason attempts, attempts 3, the last error",
         "%r\n%s" % (entries, w.log_tail(10)))
    t.ok(fx.svc.stats()["puts_by_user"].get("dg1") == 3 and pending(fx.r, prefix) == 0
         and not fx.r.hexists(keys["attempts"], "dg1") and not fx.r.hexists(keys["migrated"], "dg1"),
         "3 PUTs were made; the entry is acked, the attempt count cleared, the user not migrated",
         "puts %r pending %d attempts %r" % (fx.svc.stats()["puts_by_user"], pending(fx.r, prefix),
                                             fx.r.hgetall(keys["attempts"])))
    m = w.wait_metrics(lambda m: m.get("dead") == 1, 5)
    t.ok(not metric_problems(m, dead=1, attempts_exhausted=1, failed=2, migrated=0),
         "the metrics file: dead 1, attempts_exhausted 1, failed 2 (the third failure is the dead-letter)", repr(m))
    fx.svc.mode(status=0)
    rc, out, err = run_ctl("migration", "dead", "retry", "dg1", prefix=prefix)
    t.ok(rc == 0 and out.startswith("1 dead-letter"), "the service back: cutoverctl migration dead retry dg1",
         out + err)
    done = poll(lambda: fx.r.hexists(keys["migrated"], "dg1") and pending(fx.r, prefix) == 0, 10)
    t.ok(done and fx.r.xlen(keys["dead"]) == 0 and pending(fx.r, prefix) == 0
         and not mapping_problems(docs["dg1"], fx.svc.user("dg1")),
         "the retried user is delivered, recorded and acked; the dead-letter stream is empty",
         "dead %r\n%s" % (dead_entries(fx.srv, prefix), w.log_tail(10)))
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_service_slow(t, fx):
    prefix, db = fx.fresh("slow")
    keys = migration_keys(prefix)
    users = ["sl%d" % i for i in range(6)]
    docs = seed(db, users)
    fx.svc.mode(delay_ms=800)
    xadd_users(fx.r, prefix, users)
    w = fx.migrator(prefix, db, sink={"timeout": 300}, retry={"attempts": 20, "backoff": 50, "backoff_max": 200})
    deferred = w.wait_stderr("not tried", 10)
    tried = sorted(fx.svc.stats()["puts_by_user"])
    attempts = fx.r.hgetall(keys["attempts"])
    t.ok(deferred and len(tried) == 3 and sorted(attempts) == tried and set(attempts.values()) == {"1"},
         "a service slower than sink.timeout (300 ms): 3 requests time out (an attempt each), the other 3 users of "
         "the batch are not tried (deferred, no attempt)", "tried %r attempts %r\n%s" % (tried, attempts,
                                                                                         w.log_tail(10)))
    t.ok(pending(fx.r, prefix) == len(users) and fx.r.hlen(keys["migrated"]) == 0,
         "nothing is acked or recorded meanwhile")
    m = w.wait_metrics(lambda m: m.get("deferred", 0) >= 3 and m.get("failed", 0) >= 3, 5)
    t.ok(not metric_problems(m, failed=(3, 10**6), deferred=(3, 10**6), migrated=0, dead=0)
         and "timed out" in m.get("last_error", ""),
         "the metrics file counts failed >= 3 and deferred >= 3; last_error says timed out", repr(w.metrics()))
    fx.svc.mode(delay_ms=0)
    done = poll(lambda: fx.r.hlen(keys["migrated"]) == len(users) and pending(fx.r, prefix) == 0, 15)
    t.ok(done and fx.r.xlen(keys["dead"]) == 0 and fx.r.hlen(keys["attempts"]) == 0
         and not any(mapping_problems(docs[u], fx.svc.user(u)) for u in users),
         "the service fast again: every user delivered and acked, none dead, attempts cleared",
         "migrated %r pending %d\n%s" % (fx.r.hkeys(keys["migrated"]), pending(fx.r, prefix), w.log_tail(10)))
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_hang_up(t, fx, n=30):
    prefix, db = fx.fresh("hangup")
    keys = migration_keys(prefix)
    users = ["hu%02d" % i for i in range(n)]
    seed(db, users)
    fx.svc.mode(hang_up=1)
    xadd_users(fx.r, prefix, users)
    w = fx.migrator(prefix, db, batch=10)
    done = poll(lambda: fx.r.hlen(keys["migrated"]) >= n and pending(fx.r, prefix) == 0, 10)
    m = w.wait_metrics(lambda m: m.get("migrated") == n, 5)
    t.ok(done and not metric_problems(m, migrated=n, failed=0, deferred=0) and fx.svc.stats()["puts"] == n,
         "a service that closes each keep-alive connection after its response (no Connection: close): %d users "
         "delivered with %d PUTs, none failed" % (n, n), "%r %r" % (m, fx.svc.stats()))
    fx.svc.mode(hang_up=0)
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_redis_restart(t, fx, n=300):
    prefix, db = fx.fresh("redis")
    keys = migration_keys(prefix)
    users = ["rr%03d" % i for i in range(n)]
    docs = seed(db, users)
    xadd_users(fx.r, prefix, users)
    fx.svc.mode(delay_ms=2)
    w = fx.migrator(prefix, db, batch=50, retry={"attempts": 2, "backoff": 50, "backoff_max": 400})
    poll(lambda: fx.svc.stats()["puts"] >= 60, 20, 0.005)
    offset = w.stderr_size()
    fx.srv.stop(save=True)
    lost = w.wait_stderr("Redis at", 10, since=offset)
    t.ok(lost, "Redis stopped (with its data saved) in the middle of a batch: the worker says so",
         w.log_tail(5))
    fx.srv.start()
    done = poll(lambda: fx.r.hlen(keys["migrated"]) >= n and pending(fx.r, prefix) == 0, 20, 0.05)
    stored = fx.svc.users()
    t.ok(done and len(stored) == n and not any(mapping_problems(docs[u], stored.get(u)) for u in users),
         "Redis back: the worker goes on, every user delivered, recorded and acked",
         "migrated %d pending %d stored %d\n%s" % (fx.r.hlen(keys["migrated"]), pending(fx.r, prefix),
                                                   len(stored), w.log_tail(10)))
    t.ok(fx.r.xlen(keys["dead"]) == 0 and fx.r.hlen(keys["attempts"]) == 0,
         "the outage cost no attempt (retry.attempts is 2) and dead-lettered nobody",
         "dead %r attempts %r" % (dead_entries(fx.srv, prefix)[:3], fx.r.hgetall(keys["attempts"])))
    m = w.wait_metrics(lambda m: m.get("migrated") == n, 5)
    t.ok(m is not None and m.get("redis_errors", 0) >= 1, "the metrics file counts redis_errors >= 1", repr(m))
    fx.svc.mode(delay_ms=0)
    t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def test_kill9(t, fx, n=10000):
    prefix, db = fx.fresh("kill9")
    keys = migration_keys(prefix)
    users = ["k%05d" % i for i in range(n)]
    docs = seed(db, users)
    xadd_users(fx.r, prefix, users)
    w1 = fx.migrator(prefix, db, batch=500, consumer="first")
    poll(lambda: fx.svc.stats()["stored"] >= n // 3, 30, 0.005)
    w1.kill()  # SIGKILL: no batch finished, no final metrics
    stored_at_kill = fx.svc.stats()["stored"]
    migrated_at_kill = fx.r.hlen(keys["migrated"])
    pending_at_kill = pending(fx.r, prefix)
    t.diag("kill -9 with %d users in the service, %d recorded as migrated, %d entries pending"
           % (stored_at_kill, migrated_at_kill, pending_at_kill))
    t.ok(0 < stored_at_kill < n and pending_at_kill > 0,
         "cutover-migrate killed (-9) in the middle of a batch: entries were pending (unacked) at the kill")
    t.ok(migrated_at_kill <= stored_at_kill, "nothing was recorded as migrated before the service had it",
         "migrated %d > stored %d" % (migrated_at_kill, stored_at_kill))
    t0 = time.monotonic()
    w2 = fx.migrator(prefix, db, batch=500, consumer="second")
    done = poll(lambda: fx.r.hlen(keys["migrated"]) >= n and pending(fx.r, prefix) == 0, 40, 0.05)
    t.ok(done, "a restarted worker (claim_idle 1000 ms) finishes in %.1f s: %d users recorded, 0 pending"
         % (time.monotonic() - t0, fx.r.hlen(keys["migrated"])),
         "migrated %d, pending %d\n%s" % (fx.r.hlen(keys["migrated"]), pending(fx.r, prefix), w2.log_tail(10)))
    stored = fx.svc.users()
    missing = [u for u in users if u not in stored]
    wrong = [u for u in users if u in stored and mapping_problems(docs[u], stored[u])]
    t.ok(not missing and not wrong and len(stored) == n,
         "every one of the %d users is in the service, with its data: none lost" % n,
         "missing %d %r, wrong %d %r" % (len(missing), missing[:5], len(wrong), wrong[:5]))
    t.ok(fx.r.xlen(keys["dead"]) == 0 and fx.r.hlen(keys["attempts"]) == 0,
         "the dead-letter stream is empty, no attempts counted", repr(dead_entries(fx.srv, prefix)[:3]))
    xp = fx.r.xpending(keys["migrate"], GROUP)
    t.ok(xp["pending"] == 0, "XPENDING: nothing pending for any consumer", repr(xp))
    m = w2.wait_metrics(lambda m: m.get("migrated", 0) >= n - migrated_at_kill, 5)
    t.ok(m is not None and m.get("retried", 0) >= pending_at_kill and m.get("dead") == 0,
         "the second worker took over the first one's pending entries (retried %r >= %d)"
         % ((m or {}).get("retried"), pending_at_kill), repr(m))
    again = sum(1 for u in users if stored[u]["puts"] > 1) if not missing else -1
    t.diag("%d users were delivered twice (their first delivery was not acked before the kill)" % again)
    t.ok(w2.stop() == 0, "the second worker exits 0 on SIGTERM", w2.log_tail())


def test_sigterm(t, fx, n=400):
    prefix, db = fx.fresh("term")
    keys = migration_keys(prefix)
    users = ["st%03d" % i for i in range(n)]
    seed(db, users)
    ids = xadd_users(fx.r, prefix, users)
    fx.svc.mode(delay_ms=5)
    w = fx.migrator(prefix, db, batch=50, block=5000)
    poll(lambda: fx.svc.stats()["puts"] >= 70, 20, 0.005)  # inside the second batch
    inflight = fx.svc.stats()["puts"] % 50
    w.send_signal(signal.SIGTERM)
    rc = w.wait(15)
    stored = set(fx.svc.users())
    t.ok(rc == 0, "SIGTERM in the middle of a batch (%d of its PUTs done): the worker exits 0" % inflight,
         "exit %r\n%s" % (rc, w.log_tail()))
    w.stop()  # checks stderr for sanitizer reports
    t.eq(pending(fx.r, prefix), 0, "nothing is left pending: the batch in hand was finished and acked")
    migrated = set(fx.r.hkeys(keys["migrated"]))
    t.ok(migrated == stored and 0 < len(stored) < n,
         "the users in the service are exactly those recorded as migrated (%d of %d)" % (len(stored), n),
         "service-only %r, migrated-only %r" % (sorted(stored - migrated)[:5], sorted(migrated - stored)[:5]))
    info = fx.r.xinfo_groups(keys["migrate"])
    last = next((g["last-delivered-id"] for g in info if g["name"] == GROUP), "0-0")
    acked = [u for u, i in zip(users, ids) if id_le(i, last)]  # read by the group, and none pending
    t.ok(set(acked) == stored and len(acked) == len(stored),
         "every entry read (and, with none pending, acked) is delivered, and no entry is acked whose user is "
         "not in the service", "acked %d, stored %d" % (len(acked), len(stored)))
    m = w.metrics() or {}
    t.eq(m.get("migrated"), len(stored), "the metrics file written at exit counts exactly those as migrated")
    fx.svc.mode(delay_ms=0)


def test_throughput(t, fx, n=5000):
    _, db = fx.fresh("speed")
    users = ["p%05d" % i for i in range(n)]
    seed(db, users)
    for batch in (10, 100, 1000):
        fx.svc.reset()
        prefix = harness.PREFIX + ":speed%d" % batch
        keys = migration_keys(prefix)
        xadd_users(fx.r, prefix, users)
        if batch == 1000:
            # The last user of the backlog, asked for on the priority stream.
            xadd_users(fx.r, prefix, [users[-1]], stream="priority", reason="read-guard")
        t0 = time.monotonic()
        w = fx.migrator(prefix, db, batch=batch)
        if batch == 1000:
            first = poll(lambda: (fx.svc.user(users[-1]) or {}).get("first_put"), 20, 0.005)
            t.ok(first == 1, "a priority entry comes first in its batch: the last user of the backlog is the "
                 "service's first PUT (no. %r)" % first)
        if batch == 100:
            # The last user of the backlog, asked for on the priority stream.
            poll(lambda: fx.r.hlen(keys["migrated"]) >= 300, 20, 0.005)
            xadd_users(fx.r, prefix, [users[-1]], stream="priority", reason="read-guard")
            poll(lambda: fx.r.hexists(keys["migrated"], users[-1]), 20, 0.005)
            at = fx.r.hlen(keys["migrated"])
            t.ok(at < n // 2, "a priority entry for the last user of a backlog of %d is served first: migrated when "
                 "%d users were" % (n, at))
        done = poll(lambda: fx.r.hlen(keys["migrated"]) >= n, 40, 0.02)
        elapsed = time.monotonic() - t0
        m = w.wait_metrics(lambda m: m.get("migrated", 0) >= n, 3) or {}
        t.diag("throughput: batch %4d: %d users in %.2f s = %.0f users/s (batch latency p50 %s ms, p99 %s ms; "
               "incl. worker start)" % (batch, n, elapsed, n / elapsed, m.get("batch_latency_ms", {}).get("p50"),
                                        m.get("batch_latency_ms", {}).get("p99")))
        t.ok(done and fx.svc.stats()["users"] == n, "batch %d: all %d users migrated" % (batch, n))
        t.ok(w.stop() == 0, "the worker exits 0 on SIGTERM", w.log_tail())


def body(t):
    with harness.RedisServer() as srv:
        mongo = Mongo()
        t.diag("legacy MongoDB: %s" % ("CUTOVER_TEST_MONGO_URI" if mongo.real else "tests/mongo_double.py"))
        fx = Fixture(srv, mongo, ImportService())
        for test in (test_basic, test_dead_letters, test_version_guard, test_service_down_then_back,
                     test_service_down_for_good, test_service_slow, test_hang_up, test_redis_restart, test_kill9,
                     test_sigterm, test_throughput):
            t0 = time.monotonic()
            test(t, fx)
            t.diag("%s: %.1f s" % (test.__name__, time.monotonic() - t0))
        fx.svc.stop()
        mongo.close()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
