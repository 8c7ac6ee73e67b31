#!/usr/bin/python3
"""
proxy_input.py - what clients send cutover-proxy, over raw sockets where
http.client would not send it: keep-alive and pipelining, chunked bodies
both ways, HEAD, Expect: 100-continue, an upstream that closes, and bad
input (malformed request line, headers over the limit, bodies over the
limit by Content-Length and chunked, Content-Length with Transfer-Encoding,
two Content-Lengths, a bad user id in the path or the body) - each
answered with the right status and a JSON body within a deadline, and the
proxy serving normally afterwards. Also the latency of a response whose
head and body the upstream writes separately.
"""
import json
import socket
import statistics
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ctl_all

HEADER_BYTES = 4096
BODY_BYTES = 262144
CLIENT_TIMEOUT = 1500
READ_TIMEOUT = 2000  # upstream: what a stalled transfer costs before the proxy gives up


def sync(t, srv, p):
    v = harness.store_version(srv)
    if not p.wait_flags_version(v, 5):
        t.ok(False, "the proxy picks up the flags: version %d" % v, "proxy has %r" % p.flags_version())


def raw_exchange(p, data, timeout=5.0, head_request=False):
    """Sends data on a new connection and reads one response: (Response
    or the exception text, whether the proxy then closed the connection)."""
    c = p.raw()
    t0 = time.monotonic()
    try:
        try:
            c.send(data)
        except OSError:
            pass  # the proxy may answer and close before taking everything
        try:
            r = c.read_response(timeout, head_request)
        except (ValueError, TimeoutError, OSError) as e:
            return "%s: %s" % (type(e).__name__, e), False
        r.elapsed = time.monotonic() - t0  # from the first byte sent to the last received
        return r, c.at_eof(2)
    finally:
        c.close()


def still_serving(p):
    try:
        r = p.get("/still-serving", timeout=5)
        return r.status == 200 and r.upstream == "legacy"
    except OSError:
        return False


def error_ok(r, status, closed, why=None):
    """r is the proxy's own error answer: status, JSON {error, status,
    request_id} (why in error), Connection: close, and the connection
    closed. (Whether request_id is filled in: see has_request_id.)"""
    if not isinstance(r, harness.Response):
        return False
    doc = r.json() or {}
    return (r.status == status and doc.get("status") == status and isinstance(doc.get("error"), str)
            and "request_id" in doc and (why is None or why in doc["error"])
            and (r.header("Connection") or "").lower() == "close" and closed)


def has_request_id(r):
    doc = (r.json() or {}) if isinstance(r, harness.Response) else {}
    return bool(doc.get("request_id")) and doc.get("request_id") == r.header("X-Request-Id")


def test_keepalive(t, p):
    conn = p.connection()
    try:
        rs = [p.get("/ka/%d" % i, conn=conn) for i in range(5)]
        sock = conn.sock
        rs += [p.request("POST", "/ka/post", body=b"x" * 1000, conn=conn), p.get("/api/users/ka-user", conn=conn)]
        same = conn.sock is sock and sock is not None
    finally:
        conn.close()
    docs = [r.json() or {} for r in rs]
    t.ok(all(r.status == 200 for r in rs) and same and [d.get("path") for d in docs[:5]] ==
         ["/ka/%d" % i for i in range(5)] and docs[5].get("body") == "x" * 1000,
         "keep-alive: 7 requests (GET, POST with a body) on one client connection, answered in order",
         repr(rs[-2:]))
    ids = {d.get("connection_id") for d in docs[:5]}
    t.ok(len(ids) == 1, "the proxy reuses its upstream connection for them (one upstream connection_id)",
         repr(ids))


def test_connection_close(t, p):
    r, closed = raw_exchange(p, b"GET /cc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    t.ok(isinstance(r, harness.Response) and r.status == 200 and (r.header("Connection") or "").lower() == "close"
         and closed, "Connection: close from the client: answered with Connection: close, then closed", repr(r))
    r, closed = raw_exchange(p, b"GET /http10 HTTP/1.0\r\n\r\n")
    t.ok(isinstance(r, harness.Response) and r.status == 200 and (r.json() or {}).get("path") == "/http10"
         and closed, "an HTTP/1.0 request without keep-alive: answered, then closed", repr(r))
    r, closed = raw_exchange(p, b"GET /x/chunked HTTP/1.0\r\n\r\n")
    te = (r.header("Transfer-Encoding") or "") if isinstance(r, harness.Response) else "?"
    t.ok(isinstance(r, harness.Response) and r.status == 200 and "chunked" not in te.lower()
         and (r.json() or {}).get("path") == "/x/chunked" and closed,
         "an HTTP/1.0 client never gets a chunked response (RFC 9112 6.1): the body is sent plain",
         "Transfer-Encoding %r\n%r" % (te, r))


