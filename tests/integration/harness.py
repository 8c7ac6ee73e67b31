"""
harness.py - shared helpers for cutover's integration tests.

Each test script (store.py, ctl.py, watcher.py, redis_down.py) starts its
own redis-server, talks to it through the real `cutoverctl` binary and
checks the result independently with the python redis client. Output is
plain TAP for automake's tap-driver.

The proxy's scripts (proxy_routing.py, proxy_failover.py, proxy_ops.py,
proxy_input.py) also run `cutover-proxy` (Proxy: a config written per
test, free ports, /readyz polled) in front of two echo_upstream.py
processes (Echo) playing legacy and service, and talk HTTP to it with
http.client or, for what http.client will not send, RawConn.

Environment:
  CUTOVER_BUILDDIR  where the cutoverctl and cutover-proxy binaries are
                    (set by `make check`)
  CUTOVER_SRCDIR    the source tree (test vectors live there)
  TEST_KEEP=1       leave redis-server running at the end and say how to
                    reach it
  TEST_VERBOSE=1    when a test point fails, also print the stderr of the
                    commands it ran, the tail of the redis log and of the
                    stderr of the long-running children (proxy, upstreams)

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
_tempdirs = []    # of Process and Proxy objects, removed by cleanup()


def _with_parent(argv):
    """argv run so that it gets SIGTERM if this test process dies, even by
    SIGKILL (setpriv sets the parent-death signal, then execs argv: same
    pid). No redis-server or watcher outlives a crashed test. With KEEP
    (TEST_KEEP=1, or a script that leaves its processes running when it
    exits) argv is run as it is."""
    if not KEEP and os.access(SETPRIV, os.X_OK):
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
                for child in list(_children):
                    if hasattr(child, "log_tail"):
                        self.diag("%s stderr (tail):\n%s" % (child.name, child.log_tail()))
        sys.stdout.flush()
        return passed

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, "got:  %r\nwant: %r" % (got, want))

    def todo(self, cond, desc, reason):
        """A test point known not to pass yet: "not ok N - desc # TODO
        reason", which the TAP driver counts as an expected failure
        (XFAIL), never as a pass; once cond holds, "ok ... # TODO" (XPASS)
        fails the run, so that the TODO is taken out."""
        self.n += 1
        desc = " ".join(str(desc).replace("#", "no.").split())
        print("%s %d - %s # TODO %s" % ("ok" if cond else "not ok", self.n, desc, reason))
        sys.stdout.flush()
        return bool(cond)

    def finish(self):
        print("1..%d" % self.n)
        sys.stdout.flush()
        return 1 if self.failed else 0


T = None  # the running script's TAP


def main(body, programs=()):
    """Runs body(t) with a fresh TAP, turns an exception into a failed test
    point, stops everything and exits with the TAP status. programs: more
    binaries of the build directory the script needs (cutoverctl always)."""
    global T
    T = TAP()
    for prog in (CTL,) + tuple(os.path.join(BUILDDIR, p) for p in programs):
        if not os.access(prog, os.X_OK):
            print("Bail out! no %s at %s (set CUTOVER_BUILDDIR to the build directory)"
                  % (os.path.basename(prog), prog))
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
    if not KEEP:
        while _tempdirs:
            shutil.rmtree(_tempdirs.pop(), ignore_errors=True)


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
    return run_to_end(argv, timeout, " ".join(map(str, argv[5:])))


def run_to_end(argv, timeout, label):
    """Runs argv to completion: (exit_code, stdout, stderr), exit_code
    None on a timeout. A sanitizer report in its stderr or a timeout fails
    the next test point; label names the command in that message."""
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
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    _note_command(argv, rc, err)
    bad = sanitizer_problem(label, rc, err)
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


# --- long-running children: echo upstreams, the proxy ------------------------

class Process:
    """A long-running child that dies with the test (setpriv pdeathsig, as
    for Watch): stdout read by lines against a deadline (read_stdout=True,
    else discarded), stderr appended to a file that can be read while it
    runs, checked for sanitizer reports when it stops and shown (tail) by
    TEST_VERBOSE. expect_rc: the exit status stop() wants (None: any);
    another one fails the next test point."""

    def __init__(self, argv, name=None, read_stdout=False, env=None, expect_rc=None):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        self.read_stdout = read_stdout
        self.env = env
        self.expect_rc = expect_rc
        self.dir = tempfile.mkdtemp(prefix="cutover-it-%s-" % self.name)
        _tempdirs.append(self.dir)
        self.errpath = os.path.join(self.dir, "stderr")
        self.proc = None
        self.returncode = None
        self.start()

    def start(self):
        """Starts (or starts again, after a stop) the same argv."""
        self.pending = b""
        self.lines = []
        self.pos = 0
        self.eof = False
        self.returncode = None
        err = open(self.errpath, "ab")
        try:
            self.proc = subprocess.Popen(_with_parent(self.argv), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if self.read_stdout else subprocess.DEVNULL,
                                         stderr=err, env=self.env or _child_env(), start_new_session=True)
        finally:
            err.close()
        self.fd = self.proc.stdout.fileno() if self.read_stdout else None
        self.err_start = os.path.getsize(self.errpath)
        if self not in _children:
            _children.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_line(self, pred, timeout=5.0):
        """The next stdout line (after those already returned) for which
        pred is true, or None at EOF or the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pos < len(self.lines):
                line = self.lines[self.pos]
                self.pos += 1
                if pred(line):
                    return line
            if self.eof or time.monotonic() >= deadline:
                return None
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                continue
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            self.lines += [raw.decode("utf-8", "replace") for raw in lines]

    def stderr(self, since_start=False):
        """What the child wrote on stderr (all runs, or this run only)."""
        try:
            with open(self.errpath, "rb") as f:
                if since_start:
                    f.seek(self.err_start)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_size(self):
        try:
            return os.path.getsize(self.errpath)
        except OSError:
            return 0

    def wait_stderr(self, text, timeout=5.0, since=0):
        """Polls stderr (from byte offset since) until it contains text;
        returns True, or False at the deadline."""
        def seen():
            try:
                with open(self.errpath, "rb") as f:
                    f.seek(since)
                    return text in f.read().decode("utf-8", "replace")
            except OSError:
                return False
        return poll(seen, timeout)

    def log_tail(self, lines=40):
        return "\n".join(self.stderr().splitlines()[-lines:])

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """The exit status once it exits within timeout, else None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _finish(self):
        if self in _children:
            _children.remove(self)
        if self.fd is not None:
            self.proc.stdout.close()
            self.fd = None
        self.returncode = self.proc.returncode
        err = self.stderr(since_start=True)
        _note_command(self.argv, self.returncode, err)
        bad = sanitizer_problem(self.name, self.returncode, err)
        if bad:
            _problem(bad)
        elif self.expect_rc is not None and self.returncode != self.expect_rc:
            _problem("%s exited with %s, not %s; stderr tail:\n%s"
                     % (self.name, self.returncode, self.expect_rc, self.log_tail()))

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig, waits up to timeout; returns the exit status, or None
        if it had to be killed (which fails the next test point)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if self.wait(timeout) is None:
                _problem("%s did not exit within %ss of signal %d; stderr tail:\n%s"
                         % (self.name, timeout, sig, self.log_tail()))
                self.kill()
                return None
        if self in _children:
            self._finish()
        return self.returncode

    def kill(self):
        """SIGKILL, no checks: for cleanup, or to make an upstream vanish."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self in _children:
            _children.remove(self)
        if self.fd is not None:
            self.proc.stdout.close()
            self.fd = None
        self.returncode = self.proc.returncode if self.proc else None


