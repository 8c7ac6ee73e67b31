#!/usr/bin/python3
"""
user_service.py - the new users service, extracted from the monolith.

    /usr/bin/python3 examples/user_service.py --port 3001 \
        --mongo mongodb://127.0.0.1:27017/ [--db users_service] \
        --redis redis://127.0.0.1:6379/0 [--prefix cutover] \
        [--stream PREFIX:service:events] [--verbose]

It owns its own database (not the monolith's): users {_id, email, name,
updatedAt, version, legacyUpdatedAt?, deleted?}. `version` is a per-user
integer moved up by every change; a deleted user is kept as a tombstone
({deleted: true}) so that a late import of its legacy copy cannot bring
it back.

  POST   /api/users                  {email, name} -> 201 + Location
  GET    /api/users/{id}             (HEAD too)
  PUT    /api/users/{id}             {email, name}: replaces both
  PATCH  /api/users/{id}             {email?, name?}
  DELETE /api/users/{id}
  POST   /admin/users/{id}/email     {email}
  PUT    /internal/import/users/{id} a legacy document, for cutover-migrate
  GET    /health                     pings MongoDB and Redis

Every change made through the API is appended to a Redis stream (XADD),
for the sync-back consumer that applies it to the monolith's `users`:
  type     USER_CREATED | USER_UPDATED | USER_DELETED
  user     the user id
  version  the user's version after the change
  fields   JSON: the fields changed (the whole user for a create; {} for
           a delete)
  at       the time, in ms since the epoch
Events of one user may reach the stream out of order when two changes race;
`version` orders them. The change is written first and the event second:
if Redis is down in between, the client gets a 503 saying so (the change
stays; a real service would use an outbox).

Every answer is JSON with Content-Length and the header X-App: service.
Prints "port N" and "ready" once listening, exits 0 on SIGTERM. Python 3
with Debian's python3-pymongo and python3-redis.
"""
import argparse
import datetime
import json
import secrets
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymongo
import redis
from bson import json_util
from bson.errors import BSONError
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

MAX_BODY = 1 << 20
USER_FIELDS = {"email": str, "name": str}
LIVE = {"deleted": {"$ne": True}}  # matches users that are not tombstones
users = None    # the pymongo Collection, set in main()
events = None   # the redis client, set in main()
stream = None   # the events stream's key
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


def public(user):
    """A user as the API shows it: without the import bookkeeping."""
    return {k: v for k, v in user.items() if k not in ("legacyUpdatedAt", "deleted")}


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


def emit(kind, uid, version, fields):
    """XADDs one change event; a Redis failure becomes a 503 (see above)."""
    try:
        events.xadd(stream, {"type": kind, "user": uid, "version": version,
                             "fields": json.dumps(fields, default=to_json),
                             "at": int(time.time() * 1000)})
    except redis.RedisError as e:
        sys.stderr.write("service: %s %s v%d saved but not published: %s\n" % (kind, uid, version, e))
        raise HTTPError(503, "change saved, but its event could not be published: %s" % e)


def change_user(uid, update):
    """Applies a MongoDB update to a live user, moving version up by one and
    updatedAt to now, atomically. Returns the user after the change."""
    update = dict(update, **{"$inc": {"version": 1}})
    update.setdefault("$set", {})["updatedAt"] = now()
    user = users.find_one_and_update(dict(LIVE, _id=uid), update, return_document=ReturnDocument.AFTER)
    if user is None:
        raise HTTPError(404, "no user %s" % uid)
    return user


