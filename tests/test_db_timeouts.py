#!/usr/bin/env python3
"""Database timeouts (issue 15): every transaction runs with
statement_timeout, lock_timeout and idle_in_transaction_session_timeout
set LOCAL (settings DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS,
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS), so a stuck lock or a slow Stripe call
cannot pin connections until max_connections runs out; and checkout holds
no transaction while it waits for Stripe.  The same through PgBouncer in
transaction pooling, where startup options are refused and session SETs
would leak.  Before the fix a request waited for a lock as long as it
was held, and a checkout sat idle in a transaction during Stripe calls.

Real PostgreSQL, real CGIs, the fake Stripe, and PgBouncer.
"""
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import LockHolder, Stack, Tap, free_port, make_jwt, wait_until  # noqa: E402
from test_webhook import SETTINGS, SUB42, deliver, event, sub_row  # noqa: E402
from fcgi_client import FcgiProcess  # noqa: E402
from test_fastcgi import hook, process_env, signed_event  # noqa: E402

t = Tap()
API = {"Authorization": "Bearer usage-test-key-0123456789abcdef"}


def timed(fn):
    start = time.monotonic()
    try:
        r = fn()
    except subprocess.TimeoutExpired:
        r = None
    return r, time.monotonic() - start


def usage_post(st, user, env=None, timeout=8):
    return st.cgi("usage", "POST", body={"userId": user, "usageType": "pain_entry"},
                  headers=API, env=env, timeout=timeout)


def test_lock_timeout(st):
    h = LockHolder(st, f"SELECT pg_advisory_xact_lock(hashtext('{SUB42}'))")
    try:
        r, took = timed(lambda: st.cgi("webhook", body=event("customer.subscription.created"),
                                       headers=_sig(event("customer.subscription.created")),
                                       env={"DB_LOCK_TIMEOUT_MS": "300"}, timeout=8))
    finally:
        h.release()
    t.ok(r is not None and r.status == 503 and took < 4,
         "a subscription lock held elsewhere: 503 after DB_LOCK_TIMEOUT_MS, not a wait",
         f"{r!r} after {took:.1f}s")
    t.ok(r is not None and "sqlstate=55P03" in r.stderr, "logged as a lock timeout",
         r and r.stderr)
    t.eq(st.psql_one("SELECT count(*) FROM billing_events"), "0",
         "nothing recorded: Stripe redelivers")
    r = deliver(st, event("customer.subscription.created"))
    t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "incomplete"),
         "the redelivery after the lock is gone is applied")


def test_duplicate_while_locked(st):
    """A redelivery of a recorded event waits on no lock: not even on its
    subscription's, which another transaction may hold for seconds (the
    self-service endpoints hold it across their calls to Stripe)."""
    ev = event("customer.subscription.updated", id="evt_dup_locked")
    ev["data"]["object"]["id"] = "sub_dup_locked"
    r = deliver(st, ev)
    t.ok(r.status == 200 and "applied=" in r.stderr,
         "an event applied: its log line says so", r.stderr[-300:])
    h = LockHolder(st, "SELECT pg_advisory_xact_lock(hashtext('sub_dup_locked'))")
    try:
        r, took = timed(lambda: deliver(st, ev, env={"DB_LOCK_TIMEOUT_MS": "5000"}))
    finally:
        h.release()
    t.ok(r is not None and r.status == 200 and r.json().get("duplicate") is True and took < 4.5,
         "its redelivery while the subscription is locked elsewhere: 200 duplicate at once",
         f"{r and r.status} {r and r.body[:200]!r} after {took:.1f}s")


def first_event_while_locked(st, lock_sql, n):
    """A fresh FastCGI webhook.cgi (DB_LOCK_TIMEOUT_MS 300) gets event n as
    its first request while another session holds lock_sql:
    (the process, the answer, seconds taken)."""
    prog = os.path.join(st.cgi_bin, "webhook.cgi")
    env = process_env(st, prog)
    env["DB_LOCK_TIMEOUT_MS"] = "300"
    proc = FcgiProcess(prog, env)
    try:
        h = LockHolder(st, lock_sql)
        try:
            r, took = timed(lambda: hook(st, proc, signed_event(n)))
        finally:
            h.release()
    except BaseException:
        proc.cleanup()
        raise
    return proc, r, took


