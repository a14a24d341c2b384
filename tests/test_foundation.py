#!/usr/bin/env python3
"""The foundation through the real programs: request limits (411/400/413,
short reads), 405 with Allow, 415, the error shape, X-Request-Id and the
one log line per request, settings from the environment and from a
BILLING_CONFIG file, misconfiguration, database down, the 1 MiB limit in
Apache, unmapped URLs, the shared-hosting .htaccess layout, and that no
secret reaches a response or the error log."""

import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_SETTINGS, Stack, Tap, make_jwt  # noqa: E402

t = Tap()
API_KEY = DEFAULT_SETTINGS["USAGE_API_KEY"]
SECRETS = [DEFAULT_SETTINGS[k] for k in
           ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "AUTH_JWT_SECRET", "USAGE_API_KEY")]
LOG_LINE = re.compile(r"^billing-cgi (\S+) rid=([0-9a-f]{16}) status=(\d+) ms=(\d+)")


def auth_for(name):
    """Credentials that get each endpoint past authentication to the body."""
    if name == "usage":
        return {"Authorization": "Bearer " + API_KEY}
    if name == "create-checkout-session":
        token = make_jwt({"sub": "42", "exp": int(time.time()) + 600})
        return {"Authorization": "Bearer " + token}
    return {}


def is_error(r, status, code):
    body = r.json() or {}
    err = body.get("error") if isinstance(body, dict) else None
    return (r.status == status and isinstance(err, dict) and err.get("code") == code
            and isinstance(err.get("message"), str) and err["message"] != "")


def summary_lines(stderr):
    return [m for m in (LOG_LINE.match(l) for l in stderr.splitlines()) if m]


def check_request_limits(st):
    """Every endpoint reading a body applies the same limits before its own logic."""
    for name in ("webhook", "create-checkout-session", "usage"):
        h = auth_for(name)
        r = st.cgi(name, "POST", body=b'{"a":1}', headers=h, env={"CONTENT_LENGTH": None})
        t.ok(is_error(r, 411, "length_required"), f"{name}: no CONTENT_LENGTH -> 411",
             r.text)
        for bad in ("abc", "-1", "+7", " 7", "7 ", "0x7", "99999999999999999999999"):
            r = st.cgi(name, "POST", body=b'{"a":1}', headers=h, env={"CONTENT_LENGTH": bad})
            t.ok(is_error(r, 400, "bad_request"), f"{name}: CONTENT_LENGTH {bad!r} -> 400",
                 r.text)
        r = st.cgi(name, "POST", body=b'{"a":1}', headers=h, env={"CONTENT_LENGTH": "50"})
        t.ok(is_error(r, 400, "bad_request"), f"{name}: short body -> 400, no hang", r.text)
        big = b'{"pad":"' + b"x" * 200 + b'"}'
        r = st.cgi(name, "POST", body=big, headers=h, env={"BILLING_MAX_BODY": "100"})
        t.ok(is_error(r, 413, "payload_too_large"), f"{name}: body over BILLING_MAX_BODY -> 413",
             r.text)
        r = st.cgi(name, "POST", body=b"{}", headers=h,
                   env={"BILLING_MAX_BODY": "100", "CONTENT_LENGTH": "5000000000"})
        t.ok(is_error(r, 413, "payload_too_large"),
             f"{name}: huge CONTENT_LENGTH refused before reading", r.text)
        r = st.cgi(name, "PUT", body=b"{}", headers=h)
        t.ok(is_error(r, 405, "method_not_allowed") and "POST" in r.headers.get("allow", ""),
             f"{name}: PUT -> 405 with Allow", f"{r.status} {r.headers}")
    for name in ("create-checkout-session", "usage"):
        h = dict(auth_for(name), **{"Content-Type": "text/plain"})
        r = st.cgi(name, "POST", body=b'{"a":1}', headers=h)
        t.ok(is_error(r, 415, "unsupported_media_type"), f"{name}: text/plain -> 415", r.text)


