#!/usr/bin/python3
"""
story.py - the README's main job end to end, with every process real
(world.py, shared with scripts/story.py): redis-server, a MongoDB (the
double, or CUTOVER_TEST_MONGO_URI), examples/legacy_app.py,
examples/user_service.py, cutover-proxy, `cutover-migrate run` and
`cutover-migrate syncback`.

  1. both flags at 0%: every request goes to legacy
  2. reads at 10%: the users the flag picks are migrated on first sight
     (their first read goes to legacy, reason not-migrated) and then read
     from the service; the others never reach the service's API (the
     proxy's header and access log, the service's own request log)
  3. writes at 10% (same salt: the same users as reads): an email change
     made with the admin form through the service reaches the order's
     populated email in legacy (the delay is printed, not asserted)
  4. create = legacy-first: the user is in legacy at once, in the service
     shortly after
  5. create = service (SIGHUP): the user appears in legacy through
     sync-back, recorded as migrated
  6. kill (--wait-synced): every request goes to legacy at once, and
     legacy has every change made while the service was in charge
  7. `cutoverctl migration verify --all` finds no drift
  8. unkilled, reads at 100% and writes at 50%: restarting the migrate
     worker and the sync-back worker (SIGKILL), the proxy (SIGTERM) and
     Redis (SHUTDOWN SAVE) in the middle of traffic loses nothing: after
     a second kill, legacy has every write and create acknowledged to a
     client, the service every write it answered and every legacy-routed
     one; verify finds no drift. A write and a create sent while Redis
     is down reach the service once it is back: the proxy owes them, and
     a draining proxy sends what it owes before it exits.
"""
import json
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
import world  # noqa: E402
from harness import poll  # noqa: E402
from world import JSON, READ_FLAG, WRITE_FLAG  # noqa: E402

USERS = 200


def uid(n):
    return "u%d" % n


def read(w, user):
    return w.proxy.get("/api/users/" + user)


def access(w, user):
    """The proxy's access log entries of user."""
    return [e for e in w.proxy.access_entries() if e.get("user") == user]


def step_all_legacy(t, w):
    users = [uid(n) for n in range(1, 31)]
    got = [(read(w, u), w.proxy.get("/api/orders/o" + u[1:])) for u in users]
    t.ok(all(r.status == 200 and r.route == "legacy" and o.status == 200 and o.route == "legacy" for r, o in got),
         "1. both flags at 0%: 30 users' reads and their orders all answered by legacy (X-Cutover-Route)",
         [(r, o) for r, o in got if r.route != "legacy" or o.route != "legacy"][:3])
    reasons = {e.get("reason") for u in users for e in access(w, u)}
    t.ok(reasons == {"bucket"} and not any(w.service_requests(u) for u in users),
         "1. the access log says reason bucket for each; the service's log has no request for them",
         repr(reasons))


