#!/usr/bin/python3
"""
ctl.py - cutoverctl as an operator uses it: help and usage errors, percent
parsing, the switches (kill, unkill, rollback, enable, disable), eval and
the evaluation order, buckets against the independent test vectors, exit
codes for unknown flags and invalid values, history, an unreachable or
misconfigured Redis, passwords and db numbers, and flag/cohort listings.
"""
import collections
import datetime
import json
import os
import re
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import PREFIX, run_ctl

P = PREFIX
FLAG_VERBS = ["list", "get", "create", "delete", "set", "enable", "disable", "kill", "unkill", "rollback",
              "allow", "deny", "cohort", "history", "eval", "watch"]
COHORT_VERBS = ["add", "remove", "list"]
CLOSED_URL = "redis://127.0.0.1:1"  # help must not need Redis


def k(suffix, prefix=P):
    return "%s:%s" % (prefix, suffix)


def stored(r, name, prefix=P):
    text = r.get(k("flag:" + name, prefix))
    return json.loads(text) if text else None


def version(r, prefix=P):
    return int(r.get(k("flags:version", prefix)) or 0)


def jlines(out):
    try:
        return [json.loads(line) for line in out.splitlines()]
    except ValueError:
        return None


def test_help(t):
    rc, out, err = run_ctl("--help", redis_url=CLOSED_URL)
    t.ok(rc == 0 and out.startswith("usage: cutoverctl ") and "GROUP VERB" in out,
         "cutoverctl --help: exit 0, usage line", "exit %s out %r err %r" % (rc, out[:200], err))
    rc, out, err = run_ctl("--version", redis_url=CLOSED_URL)
    t.ok(rc == 0 and re.match(r"^cutoverctl \S+\n$", out), "cutoverctl --version", "exit %s out %r" % (rc, out))
    for group, verbs in (("flag", FLAG_VERBS), ("cohort", COHORT_VERBS)):
        rc, out, err = run_ctl(group, "--help", redis_url=CLOSED_URL)
        t.ok(rc == 0 and out.startswith("usage: cutoverctl %s VERB" % group)
             and all(re.search(r"^  %s\b" % v, out, re.M) for v in verbs),
             "cutoverctl %s --help: exit 0, usage line, every verb listed" % group,
             "exit %s out %r err %r" % (rc, out, err))
        for verb in verbs:
            rc, out, err = run_ctl(group, verb, "--help", redis_url=CLOSED_URL)
            first = out.splitlines()[0] if out else ""
            t.ok(rc == 0 and first.startswith("usage: cutoverctl %s %s" % (group, verb)),
                 "cutoverctl %s %s --help: exit 0 without Redis, usage line names the verb" % (group, verb),
                 "exit %s out %r err %r" % (rc, out, err))


def test_usage_errors(t):
    cases = [
        (), ("bogus",), ("flag",), ("cohort",), ("flag", "bogus"), ("cohort", "bogus"), ("--bogus", "flag", "list"),
        ("flag", "list", "extra"), ("flag", "get"), ("flag", "get", "a", "b"), ("flag", "create"),
        ("flag", "create", "x", "--bogus"), ("flag", "delete"), ("flag", "set", "x"), ("flag", "set"),
        ("flag", "set", "x", "--percent"), ("flag", "enable"), ("flag", "kill", "a", "b"), ("flag", "allow", "x"),
        ("flag", "deny"), ("flag", "cohort", "frob", "x", "c"), ("flag", "cohort", "add", "x"),
        ("flag", "history"), ("flag", "history", "x", "--limit"), ("flag", "eval", "x"),
        ("flag", "watch", "extra"), ("cohort", "add", "c"), ("cohort", "remove"), ("cohort", "list", "a", "b"),
    ]
    for args in cases:
        rc, out, err = run_ctl(*args)
        t.ok(rc == 1 and "usage: cutoverctl" in err, "usage error -> exit 1 with usage: cutoverctl %s"
             % " ".join(args), "exit %s out %r err %r" % (rc, out, err))


