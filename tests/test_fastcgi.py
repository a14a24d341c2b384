#!/usr/bin/env python3
"""One FastCGI process serving many requests (issue 8).

The programs are started as mod_fcgid starts them (a listening socket on
fd 0) and driven by tests/fcgi_client.py, so one process serves every
request of a test:
  - soak: 10,000 mixed requests to usage.cgi (valid, invalid, other users,
    every early refusal, PostgreSQL stopped and started in the middle) and
    3,000 to webhook.cgi; every answer is checked for anything that belongs
    to another request (request id, user, CORS/auth/Allow headers, replay);
    resident memory after the first 1,000 requests and at the end (the
    growth is printed; plain build: at most 1 MiB), and under the ASan
    build LeakSanitizer at exit;
  - PostgreSQL killed while the process is idle, then started again: the
    next request gets 503 or succeeds, the one after succeeds;
  - a stop signal just after the process accepted a connection, before
    the server's first bytes (SIGTERM from mod_fcgid, SIGUSR1 from
    multiwatch): that request is answered, then the process exits;
  - a connection the server keeps (FCGI_KEEP_CONN): requests one after
    another on it, and a stop while the process waits on it;
  - a stop under steady load (a connection always waiting): the process
    still leaves after the request in hand;
  - a peer that stalls in a request's head, or trickles it: dropped
    unanswered at the 10 s budget, a stop meanwhile taken then, and a
    request queued behind it answered;
  - prepared statements, as PostgreSQL's own log of every statement shows
    them: a FastCGI process parses each statement once and runs it by name
    afterwards; a CGI does not name any; a FastCGI process whose
    DATABASE_URL leads through PgBouncer does not either, and works.
"""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DEFAULT_SETTINGS, PASSTHROUGH_ENV, READ, Stack, Tap, make_jwt, program_env,  # noqa: E402
                     stripe_signature, syscall_of, wait_until)
from fcgi_client import BEGIN_REQUEST, RESPONDER, FcgiProcess, _record  # noqa: E402

API_KEY = DEFAULT_SETTINGS["USAGE_API_KEY"]
SECRET = DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"]
ORIGIN = "https://app.example.test"
CAP = 4096
# A request's first record alone: what a peer that stalls at once sends.
BEGIN_ONLY = _record(BEGIN_REQUEST, struct.pack("!HB5x", RESPONDER, 0))
HERE = os.path.dirname(os.path.abspath(__file__))


def asan_build(program):
    out = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    return "libasan" in out


def process_env(st, program):
    """What mod_fcgid would give the process: settings via FcgidInitialEnv."""
    # Leaks are what this test is about: under ASan, report them at exit.
    asan = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23"} if asan_build(program) else {}
    return program_env(asan, st.settings, {"BILLING_MAX_BODY": str(CAP)})


def params(st, name, method, query="", headers=None, body=b""):
    """The request's FastCGI params: the CGI meta-variables without settings."""
    e = st.cgi_env(name, method, body, None, headers, query)
    for k in st.settings:
        e.pop(k, None)
    e.pop("PATH", None)
    for k in PASSTHROUGH_ENV:
        e.pop(k, None)
    return e


class Checker:
    """Collects per-answer findings so thousands of requests make a few TAP lines."""

    def __init__(self):
        self.problems = []
        self.request_ids = set()
        self.count = 0

    def check(self, i, kind, r, want_status, want_origin=False, user=None):
        self.count += 1
        p = []
        if r.status not in (want_status if isinstance(want_status, tuple) else (want_status,)):
            p.append(f"status {r.status}, want {want_status}")
        rid = r.headers.get("x-request-id")
        if not rid or rid in self.request_ids:
            p.append(f"request id {rid!r} missing or seen before")
        self.request_ids.add(rid)
        if ("access-control-allow-origin" in r.headers) != want_origin:
            p.append("CORS header " + ("missing" if want_origin else "from another request"))
        if "www-authenticate" in r.headers and r.status != 401:
            p.append("WWW-Authenticate on a non-401")
        if "allow" in r.headers and r.status not in (405, 204):
            p.append("Allow on a " + str(r.status))
        if "idempotent-replayed" in r.headers:
            p.append("Idempotent-Replayed on a fresh key")
        if len([h for h, _ in r.header_list if h == "status"]) > 1:
            p.append("two Status lines")
        if user is not None and r.status in (200, 402):
            try:
                got = json.loads(r.body).get("userId")
            except ValueError:
                got = None
            if got != user:
                p.append(f"answer for user {got!r}, asked for {user!r}")
        if p:
            self.problems.append(f"#{i} {kind}: " + "; ".join(p))