def poll(cond, timeout, interval=0.01):
    """Calls cond() until it returns something true (returned) or timeout
    seconds have passed (the last false value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)  # poll interval, bounded by the deadline


# --- HTTP: a response, a raw client, and polling --------------------------------

class Response:
    """One HTTP response: status, reason, headers as a list of (name,
    value) in order, body bytes, and the time it took."""

    def __init__(self, status, reason, headers, body, elapsed=0.0, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.body = body
        self.elapsed = elapsed
        self.version = version

    def header(self, name, default=None):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def has(self, name):
        return any(n.lower() == name.lower() for n, _ in self.headers)

    def json(self):
        try:
            return jsonlib.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def route(self):
        return self.header("X-Cutover-Route")

    @property
    def upstream(self):
        doc = self.json()
        return doc.get("upstream") if isinstance(doc, dict) else None

    def __repr__(self):
        body = self.body if len(self.body) < 600 else self.body[:600] + b"..."
        return "<%s %s %r %r>" % (self.status, self.reason, self.headers, body)


def http_request(host, port, method, path, headers=None, body=None, conn=None, timeout=10.0):
    """One request with http.client: on conn (kept open, keep-alive) or on
    a new connection closed afterwards. Returns a Response."""
    import http.client
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.reason, r.getheaders(), data, time.monotonic() - t0)
    finally:
        if own:
            conn.close()


def wait_http(url, deadline, want=200, headers=None):
    """Polls GET url (http://host:port/path) for up to deadline seconds
    until it answers status want. Returns that Response, or None (refused
    connections and other answers are retried)."""
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    last = [None]

    def attempt():
        try:
            r = http_request(u.hostname, u.port, "GET", path or "/", headers=headers, timeout=2)
        except OSError:
            return None
        last[0] = r
        return r if r.status == want else None
    return poll(attempt, deadline, 0.02)


class RawConn:
    """A plain socket to a server, for what http.client will not send or
    cannot read: malformed requests, pipelining, 100-continue, HEAD on a
    kept connection. Responses are parsed here, strictly, against a
    deadline; a ValueError means the bytes were not HTTP/1.1."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.closed = False  # the server closed its side

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode("latin-1"))

    def _fill(self, deadline):
        if self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer before the deadline (have %r)" % bytes(self.buf[:200]))
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(262144)
        except socket.timeout:
            raise TimeoutError("no answer before the deadline (have %r)" % bytes(self.buf[:200]))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def _line(self, deadline):
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                break
            start = max(0, len(self.buf) - 1)
            if not self._fill(deadline):
                raise ValueError("connection closed in a head: %r" % bytes(self.buf[:200]))
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ValueError("connection closed %d bytes into a %d-byte body" % (len(self.buf), n))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self, timeout=5.0):
        """The next response head: (version, status, reason, headers)."""
        deadline = time.monotonic() + timeout
        status_line = self._line(deadline).decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError("not a status line: %r" % status_line)
        headers = []
        while True:
            line = self._line(deadline).decode("latin-1")
            if line == "":
                break
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("not a header line: %r" % line)
            headers.append((name, value.strip()))
        return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def read_response(self, timeout=5.0, head_request=False):
        """The next response (a 1xx one too, as a response without a body).
        head_request: it answers a HEAD, so no body follows."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        version, status, reason, headers = self.read_head(timeout)
        r = Response(status, reason, headers, b"", version=version)
        if head_request or status < 200 or status in (204, 304):
            r.elapsed = time.monotonic() - t0
            return r
        te = ",".join(r.header_all("Transfer-Encoding")).lower()
        lengths = r.header_all("Content-Length")
        if "chunked" in te:
            body = bytearray()
            while True:
                size = int(self._line(deadline).split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line(deadline) != b"":
                        pass
                    break
                body += self._exact(size, deadline)
                if self._exact(2, deadline) != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
            r.body = bytes(body)
        elif lengths:
            if len(set(lengths)) != 1:
                raise ValueError("several Content-Length values: %r" % lengths)
            r.body = self._exact(int(lengths[0]), deadline)
        else:
            while self._fill(deadline):
                pass
            r.body, self.buf = bytes(self.buf), bytearray()
        r.elapsed = time.monotonic() - t0
        return r

    def at_eof(self, timeout=2.0):
        """True if the server closes the connection (nothing more is sent)
        within timeout."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- the echo upstream and the proxy ---------------------------------------------

ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_upstream.py")
PROXY = os.path.join(BUILDDIR, "cutover-proxy")
PYTHON = "/usr/bin/python3"


