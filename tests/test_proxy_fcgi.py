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
  - the unit's reload (ExecReload, run as written there) while requests
    flow: every process is replaced and every request answered;
  - a body sent slowly holds a process for at most the body budget
    (LIMIT_BODY_READ_MS, 10 s), not for Apache's Timeout: mod_proxy_fcgi
    streams bodies as clients send them, mod_fcgid does not (the client
    itself gets Apache's 408 at Apache's Timeout);
  - a process asked to stop (as systemd stops the unit) finishes the
    request in hand first; with no process left, Apache answers 503 in the
    programs' JSON shape (error.cgi runs in its own processes);
  - a program slower than Apache's proxy timeout: Apache's 504 in the
    programs' JSON shape, and the request still completes behind it (what
    the README tells clients to expect).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DEFAULT_SETTINGS, READ, Stack, Tap, fcgi_unit_command, make_jwt,  # noqa: E402
                     syscall_of, wait_until)
import shutil  # noqa: E402

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


def usage_post_begun(st, length, first, extra=b""):
    """A socket on which a usage POST with a body of length bytes has sent
    its headers and the body's first bytes; the caller sends the rest."""
    c = socket.create_connection(("127.0.0.1", st.port), timeout=90)
    c.sendall(b"POST /api/usage HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra +
              b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + first)
    return c


def checkout(st, user, headers=None):
    """A checkout for user through Apache (a JWT of its own)."""
    body = {"userId": user, "tier": "pro", "interval": "monthly",
            "successUrl": OK_URL, "cancelUrl": CANCEL_URL}
    jwt = make_jwt({"sub": user, "exp": int(time.time()) + 600, "iat": int(time.time())})
    return st.http("POST", "/api/stripe/create-checkout-session",
                   headers={"Authorization": "Bearer " + jwt, **(headers or {})}, body=body)


def eventually(what, cond):
    """Whether cond became true within wait_until's time: for a state the
    test then asserts (with its own message) rather than only waits for."""
    try:
        wait_until(what, cond)
    except AssertionError:
        return False
    return True


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


def check_reload(t, st):
    watch = st.spawners["usage"].pid
    before = children(watch)
    statuses, stop = [], threading.Event()

    def traffic():
        # GETs, and POSTs whose body arrives in two parts (a client on a
        # slow link): a reload must not cut a body short either.
        while not stop.is_set():
            body = json.dumps({"userId": f"u-reload-post-{len(statuses)}",
                               "usageType": "pain_entry"}).encode()
            statuses.append(usage_get(st, f"u-reload-{len(statuses) % 5}").status)
            c = usage_post_begun(st, len(body), body[:10], b"Connection: close\r\n")
            try:
                time.sleep(0.1)  # the client's pace is the input under test
                c.sendall(body[10:])
                head = c.recv(65536).split(b"\r\n", 1)[0]
                statuses.append(int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else head)
            finally:
                c.close()

    th = threading.Thread(target=traffic)
    th.start()
    try:
        wait_until("requests to flow", lambda: len(statuses) >= 5)
        argv = fcgi_unit_command(st.srcdir, "ExecReload",
                                 {"$MAINPID": str(watch), "/usr/bin/pkill": shutil.which("pkill")})
        os.spawnv(os.P_WAIT, argv[0], argv)
        wait_until("every process to be replaced",
                   lambda: len(children(watch)) == len(before) and not set(children(watch)) & set(before))
        n = len(statuses)
        wait_until("requests to flow after the reload", lambda: len(statuses) >= n + 5)
    finally:
        stop.set()
        th.join(60)
    t.ok(len(statuses) >= 10 and all(x == 200 for x in statuses),
         "the unit's reload while requests flow: every process replaced, every request answered 200",
         f"{len(statuses)} requests; not 200: {[x for x in statuses if x != 200]}")


def slow_post(st, hold):
    """A usage POST of a 40-byte body whose headers and first byte go out
    now; hold(sock) then sends the rest as it likes (or nothing)."""
    c = usage_post_begun(st, 40, b"{")
    threading.Thread(target=hold, args=(c,), daemon=True).start()
    return c