def check_request_id_and_log(st):
    for name in ("webhook", "create-checkout-session", "usage"):
        r = st.cgi(name, "DELETE")
        rid = r.headers.get("x-request-id", "")
        lines = summary_lines(r.stderr)
        t.ok(re.fullmatch(r"[0-9a-f]{16}", rid) is not None, f"{name}: X-Request-Id header", rid)
        t.ok(len(lines) == 1, f"{name}: exactly one summary log line", r.stderr)
        if lines:
            m = lines[0]
            t.ok(m.group(1) == name and m.group(2) == rid and m.group(3) == str(r.status),
                 f"{name}: log line names endpoint, request id and status", r.stderr)
        t.eq(r.headers.get("content-type"), "application/json", f"{name}: errors are JSON")
    r1 = st.cgi("usage", "DELETE")
    r2 = st.cgi("usage", "DELETE")
    t.ok(r1.headers.get("x-request-id") != r2.headers.get("x-request-id"),
         "request ids differ between requests")


def check_settings(st):
    q = "userId=u-config"
    h = {"Authorization": "Bearer " + API_KEY}
    r = st.cgi("usage", "GET", query=q, headers=h, env={"DATABASE_URL": None})
    t.ok(is_error(r, 500, "misconfigured"), "DATABASE_URL unset -> 500 misconfigured", r.text)
    t.ok("DATABASE_URL" in r.stderr, "the log names the missing setting", r.stderr)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "billing.conf")
        with open(path, "w") as f:
            f.write("# settings for shared hosting\n")
            f.write(f"DATABASE_URL={st.database_url}\n")
            f.write(f'USAGE_API_KEY="{API_KEY}"\n')
        env = {"DATABASE_URL": None, "USAGE_API_KEY": None, "BILLING_CONFIG": path}
        r = st.cgi("usage", "GET", query=q, headers=h, env=env)
        t.eq(r.status, 200, "settings read from the BILLING_CONFIG file")
        env["USAGE_API_KEY"] = "another-key-from-the-environment-0123"
        r = st.cgi("usage", "GET", query=q, headers=h, env=env)
        t.eq(r.status, 401, "the environment wins over the file")
        with open(path, "a") as f:
            f.write("this line is not a setting\n")
        r = st.cgi("usage", "GET", query=q, headers=h, env=env)
        t.ok(is_error(r, 500, "misconfigured"), "malformed BILLING_CONFIG -> 500 misconfigured",
             r.text)
        t.ok(st.database_url not in r.stderr and API_KEY not in r.stderr,
             "the log never quotes a value from the file", r.stderr)
        r = st.cgi("usage", "GET", query=q, headers=h,
                   env={"BILLING_CONFIG": os.path.join(d, "absent.conf")})
        t.ok(is_error(r, 500, "misconfigured"), "missing BILLING_CONFIG file -> 500", r.text)
    r = st.cgi("usage", "POST", body=b"{}", headers=h, env={"BILLING_MAX_BODY": "lots"})
    t.ok(is_error(r, 500, "misconfigured"), "malformed BILLING_MAX_BODY -> 500 misconfigured",
         r.text)


def check_database_down(st):
    h = {"Authorization": "Bearer " + API_KEY}
    st.pg_stop()
    try:
        r = st.cgi("usage", "GET", query="userId=u-down", headers=h)
        t.ok(is_error(r, 503, "unavailable"), "database down -> 503 unavailable", r.text)
        t.ok("retry-after" in r.headers, "503 carries Retry-After", str(r.headers))
        t.ok("postgres" not in r.text.lower() and "socket" not in r.text.lower(),
             "no connection detail in the response", r.text)
        t.ok(st.database_url not in r.stderr, "no connection string in the log", r.stderr)
    finally:
        st.pg_start()
    r = st.cgi("usage", "GET", query="userId=u-down", headers=h)
    t.eq(r.status, 200, "answers again once the database is back")


