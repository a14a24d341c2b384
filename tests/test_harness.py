#!/usr/bin/env python3
"""TAP test of tests/harness.py itself: PostgreSQL, fake Stripe, Apache with
apache/billing-cgi.conf and with the .htaccess variant, direct CGI runs,
helpers, and teardown (also on SIGTERM).  Uses stub shell CGIs named like the
real ones, so it does not depend on the C programs."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Stack, Tap, make_jwt, stripe_signature  # noqa: E402

NAMES = ("create-checkout-session", "webhook", "usage")
ROUTES = [("POST", "/api/stripe/create-checkout-session", "create-checkout-session.cgi"),
          ("POST", "/api/stripe/create-checkout-session/", "create-checkout-session.cgi"),
          ("POST", "/api/stripe/webhook", "webhook.cgi"),
          ("POST", "/api/stripe/webhook/", "webhook.cgi"),
          ("GET", "/api/usage", "usage.cgi"),
          ("POST", "/api/usage/", "usage.cgi"),
          ("GET", "/api/usage?period=current&x=1", "usage.cgi"),
          ("OPTIONS", "/api/usage", "usage.cgi"),
          ("PUT", "/api/stripe/webhook", "webhook.cgi")]
NOT_MAPPED = ["/api/nothing", "/api/usage/extra", "/api/usagex", "/api/stripe/webhook.cgi",
              "/x/api/usage", "/api/stripe/", "/cgi-bin/webhook.cgi"]

STUB = r"""#!/bin/sh
# Stub CGI for test_harness.py: answers its uid, body size and environment
# (NUL-separated, as from env -0), and writes one line to stderr.
name=${0##*/}
echo "stub $name ran" >&2
len=${CONTENT_LENGTH:-0}
if [ "$len" -gt 0 ] 2>/dev/null; then got=$(head -c "$len" | wc -c); else got=0; fi
printf 'Status: 200 OK\r\nContent-Type: application/octet-stream\r\nX-Stub: %s\r\nX-Body-Length: %s\r\nX-Uid: %s\r\n\r\n' "$name" "$got" "$(id -u)"
env -0
"""

SETTING_ODD = 'odd "quoted" value with $dollar, \\backslash and spaces '


def stub_builddir():
    d = tempfile.mkdtemp(prefix="billing-harness-stubs-")
    os.chmod(d, 0o755)
    os.mkdir(os.path.join(d, "cgi-bin"), 0o755)
    for n in NAMES:
        p = os.path.join(d, "cgi-bin", n + ".cgi")
        with open(p, "w") as f:
            f.write(STUB)
        os.chmod(p, 0o755)
    return d


def stub_env(resp):
    """Environment the stub reported (dict), or {}."""
    out = {}
    for item in resp.body.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode()] = v.decode(errors="replace")
    return out


def proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def check_routes(t, st, label):
    auth = "Bearer tok.en.value"
    for method, path, script in ROUTES:
        r = st.http(method, path, headers={"Authorization": auth},
                    body=b'{"k":"v"}' if method == "POST" else b"")
        env = stub_env(r)
        t.ok(r.status == 200 and r.headers.get("x-stub") == script,
             f"{label}: {method} {path} -> {script}", f"{r.status} {r.headers}")
        if method == "POST":
            t.eq(r.headers.get("x-body-length"), "9", f"{label}: {method} {path}: body reaches the CGI")
        t.eq(env.get("REQUEST_METHOD"), method, f"{label}: {method} {path}: REQUEST_METHOD")
        t.eq(env.get("HTTP_AUTHORIZATION"), auth,
             f"{label}: {method} {path}: Authorization reaches the CGI as HTTP_AUTHORIZATION")
    r = st.http("GET", "/api/usage?period=current&x=1")
    t.eq(stub_env(r).get("QUERY_STRING"), "period=current&x=1", f"{label}: QUERY_STRING passed")
    for path in NOT_MAPPED:
        if st.htaccess and path.startswith("/cgi-bin/"):
            continue  # on shared hosting cgi-bin/ is reachable directly
        r = st.http("GET", path)
        t.eq(r.status, 404, f"{label}: GET {path} -> 404")
    r = st.http("POST", "/api/stripe/webhook", body=b"x" * (1048576 + 1))
    t.eq(r.status, 413, f"{label}: body over 1 MiB -> 413 from Apache")
    t.ok(r.headers.get("x-stub") is None, f"{label}: oversized body never reaches the CGI")
    r = st.http("POST", "/api/stripe/webhook", body=b"y" * 1048576)
    t.ok(r.status == 200 and r.headers.get("x-body-length") == "1048576",
         f"{label}: body of exactly 1 MiB passes", f"{r.status} {r.headers}")
    r = st.http("GET", "/api/usage")
    if os.geteuid() == 0:
        t.eq(r.headers.get("x-uid"), str(st.runas.pw_uid), f"{label}: CGIs run as {st.runas.pw_name}")
    t.ok("stub usage.cgi ran" in st.error_log(), f"{label}: CGI stderr lands in the error log")
    return stub_env(r)


def test_main_stack(t, builddir):
    settings = {"X_HARNESS_ODD": SETTING_ODD, "USAGE_API_KEY": None, "STRIPE_TRIAL_DAYS_PRO": 7}
    with Stack(settings, builddir=builddir) as st:
        tmp, pids = st.tmp, [st._pg.pid, st._fake.pid, st._httpd.pid]
        t.diag(f"startup took {st.startup_seconds:.2f} s")
        t.ok(st.startup_seconds < 15, "startup is reasonably fast")
        # settings
        t.eq(st.settings["STRIPE_API_BASE"], st.stripe_base, "STRIPE_API_BASE is the fake")
        t.eq(st.settings["DATABASE_URL"], st.database_url, "DATABASE_URL set")
        t.ok("USAGE_API_KEY" not in st.settings, "a None setting removes the default")
        t.eq(st.settings["STRIPE_TRIAL_DAYS_PRO"], "7", "given settings merged (as strings)")
        t.eq(st.settings["STRIPE_PRICE_PRO_YEARLY"], "price_pro_yearly", "default price ids")
        # PostgreSQL
        t.eq(st.psql_one("select 1"), "1", "psql_one")
        t.eq(st.psql("select 1, null, 'a,b', 'x\ny' union all select 2, '', '\"', ''"),
             [["1", None, "a,b", "x\ny"], ["2", "", '"', ""]], "psql rows, NULL -> None, odd values")
        t.eq(st.psql("create table h(a int); insert into h values (1),(2); select count(*) from h"),
             [["2"]], "psql runs several statements")
        t.eq(st.psql_one("select 1 where false"), None, "psql_one of no rows is None")
        try:
            st.psql("select * from no_such_table")
            t.ok(False, "psql raises on error")
        except harness.PsqlError as e:
            t.ok("no_such_table" in str(e), "psql raises on error")
        t.eq(st.psql_one("show listen_addresses"), "", "PostgreSQL listens on no TCP address")
        t.eq(st.psql_one("show fsync"), "off", "fsync off")
        t.eq(st.psql_one("show shared_preload_libraries"), "plpgsql",
             "PostgreSQL preloads PL/pgSQL, as the README recommends for CGI")
        t.ok(st.psql_one("show unix_socket_directories").startswith(st.tmp),
             "socket directory inside the stack's temp dir")
        if os.geteuid() == 0:
            t.eq(proc_uid(st._pg.pid), st.runas.pw_uid, f"postgres runs as {st.runas.pw_name}")
            t.eq(proc_uid(st._httpd.pid), st.runas.pw_uid, f"httpd runs as {st.runas.pw_name}")
        schema = os.path.join(st.srcdir, "sql", "schema.sql")
        if os.path.exists(schema):
            n = int(st.psql_one("select count(*) from information_schema.tables "
                                "where table_schema not in ('pg_catalog','information_schema')"))
            t.ok(st.schema_loaded and n > 0, f"sql/schema.sql applied ({n} tables)")
        else:
            t.skip("sql/schema.sql applied", "no sql/schema.sql yet")
        # fake Stripe
        t.ok(st.stripe.reset() is not None, "fake Stripe reset")
        t.ok(isinstance(st.stripe.requests(), list), "fake Stripe requests() is a list")
        st.stripe.put_subscription("sub_harness", {"id": "sub_harness", "object": "subscription",
                                                   "status": "active"})
        c = http.client.HTTPConnection("127.0.0.1", int(st.stripe_base.rsplit(":", 1)[1]), timeout=10)
        c.request("GET", "/v1/subscriptions/sub_harness",
                  headers={"Authorization": "Bearer " + st.settings["STRIPE_SECRET_KEY"]})
        r = c.getresponse()
        body = json.loads(r.read() or b"null")
        c.close()
        t.ok(r.status == 200 and isinstance(body, dict) and body.get("id") == "sub_harness",
             "fake Stripe serves a stored subscription", f"{r.status} {body}")
        t.ok(any(q.get("path", "").startswith("/v1/subscriptions/sub_harness") if isinstance(q, dict)
                 else "sub_harness" in json.dumps(q) for q in st.stripe.requests()),
             "fake Stripe recorded the request")
        # Apache
        env = check_routes(t, st, "conf")
        for k, v in st.settings.items():
            if env.get(k) != v:
                t.ok(False, f"conf: setting {k} reaches the CGI", f"got {env.get(k)!r} want {v!r}")
                break
        else:
            t.ok(True, "conf: every setting reaches the CGI verbatim (SetEnv quoting)")
        t.eq(env.get("X_HARNESS_ODD"), SETTING_ODD, "conf: odd characters survive SetEnv")
        t.ok("USAGE_API_KEY" not in env, "conf: removed setting is not set")
        t.eq(env.get("SCRIPT_NAME"), "/api/usage", "conf: SCRIPT_NAME is the API path")
        # direct CGI runs
        r = st.cgi("webhook", body=b'{"a":1}', headers={"Stripe-Signature": "t=1,v1=00"},
                   env={"EXTRA": "1"})
        e = stub_env(r)
        t.ok(r.status == 200 and r.headers.get("x-stub") == "webhook.cgi", "cgi(): runs the program",
             repr(r))
        t.eq((e.get("GATEWAY_INTERFACE"), e.get("REQUEST_METHOD"), e.get("CONTENT_LENGTH"),
              e.get("CONTENT_TYPE"), e.get("SCRIPT_NAME")),
             ("CGI/1.1", "POST", "7", "application/json", "/api/stripe/webhook"), "cgi(): CGI variables")
        t.eq(e.get("HTTP_STRIPE_SIGNATURE"), "t=1,v1=00", "cgi(): headers as HTTP_*")
        t.eq(e.get("EXTRA"), "1", "cgi(): env overrides")
        t.eq(e.get("DATABASE_URL"), st.database_url, "cgi(): settings in the environment")
        t.eq(r.headers.get("x-body-length"), "7", "cgi(): body on stdin")
        t.ok("stub webhook.cgi ran" in r.stderr, "cgi(): stderr captured")
        r = st.cgi("usage", method="GET", query="a=b", env={"CONTENT_LENGTH": None})
        e = stub_env(r)
        t.ok("CONTENT_LENGTH" not in e and "CONTENT_TYPE" not in e and e.get("QUERY_STRING") == "a=b",
             "cgi(): GET without body, None unsets", repr(r))
        out, err = st.cgi_raw("usage", method="GET")
        t.ok(out.startswith(b"Status: 200 OK\r\n") and "stub usage.cgi ran" in err,
             "cgi_raw(): stdout bytes and stderr")
        # database down and up again
        st.pg_stop()
        try:
            st.psql("select 1")
            t.ok(False, "pg_stop(): database is down")
        except harness.PsqlError:
            t.ok(True, "pg_stop(): database is down")
        st.pg_start()
        t.eq(st.psql_one("select count(*) from h"), "2", "pg_start(): back, data kept")
    t.ok(not os.path.exists(tmp), "temp dir removed after the with-block")
    t.ok(not any(alive(p) for p in pids), "postgres, fake Stripe and httpd are gone")
    t.eq(harness.processes_using(tmp), [], "no process left that uses the temp dir")


def test_htaccess_stack(t, builddir):
    # Two stacks at the same time: the .htaccess one and a bare database.
    with Stack({"X_HARNESS_ODD": SETTING_ODD}, htaccess=True, builddir=builddir) as st, \
            Stack(apache=False, stripe=False, builddir=builddir) as db:
        tmp = st.tmp
        t.ok(st.tmp != db.tmp and st.database_url != db.database_url, "two stacks side by side")
        t.ok(db.port is None and db.stripe is None, "apache=False, stripe=False start neither")
        db.psql("create table only_here(a int)")
        t.eq(st.psql_one("select to_regclass('only_here')"), None, "the two databases are separate")
        env = check_routes(t, st, "htaccess")
        conf = env.get("BILLING_CONFIG", "")
        t.ok(conf and os.path.exists(conf), "htaccess: BILLING_CONFIG names the settings file", conf)
        if conf and os.path.exists(conf):
            text = open(conf).read()
            t.ok(f'DATABASE_URL="{st.database_url}"' in text and
                 f'X_HARNESS_ODD="{SETTING_ODD}"' in text, "htaccess: settings file holds the settings")
        t.eq(env.get("SCRIPT_NAME"), "/cgi-bin/usage.cgi", "htaccess: SCRIPT_NAME is the cgi-bin path")
        t.eq(env.get("REDIRECT_URL"), "/api/usage", "htaccess: REDIRECT_URL is the API path")
        r = st.http("GET", "/cgi-bin/.htaccess")
        t.eq(r.status, 403, "htaccess: .htaccess not served")
    t.ok(not os.path.exists(tmp), "htaccess: temp dir removed")
    t.eq(harness.processes_using(tmp), [], "htaccess: no process left")


def test_helpers(t):
    payload = b'{"id":"evt_1"}'
    want = hmac.new(b"whsec_x", b"1700000000." + payload, hashlib.sha256).hexdigest()
    t.eq(stripe_signature("whsec_x", payload, t=1700000000), f"t=1700000000,v1={want}",
         "stripe_signature")
    t.ok(stripe_signature("s", "{}").startswith("t="), "stripe_signature default t")

    def unb64(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    tok = make_jwt({"sub": "u1", "exp": 2000000000})
    h, c, s = tok.split(".")
    t.eq(json.loads(unb64(h)), {"alg": "HS256", "typ": "JWT"}, "make_jwt header")
    t.eq(json.loads(unb64(c)), {"sub": "u1", "exp": 2000000000}, "make_jwt claims")
    t.eq(unb64(s), hmac.new(harness.DEFAULT_SETTINGS["AUTH_JWT_SECRET"].encode(),
                            f"{h}.{c}".encode(), hashlib.sha256).digest(),
         "make_jwt HS256 signature with the default secret")
    t.eq(make_jwt({}, alg="none").split(".")[2], "", "make_jwt alg none is unsigned")
    d = tempfile.mkdtemp(prefix="billing-harness-keys-")
    try:
        keys = harness.gen_keys(d)
        t.ok(all(os.path.exists(p) for p in keys.values()), "gen_keys writes four PEM files")
        for alg, priv, pub in (("RS256", "rsa_private", "rsa_public"), ("ES256", "ec_private", "ec_public")):
            tok = make_jwt({"sub": "u"}, alg=alg, key_file=keys[priv], header={"kid": "k1"})
            h, c, s = tok.split(".")
            sig = unb64(s)
            if alg == "ES256":
                t.eq(len(sig), 64, "ES256 signature is raw r||s")
                sig = der_from_raw(sig)
            sp = os.path.join(d, "sig")
            with open(sp, "wb") as f:
                f.write(sig)
            p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", keys[pub], "-signature", sp],
                               input=f"{h}.{c}".encode(), capture_output=True)
            t.ok(p.returncode == 0, f"make_jwt {alg} verifies with openssl", p.stdout + p.stderr)
            t.eq(json.loads(unb64(h)).get("kid"), "k1", f"make_jwt {alg} extra header member")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = harness.parse_cgi_output(b"Content-Type: text/plain\nLocation: /x\n\nhi")
    t.eq((out.status, out.headers["content-type"], out.body), (302, "text/plain", b"hi"),
         "parse_cgi_output: LF line ends, Location -> 302")
    out = harness.parse_cgi_output(b"Status: 503 Busy\r\nRetry-After: 1\r\n\r\n{\"a\":1}")
    t.eq((out.status, out.headers["retry-after"], out.json()), (503, "1", {"a": 1}),
         "parse_cgi_output: Status header, json()")
    t.eq(harness.parse_cgi_output(b"garbage").status, None, "parse_cgi_output: garbage -> None")


def der_from_raw(raw):
    def integer(b):
        b = b.lstrip(b"\0") or b"\0"
        if b[0] & 0x80:
            b = b"\0" + b
        return bytes([2, len(b)]) + b
    body = integer(raw[:32]) + integer(raw[32:])
    return bytes([0x30, len(body)]) + body


def run_child(code, builddir, timeout=60):
    env = dict(os.environ, BUILDDIR=builddir, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=os.path.dirname(__file__))


def test_tap_and_signals(t, builddir):
    here = os.path.dirname(os.path.abspath(__file__))
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {here!r})
        from harness import Tap
        t = Tap()
        t.ok(True, "one")
        with t.guard("section"):
            raise KeyError("inside")
        t.ok(True, "after")
        raise RuntimeError("top level")
    """)
    p = run_child(code, builddir)
    out, err = p.communicate(timeout=60)
    out = out.decode()
    t.ok("not ok 2 - section: uncaught KeyError" in out and "ok 3 - after" in out and
         "not ok 4 - uncaught RuntimeError: top level" in out and out.rstrip().endswith("1..4")
         and p.returncode != 0, "Tap: exceptions become failed tests and the plan still comes", out)

    code = textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {here!r})
        from harness import Tap, Stack
        t = Tap()
        with Stack() as st:
            print("TMP " + st.tmp, flush=True)
            time.sleep(120)
    """)
    p = run_child(code, builddir)
    tmp = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stdout.readline().decode()
        if not line:
            break
        if line.startswith("TMP "):
            tmp = line[4:].strip()
            break
    t.ok(tmp is not None, "child stack came up")
    p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    t.ok(p.returncode != 0 and b"1..1" in out and b"not ok 1" in out,
         "SIGTERM: the test fails with a plan", out + err)
    if tmp:
        t.ok(not os.path.exists(tmp), "SIGTERM: temp dir removed")
        t.eq(harness.processes_using(tmp), [], "SIGTERM: no process left")


def main():
    t = Tap()
    builddir = stub_builddir()
    try:
        t.run(test_helpers, t)
        t.run(test_main_stack, t, builddir)
        t.run(test_htaccess_stack, t, builddir)
        t.run(test_tap_and_signals, t, builddir)
    finally:
        shutil.rmtree(builddir, ignore_errors=True)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
