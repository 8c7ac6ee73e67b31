#!/usr/bin/python3
"""
burst.py - sends one GET per user to the proxy over a few keep-alive
connections and prints where the requests went, by the X-Cutover-Route
response header. Used by scripts/demo.

    burst.py http://127.0.0.1:8080/api/users/{user} COUNT [SAVE-SERVICE-USERS-TO]
"""
import http.client
import sys
import urllib.parse


def main():
    template, count = sys.argv[1], int(sys.argv[2])
    url = urllib.parse.urlsplit(template.replace("{user}", "x"))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    split = {"legacy": 0, "service": 0}
    service_users = []
    for n in range(1, count + 1):
        user = "user-%d" % n
        conn.request("GET", urllib.parse.urlsplit(template.replace("{user}", user)).path)
        resp = conn.getresponse()
        resp.read()
        route = resp.getheader("X-Cutover-Route", "?")
        split[route] = split.get(route, 0) + 1
        if route == "service":
            service_users.append(user)
    print("    burst of %d users: %d to the service, %d to legacy" % (count, split["service"], split["legacy"]))
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            f.write("".join(u + "\n" for u in service_users))


if __name__ == "__main__":
    main()
