#!/usr/bin/python3
"""
migrate_verify.py - `cutoverctl migration verify`, end to end: a real
redis-server, a MongoDB playing legacy (tests/mongo_double.py, or
CUTOVER_TEST_MONGO_URI), users migrated by the real `cutover-migrate run`,
then changed on one side or the other.

  - http sink: examples/user_service.py as the service (imports through
    its import endpoint, verify reads its GET /api/users/{id}): no drift
    after the migration (dates against the service's ISO strings); the
    ignore list; a field changed in the service and one in legacy, with
    both values; missing in the service (never imported, or deleted
    there), missing in legacy, deleted on both sides; --sample N,
    explicit ids, --json; Redis and prefix from the file unless given;
    bad configurations and usage; legacy, service and Redis unreachable
  - mongo sink: 1,200 users (more than one batch of 500) migrated into a
    collection of the double, `verify --all` before and after changing
    some of them there
"""
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from examples import App  # noqa: E402
from harness import Migrator, Mongo, RedisServer, free_port, migration_keys, poll, run_ctl, run_to_end  # noqa: E402
from migrate_worker import EPOCH, iso_ms, version_of, xadd_users  # noqa: E402

EXIT_UNREACHABLE, EXIT_INVALID, EXIT_DRIFT = 3, 4, 7


# --- helpers -----------------------------------------------------------------

def legacy_doc(user, i):
    return {"_id": user, "name": "Name %d" % i, "emailAddress": "%s@example.com" % user,
            "passwordHash": "$2b$secret%d" % i, "legacyFlags": [i], "updatedAt": version_of(i),
            "plan": {"tier": "gold" if i % 2 else "free", "seats": i % 7}}


def date_json(dt):
    """A date as verify prints a legacy one (libbson's relaxed extended JSON)."""
    return '{ "$date" : "%s" }' % iso_ms(dt)


def verify_section(url=None, ignore=None):
    lines = ["verify {"]
    if url is not None:
        lines.append("\turl = %s" % harness._conf_value(url))
    if ignore is not None:
        lines.append("\tignore = %s" % harness._conf_list(ignore))
    return "\n".join(lines + ["}"])


def write_conf(m, name, **overrides):
    """The Migrator m's configuration with overrides, in a file of its own."""
    path = os.path.join(m.confdir, name)
    with open(path, "w") as f:
        f.write(m.render(**overrides))
    return path


def verify(conf, *args, prefix, json_out=False, redis_url=None):
    """cutoverctl [--json] migration verify -c conf ARGS: (rc, stdout, stderr)."""
    return run_ctl("migration", "verify", "-c", conf, *args, prefix=prefix, json=json_out, redis_url=redis_url,
                   timeout=90)


def result(out):
    """Text output: (sorted drift lines, summary line or None, other lines)."""
    lines = out.splitlines()
    drift = sorted(x for x in lines if x.startswith("drift "))
    summary = [x for x in lines if x.startswith("verified ")]
    other = [x for x in lines if not x.startswith(("drift ", "verified "))]
    return drift, summary[0] if len(summary) == 1 else summary or None, other


def migrate(t, m, r, prefix, users, timeout=120):
    """Enqueues users, waits until the worker m has migrated them all,
    stops it."""
    xadd_users(r, prefix, users)
    done = poll(lambda: r.hlen(migration_keys(prefix)["migrated"]) >= len(users), timeout, 0.05)
    t.eq((bool(done), m.stop()), (True, 0), "cutover-migrate migrated the %d users and exits 0" % len(users))


def check(t, got, want, desc):
    """got: (rc, stdout, stderr) of a text run; want: (rc, drift lines,
    summary)."""
    rc, out, err = got
    drift, summary, other = result(out)
    return t.eq((rc, drift, summary, other), (want[0], sorted(want[1]), want[2], []), desc + (
        "" if rc == want[0] else " (stderr: %s)" % err.strip()))


# --- the http sink and the example service --------------------------------------

