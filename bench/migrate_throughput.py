#!/usr/bin/python3
"""
bench/migrate_throughput.py - users per second through `cutover-migrate
run`, by batch size: legacy users in the Mongo double (or the MongoDB of
CUTOVER_TEST_MONGO_URI), the import service of the tests as the sink, a
real redis-server. Then events per second through `cutover-migrate
syncback`: a USER_CREATED and a USER_UPDATED per user on the events
stream, applied to a legacy collection of the same double. Not a test:
it prints figures and asserts nothing.

    CUTOVER_BUILDDIR=build/bench bench/migrate_throughput.py [USERS]

Both ends are Python processes here, so the figures are a floor for the
worker, not its ceiling: the worker's own CPU per user is printed too.
"""
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import harness  # noqa: E402
from harness import ImportService, Migrator, Mongo, migration_keys, poll  # noqa: E402


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_done(r, stream):
    """Whether the syncback group has read and acked every event."""
    for g in r.xinfo_groups(stream):
        if g["name"] == "syncback":
            return g.get("lag") == 0 and g["pending"] == 0
    return False


def syncback_rates(t, r, mongo, users):
    """Events per second through cutover-migrate syncback, by batch size."""
    stamp = str(int(time.time() * 1000))
    for batch in (10, 100, 1000):
        prefix = harness.PREFIX + ":s%d" % batch
        db = mongo.database("syncback%d" % batch)
        stream = prefix + ":service:events"
        pipe = r.pipeline(transaction=False)
        for u in users:
            whole = {"_id": u, "email": u + "@example.com", "name": "User " + u}
            pipe.xadd(stream, {"type": "USER_CREATED", "user": u, "version": "1", "fields": json.dumps(whole),
                               "at": stamp})
            pipe.xadd(stream, {"type": "USER_UPDATED", "user": u, "version": "2",
                               "fields": json.dumps({"name": "Renamed " + u}), "at": stamp})
        pipe.execute()
        start = time.monotonic()
        w = Migrator(mongo.uri, db.name, "http://127.0.0.1:9/{id}", command="syncback", prefix=prefix, batch=batch,
                     syncback={"mapping": {"rename": ["email:emailAddress"]}})
        cpu0 = cpu_seconds(w.proc.pid)
        done = poll(lambda: group_done(r, stream), 300, 0.02)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(w.proc.pid) - cpu0
        w.stop()
        events = 2 * len(users)
        t.ok(done, "syncback batch %4d: %d events in %.2f s = %.0f events/s; CPU %.1f us/event"
             % (batch, events, elapsed, events / elapsed, cpu * 1e6 / events))


def body(t):
    users_n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with harness.RedisServer() as srv:
        r = srv.client()
        mongo, svc = Mongo(), ImportService()
        db = mongo.database("bench")
        users = ["b%06d" % i for i in range(users_n)]
        for k in range(0, users_n, 1000):
            db.users.insert_many([{"_id": u, "name": "User " + u, "emailAddress": u + "@example.com"}
                                  for u in users[k:k + 1000]])
        for batch in (10, 100, 1000):
            svc.reset()
            prefix = harness.PREFIX + ":b%d" % batch
            pipe = r.pipeline(transaction=False)
            for u in users:
                pipe.xadd(migration_keys(prefix)["migrate"], {"user": u, "reason": "bench", "at": "0"})
            pipe.execute()
            start = time.monotonic()
            w = Migrator(mongo.uri, db.name, svc.url(), prefix=prefix, batch=batch, version_field=None)
            cpu0 = cpu_seconds(w.proc.pid)
            done = poll(lambda: r.hlen(migration_keys(prefix)["migrated"]) >= users_n, 300, 0.02)
            elapsed = time.monotonic() - start
            cpu = cpu_seconds(w.proc.pid) - cpu0
            w.stop()
            t.ok(done, "batch %4d: %d users in %.2f s = %.0f users/s; worker CPU %.1f us/user"
                 % (batch, users_n, elapsed, users_n / elapsed, cpu * 1e6 / users_n))
        svc.stop()
        syncback_rates(t, r, mongo, users)


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