def test_fastcgi_first_prepare(st):
    """A FastCGI process prepares a statement the first time it runs it; the
    Prepare, which locks the tables the statement names, waits no longer
    than DB_LOCK_TIMEOUT_MS either."""
    proc, r, took = first_event_while_locked(
        st, "LOCK TABLE billing_events IN ACCESS EXCLUSIVE MODE", 920001)
    try:
        t.ok(r is not None and r.status == 503 and took < 4,
             "FastCGI, table locked while its first statement is prepared: 503 after"
             " DB_LOCK_TIMEOUT_MS", f"{r and r.status} after {took:.1f}s")
        t.ok("sqlstate=55P03" in proc.stderr(), "logged as a lock timeout")
        t.eq(hook(st, proc, signed_event(920001)).status, 200,
             "the same process applies the redelivery once the lock is gone")
    finally:
        proc.cleanup()


def test_fastcgi_lock_batch(st):
    """The subscription's lock and the read it guards go out in one round
    trip, each prepared in that pipeline the first time: when the lock
    times out, the read's Prepare never ran, and the process prepares it
    with the redelivery instead of assuming the server has it."""
    proc, r, took = first_event_while_locked(
        st, "SELECT pg_advisory_xact_lock(hashtext('sub_soak_920101'))", 920101)
    try:
        t.ok(r is not None and r.status == 503 and took < 4,
             "FastCGI, the subscription locked elsewhere: 503 after DB_LOCK_TIMEOUT_MS",
             f"{r and r.status} after {took:.1f}s")
        t.eq(st.psql_one("SELECT count(*) FROM billing_events WHERE stripe_event_id ="
                         " 'evt_soak_920101'"), "0", "nothing recorded: Stripe redelivers")
        r = hook(st, proc, signed_event(920101))
        t.eq((r.status, (sub_row(st, "sub_soak_920101") or {}).get("user_id")),
             (200, "soak_hook_920101"),
             "the same process applies the redelivery: subscription stored and linked")
        t.ok("sqlstate=26000" not in proc.stderr() and proc.alive(),
             "no statement was run by a name the server does not have", proc.stderr()[-500:])
    finally:
        proc.cleanup()


def test_default_lock_timeout(st):
    h = LockHolder(st, "LOCK TABLE usage_tracking IN ACCESS EXCLUSIVE MODE")
    try:
        r, took = timed(lambda: usage_post(st, "dflt-lock", timeout=15))
    finally:
        h.release()
    t.ok(r is not None and r.status == 503 and 3.5 < took < 10,
         "without settings the default lock timeout (4 s) applies: 503",
         f"{r!r} after {took:.1f}s")


def test_statement_timeout(st):
    h = LockHolder(st, "LOCK TABLE usage_tracking IN ACCESS EXCLUSIVE MODE")
    try:
        r, took = timed(lambda: usage_post(st, "stmt-timeout", env={
            "DB_STATEMENT_TIMEOUT_MS": "300", "DB_LOCK_TIMEOUT_MS": "60000"}))
    finally:
        h.release()
    t.ok(r is not None and r.status == 503 and took < 4 and "sqlstate=57014" in r.stderr,
         "a statement running past DB_STATEMENT_TIMEOUT_MS: 503 (57014)",
         f"{r!r} after {took:.1f}s")
    r = usage_post(st, "stmt-timeout")
    t.eq(r.status, 200, "once the lock is gone the same request succeeds")


