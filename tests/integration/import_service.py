#!/usr/bin/python3
"""
import_service.py - a stand-in for the user service's import endpoint, for
the integration tests of cutover-migrate (its http sink). A real process:
a threaded HTTP/1.1 server with keep-alive, everything kept in memory.

    /usr/bin/python3 import_service.py --port 0 [--fail-status N] [--fail-first K]
                                       [--delay-ms MS]

    PUT /internal/import/users/{id}
        Stores the JSON body as user {id} (percent-decoded) with the
        X-Cutover-Version header as its version, with the service's
        version guard: a PUT whose version is older than the one held
        answers 409 and changes nothing; the same or a newer one (or a PUT
        without the header, or for a user held without a version) replaces
        the copy and answers 200 {"stored": true}. Versions compare as
        numbers when both are decimal numbers, else as text (which orders
        the migrator's ISO 8601 dates and ObjectId hex correctly).
        A body that is not a JSON object answers 400.

    GET /_import/users/{id}      {"id", "doc", "version", "puts", "headers",
                                 "first_put"} of the stored copy, or 404;
                                 first_put: which PUT since the start (or
                                 the last reset), from 1, was its first
    GET /_import/users           {"users": {id: {"doc", "version", "puts"}}}
    GET /_import/stats           {"puts", "stored", "conflicts", "failed",
                                 "users", "inflight", "connections",
                                 "puts_by_user": {id: n}, "mode": {...}}
    POST /_import/mode           a JSON object changing how PUTs are answered,
                                 at run time (keys left out are unchanged):
                                   "status": N   every PUT answers N (0 or
                                                 null: normal again)
                                   "fail_first": K  the next K PUTs answer
                                                 fail_status (default 500)
                                   "fail_status": N  the status of those
                                   "users": {id: N}  PUTs of these users
                                                 answer N (N 0 or null:
                                                 removes the user)
                                   "delay_ms": MS  each PUT waits MS first
                                   "hang_up": 1  after each stored PUT the
                                                 connection is closed, with
                                                 no Connection: close (as
                                                 a keep-alive timeout would)
                                 answers the mode now in force
    POST /_import/reset          forgets every user and counter
    PUT /_import/users/{id}      stores a copy directly (body, and the
                                 X-Cutover-Version header), as if an
                                 earlier or newer import had happened

A failing PUT still reads its body and answers with a small JSON error
body; it is counted in "failed" and in puts_by_user, and stores nothing.

Prints "port N" (with --port 0) and then "ready" on stdout once listening.
Exits 0 on SIGTERM or SIGINT. Python 3 stdlib only.
"""
import argparse
import http.server
import json
import os
import re
import signal
import socketserver
import threading
import time
import urllib.parse

IMPORT_PREFIX = "/internal/import/users/"
NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")

_lock = threading.Lock()
_users = {}          # id -> {"doc", "version", "puts", "headers"}
_puts_by_user = {}   # id -> PUTs received for it (any outcome)
_first_put = {}      # id -> the number (from 1) of the first PUT received for it
_stats = {"puts": 0, "stored": 0, "conflicts": 0, "failed": 0, "inflight": 0, "connections": 0}
_mode = {"status": 0, "fail_first": 0, "fail_status": 500, "users": {}, "delay_ms": 0, "hang_up": 0}


