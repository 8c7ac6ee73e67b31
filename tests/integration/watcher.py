#!/usr/bin/python3
"""
watcher.py - `cutoverctl flag watch` (the watcher the proxy uses) as a
long-running child: initial snapshot and live state, kill propagation
latency measured against the audit stream, cohort and create/delete
changes, the once-a-second version check that catches a missed PUBLISH,
bad data that must not replace the last good snapshot, and shutdown on
SIGTERM/SIGINT.
"""
import json
import re
import signal
import statistics
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import PREFIX, run_ctl

P = PREFIX


def k(suffix):
    return "%s:%s" % (P, suffix)


def version(r):
    return int(r.get(k("flags:version")) or 0)


def next_change(w, timeout=5.0):
    return w.wait_for(lambda e: e.get("event") != "state" or not e.get("change", "").startswith("live"), timeout)


def changed_version(out):
    m = re.search(r"\(version (\d+)\)$", out.strip())
    return int(m.group(1)) if m else None


def audit_ms(r, ver):
    """The ms timestamp of the audit entry that made version ver."""
    for entry_id, fields in r.xrevrange(k("flags:audit"), count=50):
        if fields.get("version") == str(ver):
            return int(entry_id.split("-")[0])
    return None


def poll(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_start(t, srv, r, w, wh):
    v = version(r)
    snap = w.wait_for(lambda e: True, 10)
    t.ok(snap and snap.get("event") == "snapshot" and snap.get("version") == v
         and snap.get("change") == "loaded 1 flags, 1 cohorts" and isinstance(snap.get("applied_at_us"), int)
         and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", snap.get("time", "")),
         "first line: snapshot event with time, applied_at_us, version and what was loaded", repr(snap))
    live = w.wait_for(lambda e: True, 5)
    want = "live: Redis at redis://127.0.0.1:%d/0, snapshot version %d" % (srv.port, v)
    t.ok(live and live.get("event") == "state" and live.get("change") == want and "version" not in live,
         "then a state event: live, with the URL and the snapshot version", "%r\nwant change %r" % (live, want))
    first = wh.wait_for(lambda line: True, 10)
    second = wh.wait_for(lambda line: True, 5)
    t.ok(first and re.match(r"^\S+Z v%d loaded 1 flags, 1 cohorts$" % v, first)
         and second and second.endswith("Z " + want),
         "without --json: the same as readable lines", "%r\n%r" % (first, second))


def test_kill_propagation(t, r, w, wh):
    latencies, why = [], []
    first_kill = None
    for i in range(5):
        for verb, text in (("kill", "kill false -> true"), ("unkill", "kill true -> false")):
            rc, out, err = run_ctl("flag", verb, "kf")
            ver = changed_version(out)
            if rc != 0 or ver is None:
                why.append("%s: exit %s out %r err %r" % (verb, rc, out, err))
                continue
            first_kill = first_kill or ver
            e = next_change(w)
            if e is None or (e.get("event"), e.get("version"), e.get("subject"), e.get("change")) != \
                    ("change", ver, "kf", text):
                why.append("after %s (version %d) the watcher printed %r" % (verb, ver, e))
                continue
            ms = audit_ms(r, ver)
            if ms is None:
                why.append("no audit entry for version %d" % ver)
                continue
            latency = (e["applied_at_us"] - ms * 1000) / 1000.0
            latencies.append(latency)
            t.diag("kill propagation: %.1f ms" % latency)
    t.ok(not why and len(latencies) == 10,
         "5 kill + 5 unkill: each reported once as a change of kf with its version", "\n".join(why))
    med = statistics.median(latencies) if latencies else float("inf")
    t.ok(med < 50, "kill propagation median %.1f ms < 50 ms (max %.1f ms)" % (med, max(latencies or [0])),
         repr(latencies))
    line = wh.wait_for(lambda line: " kf: " in line, 5)
    t.ok(line and re.match(r"^\S+Z v%d kf: kill false -> true$" % (first_kill or -1), line),
         "without --json: 'TIME vVERSION kf: kill false -> true'", repr(line))


def expect_change(t, w, args, subject, change, desc):
    rc, out, err = run_ctl(*args)
    e = next_change(w)
    got = e and (e.get("event"), e.get("subject"), e.get("change"))
    t.ok(rc == 0 and got == ("change", subject, change), desc,
         "exit %s err %r\nwatcher printed %r\nwant %r" % (rc, err, e, ("change", subject, change)))
    return e


def test_changes(t, r, w):
    expect_change(t, w, ("cohort", "add", "beta", "u7", "u8"), "cohort:beta", "added 2 members",
                  "cohort add: change of cohort:beta, 'added 2 members'")
    expect_change(t, w, ("cohort", "remove", "beta", "u1"), "cohort:beta", "removed 1 member",
                  "cohort remove: change of cohort:beta, 'removed 1 member'")
    expect_change(t, w, ("cohort", "add", "gamma", "z1"), "cohort:gamma", "added 1 member",
                  "a new cohort: change of cohort:gamma")
    expect_change(t, w, ("cohort", "remove", "gamma", "z1"), "cohort:gamma", "removed 1 member",
                  "its last member removed: change of cohort:gamma")
    e = expect_change(t, w, ("flag", "create", "nf"), "nf", "created", "flag create: change of nf, 'created'")
    t.ok(e and e.get("version") == version(r), "the change line carries the store version", repr(e))
    expect_change(t, w, ("flag", "set", "nf", "--percent", "12.5%", "--owner", "me"), "nf",
                  'percent 0% -> 12.5%, owner "" -> "me"', "flag set: the change text lists every field")
    expect_change(t, w, ("flag", "delete", "nf"), "nf", "deleted", "flag delete: change of nf, 'deleted'")


def test_missed_publish(t, r, w):
    f = json.loads(r.get(k("flag:kf")))
    f["percent"] = 1234
    pipe = r.pipeline(transaction=True)
    pipe.set(k("flag:kf"), json.dumps(f, separators=(",", ":")))
    pipe.incr(k("flags:version"))
    ver = pipe.execute()[1]
    t0 = time.monotonic()
    e = next_change(w, timeout=3)
    dt = time.monotonic() - t0
    t.ok(e and (e.get("version"), e.get("subject"), e.get("change")) == (ver, "kf", "percent 50% -> 12.34%"),
         "a change written without PUBLISH is reported within 3 s by the version check (%.2f s)" % dt, repr(e))

    f["percent"] = 4321
    pipe = r.pipeline(transaction=True)
    pipe.set(k("flag:kf"), json.dumps(f, separators=(",", ":")))
    pipe.set(k("flags:version"), ver - 5)
    pipe.execute()
    t0 = time.monotonic()
    e = next_change(w, timeout=3)
    dt = time.monotonic() - t0
    t.ok(e and (e.get("version"), e.get("subject"), e.get("change")) == (ver - 5, "kf", "percent 12.34% -> 43.21%"),
         "a smaller version (Redis restored from an older dump) is picked up too (%.2f s)" % dt, repr(e))


def test_bad_data(t, r, w):
    good = r.get(k("flag:kf"))
    r.set(k("flag:kf"), '{"name":"kf","colour":"red"}')
    r.publish(k("flags:changed"), r.incr(k("flags:version")))
    t.ok(poll(lambda: w.stderr().count("rejected new snapshot") >= 1, 5) and "colour" in w.stderr(),
         "bad JSON in Redis: the watcher logs that it rejected the snapshot, naming the problem", w.stderr())
    rc, out, err = run_ctl("flag", "create", "after-bad")
    t.ok(rc == 0 and poll(lambda: w.stderr().count("rejected new snapshot") >= 2, 5),
         "while the bad flag is there every reload is rejected", "exit %s err %r\n%s" % (rc, err, w.stderr()))
    r.set(k("flag:kf"), good)
    r.publish(k("flags:changed"), r.incr(k("flags:version")))
    e = next_change(w)
    t.ok(e and (e.get("event"), e.get("subject"), e.get("change"), e.get("version")) ==
         ("change", "after-bad", "created", version(r)),
         "repaired: the next line is the flag created meanwhile (kept the last good snapshot, stayed live)", repr(e))


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        for args in (("flag", "create", "kf"), ("flag", "enable", "kf"), ("flag", "set", "kf", "--percent", "50%"),
                     ("cohort", "add", "beta", "u1")):
            run_ctl(*args)
        w = harness.Watch()
        wh = harness.Watch(json=False)
        test_start(t, srv, r, w, wh)
        test_kill_propagation(t, r, w, wh)
        test_changes(t, r, w)
        test_missed_publish(t, r, w)
        test_bad_data(t, r, w)

        t0 = time.monotonic()
        rc = w.stop(signal.SIGTERM, timeout=3)
        dt = time.monotonic() - t0
        t.ok(rc == 0 and dt < 2, "SIGTERM: the watcher exits 0 promptly (%.2f s), no sanitizer report" % dt,
             "exit %s\n%s" % (rc, w.stderr()))
        t.ok(all(isinstance(e, dict) for e in w.events) and
             not [e for e in w.events if e.get("event") == "state" and not e["change"].startswith("live")],
             "every line was JSON and the watcher never left the live state", repr(w.events[-3:]))
        rc = wh.stop(signal.SIGINT, timeout=3)
        t.ok(rc == 0, "SIGINT: exits 0, no sanitizer report", "exit %s\n%s" % (rc, wh.stderr()))


if __name__ == "__main__":
    harness.main(body)