def test_percent(t, r):
    run_ctl("flag", "create", "pct")
    for text, bp in (("12.5%", 1250), ("0", 0), ("1250", 1250), ("100%", 10000), ("0.01%", 1), ("10000", 10000),
                     ("99.99%", 9999), ("0%", 0), ("7.5%", 750)):
        rc, out, err = run_ctl("flag", "set", "pct", "--percent", text)
        f = stored(r, "pct")
        t.ok(rc == 0 and "no change" not in out and f["percent"] == bp,
             "--percent %s -> %d basis points" % (text, bp),
             "exit %s out %r err %r stored %r" % (rc, out, err, f["percent"]))
    rc, out, err = run_ctl("flag", "get", "pct")
    t.ok("percent      7.5% (750 basis points)\n" in out, "flag get shows percent and basis points", out)
    v0 = version(r)
    for text in ("101%", "10001", "12.555%", "abc", "-1", "12.5", "", "1e3", " 5", "5.%", ".5%", "%", "100.01%",
                 "99999999999999999999"):
        rc, out, err = run_ctl("flag", "set", "pct", "--percent", text)
        t.ok(rc == 4 and ("'%s'" % text) in err and "percent" in err and stored(r, "pct")["percent"] == 750
             and version(r) == v0,
             "--percent %r rejected: exit 4, message quotes it, nothing written" % text,
             "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = run_ctl("flag", "create", "pct-new", "--percent", "5%")
    t.ok(rc == 1 and not r.exists(k("flag:pct-new")), "create takes no --percent (usage error, nothing created)",
         "exit %s err %r" % (rc, err))


def change_line(out):
    m = re.match(r"^(\S+): (.*) \(version (\d+)\)\n$", out)
    return (m.group(1), m.group(2), int(m.group(3))) if m else out


def test_switches(t, r):
    run_ctl("flag", "create", "sw")
    run_ctl("flag", "set", "sw", "--percent", "30%")
    steps = [
        ("enable", dict(enabled=True, kill=False, percent=3000), "enabled false -> true"),
        ("kill", dict(enabled=True, kill=True, percent=3000), "kill false -> true"),
        ("unkill", dict(enabled=True, kill=False, percent=3000), "kill true -> false"),
        ("disable", dict(enabled=False, kill=False, percent=3000), "enabled true -> false"),
        ("enable", dict(enabled=True, kill=False, percent=3000), "enabled false -> true"),
        ("kill", dict(enabled=True, kill=True, percent=3000), "kill false -> true"),
    ]
    for verb, want, text in steps:
        v0 = version(r)
        rc, out, err = run_ctl("flag", verb, "sw")
        f = stored(r, "sw")
        got = {key: f[key] for key in want}
        t.ok(rc == 0 and got == want and change_line(out) == ("sw", text, v0 + 1),
             "flag %s: %s, the rest of the rollout kept" % (verb, text),
             "exit %s out %r err %r flag %r" % (rc, out, err, got))
    rc, out, _ = run_ctl("flag", "eval", "sw", "someone", json=True)
    t.ok(rc == 0 and jlines(out) and jlines(out)[0]["reason"] == "kill" and jlines(out)[0]["on"] is False,
         "a killed flag evaluates off with reason kill", out)

    run_ctl("flag", "unkill", "sw")
    v0, n0 = version(r), r.xlen(k("flags:audit"))
    rc, out, err = run_ctl("flag", "rollback", "sw", actor="oncall")
    entries = r.xrange(k("flags:audit"))[n0:]
    f = stored(r, "sw")
    t.ok(rc == 0 and (f["percent"], f["enabled"], f["kill"]) == (0, False, False) and version(r) == v0 + 1
         and change_line(out) == ("sw", "enabled true -> false, percent 30% -> 0%", v0 + 1),
         "rollback: percent 0 and disabled, one version", "exit %s out %r err %r flag %r" % (rc, out, err, f))
    ok = len(entries) == 1
    if ok:
        fields = entries[0][1]
        old, new = json.loads(fields["old"]), json.loads(fields["new"])
        ok = (fields["action"], fields["actor"], old["percent"], old["enabled"], new["percent"], new["enabled"]) == \
            ("rollback", "oncall", 3000, True, 0, False)
    t.ok(ok, "rollback is ONE audit entry holding both changes", repr(entries))
    rc, out, _ = run_ctl("flag", "rollback", "sw")
    t.eq((rc, out), (0, "sw: no change\n"), "rollback of a rolled back flag: no change")


def test_eval_order(t, r):
    for args in (("flag", "create", "order"), ("flag", "enable", "order"), ("flag", "deny", "order", "uD"),
                 ("flag", "allow", "order", "uD", "uA"), ("cohort", "add", "vip", "uD", "uA", "uC"),
                 ("cohort", "add", "other", "uX"), ("flag", "cohort", "add", "order", "other", "vip")):
        rc, out, err = run_ctl(*args)
        if rc != 0:
            t.diag("setup %s: exit %s %s" % (" ".join(args), rc, err))
    users = ["uD", "uA", "uC", "uB"]

    def ev(*extra):
        rc, out, err = run_ctl("flag", "eval", "order", *(extra or users), json=True)
        lines = jlines(out) or []
        return rc, lines, err

    rc, lines, err = ev()
    got = [(e.get("user"), e.get("on"), e.get("reason"), e.get("cohort")) for e in lines]
    t.eq(got, [("uD", False, "deny", None), ("uA", True, "allow", None), ("uC", True, "cohort", "vip"),
               ("uB", False, "bucket", None)],
         "eval order at 0%: deny beats allow beats cohort beats bucket")
    buckets = {e["user"]: e["bucket"] for e in lines}
    t.ok(rc == 0 and all(set(e) >= {"flag", "user", "on", "reason", "bucket"} and e["flag"] == "order"
                         and isinstance(e["bucket"], int) and 0 <= e["bucket"] < 10000 for e in lines)
         and len(lines) == 4, "eval --json: one object per user with flag, user, on, reason, bucket", repr(lines))

    rc, out, err = run_ctl("flag", "eval", "order", *users)
    want = ["order uD: off (reason deny, bucket %d)" % buckets.get("uD", -1),
            "order uA: on (reason allow, bucket %d)" % buckets.get("uA", -1),
            "order uC: on (reason cohort vip, bucket %d)" % buckets.get("uC", -1),
            "order uB: off (reason bucket, bucket %d)" % buckets.get("uB", -1)]
    t.eq((rc, out.splitlines()), (0, want), "eval prints decision, reason and bucket per user")

    run_ctl("flag", "set", "order", "--percent", "100%")
    rc, lines, _ = ev()
    got = [(e["user"], e["on"], e["reason"], e["bucket"]) for e in lines]
    t.eq(got, [("uD", False, "deny", buckets.get("uD")), ("uA", True, "allow", buckets.get("uA")),
               ("uC", True, "cohort", buckets.get("uC")), ("uB", True, "bucket", buckets.get("uB"))],
         "at 100% a plain user is in by bucket, deny still wins, buckets are sticky")

    run_ctl("flag", "kill", "order")
    rc, lines, _ = ev()
    t.eq([(e["user"], e["on"], e["reason"]) for e in lines], [(u, False, "kill") for u in users],
         "kill beats everything, deny, allow and cohort included")
    run_ctl("flag", "unkill", "order")
    run_ctl("flag", "disable", "order")
    rc, lines, _ = ev()
    t.eq([(e["user"], e["on"], e["reason"]) for e in lines], [(u, False, "flag-off") for u in users],
         "a disabled flag is off for everyone, allow and cohort included")


def read_vectors():
    """salt -> [(user, bucket)] from tests/vectors/buckets.tsv (generated
    independently of the C code), keeping ids cutoverctl accepts."""
    path = os.path.join(harness.SRCDIR, "tests", "vectors", "buckets.tsv")
    by_salt = collections.OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip("\n"):
                continue
            salt, user, bucket = line.rstrip("\n").split("\t")
            n = len(user.encode())
            if not 1 <= n <= 256 or any(ord(c) < 0x20 or ord(c) == 0x7f for c in user) \
                    or user in ("--help", "-h", "--"):
                continue
            rows = by_salt.setdefault(salt, [])
            if len(rows) < 12:
                rows.append((user, int(bucket)))
    return by_salt


NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def test_vectors(t, r):
    pv = P + "-vec"
    for i, (salt, rows) in enumerate(read_vectors().items()):
        if NAME_RE.match(salt):
            name = salt  # created by cutoverctl: salted with its own name
            run_ctl("flag", "create", name, prefix=pv)
        elif len(salt.encode()) <= 64:
            name = "vec%d" % i  # any other salt, through `create --salt`
            rc, _, err = run_ctl("flag", "create", name, "--salt", salt, prefix=pv)
            t.ok(rc == 0 and json.loads(r.get(k("flag:" + name, pv)))["salt"] == salt,
                 "flag create --salt %r stores that salt" % salt, "exit %s err %r" % (rc, err))
        else:
            name = "vec%d" % i
            r.set(k("flag:" + name, pv), json.dumps({"name": name, "salt": salt}, ensure_ascii=False))
            r.sadd(k("flags", pv), name)
        rc, out, err = run_ctl("flag", "eval", name, *[u for u, _ in rows], prefix=pv, json=True)
        got = [(e["user"], e["bucket"]) for e in jlines(out) or []]
        bad = ["user %r: bucket %s, vectors say %d" % (u, dict(got).get(u), b) for u, b in rows
               if dict(got).get(u) != b]
        t.ok(rc == 0 and not bad and len(got) == len(rows),
             "eval buckets match tests/vectors/buckets.tsv for salt %r (%d users)" % (salt, len(rows)),
             "exit %s err %r\n%s%s" % (rc, err, "\n".join(bad[:4]),
                                        "\n... and %d more" % (len(bad) - 4) if len(bad) > 4 else ""))


def test_errors(t, r):
    for args in (("flag", "eval", "nope", "u1"), ("flag", "get", "nope"), ("flag", "set", "nope", "--percent", "5%"),
                 ("flag", "kill", "nope"), ("flag", "delete", "nope"), ("flag", "allow", "nope", "u1"),
                 ("flag", "cohort", "list", "nope")):
        rc, out, err = run_ctl(*args)
        t.ok(rc == 2 and "no such flag 'nope'" in err and not r.exists(k("flag:nope")),
             "%s of an unknown flag: exit 2, 'no such flag'" % " ".join(args[:2]),
             "exit %s out %r err %r" % (rc, out, err))
    long_name = "n" * 65
    for args in (("flag", "get", "bad name"), ("flag", "create", "bad name"), ("flag", "create", long_name),
                 ("flag", "eval", long_name, "u1"), ("flag", "set", "bad/name", "--percent", "1%"),
                 ("flag", "create", "caf\u00e9"), ("cohort", "add", "bad name", "u1"),
                 ("flag", "cohort", "add", "order", "bad:cohort")):
        rc, out, err = run_ctl(*args)
        t.ok(rc == 4 and "invalid" in err and "name" in err, "%s %r: exit 4, invalid name"
             % (" ".join(args[:2]), args[2] if len(args[2]) < 20 else args[2][:10] + "..."),
             "exit %s out %r err %r" % (rc, out, err))
    rc, out, err = run_ctl("flag", "create", "n" * 64)
    t.ok(rc == 0, "a 64-byte flag name is accepted", "exit %s err %r" % (rc, err))

    run_ctl("flag", "create", "ids")
    for uid, why in (("a\x01b", "control character"), ("tab\there", "control character"),
                     ("del\x7f", "control character"), ("u" * 257, "1 to 256 bytes"), ("", "1 to 256 bytes"),
                     (b"\xff\xfe", "UTF-8")):
        shown = repr(uid if len(uid) < 20 else uid[:8] + b"..." if isinstance(uid, bytes) else uid[:8] + "...")
        for args in (("flag", "eval", "ids", "ok-user", uid), ("flag", "allow", "ids", uid),
                     ("cohort", "add", "c", uid)):
            rc, out, err = run_ctl(*args)
            t.ok(rc == 4 and "invalid user id" in err and why in err,
                 "%s with user id %s: exit 4 (%s)" % (" ".join(args[:2]), shown, why),
                 "exit %s out %r err %r" % (rc, out[:200], err[:300]))
    rc, out, err = run_ctl("flag", "eval", "ids", "u" * 256, "\u00fcser-\u4e2d")
    t.ok(rc == 0 and len(out.splitlines()) == 2, "256-byte and non-ASCII user ids are accepted",
         "exit %s err %r" % (rc, err))
    f = stored(r, "ids")
    t.ok(f["allow"] == [] and not r.exists(k("cohort:c")), "rejected ids were not written anywhere", repr(f))


HIST_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\s+v(\d+)\s+(\S+)\s+(\S+)\s+(.*)$")


def test_history(t, r):
    start = datetime.datetime.now(datetime.timezone.utc)
    run_ctl("flag", "create", "hist", actor="alice")
    run_ctl("flag", "create", "hist-other", actor="zed")
    run_ctl("flag", "set", "hist", "--percent", "10%", actor="bob")
    run_ctl("flag", "enable", "hist-other", actor="zed")
    run_ctl("flag", "enable", "hist", actor="carol")
    run_ctl("flag", "kill", "hist", actor="dave")
    want = [("alice", "create", "created"), ("bob", "set", "percent 0% -> 10%"),
            ("carol", "enable", "enabled false -> true"), ("dave", "kill", "kill false -> true")]
    rc, out, err = run_ctl("flag", "history", "hist")
    rows = [HIST_RE.match(line) for line in out.splitlines()]
    got = [(m.group(3), m.group(4), m.group(5)) if m else line for m, line in zip(rows, out.splitlines())]
    t.eq((rc, got), (0, want), "history: actor, action and 'old -> new' per change, oldest first, other flags left out")
    ok = all(rows) and len(rows) == 4
    if ok:
        times = [datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                 .replace(tzinfo=datetime.timezone.utc) for m in rows]
        versions = [int(m.group(2)) for m in rows]
        ok = times == sorted(times) and versions == sorted(versions) and \
            all(abs((tm - start).total_seconds()) < 60 for tm in times)
    t.ok(ok, "history: UTC times (now) and versions in order", out)

    rc, out, err = run_ctl("flag", "history", "hist", "--limit", "2")
    got = [HIST_RE.match(line).group(4) if HIST_RE.match(line) else line for line in out.splitlines()]
    t.eq((rc, got), (0, ["enable", "kill"]), "history --limit 2: the last two, oldest first")

    rc, out, err = run_ctl("flag", "history", "hist", json=True)
    try:
        h = json.loads(out)
    except ValueError:
        h = None
    ok = isinstance(h, list) and len(h) == 4 and all(
        set(e) == {"time", "version", "actor", "action", "change", "old", "new"} for e in h)
    t.ok(ok and [(e["actor"], e["action"], e["change"]) for e in h] == want and h[0]["old"] is None
         and h[0]["new"]["name"] == "hist" and h[3]["old"]["kill"] is False and h[3]["new"]["kill"] is True,
         "history --json: a JSON array with time, version, actor, action, change, old, new", out)
    rc, out, err = run_ctl("flag", "history", "hist", "--limit", "1", json=True)
    t.ok(rc == 0 and out.startswith("[") and len(json.loads(out)) == 1 and json.loads(out)[0]["action"] == "kill",
         "history --json --limit 1", out)
    r.set(k("flag:handmade"), '{"name":"handmade"}')
    r.sadd(k("flags"), "handmade")
    rc, out, err = run_ctl("flag", "history", "handmade", json=True)
    t.eq((rc, out), (0, "[]\n"), "history --json of a flag without audit entries: []")
    rc, out, err = run_ctl("flag", "history", "handmade")
    t.eq((rc, out), (0, "no history for 'handmade'\n"), "history of a flag without audit entries says so")
    rc, out, err = run_ctl("flag", "history", "never-existed")
    t.ok(rc == 2 and "no such flag 'never-existed'" in err, "history of a flag that never existed: exit 2",
         "exit %s out %r err %r" % (rc, out, err))
    run_ctl("flag", "delete", "hist-other", actor="zed")
    rc, out, err = run_ctl("flag", "history", "hist-other")
    got = [HIST_RE.match(line).group(4) if HIST_RE.match(line) else line for line in out.splitlines()]
    t.eq((rc, got), (0, ["create", "enable", "delete"]), "a deleted flag keeps its history")

    # More than one page (500 entries) of other subjects after hist's entries.
    pipe = r.pipeline(transaction=False)
    for i in range(1200):
        pipe.xadd(k("flags:audit"), {"subject": "noise", "actor": "bot", "action": "set", "old": "", "new": "",
                                      "version": "0"})
    pipe.execute()
    rc, out, err = run_ctl("flag", "history", "hist")
    got = [HIST_RE.match(line).group(4) if HIST_RE.match(line) else line for line in out.splitlines()]
    t.eq((rc, got), (0, ["create", "set", "enable", "kill"]),
         "history finds entries behind 1200 newer entries of other subjects (paging)")
    rc, out, err = run_ctl("flag", "history", "hist", "--limit", "0")
    t.ok(rc == 4 and "--limit" in err, "history --limit 0: exit 4", "exit %s err %r" % (rc, err))


def timed(*args, **kw):
    t0 = time.monotonic()
    rc, out, err = run_ctl(*args, **kw)
    return rc, out, err, time.monotonic() - t0


def test_unreachable(t):
    port = harness.free_port()
    url = "redis://127.0.0.1:%d" % port
    rc, out, err, dt = timed("flag", "list", redis_url=url)
    t.ok(rc == 3 and dt < 2 and url in err and "refused" in err,
         "closed port: exit 3 within 2 s, message has the URL and the error (%.2f s)" % dt,
         "exit %s err %r" % (rc, err))
    rc, out, err, dt = timed("flag", "kill", "x", redis_url=url)
    t.ok(rc == 3 and url in err, "closed port: a change exits 3 too", "exit %s err %r" % (rc, err))

    url = "redis://10.255.255.1:6379"
    rc, out, err, dt = timed("flag", "list", redis_url=url)
    t.diag("%s: exit %s after %.2f s: %s" % (url, rc, dt, err.strip()))
    t.ok(rc == 3 and dt < 4 and url in err, "non-routable address: exit 3 in under 4 s with the URL",
         "exit %s after %.2f s, err %r" % (rc, dt, err))

    # A local black hole: a listener whose accept queue is full drops SYNs,
    # so this works even where outbound traffic is intercepted.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    bport = lsock.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", bport))
        except BlockingIOError:
            pass
        fillers.append(s)
    url = "redis://127.0.0.1:%d" % bport
    rc, out, err, dt = timed("flag", "list", redis_url=url)
    t.diag("black hole: exit %s after %.2f s: %s" % (rc, dt, err.strip()))
    t.ok(rc == 3 and 1.5 < dt < 4 and url in err and "timed out" in err,
         "connect that is never answered: exit 3 after the 2 s timeout, message has the URL (%.2f s)" % dt,
         "exit %s err %r" % (rc, err))
    for s in fillers + [lsock]:
        s.close()

    # Accepts the connection, never answers a command.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    url = "redis://127.0.0.1:%d" % hung.getsockname()[1]
    rc, out, err, dt = timed("flag", "list", redis_url=url)
    t.diag("silent server: exit %s after %.2f s: %s" % (rc, dt, err.strip()))
    t.ok(rc == 3 and dt < 4 and url in err, "server that never answers: exit 3 in under 4 s with the URL (%.2f s)" % dt,
         "exit %s err %r" % (rc, err))
    hung.close()

    for bad, hint in (("http://x", "must start with redis:// or unix://"), ("rediss://h:6379", "TLS"),
                      ("redis://127.0.0.1:99999", "port"), ("redis://127.0.0.1:6379/x", "db")):
        rc, out, err = run_ctl("flag", "list", redis_url=bad)
        t.ok("invalid Redis URL '%s'" % bad in err and hint in err,
             "bad URL %s: the message names the URL and what is wrong" % bad, "exit %s err %r" % (rc, err))
    for verb in (("flag", "list"), ("flag", "watch")):
        rc, out, err = run_ctl(*verb, redis_url="http://x", timeout=5)
        t.ok(rc in (1, 4), "bad URL http://x with %s: exit 4 (invalid value) or 1, not 3 (unreachable)"
             % " ".join(verb), "exit %s err %r" % (rc, err))


def test_password(t):
    with harness.RedisServer(password="secret") as srv:
        url = srv.url(db=3)
        rc, out, err = run_ctl("flag", "create", "pw", redis_url=url)
        r3, r0 = srv.client(db=3), srv.client(db=0)
        t.ok(rc == 0 and r3.exists(k("flag:pw")) and not r0.keys(P + ":*"),
             "redis://:secret@host:port/3 authenticates and writes into db 3",
             "exit %s err %r db0 keys %r" % (rc, err, r0.keys(P + ":*")))
        rc, out, err = run_ctl("flag", "list", redis_url=srv.url(db=3, user="default"), json=True)
        t.ok(rc == 0 and [f["name"] for f in json.loads(out or "{}").get("flags", [])] == ["pw"],
             "user:password@ in the URL works too", "exit %s err %r" % (rc, err))

        w = harness.Watch(redis_url=url)
        e = w.wait_for(lambda e: e.get("event") == "snapshot", 10)
        live = w.wait_for(lambda e: e.get("event") == "state", 5)
        rc = w.stop()
        t.ok(e and e["change"] == "loaded 1 flags, 0 cohorts" and live and live["change"].startswith("live:")
             and rc == 0, "flag watch authenticates and selects db 3", "%r %r exit %s\n%s" % (e, live, rc, w.stderr()))

        bad = srv.url(db=3, password="wrong-pw-9f3")
        rc, out, err = run_ctl("flag", "list", redis_url=bad)
        shown = "redis://:***@127.0.0.1:%d/3" % srv.port
        t.ok(rc == 3 and shown in err and ("WRONGPASS" in err or "invalid" in err) and "wrong-pw-9f3" not in err,
             "wrong password: exit 3, message has the URL (password hidden) and the reason",
             "exit %s err %r" % (rc, err))
        for db in (0, 3):
            plain = "redis://127.0.0.1:%d/%d" % (srv.port, db)
            rc, out, err = run_ctl("flag", "list", redis_url=plain)
            t.ok(rc == 3 and "NOAUTH" in err, "no password for a protected Redis (db %d): exit 3 like a wrong one" % db,
                 "exit %s err %r" % (rc, err))


def test_listing(t, r):
    pl = P + "-list"
    names = ["zeta", "alpha", "Mid", "beta-2", "_x", "a.b", "0num"]
    rc, out, err = run_ctl("flag", "list", prefix=pl, json=True)
    t.eq((rc, out), (0, '{"version":0,"flags":[]}\n'), "flag list --json with no flags")
    for n in names:
        run_ctl("flag", "create", n, "--owner", "own-" + n, prefix=pl)
    run_ctl("flag", "enable", "beta-2", prefix=pl)
    run_ctl("flag", "set", "beta-2", "--percent", "12.5%", prefix=pl)
    run_ctl("flag", "kill", "zeta", prefix=pl)
    want = sorted(names, key=lambda s: s.encode())
    rc, out, err = run_ctl("flag", "list", prefix=pl)
    lines = out.splitlines()
    t.ok(rc == 0 and lines[0].split() == ["NAME", "ENABLED", "KILL", "PERCENT", "OWNER"]
         and [line.split()[0] for line in lines[1:]] == want, "flag list: header, then flags sorted by name", out)
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    t.ok(rows.get("beta-2") == ["beta-2", "yes", "-", "12.5%", "own-beta-2"]
         and rows.get("zeta") == ["zeta", "no", "KILL", "0%", "own-zeta"],
         "flag list: enabled, kill, percent and owner columns", out)
    rc, out, err = run_ctl("flag", "list", prefix=pl, json=True)
    try:
        j = json.loads(out)
    except ValueError:
        j = None
    t.ok(rc == 0 and j and j["version"] == version(r, pl) and [f["name"] for f in j["flags"]] == want
         and all(f == stored(r, f["name"], pl) for f in j["flags"]),
         "flag list --json: valid JSON, store version, flags sorted and as stored", out)

    run_ctl("cohort", "add", "zz", "u3", "u1", "u2", prefix=pl)
    run_ctl("cohort", "add", "aa", "x", prefix=pl)
    run_ctl("flag", "cohort", "add", "alpha", "zz", "aa", "ghost", prefix=pl)
    rc, out, err = run_ctl("cohort", "list", prefix=pl, json=True)
    t.ok(rc == 0 and json.loads(out or "null") == [{"cohort": "aa", "members": 1}, {"cohort": "zz", "members": 3}],
         "cohort list --json: cohorts sorted with their sizes", out)
    rc, out, err = run_ctl("cohort", "list", "zz", prefix=pl)
    t.eq((rc, out), (0, "u1\nu2\nu3\n"), "cohort list NAME: members, sorted")
    rc, out, err = run_ctl("cohort", "list", "zz", prefix=pl, json=True)
    t.eq((rc, out), (0, '["u1","u2","u3"]\n'), "cohort list NAME --json")
    rc, out, err = run_ctl("flag", "cohort", "list", "alpha", prefix=pl)
    t.eq((rc, [line.split() for line in out.splitlines()]),
         (0, [["zz", "3", "members"], ["aa", "1", "members"], ["ghost", "0", "members"]]),
         "flag cohort list: the flag's cohorts with their sizes (unknown cohort: 0)")


def test_risky_pairs(t):
    """Writes of a pair going to the service ahead of its reads: a warning."""
    pv = P + "-pair"
    for name in ("orders-read", "orders-write"):
        run_ctl("flag", "create", name, "--salt", "orders", prefix=pv)
        run_ctl("flag", "enable", name, prefix=pv)
    rc, out, err = run_ctl("flag", "set", "orders-write", "--percent", "20%", prefix=pv)
    t.ok(rc == 0 and "warning: orders-write sends writes of 20% of users to the service but orders-read sends "
         "only 0% of reads" in err, "writes ahead of reads: cutoverctl warns, and still makes the change",
         "exit %s err %r" % (rc, err))
    rc, out, err = run_ctl("flag", "set", "orders-read", "--percent", "30%", prefix=pv)
    t.ok(rc == 0 and "warning" not in err, "reads ahead of writes (nested, same salt): no warning", err)
    rc, out, err = run_ctl("flag", "kill", "orders-read", prefix=pv)
    t.ok(rc == 0 and "orders-read sends only 0% of reads" in err,
         "killing the reads while writes are on: the warning says so", err)
    run_ctl("flag", "create", "users-read", prefix=pv)
    run_ctl("flag", "create", "users-write", prefix=pv)
    run_ctl("flag", "enable", "users-read", prefix=pv)
    run_ctl("flag", "set", "users-read", "--percent", "50%", prefix=pv)
    run_ctl("flag", "enable", "users-write", prefix=pv)
    rc, out, err = run_ctl("flag", "set", "users-write", "--percent", "10%", prefix=pv)
    t.ok(rc == 0 and "salts differ" in err, "a pair with different salts warns that the rollouts do not nest", err)
    rc, out, err = run_ctl("flag", "set", "users-read", "--percent", "60%", prefix=pv)
    t.ok("salts differ" in err, "the warning also follows a change to the read flag", err)


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        test_help(t)
        test_usage_errors(t)
        test_percent(t, r)
        test_switches(t, r)
        test_eval_order(t, r)
        test_vectors(t, r)
        test_errors(t, r)
        test_history(t, r)
        test_listing(t, r)
        test_unreachable(t)
        test_password(t)
        test_risky_pairs(t)


if __name__ == "__main__":
    harness.main(body)