def step_reads_10(t, w):
    """Returns the users the read flag picked at 10%."""
    fresh = [uid(n) for n in range(31, USERS + 1)]
    rc, out, _ = w.flag("set", READ_FLAG, "--percent", "10%")
    on = w.decisions(READ_FLAG, fresh)
    chosen = [u for u in fresh if on[u]]
    others = [u for u in fresh if not on[u]]
    t.ok(rc == 0 and 5 <= len(chosen) <= 40, "2. reads at 10%%: the flag picks %d of %d fresh users"
         % (len(chosen), len(fresh)), out)
    first = {u: read(w, u) for u in fresh}
    poll(lambda: all(access(w, u) for u in fresh), 5)  # the access log is written after the answer
    entries = {u: access(w, u) for u in chosen}
    t.ok(all(first[u].route == "legacy" and [e.get("reason") for e in entries[u]] == ["not-migrated"]
             for u in chosen),
         "2. a chosen user's first read goes to legacy, reason not-migrated (never seen, so not migrated)",
         {u: (first[u].route, [e.get("reason") for e in entries[u]]) for u in chosen})
    t.ok(poll(lambda: all(w.migrated(u) for u in chosen), 15),
         "2. the worker migrates each of them on first sight (in %s:migrated)" % w.prefix,
         [u for u in chosen if not w.migrated(u)])
    served = poll(lambda: all(read(w, u).route == "service" for u in chosen), 10)
    docs = {d["_id"]: d for d in w.sdb.users.find({"_id": {"$in": chosen}})}
    t.ok(served and all(docs.get(u, {}).get("email") == "user%s@example.com" % u[1:] for u in chosen),
         "2. then their reads are answered by the service, from its own database (their legacy data)",
         {u: docs.get(u) for u in chosen[:3]})
    t.ok(all(w.service_requests(u) and set(w.service_requests(u)) == {"GET"} for u in chosen),
         "2. the service's own log has the chosen users' GETs",
         {u: w.service_requests(u) for u in chosen[:5]})
    again = [read(w, u) for u in others]
    touched = [u for u in others if w.service_requests(u)]
    decided = {e.get("decision") for u in others for e in access(w, u)}
    t.ok(all(r.route == "legacy" for r in again) and not touched and decided == {"legacy"},
         "2. the %d others, read twice, never reach the service: header and access log say legacy, the "
         "service's log has no request for them" % len(others), (touched[:5], decided))
    return chosen


def step_email(t, w, chosen):
    rc, out, _ = w.flag("set", WRITE_FLAG, "--percent", "10%")
    t.eq((rc, w.decisions(WRITE_FLAG, chosen)), (0, {u: True for u in chosen}),
         "3. writes at 10% (flags salted alike): exactly the users reading from the service write there")
    user = chosen[0]
    e = w.email_change(user, "o" + user[1:], timeout=20)
    t.ok((e["status"], e["route"]) == (200, "service") and e["delay"] is not None,
         "3. %s's email changed with the admin form through the proxy (the service) shows in order o%s, read "
         "through legacy, %s" % (user, user[1:], "after %d ms (goal: within 1 s)" % (e["delay"] * 1000)
                                 if e["delay"] is not None else "never"), e)


def create(w):
    email = "created-%d@example.com" % time.monotonic_ns()
    r = w.proxy.request("POST", "/api/users", JSON, json.dumps({"email": email, "name": "Created"}).encode())
    doc = r.json() if r.status == 201 else None
    return r, (doc or {}).get("_id")


def step_creates(t, w):
    r, new = create(w)
    in_legacy = w.ldb.users.find_one({"_id": new}) if new else None
    t.ok(r.route == "legacy" and in_legacy is not None and in_legacy["name"] == "Created",
         "4. create = legacy-first: POST /api/users goes to legacy (201); the user is in legacy at once", r)
    t.ok(poll(lambda: w.sdb.users.find_one({"_id": new}), 10),
         "4. and in the service shortly after (the proxy enqueued it, the worker migrated it)")
    t.ok(w.proxy.reload(routes=world.routes("service")), "5. the proxy reloads with create = service",
         w.proxy.log_tail(5))
    r, new = create(w)
    t.ok(r.route == "service" and new and w.sdb.users.find_one({"_id": new}),
         "5. create = service: POST /api/users goes to the service (201), which stores the user", r)
    t.ok(poll(lambda: w.ldb.users.find_one({"_id": new}), 10),
         "5. the service-created user %s appears in legacy through sync-back" % new)
    t.ok(poll(lambda: w.migrated(new), 5), "5. and is recorded as migrated (its reads may go to the service)")
    t.ok(w.proxy.reload(routes=world.routes()), "5. back to create = legacy-first")


