#!/usr/bin/env python3
"""The programs as FastCGI processes behind mod_proxy_fcgi (issue 8).

Apache with apache/billing-proxy-fcgi.conf, each program's processes on its
own socket, started as apache/billing-fcgi@.service starts them (spawn-fcgi
makes the socket, multiwatch starts the processes and replaces any that
exits).  The endpoint suites run through this deployment too
(tests/variants/*-proxyfcgi.sh); this file checks what is its own:
  - each program runs as the configured number of processes, as the server
    user, each with at most one database connection, however many requests;
  - a process killed while idle: every request after it is answered, and
    multiwatch starts a replacement;
  - a process asked to stop (SIGTERM, as systemd stops the unit) finishes
    the request in hand first; with no process left, Apache answers 503 in
    the programs' JSON shape (error.cgi runs in its own processes).
"""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_SETTINGS, Stack, Tap, make_jwt, wait_until  # noqa: E402

API_KEY = DEFAULT_SETTINGS["USAGE_API_KEY"]
OK_URL = "https://app.example.test/billing/ok?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://app.example.test/billing/cancel"


def children(pid):
    """The live child processes of pid (multiwatch's: the program's processes)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return sorted(out)


def usage_get(st, user="u-proxy"):
    return st.http("GET", f"/api/usage?userId={user}", headers={"Authorization": "Bearer " + API_KEY})


def check_processes(t, st):
    n = st.proxy_fcgi_workers
    for program in ("usage", "webhook", "create-checkout-session", "error"):
        pids = children(st.spawners[program].pid)
        t.eq(len(pids), n, f"{program}: {n} processes under multiwatch")
    pids = children(st.spawners["usage"].pid)
    if st.runas is not None:
        # /proc/<pid> belongs to the process's effective user.
        uids = [os.stat(f"/proc/{p}").st_uid for p in pids]
        t.ok(all(u == st.runas.pw_uid for u in uids),
             "the processes run as the server user, not root", str(uids))
    for i in range(60):
        r = usage_get(st, f"u-proxy-{i % 7}")
        if r.status != 200:
            break
    t.eq(r.status, 200, "60 usage requests answered")
    t.eq(children(st.spawners["usage"].pid), pids, "...by the same processes (none restarted)")
    # Each process keeps one connection: after 60 requests, at most n sessions
    # for usage's processes (they are the only clients besides psql).
    rows = st.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()")
    t.ok(1 <= int(rows[0][0]) <= n, f"at most {n} database sessions for {n} processes",
         rows[0][0])


def check_killed(t, st):
    watch = st.spawners["usage"].pid
    before = children(watch)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_until("the killed process to be gone", lambda: victim not in children(watch))
    got = [usage_get(st, f"u-kill-{i}").status for i in range(20)]
    t.eq(got, [200] * 20, "a process killed while idle: the 20 requests after it all answered 200")
    wait_until("multiwatch to start a replacement", lambda: len(children(watch)) == len(before))
    now = children(watch)
    t.ok(victim not in now and len(now) == len(before),
         "multiwatch replaced the killed process", f"{before} -> {now}")
    t.eq(usage_get(st).status, 200, "and the program answers")


def check_stop(t, st):
    """SIGTERM to multiwatch (systemctl stop): the request in hand finishes."""
    st.stripe.fail(path="/v1/checkout/sessions", method="POST", mode="slow", delay=1.5, count=1)
    body = {"userId": "u-stop", "tier": "pro", "interval": "monthly",
            "successUrl": OK_URL, "cancelUrl": CANCEL_URL}
    jwt = make_jwt({"sub": "u-stop", "exp": int(time.time()) + 600, "iat": int(time.time())})
    result = {}

    def call():
        result["r"] = st.http("POST", "/api/stripe/create-checkout-session",
                              headers={"Authorization": "Bearer " + jwt}, body=body)

    th = threading.Thread(target=call)
    th.start()
    # Stop once the request is inside Stripe's call, not before.
    wait_until("the checkout to reach Stripe",
               lambda: any(q["path"] == "/v1/checkout/sessions" for q in st.stripe.requests()))
    spawner = st.spawners["create-checkout-session"]
    os.kill(spawner.pid, signal.SIGTERM)
    th.join(30)
    r = result.get("r")
    t.ok(r is not None and r.status == 200 and (r.json() or {}).get("url"),
         "the request in hand when the processes were told to stop: 200 with its session",
         r and f"{r.status} {r.text[:200]}")
    try:
        spawner.wait(15)
        stopped = True
    except Exception:
        stopped = False
    t.ok(stopped, "then the processes and multiwatch exited")
    r = st.http("POST", "/api/stripe/create-checkout-session",
                headers={"Authorization": "Bearer " + jwt, "Origin": "https://app.example.test"},
                body=body)
    t.ok(r.status == 503 and (r.json() or {}).get("error", {}).get("code") == "unavailable",
         "with no process left: 503 unavailable as JSON (error.cgi)", f"{r.status} {r.text[:200]}")
    t.ok("retry-after" in r.headers, "...with Retry-After", str(r.headers))


def main():
    t = Tap()
    with Stack(apache_mode="proxy_fcgi") as st:
        for fn in (check_processes, check_killed, check_stop):
            with t.guard(fn.__name__):
                fn(t, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