def test_http(t, srv, mongo):
    prefix = harness.PREFIX + ":http"
    keys = migration_keys(prefix)
    r = srv.client()
    ldb, sdb = mongo.database("legacy"), mongo.database("service")
    service = App("user_service.py", "--mongo", mongo.uri, "--db", sdb.name, "--redis", srv.url(),
                  "--prefix", prefix)
    api = "http://127.0.0.1:%d/api/users/{id}" % service.port
    odd = "q/\u00e9 b?&%"  # percent-encoded in both the import's and verify's URLs
    users = ["u%d" % i for i in range(1, 9)] + [odd]
    ldb.users.insert_many([legacy_doc(u, i) for i, u in enumerate(users, 1)])
    m = Migrator(mongo.uri, ldb.name, "http://127.0.0.1:%d/internal/import/users/{id}" % service.port,
                 prefix=prefix, extra=verify_section(api, ["version"]))
    migrate(t, m, r, prefix, users)
    conf = m.conf

    # --- no drift ------------------------------------------------------------
    check(t, verify(conf, prefix=prefix), (0, [], "verified 9 users: 0 with drift (0 fields), 0 missing"),
          "http: right after the migration, the default sample verifies all 9 users: no drift, exit 0")
    rc, out, err = verify(conf, prefix=prefix, json_out=True)
    t.eq((rc, json.loads(out) if rc == 0 else err),
         (0, {"drift": [], "complete": True, "verified": 9, "with_drift": 0, "fields": 0,
              "missing_in_service": 0, "missing_in_legacy": 0, "absent_both": 0}),
         "http: --json gives the same as one document")

    # --- the ignore list ---------------------------------------------------------
    bare = write_conf(m, "no-ignore.conf", extra=verify_section(api))
    check(t, verify(bare, prefix=prefix),
          (EXIT_DRIFT, ["drift %s version: extra in the service (1)" % u for u in users],
           "verified 9 users: 9 with drift (9 fields), 0 missing"),
          "http: without ignore, the service's own version field is extra in every user, exit 7")
    dates = write_conf(m, "ignore-dates.conf", extra=verify_section(api, ["updatedAt", "version"]))

    # --- changed fields: in the service, in legacy ----------------------------------
    patched = service.call("PATCH", "/api/users/u2", {"email": "new@example.com"})
    now = (patched.json() or {}).get("updatedAt")
    ldb.users.update_one({"_id": "u3"}, {"$set": {"name": "Renamed"}})
    changed = ['drift u2 email: legacy "u2@example.com" service "new@example.com"',
               'drift u2 updatedAt: legacy %s service "%s"' % (date_json(version_of(2)), now),
               'drift u3 name: legacy "Renamed" service "Name 3"']
    t.ok(patched.status == 200 and now, "the service's API changed u2's email", patched)
    check(t, verify(conf, "u2", "u3", prefix=prefix),
          (EXIT_DRIFT, changed, "verified 2 users: 2 with drift (3 fields), 0 missing"),
          "http: ids u2 u3: u2's email and updatedAt changed in the service, u3's name in legacy, both values "
          "shown, exit 7")
    check(t, verify(dates, "u2", "u3", prefix=prefix),
          (EXIT_DRIFT, changed[:1] + changed[2:], "verified 2 users: 2 with drift (2 fields), 0 missing"),
          "http: with updatedAt in ignore, u2's updatedAt is not reported")
    rc, out, err = verify(conf, "u3", prefix=prefix, json_out=True)
    t.eq((rc, json.loads(out) if rc == EXIT_DRIFT else err),
         (EXIT_DRIFT, {"drift": [{"user": "u3", "kind": "differs", "field": "name", "legacy": "Renamed",
                                  "service": "Name 3"}],
                       "complete": True, "verified": 1, "with_drift": 1, "fields": 1, "missing_in_service": 0,
                       "missing_in_legacy": 0, "absent_both": 0}),
         "http: --json reports u3's name with both values")
    check(t, verify(conf, "u3", "u1", "u3", prefix=prefix),
          (EXIT_DRIFT, changed[2:], "verified 2 users: 1 with drift (1 field), 0 missing"),
          "http: an id given twice is verified once")
    check(t, verify(conf, "u1", prefix=prefix), (0, [], "verified 1 user: 0 with drift (0 fields), 0 missing"),
          "http: id u1 alone: no drift, exit 0")
    ldb.users.update_one({"_id": odd}, {"$set": {"plan": {"tier": "free", "seats": 2}}})
    check(t, verify(conf, odd, prefix=prefix),
          (EXIT_DRIFT, ['drift %s plan: legacy { "tier" : "free", "seats" : 2 } '
                        'service { "tier" : "gold", "seats" : 2 }' % odd],
           "verified 1 user: 1 with drift (1 field), 0 missing"),
          "http: a user id with '/', a space, '?', '&', '%' and UTF-8 is looked up percent-encoded")
    ldb.users.update_one({"_id": odd}, {"$set": {"plan": {"tier": "gold", "seats": 2}}})

    # --- missing on one side, deleted on both ------------------------------------------
    ldb.users.insert_one(legacy_doc("u9", 9))          # in migrated, never imported
    r.hset(keys["migrated"], mapping={"u9": 1, "ghost": 1})  # ghost: nowhere at all
    deleted = [service.call("DELETE", "/api/users/" + u).status for u in ("u5", "u6")]
    ldb.users.delete_many({"_id": {"$in": ["u4", "u5"]}})
    t.eq(deleted, [200, 200], "the service's API deleted u5 and u6 (tombstones, 404 from then on)")
    everything = changed + ["drift u4: missing in legacy", "drift u6: missing in the service",
                            "drift u9: missing in the service"]
    summary = ("verified 11 users: 2 with drift (3 fields), 3 missing (2 in the service, 1 in legacy), "
               "2 absent from both")
    check(t, verify(conf, "--all", prefix=prefix), (EXIT_DRIFT, everything, summary),
          "http: --all: u4 missing in legacy, u6 (deleted there) and u9 missing in the service; u5 deleted on "
          "both sides and ghost absent from both are consistent")
    check(t, verify(conf, "--sample", "100", prefix=prefix), (EXIT_DRIFT, everything, summary),
          "http: --sample 100 over 11 migrated users verifies the 11")
    check(t, verify(conf, "u5", "ghost", "nobody", prefix=prefix),
          (0, [], "verified 3 users: 0 with drift (0 fields), 0 missing, 3 absent from both"),
          "http: deleted on both sides, or absent from both, is no drift: exit 0")

    rc, out, err = verify(conf, "--sample", "3", prefix=prefix, json_out=True)
    doc = json.loads(out) if rc in (0, EXIT_DRIFT) else {}
    seen = {e["user"] for e in doc.get("drift", [])}
    t.ok(doc.get("verified") == 3 and doc.get("complete") is True and seen <= {"u2", "u3", "u4", "u6", "u9"}
         and rc == (EXIT_DRIFT if seen else 0),
         "http: --sample 3 verifies 3 of the migrated users", (rc, out, err))
    picks = set()
    for _ in range(30):
        rc, out, err = verify(conf, "--sample", "1", prefix=prefix, json_out=True)
        doc = json.loads(out) if rc in (0, EXIT_DRIFT) else {}
        picks |= {e["user"] for e in doc.get("drift", [])}
    t.ok(len(picks) >= 2, "http: --sample picks at random: 30 samples of 1 drifted through different users", picks)

    # --- Redis URL and prefix: the file's unless given -----------------------------------
    argv = [harness.CTL, "migration", "verify", "-c", conf, "--all"]
    check(t, run_to_end(argv, 90, "migration verify (the file's Redis)"), (EXIT_DRIFT, everything, summary),
          "http: without --redis and --prefix, the file's Redis and prefix are used")
    check(t, run_to_end(argv[:1] + ["--prefix", prefix + ":other"] + argv[1:], 90, "migration verify"),
          (0, [], "verified 0 users: 0 with drift (0 fields), 0 missing"),
          "http: --prefix on the command line wins over the file's")
    dead_redis = "redis://127.0.0.1:%d/0" % free_port()
    rc, out, err = verify(conf, prefix=prefix, redis_url=dead_redis)
    t.ok(rc == EXIT_UNREACHABLE and dead_redis in err and out == "",
         "http: --redis wins over the file's too; unreachable: exit 3 naming the URL", (rc, out, err))
    rc, out, err = verify(conf, "u1", prefix=prefix, redis_url=dead_redis)
    t.eq(rc, 0, "http: explicit ids need no Redis")

    # --- bad configurations and usage --------------------------------------------------
    rc, out, err = verify("/nonexistent/migrate.conf", prefix=prefix)
    t.eq((rc, out, err), (EXIT_INVALID, "", "cutoverctl: /nonexistent/migrate.conf: cannot open: "
                                            "No such file or directory\n"),
         "a missing configuration file: exit 4 and the reason")
    text = m.render(extra=verify_section("http://127.0.0.1:%d/api/users" % service.port, ["version"]))
    bad = write_conf(m, "bad-url.conf", extra=verify_section("http://127.0.0.1:%d/api/users" % service.port,
                                                             ["version"]))
    line = text.splitlines().index("\turl = \"http://127.0.0.1:%d/api/users\"" % service.port) + 1
    rc, out, err = verify(bad, prefix=prefix)
    t.eq((rc, err), (EXIT_INVALID, "cutoverctl: %s:%d: verify: url: 'http://127.0.0.1:%d/api/users' has no {id} "
                                   "in its path: every user would go to the same URL\n" % (bad, line, service.port)),
         "verify.url without {id}: exit 4 with FILE:LINE: reason")
    none = write_conf(m, "no-verify.conf", extra="")
    rc, out, err = verify(none, prefix=prefix)
    t.eq((rc, err), (EXIT_INVALID, "cutoverctl: %s: verify: url is required with sink type http: the service's "
                                   "read API, such as http://127.0.0.1:3001/api/users/{id}\n" % none),
         "an http sink without verify.url: exit 4 saying what is missing")
    usage = [verify(conf, *args, prefix=prefix)[0] for args in
             (("--sample", "3", "u1"), ("--all", "u1"), ("--all", "--sample", "2"), ("--bogus",))]
    t.eq(usage, [1, 1, 1, 1], "verify: --sample, --all and ids exclude each other; unknown options: exit 1")
    t.eq([verify(conf, "--sample", n, prefix=prefix)[0] for n in ("0", "x", "100001")], [4, 4, 4],
         "verify: --sample takes 1..100000, else exit 4")

    # --- unreachable legacy and service ----------------------------------------------------
    dead_mongo = "mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=300" % free_port()
    rc, out, err = verify(write_conf(m, "dead-legacy.conf", mongo_uri=dead_mongo), "u1", prefix=prefix)
    t.ok(rc == EXIT_UNREACHABLE and err.startswith("cutoverctl: legacy MongoDB: find in %s.users failed: "
                                                   % ldb.name),
         "legacy unreachable: exit 3, naming legacy", (rc, err))
    t.eq(service.stop(timeout=5), 0, "the example service exits 0 on SIGTERM")
    rc, out, err = verify(conf, "u1", prefix=prefix)
    t.eq((rc, out, err), (EXIT_UNREACHABLE, "", "cutoverctl: the service: GET to 127.0.0.1:%d: cannot connect\n"
                          % service.port),
         "the service unreachable: exit 3, naming the service, no summary")
    r.close()


