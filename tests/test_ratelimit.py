#!/usr/bin/env python3
"""Rate limits through the real Apache and PostgreSQL (TAP).

Settings of the stack: usage limited per caller (10 per 10 minutes) and not
per address (0: off); checkout limited per client address (5 per 10 minutes)
and not per caller; 127.0.0.1 is a trusted proxy.  The windows are long so
that no quota comes back while a test runs (one request every 60 s and 120 s).
A client bound to 127.0.0.2 is an untrusted peer.  Cases that need other
settings for one request run the program directly (st.cgi), and the clean-up
of expired rows is driven through one FastCGI process.
"""
import http.client
import json
import os
import re
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fcgi_client import FcgiProcess  # noqa: E402
from harness import (PASSTHROUGH_ENV, Resp, Stack, Tap, make_jwt, parallel,  # noqa: E402
                     stripe_signature)

CHECKOUT = "/api/stripe/create-checkout-session"
SETTINGS = {
    "RATE_LIMIT_USAGE": "10/10m",
    "RATE_LIMIT_USAGE_IP": "0",
    "RATE_LIMIT_CHECKOUT": "0",
    "RATE_LIMIT_CHECKOUT_IP": "5/600s",
    "TRUSTED_PROXIES": "127.0.0.1",
}
N = 30

t = Tap()


def auth(user):
    now = int(time.time())
    return {"Authorization": "Bearer " + make_jwt({"sub": user, "exp": now + 600, "iat": now})}


def order(user):
    return {"userId": user, "tier": "pro", "interval": "monthly",
            "successUrl": "https://app.example.test/ok", "cancelUrl": "https://app.example.test/no"}


