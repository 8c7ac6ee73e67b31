#!/usr/bin/python3
"""
echo_upstream.py - a real HTTP/1.1 upstream for the proxy's integration
tests: it plays "legacy" or "service" and tells the test exactly what
reached it.

    /usr/bin/python3 echo_upstream.py --name legacy --port P

Threaded, keep-alive. Every request is answered 200 with a JSON body
(with Content-Length):

    {"upstream": NAME, "method": ..., "path": the raw request target,
     "headers": {lowercased name: value, repeated headers joined ", "},
     "body": the request body as text (chunked bodies are decoded here),
     "body_length": its length in bytes, "chunked": whether it came chunked,
     "connection_id": a per-TCP-connection counter,
     "request_on_connection": 1 for the first request of a connection, ...}

Special requests, recognised by the end of the path (so they also work
behind a route prefix, e.g. /api/users/u1/slow?ms=500):
    .../slow?ms=N      sleeps N ms first (or header X-Echo-Sleep-Ms: N)
    .../status/N       answers status N (or header X-Echo-Status: N);
                       header X-Echo-Location: L adds "Location: L" to the answer;
                       1xx, 204 and 304 without a body
    .../chunked        answers with a chunked body (several chunks)
    .../split?ms=N     writes the head, then N ms later (default 5) the body
    .../big?bytes=N    answers N bytes of "0123456789abcdef..." instead of JSON
    .../close          answers without Content-Length and closes
    .../hop            adds hop-by-hop response headers (Connection,
                       Keep-Alive, Upgrade, Trailer, Proxy-Authenticate and
                       X-Upstream-Hop named in Connection) and an ordinary
                       X-Upstream-Ordinary
HEAD gets the same headers and no body.

    GET /_echo/stats   (sent to this server directly) {"inflight", "requests",
                       "connections"}: lets a test wait until a slow request
                       has really arrived, without sleeping

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

_lock = threading.Lock()
_stats = {"inflight": 0, "requests": 0, "connections": 0}


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def handle_error(self, request, client_address):
        pass  # the proxy hangs up on slow requests on purpose: not news


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms stalls
    upstream_name = "echo"

    def version_string(self):
        return "echo-upstream/1"

    def setup(self):
        super().setup()
        with _lock:
            _stats["connections"] += 1
            self.connection_id = _stats["connections"]
        self.request_on_connection = 0

    def log_message(self, fmt, *args):
        pass

    def __getattr__(self, name):
        # do_GET, do_POST, do_PURGE...: every method is echoed.
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    # --- reading the request --------------------------------------------------

    def read_body(self):
        te = ",".join(self.headers.get_all("Transfer-Encoding") or []).lower()
        if "chunked" in te:
            return self.read_chunked(), True
        length = self.headers.get("Content-Length")
        if length is not None:
            n = int(length.split(",")[0].strip())
            return self.rfile.read(n), False
        return b"", False

    def read_chunked(self):
        body = bytearray()
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("chunked body cut short")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    t = self.rfile.readline(65537)
                    if t in (b"\r\n", b"\n", b""):
                        return bytes(body)
            body += self.rfile.read(size)
            self.rfile.readline(3)  # CRLF after the data

    def header_dict(self):
        out = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = out[key] + ", " + value if key in out else value
        return out

    # --- answering -------------------------------------------------------------

    def handle_any(self):
        self.request_on_connection += 1
        parts = urllib.parse.urlsplit(self.path)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        if path == "/_echo/stats":
            self.read_body()
            with _lock:
                data = dict(_stats)
            return self.reply(200, json.dumps(data).encode())
        with _lock:
            _stats["inflight"] += 1
            _stats["requests"] += 1
        try:
            self.answer(path, query)
        finally:
            with _lock:
                _stats["inflight"] -= 1

    def answer(self, path, query):
        body, chunked = self.read_body()
        sleep_ms = self.headers.get("X-Echo-Sleep-Ms")
        if path.endswith("/slow") or path == "/slow":
            sleep_ms = query.get("ms", ["1000"])[0]
        if sleep_ms:
            time.sleep(int(sleep_ms) / 1000.0)
        status = 200
        m = re.search(r"/status/(\d{3})$", path)
        if m:
            status = int(m.group(1))
        elif self.headers.get("X-Echo-Status"):
            status = int(self.headers["X-Echo-Status"])
        doc = {
            "upstream": self.upstream_name,
            "method": self.command,
            "path": self.path,
            "headers": self.header_dict(),
            "body": body.decode("utf-8", "replace"),
            "body_length": len(body),
            "chunked": chunked,
            "connection_id": self.connection_id,
            "request_on_connection": self.request_on_connection,
        }
        payload = (json.dumps(doc, sort_keys=True) + "\n").encode()
        extra = []
        if path.endswith("/hop"):
            extra = [("Connection", "X-Upstream-Hop"), ("X-Upstream-Hop", "secret"),
                     ("Keep-Alive", "timeout=5, max=100"), ("Upgrade", "h2c"), ("Trailer", "X-Checksum"),
                     ("Proxy-Authenticate", "Basic realm=\"up\""), ("X-Upstream-Ordinary", "kept")]
        if self.headers.get("X-Echo-Location"):
            extra.append(("Location", self.headers["X-Echo-Location"]))
        if path.endswith("/big"):
            n = int(query.get("bytes", ["1048576"])[0])
            payload = (b"0123456789abcdef" * (n // 16 + 1))[:n]
        if path.endswith("/split"):
            return self.reply_split(status, payload, extra, query)
        if path.endswith("/chunked"):
            return self.reply_chunked(status, payload, extra)
        if path.endswith("/close"):
            return self.reply_close(status, payload, extra)
        self.reply(status, payload, extra)

    def reply(self, status, payload, extra=()):
        bodyless = status < 200 or status in (204, 304)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        if not bodyless:
            self.send_header("Content-Length", str(len(payload)))
        # Head and body in one write, as most servers do for a small answer
        # (/split is the exception, on purpose).
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(head + payload if not bodyless and self.command != "HEAD" else head)

    def reply_split(self, status, payload, extra, query):
        """The head, then after ms (default 5) milliseconds the body."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        time.sleep(int(query.get("ms", ["5"])[0]) / 1000.0)
        if self.command != "HEAD":
            self.wfile.write(payload)

    def reply_chunked(self, status, payload, extra):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        third = max(1, len(payload) // 3)
        for piece in (payload[:third], payload[third:2 * third], payload[2 * third:]):
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def reply_close(self, status, payload, extra):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.close_connection = True


def main():
    ap = argparse.ArgumentParser(description="echo upstream for cutover's integration tests")
    ap.add_argument("--name", required=True, help="legacy or service: reported in every answer")
    ap.add_argument("--port", type=int, required=True, help="0: any free port, printed as 'port N'")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    Handler.upstream_name = args.name
    server = Server((args.host, args.port), Handler)
    if args.port == 0:
        print("port %d" % server.server_address[1])
    print("ready", flush=True)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