def check_apache(st):
    origin = {"Origin": "https://app.example.test"}
    r = st.http("POST", "/api/usage", headers={"Authorization": "Bearer " + API_KEY, **origin},
                body=b"x" * (1024 * 1024 + 1))
    if st.apache_mode in ("fcgid", "proxy_fcgi"):
        # Its error document cannot run there (it would read the body again):
        # the status is right, the page is Apache's (apache/billing-fcgid.conf,
        # apache/billing-proxy-fcgi.conf).
        t.eq(r.status, 413, "Apache refuses a body over 1 MiB before starting a program")
    else:
        t.ok(is_error(r, 413, "payload_too_large") and
             r.headers.get("content-type") == "application/json",
             "Apache refuses a body over 1 MiB before starting a program, as JSON",
             f"{r.status} {r.headers.get('content-type')} {r.text[:200]}")
        t.eq(r.headers.get("access-control-allow-origin"), "https://app.example.test",
             "Apache's own 413 carries the CORS headers")
    r = st.http("GET", "/api/nothing", headers=origin)
    t.ok(is_error(r, 404, "not_found") and r.headers.get("content-type") == "application/json",
         "unmapped URL under /api/ -> 404 as JSON", f"{r.status} {r.text[:200]}")
    t.eq(r.headers.get("access-control-allow-origin"), "https://app.example.test",
         "the 404 carries the CORS headers")
    r = st.http("POST", "/api/nothing", headers=dict(origin, **{"Content-Type": "application/json"}),
                body=b'{"a": 1}')
    t.ok(is_error(r, 404, "not_found"), "a POST with a body to an unmapped URL -> 404 as JSON",
         f"{r.status} {r.text[:200]}")
    r = st.http("GET", "/api/_error")
    t.ok(is_error(r, 404, "not_found"), "the error program asked directly -> 404", r.text[:200])
    # TRACE would echo the credentials back; Apache answers it before any
    # program sees it, so the snippet switches it off (TraceEnable Off).
    for path, cred in (("/api/usage", "Bearer " + API_KEY), ("/admin/", "Basic b3BlcmF0b3I6cHc=")):
        r = st.http("TRACE", path, headers={"Authorization": cred})
        # Behind mod_proxy_fcgi, mod_proxy refuses TRACE after the console's
        # authentication, which answers 401 first.
        want = (401, 405) if st.apache_mode == "proxy_fcgi" and path == "/admin/" else (405,)
        t.ok(r.status in want and cred.encode() not in r.body,
             f"TRACE {path} -> {' or '.join(map(str, want))}, the credentials not echoed",
             f"{r.status} {r.text[:200]}")
    r = st.http("GET", "/elsewhere/nothing")
    t.ok(r.status == 404 and "json" not in r.headers.get("content-type", ""),
         "outside /api/ Apache's own 404 stays (the snippet does not take over the site)")
    r = st.http("GET", "/api/usage?userId=42", headers={"Authorization": "Bearer " + API_KEY})
    t.eq(r.status, 200, "GET /api/usage through Apache reaches usage.cgi")
    t.ok(re.fullmatch(r"[0-9a-f]{16}", r.headers.get("x-request-id", "")) is not None,
         "X-Request-Id through Apache")
    r = st.http("POST", "/api/stripe/webhook", body=b'{"id":"evt_1"}')
    t.ok(is_error(r, 400, "signature_missing"), "POST /api/stripe/webhook reaches webhook.cgi",
         r.text)
    r = st.http("POST", "/api/stripe/create-checkout-session", body=b"{}")
    t.ok(is_error(r, 401, "unauthorized") and "www-authenticate" in r.headers,
         "POST /api/stripe/create-checkout-session reaches its program (401 + WWW-Authenticate)",
         r.text)
    log = st.error_log()
    t.ok(re.search(r"billing-cgi usage rid=[0-9a-f]{16} status=200 ms=\d+", log) is not None,
         "the programs' log lines reach Apache's error log" if st.apache_mode != "proxy_fcgi"
         else "the programs' log lines reach their spawner's log")
    t.ok(not any(s in log for s in SECRETS), "no secret in Apache's error log")
    # The error document runs with the POST's CONTENT_LENGTH but without its body.
    t.eq(re.findall(r"billing-cgi error rid=\S+ (?!status=)[^\n]*", log), [],
         "error.cgi answered those errors without a complaint about a body")


