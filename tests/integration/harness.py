"""
harness.py - shared helpers for cutover's integration tests.

Each test script (store.py, ctl.py, watcher.py, redis_down.py) starts its
own redis-server, talks to it through the real `cutoverctl` binary and
checks the result independently with the python redis client. Output is
plain TAP for automake's tap-driver.

Environment:
  CUTOVER_BUILDDIR  where the cutoverctl binary is (set by `make check`)
  CUTOVER_SRCDIR    the source tree (test vectors live there)
  TEST_KEEP=1       leave redis-server running at the end and say how to
                    reach it
  TEST_VERBOSE=1    when a test point fails, also print the stderr of the
                    commands it ran and the tail of the redis log

Python 3 stdlib plus Debian's python3-redis; run with /usr/bin/python3.
"""
import atexit
import json as jsonlib
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import redis

BUILDDIR = os.environ.get("CUTOVER_BUILDDIR") or os.getcwd()
SRCDIR = os.environ.get("CUTOVER_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CTL = os.path.join(BUILDDIR, "cutoverctl")
REDIS_SERVER = "/usr/bin/redis-server"
SETPRIV = "/usr/bin/setpriv"
KEEP = os.environ.get("TEST_KEEP") == "1"
VERBOSE = os.environ.get("TEST_VERBOSE") == "1"

# One key prefix per test script, so scripts never see each other's keys.
PREFIX = "t" + secrets.token_hex(4)

# A sanitizer report fails the test even when the exit status was expected.
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                     "UndefinedBehaviorSanitizer")
SANITIZER_EXIT_CODES = (86, 87)  # ASAN_OPTIONS / LSAN_OPTIONS exitcode

_lock = threading.Lock()
_problems = []  # failures seen by run_ctl/Watch, charged to the next test point
_context = []   # (argv, rc, stderr) of commands since the last test point
_servers = []   # RedisServer objects not yet closed
_children = []  # Watch objects not yet stopped
_running = set()  # cutoverctl processes run_ctl is waiting for


def _with_parent(argv):
    """argv run so that it gets SIGTERM if this test process dies, even by
    SIGKILL (setpriv sets the parent-death signal, then execs argv: same
    pid). No redis-server or watcher outlives a crashed test."""
    if os.access(SETPRIV, os.X_OK):
        return [SETPRIV, "--pdeathsig", "TERM", "--"] + argv
    return argv


def _problem(msg):
    with _lock:
        _problems.append(msg)


def _note_command(argv, rc, stderr):
    with _lock:
        _context.append((argv, rc, stderr))


def sanitizer_problem(what, rc, stderr):
    """A description of a sanitizer report in (rc, stderr), or None."""
    hits = [m for m in SANITIZER_MARKERS if m in stderr]
    if not hits and rc not in SANITIZER_EXIT_CODES:
        return None
    return "sanitizer report from %s (exit %s, %s):\n%s" % (
        what, rc, ", ".join(hits) or "sanitizer exit code", stderr[-4000:])


# --- TAP ---------------------------------------------------------------------