def usage_request(st, proc, i, users, ck, expect_db=True):
    """The i-th request of the usage mix; returns the answer."""
    kind = i % 10
    user = users[(i // 10) % len(users)]
    key = {"Authorization": "Bearer " + API_KEY}
    db_ok = 200 if expect_db else 503
    if kind == 0:
        r = proc.request(params(st, "usage", "GET", "userId=" + user, key))
        ck.check(i, "GET", r, db_ok, user=user if expect_db else None)
    elif kind == 1:
        body = json.dumps({"userId": user, "usageType": "pain_entry"}).encode()
        h = dict(key, **{"Idempotency-Key": f"soak-{i}", "Content-Type": "application/json"})
        r = proc.request(params(st, "usage", "POST", headers=h, body=body), body)
        ck.check(i, "POST", r, (200, 402) if expect_db else 503, user=user if expect_db else None)
    elif kind == 2:
        body = b'{"userId": "' + user.encode() + b'", nope}'
        h = dict(key, **{"Content-Type": "application/json"})
        r = proc.request(params(st, "usage", "POST", headers=h, body=body), body)
        ck.check(i, "bad JSON", r, 400)
    elif kind == 3:
        r = proc.request(params(st, "usage", "GET", "userId=" + user))
        ck.check(i, "no credentials", r, 401)
    elif kind == 4:
        body = b"{}"
        r = proc.request(params(st, "usage", "PUT", headers={"Content-Type": "application/json"},
                                body=body), body)
        ck.check(i, "PUT", r, 405)
    elif kind == 5:
        h = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        r = proc.request(params(st, "usage", "OPTIONS", headers=h))
        ck.check(i, "preflight", r, 204, want_origin=True)
    elif kind == 6:
        r = proc.request(params(st, "usage", "HEAD", "userId=" + user, key))
        ck.check(i, "HEAD", r, db_ok)
        if r.body:
            ck.problems.append(f"#{i} HEAD: a body of {len(r.body)} bytes")
    elif kind == 7:
        other = users[(i // 10 + 1) % len(users)]
        h = {"Authorization": "Bearer " + make_jwt({"sub": user, "exp": int(time.time()) + 600})}
        r = proc.request(params(st, "usage", "GET", "userId=" + other, h))
        ck.check(i, "another user's usage", r, 403)
    elif kind == 8:
        body = b'{"userId":"' + b"x" * (CAP + 100) + b'"}'
        h = dict(key, **{"Content-Type": "application/json"})
        r = proc.request(params(st, "usage", "POST", headers=h, body=body), body)
        ck.check(i, "over the cap", r, 413)
    else:
        r = proc.request(params(st, "usage", "GET", "userId=" + user, dict(key, Origin=ORIGIN)))
        ck.check(i, "GET with Origin", r, db_ok, want_origin=True,
                 user=user if expect_db else None)
    return r


def finish(t, proc, label, rss_start, rss_end, asan):
    status = proc.stop()
    err = proc.stderr()
    if asan:
        t.ok("LeakSanitizer" not in err and status == 0,
             f"{label}: LeakSanitizer finds nothing at exit",
             "\n".join(err.splitlines()[-40:]))
        t.skip(f"{label}: resident memory flat", "ASan build (its allocator keeps freed memory)")
    else:
        t.skip(f"{label}: LeakSanitizer finds nothing at exit", "plain build (ASan build runs it)")
        t.ok(status == 0, f"{label}: the process exits cleanly on SIGTERM", f"exit {status}")
        growth = rss_end - rss_start
        t.diag(f"{label}: VmRSS {rss_start} KiB after 1,000 requests, {rss_end} KiB at the end "
               f"(growth {growth} KiB)")
        t.ok(growth <= 1024, f"{label}: resident memory flat (grew {growth} KiB, at most 1024)")


def soak_usage(t, st):
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    asan = asan_build(prog)
    proc = FcgiProcess(prog, process_env(st, prog))
    ck = Checker()
    users = [f"soak_user_{n}" for n in range(50)]
    total, restart_at = 10000, 5000
    rss_start = rss_end = None
    try:
        i = 0
        while i < total:
            if i == 1000:
                rss_start = proc.rss_kib()
            if i == restart_at:
                # PostgreSQL goes away mid-run: requests that need it get
                # 503, the others are answered as ever.
                st.pg_stop()
                for j in range(20):
                    usage_request(st, proc, i + j, users, ck, expect_db=False)
                st.pg_start()
                r = proc.request(params(st, "usage", "GET", "userId=" + users[0],
                                        {"Authorization": "Bearer " + API_KEY}))
                t.ok(r.status in (200, 503), "usage: first request after the restart: 503 or 200",
                     f"got {r.status}")
                r = proc.request(params(st, "usage", "GET", "userId=" + users[0],
                                        {"Authorization": "Bearer " + API_KEY}))
                t.eq(r.status, 200, "usage: the request after that succeeds")
                i += 20
                continue
            usage_request(st, proc, i, users, ck)
            i += 1
        rss_end = proc.rss_kib()
        t.ok(proc.alive(), "usage: one process served every request")
    finally:
        t.ok(ck.count >= 10000, f"usage: {ck.count} requests served by one FastCGI process")
        t.ok(not ck.problems, "usage: every answer is its own request's (status, id, user, headers)",
             "\n".join(ck.problems[:20]))
        t.eq(len(ck.request_ids), ck.count, "usage: every answer has its own request id")
        used = st.psql_one("SELECT coalesce(sum(amount), 0) FROM usage_tracking")
        posted = sum(1 for i in range(total) if i % 10 == 1 and not restart_at <= i < restart_at + 20)
        t.ok(int(used) <= posted and int(used) > 0,
             f"usage: counted {used} of {posted} POSTs (the rest over quota), never more")
        finish(t, proc, "usage", rss_start or 0, rss_end or 0, asan)
        proc.cleanup()


def signed_event(n):
    with open(os.path.join(HERE, "data", "events", "customer.subscription.created.json")) as f:
        ev = json.load(f)
    ev["id"] = f"evt_soak_{n}"
    ev["data"]["object"]["id"] = f"sub_soak_{n}"
    ev["data"]["object"]["customer"] = f"cus_soak_{n}"
    ev["data"]["object"]["metadata"] = {"userId": f"soak_hook_{n}"}
    return json.dumps(ev).encode()


def hook(st, proc, body, sig=True, method="POST"):
    h = {"Content-Type": "application/json"}
    if sig:
        h["Stripe-Signature"] = stripe_signature(SECRET, body)
    return proc.request(params(st, "webhook", method, headers=h, body=body), body)


def soak_webhook(t, st):
    prog = os.path.join(st.cgi_bin, "webhook.cgi")
    asan = asan_build(prog)
    proc = FcgiProcess(prog, process_env(st, prog))
    ck = Checker()
    total = 3000
    rss_start = rss_end = None
    applied = 0
    try:
        for i in range(total):
            if i == 1000:
                rss_start = proc.rss_kib()
            kind = i % 5
            if kind == 0:
                r = hook(st, proc, signed_event(i))
                ck.check(i, "new event", r, 200)
                applied += 1
                if r.status == 200 and json.loads(r.body).get("duplicate"):
                    ck.problems.append(f"#{i} new event answered as a duplicate")
            elif kind == 1:
                r = hook(st, proc, signed_event(i - 1))
                ck.check(i, "duplicate", r, 200)
                if r.status == 200 and not json.loads(r.body).get("duplicate"):
                    ck.problems.append(f"#{i} redelivery not answered as a duplicate")
            elif kind == 2:
                r = hook(st, proc, signed_event(i), sig=False)
                ck.check(i, "no signature", r, 400)
            elif kind == 3:
                body = signed_event(i)
                h = {"Content-Type": "application/json",
                     "Stripe-Signature": stripe_signature("whsec_wrong", body)}
                r = proc.request(params(st, "webhook", "POST", headers=h, body=body), body)
                ck.check(i, "wrong secret", r, 400)
            else:
                r = proc.request(params(st, "webhook", "GET"))
                ck.check(i, "GET", r, 405)
        rss_end = proc.rss_kib()
    finally:
        t.ok(not ck.problems, f"webhook: {ck.count} answers, each its own request's",
             "\n".join(ck.problems[:20]))
        t.eq(int(st.psql_one("SELECT count(*) FROM billing_events WHERE stripe_event_id LIKE 'evt_soak_%'")),
             applied, "webhook: each new event recorded once, no rejected one recorded")
        finish(t, proc, "webhook", rss_start or 0, rss_end or 0, asan)
        proc.cleanup()


def killed_while_idle(t, st):
    prog = os.path.join(st.cgi_bin, "webhook.cgi")
    proc = FcgiProcess(prog, process_env(st, prog))
    try:
        t.eq(hook(st, proc, signed_event(900001)).status, 200, "idle test: first event applied")
        # Immediate shutdown: the server dies without a goodbye to clients.
        st.pg_stop_immediate()
        st.pg_start()
        r = hook(st, proc, signed_event(900002))
        t.ok(r.status in (200, 503), "after PostgreSQL was killed and restarted: 503 or 200",
             f"got {r.status} {r.body[:200]!r}")
        r2 = hook(st, proc, signed_event(900003))
        t.eq(r2.status, 200, "the request after that succeeds")
        if r.status == 503:
            r = hook(st, proc, signed_event(900002))
            t.eq(r.status, 200, "the 503'd event succeeds when redelivered")
        t.ok(proc.alive(), "the process survived the database going away")
        # The server ends the idle connection (failover, an operator's
        # pg_terminate_backend): the next request must not notice.
        # pg_terminate_backend only signals: wait until the backend has
        # said FATAL and gone, which is what the process can see.
        pids = st.psql_one("WITH idle AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                           " WHERE application_name = 'billing-cgi')"
                           " SELECT string_agg(pid::text, ',') FROM idle WHERE pg_terminate_backend(pid)")
        t.ok(pids, "the idle connection's backend was told to end")
        wait_until("the terminated backend to exit", lambda: st.psql_one(
            f"SELECT count(*) FROM pg_stat_activity WHERE pid IN ({pids or 0})") == "0")
        r = hook(st, proc, signed_event(900004))
        t.eq(r.status, 200, "idle connection terminated by the server: the next request succeeds")
    finally:
        proc.cleanup()


def stopped_after_accept(t, st):
    """A stop signal in the moment after the process accepted a connection,
    before the web server's first bytes arrived (mod_fcgid's SIGTERM,
    multiwatch's SIGUSR1): that request is still answered, then the
    process leaves.  libfcgi alone would drop the connection unanswered."""
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    key = {"Authorization": "Bearer " + API_KEY}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        name = signal.Signals(sig).name
        proc = FcgiProcess(prog, process_env(st, prog))
        s = None
        try:
            t.eq(proc.request(params(st, "usage", "GET", "userId=u-stop", key)).status, 200,
                 f"{name}: a first request (the database connection is open)")
            s = proc.connect()
            # Accepted: the process waits in read(2) for our bytes.
            wait_until("the connection to be accepted", lambda: syscall_of(proc.pid) == READ)
            os.kill(proc.pid, sig)
            try:
                proc.send(s, params(st, "usage", "GET", "userId=u-stop", key))
                r = proc.answer(s)
            except OSError as e:
                r = e
            t.ok(not isinstance(r, OSError) and r.status == 200 and b"u-stop" in r.body,
                 f"{name} just after the accept: the request is answered 200", repr(r))
            status = proc.exit_status(10)
            t.eq(status, 0, f"{name}: then the process exits cleanly")
        finally:
            if s is not None:
                s.close()
            proc.cleanup()


def kept_connection(t, st):
    """A server that keeps its connection (FCGI_KEEP_CONN, as mod_proxy_fcgi
    with enablereuse=on): the process waits for the next request on it,
    and a stop while it waits there ends the process."""
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    key = {"Authorization": "Bearer " + API_KEY}
    proc = FcgiProcess(prog, process_env(st, prog))
    s = None
    try:
        s = proc.connect(timeout=10)
        got = []
        for i in range(3):
            try:
                proc.send(s, params(st, "usage", "GET", f"userId=u-keep-{i}", key), keep_conn=True)
                r = proc.answer(s)
                got.append(r.status == 200 and f"u-keep-{i}".encode() in r.body)
            except OSError as e:
                got.append(repr(e))
                break
        t.eq(got, [True] * 3, "FCGI_KEEP_CONN: three requests one after another on one connection")
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.exit_status(10)
        t.eq(status, 0, "SIGTERM while it waits on the kept connection: the process exits cleanly")
    finally:
        if s is not None:
            s.close()
        proc.cleanup()


def stopped_under_load(t, st):
    """SIGTERM while requests keep coming (a connection always waiting when
    one is answered): the process still leaves after the request in hand,
    not once the load stops."""
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    get = params(st, "usage", "GET", "userId=u-load", {"Authorization": "Bearer " + API_KEY})
    proc = FcgiProcess(prog, process_env(st, prog))
    answered, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                answered.append(proc.request(get, timeout=10).status)
            except OSError:
                if not proc.alive():
                    return
    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for th in threads:
            th.start()
        wait_until("requests to flow", lambda: len(answered) >= 50)
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.exit_status(5)
        t.eq(status, 0, "SIGTERM under steady load: the process exits cleanly within 5 s, load or not")
        t.ok(answered and all(x == 200 for x in answered), "every request it answered: 200",
             str(sorted(set(answered))))
    finally:
        stop.set()
        for th in threads:
            th.join(30)
        proc.cleanup()


def stalled_head(t, st):
    """A peer that sends the start of a request and stalls is dropped at
    the 10 s budget (as a slow body is): a stop during the stall is then
    taken, rather than waiting on the peer for ever."""
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    proc = FcgiProcess(prog, process_env(st, prog))
    s = None
    try:
        s = proc.connect()
        s.sendall(BEGIN_ONLY)
        wait_until("the rest of the head to be awaited", lambda: syscall_of(proc.pid) == READ)
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.exit_status(30)
        t.eq(status, 0, "SIGTERM while a peer stalls in a request's head: exits once it is dropped")
        t.ok("gave no whole request within 10000 ms: dropped" in proc.stderr(),
             "...and says so", proc.stderr()[-300:])
        t.eq(s.recv(65536), b"", "the stalled peer got no answer, only the connection closed")
    finally:
        if s is not None:
            s.close()
        proc.cleanup()


def trickling_head(t, st):
    """A peer that trickles a request's head (a byte every half second,
    never the whole) is dropped at the same budget, however it trickles;
    a whole request queued behind it is then answered."""
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    get = params(st, "usage", "GET", "userId=u-behind", {"Authorization": "Bearer " + API_KEY})
    proc = FcgiProcess(prog, process_env(st, prog))
    s, stop, got = None, threading.Event(), {}

    def trickle():
        try:
            while not stop.wait(0.5):  # the peer's pace is the input under test
                s.send(b"\x01")
        except OSError:
            pass

    def queued():
        try:
            got["r"] = proc.request(get, timeout=40)
        except OSError as e:
            got["r"] = e
    th = [threading.Thread(target=trickle), threading.Thread(target=queued)]
    try:
        s = proc.connect(timeout=40)
        # A PARAMS record announcing 60,000 bytes, of which a byte comes now and then.
        s.sendall(BEGIN_ONLY + struct.pack("!BBHHBx", 1, 4, 1, 60000, 0))
        wait_until("the head to be awaited", lambda: syscall_of(proc.pid) == READ)
        for x in th:
            x.start()
        th[1].join(40)
        r = got.get("r")
        t.ok(not isinstance(r, OSError) and r is not None and r.status == 200 and b"u-behind" in r.body,
             "a head trickling a byte every 0.5 s is dropped at the budget; the request behind it: 200",
             repr(r))
        t.eq(proc.stderr().count("gave no whole request within 10000 ms: dropped"), 1,
             "...one drop logged, the trickler's")
    finally:
        stop.set()
        if s is not None:
            s.close()
        for x in th:
            if x.is_alive():
                x.join(10)
        proc.cleanup()


def pg_log(st):
    with open(os.path.join(st.tmp, "logs", "postgres.log"), errors="replace") as f:
        return f.read()


def statements_logged(text):
    """(names parsed, names executed, unnamed statements parsed other than
    BEGIN/COMMIT/ROLLBACK) in PostgreSQL's log lines of log_min_duration_statement."""
    parsed = re.findall(r"duration: [\d.]+ ms  parse (billing_cgi_[0-9a-f]+_\d+):", text)
    executed = re.findall(r"duration: [\d.]+ ms  execute (billing_cgi_[0-9a-f]+_\d+):", text)
    unnamed = [q for q in re.findall(r"duration: [\d.]+ ms  parse <unnamed>: (.*)", text)
               if q.strip() not in ("BEGIN", "COMMIT", "ROLLBACK")]
    return parsed, executed, unnamed


def prepared_statements(t, st, pooled):
    prog = os.path.join(st.cgi_bin, "webhook.cgi")
    st.psql("ALTER ROLE billing SET log_min_duration_statement = 0")
    try:
        if not pooled:
            # As plain CGI: one request, nothing worth preparing.
            start = len(pg_log(st))
            body = signed_event(910000)
            r = st.cgi("webhook", "POST", body,
                       headers={"Stripe-Signature": stripe_signature(SECRET, body)})
            t.eq(r.status, 200, "CGI: event applied")
            parsed, executed, unnamed = statements_logged(pg_log(st)[start:])
            t.ok(not parsed and not executed and unnamed,
                 "CGI: statements run unnamed, none prepared", f"{parsed} {executed}")
        proc = FcgiProcess(prog, process_env(st, prog))
        label = "FastCGI through PgBouncer" if pooled else "FastCGI"
        try:
            start = len(pg_log(st))
            statuses = [hook(st, proc, signed_event(910001 + i + 100 * pooled)).status for i in range(4)]
            t.eq(statuses, [200] * 4, f"{label}: four events applied")
            parsed, executed, unnamed = statements_logged(pg_log(st)[start:])
            if pooled:
                t.ok(not parsed and not executed,
                     f"{label}: nothing prepared (a pooler hands transactions to any server connection)",
                     f"{parsed} {executed}")
                t.ok("leads through a pooler: statements are not prepared" in proc.stderr(),
                     f"{label}: the process says why")
            else:
                t.ok(parsed and len(parsed) == len(set(parsed)),
                     f"{label}: each statement parsed once, by name", f"{parsed}")
                t.ok(not unnamed, f"{label}: no statement parsed without a name", f"{unnamed[:3]}")
                counts = {n: executed.count(n) for n in set(parsed)}
                t.ok(counts and max(counts.values()) >= 4,
                     f"{label}: prepared statements run by name in every request", f"{counts}")
        finally:
            proc.cleanup()
    finally:
        st.psql("ALTER ROLE billing RESET log_min_duration_statement")


def main():
    t = Tap()
    with Stack({"STRIPE_SYNC_MODE": "event"}, apache=False) as st:
        for name, check in (("soak usage.cgi", soak_usage), ("soak webhook.cgi", soak_webhook),
                            ("PostgreSQL killed while idle", killed_while_idle),
                            ("stopped just after an accept", stopped_after_accept),
                            ("a kept connection", kept_connection),
                            ("stopped under load", stopped_under_load),
                            ("a stalled request head", stalled_head),
                            ("a trickling request head", trickling_head)):
            with t.guard(name):
                check(t, st)
        with t.guard("prepared statements"):
            prepared_statements(t, st, pooled=False)
    with Stack({"STRIPE_SYNC_MODE": "event"}, apache=False, stripe=False, pgbouncer=True) as st:
        with t.guard("prepared statements through PgBouncer"):
            prepared_statements(t, st, pooled=True)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