def check_error_program(st):
    """error.cgi gives each status Apache hands it the programs' shape."""
    codes = {"400": "bad_request", "401": "unauthorized", "403": "forbidden", "404": "not_found",
             "405": "method_not_allowed", "411": "length_required", "413": "payload_too_large",
             "500": "internal_error", "502": "bad_gateway", "503": "unavailable",
             "504": "timeout"}
    for status, code in codes.items():
        r = st.cgi("error", "GET", env={"REDIRECT_STATUS": status})
        t.ok(is_error(r, int(status), code), f"error.cgi: Apache's {status} -> {status} {code}",
             f"{r.status} {r.text[:200]}")
    r = st.cgi("error", "GET", env={"REDIRECT_STATUS": "418"})
    t.ok(is_error(r, 500, "internal_error"), "error.cgi: a status it does not know -> 500", r.text)


def check_htaccess():
    with Stack(htaccess=True) as st:
        h = {"Authorization": "Bearer " + API_KEY}
        r = st.http("GET", "/api/usage?userId=42", headers=h)
        t.eq(r.status, 200, "htaccess layout: /api/usage with Authorization (CGIPassAuth)")
        r = st.http("POST", "/api/stripe/webhook", body=b'{"id":"evt_1"}')
        t.ok(is_error(r, 400, "signature_missing"), "htaccess layout: webhook mapped", r.text)
        r = st.http("OPTIONS", "/api/stripe/create-checkout-session",
                    headers={"Origin": "https://app.example.test",
                             "Access-Control-Request-Method": "POST"})
        t.eq(r.status, 204, "htaccess layout: checkout preflight answered")
        r = st.http("GET", "/api/nothing", headers={"Origin": "https://app.example.test"})
        t.ok(is_error(r, 404, "not_found") and
             r.headers.get("access-control-allow-origin") == "https://app.example.test",
             "htaccess layout: unmapped URL under /api/ -> 404 as JSON with CORS",
             f"{r.status} {r.text[:200]}")
        # The body cap: 1 MiB under CGI; under mod_fcgid its FcgidMaxRequestLen
        # (128 KiB by default, and the harness leaves it so, as a host would).
        cap = 131072 if st.apache_mode == "fcgid" else 1024 * 1024
        r = st.http("POST", "/api/usage", headers=h, body=b"x" * (cap + 1))
        t.ok(r.status == 413 if st.apache_mode == "fcgid" else is_error(r, 413, "payload_too_large"),
             "htaccess layout: Apache's 413" + ("" if st.apache_mode == "fcgid" else " as JSON"),
             f"{r.status} {r.text[:200]}")
        r = st.http("POST", "/api/usage", headers=h, body=b"x" * cap)
        t.ok(is_error(r, 400, "invalid_json"), f"htaccess layout: a {cap}-byte body reaches the program",
             f"{r.status} {r.text[:200]}")
        r = st.http("GET", "/cgi-bin/error.cgi")
        t.ok(r.status in (403, 404), "htaccess layout: programs not reachable by their file names",
             str(r.status))


def main():
    with Stack() as st:
        for fn in (check_request_limits, check_request_id_and_log, check_settings,
                   check_database_down, check_apache, check_error_program):
            with t.guard(fn.__name__):
                fn(st)
    # The .htaccess pair is plain CGI or mod_fcgid; a host that offers
    # neither offers no spawners either (apache/billing-proxy-fcgi.conf).
    if os.environ.get("BILLING_TEST_APACHE") != "proxy_fcgi":
        with t.guard("check_htaccess"):
            check_htaccess()
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
