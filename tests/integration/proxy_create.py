#!/usr/bin/python3
"""
proxy_create.py - creates on routes with a create strategy: legacy-first
sends the POST to legacy and, once legacy answered 2xx, puts the new user
(its id read from a field of the JSON response, or from the Location
header) on the migrate stream; service sends it to the service; neither
looks at the user's bucket, since the user does not exist yet.
"""
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import ctl_all

# The echo upstream answers with the request's headers inside its JSON
# body, so the test chooses the "new id" by sending X-New-Id; /status/201
# answers 201, and /status/500 a failure.
ROUTES = """
route create-json {
	methods = { "POST" }
	path = "/json/*"
	user = { "header:X-User-Id" }
	write_flag = "users-write"
	migrate = true
	create = "legacy-first"
	created_id = "json:headers.x-new-id"
}
route create-location {
	methods = { "POST" }
	path = "/location/*"
	user = { "header:X-User-Id" }
	write_flag = "users-write"
	migrate = true
	create = "legacy-first"
}
route create-service {
	methods = { "POST" }
	path = "/service/*"
	user = { "header:X-User-Id" }
	write_flag = "users-write"
	create = "service"
}
"""


def stream_users(r, reason):
    key = harness.PREFIX + ":migrate"
    return [f["user"] for _, f in r.xrange(key) if f.get("reason") == reason]


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        bad = ctl_all(("flag", "create", "users-write"))  # disabled: creates must not care
        t.ok(not bad, "flag created (disabled)", bad)
        legacy, service = harness.Echo("legacy"), harness.Echo("service")
        p = harness.Proxy(legacy, service, routes=ROUTES)

        resp = p.request("POST", "/json/status/201", {"X-New-Id": "u-new-1", "Content-Type": "application/json"},
                         b'{"email":"a@example.com"}')
        t.eq((resp.status, resp.header("X-Cutover-Route")), (201, "legacy"), "legacy-first: the create goes to legacy")
        ok = harness.poll(lambda: stream_users(r, "created") == ["u-new-1"], 5)
        t.ok(ok, "the new user (from a JSON field of the response) is on the migrate stream at once",
             repr(stream_users(r, "created")))
        t.ok(r.sismember(harness.PREFIX + ":seen", "u-new-1"), "and counted as seen: it is enqueued once")
        e = p.access_entry(resp.request_id) or {}
        t.eq((e.get("reason"), e.get("user")), ("create-legacy-first", "u-new-1"),
             "the access log names the strategy and the new user")

        resp = p.request("POST", "/location/status/201", {"X-Echo-Location": "/api/users/u-new-2?x=1"}, b"{}")
        t.eq((resp.status, resp.header("Location")), (201, "/api/users/u-new-2?x=1"), "legacy answers with a Location")
        ok = harness.poll(lambda: "u-new-2" in stream_users(r, "created"), 5)
        t.ok(ok, "the new user (the last segment of Location's path) is on the migrate stream",
             repr(stream_users(r, "created")))

        resp = p.request("POST", "/json/status/500", {"X-New-Id": "u-failed"}, b"{}")
        t.eq(resp.status, 500, "a failed create is passed on")
        harness.poll(lambda: False, 0.3)  # give a wrong enqueue the time to show
        t.ok("u-failed" not in stream_users(r, "created"), "a failed create enqueues nobody",
             repr(stream_users(r, "created")))

        resp = p.request("POST", "/json/x", {"X-New-Id": "bad\tid"}, b"{}")
        t.eq(resp.status, 200, "a create whose new id is not a valid user id is still answered")
        t.ok(all("\t" not in u for u in stream_users(r, "created")), "and the invalid id is not enqueued")

        resp = p.request("POST", "/service/x", {"X-User-Id": "u9", "X-Echo-Location": "/api/users/u-off"}, b"{}")
        t.eq((resp.status, resp.header("X-Cutover-Route")), (200, "legacy"),
             "create = service, write flag disabled: the create goes to legacy")
        e = p.access_entry(resp.request_id) or {}
        t.eq(e.get("reason"), "disabled", "the access log says why (disabled)")
        ok = harness.poll(lambda: "u-off" in stream_users(r, "created"), 5)
        t.ok(ok, "and it is handled as legacy-first: the new user is enqueued", repr(stream_users(r, "created")))

        harness.change_flags(t, srv, p, "enable", ("flag", "enable", "users-write"))
        resp = p.request("POST", "/service/x", {"X-User-Id": "u9"}, b"{}")
        t.eq((resp.status, resp.header("X-Cutover-Route")), (200, "service"),
             "create = service, write flag on: the create goes to the service whatever the user's bucket")
        e = p.access_entry(resp.request_id) or {}
        t.eq(e.get("reason"), "create-service", "the access log says create-service")

        harness.change_flags(t, srv, p, "kill", ("flag", "kill", "users-write"))
        resp = p.request("POST", "/service/x", {"X-User-Id": "u9", "X-Echo-Location": "/api/users/u-killed"}, b"{}")
        e = p.access_entry(resp.request_id) or {}
        t.eq((resp.header("X-Cutover-Route"), e.get("reason")), ("legacy", "kill"),
             "after a kill the create goes to legacy (reason kill), like every other request")
        ok = harness.poll(lambda: "u-killed" in stream_users(r, "created"), 5)
        t.ok(ok, "and the new user is enqueued", repr(stream_users(r, "created")))

        resp = p.request("PUT", "/service/x", {"X-User-Id": "u9"}, b"{}")
        t.eq(resp.header("X-Cutover-Route"), "legacy", "other writes on that route still go by the flag (killed)")
        rc = p.stop()
        t.ok(rc == 0, "the proxy exits 0 on SIGTERM", p.log_tail())
        legacy.stop()
        service.stop()


if __name__ == "__main__":
    harness.main(body, programs=("cutover-proxy",))