class Echo(Process):
    """echo_upstream.py as legacy or service, on a port of its own (any
    free one the first time, the same one after a restart)."""

    def __init__(self, name, port=0):
        self.upstream = name
        self.port = port
        super().__init__([PYTHON, ECHO, "--name", name, "--port", port], name="echo-" + name,
                         read_stdout=True, expect_rc=0)

    def start(self):
        if self.port:
            self.argv[-1] = str(self.port)
        super().start()
        first = self.wait_line(lambda line: True, 10)
        if first and first.startswith("port "):
            self.port = int(first.split()[1])
            first = self.wait_line(lambda line: True, 10)
        if first != "ready":
            raise RuntimeError("echo upstream %s did not start (%r):\n%s" % (self.upstream, first, self.stderr()))

    def stats(self):
        return http_request("127.0.0.1", self.port, "GET", "/_echo/stats", timeout=5).json()

    def wait_inflight(self, n=1, timeout=5.0):
        """True once at least n requests are being answered (slow ones)."""
        return bool(poll(lambda: self.stats()["inflight"] >= n, timeout))


# The routes of conf/cutover.conf, with a shorter breaker.
ROUTES = """
route user {
	methods = { "GET", "HEAD", "PUT", "PATCH", "DELETE" }
	path = "/api/users/{id}"
	user = { "path:id" }
	read_flag = "users-read"
	write_flag = "users-write"
	no_user = "legacy"
	read_fallback = true
	breaker_failures = %(breaker_failures)d
	breaker_open = %(breaker_open)d
}

route user-subresources {
	methods = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" }
	path = "/api/users/{id}/*"
	user = { "path:id" }
	read_flag = "users-read"
	write_flag = "users-write"
}

route me {
	methods = { "GET", "HEAD" }
	path = "/api/me"
	user = { "header:X-User-Id", "cookie:uid", "jwt:sub" }
	read_flag = "users-read"
}

route create-user {
	methods = { "POST" }
	path = "/api/users"
	user = { "body:email" }
	write_flag = "users-write"
}
"""