def trickle(c):
    """One byte every half second: 20 s for the body, twice the budget."""
    try:
        for _ in range(39):
            time.sleep(0.5)  # the client's pace is the input under test
            c.sendall(b" ")
    except OSError:
        pass


def check_slow_body(t, st):
    """As many slow clients as usage has processes, then a request that
    needs no body: first clients that send a byte every half second, then
    clients that stop after their first byte."""
    n = st.proxy_fcgi_workers
    pids = children(st.spawners["usage"].pid)
    for kind, hold in (("trickling", trickle), ("stalled", lambda c: None)):
        before = st.error_log().count("request body not complete within 10000 ms")
        slow = [slow_post(st, hold) for _ in range(n)]
        # Every process is inside one of those bodies (blocked in read(2),
        # not waiting in accept) before the next request, which must queue.
        wait_until("usage's processes to be reading the slow bodies",
                   lambda: all(syscall_of(p) == READ for p in pids))
        t0 = time.monotonic()
        r = usage_get(st, "u-behind-slow")
        waited = time.monotonic() - t0
        t.eq(r.status, 200, f"{kind} bodies in every process: a request queued behind them is answered")
        t.ok(waited < 15, "...within the 10 s body budget (not after Apache's 60 s Timeout"
             + (", nor after the 20 s the bodies would take)" if hold is trickle else ")"),
             f"waited {waited:.1f} s")
        for c in slow:
            c.close()  # Apache itself answers them 408 at its Timeout: not ours to wait for
        refused = eventually("the refusals to be logged", lambda: st.error_log().count(
            "request body not complete within 10000 ms") >= before + n)
        t.ok(refused, f"...each of the {n} {kind} bodies refused (400) by the program at the budget",
             "\n".join(ln for ln in st.error_log().splitlines() if "usage" in ln and "body" in ln)[-1500:])


def check_stop(t, st):
    """SIGTERM to multiwatch (systemctl stop): the request in hand finishes."""
    st.stripe.fail(path="/v1/checkout/sessions", method="POST", mode="slow", delay=1.5, count=1)
    result = {}

    def call():
        result["r"] = checkout(st, "u-stop")

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
        spawner.wait(5)
        stopped = True
    except subprocess.TimeoutExpired:
        stopped = False
    t.ok(stopped, "then, within 5 s, the processes and multiwatch exited")
    r = checkout(st, "u-stop", {"Origin": "https://app.example.test"})
    t.ok(r.status == 503 and (r.json() or {}).get("error", {}).get("code") == "unavailable",
         "with no process left: 503 unavailable as JSON (error.cgi)", f"{r.status} {r.text[:200]}")
    t.ok("retry-after" in r.headers, "...with Retry-After", str(r.headers))


def check_gateway_timeout(t):
    with Stack(apache_mode="proxy_fcgi", extra_apache_conf="ProxyTimeout 2") as st:
        st.stripe.fail(path="/v1/checkout/sessions", method="POST", mode="slow", delay=4, count=1)
        r = checkout(st, "u-slow", {"Origin": "https://app.example.test"})
        t.ok(r.status == 504 and (r.json() or {}).get("error", {}).get("code") == "timeout"
             and r.headers.get("access-control-allow-origin") == "https://app.example.test",
             "a program slower than ProxyTimeout: Apache's 504 as JSON (timeout), with CORS",
             f"{r.status} {r.text[:200]}")
        stored = ("SELECT count(*) FROM checkout_sessions WHERE user_id = 'u-slow' "
                  "AND stripe_session_id IS NOT NULL")
        eventually("the checkout to finish behind the 504", lambda: st.psql_one(stored) == "1")
        t.eq(st.psql_one(stored), "1", "...and the request still completed behind it: its session is stored")


def main():
    t = Tap()
    with Stack(apache_mode="proxy_fcgi") as st:
        for fn in (check_processes, check_killed, check_reload, check_slow_body, check_stop):
            with t.guard(fn.__name__):
                fn(t, st)
    with t.guard("check_gateway_timeout"):
        check_gateway_timeout(t)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
