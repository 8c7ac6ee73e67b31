#!/usr/bin/python3
"""
legacy_app.py - the monolith that cutover carves the users service out of.

    /usr/bin/python3 examples/legacy_app.py --port 3000 \
        --mongo mongodb://127.0.0.1:27017/ [--db app] [--seed N] [--verbose]

A small JSON API over two MongoDB collections:
  users   {_id: "u1", email, name, updatedAt}   (updatedAt: a date, moved
          forward on every change; cutover-migrate's version field)
  orders  {_id: "o1", user: "u1", item, total}

  POST   /api/users                 {email, name} -> 201 + Location
  GET    /api/users/{id}            (HEAD too)
  PUT    /api/users/{id}            {email, name}: replaces both
  PATCH  /api/users/{id}            {email?, name?}
  DELETE /api/users/{id}
  POST   /admin/users/{id}/email    {email}: the admin "update email" form
  POST   /api/orders                {user, item, total} -> 201 + Location
  GET    /api/orders/{id}           the order, its user joined in code
  POST   /admin/seed                {users: N, orders: M}: users u1..uN and
                                    orders o1..oM, kept if already there
  GET    /health                    pings MongoDB

Every answer is JSON with Content-Length and the header X-App: legacy;
errors are {"error": ...}. Prints "port N" and "ready" once listening,
exits 0 on SIGTERM. Python 3 with Debian's python3-pymongo.
"""
import argparse
import datetime
import json
import secrets
import signal
import sys
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymongo
from pymongo.errors import PyMongoError

MAX_BODY = 1 << 20
USER_FIELDS = {"email": str, "name": str}
db = None       # the pymongo Database, set in main()
verbose = False