def _conf_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return jsonlib.dumps(v)


class Proxy(Process):
    """cutover-proxy -c FILE with a config written from settings, on free
    ports, 2 workers, logging access lines to DIR/access.log.

    settings (all optional but legacy/service):
      legacy, service    Echo objects (or ports)
      redis_url, prefix  default: the first RedisServer, PREFIX
      workers            2
      upstream           {"legacy": {"read_timeout": 300}, ...}
      limits             {"header_bytes": 4096, ...}
      top                more top-level options: {"force_header": ..., "admin_token": ...}
      routes             route blocks (default ROUTES with breaker_failures 3,
                         breaker_open 60000)
      extra              raw text appended
    Starting waits for /readyz to answer 200 (ready_wait is 60 s, so that
    means the flags are loaded) unless wait_ready=False.
    """

    _tags = 0

    def __init__(self, legacy, service, wait_ready=True, ready_timeout=20.0, **settings):
        self.settings = dict(settings, legacy=legacy, service=service)
        self.confdir = tempfile.mkdtemp(prefix="cutover-it-proxy-conf-")
        _tempdirs.append(self.confdir)
        self.conf = os.path.join(self.confdir, "cutover.conf")
        self.access_log = os.path.join(self.confdir, "access.log")
        self.port = self.admin_port = None
        for attempt in range(5):
            self.port, self.admin_port = free_port(), free_port()
            self.write_config(self.render())
            super().__init__([PROXY, "-c", self.conf], name="cutover-proxy", expect_rc=0)
            if not wait_ready:
                return
            if self.wait_ready(ready_timeout):
                return
            if self.alive() or "cannot listen" not in self.stderr(since_start=True):
                break
            self.proc.wait()
            self._finish_quietly()
        raise RuntimeError("cutover-proxy did not get ready (exit %s):\n%s"
                           % (self.proc.poll(), self.log_tail()))

    def _finish_quietly(self):
        if self in _children:
            _children.remove(self)

    def render(self, **overrides):
        """The config text for the settings, with overrides applied."""
        s = dict(self.settings, **overrides)

        def port(x):
            return x.port if hasattr(x, "port") else int(x)
        limits = {"header_bytes": 16384, "body_bytes": 1048576, "client_timeout": 60000,
                  "drain_timeout": 10000, "ready_wait": 60000}
        limits.update(s.get("limits") or {})
        top = {"route_header": True, "default": "legacy", "log_level": "info",
               "access_log": self.access_log}
        top.update(s.get("top") or {})
        out = ['listen = { "127.0.0.1:%d" }' % self.port,
               'admin_listen = "127.0.0.1:%d"' % self.admin_port,
               "workers = %d" % s.get("workers", 2),
               "redis {",
               "\turl = %s" % _conf_value(s.get("redis_url") or _default_url()),
               "\tprefix = %s" % _conf_value(s.get("prefix") or PREFIX),
               "}"]
        for kind in ("legacy", "service"):
            opts = {"address": "127.0.0.1:%d" % port(s[kind]), "connect_timeout": 1000,
                    "read_timeout": 10000, "write_timeout": 10000, "keepalive": 16}
            opts.update((s.get("upstream") or {}).get(kind, {}))
            out.append("upstream %s {" % kind)
            out += ["\t%s = %s" % (k, _conf_value(v)) for k, v in opts.items()]
            out.append("}")
        out += ["%s = %s" % (k, _conf_value(v)) for k, v in top.items() if v is not None]
        out.append("limits {")
        out += ["\t%s = %s" % (k, _conf_value(v)) for k, v in limits.items()]
        out.append("}")
        routes = s.get("routes")
        if routes is None:
            routes = ROUTES % {"breaker_failures": s.get("breaker_failures", 3),
                               "breaker_open": s.get("breaker_open", 60000)}
        out.append(routes)
        out.append(s.get("extra", ""))
        return "\n".join(out) + "\n"

    def write_config(self, text):
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)

    def reload(self, timeout=5.0, **settings):
        """Rewrites the config with settings changed (kept for later
        renders), sends SIGHUP and waits for the proxy's verdict: True once
        it logged "reloaded", False if it rejected the file or said nothing
        within timeout."""
        self.settings.update(settings)
        self.write_config(self.render())
        offset = self.stderr_size()
        self.send_signal(signal.SIGHUP)
        said = lambda text: self.wait_stderr(text, 0, offset)  # noqa: E731
        poll(lambda: said("reloaded") or said("reload rejected"), timeout)
        return said("reloaded")

    def wait_ready(self, timeout=20.0):
        """True once /readyz answers 200; False if the proxy exits or the
        deadline passes."""
        def ready():
            if not self.alive():
                return "exited"
            try:
                return http_request("127.0.0.1", self.admin_port, "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False
        return poll(ready, timeout, 0.02) is True

    # requests

    def request(self, method, path, headers=None, body=None, conn=None, timeout=10.0, tag=True):
        """One request to the proxy. tag: send a unique X-Request-Id of our
        own (unless headers has one) so that access_entry(r.request_id)
        finds its line; tag=False sends none."""
        headers = dict(headers or {})
        if tag and not any(k.lower() == "x-request-id" for k in headers):
            with _lock:
                Proxy._tags += 1
                headers["X-Request-Id"] = "it-%d-%d" % (os.getpid(), Proxy._tags)
        r = http_request("127.0.0.1", self.port, method, path, headers, body, conn, timeout)
        r.request_id = next((v for k, v in headers.items() if k.lower() == "x-request-id"), None)
        return r

    def get(self, path, headers=None, **kw):
        return self.request("GET", path, headers, **kw)

    def connection(self, timeout=10.0):
        import http.client
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw(self, timeout=10.0):
        return RawConn("127.0.0.1", self.port, timeout)

    def admin(self, path, headers=None):
        return http_request("127.0.0.1", self.admin_port, "GET", path, headers, timeout=5)

    # state

    def flags_version(self):
        doc = self.admin("/flags").json()
        return doc.get("version") if isinstance(doc, dict) else None

    def wait_flags_version(self, version, timeout=5.0):
        """True once the proxy's snapshot has version (or a later one)."""
        return bool(poll(lambda: (self.flags_version() or -1) >= version, timeout, 0.005))

    def metrics(self):
        return parse_metrics(self.admin("/metrics").body.decode())

    def access_entries(self):
        """Every line of the access log file now at its path, parsed (read
        incrementally); a line that is not JSON fails the next test point."""
        try:
            st = os.stat(self.access_log)
        except OSError:
            return []
        key = (st.st_dev, st.st_ino)
        if getattr(self, "_al_key", None) != key or st.st_size < self._al_off:
            self._al_key, self._al_off, self._al_entries = key, 0, []
        if st.st_size > self._al_off:
            with open(self.access_log, "rb") as f:
                f.seek(self._al_off)
                data = f.read()
            data = data[:data.rfind(b"\n") + 1]  # whole lines only
            self._al_off += len(data)
            for line in data.decode("utf-8", "replace").splitlines():
                try:
                    self._al_entries.append(jsonlib.loads(line))
                except ValueError:
                    _problem("access log line is not JSON: %r" % line)
        return self._al_entries

    def access_entry(self, request_id, timeout=2.0):
        """The access log entry of request_id, polled for."""
        def find():
            for e in reversed(self.access_entries()):
                if e.get("request_id") == request_id:
                    return e
            return None
        return poll(find, timeout)


def parse_metrics(text):
    """Prometheus text -> list of (name, {label: value}, float value)."""
    import re
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$', line)
        if not m:
            out.append(("__unparsed__", {"line": line}, 0.0))
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(metrics, name, **labels):
    """The sum of the series of name whose labels include labels."""
    return sum(v for n, ls, v in metrics if n == name and all(ls.get(k) == str(x) for k, x in labels.items()))


def metric_has(metrics, name):
    return any(n == name for n, _, _ in metrics)


def store_version(srv):
    r = srv.client()
    try:
        return int(r.get("%s:flags:version" % PREFIX) or 0)
    finally:
        r.close()


def ctl_all(*commands):
    """Runs several cutoverctl commands; returns the failures as text ("" if
    none)."""
    bad = []
    for args in commands:
        rc, out, err = run_ctl(*args)
        if rc != 0:
            bad.append("%s -> exit %s: %s" % (" ".join(args), rc, err.strip()))
    return "\n".join(bad)


def eval_users(flag, users):
    """cutoverctl flag eval --json: {user: decision dict}."""
    rc, out, err = run_ctl("flag", "eval", flag, *users, json=True, timeout=60)
    if rc != 0:
        raise RuntimeError("flag eval %s: exit %s: %s" % (flag, rc, err))
    res = {}
    for line in out.splitlines():
        d = jsonlib.loads(line)
        res[d["user"]] = d
    return res


def sync_flags(t, srv, p, what):
    """Waits until proxy p holds the store's current flag version; a
    failed test point if it does not within 5 s."""
    v = store_version(srv)
    ok = p.wait_flags_version(v, 5)
    if not ok:
        t.ok(False, "the proxy picks up the flag change (%s): version %d" % (what, v),
             "proxy has version %r" % p.flags_version())
    return ok


def change_flags(t, srv, p, what, *commands):
    """Runs cutoverctl commands (see ctl_all), then sync_flags."""
    bad = ctl_all(*commands)
    if bad:
        t.ok(False, "cutoverctl: %s" % what, bad)
    return sync_flags(t, srv, p, what)


def run_proxy(*args, timeout=10):
    """Runs cutover-proxy ARGS to completion (--check-config, --version):
    (exit_code, stdout, stderr), exit_code None on a timeout. A sanitizer
    report or a timeout fails the next test point."""
    argv = [PROXY] + [str(a) for a in args]
    return run_to_end(argv, timeout, " ".join(argv))


# --- lazy migration: the legacy MongoDB, the import service, cutover-migrate ---
#
# migrate_worker.py and migrate_proxy.py run `cutover-migrate run` (Migrator)
# against a MongoDB playing legacy (Mongo: tests/mongo_double.py, or the
# server of CUTOVER_TEST_MONGO_URI) and import_service.py playing the user
# service's import endpoint (ImportService). pymongo (Debian's
# python3-pymongo) is imported only when a Mongo is made.

MONGO_DOUBLE = os.path.join(SRCDIR, "tests", "mongo_double.py")
MONGO_URI_ENV = "CUTOVER_TEST_MONGO_URI"
IMPORT_SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "import_service.py")
MIGRATE = os.path.join(BUILDDIR, "cutover-migrate")


