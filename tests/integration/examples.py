#!/usr/bin/python3
"""
examples.py - TAP test of the example apps: examples/legacy_app.py (the
monolith) and examples/user_service.py (the extracted users service).

Both run as real processes (--port 0) against a MongoDB (the double,
tests/mongo_double.py, or the server of CUTOVER_TEST_MONGO_URI: harness.Mongo,
a database of their own each) and the service against a private
redis-server. What they store is checked with pymongo and the service's
events with the redis client, independently of the apps' own answers.

  - legacy: seeding, CRUD, updatedAt strictly increasing, HEAD,
    keep-alive, chunked bodies; the order's populated user follows an
    email change made with the admin form
  - service: CRUD emitting USER_CREATED/UPDATED/DELETED with versions
    1, 2, ...; the import endpoint's version guard (newer imports, equal or
    older gets 409 and changes nothing, a tombstone keeps its guard) and
    that imports emit no event
  - both: 404, 405 and 400 answers, 503 when Redis is down, exit 0 on
    SIGTERM

Needs no cutover binary. /usr/bin/python3 with python3-pymongo and
python3-redis.
"""
import datetime
import http.client
import json
import os
import re
import signal
import sys
import time
import traceback
import urllib.parse

import harness
from harness import PREFIX, PYTHON, SRCDIR, TAP, Mongo, Process, RawConn, RedisServer, http_request

EXAMPLES = os.path.join(SRCDIR, "examples")
STREAM = PREFIX + ":service:events"


