#!/usr/bin/python3
"""
redis_down.py - Redis goes away and comes back: the watcher keeps its
snapshot (fail-static), says it is disconnected, reconnects on the same
port and applies changes again; cutoverctl exits 3 and writes nothing
while Redis is down; a Redis restored from an older dump is followed.
"""
import json
import os
import select
import signal
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import PREFIX, run_ctl

P = PREFIX


def k(suffix):
    return "%s:%s" % (P, suffix)


class SilentProxy:
    """A TCP proxy to Redis whose open connections can be made to go
    silent (bytes swallowed, sockets kept open: a half-open link, as after
    a network partition or a crashed NAT) while new connections still pass."""

    def __init__(self, port):
        self.target = port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs, self.silent, self.closed = [], set(), False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            pair = (c, u)
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair):
        c, u = pair
        try:
            while not self.closed:
                ready, _, _ = select.select([c, u], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if pair not in self.silent:
                        (u if s is c else c).sendall(data)
        except OSError:
            return
        finally:
            c.close()
            u.close()

    def go_silent(self):
        with self.lock:
            self.silent.update(self.pairs)

    def close(self):
        self.closed = True
        self.lsock.close()


def black_hole():
    """A listener whose accept queue is full: connects to it hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(lsock.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    return lsock, fillers


def test_connect_timeout(t):
    lsock, fillers = black_hole()
    url = "redis://127.0.0.1:%d/0" % lsock.getsockname()[1]
    w = harness.Watch(redis_url=url)
    t0 = time.monotonic()
    e = w.wait_for(lambda e: True, 5)
    dt = time.monotonic() - t0
    t.ok(e and e.get("event") == "state" and e["change"].startswith("disconnected: ") and url in e["change"]
         and "no answer within 2 s" in e["change"] and dt < 4.5,
         "watcher whose connect is never answered: 'disconnected' after the 2 s connect timeout (%.1f s)" % dt,
         repr(e))
    rc = w.stop()
    t.ok(rc == 0, "... and it still exits 0 on SIGTERM", "exit %s\n%s" % (rc, w.stderr()))
    for s in fillers + [lsock]:
        s.close()


def test_silent_link(t, srv):
    px = SilentProxy(srv.port)
    w = harness.Watch(redis_url="redis://127.0.0.1:%d/0" % px.port)
    live = w.wait_for(is_state("live"), 10)
    px.go_silent()
    rc, out, err = run_ctl("flag", "kill", "df")
    t0 = time.monotonic()
    e = w.wait_for(lambda e: e.get("event") == "change", 8)
    dt = time.monotonic() - t0
    t.ok(live and rc == 0 and e and (e.get("subject"), e.get("change")) == ("df", "kill false -> true"),
         "the link goes silent while live (half-open TCP): the kill made meanwhile still arrives within 8 s",
         "live %r, kill exit %s %r, after %.1f s the watcher printed %r" % (live, rc, err, dt, e))
    t.ok([x for x in w.events if x.get("event") == "state" and x["change"].startswith("disconnected")],
         "the silent link is reported as 'disconnected' rather than staying 'live'", repr(w.events[-3:]))
    rc = w.stop()
    t.ok(rc == 0, "... and the watcher exits 0 on SIGTERM", "exit %s\n%s" % (rc, w.stderr()))
    px.close()


def test_data_lost(t, srv, w):
    """Redis restarts empty (no persistence, dump gone): the watcher must
    not take 'no version' as 'no flags' and roll everyone back."""
    killed = w.wait_for(lambda e: e.get("event") == "change" and e.get("subject") == "df", 5)
    held = killed.get("version") if killed else None
    srv.stop(save=False)
    os.remove(os.path.join(srv.dir, "dump.rdb"))
    down = w.wait_for(is_state("disconnected"), 5)
    srv.start()
    e = w.wait_for(lambda e: True, 10)
    t.ok(down and held and e and e.get("event") == "state" and e["change"].startswith("live:")
         and e["change"].endswith("snapshot version %s" % held),
         "Redis back without its data: live again, still on snapshot version %s, no flag reported deleted" % held,
         "%r\n%r" % (down, e))
    t.ok(poll(lambda: "no flags version" in w.stderr(), 5), "... and the watcher logs that the data looks lost",
         w.stderr()[-2000:])
    rc, out, err = run_ctl("flag", "create", "fresh")
    e = w.wait_for(lambda e: e.get("event") == "change" and e.get("subject") == "fresh", 5)
    t.ok(rc == 0 and e and e.get("change") == "created" and e.get("version") == 1,
         "once a flag is written again the watcher follows the new data (version 1)", "%r %r" % (e, err))


def poll(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def is_state(prefix):
    return lambda e: e.get("event") == "state" and e.get("change", "").startswith(prefix)


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        for args in (("flag", "create", "df"), ("flag", "enable", "df"), ("flag", "set", "df", "--percent", "20%"),
                     ("flag", "create", "df2"), ("cohort", "add", "beta", "u1")):
            run_ctl(*args)
        v = int(r.get(k("flags:version")))
        before = r.get(k("flag:df"))
        url = "redis://127.0.0.1:%d/0" % srv.port

        w = harness.Watch()
        snap = w.wait_for(lambda e: e.get("event") == "snapshot", 10)
        live = w.wait_for(is_state("live"), 5)
        t.ok(snap and snap.get("version") == v and live, "watcher: snapshot version %d, then live" % v,
             "%r %r" % (snap, live))

        srv.stop(save=True)
        e = w.wait_for(lambda e: e.get("event") == "state", 5)
        t.ok(e and e["change"].startswith("disconnected: ") and url in e["change"]
             and "keeping snapshot version %d" % v in e["change"],
             "Redis stopped: state 'disconnected' with the URL, keeping snapshot version %d" % v, repr(e))

        t0 = time.monotonic()
        rc, out, err = run_ctl("flag", "list")
        dt = time.monotonic() - t0
        t.ok(rc == 3 and url in err and dt < 2, "flag list while Redis is down: exit 3 with the URL (%.2f s)" % dt,
             "exit %s err %r" % (rc, err))
        rc, out, err = run_ctl("flag", "set", "df", "--percent", "40%")
        t.ok(rc == 3 and url in err, "flag set while Redis is down: exit 3", "exit %s err %r" % (rc, err))
        rc, out, err = run_ctl("flag", "kill", "df")
        t.ok(rc == 3, "flag kill while Redis is down: exit 3", "exit %s err %r" % (rc, err))

        # A second watcher started while Redis is down.
        w2 = harness.Watch()
        e2 = w2.wait_for(lambda e: True, 5)
        t.ok(e2 and e2.get("event") == "state" and e2["change"].startswith("disconnected: ") and url in e2["change"],
             "a watcher started while Redis is down reports 'disconnected' with the URL", repr(e2))

        srv.start()
        t.ok(r.get(k("flag:df")) == before and int(r.get(k("flags:version"))) == v,
             "after the restart (same port and dir) the data is back, the failed set wrote nothing",
             "flag %r version %r" % (r.get(k("flag:df")), r.get(k("flags:version"))))
        t0 = time.monotonic()
        e = w.wait_for(lambda e: True, 10)
        dt = time.monotonic() - t0
        t.ok(e and e.get("event") == "state" and e["change"] ==
             "live: Redis at %s, snapshot version %d" % (url, v),
             "the watcher is live again %.1f s after the restart, same snapshot version" % dt, repr(e))

        rc, out, err = run_ctl("flag", "kill", "df")
        e = w.wait_for(lambda e: True, 5)
        t.ok(rc == 0 and e and (e.get("event"), e.get("subject"), e.get("change"), e.get("version")) ==
             ("change", "df", "kill false -> true", v + 1),
             "after reconnecting, the next line is the kill (no flag reported deleted or created)",
             "exit %s err %r\nwatcher printed %r" % (rc, err, e))
        e = w2.wait_for(lambda e: e.get("event") == "snapshot", 10)
        live2 = w2.wait_for(lambda e: True, 5)
        t.ok(e and e.get("change") == "loaded 2 flags, 1 cohorts" and live2 and live2["change"].startswith("live:"),
             "the watcher started while Redis was down loads the snapshot and goes live", "%r %r" % (e, live2))

        # Down again without saving: Redis comes back with the older dump
        # (version v, df not killed), and the watcher must follow it.
        srv.stop(save=False)
        e = w.wait_for(lambda e: True, 5)
        t.ok(e and e["change"].startswith("disconnected: ") and "keeping snapshot version %d" % (v + 1) in e["change"],
             "stopped without saving: disconnected, keeping version %d" % (v + 1), repr(e))
        srv.start()
        e1 = w.wait_for(lambda e: True, 10)
        e2 = w.wait_for(lambda e: True, 5)
        got = sorted([(x.get("event"), x.get("subject"), x.get("change"), x.get("version")) for x in (e1, e2) if x],
                     key=lambda x: x[0])
        t.ok(len(got) == 2 and got[0] == ("change", "df", "kill true -> false", v) and got[1][0] == "state"
             and got[1][2] == "live: Redis at %s, snapshot version %d" % (url, v),
             "Redis restored from an older dump: the watcher goes live on it and reports the kill undone",
             "%r\n%r" % (e1, e2))
        t.eq(json.loads(r.get(k("flag:df")))["kill"], False, "(the dump indeed held df unkilled)")

        test_silent_link(t, srv)
        test_connect_timeout(t)
        test_data_lost(t, srv, w)

        for name, watcher in (("first", w), ("second", w2)):
            rc = watcher.stop(signal.SIGTERM, timeout=3)
            t.ok(rc == 0, "SIGTERM: the %s watcher exits 0, no sanitizer report" % name,
                 "exit %s\n%s" % (rc, watcher.stderr()))


if __name__ == "__main__":
    harness.main(body)