def parse_version(text):
    """X-Cutover-Version: the legacy updatedAt, as 2024-05-01T12:00:00.000Z."""
    try:
        v = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HTTPError(400, "X-Cutover-Version is not an ISO 8601 date: %r" % text)
    if v.tzinfo is None:
        v = v.replace(tzinfo=datetime.timezone.utc)
    return v.replace(microsecond=v.microsecond // 1000 * 1000)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "user-service/1"
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms stalls

    # --- plumbing -------------------------------------------------------------

    def log_message(self, fmt, *args):
        if verbose:
            sys.stderr.write("service: %s %s\n" % (self.address_string(), fmt % args))

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, 414...) as JSON too."""
        self.close_connection = True
        self.reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def reply(self, status, doc, headers=()):
        data = json.dumps(doc, default=to_json).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App", "service")
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

    def body(self, loads=json.loads):
        """The request body as a JSON object."""
        try:
            body = loads(self.raw)
        except (ValueError, TypeError, BSONError):  # json_util's errors for bad $date, $oid...
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
                  (["internal", "import", "users", None], {"PUT": self.import_user}),
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
        except (PyMongoError, redis.RedisError) as e:
            self.reply(503, {"error": "backend unavailable: %s" % e})
        except Exception:
            traceback.print_exc()
            self.reply(500, {"error": "internal error"})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    # --- users ----------------------------------------------------------------

    def create_user(self):
        """POST /api/users {email, name}: a new user "u" + 12 hex digits, version 1."""
        fields = user_fields(self.body(), ["email"])
        user = {"_id": "u" + secrets.token_hex(6), "email": fields["email"],
                "name": fields.get("name", ""), "updatedAt": now(), "version": 1}
        users.insert_one(user)
        emit("USER_CREATED", user["_id"], 1, user)
        self.reply(201, user, [("Location", "/api/users/" + urllib.parse.quote(user["_id"]))])

    def get_user(self, uid):
        """GET /api/users/{id}: the user, or 404 (deleted ones too)."""
        user = users.find_one(dict(LIVE, _id=uid))
        if user is None:
            raise HTTPError(404, "no user %s" % uid)
        self.reply(200, public(user))

    def put_user(self, uid):
        """PUT /api/users/{id} {email, name}: both replaced (name defaults to "")."""
        fields = user_fields(self.body(), ["email"])
        fields = {"email": fields["email"], "name": fields.get("name", "")}
        self.update(uid, fields)

    def patch_user(self, uid):
        """PATCH /api/users/{id} {email?, name?}: the fields given."""
        self.update(uid, user_fields(self.body(), []))

    def admin_email(self, uid):
        """POST /admin/users/{id}/email {email}: the admin form's email change."""
        body = self.body()
        if set(body) != {"email"}:
            raise HTTPError(400, "the form takes exactly one field, email")
        self.update(uid, user_fields(body, ["email"]))

    def update(self, uid, fields):
        """The API's updates: the change, its USER_UPDATED event, the user."""
        user = change_user(uid, {"$set": dict(fields)})
        emit("USER_UPDATED", uid, user["version"], fields)
        self.reply(200, public(user))

    def delete_user(self, uid):
        """DELETE /api/users/{id}: leaves a tombstone, answers 404 from then on."""
        user = change_user(uid, {"$set": {"deleted": True}})
        emit("USER_DELETED", uid, user["version"], {})
        self.reply(200, {"_id": uid, "deleted": True, "version": user["version"]})

    # --- import ---------------------------------------------------------------

    def import_user(self, uid):
        """PUT /internal/import/users/{id}: cutover-migrate delivers the
        legacy document (relaxed extended JSON) with its updatedAt in
        X-Cutover-Version. If our copy came from a legacy version as new or
        newer (legacyUpdatedAt), 409 and nothing changes; otherwise the
        document replaces ours (201 new, 200 replaced), version moving up.
        Deliberately no event: the data comes from legacy, and an event
        would make sync-back write it back there (a loop)."""
        doc = self.body(json_util.loads)
        if doc.setdefault("_id", uid) != uid:
            raise HTTPError(400, "_id %r is not the id in the path" % doc["_id"])
        header = self.headers.get("X-Cutover-Version")
        if header is not None:
            legacy_version = parse_version(header)
        elif isinstance(doc.get("updatedAt"), datetime.datetime):
            legacy_version = doc["updatedAt"]
        else:
            raise HTTPError(400, "no X-Cutover-Version header and no updatedAt date")
        doc.pop("deleted", None)  # our tombstone marker: an import brings the user (back) to life
        doc.setdefault("updatedAt", legacy_version)
        for _ in range(10):  # compare-and-set on our version, against concurrent writers
            ours = users.find_one({"_id": uid})
            if ours is not None and ours.get("legacyUpdatedAt") is not None \
                    and ours["legacyUpdatedAt"] >= legacy_version:
                raise HTTPError(409, "already have legacy version %s" % to_json(ours["legacyUpdatedAt"]))
            doc.update(version=(ours or {}).get("version", 0) + 1, legacyUpdatedAt=legacy_version)
            try:
                if ours is None:
                    users.insert_one(doc)
                    return self.reply(201, public(doc))
                if users.replace_one({"_id": uid, "version": ours.get("version")}, doc).matched_count:
                    return self.reply(200, public(doc))
            except DuplicateKeyError:
                pass  # created meanwhile: compare again
        raise HTTPError(503, "too many concurrent changes to %s, try again" % uid)

    def health(self):
        """GET /health: 200 if MongoDB and Redis answer a ping."""
        users.database.command("ping")
        events.ping()
        self.reply(200, {"status": "ok"})


def main():
    global users, events, stream, verbose
    ap = argparse.ArgumentParser(description="the users service (cutover example)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--mongo", required=True, help="MongoDB URI")
    ap.add_argument("--db", default="users_service")
    ap.add_argument("--redis", required=True, help="Redis URL for the event stream")
    ap.add_argument("--prefix", default="cutover")
    ap.add_argument("--stream", help="the events stream (default PREFIX:service:events)")
    ap.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = ap.parse_args()
    verbose = args.verbose
    stream = args.stream or args.prefix + ":service:events"
    users = pymongo.MongoClient(args.mongo, tz_aware=True, serverSelectionTimeoutMS=5000)[args.db].users
    events = redis.Redis.from_url(args.redis, socket_timeout=5)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    stop = lambda signum, frame: threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("port %d\nready" % server.server_address[1], flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