# --- the mongo sink: a collection of the double ------------------------------------------

def test_mongo(t, srv, mongo):
    prefix = harness.PREFIX + ":mongo"
    r = srv.client()
    ldb, sdb = mongo.database("legacy_m"), mongo.database("service_m")
    users = ["m%04d" % i for i in range(1200)]
    ldb.users.insert_many([legacy_doc(u, i) for i, u in enumerate(users)])
    m = Migrator(mongo.uri, ldb.name, prefix=prefix, batch=500,
                 sink={"type": "mongo", "uri": mongo.uri, "database": sdb.name})
    migrate(t, m, r, prefix, users)
    t.eq(sdb.users.count_documents({}), 1200, "mongo: the service's collection holds the 1,200 users")

    t0 = time.monotonic()
    check(t, verify(m.conf, "--all", prefix=prefix),
          (0, [], "verified 1200 users: 0 with drift (0 fields), 0 missing"),
          "mongo: --all walks the 1,200 migrated users (3 batches): no drift, exit 0")
    t.diag("verify --all of 1,200 users against the double: %.2f s" % (time.monotonic() - t0))

    sdb.users.update_one({"_id": "m0007"}, {"$set": {"plan": {"tier": "platinum", "seats": 1}}})
    sdb.users.update_one({"_id": "m0100"}, {"$set": {"nickname": "Bob"}})
    sdb.users.update_one({"_id": "m0500"}, {"$unset": {"name": ""}})
    sdb.users.update_one({"_id": "m0800"}, {"$set": {"email": "x@example.org", "locale": "de"}})
    sdb.users.update_one({"_id": "m1000"}, {"$set": {"deleted": True}})
    sdb.users.update_one({"_id": "m1001"}, {"$set": {"updatedAt": EPOCH}})
    check(t, verify(m.conf, "--all", prefix=prefix),
          (EXIT_DRIFT,
           ['drift m0007 plan: legacy { "tier" : "gold", "seats" : 0 } service { "tier" : "platinum", "seats" : 1 }',
            'drift m0100 nickname: extra in the service ("Bob")',
            'drift m0500 name: missing in the service (legacy "Name 500")',
            'drift m0800 email: legacy "m0800@example.com" service "x@example.org"',
            'drift m0800 locale: legacy "en" service "de"',
            "drift m1000: missing in the service",
            'drift m1001 updatedAt: legacy %s service { "$date" : "2024-01-01T00:00:00Z" }'
            % date_json(version_of(1001))],
           "verified 1200 users: 5 with drift (6 fields), 1 missing (1 in the service, 0 in legacy)"),
          "mongo: --all finds the fields changed in the service's collection, and the tombstone")
    ignoring = write_conf(m, "ignore.conf", extra=verify_section(ignore=["updatedAt", "nickname", "locale"]))
    check(t, verify(ignoring, "m0100", "m0800", "m1001", prefix=prefix),
          (EXIT_DRIFT, ['drift m0800 email: legacy "m0800@example.com" service "x@example.org"'],
           "verified 3 users: 1 with drift (1 field), 0 missing"),
          "mongo: ignore leaves out updatedAt, nickname and locale")
    bad = write_conf(m, "url.conf", extra=verify_section(url="http://127.0.0.1:1/api/users/{id}"))
    rc, out, err = verify(bad, prefix=prefix)
    t.ok(rc == EXIT_INVALID and "verify: url: is not used with sink type mongo" in err,
         "mongo: verify.url with a mongo sink is refused, exit 4", err)
    dead = write_conf(m, "dead-service.conf",
                      sink={"type": "mongo", "database": sdb.name,
                            "uri": "mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=300" % free_port()})
    rc, out, err = verify(dead, "m0001", prefix=prefix)
    t.ok(rc == EXIT_UNREACHABLE and err.startswith("cutoverctl: the service: find in %s.users failed: " % sdb.name),
         "mongo: the service's MongoDB unreachable: exit 3, naming the service", (rc, err))
    r.close()


def body(t):
    mongo = Mongo()
    with RedisServer() as srv:
        test_http(t, srv, mongo)
        test_mongo(t, srv, mongo)
    mongo.close()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