def test_idle_in_transaction(st):
    """refetch mode stays in its transaction while it asks Stripe: bounded."""
    st.stripe.put_subscription(SUB42, event("customer.subscription.updated")["data"]["object"])
    st.stripe.fail(path="/v1/subscriptions", method="GET", mode="slow", delay=1.5, count=1)
    ev = event("customer.subscription.updated", id="evt_idle")
    r = st.cgi("webhook", body=ev, headers=_sig(ev), timeout=20,
               env={"STRIPE_SYNC_MODE": "refetch", "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "300"})
    t.ok(r.status == 503, "a transaction idle past DB_IDLE_IN_TRANSACTION_TIMEOUT_MS is ended: 503",
         repr(r))
    t.eq(st.psql_one("SELECT count(*) FROM billing_events WHERE stripe_event_id = 'evt_idle'"),
         "0", "and rolled back (Stripe redelivers)")
    st.stripe.reset()


def test_checkout_holds_no_transaction(st):
    """While checkout waits for Stripe its connection is idle, not in a transaction."""
    user = "idle-checkout"
    body = {"userId": user, "tier": "pro", "interval": "monthly",
            "successUrl": "https://app.example.test/ok", "cancelUrl": "https://app.example.test/no"}
    headers = {"Authorization": "Bearer " + make_jwt({"sub": user, "exp": int(time.time()) + 600})}
    seen = {}
    for path in ("/v1/customers", "/v1/checkout/sessions"):
        st.stripe.reset()
        st.stripe.fail(path=path, method="POST", mode="slow", delay=1.5, count=1)
        result = {}
        th = threading.Thread(target=lambda: result.setdefault("r", st.cgi(
            "create-checkout-session", "POST", body=body, headers=headers, timeout=20,
            env={"DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "300"})))
        th.start()
        wait_until("the Stripe call", lambda: any(
            q["path"] == path and q["status"] is None for q in st.stripe.requests()))
        seen[path] = st.psql("SELECT state FROM pg_stat_activity"
                             " WHERE application_name = 'billing-cgi'")
        th.join()
        r = result["r"]
        t.eq(r.status, 200, f"{path} slower than the idle-in-transaction timeout: still 200")
        t.eq(seen[path], [["idle"]], f"during {path} the connection is idle, not in a transaction")
        st.psql(f"DELETE FROM checkout_sessions WHERE user_id = '{user}'")


def test_bad_setting(st):
    r = usage_post(st, "bad-setting", env={"DB_LOCK_TIMEOUT_MS": "4s"})
    t.ok(r.status == 500 and (r.json() or {}).get("error", {}).get("code") == "misconfigured" and
         "DB_LOCK_TIMEOUT_MS" in r.stderr, "a malformed timeout setting: 500 misconfigured, named",
         repr(r))


def _sig(ev):
    from test_webhook import body_of, signed
    return signed(body_of(ev))


def test_pgbouncer(st):
    """Transaction pooling: per-transaction SET LOCAL works, session state would not."""
    exe = shutil.which("pgbouncer")
    if exe is None:
        t.ok(False, "pgbouncer is installed (tools/deps)")
        return
    d = st._mkdir("pgbouncer")
    port = free_port()
    st._write(os.path.join(d, "userlist.txt"), '"billing" ""\n')
    st._write(os.path.join(d, "pgbouncer.ini"), f"""[databases]
billing = host={st.pg_run} port={st.pg_port} dbname=billing user=billing
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 50
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
    p = subprocess.Popen([exe, os.path.join(d, "pgbouncer.ini")], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         **st._run_as_kw())
    url = f"postgresql://billing@127.0.0.1:{port}/billing"
    try:
        wait_until("pgbouncer", lambda: subprocess.run(
            st._psql_cmd(url) + ["-c", "SELECT 1"], capture_output=True).returncode == 0)
        q = subprocess.run(st._psql_cmd(url + "?options=-c%20lock_timeout%3D300") +
                           ["-c", "SHOW lock_timeout"], capture_output=True)
        t.ok(q.returncode != 0 and b"unsupported startup parameter" in q.stderr,
             "PgBouncer refuses startup options (why the timeouts are not set that way)",
             q.stderr.decode(errors="replace"))
        env = {"DATABASE_URL": url}
        t.eq(usage_post(st, "via-bouncer", env=env).status, 200, "usage through PgBouncer: 200")
        h = LockHolder(st, "LOCK TABLE usage_tracking IN ACCESS EXCLUSIVE MODE")
        try:
            r, took = timed(lambda: usage_post(st, "via-bouncer",
                                               env=dict(env, DB_LOCK_TIMEOUT_MS="300")))
        finally:
            h.release()
        t.ok(r is not None and r.status == 503 and took < 4 and "sqlstate=55P03" in r.stderr,
             "through PgBouncer the lock timeout applies: 503", f"{r!r} after {took:.1f}s")
        q = subprocess.run(st._psql_cmd(url) + ["-c", "SHOW lock_timeout"], capture_output=True)
        t.eq(q.stdout.decode().strip(), "0",
             "and it did not leak into the pooled server connection (SET LOCAL)")
    finally:
        p.terminate()
        p.wait(10)


def main():
    with t.guard("timeouts stack"), Stack(settings=dict(SETTINGS, STRIPE_SYNC_MODE="event")) as st:
        for fn in (test_lock_timeout, test_fastcgi_first_prepare, test_fastcgi_lock_batch,
                   test_duplicate_while_locked, test_default_lock_timeout,
                   test_statement_timeout,
                   test_idle_in_transaction, test_checkout_holds_no_transaction,
                   test_bad_setting, test_pgbouncer):
            t.run(fn, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