def older(new, held):
    """Whether version text new orders before held."""
    if NUMBER.match(new) and NUMBER.match(held):
        return float(new) < float(held)
    return new < held


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def handle_error(self, request, client_address):
        pass  # a client that hangs up (a killed migrator) is not news


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def version_string(self):
        return "import-service/1"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        with _lock:
            _stats["connections"] += 1

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def reply(self, status, doc):
        payload = (json.dumps(doc, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(head + payload)

    def path_id(self, prefix):
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith(prefix) or len(path) == len(prefix):
            return None
        return urllib.parse.unquote(path[len(prefix):], errors="surrogateescape")

    # --- the service's import endpoint ---------------------------------------

    def do_PUT(self):
        data = self.body()
        if self.path.startswith("/_import/users/"):
            return self.put_direct(self.path_id("/_import/users/"), data)
        user = self.path_id(IMPORT_PREFIX)
        if user is None:
            return self.reply(404, {"error": "no such endpoint"})
        with _lock:
            _stats["puts"] += 1
            _stats["inflight"] += 1
            _puts_by_user[user] = _puts_by_user.get(user, 0) + 1
            _first_put.setdefault(user, _stats["puts"])
            delay = _mode["delay_ms"]
            hang_up = _mode["hang_up"]
        try:
            if delay:
                time.sleep(delay / 1000.0)
            status = self.failure(user)
            if status:
                with _lock:
                    _stats["failed"] += 1
                return self.reply(status, {"error": "failing on purpose", "status": status})
            try:
                doc = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                doc = None
            if not isinstance(doc, dict):
                with _lock:
                    _stats["failed"] += 1
                return self.reply(400, {"error": "the body is not a JSON object"})
            version = self.headers.get("X-Cutover-Version")
            with _lock:
                held = _users.get(user)
                if held is not None and version is not None and held["version"] is not None \
                        and older(version, held["version"]):
                    _stats["conflicts"] += 1
                    conflict = True
                else:
                    conflict = False
                    _users[user] = {"doc": doc, "version": version,
                                    "puts": (held["puts"] if held else 0) + 1,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}}
                    _stats["stored"] += 1
            if conflict:
                return self.reply(409, {"error": "a newer version is held", "held": held["version"]})
            self.reply(200, {"stored": True})
            if hang_up:
                self.close_connection = True  # as an idle timeout would, with no Connection: close
        finally:
            with _lock:
                _stats["inflight"] -= 1

    def failure(self, user):
        """The status this PUT fails with, or 0."""
        with _lock:
            if user in _mode["users"]:
                return _mode["users"][user]
            if _mode["status"]:
                return _mode["status"]
            if _mode["fail_first"] > 0:
                _mode["fail_first"] -= 1
                return _mode["fail_status"]
        return 0

    def put_direct(self, user, data):
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self.reply(400, {"error": "the body is not JSON"})
        with _lock:
            _users[user] = {"doc": doc, "version": self.headers.get("X-Cutover-Version"), "puts": 0,
                            "headers": {}}
        self.reply(200, {"stored": True})

    # --- the test's view ----------------------------------------------------------

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_import/stats":
            with _lock:
                doc = dict(_stats, users=len(_users), puts_by_user=dict(_puts_by_user),
                           mode=dict(_mode, users=dict(_mode["users"])))
            return self.reply(200, doc)
        if path == "/_import/users":
            with _lock:
                doc = {u: {"doc": c["doc"], "version": c["version"], "puts": c["puts"]} for u, c in _users.items()}
            return self.reply(200, {"users": doc})
        user = self.path_id("/_import/users/")
        if user is not None:
            with _lock:
                held = _users.get(user)
                held = dict(held, id=user, first_put=_first_put.get(user)) if held else None
            return self.reply(200, held) if held else self.reply(404, {"error": "no such user"})
        self.reply(404, {"error": "no such endpoint"})

    def do_POST(self):
        data = self.body()
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_import/reset":
            with _lock:
                _users.clear()
                _puts_by_user.clear()
                _first_put.clear()
                for k in _stats:
                    if k not in ("inflight", "connections"):
                        _stats[k] = 0
            return self.reply(200, {"reset": True})
        if path != "/_import/mode":
            return self.reply(404, {"error": "no such endpoint"})
        try:
            change = json.loads(data.decode("utf-8") or "{}")
            assert isinstance(change, dict)
        except (UnicodeDecodeError, ValueError, AssertionError):
            return self.reply(400, {"error": "expected a JSON object"})
        with _lock:
            for key in ("status", "fail_first", "fail_status", "delay_ms", "hang_up"):
                if key in change:
                    _mode[key] = int(change[key] or 0)
            for user, status in (change.get("users") or {}).items():
                if status:
                    _mode["users"][user] = int(status)
                else:
                    _mode["users"].pop(user, None)
            doc = dict(_mode, users=dict(_mode["users"]))
        self.reply(200, doc)


def main():
    ap = argparse.ArgumentParser(description="the user service's import endpoint, for cutover's tests")
    ap.add_argument("--port", type=int, required=True, help="0: any free port, printed as 'port N'")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--fail-status", type=int, default=0, help="every PUT answers this status")
    ap.add_argument("--fail-first", type=int, default=0, help="the first K PUTs answer 500 (or --fail-status)")
    ap.add_argument("--delay-ms", type=int, default=0, help="each PUT waits this long first")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    if args.fail_first:
        _mode["fail_first"] = args.fail_first
        _mode["fail_status"] = args.fail_status or 500
    elif args.fail_status:
        _mode["status"] = args.fail_status
    _mode["delay_ms"] = args.delay_ms
    server = Server((args.host, args.port), Handler)
    if args.port == 0:
        print("port %d" % server.server_address[1])
    print("ready", flush=True)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