def test_pipelining(t, p):
    c = p.raw()
    try:
        c.send("GET /pipe/1 HTTP/1.1\r\nHost: x\r\n\r\n"
               "POST /pipe/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
               "GET /api/users/pipe-svc HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /pipe/4?q=4 HTTP/1.1\r\nHost: x\r\n\r\n")
        rs = [c.read_response(5) for _ in range(4)]
    except (ValueError, TimeoutError, OSError) as e:
        rs = [repr(e)]
    finally:
        c.close()
    got = [(r.status, (r.json() or {}).get("path"), (r.json() or {}).get("body")) if isinstance(r, harness.Response)
           else r for r in rs]
    t.eq(got, [(200, "/pipe/1", ""), (200, "/pipe/2", "hello"), (200, "/api/users/pipe-svc", ""),
               (200, "/pipe/4?q=4", "")],
         "pipelining: 4 requests in one send (one with a body, one to the service) answered in order")
    t.eq([r.route for r in rs if isinstance(r, harness.Response)], ["legacy", "legacy", "service", "legacy"],
         "each pipelined request routed on its own")
    c = p.raw()
    body = b'{"email":"chunky@example.com"}'
    try:
        c.send(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
               b"GET /pipe/after-body HTTP/1.1\r\nHost: x\r\n\r\n" % (len(body), body))
        rs = [c.read_response(5) for _ in range(2)]
    except (ValueError, TimeoutError, OSError) as e:
        rs = [repr(e)]
    finally:
        c.close()
    got = [((r.json() or {}).get("path"), (r.json() or {}).get("body"), r.route) if isinstance(r, harness.Response)
           else r for r in rs]
    t.eq(got, [("/api/users", body.decode(), "service"), ("/pipe/after-body", "", "legacy")],
         "pipelining after a request whose body the proxy reads for the user id: both answered in order")


CHUNKED_BODY = (b"6\r\nhello \r\n8;ext=1\r\nchunked \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")


