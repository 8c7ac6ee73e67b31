#!/usr/bin/env python3
"""
propagation.py - how long a kill switch takes to reach every proxy.

Toggles FLAG with `cutoverctl flag kill` / `flag unkill`, alternately, and
measures for each toggle the time from the command returning to every
proxy in PORTS routing USER the new way: legacy after a kill, service
after an unkill. The caller sets things up so that USER reads from the
service while the flag is not killed (on the flag's allow list, and
migrated when the route has a read guard).

Each proxy is polled over its own keep-alive connection with
GET PATH (USER substituted for {user}); the route taken is the
X-Cutover-Route response header (route_header = true). Times come from
time.monotonic(); a poll round over four local proxies takes well under
a millisecond, which bounds the resolution.

Prints one JSON object: the samples in ms and their p50/p99 (nearest
rank) and max, plus how long cutoverctl itself took.

Usage: propagation.py --ctl PATH --flag NAME --user ID --ports P1,P2,...
                      [--toggles N] [--path /api/users/{user}]
cutoverctl finds Redis through $CUTOVER_REDIS_URL, as usual.
"""
import argparse
import http.client
import json
import math
import subprocess
import sys
import time

POLL_TIMEOUT_S = 5.0  # one toggle not seen everywhere by then is a failure


def percentile(sorted_values, p):
    """Nearest rank: with 100 samples, p99 is the 99th smallest."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Poller:
    """One proxy, one keep-alive connection."""

    def __init__(self, port, path):
        self.port = port
        self.path = path
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)

    def route(self):
        self.conn.request("GET", self.path)
        resp = self.conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"proxy on :{self.port} answered {resp.status}")
        return resp.getheader("X-Cutover-Route")


def wait_all(pollers, want, started):
    """Seconds from started until every poller has routed the new way
    once (a proxy that flipped stays flipped: it is not polled again)."""
    pending = list(pollers)
    while pending:
        pending = [p for p in pending if p.route() != want]
        if pending and time.monotonic() - started > POLL_TIMEOUT_S:
            ports = ", ".join(str(p.port) for p in pending)
            sys.exit(f"still not routing to {want} after {POLL_TIMEOUT_S} s: :{ports}")
    return time.monotonic() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--flag", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--toggles", type=int, default=100)
    ap.add_argument("--path", default="/api/users/{user}")
    args = ap.parse_args()

    path = args.path.replace("{user}", args.user)
    pollers = [Poller(int(p), path) for p in args.ports.split(",")]
    # Every proxy must be on the service before the first kill; this also
    # waits out a proxy still loading flags or its migrated-set copy.
    wait_all(pollers, "service", time.monotonic())

    samples, command = [], []
    for i in range(args.toggles):
        verb, want = ("kill", "legacy") if i % 2 == 0 else ("unkill", "service")
        t0 = time.monotonic()
        subprocess.run([args.ctl, "--actor", "bench", "flag", verb, args.flag], check=True,
                       stdout=subprocess.DEVNULL)
        returned = time.monotonic()
        command.append(returned - t0)
        samples.append(wait_all(pollers, want, returned))

    ms = sorted(s * 1000 for s in samples)
    print(json.dumps({
        "toggles": len(ms),
        "proxies": len(pollers),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3),
        "command_p50_ms": round(percentile(sorted(c * 1000 for c in command), 50), 3),
        "samples_ms": [round(s * 1000, 3) for s in samples],
    }))


if __name__ == "__main__":
    main()