class TAP:
    """Plain TAP: ok/eq/diag, the plan printed at the end."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def diag(self, msg):
        for line in str(msg).splitlines() or [""]:
            print("# " + line)
        sys.stdout.flush()

    def ok(self, cond, desc, diag=None):
        with _lock:
            problems = list(_problems)
            _problems.clear()
            context = list(_context)
            _context.clear()
        passed = bool(cond) and not problems
        self.n += 1
        desc = " ".join(str(desc).replace("#", "no.").split())
        print("%s %d - %s" % ("ok" if passed else "not ok", self.n, desc))
        if not passed:
            self.failed += 1
            if not cond and diag:
                self.diag(diag)
            for p in problems:
                self.diag(p)
            if VERBOSE:
                for argv, rc, stderr in context:
                    self.diag("command: %s -> exit %s" % (" ".join(map(str, argv)), rc))
                    if stderr:
                        self.diag("stderr:\n" + stderr[-3000:])
                for srv in list(_servers):
                    self.diag("redis log %s (tail):\n%s" % (srv.logfile, srv.log_tail()))
        sys.stdout.flush()
        return passed

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, "got:  %r\nwant: %r" % (got, want))

    def finish(self):
        print("1..%d" % self.n)
        sys.stdout.flush()
        return 1 if self.failed else 0


T = None  # the running script's TAP


def main(body):
    """Runs body(t) with a fresh TAP, turns an exception into a failed test
    point, stops everything and exits with the TAP status."""
    global T
    T = TAP()
    if not os.access(CTL, os.X_OK):
        print("Bail out! no cutoverctl at %s (set CUTOVER_BUILDDIR to the build directory)" % CTL)
        sys.exit(1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        body(T)
    except Exception:
        T.ok(False, "no unexpected exception", traceback.format_exc())
    for w in list(_children):
        w.stop()
    with _lock:
        leftover = bool(_problems)
    if leftover:
        T.ok(False, "no sanitizer or command problem after the last test point")
    status = T.finish()
    cleanup()
    sys.exit(status)


def _on_signal(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    print("# interrupted by signal %d, cleaning up" % signum)
    sys.stdout.flush()
    cleanup()
    os._exit(128 + signum)


def cleanup():
    """Kills watchers and stops (or with TEST_KEEP=1 keeps) redis servers.
    Safe to call more than once; registered with atexit."""
    for w in list(_children):
        w.kill()
    with _lock:
        running = list(_running)
    for p in running:
        if p.poll() is None:
            p.kill()
    for srv in list(_servers):
        srv.close()


atexit.register(cleanup)


# --- redis-server ----------------------------------------------------------

def free_port():
    """A TCP port nobody listens on right now (bind 0, release)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class RedisServer:
    """A private redis-server on 127.0.0.1 in its own temp dir.

    with RedisServer() as srv: ...   starts it, and always stops it.
    srv.stop(save=True) / srv.start() restart it on the same port and dir,
    and with save=True the data survives (dump.rdb in the dir).
    """

    def __init__(self, password=None, args=()):
        self.password = password
        self.args = list(args)
        self.dir = tempfile.mkdtemp(prefix="cutover-it-redis-")
        self.logfile = os.path.join(self.dir, "redis.log")
        self.port = None
        self.proc = None
        self.closed = False
        _servers.append(self)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def url(self, db=None, password=None, user=None):
        auth = ""
        password = self.password if password is None else password
        if password:
            auth = "%s:%s@" % (user or "", password)
        return "redis://%s127.0.0.1:%d%s" % (auth, self.port, "" if db is None else "/%d" % db)

    def client(self, db=0, decode=True):
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           decode_responses=decode, socket_timeout=10, socket_connect_timeout=2)

    def start(self, timeout=10.0):
        """Starts the server: on a fresh free port the first time (retrying
        on a collision), on the same port and dir after a stop."""
        if self.port is not None:
            deadline = time.monotonic() + timeout
            while True:  # same port: retry only while it is still in use
                if self._spawn(deadline):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not restart on port %d:\n%s"
                                       % (self.port, self.log_tail()))
        for _ in range(20):
            self.port = free_port()
            if self._spawn(time.monotonic() + timeout):
                return
        raise RuntimeError("could not start redis-server on a free port:\n" + self.log_tail())

    def _spawn(self, deadline):
        """Returns True once our server answers PING, False if the port was
        taken; raises if it fails otherwise."""
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", self.logfile, "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        argv += self.args
        log_start = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        self.proc = subprocess.Popen(argv if KEEP else _with_parent(argv), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        client = self.client()
        try:
            while True:
                if self.proc.poll() is not None:
                    log = self._log_since(log_start)
                    if "Address already in use" in log:
                        return False
                    raise RuntimeError("redis-server exited with %s:\n%s" % (self.proc.returncode, log))
                try:
                    info = client.info("server")
                    # Someone else's redis could hold the port: check it is ours.
                    if info.get("process_id") == self.proc.pid:
                        return True
                    self._kill()
                    return False
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self._kill()
                    raise RuntimeError("redis-server did not answer PING in time:\n" + self.log_tail())
                time.sleep(0.02)  # poll interval, bounded by the deadline
        finally:
            client.close()

    def _log_since(self, offset):
        try:
            with open(self.logfile, errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, save=False, timeout=10.0):
        """SHUTDOWN SAVE (data kept in dir/dump.rdb) or SHUTDOWN NOSAVE,
        and waits for the process to exit."""
        if not self.running():
            return
        client = self.client()
        try:
            client.shutdown(save=save, nosave=not save)
        except redis.RedisError:
            pass
        finally:
            client.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self in _servers:
            _servers.remove(self)
        if KEEP and self.running():
            print("# TEST_KEEP=1: redis-server pid %d left running on 127.0.0.1:%d (dir %s)"
                  % (self.proc.pid, self.port, self.dir))
            print("#   reach it with: redis-cli -p %d%s   (keys under prefix %s)"
                  % (self.port, " -a " + self.password if self.password else "", PREFIX))
            print("#   or: %s --redis %s --prefix %s flag list" % (CTL, self.url(), PREFIX))
            print("#   stop it with: redis-cli -p %d%s shutdown nosave"
                  % (self.port, " -a " + self.password if self.password else ""))
            sys.stdout.flush()
            return
        try:
            self.stop(save=False, timeout=5)
        except Exception:
            self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _default_url():
    """The URL of the first server the script started."""
    for srv in _servers:
        if srv.port is not None:
            return srv.url()
    raise RuntimeError("no redis server started")


# --- cutoverctl ----------------------------------------------------------------

def ctl_argv(args, redis_url=None, prefix=None, json=False, actor=None):
    argv = [CTL, "--redis", redis_url or _default_url(), "--prefix", prefix or PREFIX]
    if json:
        argv.append("--json")
    if actor is not None:
        argv += ["--actor", actor]
    return argv + [a if isinstance(a, bytes) else str(a) for a in args]


def _child_env():
    env = dict(os.environ)
    env.pop("CUTOVER_REDIS_URL", None)
    env.pop("CUTOVER_PREFIX", None)
    return env


def run_ctl(*args, redis_url=None, prefix=None, json=False, actor=None, timeout=10):
    """Runs cutoverctl --redis URL --prefix P [--json] [--actor A] ARGS and
    returns (exit_code, stdout, stderr); exit_code is None on a timeout.
    A sanitizer report or a timeout fails the next test point."""
    argv = ctl_argv(args, redis_url, prefix, json, actor)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_child_env())
    with _lock:
        _running.add(p)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
        _problem("timed out after %ss: %s" % (timeout, " ".join(map(str, argv))))
    finally:
        with _lock:
            _running.discard(p)
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    _note_command(argv, rc, err)
    bad = sanitizer_problem(" ".join(map(str, argv[5:])), rc, err)
    if bad:
        _problem(bad)
    return rc, out, err


