#!/usr/bin/python3
"""
story.py - the README's main job, run by `scripts/demo` (which installs
and builds first): the users service carved out of the monolith, on this
machine, from the first read to the kill switch.

    scripts/demo [--keep] [--mongo URI] [--users N] [--rate R] [--step S]

In a temporary directory it starts redis-server, a MongoDB (the double,
tests/mongo_double.py, or the server of --mongo / CUTOVER_MONGO_URI), the
monolith (examples/legacy_app.py, database "app") and the users service
(examples/user_service.py, database "users_service", events on
cutover:service:events), cutover-proxy in front of both, and the
workers `cutover-migrate run` and `cutover-migrate syncback`
(tests/integration/world.py, shared with the story's test). It seeds
legacy, drives steady traffic through the proxy, and steps the rollout:
reads 0% -> 10% -> 50% -> 100%, then writes 10% -> 100% (both flags share
one salt, so the users whose writes move are among those whose reads
did), then kills both flags, waiting for sync-back. Each step prints a
small table (requests by upstream from the proxy's /metrics; migrated
users, queue lag and sync-back lag from `cutoverctl migration status`) and
one email change made through the proxy, followed to the monolith's
order page. The end checks that legacy and the service hold every
acknowledged write.

Ctrl-C or SIGTERM stops everything; the directory (logs, configs) is
removed unless --keep, which leaves it all running and prints what to
try and how to stop it. Environment: CUTOVER_BUILDDIR (default
build/demo), CUTOVER_MONGO_URI.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # keep the source tree clean
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("CUTOVER_SRCDIR", TOP)
os.environ.setdefault("CUTOVER_BUILDDIR", os.path.join(TOP, "build", "demo"))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import harness  # noqa: E402
import world  # noqa: E402
from world import READ_FLAG, WRITE_FLAG  # noqa: E402

BOLD, DIM, RED, OFF = ("\033[1m", "\033[2m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def say(line=""):
    print(line, flush=True)


def item(what, text):
    """One line of the story's set-up: what, then text."""
    say("  %-9s %s" % (what, text))


def title(text):
    say()
    say("%s== %s%s" % (BOLD, text, OFF))


class Stop(Exception):
    """SIGTERM or Ctrl-C."""


def on_signal(signum, frame):
    raise Stop()


# --- the table ---------------------------------------------------------------

COLUMNS = ("", "legacy/s", "service/s", "5xx/s", "migrated", "queue lag", "sync-back lag")
WIDTHS = (6, 10, 11, 7, 10, 11, 15)


def row(cells):
    return "  " + "".join(str(c).rjust(w) for c, w in zip(cells, WIDTHS))


def seconds(v):
    return "n/a" if v is None else "%.2f s" % v


def watch(w, duration):
    """Prints a row a second for duration seconds: requests by upstream in
    that second, and the migration's state."""
    say(DIM + row(COLUMNS) + OFF)
    before, t0 = w.counts(), time.monotonic()
    for k in range(1, int(duration) + 1):
        time.sleep(max(0.0, t0 + k - time.monotonic()))
        now = w.counts()
        # A counter going down is a restarted proxy: count from zero.
        d = {key: now[key] - before[key] if now[key] >= before[key] else now[key] for key in now}
        before = now
        st = w.status() or {}
        lag = world.syncback_lag(st)
        say(row(("+%d s" % k, "%d" % d["legacy"], "%d" % d["service"], "%d" % d["5xx"],
                 "%d" % st.get("migrated", 0), seconds(st.get("oldest_lag_s")), seconds(lag))))


def probe_email(w, probes, writes_on):
    """One email change through the proxy, for a probe user whose writes go
    to the service when the write flag sends any there, followed to the
    user's order read through the monolith. True if the order showed it."""
    user = next((u for u in probes if writes_on.get(u) and w.migrated(u)), probes[0])
    probes.remove(user)
    probes.append(user)  # a different user next time
    order = "o" + user[1:]  # the seed gives user uN the order oN
    e = w.email_change(user, order)
    if e["status"] != 200:
        say("  %semail   change for %s answered %s%s" % (RED, user, e["status"], OFF))
    elif e["delay"] is None:
        say("  %semail   %s changed via %s; order %s through the monolith did not show it within 10 s%s"
            % (RED, user, e["route"], order, OFF))
    else:
        say("  email   %s changed via %-7s -> order %s through the monolith shows it after %d ms"
            % (user, e["route"], order, e["delay"] * 1000))
    return e["delay"] is not None


def run_flag(w, *args):
    """Prints and runs `cutoverctl flag ARGS` and its output, indented."""
    say("  $ cutoverctl flag %s" % " ".join(args))
    rc, out, took = w.flag(*args)
    for line in out.strip().splitlines():
        say("    " + line.replace("cutoverctl: ", ""))
    if rc != 0:
        raise RuntimeError("cutoverctl flag %s: exit %s" % (" ".join(args), rc))
    return took


