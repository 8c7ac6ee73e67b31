#!/usr/bin/env python3
"""
idle_conns.py - what idle client connections cost a proxy in memory.

Reads the VmRSS of PID (the process that holds the connections: the
cutover-proxy process, the nginx worker), opens COUNT connections to
127.0.0.1:PORT and reads it again once the proxy has had time to accept
them all; then sends one keep-alive request on each, one at a time,
reads every response and reads VmRSS a third time: an idle keep-alive client that
has been served may hold more (buffers) than one that never spoke.

Needs an open-file limit above COUNT, for itself and for the proxy.
Prints one JSON object.

Usage: idle_conns.py --port PORT --pid PID [--count 10000] [--path /static/app.js]
"""
import argparse
import json
import socket
import sys
import time

SETTLE_S = 1.0  # for the proxy to accept (and allocate for) the last connections


def vm_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def read_response(sock):
    """Reads one response with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--path", default="/static/app.js")
    args = ap.parse_args()

    before = vm_kb(args.pid, "VmRSS")
    socks = []
    for _ in range(args.count):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    time.sleep(SETTLE_S)
    opened = vm_kb(args.pid, "VmRSS")

    # One request at a time: all at once, the proxy would open an upstream
    # connection for each, and that is not what an idle client costs.
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    bad = 0
    for s in socks:
        s.sendall(request)
        bad += read_response(s) != 200
    time.sleep(SETTLE_S)
    served = vm_kb(args.pid, "VmRSS")
    peak = vm_kb(args.pid, "VmHWM")
    for s in socks:
        s.close()

    print(json.dumps({
        "connections": args.count,
        "non200": bad,
        "rss_before_kb": before,
        "rss_open_kb": opened,
        "rss_served_kb": served,
        "vmhwm_kb": peak,
        "bytes_per_open_conn": round((opened - before) * 1024 / args.count),
        "bytes_per_served_conn": round((served - before) * 1024 / args.count),
    }))


if __name__ == "__main__":
    main()
