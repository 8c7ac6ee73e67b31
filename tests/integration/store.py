#!/usr/bin/python3
"""
store.py - the Redis layout written by cutoverctl, checked with an
independent client: flag JSON, P:flags, P:flags:version, the audit stream,
the PUBLISH on P:flags:changed, atomicity of every write, compare-and-set
under concurrency, cohorts, and bad data found in Redis.
"""
import json
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
import harness  # noqa: E402
from harness import PREFIX, run_ctl

P = PREFIX


def k(suffix, prefix=P):
    return "%s:%s" % (prefix, suffix)


def version(r, prefix=P):
    return int(r.get(k("flags:version", prefix)) or 0)


def audit_len(r, prefix=P):
    return r.xlen(k("flags:audit", prefix)) if r.exists(k("flags:audit", prefix)) else 0


def audit_for(r, subject, prefix=P):
    return [f for _, f in r.xrange(k("flags:audit", prefix)) if f.get("subject") == subject]


def keys_state(r, prefix):
    """Every key under prefix with its type and value."""
    state = {}
    for key in r.scan_iter(match=prefix + ":*", count=1000):
        t = r.type(key)
        if t == "string":
            v = r.get(key)
        elif t == "set":
            v = sorted(r.smembers(key))
        elif t == "stream":
            v = r.xrange(key)
        elif t == "hash":
            v = r.hgetall(key)
        elif t == "list":
            v = r.lrange(key, 0, -1)
        else:
            v = None
        state[key] = (t, v)
    return state


def subscribe(r, prefix=P):
    ps = r.pubsub()
    ps.subscribe(k("flags:changed", prefix))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = ps.get_message(timeout=0.5)
        if m and m["type"] == "subscribe":
            return ps
    raise RuntimeError("no subscribe confirmation")