# --- the story -----------------------------------------------------------------

def story(w, args, work, running):
    users = ["u%d" % i for i in range(1, args.users + 1)]
    half = len(users) // 2
    writers, probes = users[:half], users[half:]
    r = w.legacy.call("POST", "/admin/seed", {"users": args.users, "orders": args.users}, timeout=300)
    if r.status != 200:
        raise RuntimeError("seeding legacy answered %s: %r" % (r.status, r.body))
    item("seeded", "%d users and %d orders into legacy (POST /admin/seed)" % (args.users, args.users))
    traffic = world.Traffic(w.proxy, users, ["o%d" % i for i in range(1, args.users + 1)], writers,
                            rate=args.rate, threads=4).start()
    running.append(traffic)
    item("traffic", "~%d requests/s through the proxy: user reads 70%%, order reads 15%%, writes 10%%, "
         "creates 5%%" % args.rate)

    steps = [("all on legacy: both flags enabled at 0%, salted alike", []),
             ("reads 10%", [("set", READ_FLAG, "--percent", "10%")]),
             ("reads 50%", [("set", READ_FLAG, "--percent", "50%")]),
             ("reads 100%", [("set", READ_FLAG, "--percent", "100%")]),
             ("writes 10% (inside the reads' 100%)", [("set", WRITE_FLAG, "--percent", "10%")]),
             ("writes 100%", [("set", WRITE_FLAG, "--percent", "100%")]),
             ("kill switch, both flags", [w.kill_args(WRITE_FLAG), w.kill_args(READ_FLAG)])]
    writes_on = {}
    ok = True
    for n, (name, commands) in enumerate(steps, 1):
        title("step %d/%d  %s" % (n, len(steps), name))
        for c in commands:
            took = run_flag(w, *c)
            if "--wait-synced" in c:
                say("    (returned after %.2f s)" % took)
            if c[1] == WRITE_FLAG and c[0] == "set":
                writes_on = w.decisions(WRITE_FLAG, probes)
        if commands and commands[0][0] == "kill":
            writes_on = {}
        watch(w, args.step)
        ok = probe_email(w, probes, writes_on) and ok

    title("result")
    traffic.stop()
    s = traffic.summary()
    item("traffic", "{:,} requests; {:,} writes (to {:,} users' fields) and {:,} creates acknowledged, {:,} retries, "
         "{:,} answers not 2xx".format(s["sent"], s["writes"], s["fields"], s["creates"], s["retries"], s["errors"]))
    for where, db, wait in (("legacy", w.ldb, 5), ("service", w.sdb, 30)):
        bad = harness.poll(lambda: not traffic.missing(db), wait, 0.2) or traffic.missing(db)
        if bad is True:
            item(where, "holds every acknowledged write and create")
        else:
            ok = False
            item(where, "%slacks %d: %s%s" % (RED, len(bad), "; ".join(bad[:3]), OFF))
    rc, report, out = w.verify()
    if report is None:
        item("verify", "%s$ cutoverctl migration verify --all: exit %s: %s%s" % (RED, rc, out.strip()[-300:], OFF))
    else:
        item("verify", "$ cutoverctl migration verify -c migrate.conf --all: exit {}, {:,} users, {:,} with drift, "
             "{:,} missing in the service, {:,} in legacy".format(
                 rc, report.get("verified", 0), report.get("with_drift", 0), report.get("missing_in_service", 0),
                 report.get("missing_in_legacy", 0)))
    ok = ok and rc == 0
    return ok


def keep_instructions(w, work):
    """What to try on what --keep left running, and how to stop it."""
    stop = os.path.join(work, "stop")
    running = w.pids()
    pids = [running[name] for name, _ in reversed(w.processes()) if name in running]  # last started first
    with open(stop, "w") as f:
        f.write("#!/bin/sh\n# Stops what scripts/demo --keep left running, then removes %s.\n" % work)
        f.write("kill %s 2>/dev/null\n" % " ".join(map(str, pids)))
        f.write("for _ in $(seq 100); do kill -0 %s 2>/dev/null || break; sleep 0.1; done\n"
                % " ".join(map(str, pids)))
        f.write("rm -rf '%s'\n" % work)
    os.chmod(stop, 0o755)
    proxy = "http://127.0.0.1:%d" % w.proxy.port
    title("left running (--keep): try")
    for line in (
            "export PATH=%s:$PATH CUTOVER_REDIS_URL=%s" % (harness.BUILDDIR, w.redis.url(0)),
            "cutoverctl flag unkill %s; cutoverctl flag unkill %s   # back to the service" % (READ_FLAG, WRITE_FLAG),
            "curl -si %s/api/users/u7 | grep -i '^x-cutover'   # the decision header" % proxy,
            "curl -s -X POST -H 'Content-Type: application/json' -d '{\"email\": \"seven@example.org\"}' "
            "%s/admin/users/u7/email" % proxy,
            "curl -s %s/api/orders/o7   # through the monolith, email populated" % proxy,
            "cutoverctl flag list; cutoverctl flag eval %s u7; cutoverctl migration status" % READ_FLAG,
            "curl -s http://127.0.0.1:%d/metrics | grep requests_total" % w.proxy.admin_port):
        say("  " + line)
    say("  logs under %s:" % work)
    for name, path in w.logs():
        say("    %-13s %s" % (name, os.path.relpath(path, work)))
    say("  stop it all: %s" % stop)


