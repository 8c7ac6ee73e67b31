#!/usr/bin/python3
"""
syncback.py - `cutover-migrate syncback` end to end: a real redis-server,
a MongoDB playing legacy (tests/mongo_double.py, or CUTOVER_TEST_MONGO_URI)
and the test playing the users service, XADDing change events to
<p>:service:events as examples/user_service.py does (and, once, the real
example service driven through its HTTP API). No proxy, no sink.

  - a create: the legacy document with the mapped fields and the state
    field's per-field versions; the user in <p>:migrated and <p>:seen,
    published on <p>:migrated:changed
  - updates out of order and duplicated, in one batch and over several,
    the create last: each field from its newest event; a replay changes
    nothing
  - an update of a user legacy lacks stays pending until its create
    comes; without a create it is dead-lettered (not-in-legacy) after
    retry.attempts
  - deletes = tombstone (late events change nothing, a delete of a user
    legacy lacks leaves a tombstone) and deletes = delete (the document
    goes, <p>:syncback:deleted keeps the version, a replayed create does
    not bring it back)
  - malformed events: dead-lettered (malformed, with why), acked, the good
    events of their batch applied; a write legacy refuses for one user:
    retried, then dead-lettered (attempts)
  - kill -9 in the middle of 3,000 events, then a restart: every user as
    its last event says, nothing pending, nothing dead
  - legacy down (a double stopped and started again on its port; once
    with a SIGTERM meanwhile) and Redis restarted: applied after
    recovery, no attempts counted
  - the metrics file; SIGTERM (exit 0, the count in the log); the
    syncback { } errors of --check-config; every event acked, none
    deleted from the service's stream

Python 3 stdlib plus Debian's python3-redis and python3-pymongo.
"""
import json
import os
import sys
import time

import pymongo

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import MIGRATE, PYTHON, Migrator, Mongo, Process, poll, run_to_end  # noqa: E402

GROUP = "syncback"
# Not used by sync-back; the config wants a sink all the same.
SINK = "http://127.0.0.1:9/internal/import/users/{id}"
# The service's names to legacy's; its own bookkeeping stays out.
SYNCBACK = {"deletes": "tombstone",
            "mapping": {"rename": ["email:emailAddress"], "drop": ["version", "updatedAt"]}}
STATE = "_cutover"
ISO = "2024-05-01T12:00:00.000Z"


# --- the users service's side ---------------------------------------------------

def keys(prefix):
    """The Redis names sync-back reads and writes under prefix."""
    return {"events": prefix + ":service:events", "dead": prefix + ":syncback:dead",
            "attempts": prefix + ":syncback:attempts", "deleted": prefix + ":syncback:deleted",
            "migrated": prefix + ":migrated", "seen": prefix + ":seen", "changed": prefix + ":migrated:changed"}


def event(kind, user, version, fields=None):
    """One entry as examples/user_service.py XADDs it (kind: CREATED,
    UPDATED or DELETED)."""
    return {"type": "USER_" + kind, "user": user, "version": str(version),
            "fields": json.dumps({} if fields is None else fields), "at": str(int(time.time() * 1000))}


def created(user, email, name, version=1):
    """A USER_CREATED: the whole user, as the service stores it."""
    return event("CREATED", user, version, {"_id": user, "email": email, "name": name, "updatedAt": ISO,
                                            "version": version})


def state(user, top, deleted=None, **fields):
    """The legacy document sync-back leaves: fields {legacy name: (value,
    version)}, top the user's highest version, deleted the tombstone's."""
    doc = {"_id": user, STATE: {"v": top}}
    if fields:
        doc[STATE]["f"] = {k: v for k, (_, v) in fields.items()}
    doc.update({k: value for k, (value, _) in fields.items()})
    if deleted is not None:
        doc["deleted"] = True
        doc[STATE]["del"] = deleted
    return doc


def group(r, prefix):
    """XINFO GROUPS' entry of the syncback group, or {}."""
    try:
        return next((g for g in r.xinfo_groups(keys(prefix)["events"]) if g["name"] == GROUP), {})
    except harness.redis.ResponseError:  # no stream yet
        return {}


def pending(r, prefix):
    return group(r, prefix).get("pending")


def entries_read(r, prefix):
    return group(r, prefix).get("entries-read") or 0