def next_message(ps, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        m = ps.get_message(timeout=left)
        if m and m["type"] == "message":
            return m


def check_change(t, r, ps, args, subject, want_change, action, actor, desc, prefix=P):
    """Runs one changing command and checks everything a change must do:
    flag written, version + 1, exactly one audit entry (actor, action, old,
    new, version), and a PUBLISH of the new version."""
    fkey = k("flag:" + subject, prefix)
    v0, old, n0 = version(r, prefix), r.get(fkey) or "", audit_len(r, prefix)
    rc, out, err = run_ctl(*args, actor=actor, prefix=prefix)
    why = []
    if rc != 0:
        why.append("exit %s, stderr %r" % (rc, err))
    want_out = "%s: %s (version %d)\n" % (subject, want_change, v0 + 1)
    if out != want_out:
        why.append("stdout %r, want %r" % (out, want_out))
    if version(r, prefix) != v0 + 1:
        why.append("version %d, want %d" % (version(r, prefix), v0 + 1))
    new = r.get(fkey) or ""
    if action == "delete":
        if new or r.sismember(k("flags", prefix), subject):
            why.append("flag still in Redis after delete")
    elif not new or not r.sismember(k("flags", prefix), subject):
        why.append("flag key or P:flags membership missing")
    if audit_len(r, prefix) != n0 + 1:
        why.append("%d audit entries added, want 1" % (audit_len(r, prefix) - n0))
    else:
        _, fields = r.xrevrange(k("flags:audit", prefix), count=1)[0]
        want = {"subject": subject, "actor": actor, "action": action, "old": old, "new": new,
                "version": str(v0 + 1)}
        if fields != want:
            why.append("audit entry %r\nwant %r" % (fields, want))
    m = next_message(ps)
    if m is None:
        why.append("no message on %s" % k("flags:changed", prefix))
    elif m["data"] != str(v0 + 1) or m["channel"] != k("flags:changed", prefix):
        why.append("message %r, want payload %d" % (m, v0 + 1))
    return t.ok(not why, desc, "\n".join(why))


def test_create_get(t, r, ps):
    check_change(t, r, ps, ("flag", "create", "rt", "--description", "round trip \u2713", "--owner", "team-a"),
                 "rt", "created", "create", "alice", "create: flag, version, audit entry, publish")
    stored = r.get(k("flag:rt"))
    rc, out, err = run_ctl("flag", "get", "rt", json=True)
    t.ok(rc == 0 and out == stored + "\n", "flag get --json prints exactly the JSON stored in P:flag:rt",
         "exit %s\nget:    %r\nstored: %r\n%s" % (rc, out, stored, err))
    try:
        f = json.loads(out)
    except ValueError:
        f = None
    t.eq(f, {"name": "rt", "enabled": False, "kill": False, "percent": 0, "salt": "rt", "allow": [],
             "deny": [], "cohorts": [], "description": "round trip \u2713", "owner": "team-a"},
         "created flag: disabled, 0%, salted with its name, description and owner kept")
    rc, out, err = run_ctl("flag", "get", "rt")
    want = ["name         rt", "enabled      false", "kill         false", "percent      0% (0 basis points)",
            "salt         rt", "allow        -", "deny         -", "cohorts      -",
            "description  round trip \u2713", "owner        team-a"]
    t.eq((rc, out.splitlines()), (0, want), "flag get prints every field")

    before = keys_state(r, P)
    rc, out, err = run_ctl("flag", "create", "rt", "--owner", "someone-else")
    t.ok(rc == 4 and "already exists" in err and "'rt'" in err, "create twice: exit 4, 'already exists'",
         "exit %s, stderr %r" % (rc, err))
    after = keys_state(r, P)
    t.ok(before == after and len(audit_for(r, "rt")) == 1,
         "create twice: nothing changed (flag, version, one audit entry)",
         "before %r\nafter  %r" % (before, after))


def test_changes(t, r, ps):
    changes = [
        (("flag", "enable", "rt"), "enabled false -> true", "enable", "bob"),
        (("flag", "set", "rt", "--percent", "25%"), "percent 0% -> 25%", "set", "carol"),
        (("flag", "allow", "rt", "u1", "u2"), "allow +u1, allow +u2", "allow", "dave"),
        (("flag", "deny", "rt", "u3"), "deny +u3", "deny", "erin"),
        (("flag", "allow", "rt", "--remove", "u1"), "allow -u1", "unlist", "frank"),
        (("flag", "cohort", "add", "rt", "beta"), "cohort +beta", "cohort-add", "gina"),
        (("flag", "cohort", "remove", "rt", "beta"), "cohort -beta", "cohort-remove", "gina"),
        (("flag", "set", "rt", "--description", "new text", "--owner", "team-b"),
         'description "round trip \u2713" -> "new text", owner "team-a" -> "team-b"', "set", "hank"),
        (("flag", "kill", "rt"), "kill false -> true", "kill", "ivy"),
        (("flag", "unkill", "rt"), "kill true -> false", "unkill", "ivy"),
        (("flag", "disable", "rt"), "enabled true -> false", "disable", "jo"),
        (("flag", "rollback", "rt"), "percent 25% -> 0%", "rollback", "jo"),
        (("flag", "delete", "rt"), "deleted", "delete", "kim"),
    ]
    for args, change, action, actor in changes:
        check_change(t, r, ps, args, "rt", change, action, actor,
                     "flag %s: flag, version + 1, one audit entry (actor %s, old, new), one publish"
                     % (" ".join(args[1:]), actor))

    run_ctl("flag", "create", "rt2")
    next_message(ps)
    rc, out, err = run_ctl("flag", "set", "rt2", "--percent", "30%", json=True)
    try:
        j = json.loads(out)
    except ValueError:
        j = None
    want = {"subject": "rt2", "version": version(r), "change": "percent 0% -> 30%",
            "flag": json.loads(r.get(k("flag:rt2")))}
    t.eq((rc, j), (0, want), "--json change output: subject, version, change text, the flag as written")
    next_message(ps)


def test_no_change(t, r, ps):
    run_ctl("flag", "enable", "rt2")
    run_ctl("flag", "allow", "rt2", "u1")
    next_message(ps), next_message(ps)
    v0, n0, json0 = version(r), audit_len(r), r.get(k("flag:rt2"))
    rc, out, err = run_ctl("flag", "enable", "rt2")
    t.eq((rc, out), (0, "rt2: no change\n"), "enable an enabled flag prints 'no change'")
    others = [run_ctl(*a)[:2] for a in (("flag", "set", "rt2", "--percent", "3000"),
                                        ("flag", "allow", "rt2", "u1"),
                                        ("flag", "deny", "rt2", "--remove", "nobody"),
                                        ("flag", "unkill", "rt2"))]
    t.eq(others, [(0, "rt2: no change\n")] * 4,
         "same percent, allow of a listed id, removal of an absent id, unkill of a live flag: 'no change'")
    t.ok((version(r), audit_len(r), r.get(k("flag:rt2"))) == (v0, n0, json0),
         "no change: version not bumped, no audit entry, flag untouched",
         "version %d -> %d, audit %d -> %d" % (v0, version(r), n0, audit_len(r)))
    rc, out, err = run_ctl("flag", "kill", "rt2")
    m = next_message(ps)
    t.ok(m is not None and m["data"] == str(v0 + 1),
         "no change published nothing: the next message is the next real change",
         "message %r, want %d" % (m, v0 + 1))


def test_cohorts(t, r, ps):
    ck, names = k("cohort:beta"), k("cohorts")
    v0 = version(r)
    rc, out, err = run_ctl("cohort", "add", "beta", "u1", "u2", actor="carol")
    e = audit_for(r, "cohort:beta")
    m = next_message(ps)
    t.ok(rc == 0 and out == "cohort beta: added 2 members\n" and r.smembers(ck) == {"u1", "u2"}
         and r.sismember(names, "beta") and version(r) == v0 + 1 and m and m["data"] == str(v0 + 1),
         "cohort add: members in P:cohort:beta, name in P:cohorts, version + 1, published",
         "exit %s out %r err %r members %r cohorts %r version %d msg %r"
         % (rc, out, err, r.smembers(ck), r.smembers(names), version(r), m))
    t.ok(len(e) == 1 and e[0]["actor"] == "carol" and e[0]["action"] == "add 2 ids: u1 u2"
         and e[0]["version"] == str(v0 + 1),
         "cohort add: one audit entry with subject cohort:beta and the actor", repr(e))

    rc, out, err = run_ctl("cohort", "add", "beta", "u1")
    t.ok(rc == 0 and out == "cohort beta: added 0 members\n" and version(r) == v0 + 1
         and len(audit_for(r, "cohort:beta")) == 1,
         "cohort add of a member already there: no version bump, no audit entry",
         "exit %s out %r version %d" % (rc, out, version(r)))

    rc, out, err = run_ctl("cohort", "remove", "beta", "u1", actor="dora")
    e = audit_for(r, "cohort:beta")
    m = next_message(ps)
    t.ok(rc == 0 and out == "cohort beta: removed 1 member\n" and r.smembers(ck) == {"u2"}
         and r.sismember(names, "beta") and version(r) == v0 + 2 and m and m["data"] == str(v0 + 2)
         and len(e) == 2 and e[1]["actor"] == "dora" and e[1]["action"] == "remove 1 id: u1",
         "cohort remove: member gone, cohort still listed, version + 1, audited, published",
         "exit %s out %r members %r version %d audit %r" % (rc, out, r.smembers(ck), version(r), e))

    rc, out, err = run_ctl("cohort", "remove", "beta", "u2")
    m = next_message(ps)
    t.ok(rc == 0 and not r.exists(ck) and not r.sismember(names, "beta") and version(r) == v0 + 3
         and m and m["data"] == str(v0 + 3) and len(audit_for(r, "cohort:beta")) == 3,
         "removing the last member drops the cohort from P:cohorts (audited, published)",
         "exit %s members %r cohorts %r version %d" % (rc, r.smembers(ck), r.smembers(names), version(r)))


def test_atomicity(t, r):
    pa = P + "-atom"
    run_ctl("flag", "create", "x", prefix=pa)
    run_ctl("cohort", "add", "c1", "u1", prefix=pa)
    ps = subscribe(r, pa)
    audit, vkey = k("flags:audit", pa), k("flags:version", pa)

    r.rename(audit, P + "-saved-audit")
    r.set(audit, "not a stream")
    for args, what in ((("flag", "enable", "x"), "flag enable"), (("cohort", "add", "c1", "u2"), "cohort add"),
                       (("flag", "delete", "x"), "flag delete")):
        before = keys_state(r, pa)
        rc, out, err = run_ctl(*args, prefix=pa)
        after = keys_state(r, pa)
        t.ok(rc not in (0, None) and audit in err, "%s with %s a string: fails naming the key" % (what, audit),
             "exit %s stderr %r" % (rc, err))
        t.ok(before == after, "%s with the audit key of the wrong type: nothing written" % what,
             "before %r\nafter  %r" % (before, after))
    r.delete(audit)
    r.rename(P + "-saved-audit", audit)

    good = r.get(vkey)
    r.set(vkey, "seven")
    for args, what in ((("flag", "enable", "x"), "flag enable"), (("cohort", "add", "c1", "u2"), "cohort add")):
        before = keys_state(r, pa)
        rc, out, err = run_ctl(*args, prefix=pa)
        after = keys_state(r, pa)
        t.ok(rc not in (0, None) and vkey in err, "%s with %s not an integer: fails naming the key" % (what, vkey),
             "exit %s stderr %r" % (rc, err))
        t.ok(before == after, "%s with a non-integer version: nothing written" % what,
             "before %r\nafter  %r" % (before, after))
    r.set(vkey, good)

    rc, out, err = run_ctl("flag", "enable", "x", prefix=pa)
    m = next_message(ps)
    t.ok(rc == 0 and m and m["data"] == str(int(good) + 1),
         "failed writes published nothing; once repaired the next change is version + 1",
         "exit %s message %r, want %d" % (rc, m, int(good) + 1))
    ps.close()


def test_no_lost_updates(t, r):
    run_ctl("flag", "create", "race")
    v0, n0 = version(r), len(audit_for(r, "race"))
    evals0 = r.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
    results = {}

    def loop(tag):
        results[tag] = [run_ctl("flag", "allow", "race", "%s%d" % (tag, i), actor="racer-" + tag)[0]
                        for i in range(20)]

    threads = [threading.Thread(target=loop, args=(tag,)) for tag in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    codes = results.get("a", []) + results.get("b", [])
    allow = json.loads(r.get(k("flag:race")))["allow"]
    want = {"%s%d" % (tag, i) for tag in "ab" for i in range(20)}
    evals = r.info("commandstats").get("cmdstat_eval", {}).get("calls", 0) - evals0
    t.diag("40 concurrent updates took %d write scripts (%d compare-and-set retries)" % (evals, evals - 40))
    t.ok(codes == [0] * 40, "2 concurrent writers x 20 allow: every command succeeded", repr(codes))
    t.ok(set(allow) == want and len(allow) == 40 and version(r) == v0 + 40
         and len(audit_for(r, "race")) == n0 + 40,
         "2 concurrent writers x 20 allow: all 40 ids kept, 40 versions, 40 audit entries",
         "missing %r, extra %r, version +%d" % (sorted(want - set(allow)), sorted(set(allow) - want),
                                              version(r) - v0))


def test_bad_json(t, r):
    pb = P + "-bad"
    r.set(k("flag:good", pb), '{"name":"good"}')
    cases = [
        ("unknown", '{"name":"unknown","enabled":true,"colour":"red"}', "colour"),
        ("pct", '{"name":"pct","percent":10001}', "percent"),
        ("pcttype", '{"name":"pcttype","percent":"10"}', "percent"),
        ("dup", '{"name":"dup","kill":false,"kill":true}', "kill"),
        ("dupid", '{"name":"dupid","allow":["u1","u1"]}', "allow"),
        ("trunc", '{"name":"trunc","enabled":tru', "JSON"),
    ]
    for name, text, field in cases:
        r.set(k("flag:" + name, pb), text)
        r.sadd(k("flags", pb), name)
    r.sadd(k("flags", pb), "good")
    for name, text, field in cases:
        rc, out, err = run_ctl("flag", "get", name, prefix=pb)
        t.ok(rc == 4 and field in err and "'%s'" % name in err,
             "flag get of %s: exit 4 naming the flag and %r" % (text, field), "exit %s stderr %r" % (rc, err))
    rc, out, err = run_ctl("flag", "enable", "unknown", prefix=pb)
    t.ok(rc == 4 and r.get(k("flag:unknown", pb)) == cases[0][1],
         "flag enable of a bad flag: exit 4, the bad JSON is left alone", "exit %s stderr %r" % (rc, err))

    pl = P + "-badlist"
    for name in ("aa", "bb", "cc"):
        run_ctl("flag", "create", name, prefix=pl)
    r.set(k("flag:bb", pl), '{"name":"bb","colour":"red"}')
    rc, out, err = run_ctl("flag", "list", prefix=pl)
    t.ok(rc == 4 and "'bb'" in err and "colour" in err, "flag list with one bad flag: exit 4 naming it",
         "exit %s stderr %r" % (rc, err))
    r.set(k("flag:bb", pl), '{"name":"cc"}')
    rc, out, err = run_ctl("flag", "list", prefix=pl)
    t.ok(rc == 4 and "'bb'" in err, "flag list: a flag whose name field differs from its key is refused",
         "exit %s stderr %r" % (rc, err))


def body(t):
    with harness.RedisServer() as srv:
        r = srv.client()
        ps = subscribe(r)
        test_create_get(t, r, ps)
        test_changes(t, r, ps)
        test_no_change(t, r, ps)
        test_cohorts(t, r, ps)
        ps.close()
        test_atomicity(t, r)
        test_no_lost_updates(t, r)
        test_bad_json(t, r)


if __name__ == "__main__":
    harness.main(body)
