#!/usr/bin/python3
"""
ctl_syncback.py - what `cutoverctl flag kill | rollback` and `cutoverctl
migration status` say about sync-back, against a real redis-server. The
test plays the sync-back consumer itself with real XREADGROUP / XACK /
XADD-to-dead-letter commands (the contract of `cutover-migrate syncback`):

  - the line after a kill or rollback: pending and not-yet-read counts,
    the age of the oldest unacked event, dead letters; "up to date"; no
    consumer group; nothing at all when there is no events stream; the
    same as JSON; --events naming another stream; a lag Redis cannot tell
  - --wait-synced: returns once every event up to the change is acked,
    not waiting for events added after it; a timeout (exit 5, naming what
    is pending); events dead-lettered meanwhile (exit 6, named); no group
    (exit 5 at once); option errors
  - `migration status`: the sync-back section, text and JSON
  - `migration dead --syncback list | retry [ID...]`: the dead letters,
    text and JSON; retry of all and of one user (a copy of the event on
    the events stream, the dead letter and attempts gone, the group
    delivering it again); an event trimmed meanwhile (entry left, exit
    8); unknown users; two retries at once moving each entry once; and
    end to end with the real `cutover-migrate syncback` and legacy
    MongoDB (tests/mongo_double.py, or CUTOVER_TEST_MONGO_URI): an
    update dead-lettered as not-in-legacy, applied after the retry
"""

import json
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import PREFIX, Process, ctl_argv, poll, run_ctl  # noqa: E402

GROUP = "syncback"
EXIT_NOT_SYNCED = 5
EXIT_DEAD_LETTERED = 6
EXIT_INVALID = 4
EXIT_NOT_RETRIED = 8
LINE = re.compile(r"^sync-back: legacy may be up to (\d+) events / (\d+\.\d) s behind "
                  r"\((\d+) pending, (\d+) not yet read; (\d+) dead-lettered\)$")
# `migration dead --syncback list`: time, the dead letter's id, its fields.
DEAD_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\d+-\d+) event=(\S+) user=(\S+) type=(\S+) "
                       r"version=(\d+) reason=(\S+) attempts=(\d+) error=(.*)$")


def events_key(prefix):
    return prefix + ":service:events"


def dead_key(prefix):
    return prefix + ":syncback:dead"


def attempts_key(prefix):
    return prefix + ":syncback:attempts"


def add_events(r, key, users, ids=None):
    """XADDs one event per user, as the users service does; returns the ids."""
    out = []
    for i, user in enumerate(users):
        out.append(r.xadd(key, {"type": "USER_UPDATED", "user": user, "version": str(i + 1),
                                "fields": json.dumps({"name": "N" + user}), "at": str(int(time.time() * 1000))},
                          id=ids[i] if ids else "*"))
    return out


def read(r, key, consumer, count):
    """XREADGROUP of up to count new entries: their ids."""
    got = r.xreadgroup(GROUP, consumer, {key: ">"}, count=count)
    return [entry_id for _, entries in got for entry_id, _ in entries]


def dead_letter(r, prefix, key, entry_id, fields, reason="mapping", error="field name too long"):
    """What sync-back does when it gives up on an event: XADD to the
    dead-letter stream, then XACK."""
    r.xadd(dead_key(prefix), {"entry": entry_id, "user": fields["user"], "type": fields["type"],
                              "version": fields["version"], "reason": reason, "error": error, "attempts": "3",
                              "at": str(int(time.time() * 1000))})
    r.xack(key, GROUP, entry_id)


def id_le(a, b):
    return tuple(map(int, a.split("-"))) <= tuple(map(int, b.split("-")))


def redis_ms(r):
    sec, usec = r.time()
    return sec * 1000 + usec // 1000


def flag(r, prefix, name):
    text = r.get("%s:flag:%s" % (prefix, name))
    return json.loads(text) if text else None


def setup_flag(prefix, name):
    for args in (("create", name), ("enable", name), ("set", name, "--percent", "50%")):
        run_ctl("flag", *args, prefix=prefix)


def grouped(r, suffix):
    """A prefix of its own with flag f at 50% and an empty events stream
    with the syncback group: (prefix, events key)."""
    p = PREFIX + suffix
    setup_flag(p, "f")
    r.xgroup_create(events_key(p), GROUP, id="0", mkstream=True)
    return p, events_key(p)