def caught_up(r, prefix):
    """Every event read by the group and acked."""
    g = group(r, prefix)
    return g.get("lag") == 0 and g.get("pending") == 0


def id_le(a, b):
    return tuple(map(int, a.split("-"))) <= tuple(map(int, b.split("-")))


def wait_read(r, prefix, entry_id, timeout=10):
    """True once the group has read entry_id: what is added next comes in
    a later batch."""
    return poll(lambda: id_le(entry_id, group(r, prefix).get("last-delivered-id", "0-0")), timeout)


def dead_entries(srv, prefix):
    """The dead-letter stream as [{field: value}], text where UTF-8."""
    rb = srv.client(decode=False)
    try:
        return [{k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
                for _, fields in rb.xrange(keys(prefix)["dead"])]
    finally:
        rb.close()


def docs(db):
    return {d["_id"]: d for d in db.users.find()}


class Fixture:
    """What the tests share: Redis, legacy MongoDB, and every event sent
    (for the acks check at the end)."""

    def __init__(self, srv, mongo):
        self.srv, self.mongo = srv, mongo
        self.r = srv.client()
        self.sent = {}  # prefix -> events XADDed

    def fresh(self, tag):
        """A key prefix and a legacy database of the test's own."""
        return harness.PREFIX + ":" + tag, self.mongo.database(tag)

    def send(self, prefix, *entries, r=None):
        """XADDs entries (dicts of field: str or bytes) to prefix's events
        stream, in one pipeline; returns their ids. r: another Redis's
        client (not counted in sent)."""
        pipe = (r or self.r).pipeline(transaction=False)
        for e in entries:
            pipe.xadd(keys(prefix)["events"], e)
        if r is None:
            self.sent[prefix] = self.sent.get(prefix, 0) + len(entries)
        return pipe.execute()

    def syncback(self, prefix, db, sb=None, mongo_uri=None, **settings):
        """cutover-migrate syncback on prefix's stream into db, SYNCBACK's
        section updated with sb."""
        return Migrator(mongo_uri or self.mongo.uri, db.name, SINK, command="syncback", prefix=prefix,
                        syncback=dict(SYNCBACK, **(sb or {})), **settings)


# --- the tests ------------------------------------------------------------------

def test_create(t, fx):
    prefix, db = fx.fresh("create")
    k = keys(prefix)
    sub = fx.srv.client().pubsub()
    sub.subscribe(k["changed"])
    w = fx.syncback(prefix, db)
    fx.send(prefix, created("c1", "c1@example.com", "C One"))
    done = poll(lambda: caught_up(fx.r, prefix), 10)
    got = db.users.find_one({"_id": "c1"})
    t.ok(done and got == state("c1", 1, emailAddress=("c1@example.com", 1), name=("C One", 1)),
         "USER_CREATED: legacy has the user, email renamed to emailAddress, version and updatedAt dropped, "
         "_cutover.f holding each field's version and _cutover.v the user's", "caught up %s: %r" % (done, got))
    at = fx.r.hget(k["migrated"], "c1") or "0"
    t.ok(abs(time.time() * 1000 - int(at)) < 60000 and fx.r.sismember(k["seen"], "c1"),
         "the created user is in %s (a time in ms) and in %s" % (k["migrated"], k["seen"]), at)
    heard = []

    def listen():
        m = sub.get_message(timeout=0.05)
        if m and m["type"] == "message":
            heard.append(m["data"])
        return "c1" in heard
    t.ok(poll(listen, 5), "a subscriber of %s heard c1" % k["changed"], heard)
    sub.close()
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_order(t, fx):
    prefix, db = fx.fresh("order")
    # In the order they reach the stream: a duplicate, and the create last.
    late = [("UPDATED", 3, {"email": "v3@example.com"}),
            ("UPDATED", 2, {"name": "N2", "email": "v2@example.com"}),
            ("UPDATED", 2, {"name": "N2", "email": "v2@example.com"})]

    def events_of(user, create_first=False):
        out = [event(kind, user, v, f) for kind, v, f in late]
        c = created(user, "v1@example.com", "N1")
        return [c] + out if create_first else out + [c]
    all_sent = events_of("one") + events_of("many") + events_of("guard", create_first=True)
    fx.send(prefix, *events_of("one"))  # in one batch
    w = fx.syncback(prefix, db, retry={"attempts": 100})
    read, gauges = True, None
    for e in events_of("many") + events_of("guard", create_first=True):  # a batch each
        if e["user"] == "many" and e["type"] == "USER_CREATED":
            gauges = w.wait_metrics(lambda m: m.get("pending_events", 0) >= 1
                                    and m.get("oldest_unacked_ms", 0) > 0, 10)
        read = wait_read(fx.r, prefix, fx.send(prefix, e)[0]) and read
    t.ok(gauges is not None, "while updates wait for their create, the metrics file says so: pending_events "
         "and oldest_unacked_ms above 0", repr(w.metrics()))
    done = poll(lambda: caught_up(fx.r, prefix), 20)
    want = {u: state(u, 3, emailAddress=("v3@example.com", 3), name=("N2", 2)) for u in ("one", "many", "guard")}
    before = docs(db)
    t.ok(done and read and before == want,
         "v3 email, v2 name+email, v2 again, v1 create: email from v3, name from v2, whether in one batch (one), "
         "a batch each with the create last (many) or first (guard)", "caught up %s\n%r" % (done, before))
    t.eq(fx.r.hlen(keys(prefix)["attempts"]), 0, "the attempts of the updates that waited for their create "
         "are forgotten once applied")
    fx.send(prefix, *all_sent)
    done = poll(lambda: caught_up(fx.r, prefix), 20)
    t.ok(done and docs(db) == before and pending(fx.r, prefix) == 0,
         "every event replayed: all acked, legacy unchanged", repr(docs(db)))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_pending(t, fx):
    prefix, db = fx.fresh("pending")
    k = keys(prefix)
    w = fx.syncback(prefix, db, retry={"attempts": 3})
    [early] = fx.send(prefix, event("UPDATED", "p1", 2, {"name": "P2"}))
    counted = poll(lambda: fx.r.hget(k["attempts"], "p1"), 10)
    held = [p["message_id"] for p in fx.r.xpending_range(k["events"], GROUP, "-", "+", 10)]
    t.ok(counted and held == [early] and db.users.find_one({"_id": "p1"}) is None,
         "an update of a user legacy lacks: an attempt counted, XPENDING holds it (not acked), nothing written",
         "attempts %r, pending %r" % (counted, held))
    fx.send(prefix, created("p1", "p1@example.com", "P1"))
    done = poll(lambda: caught_up(fx.r, prefix), 15)
    t.ok(done and db.users.find_one({"_id": "p1"}) == state("p1", 2, emailAddress=("p1@example.com", 1),
                                                             name=("P2", 2))
         and not fx.r.hexists(k["attempts"], "p1"),
         "its create comes: both applied (the update's name wins), acked, attempts forgotten",
         repr(db.users.find_one({"_id": "p1"})))
    # P1 is not p1 (updated in the same batch): string ids are compared exactly.
    fx.send(prefix, event("UPDATED", "p2", 5, {"name": "never"}), event("UPDATED", "P1", 3, {"name": "never"}),
            event("UPDATED", "p1", 3, {"email": "p1@v3.example.com"}))
    dead = poll(lambda: len(dead_entries(fx.srv, prefix)) >= 2 and dead_entries(fx.srv, prefix), 20) or []
    got = sorted((d.get("user"), d.get("reason"), d.get("attempts"), d.get("type"), d.get("version")) for d in dead)
    t.ok(got == [("P1", "not-in-legacy", "3", "USER_UPDATED", "3"), ("p2", "not-in-legacy", "3", "USER_UPDATED", "5")]
         and all("no user %s" % d["user"] in d.get("error", "") for d in dead),
         "users whose create never comes (p2, and P1 though legacy has p1): dead-lettered after retry.attempts (3), "
         "reason not-in-legacy", dead)
    t.ok(poll(lambda: caught_up(fx.r, prefix), 5) and fx.r.hlen(k["attempts"]) == 0
         and docs(db) == {"p1": state("p1", 3, emailAddress=("p1@v3.example.com", 3), name=("P2", 2))},
         "their events acked, nothing written for them (p1's update applied), attempts forgotten", repr(docs(db)))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_tombstone(t, fx):
    prefix, db = fx.fresh("tomb")
    w = fx.syncback(prefix, db)
    fx.send(prefix, created("d1", "d1@example.com", "D1"))
    wait_read(fx.r, prefix, fx.send(prefix, event("UPDATED", "d1", 2, {"name": "D2"}))[0])
    fx.send(prefix, event("DELETED", "d1", 3), event("DELETED", "d2", 2))  # d2: legacy never heard of it
    poll(lambda: caught_up(fx.r, prefix), 10)
    want = {"d1": state("d1", 3, 3, emailAddress=("d1@example.com", 1), name=("D2", 2)),
            "d2": state("d2", 2, 2)}
    t.eq(docs(db), want, "deletes = tombstone: deleted true and _cutover.del the version; a user legacy lacks "
         "gets a tombstone of its own")
    k = keys(prefix)
    recorded = fx.r.hget(k["migrated"], "d1")
    fx.send(prefix, event("UPDATED", "d1", 2, {"name": "late"}), created("d1", "x@example.com", "again"),
            created("d2", "d2@example.com", "D2"))
    done = poll(lambda: caught_up(fx.r, prefix), 10)
    t.ok(done and docs(db) == want, "a late update and late creates after the delete: acked, nothing changes",
         repr(docs(db)))
    t.ok(recorded and fx.r.hget(k["migrated"], "d1") == recorded and not fx.r.hexists(k["migrated"], "d2"),
         "and the late creates are not recorded as migrated again (d1 keeps its time, d2 is not recorded)",
         "%r %r" % (fx.r.hget(k["migrated"], "d1"), fx.r.hget(k["migrated"], "d2")))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_delete(t, fx):
    prefix, db = fx.fresh("delete")
    k = keys(prefix)
    w = fx.syncback(prefix, db, {"deletes": "delete"})
    c = created("x1", "x1@example.com", "X1")
    wait_read(fx.r, prefix, fx.send(prefix, c, created("x2", "x2@example.com", "X2"))[1])
    fx.send(prefix, event("DELETED", "x1", 2))
    done = poll(lambda: caught_up(fx.r, prefix), 10)
    t.ok(done and set(docs(db)) == {"x2"} and fx.r.hget(k["deleted"], "x1") == "2",
         "deletes = delete: the document is removed, %s holds x1's version 2" % k["deleted"],
         "%r %r" % (docs(db), fx.r.hgetall(k["deleted"])))
    recorded = fx.r.hget(k["migrated"], "x1")
    fx.send(prefix, c, event("UPDATED", "x1", 1, {"name": "late"}))
    done = poll(lambda: caught_up(fx.r, prefix), 10)
    t.ok(done and set(docs(db)) == {"x2"} and recorded and fx.r.hget(k["migrated"], "x1") == recorded,
         "a replayed create and a late update: acked, x1 does not come back, nor is it recorded as migrated again",
         "%r %r" % (docs(db), fx.r.hget(k["migrated"], "x1")))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_malformed(t, fx):
    prefix, db = fx.fresh("bad")
    good = dict(event("UPDATED", "g1", 1, {"name": "x"}))
    bad = [(dict(good, type="USER_RENAMED"), "type is not USER_CREATED, USER_UPDATED or USER_DELETED"),
           ({k: v for k, v in good.items() if k != "version"}, "version is not a whole number"),
           (dict(good, version="0"), "version is not a whole number"),
           (dict(good, version="2x"), "version is not a whole number"),
           (dict(good, fields="{not json"), "fields is not JSON"),
           (dict(good, fields="[1, 2]"), "fields is not a JSON object"),
           (dict(good, fields='{"a.b": 1}'), "'a.b' has a '.'"),
           (dict(good, fields='{"$inc": 1}'), "'$inc' starts with '$'"),
           (dict(good, version="9007199254740992"), "version is not a whole number from 1 to 2^53 - 1"),
           (dict(good, fields='{"deleted": true}'), "field 'deleted' is sync-back's own"),
           (dict(good, user="a\x01b"), "user: has a control character"),
           ({k: v for k, v in good.items() if k != "user"}, "user: no user field")]
    # One batch: the good events around the bad ones.
    fx.send(prefix, created("g1", "g1@example.com", "G1"), *[e for e, _ in bad],
            event("UPDATED", "g1", 2, {"name": "G2"}), created("g2", "g2@example.com", "G2"))
    w = fx.syncback(prefix, db)
    done = poll(lambda: caught_up(fx.r, prefix) and fx.r.xlen(keys(prefix)["dead"]) >= len(bad), 10)
    dead = dead_entries(fx.srv, prefix)
    got = [(d.get("reason"), d.get("user"), d.get("attempts")) for d in dead]
    want = [("malformed", e.get("user", ""), "0") for e, _ in bad]
    t.ok(done and sorted(got) == sorted(want),
         "each malformed event (unknown type, no/zero/non-numeric/too big version, fields not JSON or an array, a "
         "field with '.' or '$' or sync-back's own, a user with a control character, no user) is dead-lettered, "
         "reason malformed",
         "%r\nwant %r" % (got, want))
    by_entry = {}
    for d in dead:
        by_entry.setdefault(d.get("user"), []).append(d.get("error", ""))
    missing = [why for e, why in bad if not any(why in err for err in by_entry.get(e.get("user", ""), []))]
    t.ok(not missing, "each with its error naming what is wrong", "no error saying %r in %r" % (missing, dead))
    t.eq(docs(db), {"g1": state("g1", 2, emailAddress=("g1@example.com", 1), name=("G2", 2)),
                    "g2": state("g2", 1, emailAddress=("g2@example.com", 1), name=("G2", 1))},
         "the good events of the same batch are applied")
    t.eq(pending(fx.r, prefix), 0, "every event of the batch is acked")
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_kill9(t, fx, users=1000):
    prefix, db = fx.fresh("kill9")
    names = ["k%04d" % i for i in range(users)]
    # Each user's three events, spread out so that they are in different batches.
    plan = sorted(((i + 400 * (v - 1), u, v) for i, u in enumerate(names) for v in (1, 2, 3)))
    entries = []
    for _, u, v in plan:
        deleted = int(u[1:]) % 10 == 0
        entries.append(created(u, u + "@v1.example.com", "name1") if v == 1
                       else event("UPDATED", u, 2, {"name": "name2"}) if v == 2
                       else event("DELETED", u, 3) if deleted
                       else event("UPDATED", u, 3, {"email": u + "@v3.example.com"}))
    fx.send(prefix, *entries)
    # After the restart, updates may come before the creates the killed
    # process held: they wait (attempts) until those are taken over.
    w = fx.syncback(prefix, db, retry={"attempts": 20})
    poll(lambda: entries_read(fx.r, prefix) >= len(entries) // 4, 30, 0.005)
    w.kill()
    at_kill = group(fx.r, prefix)
    t.diag("kill -9 with %s events read, %s pending" % (at_kill.get("entries-read"), at_kill.get("pending")))
    t.ok(0 < (at_kill.get("entries-read") or 0) < len(entries), "cutover-migrate syncback killed (-9) part way")
    w.start()
    done = poll(lambda: caught_up(fx.r, prefix), 40, 0.05)
    got = docs(db)

    def right(u):
        d = got.get(u) or {}
        if int(u[1:]) % 10 == 0:  # a tombstone: what an update older than it left is not said
            return d.get("deleted") is True and d.get(STATE, {}).get("del") == 3 and d[STATE].get("v") == 3
        return d == state(u, 3, name=("name2", 2), emailAddress=(u + "@v3.example.com", 3))
    wrong = [u for u in names if not right(u)]
    t.ok(done and not wrong and len(got) == users,
         "restarted: each of the %d users in legacy as its last event says (%d tombstones)" % (users, users // 10),
         "caught up %s; wrong %d: %r" % (done, len(wrong), [(u, got.get(u)) for u in wrong[:3]]))
    t.ok(pending(fx.r, prefix) == 0 and fx.r.xlen(keys(prefix)["dead"]) == 0
         and fx.r.hlen(keys(prefix)["attempts"]) == 0, "nothing pending, nothing dead, no attempts counted")
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_legacy_down(t, fx):
    """A double of its own, stopped and started again on its port (a new,
    empty one: the events sent meanwhile are creates); twice, the second
    time with a SIGTERM during the outage."""
    def double(port):
        p = Process([PYTHON, harness.MONGO_DOUBLE, "--port", str(port)], name="mongo-double-outage",
                    read_stdout=True, expect_rc=0)
        return p, harness._start_banner(p, "mongo_double.py")
    if fx.mongo.real:
        t.diag("legacy down: against a double of its own (a real server cannot be stopped here)")
    proc, port = double(0)
    uri = "mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=1000" % port
    client = pymongo.MongoClient(uri)
    db = client["outage"]
    prefix = harness.PREFIX + ":outage"
    k = keys(prefix)
    w = fx.syncback(prefix, db, mongo_uri=uri)
    fx.send(prefix, created("o0", "o0@example.com", "O0"))
    up = poll(lambda: caught_up(fx.r, prefix), 10) and db.users.find_one({"_id": "o0"}) is not None
    offset = w.stderr_size()
    t.ok(proc.stop() == 0 and up, "a first create applied; then legacy (the double) is stopped")
    fx.send(prefix, *[created("o%d" % i, "o%d@example.com" % i, "O%d" % i) for i in range(1, 6)])
    noticed = w.wait_stderr("no attempt counted", 20, offset)
    t.ok(noticed and pending(fx.r, prefix) > 0 and fx.r.hlen(k["attempts"]) == 0,
         "legacy down: sync-back says so and waits, its events pending, no attempt counted", w.log_tail(5))
    m = w.wait_metrics(lambda m: m.get("legacy_errors", 0) >= 1, 5)
    t.ok(m is not None and m.get("dead") == 0, "the metrics file counts the legacy errors", repr(w.metrics()))
    proc, _ = double(port)
    done = poll(lambda: caught_up(fx.r, prefix), 20)
    t.ok(done and sorted(docs(db)) == ["o%d" % i for i in range(1, 6)],
         "legacy back on the same port: the events sent meanwhile are applied", repr(docs(db)))
    t.ok(fx.r.hlen(k["attempts"]) == 0 and fx.r.xlen(k["dead"]) == 0 and pending(fx.r, prefix) == 0,
         "no attempts counted, nothing dead-lettered, nothing pending")
    offset = w.stderr_size()
    proc.stop()
    fx.send(prefix, *[created("o%d" % i, "o%d@example.com" % i, "O%d" % i) for i in range(6, 9)])
    noticed = w.wait_stderr("no attempt counted", 20, offset)
    rc = w.stop()
    t.ok(noticed and rc == 0 and "stopping during an outage" in w.stderr(since_start=True)
         and pending(fx.r, prefix) > 0,
         "legacy down again, then SIGTERM: exit 0, the events in hand left pending", w.log_tail(5))
    proc, _ = double(port)
    w.start()
    done = poll(lambda: caught_up(fx.r, prefix), 20)
    t.ok(done and sorted(docs(db)) == ["o6", "o7", "o8"] and fx.r.hlen(k["attempts"]) == 0
         and fx.r.xlen(k["dead"]) == 0,
         "legacy back, sync-back started again: it takes the pending events over and applies them, no attempt "
         "counted, nothing dead", repr(docs(db)))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())
    client.close()
    proc.stop()


def test_write_error(t, fx):
    prefix, db = fx.fresh("werr")
    junk = {"_id": "w1", "name": "W", STATE: "not a document"}
    db.users.insert_one(junk)
    fx.send(prefix, event("UPDATED", "w1", 2, {"name": "W2"}), created("w2", "w2@example.com", "W2"))
    w = fx.syncback(prefix, db, retry={"attempts": 2})
    dead = poll(lambda: dead_entries(fx.srv, prefix), 15) or []
    d = dead[0] if dead else {}
    t.ok(len(dead) == 1 and d.get("user") == "w1" and d.get("reason") == "attempts" and d.get("attempts") == "2"
         and "legacy refused the write" in d.get("error", ""),
         "a write legacy refuses for one user (its state field is not a document): dead-lettered after "
         "retry.attempts (2), reason attempts", dead)
    t.ok(poll(lambda: caught_up(fx.r, prefix), 5) and fx.r.hlen(keys(prefix)["attempts"]) == 0
         and docs(db) == {"w1": junk, "w2": state("w2", 1, emailAddress=("w2@example.com", 1), name=("W2", 1))},
         "the other user of the batch is applied, w1 left as it was, all acked, attempts forgotten", repr(docs(db)))
    m = w.wait_metrics(lambda m: m.get("attempts_exhausted") == 1 and m.get("write_errors", 0) >= 1, 5)
    t.ok(m is not None and m.get("dead") == 1 and m.get("legacy_errors") == 0,
         "the metrics: write_errors and attempts_exhausted counted, not as legacy errors", repr(w.metrics()))
    t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())


def test_redis_restart(t, fx, users=300):
    prefix, db = fx.fresh("rrestart")
    with harness.RedisServer() as srv:
        r = srv.client()
        names = ["r%03d" % i for i in range(users)]
        fx.send(prefix, *[created(u, u + "@example.com", "R") for u in names], r=r)
        fx.send(prefix, *[event("UPDATED", u, 2, {"name": "R2"}) for u in names], r=r)
        w = fx.syncback(prefix, db, redis_url=srv.url(), batch=20)
        poll(lambda: entries_read(r, prefix) >= users // 2, 20, 0.005)
        g = group(r, prefix)
        offset = w.stderr_size()
        srv.stop(save=True)
        noticed = w.wait_stderr("Redis at", 10, offset)
        t.ok(g.get("lag", 0) > 0 and noticed,
             "Redis stopped (SHUTDOWN SAVE) with %s events not read yet: sync-back notices" % g.get("lag"),
             w.log_tail(5))
        srv.start()
        fx.send(prefix, *[event("UPDATED", u, 3, {"email": u + "@v3.example.com"}) for u in names[::10]], r=r)
        done = poll(lambda: caught_up(r, prefix), 30, 0.05)
        want = {u: state(u, 3 if i % 10 == 0 else 2, name=("R2", 2),
                         emailAddress=(u + "@v3.example.com", 3) if i % 10 == 0 else (u + "@example.com", 1))
                for i, u in enumerate(names)}
        got = docs(db)
        t.ok(done and got == want and r.xlen(keys(prefix)["dead"]) == 0 and r.hlen(keys(prefix)["attempts"]) == 0,
             "Redis restarted on its port with its data: every event applied after, nothing lost, nothing dead",
             "caught up %s, %d users, wrong %r" % (done, len(got), [u for u in names if got.get(u) != want[u]][:5]))
        t.ok(w.stop() == 0, "SIGTERM: exit 0", w.log_tail())
        r.close()


def test_example_service(t, fx):
    from examples import App  # the example apps' runner
    prefix, ldb = fx.fresh("example")
    sdb = fx.mongo.database("example_service")
    svc = App("user_service.py", "--mongo", fx.mongo.uri, "--db", sdb.name, "--redis", fx.srv.url(),
              "--prefix", prefix)
    w = fx.syncback(prefix, ldb)
    r = svc.call("POST", "/api/users", {"email": "ada@example.com", "name": "Ada"})
    uid = (r.json() or {}).get("_id", "")
    want = state(uid, 1, emailAddress=("ada@example.com", 1), name=("Ada", 1))
    # The record in Redis follows the legacy write: wait for both.
    t.ok(r.status == 201 and poll(lambda: ldb.users.find_one({"_id": uid}) == want
                                  and fx.r.hexists(keys(prefix)["migrated"], uid), 10),
         "examples/user_service.py: a user created through its API reaches legacy, mapped, recorded as migrated",
         "%r\n%r" % (r, ldb.users.find_one({"_id": uid})))
    statuses = [svc.call("PATCH", "/api/users/" + uid, {"name": "Ada L"}).status,
                svc.call("POST", "/admin/users/%s/email" % uid, {"email": "ada@lovelace.org"}).status]
    want = state(uid, 3, emailAddress=("ada@lovelace.org", 3), name=("Ada L", 2))
    t.ok(statuses == [200, 200] and poll(lambda: ldb.users.find_one({"_id": uid}) == want, 10),
         "a PATCH of the name and the admin form's email change follow (versions 2 and 3)",
         "%r\n%r" % (statuses, ldb.users.find_one({"_id": uid})))
    r = svc.call("DELETE", "/api/users/" + uid)
    want = state(uid, 4, 4, emailAddress=("ada@lovelace.org", 3), name=("Ada L", 2))
    t.ok(r.status == 200 and poll(lambda: ldb.users.find_one({"_id": uid}) == want, 10),
         "a DELETE leaves a tombstone in legacy (version 4)", repr(ldb.users.find_one({"_id": uid})))
    t.ok(poll(lambda: caught_up(fx.r, prefix), 5) and fx.r.xlen(keys(prefix)["events"]) == 4,
         "the service's 4 events are acked and still in its stream")
    t.ok(w.stop() == 0 and svc.stop() == 0, "both exit 0 on SIGTERM", w.log_tail())


def test_metrics_and_sigterm(t, fx):
    prefix, db = fx.fresh("metrics")
    users = ["m1", "m2", "m3", "m4"]
    fx.send(prefix, *[created(u, u + "@example.com", u) for u in users])
    w = fx.syncback(prefix, db)
    poll(lambda: caught_up(fx.r, prefix), 10)
    fx.send(prefix, event("DELETED", "m1", 2), event("DELETED", "m2", 2), event("UPDATED", "m3", 2, {"name": "x"}),
            event("UPDATED", "m4", 0, {"name": "y"}), dict(event("UPDATED", "m4", 2), fields="[]"))
    want = dict(processed=9, applied=7, created=4, deleted=2, dead=2, malformed=2, not_in_legacy=0, failed=0,
                write_errors=0, attempts_exhausted=0)
    m = w.wait_metrics(lambda m: all(m.get(k) == v for k, v in want.items()), 10)
    t.ok(m is not None, "the metrics file (syncback.metrics_file): processed 9, applied 7 (one per user and "
         "batch), created 4, deleted 2, dead 2 = malformed 2", repr(w.metrics()))
    gauges = ("lag_events", "pending_events", "oldest_unacked_ms")
    m = w.wait_metrics(lambda m: all(m.get(g) == 0 for g in gauges), 10)
    t.ok(m is not None, "lag_events, pending_events and oldest_unacked_ms are there, 0 once caught up",
         repr(w.metrics()))
    rc = w.stop()
    t.ok(rc == 0 and "stopped: 9 events processed, 7 users' changes applied, 2 dead-lettered" in w.stderr(),
         "SIGTERM: exit 0, the log says how many events were processed", w.log_tail(3))
    return w


def test_config(t, fx, w):
    """--check-config on variants of w's file (w need not run)."""
    rc, out, err = run_to_end([MIGRATE, "syncback", "-c", w.conf, "--check-config"], 20, "cutover-migrate")
    t.ok(rc == 0 and "is OK" in out, "--check-config on a good syncback { }: exit 0", out + err)
    cases = [("a default in syncback.mapping", "default",
              dict(syncback=dict(SYNCBACK, mapping=dict(SYNCBACK["mapping"], default=['locale:"en"'])))),
             ('deletes = "bogus"', "deletes", dict(syncback=dict(SYNCBACK, deletes="bogus"))),
             ('write_concern = "x"', "write_concern", dict(syncback=dict(SYNCBACK, write_concern="x"))),
             ('state_field = "_id"', "state_field", dict(syncback=dict(SYNCBACK, state_field="_id"))),
             ("the state field in the top-level mapping.keep", "state_field",
              dict(syncback=dict(SYNCBACK, state_field=STATE),
                   mapping={"keep": ["_id", "name", STATE], "drop": [], "rename": [], "default": []}))]
    path = os.path.join(w.confdir, "bad.conf")
    for desc, option, overrides in cases:
        text = w.render(**overrides)
        with open(path, "w") as f:
            f.write(text)
        lines = text.splitlines()
        start = lines.index("syncback {")
        line = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(option + " ")) + 1
        rc, out, err = run_to_end([MIGRATE, "syncback", "-c", path, "--check-config"], 20, "cutover-migrate")
        said = "exit %s: %s" % (rc, err)
        t.ok(rc == 1 and "%s:%d:" % (path, line) in err and option in err,
             "--check-config with %s: exit 1, FILE:%d and the option named" % (desc, line), said)


def test_acks(t, fx):
    """Every prefix sent to on the test's Redis: nothing pending, nothing
    deleted."""
    got = {p: (pending(fx.r, p), fx.r.xlen(keys(p)["events"])) for p in fx.sent}
    t.eq(got, {p: (0, n) for p, n in fx.sent.items()},
         "after everything: XPENDING 0 for the group on every stream, and every event still in the service's "
         "stream (acked, not deleted)")


def body(t):
    with harness.RedisServer() as srv:
        mongo = Mongo()
        t.diag("legacy MongoDB: %s" % ("CUTOVER_TEST_MONGO_URI" if mongo.real else "tests/mongo_double.py"))
        fx = Fixture(srv, mongo)
        for test in (test_create, test_order, test_pending, test_tombstone, test_delete, test_malformed,
                     test_write_error, test_example_service, test_kill9, test_legacy_down, test_redis_restart):
            t0 = time.monotonic()
            test(t, fx)
            t.diag("%s: %.1f s" % (test.__name__, time.monotonic() - t0))
        test_config(t, fx, test_metrics_and_sigterm(t, fx))
        test_acks(t, fx)
        mongo.close()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