class Watch:
    """`cutoverctl [--json] flag watch` as a long-running child. Lines are
    read with select() against a deadline; with json=True each line is
    parsed into a dict (a line that is not JSON fails the next test)."""

    def __init__(self, redis_url=None, prefix=None, json=True):
        self.json = json
        self.argv = ctl_argv(["flag", "watch"], redis_url, prefix, json)
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(_with_parent(self.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errfile, env=_child_env())
        self.fd = self.proc.stdout.fileno()
        self.pending = b""
        self.events = []  # every line seen, parsed
        self.pos = 0      # next event wait_for looks at
        self.eof = False
        self.returncode = None
        _children.append(self)

    def _read(self, deadline):
        timeout = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not self.json:
                self.events.append(line)
                continue
            try:
                self.events.append(jsonlib.loads(line))
            except ValueError:
                _problem("watch printed a line that is not JSON: %r" % line)

    def wait_for(self, pred, timeout=5.0):
        """The next event (after those already returned) for which pred is
        true, or None if none comes before the deadline. Events skipped
        on the way stay in self.events."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pos < len(self.events):
                e = self.events[self.pos]
                self.pos += 1
                if pred(e):
                    return e
            if self.eof or time.monotonic() >= deadline:
                return None
            self._read(deadline)

    def stderr(self):
        self.errfile.seek(0)
        return self.errfile.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Sends sig, waits up to timeout; returns the exit status, or None
        if it had to be killed. Checks stderr for sanitizer reports."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _problem("watch did not exit within %ss of signal %d" % (timeout, sig))
                self.kill()
                return None
        if self in _children:
            _children.remove(self)
            self.returncode = self.proc.returncode
            err = self.stderr()
            _note_command(self.argv, self.returncode, err)
            bad = sanitizer_problem("flag watch", self.returncode, err)
            if bad:
                _problem(bad)
        return self.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self in _children:
            _children.remove(self)