def service_changes(t, w, users):
    """Reads and then writes at 100%: a name change for each of users but
    the last, an email change for the first, a delete of the last, all
    through the service. Returns {user: the fields legacy must then have,
    or None for deleted}."""
    results = [w.flag("set", flag, "--percent", "100%") for flag in (READ_FLAG, WRITE_FLAG)]
    t.ok(all(rc == 0 and "warning" not in out for rc, out, _ in results),
         "6. reads, then writes at 100%: no cutoverctl warning (writes never lead reads)", results)
    want, answers = {}, []
    for n, u in enumerate(users[:-1]):
        r = w.proxy.request("PATCH", "/api/users/" + u, JSON, json.dumps({"name": "service %d" % n}).encode())
        answers.append(r)
        want[u] = {"name": "service %d" % n}
    e = w.email_change(users[0], "o" + users[0][1:], timeout=0)
    want[users[0]]["email"] = e["email"]
    r = w.proxy.request("DELETE", "/api/users/" + users[-1])
    answers.append(r)
    want[users[-1]] = None
    t.ok(all(a.status == 200 and a.route == "service" for a in answers) and e["route"] == "service",
         "6. %d renames, an email change and a delete, all answered by the service" % (len(users) - 1), answers)
    return want


def legacy_lacks(w, want):
    """What legacy lacks of want (see service_changes)."""
    bad = []
    for u, fields in want.items():
        doc = w.ldb.users.find_one({"_id": u})
        if fields is None and doc is not None:
            bad.append("%s is still in legacy" % u)
        elif fields is not None and any((doc or {}).get(k) != v for k, v in fields.items()):
            bad.append("%s is %r, not %r" % (u, doc, fields))
    return bad


def kill_both(t, w, step):
    """flag kill --wait-synced on the write flag, then the read flag; the
    proxy has both kills when it returns. True if both exited 0."""
    results = [w.flag(*w.kill_args(flag)) for flag in (WRITE_FLAG, READ_FLAG)]
    return t.ok(all(rc == 0 for rc, _, _ in results),
                "%s. cutoverctl flag kill --wait-synced on both: exit 0 (%s)"
                % (step, ", ".join("%.2f s" % took for _, _, took in results)), [out for _, out, _ in results])


def synced(t, w, step, lacks, what):
    """Checks, right after flag kill --wait-synced returned, that legacy
    has what (lacks() lists what it lacks)."""
    bad = lacks()  # no polling: --wait-synced promised it
    return t.ok(not bad, "%s. when --wait-synced returns, legacy has %s" % (step, what), bad[:10])


def step_kill(t, w, chosen):
    want = service_changes(t, w, chosen[1:6])
    kill_both(t, w, "6")
    synced(t, w, "6", lambda: legacy_lacks(w, want),
           "every change made while the service was in charge (renames, an email change, a delete)")
    probe = chosen[6] if len(chosen) > 6 else chosen[0]
    answers = [read(w, probe),
               w.proxy.request("PATCH", "/api/users/" + probe, JSON, b'{"name": "after the kill"}'),
               w.proxy.request("POST", "/admin/users/%s/email" % probe, JSON, b'{"email": "killed@example.com"}'),
               create(w)[0]]
    t.ok(all(a.route == "legacy" and a.status in (200, 201) for a in answers),
         "6. at once every request goes to legacy: a read, a write and the email form of a migrated user, a create",
         answers)


def drift(report):
    """The users with drift in a verify report, or None."""
    try:
        return {d["user"] for d in report["drift"]}
    except (TypeError, KeyError):
        return None


def step_verify(t, w):
    rc, report, out = w.verify()
    t.ok(rc == 0 and drift(report) == set(), "7. cutoverctl migration verify -c migrate.conf --all: no drift (exit 0)",
         out)