class App(Process):
    """An example app on a free port; stop() wants exit 0."""

    def __init__(self, script, *args):
        self.port = None
        super().__init__([PYTHON, os.path.join(EXAMPLES, script), "--port", "0"] + list(args),
                         name=script[:-3], read_stdout=True, expect_rc=0)

    def start(self):
        super().start()
        lines = [self.wait_line(lambda line: True, 20) for _ in range(2)]
        if not lines[0] or not lines[0].startswith("port ") or lines[1] != "ready":
            raise RuntimeError("%s did not start (%r):\n%s" % (self.name, lines, self.stderr()))
        self.port = int(lines[0].split()[1])

    def call(self, method, path, body=None, headers=None, conn=None):
        """One request; body: a dict/list (sent as JSON) or bytes/str as is."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = dict({"Content-Type": "application/json"} if body is not None else {}, **(headers or {}))
        return http_request("127.0.0.1", self.port, method, path, headers, body, conn, timeout=10)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def json_error(r, status, app):
    """r answered status with a JSON {"error": ...}, Content-Length and X-App."""
    doc = r.json()
    return (r.status == status and isinstance(doc, dict) and isinstance(doc.get("error"), str)
            and r.header("X-App") == app and r.header("Content-Length") == str(len(r.body)))


def body(t, legacy, service, ldb, sdb, redis_srv):
    rc = redis_srv.client()

    def events():
        """[(type, user, version, fields, at)] of the whole stream."""
        return [(f["type"], f["user"], int(f["version"]), json.loads(f["fields"]), int(f["at"]))
                for _, f in rc.xrange(STREAM)]

    # --- legacy_app.py -------------------------------------------------------

    r = legacy.call("GET", "/health")
    t.ok(r.status == 200 and r.header("X-App") == "legacy", "legacy /health answers 200 with X-App: legacy", r)
    r = service.call("GET", "/health")
    t.ok(r.status == 200 and r.header("X-App") == "service", "service /health answers 200 with X-App: service", r)

    seeded = {u["_id"]: u for u in ldb.users.find()}
    t.ok(sorted(seeded) == ["u1", "u2", "u3"] and seeded["u2"]["email"] == "user2@example.com"
         and isinstance(seeded["u2"]["updatedAt"], datetime.datetime),
         "legacy --seed 3 stored users u1..u3 with a date updatedAt", seeded)
    orders = {o["_id"]: o["user"] for o in ldb.orders.find()}
    t.eq(orders, {"o1": "u1", "o2": "u2", "o3": "u3"}, "legacy --seed 3 stored orders o1..o3 of u1..u3")

    t0 = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
    r = legacy.call("POST", "/api/users", {"email": "ada@example.com", "name": "Ada"})
    created = r.json() or {}
    uid = created.get("_id", "")
    t.ok(r.status == 201 and re.fullmatch(r"u[0-9a-f]{12}", uid) and r.header("Location") == "/api/users/" + uid
         and created.get("email") == "ada@example.com" and r.header("X-App") == "legacy",
         "legacy POST /api/users answers 201, a u... id and its Location", r)
    stored = ldb.users.find_one({"_id": uid}) or {}
    t.ok(stored.get("email") == "ada@example.com" and stored.get("name") == "Ada"
         and isinstance(stored.get("updatedAt"), datetime.datetime) and stored["updatedAt"] > t0
         and created.get("updatedAt") == iso(stored["updatedAt"]),
         "legacy stored the created user, updatedAt a date", stored)
    r = legacy.call("GET", "/api/users/" + uid)
    t.eq((r.status, r.json()), (200, created), "legacy GET /api/users/{id} answers the user")

    r = legacy.call("PUT", "/api/users/" + uid, {"email": "ada@lovelace.org", "name": "Ada L"})
    put = r.json() or {}
    stored = ldb.users.find_one({"_id": uid}) or {}
    t.ok(r.status == 200 and put.get("email") == "ada@lovelace.org" and stored.get("name") == "Ada L"
         and put.get("updatedAt", "") > created["updatedAt"],
         "legacy PUT replaces email and name and moves updatedAt forward", (r, stored))

    conn = http.client.HTTPConnection("127.0.0.1", legacy.port, timeout=10)
    stamps, ok = [put.get("updatedAt", "")], True
    for i in range(6):
        r = legacy.call("PATCH", "/api/users/" + uid, {"name": "Ada %d" % i}, conn=conn)
        ok = (ok and r.status == 200 and r.header("Content-Length") is not None
              and (r.json() or {}).get("email") == "ada@lovelace.org")
        stamps.append((r.json() or {}).get("updatedAt", ""))
    t.ok(ok and all(a < b for a, b in zip(stamps, stamps[1:])),
         "legacy: 6 PATCHes back to back on one keep-alive connection each move updatedAt strictly forward", stamps)
    ahead = datetime.datetime.utcnow().replace(microsecond=0) + datetime.timedelta(hours=1)
    ldb.users.update_one({"_id": "u3"}, {"$set": {"updatedAt": ahead}})  # a clock that went back, or the same ms
    r = legacy.call("PATCH", "/api/users/u3", {"name": "Skewed"}, conn=conn)
    t.eq(((r.json() or {}).get("updatedAt"), ldb.users.find_one({"_id": "u3"})["updatedAt"]),
         (iso(ahead + datetime.timedelta(milliseconds=1)), ahead + datetime.timedelta(milliseconds=1)),
         "legacy: a change when updatedAt is not in the past sets it 1 ms later, never to the same value")
    r = legacy.call("HEAD", "/api/users/" + uid, conn=conn)
    g = legacy.call("GET", "/api/users/" + uid, conn=conn)
    t.ok(r.status == 200 and r.body == b"" and r.header("Content-Length") == str(len(g.body)) and g.status == 200,
         "legacy HEAD answers the GET's headers without a body, on the same connection", (r, g))
    conn.close()

    r = legacy.call("POST", "/api/orders", {"user": uid, "item": "analytical engine", "total": 1843})
    order = r.json() or {}
    oid = order.get("_id", "")
    t.ok(r.status == 201 and r.header("Location") == "/api/orders/" + oid
         and (ldb.orders.find_one({"_id": oid}) or {}).get("user") == uid,
         "legacy POST /api/orders answers 201 and stores the order with its user id", r)
    r = legacy.call("GET", "/api/orders/" + oid)
    t.eq((r.status, r.json()), (200, {"_id": oid, "item": "analytical engine", "total": 1843,
                                      "user": {"_id": uid, "email": "ada@lovelace.org", "name": "Ada 5"}}),
         "legacy GET /api/orders/{id} populates user from the users collection")
    r = legacy.call("POST", "/admin/users/%s/email" % uid, {"email": "countess@example.com"})
    t.ok(r.status == 200 and (r.json() or {}).get("email") == "countess@example.com"
         and (ldb.users.find_one({"_id": uid}) or {}).get("email") == "countess@example.com",
         "legacy POST /admin/users/{id}/email changes the email", r)
    r = legacy.call("GET", "/api/orders/" + oid)
    populated = (r.json() or {}).get("user")
    t.eq(populated.get("email") if isinstance(populated, dict) else populated, "countess@example.com",
         "the order's populated email follows the admin email change")
    r = legacy.call("GET", "/api/orders/o2")
    t.eq((r.json() or {}).get("user"), {"_id": "u2", "email": "user2@example.com", "name": "User 2"},
         "a seeded order populates its seeded user")

    legacy.call("PATCH", "/api/users/u1", {"name": "Changed"})
    r = legacy.call("POST", "/admin/seed", {"users": 5, "orders": 4})
    ids = sorted(u["_id"] for u in ldb.users.find({"_id": {"$in": ["u1", "u2", "u3", "u4", "u5", "u6"]}}))
    t.ok(r.status == 200 and ids == ["u1", "u2", "u3", "u4", "u5"]
         and ldb.users.find_one({"_id": "u1"})["name"] == "Changed" and ldb.orders.count_documents({}) == 5,
         "legacy POST /admin/seed adds u4, u5 and o4 and keeps what exists", (r, ids))

    r = legacy.call("DELETE", "/api/users/" + uid)
    t.ok(r.status == 200 and ldb.users.find_one({"_id": uid}) is None, "legacy DELETE removes the user", r)
    r = legacy.call("GET", "/api/orders/" + oid)
    t.ok(r.status == 200 and (r.json() or {}).get("user", "missing") is None,
         "an order of a deleted user answers user: null", r)

    checks = [("GET", "/api/users/" + uid, None), ("DELETE", "/api/users/" + uid, None),  # deleted above
              ("PUT", "/api/users/nobody", {"email": "a@b"}), ("PATCH", "/api/users/nobody", {"name": "x"}),
              ("POST", "/admin/users/nobody/email", {"email": "a@b"}), ("GET", "/api/orders/nothing", None),
              ("GET", "/nowhere", None), ("GET", "/api/users/", None), ("GET", "/api/users/u1/extra", None)]
    bad = [(m, p, legacy.call(m, p, b)) for m, p, b in checks]
    t.ok(all(json_error(r, 404, "legacy") for _, _, r in bad), "legacy answers 404 with a JSON error: "
         + ", ".join("%s %s" % (m, p.replace(uid, "{deleted}")) for m, p, _ in checks),
         [x for x in bad if not json_error(x[2], 404, "legacy")])
    r = legacy.call("DELETE", "/api/orders/o1")
    t.ok(json_error(r, 405, "legacy") and r.header("Allow") == "GET, HEAD",
         "legacy DELETE /api/orders/{id}: 405 with Allow", r)

    checks = [("POST", "/api/users", "{not json"), ("POST", "/api/users", [1, 2]), ("POST", "/api/users", ""),
              ("POST", "/api/users", {"name": "no email"}), ("POST", "/api/users", {"email": "no-at-sign"}),
              ("POST", "/api/users", {"email": "a@b", "role": "admin"}), ("PATCH", "/api/users/u1", {}),
              ("PATCH", "/api/users/u1", {"name": 7}), ("POST", "/admin/users/u1/email", {"email": "a@b", "name": "x"}),
              ("POST", "/api/orders", {"user": "u1", "item": "x", "total": "12"}),
              ("POST", "/api/orders", {"user": "nobody", "item": "x", "total": 12}),
              ("POST", "/admin/seed", {"users": -1})]
    before = ldb.users.count_documents({}), ldb.users.find_one({"_id": "u1"})
    bad = [(m, p, b, legacy.call(m, p, b)) for m, p, b in checks]
    t.ok(all(json_error(r, 400, "legacy") for *_, r in bad), "legacy answers 400 with a JSON error to %d bad bodies "
         "(not JSON, not an object, no email, unknown field, wrong type...)" % len(checks),
         [x for x in bad if not json_error(x[3], 400, "legacy")])
    t.eq((ldb.users.count_documents({}), ldb.users.find_one({"_id": "u1"})), before, "the 400s changed nothing")

    raw = RawConn("127.0.0.1", legacy.port)
    doc = b'{"email": "chunked@example.com", "name": "Chunky"}'
    raw.send(b"POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, doc[:10], len(doc) - 10, doc[10:])
             + b"GET /api/users/u2 HTTP/1.1\r\nHost: x\r\n\r\n")
    r1, r2 = raw.read_response(), raw.read_response()
    t.ok(r1.status == 201 and (r1.json() or {}).get("name") == "Chunky" and r2.status == 200
         and (r2.json() or {}).get("_id") == "u2",
         "legacy reads a chunked body and answers the next pipelined request on the connection", (r1, r2))
    raw.send(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    r = raw.read_response()
    t.ok(json_error(r, 400, "legacy") and raw.at_eof(),
         "legacy: a bad Content-Length gets 400 and the connection closed", r)
    raw.close()

    # --- user_service.py: CRUD and events -------------------------------------

    t.eq(rc.exists(STREAM), 0, "the events stream is PREFIX:service:events and empty at first")
    at0 = int(time.time() * 1000)
    r = service.call("POST", "/api/users", {"email": "grace@example.com", "name": "Grace"})
    user = r.json() or {}
    sid = user.get("_id", "")
    t.ok(r.status == 201 and r.header("Location") == "/api/users/" + sid and re.fullmatch(r"u[0-9a-f]{12}", sid)
         and user.get("version") == 1 and r.header("X-App") == "service",
         "service POST /api/users answers 201, Location and version 1", r)
    stored = sdb.users.find_one({"_id": sid}) or {}
    t.ok(stored.get("email") == "grace@example.com" and stored.get("version") == 1
         and isinstance(stored.get("updatedAt"), datetime.datetime) and ldb.users.find_one({"_id": sid}) is None,
         "service stored the user in its own database only", stored)
    ev = events()
    t.ok(len(ev) == 1 and ev[0][:4] == ("USER_CREATED", sid, 1, user) and at0 <= ev[0][4] <= time.time() * 1000,
         "service create emitted USER_CREATED, version 1, fields = the whole user, at in ms", ev)
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    h = service.call("HEAD", "/api/users/" + sid, conn=conn)
    r = service.call("GET", "/api/users/" + sid, conn=conn)
    conn.close()
    t.eq((r.status, r.json()), (200, user), "service GET /api/users/{id} answers the user")
    t.ok(h.status == 200 and h.body == b"" and h.header("Content-Length") == str(len(r.body)),
         "service HEAD answers the GET's headers without a body, on the same connection", h)

    steps = [("PATCH", "/api/users/" + sid, {"name": "Grace H"}, {"name": "Grace H"}),
             ("PUT", "/api/users/" + sid, {"email": "grace@navy.mil", "name": "Grace Hopper"},
              {"email": "grace@navy.mil", "name": "Grace Hopper"}),
             ("POST", "/admin/users/%s/email" % sid, {"email": "amazing@grace.org"}, {"email": "amazing@grace.org"})]
    for version, (method, path, doc, fields) in enumerate(steps, 2):
        r = service.call(method, path, doc)
        stored = sdb.users.find_one({"_id": sid}) or {}
        ev = events()
        t.ok(r.status == 200 and (r.json() or {}).get("version") == version and stored.get("version") == version
             and all(stored.get(k) == v for k, v in fields.items()) and len(ev) == version
             and ev[-1][:4] == ("USER_UPDATED", sid, version, fields),
             "service %s %s: version %d, USER_UPDATED with fields %s" % (method, path.replace(sid, "{id}"), version,
                                                                         sorted(fields)), (r, stored, ev[-1:]))
    r = service.call("DELETE", "/api/users/" + sid)
    ev = events()
    t.ok(r.status == 200 and len(ev) == 5 and ev[-1][:4] == ("USER_DELETED", sid, 5, {}),
         "service DELETE emits USER_DELETED, version 5, fields {}", (r, ev[-1:]))
    t.eq([(e[0], e[2]) for e in ev],
         [("USER_CREATED", 1), ("USER_UPDATED", 2), ("USER_UPDATED", 3), ("USER_UPDATED", 4), ("USER_DELETED", 5)],
         "the stream holds versions 1..5 in order")
    bad = [service.call(m, "/api/users/" + sid, b)
           for m, b in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None))]
    t.ok(all(json_error(r, 404, "service") for r in bad) and len(events()) == 5,
         "a deleted user answers 404 to GET, PATCH and DELETE, and emits nothing", bad)

    # --- user_service.py: the import endpoint ---------------------------------

    T0, T1, T2, T3 = (datetime.datetime(2024, 5, 1, 12, 0, 0, ms * 1000) for ms in (0, 1, 500, 999))
    lid = "legacy@7/x"  # percent-encoded in the path, as cutover-migrate does
    path = "/internal/import/users/" + urllib.parse.quote(lid, safe="")

    def imp(doc, version, p=path):
        headers = {}
        if version is not None:
            headers["X-Cutover-Version"] = version if isinstance(version, str) else iso(version)
        return service.call("PUT", p, doc, headers)

    def legacy_doc(name, updated):
        return {"_id": lid, "email": "l7@example.com", "name": name, "locale": "en",
                "updatedAt": {"$date": iso(updated)}}

    n_events = len(events())
    r = imp(legacy_doc("First", T1), T1)
    stored = sdb.users.find_one({"_id": lid}) or {}
    t.ok(r.status == 201 and stored.get("name") == "First" and stored.get("legacyUpdatedAt") == T1
         and stored.get("updatedAt") == T1 and stored.get("version") == 1 and stored.get("locale") == "en",
         "import of a new user: 201, stored with legacyUpdatedAt, dates from {$date}, version 1", (r, stored))
    r = service.call("GET", "/api/users/" + urllib.parse.quote(lid, safe=""))
    t.ok(r.status == 200 and (r.json() or {}).get("name") == "First" and "legacyUpdatedAt" not in r.json(),
         "the imported user is served by GET /api/users/{id}", r)
    for desc, doc, version in (("the same version", legacy_doc("Same", T1), T1),
                               ("an older version", legacy_doc("Older", T0), T0)):
        r = imp(doc, version)
        t.ok(json_error(r, 409, "service") and sdb.users.find_one({"_id": lid}) == stored,
             "import of %s: 409 and nothing changes" % desc, (r, sdb.users.find_one({"_id": lid})))
    r = imp(legacy_doc("Newer", T2), T2)
    after = sdb.users.find_one({"_id": lid}) or {}
    t.ok(r.status == 200 and after.get("name") == "Newer" and after.get("legacyUpdatedAt") == T2
         and after.get("version") == 2, "import of a newer version: 200, replaced, version 2", (r, after))
    t.eq(len(events()), n_events, "imports emitted no event")

    r = service.call("PATCH", "/api/users/" + urllib.parse.quote(lid, safe=""), {"name": "Edited"})
    ev = events()
    t.ok(r.status == 200 and ev[-1][:4] == ("USER_UPDATED", lid, 3, {"name": "Edited"}),
         "an API change after imports emits the next version (3)", (r, ev[-1:]))
    r = imp(legacy_doc("Stale", T2), T2)
    t.ok(r.status == 409 and sdb.users.find_one({"_id": lid})["name"] == "Edited",
         "a re-import of the legacy version already held does not undo a service change", r)
    service.call("DELETE", "/api/users/" + urllib.parse.quote(lid, safe=""))
    r = imp(legacy_doc("Zombie", T2), T2)
    t.ok(r.status == 409 and service.call("GET", "/api/users/" + urllib.parse.quote(lid, safe="")).status == 404,
         "a deleted user is kept as a tombstone: an old legacy copy gets 409 and stays deleted", r)
    r = imp(legacy_doc("Reborn", T3), T3)
    t.ok(r.status == 200 and service.call("GET", "/api/users/" + urllib.parse.quote(lid, safe="")).status == 200,
         "a newer legacy copy replaces the tombstone", r)

    p2 = "/internal/import/users/u900"
    doc = {"_id": "u900", "email": "u900@example.com", "name": "No header", "updatedAt": {"$date": iso(T2)}}
    r1 = imp(doc, None, p2)
    r2 = imp(dict(doc, name="Older", updatedAt={"$date": iso(T1)}), None, p2)
    t.ok(r1.status == 201 and r2.status == 409 and sdb.users.find_one({"_id": "u900"})["legacyUpdatedAt"] == T2,
         "without X-Cutover-Version the document's updatedAt is the version", (r1, r2))
    t.eq(len(events()), n_events + 2, "only the two API changes among all that emitted events")

    checks = [("not JSON", "{oops", T1), ("a JSON array", [1], T1),
              ("another _id", {"_id": "u901", "email": "a@b"}, T1),
              ("a bad $date", {"email": "a@b", "updatedAt": {"$date": "yesterday"}}, T1),
              ("a bad version header", {"email": "a@b"}, "yesterday"),
              ("no version at all", {"email": "a@b"}, None)]
    bad = [(d, imp(b, v, "/internal/import/users/u902")) for d, b, v in checks]
    t.ok(all(json_error(r, 400, "service") for _, r in bad) and sdb.users.find_one({"_id": "u902"}) is None,
         "import answers 400 and stores nothing for: " + ", ".join(d for d, _, _ in checks),
         [x for x in bad if not json_error(x[1], 400, "service")])

    # --- user_service.py: errors ------------------------------------------------

    checks = [("GET", "/api/users/nobody", None), ("PUT", "/api/users/nobody", {"email": "a@b"}),
              ("PATCH", "/api/users/nobody", {"name": "x"}), ("DELETE", "/api/users/nobody", None),
              ("POST", "/admin/users/nobody/email", {"email": "a@b"}), ("GET", "/api/orders/o1", None),
              ("GET", "/nowhere", None)]
    bad = [(m, p, service.call(m, p, b)) for m, p, b in checks]
    t.ok(all(json_error(r, 404, "service") for *_, r in bad), "service answers 404 with a JSON error: "
         + ", ".join("%s %s" % (m, p) for m, p, _ in checks), [x for x in bad if not json_error(x[2], 404, "service")])
    r = service.call("GET", path)
    t.ok(json_error(r, 405, "service") and r.header("Allow") == "PUT", "service GET on the import endpoint: 405", r)
    service.call("POST", "/api/users", {"email": "live@example.com"})
    live = sdb.users.find_one({"email": "live@example.com"})["_id"]
    n_events = len(events())
    checks = [("POST", "/api/users", "[]"), ("POST", "/api/users", "{"), ("POST", "/api/users", {"name": "x"}),
              ("PATCH", "/api/users/" + live, {"email": "nope"}), ("PUT", "/api/users/" + live, {"name": "x"}),
              ("PATCH", "/api/users/" + live, {"version": 9}), ("POST", "/admin/users/%s/email" % live, {})]
    bad = [(m, p, b, service.call(m, p, b)) for m, p, b in checks]
    t.ok(all(json_error(r, 400, "service") for *_, r in bad) and len(events()) == n_events
         and sdb.users.find_one({"_id": live})["version"] == 1,
         "service answers 400 to %d bad bodies, changing and emitting nothing" % len(checks),
         [x for x in bad if not json_error(x[3], 400, "service")])

    # --- Redis down ---------------------------------------------------------------

    rc.close()
    redis_srv.stop(save=True)
    r = service.call("PATCH", "/api/users/" + live, {"name": "While down"})
    h = service.call("GET", "/health")
    t.ok(json_error(r, 503, "service") and "saved" in r.json()["error"] and h.status == 503,
         "with Redis down a change answers 503 saying it was saved unpublished; /health 503", (r, h))
    redis_srv.start()
    rc = redis_srv.client()
    r = service.call("PATCH", "/api/users/" + live, {"name": "Back"})
    ev = events()
    t.ok(r.status == 200 and ev[-1][:4] == ("USER_UPDATED", live, 3, {"name": "Back"}),
         "once Redis is back changes emit again (version 3: the unpublished change kept 2)", (r, ev[-1:]))
    rc.close()

    # --- logging and SIGTERM ------------------------------------------------------

    t.ok(legacy.stderr() == "", "legacy without --verbose writes nothing on stderr", legacy.log_tail())
    t.ok('"PATCH /api/users/%s HTTP/1.1" 200' % live in service.stderr(),
         "service --verbose logs one line per request on stderr", service.log_tail())
    t.eq((legacy.stop(timeout=5), service.stop(timeout=5)), (0, 0), "both apps exit 0 on SIGTERM")


def main():
    t = harness.T = TAP()

    def on_signal(signum, frame):
        harness.cleanup()
        os._exit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        mongo = Mongo()
        ldb, sdb = mongo.database("legacy"), mongo.database("service")
        with RedisServer() as srv:
            legacy = App("legacy_app.py", "--mongo", mongo.uri, "--db", ldb.name, "--seed", "3")
            service = App("user_service.py", "--mongo", mongo.uri, "--db", sdb.name, "--redis", srv.url(),
                          "--prefix", PREFIX, "--verbose")
            body(t, legacy, service, ldb, sdb, srv)
        mongo.close()
    except Exception:
        t.ok(False, "no unexpected exception", traceback.format_exc())
    for child in list(harness._children):
        child.stop()
    if harness._problems:
        t.ok(False, "no problem after the last test point")
    status = t.finish()
    harness.cleanup()
    sys.exit(status)


if __name__ == "__main__":
    main()