def failure_report(w, e):
    """The error, and the tail of the log of each process that died."""
    say("%sfailed: %s%s" % (RED, str(e).splitlines()[0] if str(e) else type(e).__name__, OFF))
    rest = str(e).splitlines()[1:]
    if rest:
        say("\n".join("  " + line for line in rest[-20:]))
    dead = [(n, p) for n, p in (w.processes() if w else []) if p is not None and p.proc is not None
            and p.proc.poll() is not None]
    for name, p in dead:
        path = p.logfile if p is w.redis else p.errpath
        say("-- %s exited (%s); tail of %s:" % (name, p.proc.returncode, path))
        with open(path, errors="replace") as f:
            say("".join(f.readlines()[-15:]).rstrip())
    if w and w.proxy and not dead and not rest:
        say("-- tail of the proxy's log:\n" + w.proxy.log_tail(10))


def main():
    ap = argparse.ArgumentParser(prog="scripts/demo",
                                 description="cutover's main job: the whole migration story, on this machine")
    ap.add_argument("--keep", action="store_true", help="leave it all running at the end")
    ap.add_argument("--mongo", default=os.environ.get("CUTOVER_MONGO_URI"), metavar="URI",
                    help="a real MongoDB instead of the double (databases cutover_demo_*)")
    ap.add_argument("--users", type=int, default=1000, help="users (and orders) seeded (default 1000)")
    ap.add_argument("--rate", type=int, default=150, help="requests a second of traffic (default 150)")
    ap.add_argument("--step", type=int, default=3, help="seconds each step is watched (default 3)")
    args = ap.parse_args()
    for prog in ("cutoverctl", "cutover-proxy", "cutover-migrate"):
        if not os.access(os.path.join(harness.BUILDDIR, prog), os.X_OK):
            sys.exit("no %s in %s: build first (scripts/demo does)" % (prog, harness.BUILDDIR))

    work = tempfile.mkdtemp(prefix="cutover-story-")
    tempfile.tempdir = work  # every log and config of the story goes in here
    harness.KEEP = args.keep  # kept processes must outlive this one
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    say("%scutover: the users service carved out of the monolith, on this machine%s" % (BOLD, OFF))
    item("work dir", "%s (logs, configs)" % work)
    w = mongo = None
    ok = kept = False
    running = []  # the traffic, once it runs
    try:
        mongo = harness.Mongo(args.mongo)
        item("mongodb", args.mongo or "tests/mongo_double.py on " + mongo.uri)
        names = ("cutover_demo_app", "cutover_demo_users_service") if mongo.real else ("app", "users_service")
        w = world.World("cutover", mongo, mongo.database(name=names[0]), mongo.database(name=names[1]),
                        log=item)
        ok = story(w, args, work, running)
        if args.keep:
            keep_instructions(w, work)
            kept = True
    except Stop:
        say("\nstopping (signal)")
    except Exception as e:
        if not isinstance(e, RuntimeError):
            traceback.print_exc()
        failure_report(w, e)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if kept:
            sys.stdout.flush()
            os._exit(0 if ok else 1)  # no atexit clean-up: it all stays up
        for traffic in running:
            traffic.stop(timeout=2)
        harness.KEEP = False  # stopping now, --keep or not: redis-server too
        if w is not None:
            w.close()
        if mongo is not None:
            mongo.close()
        if args.keep:
            del harness._tempdirs[:]  # the logs stay for a look
        harness.cleanup()
        problems = list(harness._problems)
        for p in problems:
            say("%s%s%s" % (RED, p.splitlines()[0], OFF))
        if args.keep:
            say("stopped everything; the logs are in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
            say("stopped everything; removed %s%s" % (work, "" if ok else " (--keep keeps it)"))
    sys.exit(0 if ok and not problems else 1)


if __name__ == "__main__":
    main()