def http_from(st, source, method, path, headers=None, body=b""):
    """One request through Apache from the loopback address `source`."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=60,
                                      source_address=(source, 0))
    try:
        h = dict(headers or {})
        if data or method == "POST":
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        pairs = r.getheaders()
        d = {}
        for k, v in pairs:
            d[k.lower()] = f"{d[k.lower()]}, {v}" if k.lower() in d else v
        return Resp(r.status, d, raw, pairs)
    finally:
        conn.close()


def statuses(rs):
    return dict(Counter(getattr(r, "status", type(r).__name__) for r in rs))


def limit_item(r, policy):
    """(r, t) of policy's item in the RateLimit header, or None."""
    m = re.search(r'"%s";r=(\d+);t=(\d+)' % re.escape(policy), r.headers.get("ratelimit", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def policies(r):
    return re.findall(r'"([a-z_]+)";q=', r.headers.get("ratelimit-policy", ""))


def error_code(r):
    return ((r.json() or {}).get("error") or {}).get("code")


def rows(st, pattern):
    return int(st.psql_one(f"SELECT count(*) FROM rate_limits WHERE key LIKE '{pattern}'"))


def test_caller_parallel(st):
    user = "rl-parallel"
    rs = parallel(N, lambda i: st.http("GET", f"/api/usage?userId={user}", headers=auth(user)))
    t.eq(statuses(rs), {200: 10, 429: N - 10},
         f"{N} parallel requests of one caller against 10/10m: exactly 10 pass")
    good = [r for r in rs if getattr(r, "status", 0) == 200]
    refused = [r for r in rs if getattr(r, "status", 0) == 429]
    t.eq(sorted(limit_item(r, "usage")[0] for r in good), list(range(10)),
         "each success says what remained after it: r = 9 .. 0, once each")
    t.ok(all(error_code(r) == "rate_limited" for r in refused), "every 429 is rate_limited")
    t.ok(all(limit_item(r, "usage") is not None and limit_item(r, "usage")[0] == 0 and
             r.headers.get("retry-after") == str(limit_item(r, "usage")[1]) and
             1 <= int(r.headers["retry-after"]) <= 60 for r in refused),
         "every 429: RateLimit r=0 and Retry-After = its t, 1..60 s",
         [(r.headers.get("ratelimit"), r.headers.get("retry-after")) for r in refused[:3]])
    t.ok(all(policies(r) == ["usage"] and
             r.headers.get("ratelimit-policy") == '"usage";q=10;w=600' for r in rs),
         "RateLimit-Policy: \"usage\";q=10;w=600 on every answer; none for the address "
         "(RATE_LIMIT_USAGE_IP=0)")
    t.eq(rows(st, "usage user:rl-parallel"), 1, "one row for the caller")
    t.eq(rows(st, "usage_ip %"), 0, "no row for a limit that is off")
    r = st.http("GET", "/api/usage?userId=rl-other", headers=auth("rl-other"))
    t.ok(r.status == 200 and limit_item(r, "usage") == (9, 60),
         "another caller from the same address: its own quota (r=9, t=60)", r.headers)
    # REMOTE_USER (Apache's authentication) and a JWT for the same id are one caller.
    r = st.cgi("usage", method="GET", query=f"userId={user}", env={"REMOTE_USER": user})
    t.ok(r.status == 429 and limit_item(r, "usage")[0] == 0,
         "the same user authenticated by Apache is the same caller: 429", r)


def test_headers(st):
    user = "rl-headers"
    r1 = st.http("GET", f"/api/usage?userId={user}", headers=auth(user))
    r2 = st.http("GET", f"/api/usage?userId={user}", headers=auth(user))
    t.ok(r1.headers.get("ratelimit") == '"usage";r=9;t=60' and
         r2.headers.get("ratelimit") == '"usage";r=8;t=60',
         'first answers: RateLimit "usage";r=9;t=60 then r=8 (one request back every 60 s)',
         (r1.headers.get("ratelimit"), r2.headers.get("ratelimit")))
    t.ok("retry-after" not in r1.headers, "no Retry-After under the limit")
    # The API key is one caller, whoever it acts for.
    key = {"Authorization": "Bearer " + st.settings["USAGE_API_KEY"]}
    a = st.http("GET", "/api/usage?userId=rl-k1", headers=key)
    b = st.http("GET", "/api/usage?userId=rl-k2", headers=key)
    t.ok(limit_item(a, "usage")[0] == 9 and limit_item(b, "usage")[0] == 8,
         "USAGE_API_KEY acting for two users is one caller (r=9 then 8)")
    t.eq(rows(st, "usage api-key"), 1, "... with one row")


def test_no_other_work(st):
    user = "rl-nowork"
    for _ in range(10):
        st.http("GET", f"/api/usage?userId={user}", headers=auth(user))
    r = st.http("POST", "/api/usage", headers=auth(user),
                body={"userId": user, "usageType": "pain_entry"})
    t.eq((r.status, error_code(r)), (429, "rate_limited"), "a POST over the caller's limit: 429")
    t.eq(st.psql_one(f"SELECT count(*) FROM usage_tracking WHERE user_id = '{user}'"), "0",
         "... and no usage was counted")
    # Checkout: the address limit is checked before the program does anything.
    xff = {"X-Forwarded-For": "198.51.100.77"}
    first = [st.http("POST", CHECKOUT, headers=xff, body=order("rl-buyer")) for _ in range(5)]
    t.eq([r.status for r in first], [401] * 5, "5 unauthenticated checkouts from one address: 401")
    before = len(st.stripe.requests())
    r = st.http("POST", CHECKOUT, headers=dict(xff, **auth("rl-buyer")), body=order("rl-buyer"))
    t.eq((r.status, error_code(r)), (429, "rate_limited"),
         "the 6th, a valid checkout: 429 (the limit comes before authentication)")
    t.eq(len(st.stripe.requests()), before, "... and Stripe was not called")
    t.eq(st.psql_one("SELECT count(*) FROM customers WHERE user_id = 'rl-buyer'"), "0",
         "... and nothing was stored")


def test_address_parallel(st):
    xff = {"X-Forwarded-For": "198.51.100.50"}
    rs = parallel(N, lambda i: st.http("POST", CHECKOUT, headers=xff, body=order("rl-anon")))
    t.eq(statuses(rs), {401: 5, 429: N - 5},
         f"{N} parallel checkouts from one client address against 5/600s: exactly 5 reach "
         "the program (401), the rest 429")
    t.ok(all(policies(r) == ["checkout_ip"] for r in rs if hasattr(r, "headers")),
         "only the address policy is announced (RATE_LIMIT_CHECKOUT=0: no caller limit)")
    t.eq(rows(st, "checkout %"), 0, "no row for the caller limit that is off")


def test_proxies(st):
    def checkout(headers, source="127.0.0.1"):
        return http_from(st, source, "POST", CHECKOUT, headers=headers, body=order("rl-p"))

    a = [checkout({"X-Forwarded-For": "198.51.100.1"}).status for _ in range(6)]
    t.eq(a, [401] * 5 + [429], "behind the trusted proxy: client 198.51.100.1 gets 5, then 429")
    r = checkout({"X-Forwarded-For": "198.51.100.2"})
    t.eq(r.status, 401, "client 198.51.100.2 behind the same proxy has its own quota")
    r = checkout({"X-Forwarded-For": "6.6.6.6, 198.51.100.1"})
    t.eq(r.status, 429, "a forged entry left of the real client changes nothing: 429")
    r = checkout({"X-Forwarded-For": "198.51.100.3, 127.0.0.1"})
    t.eq((r.status, limit_item(r, "checkout_ip")), (401, (4, 120)),
         "a trusted hop inside X-Forwarded-For is skipped: 198.51.100.3's own quota (r=4, t=120)")
    t.eq(rows(st, "checkout_ip 198.51.100.1"), 1, "the key is the client's address")
    t.eq(rows(st, "checkout_ip 6.6.6.6"), 0, "... never the forged one")
    # 127.0.0.2 is not in TRUSTED_PROXIES: its X-Forwarded-For is not believed.
    b = [checkout({"X-Forwarded-For": f"203.0.113.{i}"}, source="127.0.0.2").status
         for i in range(6)]
    t.eq(b, [401] * 5 + [429], "an untrusted peer claiming 6 different clients: 5, then 429")
    t.eq(rows(st, "checkout_ip 127.0.0.2"), 1, "... all counted to the peer's own address")
    t.eq(rows(st, "checkout_ip 203.0.113.%"), 0, "... none to the addresses it claimed")


def test_settings(st):
    user = "rl-parallel"  # exhausted by test_caller_parallel
    r = st.cgi("usage", method="GET", query=f"userId={user}", headers=auth(user),
               env={"RATE_LIMIT_USAGE": "0"})
    t.ok(r.status == 200 and "ratelimit" not in r.headers and "ratelimit-policy" not in r.headers,
         "RATE_LIMIT_USAGE=0: the exhausted caller passes, no RateLimit fields", r)
    r = st.cgi("usage", method="GET", query=f"userId={user}", headers=auth(user),
               env={"RATE_LIMIT_USAGE": "100000/10m"})
    t.ok(r.status == 200 and r.headers.get("ratelimit-policy") == '"usage";q=100000;w=600',
         "a raised limit applies at once (the state is a time, not a count)", r.headers)
    # A window the limit does not divide: T = 123,428.57 us.  Rounded down
    # and bounded by the window, 700,003 fitted in it (the first answer said
    # r=700002): 3 over the limit at once, and more every day after.
    r = st.cgi("usage", method="GET", query="userId=rl-odd", headers=auth("rl-odd"),
               env={"RATE_LIMIT_USAGE": "700000/24h"})
    t.ok(r.status == 200 and limit_item(r, "usage") == (699999, 1),
         "700000/24h, first request: r=699999 (the limit less this one), t=1", r.headers)
    # A shorter window than the one that filled the row: the policy in force
    # decides.  The state of 2/1h made every request wait out the hour
    # (Retry-After 1800, announced with w=2).
    hour = [st.cgi("usage", method="GET", query="userId=rl-short", headers=auth("rl-short"),
                   env={"RATE_LIMIT_USAGE": "2/1h"}) for _ in range(3)]
    t.ok([r.status for r in hour] == [200, 200, 429] and
         hour[2].headers.get("retry-after") == "1800",
         "2/1h: two pass, the third waits 1800 s", [r.headers for r in hour])
    r = st.cgi("usage", method="GET", query="userId=rl-short", headers=auth("rl-short"),
               env={"RATE_LIMIT_USAGE": "2/2s"})
    t.ok(r.status == 429 and r.headers.get("retry-after") == "1" and
         limit_item(r, "usage") == (0, 1),
         "changed to 2/2s: refused as a full burst of the new policy, Retry-After 1 (not 1800)",
         r.headers)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.status == 429:
        time.sleep(min(int(r.headers.get("retry-after", "1")), 10))
        r = st.cgi("usage", method="GET", query="userId=rl-short", headers=auth("rl-short"),
                   env={"RATE_LIMIT_USAGE": "2/2s"})
    t.eq(r.status, 200, "... and after that Retry-After, served")
    r = st.cgi("usage", method="GET", query="userId=rl-misc", headers=auth("rl-misc"),
               env={"RATE_LIMIT_USAGE": "ten a minute"})
    t.ok(r.status == 500 and error_code(r) == "misconfigured" and
         "RATE_LIMIT_USAGE" in r.stderr and "ten a minute" not in r.stderr,
         "a malformed setting: 500 misconfigured, the setting named, its value not logged", r)
    r = st.cgi("usage", method="GET", query="userId=rl-default", headers=auth("rl-default"),
               env={"RATE_LIMIT_USAGE": None, "RATE_LIMIT_USAGE_IP": None})
    t.eq(policies(r), ["usage_ip", "usage"], "unset: the defaults apply, address then caller")
    t.ok('"usage";q=600;w=60' in r.headers.get("ratelimit-policy", "") and
         '"usage_ip";q=1200;w=60' in r.headers.get("ratelimit-policy", ""),
         "defaults: usage 600/60s per caller, 1200/60s per address", r.headers)


def test_webhook_unlimited(st):
    body = b'{"id":"evt_rl","object":"event","type":"ping.test","created":1,"data":{"object":{}}}'
    rs = [st.http("POST", "/api/stripe/webhook", body=body,
                  headers={"Stripe-Signature": stripe_signature("wrong", body)})
          for _ in range(8)]
    t.ok(all(r.status == 400 and "ratelimit" not in r.headers for r in rs),
         "the webhook is never rate limited: 8 bad deliveries, 8 x 400, no RateLimit fields")
    r = st.cgi("webhook", body=body, env={"RATE_LIMIT_WEBHOOK_IP": "1/10m"},
               headers={"Stripe-Signature": stripe_signature("wrong", body)})
    t.ok(r.status == 400 and "ratelimit" not in r.headers,
         "... not even with a RATE_LIMIT_WEBHOOK_IP setting", r)


def test_fail_open(st):
    st.psql("ALTER TABLE rate_limits RENAME TO rate_limits_away")
    try:
        r = st.cgi("usage", method="GET", query="userId=rl-open", headers=auth("rl-open"))
        t.ok(r.status == 200 and "ratelimit" not in r.headers and "not checked" in r.stderr,
             "the limiter's table unusable: the request is served, logged, without headers", r)
    finally:
        st.psql("ALTER TABLE rate_limits_away RENAME TO rate_limits")


def test_prune(st):
    """Expired rows go without a cron job: one check in 256 deletes 1000 of them."""
    st.psql("DELETE FROM rate_limits")  # only the rows below are expired, whatever ran before
    st.psql("INSERT INTO rate_limits (key, tat, allowed) SELECT 'old ' || g, "
            "now() - interval '1 hour', true FROM generate_series(1, 3000) g")
    prog = os.path.join(st.cgi_bin, "create-checkout-session.cgi")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)})
    env.update(st.settings)
    params = st.cgi_env("create-checkout-session", "POST", b"{}")
    for k in list(st.settings) + ["PATH"] + list(PASSTHROUGH_ENV):
        params.pop(k, None)
    params["HTTP_X_FORWARDED_FOR"] = "198.51.100.99"
    proc = FcgiProcess(prog, env)
    sent, left = 0, 3000
    try:
        # (255/256)^5000 ~ 3e-9: the loop ends long before, or the clean-up is broken.
        while sent < 5000 and left == 3000:
            for _ in range(50):
                proc.request(params, b"{}")
            sent += 50
            left = int(st.psql_one("SELECT count(*) FROM rate_limits WHERE key LIKE 'old %'"))
    finally:
        proc.cleanup()
    t.ok(left < 3000 and (3000 - left) % 1000 == 0,
         f"expired rows deleted in batches of 1000 after {sent} checks ({3000 - left} gone)")
    t.eq(rows(st, "checkout_ip 198.51.100.99"), 1, "... and the live row is kept")
    st.psql("DELETE FROM rate_limits WHERE key LIKE 'old %'")


def main():
    with t.guard("rate limits"), Stack(SETTINGS) as st:
        t.run(test_caller_parallel, st)
        t.run(test_headers, st)
        t.run(test_no_other_work, st)
        t.run(test_address_parallel, st)
        t.run(test_proxies, st)
        t.run(test_settings, st)
        t.run(test_webhook_unlimited, st)
        t.run(test_fail_open, st)
        t.run(test_prune, st)
        t.ok(st.psql_one("SELECT relpersistence FROM pg_class WHERE relname = 'rate_limits'") == "u",
             "rate_limits is UNLOGGED")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