def _start_banner(proc, what):
    """Reads "port N" then "ready" from a Process started with --port 0;
    returns N."""
    first = proc.wait_line(lambda line: True, 20)
    port = None
    if first and first.startswith("port "):
        port = int(first.split()[1])
        first = proc.wait_line(lambda line: True, 20)
    if first != "ready" or port is None:
        raise RuntimeError("%s did not start (%r):\n%s" % (what, first, proc.stderr()))
    return port


class Mongo:
    """The legacy MongoDB of a test script: the server named by
    CUTOVER_TEST_MONGO_URI when it is set (unauthenticated, no TLS), else
    a tests/mongo_double.py started here (stopped with the script).

    database(tag) names a database of its own for each test
    (cutover_it_<PREFIX>_<n>_<tag>) and returns it as a pymongo Database;
    the databases made on a real server are dropped at close(). uri: a
    real server's, instead of CUTOVER_TEST_MONGO_URI's."""

    _count = 0

    def __init__(self, uri=None):
        import pymongo
        self.real = uri or os.environ.get(MONGO_URI_ENV) or None
        self.double = None
        if self.real:
            self.uri = self.real
        else:
            self.double = Process([PYTHON, MONGO_DOUBLE, "--port", "0"], name="mongo-double",
                                  read_stdout=True, expect_rc=0)
            self.uri = "mongodb://127.0.0.1:%d/" % _start_banner(self.double, "mongo_double.py")
        self.client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=60000)
        self.names = []
        self.closed = False
        atexit.register(self.close)

    def database(self, tag="", name=None):
        """A fresh database for one test (a pymongo Database); its name is
        .name, for the migrator's legacy.database. name: that name instead
        of one made from tag (on a real server, dropped first)."""
        if name is None:
            Mongo._count += 1
            name = "cutover_it_%s_%d%s" % (PREFIX, Mongo._count, "_" + tag if tag else "")
            name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)[:60]
        elif self.real:
            self.client.drop_database(name)
        self.names.append(name)
        return self.client[name]

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.real:
            for name in self.names:
                try:
                    self.client.drop_database(name)
                except Exception:
                    pass
        try:
            self.client.close()
        except Exception:
            pass
        if self.double is not None:
            self.double.stop()