class HTTPError(Exception):
    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def now():
    """The time as MongoDB stores it: UTC, whole milliseconds."""
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def to_json(value):
    """Dates as 2024-05-01T12:00:00.000Z; anything else BSON has as text."""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (value.microsecond // 1000)
    return str(value)


def user_fields(body, required):
    """The user fields of a request body, checked: only email and name,
    as strings, email non-empty with an @; `required` must be present."""
    for key, value in body.items():
        if key not in USER_FIELDS:
            raise HTTPError(400, "unknown field %r" % key)
        if not isinstance(value, USER_FIELDS[key]):
            raise HTTPError(400, "%s must be a string" % key)
    for key in required:
        if key not in body:
            raise HTTPError(400, "%s is required" % key)
    if "email" in body and "@" not in body["email"]:
        raise HTTPError(400, "email must contain an @")
    if not body:
        raise HTTPError(400, "nothing to change")
    return dict(body)


def update_user(uid, changes):
    """Applies changes to a user and moves updatedAt forward: to now, or
    1 ms past the old value if that is not later. cutover-migrate's
    version guard drops a copy whose version is not newer, so two changes
    in the same millisecond must still get two versions; a compare-and-set
    on the old updatedAt makes that safe against concurrent writers."""
    for _ in range(10):
        old = db.users.find_one({"_id": uid})
        if old is None:
            raise HTTPError(404, "no user %s" % uid)
        stamp = now()
        if isinstance(old.get("updatedAt"), datetime.datetime) and stamp <= old["updatedAt"]:
            stamp = old["updatedAt"] + datetime.timedelta(milliseconds=1)
        new = dict(changes, updatedAt=stamp)
        if db.users.update_one({"_id": uid, "updatedAt": old.get("updatedAt")},
                               {"$set": new}).matched_count:
            return dict(old, **new)
    raise HTTPError(503, "too many concurrent changes to %s, try again" % uid)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "legacy-app/1"
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms stalls

    # --- plumbing -------------------------------------------------------------

    def log_message(self, fmt, *args):
        if verbose:
            sys.stderr.write("legacy: %s %s\n" % (self.address_string(), fmt % args))

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, 414...) as JSON too."""
        self.close_connection = True
        self.reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def reply(self, status, doc, headers=()):
        data = json.dumps(doc, default=to_json).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App", "legacy")
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_raw_body(self):
        """The request body's bytes, framed by Content-Length or chunked.
        Read before routing, so that the connection stays usable whatever
        the answer."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = b""
            while len(raw) <= MAX_BODY:
                size = int(self.rfile.readline(100).split(b";")[0], 16)
                raw += self.rfile.read(size)
                self.rfile.readline(100)  # the CRLF after the chunk (or the trailer's end)
                if size == 0:
                    return raw
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError("negative Content-Length")
            if length <= MAX_BODY:
                return self.rfile.read(length)
        raise HTTPError(413, "body over %d bytes" % MAX_BODY)

    def body(self):
        """The request body as a JSON object."""
        try:
            body = json.loads(self.raw)
        except ValueError:
            raise HTTPError(400, "body is not JSON")
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object")
        return body

    def dispatch(self):
        """Routes METHOD /path to a handler method, turning errors into JSON."""
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.split("/")[1:]]
        routes = [(["api", "users"], {"POST": self.create_user}),
                  (["api", "users", None], {"GET": self.get_user, "HEAD": self.get_user,
                                            "PUT": self.put_user, "PATCH": self.patch_user,
                                            "DELETE": self.delete_user}),
                  (["admin", "users", None, "email"], {"POST": self.admin_email}),
                  (["api", "orders"], {"POST": self.create_order}),
                  (["api", "orders", None], {"GET": self.get_order, "HEAD": self.get_order}),
                  (["admin", "seed"], {"POST": self.seed}),
                  (["health"], {"GET": self.health, "HEAD": self.health})]
        try:
            try:
                self.raw = self.read_raw_body()
            except ValueError:
                self.close_connection = True  # the framing is lost: no next request
                raise HTTPError(400, "malformed body framing")
            except HTTPError:
                self.close_connection = True
                raise
            for pattern, methods in routes:
                if len(pattern) == len(parts) and all(x if p is None else p == x for p, x in zip(pattern, parts)):
                    if self.command not in methods:
                        raise HTTPError(405, "%s not allowed here" % self.command,
                                        [("Allow", ", ".join(methods))])
                    return methods[self.command](*[x for p, x in zip(pattern, parts) if p is None])
            raise HTTPError(404, "no such endpoint")
        except HTTPError as e:
            self.reply(e.status, {"error": e.message}, e.headers)
        except PyMongoError as e:
            self.reply(503, {"error": "database unavailable: %s" % e})
        except Exception:
            traceback.print_exc()
            self.reply(500, {"error": "internal error"})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    # --- users ----------------------------------------------------------------

    def create_user(self):
        """POST /api/users {email, name}: a new user "u" + 12 hex digits."""
        fields = user_fields(self.body(), ["email"])
        user = {"_id": "u" + secrets.token_hex(6), "email": fields["email"],
                "name": fields.get("name", ""), "updatedAt": now()}
        db.users.insert_one(user)
        self.reply(201, user, [("Location", "/api/users/" + urllib.parse.quote(user["_id"]))])

    def get_user(self, uid):
        """GET /api/users/{id}: the user, or 404."""
        user = db.users.find_one({"_id": uid})
        if user is None:
            raise HTTPError(404, "no user %s" % uid)
        self.reply(200, user)

    def put_user(self, uid):
        """PUT /api/users/{id} {email, name}: both replaced (name defaults to "")."""
        fields = user_fields(self.body(), ["email"])
        self.reply(200, update_user(uid, {"email": fields["email"], "name": fields.get("name", "")}))

    def patch_user(self, uid):
        """PATCH /api/users/{id} {email?, name?}: the fields given."""
        self.reply(200, update_user(uid, user_fields(self.body(), [])))

    def delete_user(self, uid):
        """DELETE /api/users/{id}: gone (its orders stay, with user null)."""
        if db.users.delete_one({"_id": uid}).deleted_count == 0:
            raise HTTPError(404, "no user %s" % uid)
        self.reply(200, {"_id": uid, "deleted": True})

    def admin_email(self, uid):
        """POST /admin/users/{id}/email {email}: the admin form's email change."""
        body = self.body()
        if set(body) != {"email"}:
            raise HTTPError(400, "the form takes exactly one field, email")
        self.reply(200, update_user(uid, user_fields(body, ["email"])))

    # --- orders ---------------------------------------------------------------

    def create_order(self):
        """POST /api/orders {user, item, total}: for an existing user."""
        body = self.body()
        if not isinstance(body.get("user"), str) or not isinstance(body.get("item"), str) \
                or not isinstance(body.get("total"), (int, float)) or isinstance(body.get("total"), bool) \
                or set(body) - {"user", "item", "total"}:
            raise HTTPError(400, "an order is {user: string, item: string, total: number}")
        if db.users.find_one({"_id": body["user"]}, {"_id": 1}) is None:
            raise HTTPError(400, "no user %s" % body["user"])
        order = dict(body, _id="o" + secrets.token_hex(6))
        db.orders.insert_one(order)
        self.reply(201, order, [("Location", "/api/orders/" + order["_id"])])

    def get_order(self, oid):
        """GET /api/orders/{id}: the order with `user` replaced by that user's
        {_id, email, name} read from the users collection (null if gone)."""
        order = db.orders.find_one({"_id": oid})
        if order is None:
            raise HTTPError(404, "no order %s" % oid)
        order["user"] = db.users.find_one({"_id": order["user"]}, {"email": 1, "name": 1})
        self.reply(200, order)

    # --- admin ----------------------------------------------------------------

    def seed(self):
        """POST /admin/seed {users: N, orders: M}: see seed()."""
        body = self.body()
        counts = [body.get(k, 0) for k in ("users", "orders")]
        if any(type(n) is not int or not 0 <= n <= 100000 for n in counts):
            raise HTTPError(400, "users and orders must be integers from 0 to 100000")
        seed(*counts)
        self.reply(200, {"users": counts[0], "orders": counts[1]})

    def health(self):
        """GET /health: 200 if MongoDB answers a ping."""
        db.command("ping")
        self.reply(200, {"status": "ok"})


def seed(users, orders):
    """Users u1..u<users> and orders o1..o<orders> (spread over those users),
    inserted unless they exist: seeding twice changes nothing."""
    for i in range(1, users + 1):
        db.users.update_one({"_id": "u%d" % i}, {"$setOnInsert": {
            "email": "user%d@example.com" % i, "name": "User %d" % i, "updatedAt": now()}}, upsert=True)
    for i in range(1, orders + 1):
        db.orders.update_one({"_id": "o%d" % i}, {"$setOnInsert": {
            "user": "u%d" % ((i - 1) % max(users, 1) + 1), "item": "item-%d" % i,
            "total": round(9.5 * i, 2)}}, upsert=True)


def main():
    global db, verbose
    ap = argparse.ArgumentParser(description="the legacy monolith (cutover example)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--mongo", required=True, help="MongoDB URI")
    ap.add_argument("--db", default="app")
    ap.add_argument("--seed", type=int, default=0, metavar="N", help="seed N users and N orders")
    ap.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = ap.parse_args()
    verbose = args.verbose
    db = pymongo.MongoClient(args.mongo, tz_aware=True, serverSelectionTimeoutMS=5000)[args.db]
    if args.seed:
        seed(args.seed, args.seed)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    stop = lambda signum, frame: threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("port %d\nready" % server.server_address[1], flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