def jline(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


class Consumer(threading.Thread):
    """A sync-back consumer: reads new events in small batches and acks
    each one, slowly (ack_delay), except that it dead-letters the users in
    dead, never acks the users in hold, and keeps the ids in gate pending
    until release() is called."""

    def __init__(self, srv, prefix, name="c1", dead=(), hold=(), gate=(), ack_delay=0.02):
        super().__init__(daemon=True)
        self.r = srv.client()
        self.prefix = prefix
        self.key = events_key(prefix)
        self.name = name
        self.dead, self.hold, self.gate = set(dead), set(hold), set(gate)
        self.ack_delay = ack_delay
        self.acked = []
        self.dead_lettered = []
        self.held = []
        self.gated = []
        self.released = threading.Event()
        self.stopping = threading.Event()
        self.error = None

    def release(self):
        self.released.set()

    def stop(self):
        self.stopping.set()
        self.join(10)
        self.r.close()

    def run(self):
        try:
            while not self.stopping.is_set():
                got = self.r.xreadgroup(GROUP, self.name, {self.key: ">"}, count=5, block=100)
                for _, entries in got:
                    for entry_id, fields in entries:
                        self.handle(entry_id, fields)
                if self.gated and self.released.is_set():
                    for entry_id in self.gated:
                        self.r.xack(self.key, GROUP, entry_id)
                        self.acked.append(entry_id)
                    self.gated = []
        except Exception as e:  # the test point that waits on us says so
            self.error = repr(e)

    def handle(self, entry_id, fields):
        if fields["user"] in self.hold:
            self.held.append(entry_id)
        elif entry_id in self.gate:
            self.gated.append(entry_id)
        elif fields["user"] in self.dead:
            time.sleep(self.ack_delay)
            dead_letter(self.r, self.prefix, self.key, entry_id, fields)
            self.dead_lettered.append(entry_id)
        else:
            time.sleep(self.ack_delay)  # applying it to legacy
            self.r.xack(self.key, GROUP, entry_id)
            self.acked.append(entry_id)


def start_ctl(prefix, *args, json_out=False):
    """cutoverctl ARGS as a child whose stdout can be read while it runs."""
    return Process(ctl_argv(list(args), prefix=prefix, json=json_out), name="cutoverctl", read_stdout=True)


def finish(p, timeout=60):
    """Waits for the child: (exit status, the stdout lines not yet read)."""
    rc = p.wait(timeout)
    lines = []
    while True:
        line = p.wait_line(lambda _: True, timeout=5)
        if line is None:
            break
        lines.append(line)
    p.stop()
    return rc, lines


# --- the line after a kill or rollback -------------------------------------

def test_no_stream(t, srv, r):
    p = PREFIX + "n"
    setup_flag(p, "f")
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    t.ok(rc == 0 and out == "f: kill false -> true (version 4)\n" and "sync-back" not in err,
         "no events stream: kill prints its change line and nothing about sync-back (not in use)",
         "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = run_ctl("flag", "rollback", "f", prefix=p, json=True)
    doc = jline(out)
    t.ok(rc == 0 and doc is not None and doc.get("syncback", "absent") is None
         and doc.get("change") == "enabled true -> false, percent 50% -> 0%",
         "--json rollback: the change object with \"syncback\": null", "exit %s out %r" % (rc, out))
    rc, out, err = run_ctl("flag", "kill", "f", "--wait-synced", prefix=p)
    t.ok(rc == EXIT_NOT_SYNCED and "no stream %s" % events_key(p) in err and "nothing to wait for" in err
         and flag(r, p, "f")["kill"],
         "--wait-synced without an events stream: exit 5 at once, names the missing stream",
         "exit %s err %r" % (rc, err))


def test_no_group(t, srv, r):
    p = PREFIX + "g"
    setup_flag(p, "f")
    add_events(r, events_key(p), ["u1", "u2"])
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    t.eq(out.splitlines(), ["f: kill false -> true (version 4)",
                            'sync-back: no consumer group "syncback" on %s' % events_key(p)],
         "events stream without a syncback group: kill says there is no consumer group, naming the stream")
    t.ok(rc == 0 and flag(r, p, "f")["kill"], "and exits 0, the flag killed", "exit %s err %r" % (rc, err))
    rc, out, err = run_ctl("flag", "rollback", "f", prefix=p, json=True)
    sb = (jline(out) or {}).get("syncback") or {}
    t.ok(rc == 0 and sb.get("state") == "no-group" and sb.get("stream") == events_key(p) and sb.get("unread") == 2
         and sb.get("consumers") == [],
         "--json: syncback.state no-group, both events unread", "exit %s out %r" % (rc, out))
    started = time.monotonic()
    rc, out, err = run_ctl("flag", "rollback", "f", "--wait-synced", "--timeout", "30", prefix=p, timeout=60)
    t.ok(rc == EXIT_NOT_SYNCED and 'no consumer group "syncback" on %s' % events_key(p) in err
         and "nothing to wait for" in err and "waiting for sync-back" not in err,
         "--wait-synced without a group fails clearly (exit 5) instead of waiting out its timeout",
         "exit %s after %.1f s, err %r" % (rc, time.monotonic() - started, err))


def test_behind(t, srv, r):
    p = PREFIX + "b"
    key = events_key(p)
    setup_flag(p, "f")
    # Ten events written five seconds ago (explicit ids: their age is known).
    base = redis_ms(r) - 5000
    ids = add_events(r, key, ["u%d" % i for i in range(10)], ids=["%d-%d" % (base + i, 0) for i in range(10)])
    r.xgroup_create(key, GROUP, id="0")
    got = read(r, key, "c1", 4)
    r.xack(key, GROUP, got[0])
    r.xadd(dead_key(p), {"entry": "1-1", "user": "old", "type": "USER_UPDATED", "version": "1", "reason": "mapping",
                         "error": "x", "attempts": "3", "at": "0"})
    low = (redis_ms(r) - (base + 1)) / 1000.0
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    high = (redis_ms(r) - (base + 1)) / 1000.0
    lines = out.splitlines()
    m = LINE.match(lines[1]) if len(lines) == 2 else None
    t.ok(rc == 0 and lines[0] == "f: kill false -> true (version 4)" and m
         and m.group(1, 3, 4, 5) == ("9", "3", "6", "1"),
         "kill: legacy may be up to 9 events behind (3 pending, 6 not yet read; 1 dead-lettered)",
         "exit %s out %r err %r" % (rc, out, err))
    age = float(m.group(2)) if m else -1
    t.ok(low - 0.06 <= age <= high + 0.06,
         "the age is that of the oldest unacked event (the first pending one): %.1f s, within [%.2f, %.2f]"
         % (age, low, high))
    low = (redis_ms(r) - (base + 1)) / 1000.0
    rc, out, err = run_ctl("flag", "rollback", "f", prefix=p, json=True)
    high = (redis_ms(r) - (base + 1)) / 1000.0
    doc = jline(out) or {}
    sb = doc.get("syncback") or {}
    t.ok(rc == 0 and doc.get("subject") == "f" and sb.get("state") == "behind" and sb.get("stream") == key
         and (sb.get("pending"), sb.get("unread"), sb.get("behind"), sb.get("dead")) == (3, 6, 9, 1)
         and sb.get("dead_stream") == dead_key(p) and low - 0.002 <= sb.get("oldest_unacked_s", -1) <= high + 0.002,
         "--json rollback: syncback pending 3, unread 6, behind 9, dead 1, oldest_unacked_s %.3f in [%.3f, %.3f]"
         % (sb.get("oldest_unacked_s", -1), low, high), "exit %s out %r" % (rc, out))
    t.ok([(c.get("name"), c.get("pending")) for c in sb.get("consumers", [])] == [("c1", 3)]
         and sb["consumers"][0].get("idle_ms", -1) >= 0,
         "and the consumers: c1 with 3 pending and its idle time", repr(sb.get("consumers")))
    # Everything read and acked: the oldest unacked is now the first never read.
    for entry_id in got[1:] + read(r, key, "c1", 3):
        r.xack(key, GROUP, entry_id)
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    m = LINE.match(out.splitlines()[-1])
    t.ok(m and m.group(1, 3, 4) == ("3", "0", "3") and float(m.group(2)) >= 4.9,
         "with nothing pending: 3 events not yet read, aged from the first unread one (>= 4.9 s)", out)
    for entry_id in read(r, key, "c2", 10):
        r.xack(key, GROUP, entry_id)
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    t.eq(out.splitlines()[-1], "sync-back: legacy is up to date but for 1 dead-lettered events, which never "
         "reached it (%s)" % dead_key(p), "all acked but one event dead-lettered: up to date, but for that one")
    r.delete(dead_key(p))
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    t.ok(rc == 0 and out == "f: no change\nsync-back: legacy is up to date\n",
         "all acked, nothing dead: \"sync-back: legacy is up to date\" (also after a kill that changed nothing)",
         "exit %s out %r" % (rc, out))
    rc, out, err = run_ctl("flag", "rollback", "f", prefix=p, json=True)
    sb = (jline(out) or {}).get("syncback") or {}
    t.ok(sb.get("state") == "up-to-date" and sb.get("behind") == 0 and sb.get("oldest_unacked_s") == 0
         and {c["name"]: c["pending"] for c in sb.get("consumers", [])} == {"c1": 0, "c2": 0},
         "--json: state up-to-date, behind 0, oldest_unacked_s 0, both consumers with nothing pending", out)


def test_events_option(t, srv, r):
    p = PREFIX + "e"
    setup_flag(p, "f")
    other = "svc-%s:changes" % p
    add_events(r, other, ["u1", "u2", "u3"])
    r.xgroup_create(other, GROUP, id="0")
    read(r, other, "c1", 1)
    rc, out, err = run_ctl("--events", other, "flag", "kill", "f", prefix=p)
    m = LINE.match(out.splitlines()[-1])
    t.ok(rc == 0 and m and m.group(1, 3, 4) == ("3", "1", "2"),
         "--events KEY: the state of that stream (3 behind: 1 pending, 2 unread)", "exit %s out %r" % (rc, out))
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    t.eq(out, "f: no change\n", "without --events, the default <prefix>:service:events (absent here): no line")
    rc, out, err = run_ctl("--events", "", "flag", "kill", "f", prefix=p)
    t.ok(rc == 4 and "--events" in err, "--events '' is an invalid value (exit 4)", "exit %s err %r" % (rc, err))
    r.set(p + ":notastream", "x")
    rc, out, err = run_ctl("--events", p + ":notastream", "flag", "kill", "f", prefix=p)
    t.ok(rc == 4 and out.startswith("f: no change\n") and "is a string, not a stream" in err,
         "--events naming a string: the change is still printed, then exit 4 naming the key's type",
         "exit %s out %r err %r" % (rc, out, err))


def test_unknown_lag(t, srv, r):
    """Deleting an entry after the group's position leaves Redis 7 unable
    to tell the lag (nil): cutoverctl counts the entries instead."""
    p = PREFIX + "l"
    key = events_key(p)
    setup_flag(p, "f")
    ids = add_events(r, key, ["u%d" % i for i in range(6)])
    r.xgroup_create(key, GROUP, id="0")
    for entry_id in read(r, key, "c1", 2):
        r.xack(key, GROUP, entry_id)
    r.xdel(key, ids[3])
    lag = [g.get("lag", "absent") for g in r.xinfo_groups(key)]
    t.diag("Redis reports the group's lag as %r" % lag)
    rc, out, err = run_ctl("flag", "kill", "f", prefix=p)
    m = LINE.match(out.splitlines()[-1])
    t.ok(rc == 0 and m and m.group(1, 3, 4) == ("3", "0", "3"),
         "an entry deleted after the group's position: 3 not yet read, counted (Redis says lag %r)" % lag, out)


# --- --wait-synced ------------------------------------------------------------

def test_wait_synced(t, srv, r):
    p, key = grouped(r, "w")
    before = add_events(r, key, ["w%02d" % i for i in range(20)])
    started = time.monotonic()
    ctl = start_ctl(p, "flag", "kill", "f", "--wait-synced", "--timeout", "120")
    change = ctl.wait_line(lambda line: True, timeout=30)
    state = ctl.wait_line(lambda line: True, timeout=30)
    t.ok(change == "f: kill false -> true (version 4)" and state and LINE.match(state)
         and LINE.match(state).group(1, 3, 4) == ("20", "0", "20"),
         "--wait-synced: the change and the sync-back line come out first (20 events not yet read)",
         "%r / %r" % (change, state))
    # The service goes on writing after the kill; those are not waited for,
    # and this consumer never gets to acknowledge them.
    after = add_events(r, key, ["after-kill"] * 5)
    consumer = Consumer(srv, p, hold={"after-kill"}, gate={before[-1]})
    consumer.start()
    gated = poll(lambda: len(consumer.acked) == 19 and consumer.gated == [before[-1]]
                 and len(consumer.held) == 5, 60)
    t.ok(gated, "the consumer acked 19 of the 20 events, holds the 20th, and the 5 written after the kill",
         "acked %d gated %r held %d error %s" % (len(consumer.acked), consumer.gated, len(consumer.held),
                                                 consumer.error))
    said = ctl.wait_stderr("waiting for sync-back to apply the events up to %s" % before[-1], timeout=30)
    t.ok(said and ctl.alive(),
         "while the 20th is pending cutoverctl keeps waiting, and says so on stderr naming the last event "
         "before the kill (%s), not one after" % before[-1], ctl.stderr())
    progress_lines = ctl.stderr().count("waiting for sync-back")
    consumer.release()
    rc, lines = finish(ctl, timeout=60)
    elapsed = time.monotonic() - started
    t.ok(rc == 0 and len(lines) == 1
         and re.match(r"^sync-back: legacy has every event up to %s after \d+\.\d s; 0 dead-lettered meanwhile$"
                      % re.escape(before[-1]), lines[0]),
         "once the 20th is acked it returns 0: legacy has every event up to the kill, 0 dead-lettered",
         "exit %s lines %r stderr %r" % (rc, lines, ctl.stderr()))
    pending = r.xpending(key, GROUP)
    t.ok(pending["pending"] == 5 and pending["min"] == after[0] and id_le(before[-1], pending["min"])
         and not r.xpending_range(key, GROUP, "-", before[-1], 10),
         "it returned with the 5 later events still pending: they were not waited for", repr(pending))
    lines_said = ctl.stderr().count("waiting for sync-back")
    t.ok(1 <= progress_lines and lines_said <= elapsed + 1,
         "progress on stderr at most once a second (%d lines in %.1f s)" % (lines_said, elapsed), ctl.stderr())
    consumer.stop()
    t.ok(consumer.error is None, "the consumer thread ran without an error", consumer.error)
    # Nothing left up to the change: returns at once.
    for entry_id in consumer.held:
        r.xack(key, GROUP, entry_id)
    rc, out, err = run_ctl("flag", "rollback", "f", "--wait-synced", prefix=p, json=True)
    docs = [jline(line) for line in out.splitlines()]
    wait = (docs[-1] or {}).get("wait", {}) if docs else {}
    t.ok(rc == 0 and len(docs) == 2 and docs[0].get("syncback", {}).get("state") == "up-to-date"
         and wait.get("synced") is True and wait.get("until") == after[-1] and wait.get("pending") == 0
         and wait.get("unread") == 0 and wait.get("dead_lettered") == [],
         "--json --wait-synced when caught up: the change object, then {\"wait\":{\"synced\":true,...}}",
         "exit %s out %r err %r" % (rc, out, err))


def test_wait_timeout(t, srv, r):
    p, key = grouped(r, "t")
    ids = add_events(r, key, ["stuck", "t2", "t3"])
    read(r, key, "c1", 1)  # delivered, never acked
    rc, out, err = run_ctl("flag", "kill", "f", "--wait-synced", "--timeout", "1", prefix=p, timeout=60)
    t.ok(rc == EXIT_NOT_SYNCED and out.startswith("f: kill false -> true (version 4)\nsync-back: legacy may be")
         and "timed out after 1 s waiting for sync-back to apply the events up to %s on %s" % (ids[-1], key) in err
         and "1 delivered but not acknowledged, 2 not yet read by any consumer" in err
         and re.search(r"%s user stuck: consumer c1, idle \d+\.\d s, 1 deliveries" % re.escape(ids[0]), err),
         "--wait-synced --timeout 1 with one event stuck and two unread: exit 5, names the stuck event, its "
         "user and consumer, and counts the unread", "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = run_ctl("flag", "rollback", "f", "--wait-synced", "--timeout", "0.5", prefix=p, json=True,
                           timeout=60)
    docs = [jline(line) for line in out.splitlines()]
    wait = (docs[-1] or {}).get("wait", {}) if docs else {}
    t.ok(rc == EXIT_NOT_SYNCED and len(docs) == 2 and wait.get("synced") is False and wait.get("until") == ids[-1]
         and (wait.get("pending"), wait.get("unread")) == (1, 2) and "timed out after 0.5 s" in err,
         "--json: {\"wait\":{\"synced\":false,\"pending\":1,\"unread\":2,...}}, exit 5",
         "exit %s out %r err %r" % (rc, out, err))
    for args, want, what in ((("--timeout", "5"), 1, "--timeout without --wait-synced is a usage error"),
                             (("--wait-synced", "--timeout", "0"), 4, "--timeout 0 is invalid"),
                             (("--wait-synced", "--timeout", "soon"), 4, "--timeout soon is invalid"),
                             (("--wait-synced", "--timeout", "nan"), 4, "--timeout nan is invalid"),
                             (("--wait-synced", "--timeout"), 1, "--timeout without a value is a usage error")):
        before = flag(r, p, "f")
        rc, out, err = run_ctl("flag", "unkill", "f", prefix=p)
        rc, out, err = run_ctl("flag", "kill", "f", *args, prefix=p)
        t.ok(rc == want and not flag(r, p, "f")["kill"] and out == "",
             "%s (exit %d), nothing changed" % (what, want), "exit %s out %r err %r %r" % (rc, out, err, before))
    rc, out, err = run_ctl("flag", "enable", "f", "--wait-synced", prefix=p)
    t.ok(rc == 1 and "usage: cutoverctl flag enable" in err, "enable takes no --wait-synced (usage error)", err)


def test_dead_lettered(t, srv, r):
    p, key = grouped(r, "d")
    # A dead letter from before the kill is not "meanwhile".
    r.xadd(dead_key(p), {"entry": "1-1", "user": "older", "type": "USER_UPDATED", "version": "1", "reason": "mapping",
                         "error": "x", "attempts": "3", "at": "0"})
    ids = add_events(r, key, ["ok1", "bad1", "ok2", "bad2"])
    ctl = start_ctl(p, "flag", "kill", "f", "--wait-synced", "--timeout", "120")
    first = ctl.wait_line(lambda line: line.startswith("sync-back:"), timeout=30)
    consumer = Consumer(srv, p, dead={"bad1", "bad2"})
    consumer.start()
    rc, lines = finish(ctl, timeout=120)
    err = ctl.stderr()
    t.ok(first and rc == EXIT_DEAD_LETTERED and len(lines) == 1
         and re.match(r"^sync-back: legacy has every event up to %s after \d+\.\d s; 2 dead-lettered meanwhile "
                      r"\(NOT in legacy\)$" % re.escape(ids[-1]), lines[0]),
         "two events dead-lettered during the wait: exit 6, and the summary says 2 are NOT in legacy",
         "exit %s lines %r err %r" % (rc, lines, err))
    t.ok("WARNING: 2 events were dead-lettered while waiting: these changes did NOT reach legacy" in err
         and re.search(r"event %s user bad1 USER_UPDATED version 2: mapping after 3 attempts: field name too long"
                       % re.escape(ids[1]), err)
         and re.search(r"event %s user bad2 USER_UPDATED version 4: mapping" % re.escape(ids[3]), err)
         and "older" not in err and dead_key(p) in err,
         "stderr names each dead-lettered event (id, user, type, version, reason, attempts, error), not the "
         "older dead letter", err)
    consumer.stop()
    # The same in JSON, with one more dead-lettered during the wait.
    more = add_events(r, key, ["bad3", "ok3"])
    ctl = start_ctl(p, "flag", "rollback", "f", "--wait-synced", json_out=True)
    first = ctl.wait_line(lambda line: True, timeout=30)
    consumer = Consumer(srv, p, dead={"bad3"})
    consumer.start()
    rc, lines = finish(ctl, timeout=120)
    consumer.stop()
    change, wait = jline(first or "") or {}, (jline(lines[0]) if len(lines) == 1 else None) or {}
    dead = wait.get("wait", {}).get("dead_lettered", [])
    t.ok(rc == EXIT_DEAD_LETTERED and change.get("syncback", {}).get("unread") == 2
         and wait.get("wait", {}).get("synced") is True and wait["wait"].get("until") == more[-1]
         and [(d.get("entry"), d.get("user"), d.get("reason"), d.get("attempts")) for d in dead]
         == [(more[0], "bad3", "mapping", "3")],
         "--json: the wait object lists the event dead-lettered meanwhile (entry, user, reason...), exit 6",
         "exit %s first %r lines %r" % (rc, first, lines))


# --- migration status ----------------------------------------------------------

def status(prefix, json_out=False, events=None):
    args = (["--events", events] if events else []) + ["migration", "status"]
    return run_ctl(*args, prefix=prefix, json=json_out)


def test_status(t, srv, r):
    p = PREFIX + "s"
    key = events_key(p)
    rc, out, err = status(p)
    t.ok(rc == 0 and out.endswith("pending     none\nsync-back   not in use (no stream %s)\n" % key),
         "migration status without an events stream: sync-back not in use", "exit %s out %r" % (rc, out))
    rc, out, err = status(p, json_out=True)
    doc = jline(out) or {}
    t.ok(rc == 0 and doc.get("syncback", "absent") is None and doc.get("seen") == 0,
         "--json: \"syncback\": null", out)
    add_events(r, key, ["s1", "s2", "s3"])
    rc, out, err = status(p)
    t.ok(rc == 0 and 'sync-back   no consumer group "syncback" on %s\n  dead        0 (%s)\n' % (key, dead_key(p))
         in out, "events stream without a group: says so, and the dead-letter count", out)
    base = redis_ms(r) - 3000
    r.delete(key)
    add_events(r, key, ["s%d" % i for i in range(8)], ids=["%d-0" % (base + i) for i in range(8)])
    r.xgroup_create(key, GROUP, id="0")
    read(r, key, "c1", 3)
    for entry_id in read(r, key, "c2", 2):
        r.xack(key, GROUP, entry_id)
    r.xadd(dead_key(p), {"entry": "1-1", "user": "x", "type": "USER_UPDATED", "version": "1", "reason": "mapping",
                         "error": "e", "attempts": "3", "at": "0"})
    r.xadd(p + ":migrate", {"user": "m1", "reason": "manual", "at": "0"})
    low = (redis_ms(r) - base) / 1000.0
    rc, out, err = status(p)
    high = (redis_ms(r) - base) / 1000.0
    section = out[out.find("sync-back"):]
    m = re.match(r"^sync-back   (\S+), group syncback\n  pending     (\d+)\n  not read    (\d+)\n"
                 r"  oldest lag  (\d+\.\d{3}) s\n  dead        (\d+) \((\S+)\)\n"
                 r"  consumers   c1=3 \(idle \d+\.\d s\), c2=0 \(idle \d+\.\d s\)\n$", section)
    t.ok(rc == 0 and m and m.group(1, 2, 3, 5, 6) == (key, "3", "3", "1", dead_key(p))
         and low - 0.002 <= float(m.group(4)) <= high + 0.002,
         "migration status: the sync-back section (stream, pending 3, not read 3, oldest lag %s s, dead 1, "
         "consumers c1=3 and c2=0 with their idle times)" % (m.group(4) if m else "?"),
         "exit %s out %r (age bounds %.3f..%.3f)" % (rc, out, low, high))
    t.ok(out.startswith("seen        0\nqueued      1\n") and "\npending     none\n" in out,
         "the migrate section above it is as before (queued 1)", out)
    rc, out, err = status(p, json_out=True)
    doc = jline(out) or {}
    sb = doc.get("syncback") or {}
    t.ok(rc == 0 and doc.get("queued") == 1 and doc.get("pending") == {} and sb.get("stream") == key
         and (sb.get("state"), sb.get("pending"), sb.get("unread"), sb.get("behind"), sb.get("dead"))
         == ("behind", 3, 3, 6, 1) and low <= sb.get("oldest_unacked_s", -1)
         and [(c["name"], c["pending"]) for c in sb.get("consumers", [])] == [("c1", 3), ("c2", 0)]
         and all(c.get("idle_ms", -1) >= 0 for c in sb.get("consumers", [])),
         "migration status --json: \"syncback\" with state, pending, unread, behind, oldest_unacked_s, dead and "
         "consumers (name, pending, idle_ms)", out)
    rc, out, err = status(p, events=p + ":nothing")
    t.ok(rc == 0 and out.endswith("sync-back   not in use (no stream %s:nothing)\n" % p),
         "migration status --events KEY reads that stream instead", out)


# --- migration dead --syncback ----------------------------------------------------

def dead_ids(r, prefix):
    """The dead-letter stream as [(user, the event's id)]."""
    return [(f["user"], f["entry"]) for _, f in r.xrange(dead_key(prefix))]


def dead(prefix, *args, json_out=False):
    return run_ctl("migration", "dead", "--syncback", *args, prefix=prefix, json=json_out)


def dead_lettered(r, prefix, users, reason="not-in-legacy"):
    """Events of users, read by the syncback group and dead-lettered as
    sync-back does (attempts counted on the way): {user: event id}."""
    key = events_key(prefix)
    ids = add_events(r, key, users)
    read(r, key, "c1", len(users))
    fields = {e_id: f for e_id, f in r.xrange(key)}
    for e_id in ids:
        user = fields[e_id]["user"]
        r.hset(attempts_key(prefix), user, "3")
        dead_letter(r, prefix, key, e_id, fields[e_id], reason=reason, error="no user %s in legacy" % user)
    return dict(zip(users, ids))


def test_dead_list(t, srv, r):
    p, key = grouped(r, "dl")
    rc, out, err = dead(p, "list")
    t.ok(rc == 0 and out == "0 dead-letter entries in %s\n" % dead_key(p)
         and "no dead-letter stream %s: nothing was dead-lettered" % dead_key(p) in err,
         "dead --syncback list without a dead-letter stream: 0 entries, exit 0, says there is no stream",
         "exit %s out %r err %r" % (rc, out, err))
    ids = dead_lettered(r, p, ["la", "lb"])
    dl_ids = [e_id for e_id, _ in r.xrange(dead_key(p))]
    rc, out, err = dead(p, "list")
    lines = out.splitlines()
    got = [DEAD_LINE.match(line) for line in lines[:-1]]
    t.ok(rc == 0 and len(lines) == 3 and all(got)
         and [m.group(2, 3, 4, 5, 6, 7, 8, 9) for m in got]
         == [(dl_ids[0], ids["la"], "la", "USER_UPDATED", "1", "not-in-legacy", "3", "no user la in legacy"),
             (dl_ids[1], ids["lb"], "lb", "USER_UPDATED", "2", "not-in-legacy", "3", "no user lb in legacy")]
         and lines[-1] == "2 dead-letter entries in %s" % dead_key(p),
         "dead --syncback list: time, entry id, event, user, type, version, reason, attempts, error; then the count",
         "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = dead(p, "list", json_out=True)
    docs = [jline(line) for line in out.splitlines()]
    t.ok(rc == 0 and docs == [{"entry": dl_ids[i], "time": got[i].group(1) if got[i] else "?", "event": ids[u],
                               "user": u, "type": "USER_UPDATED", "version": str(i + 1), "reason": "not-in-legacy",
                               "attempts": "3", "error": "no user %s in legacy" % u}
                              for i, u in enumerate(("la", "lb"))],
         "--json: one object per entry (entry, time, event, user, type, version, reason, attempts, error)",
         "exit %s out %r" % (rc, out))
    rc, out, err = run_ctl("migration", "dead", "list", prefix=p)
    t.ok(rc == 0 and out == "0 dead-letter entries in %s:migrate:dead\n" % p,
         "without --syncback, dead list is still the migrate stream's (none here)", out + err)
    r.set(p + ":syncback:dead", "x")
    rc, out, err = dead(p, "list")
    t.ok(rc == EXIT_INVALID and "%s is a string, not a stream" % dead_key(p) in err,
         "a dead-letter key of another type: exit 4, naming its type", "exit %s err %r" % (rc, err))
    rc, out, err = run_ctl("migration", "dead", "--syncback", "show", prefix=p)
    t.ok(rc == 1 and "expected list, or retry [ID...]" in err and "usage: cutoverctl migration dead" in err,
         "an unknown sub-verb is a usage error (exit 1)", err)


def test_dead_retry(t, srv, r):
    p, key = grouped(r, "dr")
    ids = dead_lettered(r, p, ["ra", "rb", "rc"])
    r.hset(attempts_key(p), "other", "2")
    dl = {f["user"]: e_id for e_id, f in r.xrange(dead_key(p))}
    before = r.xlen(key)
    rc, out, err = dead(p, "retry", "nobody")
    t.ok(rc == EXIT_INVALID and "no dead-letter entry for user 'nobody' in %s" % dead_key(p) in err
         and r.xlen(key) == before and r.xlen(dead_key(p)) == 3,
         "retry of a user without a dead letter: exit 4, named, nothing moved", "exit %s err %r" % (rc, err))
    rc, out, err = dead(p, "retry", "rb")
    copy = r.xrange(key)[-1]
    lines = out.splitlines()
    t.ok(rc == 0 and lines == ["%s user rb: event %s back on the events stream %s as %s" % (dl["rb"], ids["rb"], key,
                                                                                             copy[0]),
                               "1 dead-letter entries back on the events stream %s" % key],
         "retry rb: names the dead letter, the event and the copy's new id, then the count",
         "exit %s out %r err %r" % (rc, out, err))
    original = r.xrange(key, ids["rb"], ids["rb"])
    t.ok(r.xlen(key) == before + 1 and original and copy[1] == original[0][1] and id_le(ids["rc"], copy[0])
         and copy[0] != ids["rb"],
         "the copy: a new entry at the end of the events stream with the event's fields; the original stays",
         "copy %r original %r" % (copy, original))
    t.ok(dead_ids(r, p) == [("ra", ids["ra"]), ("rc", ids["rc"])]
         and sorted(r.hkeys(attempts_key(p))) == ["other", "ra", "rc"],
         "rb's dead letter is gone and its attempts cleared; the others' stay",
         "%r %r" % (dead_ids(r, p), r.hgetall(attempts_key(p))))
    t.eq(read(r, key, "c2", 10), [copy[0]], "the syncback group delivers the copy again (and nothing else)")
    # rc's event trimmed off the events stream: ra goes back, rc stays.
    r.xdel(key, ids["rc"])
    rc, out, err = dead(p, "retry")
    lines = out.splitlines()
    new = r.xrange(key)[-1]
    t.ok(rc == EXIT_NOT_RETRIED and len(lines) == 2
         and lines[0] == "%s user ra: event %s back on the events stream %s as %s" % (dl["ra"], ids["ra"], key, new[0])
         and lines[1] == "1 dead-letter entries back on the events stream %s; 1 left in %s" % (key, dead_key(p))
         and "%s user rc: event %s is no longer in %s (trimmed): left in %s" % (dl["rc"], ids["rc"], key, dead_key(p))
         in err,
         "retry (all) with rc's event trimmed: ra back, rc named on stderr and left, exit 8",
         "exit %s out %r err %r" % (rc, out, err))
    t.ok(dead_ids(r, p) == [("rc", ids["rc"])] and sorted(r.hkeys(attempts_key(p))) == ["other", "rc"]
         and new[1]["user"] == "ra",
         "rc's dead letter and attempts stay; ra's are cleared", "%r %r" % (dead_ids(r, p), r.hgetall(attempts_key(p))))
    rc, out, err = dead(p, "retry", "rc", json_out=True)
    docs = [jline(line) for line in out.splitlines()]
    t.ok(rc == EXIT_NOT_RETRIED and docs == [{"entry": dl["rc"], "user": "rc", "event": ids["rc"],
                                               "retried_as": None, "left": "event gone"},
                                              {"retried": 0, "left": 1}],
         "--json retry rc: the entry with retried_as null and left \"event gone\", then {retried 0, left 1}, exit 8",
         "exit %s out %r err %r" % (rc, out, err))
    more = dead_lettered(r, p, ["rd"])
    rd_dead = r.xrange(dead_key(p))[-1][0]
    rc, out, err = dead(p, "retry", "rd", json_out=True)
    docs = [jline(line) for line in out.splitlines()]
    last = r.xrange(key)[-1][0]
    t.ok(rc == 0 and docs == [{"entry": rd_dead, "user": "rd", "event": more["rd"], "retried_as": last},
                              {"retried": 1, "left": 0}]
         and not r.hexists(attempts_key(p), "rd") and dead_ids(r, p) == [("rc", ids["rc"])],
         "--json retry rd: {entry, user, event, retried_as}, then {retried 1, left 0}",
         "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = dead(p, "retry", "bad\x01id")
    t.ok(rc == EXIT_INVALID and "invalid user id" in err, "an invalid user id: exit 4", err)
    rc, out, err = dead(p + "-none", "retry")
    t.ok(rc == 0 and out == "0 dead-letter entries back on the events stream %s-none:service:events\n" % p
         and "no dead-letter stream" in err, "retry without a dead-letter stream: nothing to do, says so, exit 0",
         "exit %s out %r err %r" % (rc, out, err))


def test_dead_retry_race(t, srv, r):
    """Two operators retrying everything at once: every entry goes back once."""
    p, key = grouped(r, "dc")
    users = ["c%04d" % i for i in range(2000)]
    dead_lettered(r, p, users)
    before = r.xlen(key)
    procs = [subprocess.Popen(ctl_argv(["migration", "dead", "--syncback", "retry"], prefix=p, json=True),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [proc.communicate(timeout=60) for proc in procs]
    sums = [(jline(o.decode().splitlines()[-1]) or {}).get("retried", 0) if o else 0 for o, _ in outs]
    copies = [f["user"] for _, f in r.xrange(key)][before:]
    t.diag("the two retries moved %r entries; the other's skipped as retried meanwhile: %r"
           % (sums, [e.decode().count("retried meanwhile") for _, e in outs]))
    t.ok(all(proc.returncode == 0 for proc in procs) and sum(sums) == len(users) and sorted(copies) == users
         and r.xlen(dead_key(p)) == 0 and r.hlen(attempts_key(p)) == 0,
         "two retries at once: %d + %d = %d copies, each event exactly once, the dead-letter stream empty"
         % (sums[0], sums[1], len(users)),
         "rc %r sums %r copies %d err %r" % ([proc.returncode for proc in procs], sums, len(copies),
                                             [e.decode()[-300:] for _, e in outs]))
    t.ok(all(b"ERROR" not in e and b"Sanitizer" not in e for _, e in outs), "and no sanitizer report",
         repr([e[-300:] for _, e in outs]))


def test_dead_end_to_end(t, srv, r):
    """The real sync-back: an update of a user legacy lacks is dead-lettered
    (not-in-legacy); once legacy has the user, retry applies it."""
    mongo = harness.Mongo()
    db = mongo.database("dead")
    p = PREFIX + "de"
    key = events_key(p)
    w = harness.Migrator(mongo.uri, db.name, "http://127.0.0.1:9/internal/import/users/{id}", command="syncback",
                         prefix=p, syncback={"deletes": "tombstone"}, retry={"attempts": 3})
    [ev] = r.xadd(key, {"type": "USER_UPDATED", "user": "late", "version": "2",
                        "fields": json.dumps({"name": "Late Two"}), "at": "0"}),
    got = poll(lambda: dead_ids(r, p), 30)
    t.ok(got == [("late", ev)] and (jline(dead(p, "list", json_out=True)[1]) or {}).get("reason") == "not-in-legacy",
         "cutover-migrate syncback dead-letters an update of a user legacy lacks (not-in-legacy)",
         "%r\n%s" % (got, w.log_tail(10)))
    db.users.insert_one({"_id": "late", "name": "Late One", "email": "late@example.com"})
    rc, out, err = dead(p, "retry", "late")
    t.ok(rc == 0 and out.endswith("1 dead-letter entries back on the events stream %s\n" % key) and not dead_ids(r, p),
         "the user inserted into legacy: dead --syncback retry late", "exit %s out %r err %r" % (rc, out, err))
    applied = poll(lambda: (db.users.find_one({"_id": "late"}) or {}).get("name") == "Late Two", 30)
    doc = db.users.find_one({"_id": "late"})
    t.ok(applied and doc.get("email") == "late@example.com" and doc.get("_cutover", {}).get("v") == 2
         and not dead_ids(r, p) and not r.hexists(attempts_key(p), "late"),
         "sync-back applies the retried update: name from version 2, the other fields kept, nothing dead-lettered",
         "%r\n%s" % (doc, w.log_tail(10)))
    t.ok(w.stop() == 0, "cutover-migrate syncback exits 0 on SIGTERM", w.log_tail())
    mongo.close()


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        for test in (test_no_stream, test_no_group, test_behind, test_events_option, test_unknown_lag,
                     test_wait_synced, test_wait_timeout, test_dead_lettered, test_status, test_dead_list,
                     test_dead_retry, test_dead_retry_race, test_dead_end_to_end):
            test(t, srv, r)  # each on a prefix of its own


if __name__ == "__main__":
    harness.main(body, programs=("cutover-migrate",))