class ImportService(Process):
    """import_service.py: the user service's import endpoint (PUT
    /internal/import/users/{id} with its version guard), in memory, on a
    free port. url() is the template for the migrator's sink.url."""

    def __init__(self, *args):
        self.port = None
        super().__init__([PYTHON, IMPORT_SERVICE, "--port", "0"] + [str(a) for a in args],
                         name="import-service", read_stdout=True, expect_rc=0)

    def start(self):
        super().start()
        self.port = _start_banner(self, "import_service.py")

    def url(self):
        return "http://127.0.0.1:%d/internal/import/users/{id}" % self.port

    def _call(self, method, path, body=None, headers=None):
        data = None if body is None else jsonlib.dumps(body).encode()
        return http_request("127.0.0.1", self.port, method, path, headers, data, timeout=10)

    def stats(self):
        return self._call("GET", "/_import/stats").json()

    def user(self, user):
        """The stored copy of user: {"doc", "version", "puts", "headers"},
        or None."""
        import urllib.parse
        r = self._call("GET", "/_import/users/" + urllib.parse.quote(user, safe=""))
        return r.json() if r.status == 200 else None

    def users(self):
        """{id: {"doc", "version", "puts"}} of every stored user."""
        return self._call("GET", "/_import/users").json()["users"]

    def mode(self, **change):
        """POST /_import/mode: status=500 (0: normal), fail_first=K,
        fail_status=N, users={id: status}, delay_ms=MS."""
        return self._call("POST", "/_import/mode", change).json()

    def reset(self):
        return self._call("POST", "/_import/reset", {}).json()

    def put(self, user, doc, version=None):
        """Stores a copy of user directly, as an earlier import would have."""
        import urllib.parse
        headers = {"Content-Type": "application/json"}
        if version is not None:
            headers["X-Cutover-Version"] = str(version)
        return self._call("PUT", "/_import/users/" + urllib.parse.quote(user, safe=""), doc, headers).status