def step_restarts(t, w, chosen):
    """Unkilled, reads at 100% and writes at 50%: traffic while each
    process restarts in turn, then a second kill and the checks."""
    results = [w.flag(*args) for args in (("unkill", READ_FLAG), ("set", WRITE_FLAG, "--percent", "50%"),
                                          ("unkill", WRITE_FLAG))]
    t.ok(all(rc == 0 and "warning" not in out for rc, out, _ in results),
         "8. unkilled: reads at 100%, writes at 50%", results)
    users = [uid(n) for n in range(1, USERS + 1)]
    writers = [u for u in users[:100] if u not in chosen]
    # The probe of the known gap: a migrated user whose writes go to legacy,
    # written (and a user created) while Redis is down.
    on = w.decisions(WRITE_FLAG, users[100:])
    gap_user = next(u for u in users[100:] if u not in chosen and not on[u] and w.migrated(u))
    gap = {}

    def while_redis_down():
        r = w.proxy.request("PATCH", "/api/users/" + gap_user, JSON, b'{"name": "written while Redis was down"}')
        gap["write"] = (r.status, r.route)
        r, gap["created"] = create(w)
        gap["create"] = (r.status, r.route)
    traffic = world.Traffic(w.proxy, users, ["o%d" % n for n in range(1, USERS + 1)], writers, rate=60,
                            threads=3).start()
    time.sleep(1.5)
    took = []
    for name in ("migrate", "syncback", "proxy", "redis"):
        sig = signal.SIGKILL if name in ("migrate", "syncback") else signal.SIGTERM
        t0, t1 = w.restart(name, sig, while_redis_down if name == "redis" else None)
        took.append("%s (%.2f s)" % (name, t1 - t0))
        time.sleep(1.5)
    traffic.stop()
    s = traffic.summary()
    t.ok(s["writes"] > 10 and s["creates"] > 0 and not any(th.is_alive() for th in traffic.threads),
         "8. traffic through restarts of %s: %d requests, %d writes and %d creates acknowledged, %d retries"
         % (", ".join(took), s["sent"], s["writes"], s["creates"], s["retries"]), s)
    t.eq((gap.get("write"), gap.get("create")), ((200, "legacy"), (201, "legacy")),
         "8. while Redis is down the proxy still serves %s's write (legacy: write flag off) and a create" % gap_user)

    kill_both(t, w, "8")
    synced(t, w, "8", lambda: traffic.missing(w.ldb),
           "every write (%d users' fields) and create (%d) acknowledged to the traffic"
           % (len(traffic.acked), len(traffic.created)))
    poll(w.drained, 20, 0.1)
    bad = traffic.missing(w.sdb, lambda route, t0, t1: route == "service")
    t.ok(not bad, "8. the service has every write it answered itself", bad[:10])

    legacy_routed = lambda route, t0, t1: route == "legacy"  # noqa: E731
    bad = poll(lambda: not traffic.missing(w.sdb, legacy_routed), 20) or traffic.missing(w.sdb, legacy_routed)
    t.ok(bad is True, "8. the service follows every legacy-routed write and legacy-first create, those made "
         "while Redis was down too (refresh and created migrations, owed by the proxy until it is back, and "
         "sent before a draining proxy exits)", bad if bad is not True else None)
    caught_up = poll(lambda: (w.sdb.users.find_one({"_id": gap_user}) or {}).get("name") == "written while Redis "
                     "was down" and w.sdb.users.find_one({"_id": gap.get("created")}), 20)
    t.ok(caught_up, "8. in particular the write and the create made through legacy while Redis was down")
    rc, report, out = w.verify()
    t.ok(rc == 0 and drift(report) == set(), "8. verify --all after the restarts: no drift", out)


def body(t):
    mongo = harness.Mongo()
    w = world.World(harness.PREFIX, mongo, mongo.database("legacy"), mongo.database("service"),
                    log=lambda what, text: t.diag(text))
    r = w.legacy.call("POST", "/admin/seed", {"users": USERS, "orders": USERS}, timeout=120)
    t.eq(r.status, 200, "legacy seeded with %d users and %d orders" % (USERS, USERS))
    steps = []

    def timed(name, fn, *args):
        t0 = time.monotonic()
        out = fn(*args)
        steps.append("%s %.1f s" % (name, time.monotonic() - t0))
        return out
    timed("1", step_all_legacy, t, w)
    chosen = timed("2", step_reads_10, t, w)
    timed("3", step_email, t, w, chosen)
    timed("4-5", step_creates, t, w)
    timed("6", step_kill, t, w, chosen)
    timed("7", step_verify, t, w)
    timed("8", step_restarts, t, w, chosen)
    t.diag("steps: " + ", ".join(steps))
    w.close()
    mongo.close()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy", "cutover-migrate"))