def test_chunked(t, p):
    r, _ = raw_exchange(p, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY)
    doc = r.json() if isinstance(r, harness.Response) else {}
    t.ok(isinstance(r, harness.Response) and r.status == 200 and (doc or {}).get("body") == "hello chunked world",
         "a chunked request body reaches the upstream intact", repr(r))
    body = json.dumps({"email": "chunky@example.com", "pad": "p" * 3000}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000]) for i in range(0, len(body), 1000))
    r, _ = raw_exchange(p, b"POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks +
                        b"0\r\n\r\n")
    doc = (r.json() or {}) if isinstance(r, harness.Response) else {}
    e = p.access_entry(doc.get("headers", {}).get("x-request-id"), 2) or {}
    t.ok(isinstance(r, harness.Response) and r.status == 200 and doc.get("body") == body.decode()
         and e.get("user") == "chunky@example.com" and r.route == "service",
         "a chunked JSON body on the body:email route: routed by the email, and reaches the upstream intact",
         "%r\n%r" % (r, e))
    c = p.raw()
    try:
        c.send("GET /x/chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /after-chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(5)
        r2 = c.read_response(5)
    except (ValueError, TimeoutError, OSError) as e:
        r, r2 = repr(e), None
    finally:
        c.close()
    ok = isinstance(r, harness.Response) and "chunked" in (r.header("Transfer-Encoding") or "").lower()
    t.ok(ok and (r.json() or {}).get("path") == "/x/chunked" and isinstance(r2, harness.Response)
         and (r2.json() or {}).get("path") == "/after-chunked",
         "a chunked response reaches the client intact, and the connection goes on", repr(r))


def test_head(t, p):
    c = p.raw()
    try:
        c.send("HEAD /api/users/head-user HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(5, head_request=True)
        c.send("GET /after-head HTTP/1.1\r\nHost: x\r\n\r\n")
        r2 = c.read_response(5)
    except (ValueError, TimeoutError, OSError) as e:
        r, r2 = repr(e), None
    finally:
        c.close()
    t.ok(isinstance(r, harness.Response) and r.status == 200 and int(r.header("Content-Length") or 0) > 0
         and isinstance(r2, harness.Response) and (r2.json() or {}).get("path") == "/after-head",
         "HEAD: the headers (Content-Length of the body it would get) and no body; the next request on the "
         "connection is answered normally", "%r\n%r" % (r, r2))
    for path in ("/x/status/204", "/x/status/304", "/x/status/404", "/x/status/503"):
        c = p.raw()
        try:
            c.send("GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            r = c.read_response(5)
            r2 = c.read_response(5)
        except (ValueError, TimeoutError, OSError) as e:
            r, r2 = repr(e), None
        finally:
            c.close()
        status = int(path.rsplit("/", 1)[1])
        bodyless = status in (204, 304)
        t.ok(isinstance(r, harness.Response) and r.status == status and (r.body == b"") == bodyless
             and isinstance(r2, harness.Response) and r2.status == 200,
             "an upstream %d is passed on%s, and the connection goes on" % (status, " without a body" if bodyless
                                                                          else " with its body"), "%r\n%r" % (r, r2))


def test_close_upstream(t, p):
    # Tried several times (stopping at the first failure): whether the
    # upstream's close arrives with its last bytes or after them is timing.
    times = []
    for attempt in range(6):
        c = p.raw()
        try:
            c.send("GET /x/close HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response(5)
            eof = c.at_eof(3)
        except (ValueError, TimeoutError, OSError) as e:
            r, eof = repr(e), False
        finally:
            c.close()
        ok = (isinstance(r, harness.Response) and r.status == 200 and (r.json() or {}).get("path") == "/x/close"
              and (r.header("Connection") or "").lower() == "close" and eof)
        times.append(round(r.elapsed, 2) if isinstance(r, harness.Response) else None)
        if not ok or r.elapsed >= 1.0:
            break
    t.ok(ok and all(x is not None and x < 1.0 for x in times),
         "an upstream answer delimited by closing: relayed whole, with Connection: close, then closed at once "
         "(%s s; read_timeout is %.1f s)" % (times, READ_TIMEOUT / 1000.0), repr(r))


def expect_continue(p, path, body):
    c = p.raw()
    try:
        c.send("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               "Expect: 100-continue\r\n\r\n" % (path, len(body)))
        first = c.read_response(5)
        if first.status != 100:
            return first, None
        c.send(body)
        return first, c.read_response(5)
    except (ValueError, TimeoutError, OSError) as e:
        return repr(e), None
    finally:
        c.close()


def test_expect(t, p):
    body = b'{"note": "expect me"}'
    first, r = expect_continue(p, "/upload", body)
    t.ok(isinstance(first, harness.Response) and first.status == 100 and isinstance(r, harness.Response)
         and r.status == 200 and (r.json() or {}).get("body") == body.decode(),
         "Expect: 100-continue on a streamed route: 100 Continue, then the body goes through", "%r\n%r" % (first, r))
    body = b'{"email": "expect@example.com"}'
    first, r = expect_continue(p, "/api/users", body)
    doc = (r.json() or {}) if isinstance(r, harness.Response) else {}
    t.ok(isinstance(first, harness.Response) and first.status == 100 and isinstance(r, harness.Response)
         and r.status == 200 and doc.get("body") == body.decode(),
         "Expect: 100-continue on the body:email route (the proxy reads the body itself): 100 Continue, "
         "then the body goes through", "%r\n%r" % (first, r))
    t.ok("expect" not in doc.get("headers", {"expect": "?"}),
         "and the upstream, which gets the whole body at once, is not asked to send 100 Continue again",
         repr(doc.get("headers")))


def test_bad_input(t, p):
    cases = [
        ("a malformed request line", b"NOT A REQUEST\r\n\r\n", 400, None),
        ("a header line without a colon", b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, None),
        ("a NUL in the request target", b"GET /x\x00y HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        ("a header line folded onto the next (obs-fold: forwarded, it would end the head early)",
         b"GET /x HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\nX-After: 1\r\n\r\n", 400, "obs-fold"),
        ("a header block over header_bytes",
         b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (HEADER_BYTES + 100) + b"\r\n\r\n", 431, None),
        ("more headers than the proxy keeps",
         b"GET /x HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431, None),
        ("Content-Length over body_bytes",
         b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (BODY_BYTES + 1), 413, None),
        ("Content-Length over body_bytes on the body:email route",
         b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (BODY_BYTES + 1), 413, None),
        ("both Content-Length and Transfer-Encoding",
         b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\n", 400, None),
        ("two different Content-Lengths",
         b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, None),
        ("a Content-Length that is not a number",
         b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello", 400, None),
        ("bad chunk framing",
         b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400,
         None),
        ("invalid percent-encoding in the path's user id", b"GET /api/users/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400,
         "percent"),
        ("a user id with a control character", b"GET /api/users/a%01b HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        ("a user id over 256 bytes", b"GET /api/users/" + b"u" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400,
         "longer"),
        ("a body that is not JSON on the body:email route",
         b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
         b"not json!", 400, "not JSON"),
        ("a request cut short", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nonly this", None,
         None),
    ]
    no_id = []
    for desc, data, status, why in cases:
        t0 = time.monotonic()
        if status is None:  # the client goes away: nothing to answer, nothing must break
            c = p.raw()
            c.send(data)
            c.sock.shutdown(socket.SHUT_WR)
            c.close()
            t.ok(still_serving(p), "%s (client gone): the proxy goes on serving" % desc)
            continue
        r, closed = raw_exchange(p, data)
        dt = r.elapsed if isinstance(r, harness.Response) else time.monotonic() - t0
        t.ok(error_ok(r, status, closed, why) and dt < 2 and still_serving(p),
             "%s: %d with a JSON body (error%s, request_id), Connection: close, closed (%.2f s); the proxy goes "
             "on serving" % (desc, status, " naming the reason" if why else "", dt), repr(r))
        if isinstance(r, harness.Response) and not has_request_id(r):
            no_id.append("%s: X-Request-Id %r, body %r" % (desc, r.header("X-Request-Id"), r.body))
    t.ok(not no_id, "every one of those answers carries a request id (JSON request_id = X-Request-Id, not empty)",
         "\n".join(no_id))


def send_chunked_too_big(p, path, pace):
    """Sends a chunked body of twice body_bytes in 4 KB chunks (pace: a
    short pause between chunks, as a client on a real network; else all at
    once) and reads the answer."""
    c = p.raw()
    chunk = b"%x\r\n%s\r\n" % (4096, b"b" * 4096)
    r = None
    try:
        c.send("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               % path)
        if pace:
            for _ in range(2 * BODY_BYTES // 4096 + 1):
                c.send(chunk)
                time.sleep(0.001)  # pacing the client, not synchronisation
        else:
            c.send(chunk * (2 * BODY_BYTES // 4096 + 1))
        c.send(b"0\r\n\r\n")
    except OSError:
        pass  # answered and closed early: fine
    try:
        r = c.read_response(5)
    except (ValueError, TimeoutError, OSError) as e:
        r = "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()
    return r


def test_chunked_too_big(t, p):
    for path, desc in (("/api/users", "the body:email route (body read by the proxy)"),
                       ("/upload", "a streamed route")):
        for pace in (True, False):
            t0 = time.monotonic()
            r = send_chunked_too_big(p, path, pace)
            t.ok(isinstance(r, harness.Response) and r.status == 413 and (r.json() or {}).get("status") == 413,
                 "a chunked body over body_bytes (%d bytes, %s) on %s: 413 (%.2f s)"
                 % (2 * BODY_BYTES + 4096, "paced" if pace else "sent at once", desc, time.monotonic() - t0),
                 repr(r)[:400])
        t.ok(still_serving(p), "the proxy goes on serving after them")


def test_large_bodies(t, p):
    size = 200000  # under body_bytes
    data = bytes(range(97, 123)) * (size // 26 + 1)
    data = data[:size]
    cases = [("Content-Length", "/upload", b"Content-Length: %d\r\n" % size, data),
             ("chunked", "/upload", b"Transfer-Encoding: chunked\r\n",
              b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 8192]), data[i:i + 8192]) for i in range(0, size, 8192))
              + b"0\r\n\r\n")]
    email = b'{"email":"big@example.com","pad":"' + data[:size - 40] + b'"}'
    cases.append(("Content-Length on the body:email route", "/api/users", b"Content-Length: %d\r\n" % len(email),
                  email))
    for desc, path, framing, payload in cases:
        r, _ = raw_exchange(p, b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), framing) + payload)
        doc = (r.json() or {}) if isinstance(r, harness.Response) else {}
        want = email if path == "/api/users" else data
        dt = r.elapsed if isinstance(r, harness.Response) else -1
        t.ok(isinstance(r, harness.Response) and r.status == 200 and doc.get("body_length") == len(want)
             and doc.get("body") == want.decode() and dt < 1.0,
             "a %d-byte request body (%s), sent at once, reaches the upstream intact, answer within 1 s (%.2f s)"
             % (len(want), desc, dt), repr(r)[:400])
    for size in (1 << 20, 8 << 20):
        t0 = time.monotonic()
        try:
            r = p.get("/x/big?bytes=%d" % size, timeout=10)
            got = (r.status, len(r.body), r.body == (b"0123456789abcdef" * (size // 16 + 1))[:size])
        except Exception as e:
            got = repr(e)[:300]
        dt = time.monotonic() - t0
        t.eq(got if dt < 1.5 else (got, "%.2f s" % dt), (200, size, True),
             "a %d MB response reaches the client intact, within 1.5 s (%.2f s)" % (size >> 20, dt))


def test_timeouts(t, p):
    c = p.raw()
    t0 = time.monotonic()
    try:
        c.send("GET /slowloris HTTP/1.1\r\nHost: x\r\n")
        r = c.read_response(CLIENT_TIMEOUT / 1000.0 + 3)
        closed = c.at_eof(2)
    except (ValueError, TimeoutError, OSError) as e:
        r, closed = repr(e), False
    finally:
        c.close()
    dt = time.monotonic() - t0
    t.ok(error_ok(r, 408, closed) and CLIENT_TIMEOUT / 1000.0 - 0.1 <= dt < CLIENT_TIMEOUT / 1000.0 + 2,
         "a client that stops in the middle of its head gets 408 after client_timeout (%.2f s)" % dt, repr(r))
    t.ok(has_request_id(r), "and that 408 carries a request id", repr(r))
    c = p.raw()
    t0 = time.monotonic()
    eof = c.at_eof(CLIENT_TIMEOUT / 1000.0 + 3)
    dt = time.monotonic() - t0
    leftover = c.buf
    c.close()
    t.ok(eof and not leftover and dt >= CLIENT_TIMEOUT / 1000.0 - 0.1,
         "an idle connection is closed after client_timeout, without a response (%.2f s)" % dt, repr(leftover))


def test_split_latency(t, p, legacy):
    def median_ms(port):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        times = []
        try:
            for _ in range(7):
                t0 = time.monotonic()
                conn.request("GET", "/lat/split?ms=5")
                conn.getresponse().read()
                times.append((time.monotonic() - t0) * 1000)
        finally:
            conn.close()
        return statistics.median(times)
    direct, proxied = median_ms(legacy.port), median_ms(p.port)
    t.ok(proxied < direct + 20,
         "an answer whose head and body the upstream writes 5 ms apart: %.1f ms through the proxy vs %.1f ms "
         "direct (no Nagle/delayed-ACK stall on the client side)" % (proxied, direct))


def test_upgrade(t, p):
    r, _ = raw_exchange(p, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    t.ok(isinstance(r, harness.Response) and r.status != 101 and r.status < 600 and still_serving(p),
         "a WebSocket upgrade request gets an ordinary answer (no 101) within the deadline", repr(r))


def body(t):
    with harness.RedisServer() as srv:
        bad = ctl_all(("flag", "create", "users-read"), ("flag", "enable", "users-read"),
                      ("flag", "set", "users-read", "--percent", "0%"), ("flag", "allow", "users-read", "pipe-svc"),
                      ("flag", "create", "users-write"), ("flag", "enable", "users-write"),
                      ("flag", "allow", "users-write", "chunky@example.com"))
        t.ok(not bad, "flags created", bad)
        legacy, service = harness.Echo("legacy"), harness.Echo("service")
        p = harness.Proxy(legacy, service, limits={"header_bytes": HEADER_BYTES, "body_bytes": BODY_BYTES,
                                                   "client_timeout": CLIENT_TIMEOUT},
                          upstream={"legacy": {"read_timeout": READ_TIMEOUT},
                                    "service": {"read_timeout": READ_TIMEOUT}})
        sync(t, srv, p)
        test_keepalive(t, p)
        test_connection_close(t, p)
        test_pipelining(t, p)
        test_chunked(t, p)
        test_head(t, p)
        test_close_upstream(t, p)
        test_expect(t, p)
        test_bad_input(t, p)
        test_large_bodies(t, p)
        test_chunked_too_big(t, p)
        test_upgrade(t, p)
        test_timeouts(t, p)
        test_split_latency(t, p, legacy)
        rc = p.stop()
        t.ok(rc == 0, "SIGTERM: the proxy exits 0, no sanitizer report", "exit %s\n%s" % (rc, p.log_tail()))
        legacy.stop()
        service.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy",))