# The mapping of conf/migrate.conf.
MIGRATE_MAPPING = {
    "keep": [],
    "drop": ["passwordHash", "legacyFlags"],
    "rename": ["emailAddress:email"],
    "default": ['locale:"en"', "marketingOptIn:false"],
}


def _conf_list(values):
    # libconfuse strings: single quotes spare escaping the double ones.
    return "{ %s }" % ", ".join("'%s'" % v if '"' in v else _conf_value(v) for v in values)


class Migrator(Process):
    """`cutover-migrate run -c FILE` (or another command: syncback) with a
    config written from settings; stop() (SIGTERM) wants exit 0 and no
    sanitizer report.

    settings (all optional):
      redis_url, prefix   default: the first RedisServer, PREFIX
      collection          "users"
      id_type             "string"
      sink                {"type": "http", "url": ..., "timeout": 5000} (sink_url
                          fills url)
      version_field       "updatedAt" (None: left out)
      mapping             MIGRATE_MAPPING
      batch, block        100, 200
      consumer            left out (hostname-pid)
      retry               {"attempts": 5, "backoff": 50, "backoff_max": 500}
      claim_idle          1000
      metrics_file        DIR/metrics.json (None: left out)
      log_level           "info"
      syncback            {option: value} of a syncback { } section, its
                          "mapping" a dict of lists like mapping's; with
                          command "syncback", metrics_file defaults to
                          the Migrator's (None: left out)
      extra               raw text appended
    """

    def __init__(self, mongo_uri, database, sink_url=None, command="run", **settings):
        self.settings = dict(settings, mongo_uri=mongo_uri, database=database, sink_url=sink_url)
        self.command = command
        self.confdir = tempfile.mkdtemp(prefix="cutover-it-migrate-conf-")
        _tempdirs.append(self.confdir)
        self.conf = os.path.join(self.confdir, "migrate.conf")
        self.metrics_file = self.settings.get("metrics_file", os.path.join(self.confdir, "metrics.json"))
        with open(self.conf, "w") as f:
            f.write(self.render())
        super().__init__([MIGRATE, command, "-c", self.conf], expect_rc=0,
                         name="cutover-migrate" + ("" if command == "run" else "-" + command))

    def render(self, **overrides):
        s = dict(self.settings, **overrides)
        sink = {"type": "http", "url": s.get("sink_url"), "timeout": 5000}
        sink.update(s.get("sink") or {})
        if sink["type"] != "http":
            sink.pop("url", None)
        retry = {"attempts": 5, "backoff": 50, "backoff_max": 500}
        retry.update(s.get("retry") or {})
        mapping = dict(MIGRATE_MAPPING, **(s.get("mapping") or {}))
        out = ["redis {",
               "\turl = %s" % _conf_value(s.get("redis_url") or _default_url()),
               "\tprefix = %s" % _conf_value(s.get("prefix") or PREFIX),
               "}",
               "legacy {",
               "\turi = %s" % _conf_value(s["mongo_uri"]),
               "\tdatabase = %s" % _conf_value(s["database"]),
               "\tcollection = %s" % _conf_value(s.get("collection", "users")),
               "\tid_type = %s" % _conf_value(s.get("id_type", "string")),
               "}",
               "sink {"]
        out += ["\t%s = %s" % (k, _conf_value(v)) for k, v in sink.items() if v is not None]
        out.append("}")
        vf = s.get("version_field", "updatedAt")
        if vf is not None:
            out.append("version_field = %s" % _conf_value(vf))
        out.append("mapping {")
        out += ["\t%s = %s" % (k, _conf_list(v)) for k, v in mapping.items()]
        out.append("}")
        out += ["batch = %d" % s.get("batch", 100), "block = %d" % s.get("block", 200)]
        if s.get("consumer"):
            out.append("consumer = %s" % _conf_value(s["consumer"]))
        out.append("retry {")
        out += ["\t%s = %d" % (k, v) for k, v in retry.items()]
        out.append("}")
        out.append("claim_idle = %d" % s.get("claim_idle", 1000))
        if self.metrics_file:
            out.append("metrics_file = %s" % _conf_value(self.metrics_file))
        out.append("log_level = %s" % _conf_value(s.get("log_level", "info")))
        if s.get("syncback") is not None:
            out += self._render_syncback(s["syncback"])
        out.append(s.get("extra", ""))
        return "\n".join(out) + "\n"

    def _render_syncback(self, settings):
        """The lines of a syncback { } section (see the class comment)."""
        sb = dict(settings)
        if self.command == "syncback":
            sb.setdefault("metrics_file", self.metrics_file)
        mapping = sb.pop("mapping", None) or {}
        out = ["syncback {"]
        out += ["\t%s = %s" % (k, _conf_value(v)) for k, v in sb.items() if v is not None]
        out += ["\tmapping {"] + ["\t\t%s = %s" % (k, _conf_list(v)) for k, v in mapping.items()] + ["\t}", "}"]
        return out

    def metrics(self):
        """The metrics file as a dict, or None (not written yet)."""
        try:
            with open(self.metrics_file) as f:
                return jsonlib.load(f)
        except (OSError, ValueError):
            return None

    def wait_metrics(self, pred, timeout=10.0):
        """The metrics once pred(metrics) is true, or None at the deadline."""
        def check():
            m = self.metrics()
            return m if m is not None and pred(m) else None
        return poll(check, timeout, 0.05)


def migration_keys(prefix=None):
    """The Redis names of docs/design.md, "Lazy migration", under prefix."""
    p = prefix or PREFIX
    return {"seen": p + ":seen", "migrate": p + ":migrate", "priority": p + ":migrate:priority",
            "dead": p + ":migrate:dead", "attempts": p + ":migrate:attempts", "migrated": p + ":migrated",
            "changed": p + ":migrated:changed"}
