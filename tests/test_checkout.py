#!/usr/bin/env python3
"""create-checkout-session.cgi through the real Apache, PostgreSQL and the fake Stripe (TAP).

Most requests go through Apache (st.http); cases that need other settings
for one request (public-key JWTs, trial days, a broken DATABASE_URL) run
the CGI directly with an overriding environment (st.cgi).
"""
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, gen_keys, make_jwt  # noqa: E402

PATH = "/api/stripe/create-checkout-session"
SECRET_KEY = "sk_test_harness"
OK_URL = "https://app.example.test/billing/ok?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://app.example.test/billing/cancel"
PRICES = {("basic", "monthly"): "price_basic_monthly", ("basic", "yearly"): "price_basic_yearly",
          ("pro", "monthly"): "price_pro_monthly", ("pro", "yearly"): "price_pro_yearly"}
TRIALS = {"basic": "14", "pro": "30"}

t = Tap()


def token(sub, **extra):
    claims = {"sub": sub, "exp": int(time.time()) + 600, "iat": int(time.time())}
    claims.update(extra)
    return make_jwt(claims)


def order(user, tier="pro", interval="monthly", **over):
    body = {"userId": user, "tier": tier, "interval": interval, "successUrl": OK_URL,
            "cancelUrl": CANCEL_URL}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def post(st, user, body=None, headers=None, tok=None):
    h = {"Authorization": "Bearer " + (tok or token(user))}
    h.update(headers or {})
    return st.http("POST", PATH, headers=h, body=order(user) if body is None else body)


def api_calls(st, path=None):
    return [r for r in st.stripe.requests() if path is None or r["path"] == path]


def error_code(r):
    j = r.json() or {}
    return (j.get("error") or {}).get("code")


def expect_error(r, status, code, name, field=None):
    ok = r.status == status and error_code(r) == code
    if field is not None:
        # The field is named the way usage names it: "field" and "<field> <why>."
        err = r.json()["error"]
        msg = err.get("message") or ""
        ok = ok and err.get("field") == field and msg.startswith(field + " ") and \
            msg.endswith(".") and len(msg) > len(field) + 2
    t.ok(ok, name, f"got {r.status} {r.body[:300]!r}")


def expected_params(user, tier, interval, customer, trial):
    meta = {"userId": user, "tier": tier, "interval": interval}
    sub = {"metadata": dict(meta)}
    if trial:
        sub["trial_period_days"] = trial
    return {"mode": "subscription",
            "line_items": [{"price": PRICES[(tier, interval)], "quantity": "1"}],
            "success_url": OK_URL, "cancel_url": CANCEL_URL, "customer": customer,
            "client_reference_id": user, "metadata": meta, "subscription_data": sub,
            "allow_promotion_codes": "true", "billing_address_collection": "required"}


def test_success_matrix(st):
    for (tier, interval) in PRICES:
        st.stripe.reset()
        user = f"user-{tier}-{interval}"
        r = post(st, user, order(user, tier, interval, email=f"{user}@example.test"))
        j = r.json() or {}
        t.ok(r.status == 200 and j.get("sessionId", "").startswith("cs_") and
             j.get("url", "").startswith("https://checkout.stripe.com/"),
             f"{tier}/{interval}: 200 with sessionId and url", repr(r))
        cus = api_calls(st, "/v1/customers")
        ses = api_calls(st, "/v1/checkout/sessions")
        t.ok(len(cus) == 1 and cus[0]["status"] == 200 and
             cus[0]["params"] == {"email": f"{user}@example.test", "metadata": {"userId": user}},
             f"{tier}/{interval}: one customer created with email and metadata[userId]",
             repr(cus))
        if len(ses) != 1 or not cus:
            t.ok(False, f"{tier}/{interval}: one checkout session request", repr(ses))
            continue
        s = ses[0]
        customer = cus[0]["response"]["id"]
        t.eq(s["params"], expected_params(user, tier, interval, customer, TRIALS[tier]),
             f"{tier}/{interval}: exact session parameters (trial {TRIALS[tier]} days)")
        t.eq(s["status"], 200, f"{tier}/{interval}: the fake accepted every parameter")
        h = s["headers"]
        t.ok(h.get("authorization") == "Bearer " + SECRET_KEY and
             h.get("stripe-version") == "2026-07-29.dahlia" and
             h.get("content-type") == "application/x-www-form-urlencoded" and
             len(h.get("idempotency-key", "")) > 10 and
             cus[0]["headers"].get("idempotency-key", "").startswith("customer-"),
             f"{tier}/{interval}: Authorization, Stripe-Version, Content-Type, Idempotency-Key",
             repr(h))
        t.eq(j.get("sessionId"), s["response"]["id"], f"{tier}/{interval}: sessionId is Stripe's")
        t.eq(st.psql_one(f"SELECT stripe_customer_id FROM customers WHERE user_id = '{user}'"),
             customer, f"{tier}/{interval}: customer stored")


def test_trial_zero(st):
    st.stripe.reset()
    user = "user-notrial"
    r = st.cgi("create-checkout-session", "POST", order(user, "basic"),
               env={"STRIPE_TRIAL_DAYS_BASIC": "0"},
               headers={"Authorization": "Bearer " + token(user)})
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r.status == 200 and len(ses) == 1 and
         "trial_period_days" not in ses[0]["params"]["subscription_data"] and
         ses[0]["params"]["subscription_data"]["metadata"]["tier"] == "basic",
         "STRIPE_TRIAL_DAYS_BASIC=0: no trial_period_days sent", repr(ses))
    r = st.cgi("create-checkout-session", "POST", order(user, "pro"),
               env={"STRIPE_TRIAL_DAYS_PRO": "7"},
               headers={"Authorization": "Bearer " + token(user)})
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r.status == 200 and ses[-1]["params"]["subscription_data"]["trial_period_days"] == "7",
         "STRIPE_TRIAL_DAYS_PRO=7 is sent", repr(r))
    r = st.cgi("create-checkout-session", "POST", order(user, "pro"),
               env={"STRIPE_PRICE_PRO_MONTHLY": None},
               headers={"Authorization": "Bearer " + token(user)})
    expect_error(r, 500, "misconfigured", "missing price setting: 500 misconfigured")


def test_customer_reused(st):
    st.stripe.reset()
    user = "user-reuse"
    r1 = post(st, user, order(user, email="reuse@example.test"))
    r2 = post(st, user, order(user, "basic", "yearly"))
    cus = api_calls(st, "/v1/customers")
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r1.status == 200 and r2.status == 200, "two checkouts succeed")
    t.eq(len(cus), 1, "customer created once")
    t.ok(len(ses) == 2 and ses[0]["params"]["customer"] == ses[1]["params"]["customer"] ==
         cus[0]["response"]["id"] and "customer_email" not in ses[1]["params"],
         "both sessions pass the same customer, never customer_email", repr(ses))
    t.ok(ses[0]["headers"]["idempotency-key"] != ses[1]["headers"]["idempotency-key"],
         "without a client Idempotency-Key each checkout gets its own key")
    t.eq(st.psql_one(f"SELECT count(*) FROM customers WHERE user_id = '{user}'"), "1",
         "one customers row")

    # A customer created in Stripe but never stored (the database failed
    # after the call) is found by its metadata.userId, whatever the email
    # (tests/test_checkout_sessions.py has the whole story).
    st.psql(f"DELETE FROM customers WHERE user_id = '{user}'")
    r = post(st, user, order(user, email="other@example.test"))
    t.eq(r.status, 200, "unstored customer, other email: found again, 200")
    t.eq(len(st.stripe.call("GET", "/_fake/objects")["customers"]), 1,
         "still one Stripe customer")


def test_concurrent_first_checkouts(st):
    st.stripe.reset()
    user = "user-race"
    results = []

    def one():
        results.append(post(st, user).status)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.eq(sorted(results), [200] * 4, "four concurrent first checkouts all succeed")
    t.eq(len(st.stripe.call("GET", "/_fake/objects")["customers"]), 1,
         "one customer: the Idempotency-Key over the same body makes one of four calls")
    t.eq(len(st.stripe.call("GET", "/_fake/objects")["checkout_sessions"]), 1,
         "and one session, which all four get")


def test_client_idempotency(st):
    st.stripe.reset()
    user = "user-idem"
    h = {"Idempotency-Key": "client-key-1"}
    r1 = post(st, user, headers=h)
    st.psql(f"UPDATE checkout_sessions SET status = 'creating' WHERE user_id = '{user}'")
    r2 = post(st, user, headers=h)
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r1.status == 200 and r2.status == 200 and
         r1.json()["sessionId"] == r2.json()["sessionId"] and len(ses) == 2 and
         ses[0]["idempotency_key"] == ses[1]["idempotency_key"] and ses[1]["replayed"],
         "same client Idempotency-Key, answer lost: same Stripe key, replayed session",
         repr(ses))
    other = "user-idem-2"
    post(st, other, headers=h)
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(ses[-1]["idempotency_key"] != ses[0]["idempotency_key"],
         "the client key is scoped to the user")
    r = post(st, user, headers={"Idempotency-Key": "x" * 256})
    expect_error(r, 400, "invalid_field", "Idempotency-Key over 255 characters: 400",
                 "Idempotency-Key")
    before = len(st.stripe.call("GET", "/_fake/objects")["checkout_sessions"])
    r = post(st, user, headers=h, body=order(user, tier="basic"))
    expect_error(r, 409, "conflict", "same client Idempotency-Key, other order: 409 conflict")
    t.ok("Idempotency-Key" in ((r.json() or {}).get("error") or {}).get("message", ""),
         "the 409 says the key was used for another request", r.text)
    t.eq(len(st.stripe.call("GET", "/_fake/objects")["checkout_sessions"]), before,
         "the conflicting order created no session")


def test_already_subscribed(st):
    st.stripe.reset()
    for i, status in enumerate(("active", "trialing", "past_due")):
        user = f"user-subscribed-{i}"
        st.psql("INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status) "
                f"VALUES ('{user}', 'sub_test_{i}', 'pro', '{status}')")
        r = post(st, user)
        expect_error(r, 409, "already_subscribed", f"{status} subscription: 409 already_subscribed")
    t.eq(api_calls(st), [], "no Stripe call for an already subscribed user")
    user = "user-canceled"
    st.psql("INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status) "
            f"VALUES ('{user}', 'sub_test_c', 'pro', 'canceled')")
    t.eq(post(st, user).status, 200, "a canceled subscription does not block a new checkout")


def test_auth(st, keys):
    st.stripe.reset()
    user = "user-auth"
    r = st.http("POST", PATH, body=order(user))
    expect_error(r, 401, "unauthorized", "no credentials: 401")
    t.ok(r.headers.get("www-authenticate", "").startswith('Bearer realm="billing"'),
         "401 carries WWW-Authenticate: Bearer", repr(r.headers))
    r = post(st, user, tok=make_jwt({"sub": user, "exp": int(time.time()) + 600},
                                    secret="wrong-secret-0123456789abcdef0123456789"))
    expect_error(r, 401, "unauthorized", "bad signature: 401")
    t.ok('error="invalid_token"' in r.headers.get("www-authenticate", ""),
         "bad token: error=\"invalid_token\"", repr(r.headers))
    r = post(st, user, tok=token(user, exp=int(time.time()) - 3600))
    expect_error(r, 401, "unauthorized", "expired token: 401")
    r = post(st, user, tok=make_jwt({"sub": user}))
    expect_error(r, 401, "unauthorized", "token without exp: 401")
    r = post(st, user, tok=make_jwt({"sub": user, "exp": int(time.time()) + 600}, alg="none"))
    expect_error(r, 401, "unauthorized", "alg none: 401")
    r = post(st, user, tok=token("someone-else"))
    expect_error(r, 403, "forbidden", "token for another user: 403")
    r = post(st, user, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    expect_error(r, 401, "unauthorized", "Basic credentials: 401")
    r = post(st, user, tok="usage-test-key-0123456789abcdef")
    expect_error(r, 401, "unauthorized", "the usage API key is not accepted here")
    r = post(st, user, tok=make_jwt({"sub": user, "exp": int(time.time()) + 600}, alg="RS256",
                                    key_file=keys["rsa_private"]))
    expect_error(r, 401, "unauthorized", "RS256 token while only HS256 is configured: 401")
    t.eq(api_calls(st), [], "no Stripe call for refused callers")

    def cgi(tok, key_file, body=None):
        return st.cgi("create-checkout-session", "POST", body or order(user),
                      env={"AUTH_JWT_SECRET": None, "AUTH_JWT_PUBLIC_KEY_FILE": key_file},
                      headers={"Authorization": "Bearer " + tok})

    claims = {"sub": user, "exp": int(time.time()) + 600}
    r = cgi(make_jwt(claims, alg="RS256", key_file=keys["rsa_private"]), keys["rsa_public"])
    t.eq(r.status, 200, "RS256 token with AUTH_JWT_PUBLIC_KEY_FILE: 200")
    r = cgi(make_jwt(claims, alg="ES256", key_file=keys["ec_private"]), keys["ec_public"])
    t.eq(r.status, 200, "ES256 token with an EC P-256 key: 200")
    with open(keys["rsa_public"], "rb") as f:
        pem = f.read()
    r = cgi(make_jwt(claims, secret=pem), keys["rsa_public"])
    expect_error(r, 401, "unauthorized", "HS256 signed with the RSA public key (confusion): 401")
    r = cgi(make_jwt(claims, alg="ES256", key_file=keys["ec_private"]), keys["rsa_public"])
    expect_error(r, 401, "unauthorized", "ES256 token against an RSA key: 401")
    r = cgi(make_jwt(claims, alg="RS256", key_file=keys["rsa_private"]), "/nonexistent.pem")
    expect_error(r, 500, "misconfigured", "unreadable key file: 500 misconfigured")
    r = st.cgi("create-checkout-session", "POST", order(user),
               env={"AUTH_JWT_SECRET": None, "USAGE_API_KEY": None},
               headers={"Authorization": "Bearer " + token(user)})
    expect_error(r, 500, "misconfigured", "no authentication method configured: 500")
    r = st.cgi("create-checkout-session", "POST", order(user),
               env={"AUTH_JWT_SECRET": None, "REMOTE_USER": user})
    t.eq(r.status, 200, "REMOTE_USER set by Apache: 200 without a token")
    r = st.cgi("create-checkout-session", "POST", order(user),
               env={"REMOTE_USER": "other-user"},
               headers={"Authorization": "Bearer " + token(user)})
    expect_error(r, 403, "forbidden", "REMOTE_USER wins over a token: 403 for another userId")


def test_validation(st):
    st.stripe.reset()
    user = "user-valid"
    r = post(st, user, body=b'{"userId": "user-valid", ')
    expect_error(r, 400, "invalid_json", "truncated JSON: 400 invalid_json")
    r = post(st, user, body=b'["user-valid"]')
    expect_error(r, 400, "invalid_json", "JSON array: 400 invalid_json")
    cases = [
        ("userId", order(user, userId=None), "missing userId"),
        ("userId", order(user, userId=""), "empty userId"),
        ("userId", order(user, userId="u" * 129), "129-character userId"),
        ("userId", order(user, userId=42), "numeric userId"),
        ("tier", order(user, tier="gold"), "unknown tier"),
        ("tier", order(user, tier="enterprise"), "tier enterprise not sold here"),
        ("tier", order(user, tier=None), "missing tier"),
        ("interval", order(user, interval="weekly"), "unknown interval"),
        ("interval", order(user, interval="month"), "Stripe's 'month' is not our vocabulary"),
        ("successUrl", order(user, successUrl=None), "missing successUrl"),
        ("successUrl", order(user, successUrl="https://evil.example/ok"), "successUrl host not allowed"),
        ("successUrl", order(user, successUrl="https://app.example.test.evil.example/"),
         "successUrl host with an allowed prefix"),
        ("successUrl", order(user, successUrl="https://app.example.test@evil.example/"),
         "successUrl with userinfo"),
        ("successUrl", order(user, successUrl="https://evil.example\\@app.example.test/"),
         "successUrl with a backslash"),
        ("successUrl", order(user, successUrl="javascript:alert(1)//app.example.test"),
         "javascript: successUrl"),
        ("successUrl", order(user, successUrl="//app.example.test/ok"), "scheme-relative successUrl"),
        ("successUrl", order(user, successUrl="/ok"), "relative successUrl"),
        ("successUrl", order(user, successUrl="ftp://app.example.test/ok"), "ftp successUrl"),
        ("successUrl", order(user, successUrl="https://app.example.test:99999/"), "bad port"),
        ("successUrl", order(user, successUrl="https://app.example.test/" + "a" * 2048),
         "successUrl over 2048 characters"),
        ("cancelUrl", order(user, cancelUrl="https://evil.example/"), "cancelUrl host not allowed"),
        ("cancelUrl", order(user, cancelUrl="https://app.example.test/a b"), "cancelUrl with a space"),
        ("email", order(user, email="not-an-email"), "email without @"),
        ("email", order(user, email="a@b"), "email without a dotted domain"),
        ("email", order(user, email="a@b.example\r\nBcc: x@y.example"), "email with CR/LF"),
        ("email", order(user, email="a" * 250 + "@b.example"), "email over 254 characters"),
    ]
    for field, body, name in cases:
        r = post(st, user, body=body)
        expect_error(r, 400, "invalid_field", f"{name}: 400 naming {field}", field)
    t.eq(api_calls(st), [], "no Stripe call for invalid requests")
    r = post(st, user, body=order(user, successUrl="HTTPS://APP.Example.Test:8443/ok?x={CHECKOUT_SESSION_ID}",
                                  email=None))
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r.status == 200 and ses and ses[-1]["params"]["success_url"] ==
         "HTTPS://APP.Example.Test:8443/ok?x={CHECKOUT_SESSION_ID}",
         "host compared case-insensitively, port 8443 listed; {CHECKOUT_SESSION_ID} kept", repr(r))
    # ALLOWED_REDIRECT_HOSTS is "app.example.test, app.example.test:8443" (main()).
    for url, want in (("https://app.example.test:443/ok", 200),
                      ("https://app.example.test:9443/ok", 400),
                      ("http://app.example.test:443/ok", 400),
                      ("http://app.example.test/ok", 200),
                      ("https://app.example.test:8443/ok", 200)):
        r = post(st, user, body=order(user, successUrl=url, email=None))
        t.ok(r.status == want, f"successUrl {url}: {want} (a port must be listed, "
             "except the scheme's default)", f"got {r.status} {r.body[:300]!r}")
    r = st.http("GET", PATH, headers={"Authorization": "Bearer " + token(user)})
    t.ok(r.status == 405 and "POST" in r.headers.get("allow", ""), "GET: 405 with Allow", repr(r))
    r = post(st, user, headers={"Content-Type": "text/plain"})
    expect_error(r, 415, "unsupported_media_type", "text/plain body: 415")


def test_cors(st):
    st.stripe.reset()
    pre = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}
    r = st.http("OPTIONS", PATH, headers=pre)
    h = r.headers
    t.ok(r.status == 204 and h.get("access-control-allow-origin") == "https://app.example.test" and
         "POST" in h.get("access-control-allow-methods", "") and
         all(x in h.get("access-control-allow-headers", "").lower()
             for x in ("authorization", "content-type", "idempotency-key")) and
         h.get("access-control-max-age") and "origin" in h.get("vary", "").lower(),
         "preflight from an allowed origin: 204 with Access-Control-* and Vary", repr(h))
    r = st.http("OPTIONS", PATH, headers=dict(pre, Origin="https://evil.example"))
    t.ok(r.status == 204 and "access-control-allow-origin" not in r.headers,
         "preflight from another origin: no Access-Control-Allow-Origin", repr(r.headers))
    r = st.cgi("create-checkout-session", "OPTIONS", b"",
               env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                    "STRIPE_API_BASE": "http://127.0.0.1:1"}, headers=pre)
    t.eq(r.status, 204, "preflight answered without database or Stripe (both unreachable)")
    t.eq(api_calls(st), [], "preflight made no Stripe call")
    user = "user-cors"
    r = post(st, user, headers={"Origin": "https://app.example.test"})
    t.ok(r.status == 200 and
         r.headers.get("access-control-allow-origin") == "https://app.example.test" and
         "origin" in r.headers.get("vary", "").lower(),
         "POST from an allowed origin carries Access-Control-Allow-Origin", repr(r.headers))
    r = post(st, user, headers={"Origin": "https://evil.example"})
    t.ok("access-control-allow-origin" not in r.headers,
         "POST from another origin: no Access-Control-Allow-Origin", repr(r.headers))
    r = post(st, user, tok="garbage", headers={"Origin": "https://app.example.test"})
    t.ok(r.status == 401 and r.headers.get("access-control-allow-origin"),
         "errors carry the CORS headers too (the browser can read the 401)", repr(r.headers))


def new_checkout(st, user):
    """A checkout that is not the user's open session handed out again."""
    st.psql(f"UPDATE checkout_sessions SET status = 'expired' WHERE user_id = '{user}'")
    return post(st, user)


def test_retries(st):
    user = "user-retry"
    post(st, user)  # the customer exists from here on: only sessions are failed below
    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="500", count=1)
    r = new_checkout(st, user)
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r.status == 200 and len(ses) == 2 and ses[0]["status"] == 500 and
         ses[1]["status"] == 200 and ses[0]["idempotency_key"] == ses[1]["idempotency_key"],
         "500 then 200: retried with the same Idempotency-Key", repr([(s["status"], s["idempotency_key"]) for s in ses]))

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="reset", count=1)
    r = new_checkout(st, user)
    ses = api_calls(st, "/v1/checkout/sessions")
    t.ok(r.status == 200 and len(ses) == 2 and
         ses[0]["idempotency_key"] == ses[1]["idempotency_key"],
         "connection reset: retried, then 200", repr(r))

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="429", count=1, retry_after=1)
    start = time.monotonic()
    r = new_checkout(st, user)
    took = time.monotonic() - start
    t.ok(r.status == 200 and len(api_calls(st, "/v1/checkout/sessions")) == 2 and took >= 1.0,
         "429 with Retry-After: 1 waited about a second, then 200", f"{r!r} took {took:.2f}s")

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="503", count=10)
    start = time.monotonic()
    r = new_checkout(st, user)
    took = time.monotonic() - start
    expect_error(r, 503, "unavailable", "503 on every try: 503 unavailable")
    t.ok(len(api_calls(st, "/v1/checkout/sessions")) == 3 and took < 10,
         "exactly 3 tries, well under 10 s", f"{len(api_calls(st))} tries in {took:.2f}s")

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="500", count=3, should_retry=False)
    r = new_checkout(st, user)
    expect_error(r, 503, "unavailable", "500 with Stripe-Should-Retry: false: 503")
    t.eq(len(api_calls(st, "/v1/checkout/sessions")), 1, "Stripe-Should-Retry: false: no retry")

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="400", count=1, should_retry=True)
    r = new_checkout(st, user)
    t.ok(r.status == 200 and len(api_calls(st, "/v1/checkout/sessions")) == 2,
         "400 with Stripe-Should-Retry: true is retried", repr(r))

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="400", count=1,
                   message="Invalid API Key provided: " + SECRET_KEY)
    r = new_checkout(st, user)
    expect_error(r, 502, "stripe_error", "Stripe 400: 502 stripe_error")
    t.eq(len(api_calls(st, "/v1/checkout/sessions")), 1, "a 400 is not retried")
    t.ok(SECRET_KEY not in r.text and "sk_test" not in r.text,
         "the secret key is not in the response", r.text)

    st.stripe.reset()
    st.stripe.fail(path="/v1/checkout/sessions", mode="slow", count=3, delay=6)
    start = time.monotonic()
    r = new_checkout(st, user)
    took = time.monotonic() - start
    expect_error(r, 503, "unavailable", "Stripe slower than the per-try timeout: 503")
    t.ok(took < 10, "answered in under 10 s", f"took {took:.2f}s")

    st.stripe.reset()
    st.stripe.fail(path="/v1/customers", mode="503", count=3)
    r = post(st, "user-retry-newcustomer")
    expect_error(r, 503, "unavailable", "customer creation unavailable: 503")
    t.eq(st.psql_one("SELECT count(*) FROM customers WHERE user_id = 'user-retry-newcustomer'"),
         "0", "no customers row when Stripe did not create one")
    t.eq(len(api_calls(st, "/v1/checkout/sessions")), 0, "no session without a customer")


def main():
    keydir = tempfile.mkdtemp(prefix="checkout-keys-")
    keys = gen_keys(keydir)
    for k in ("rsa_private", "ec_private"):
        os.chmod(keys[k], 0o600)
    hosts = {"ALLOWED_REDIRECT_HOSTS": "app.example.test, app.example.test:8443"}
    with t.guard("checkout stack"), Stack(settings=hosts) as st:
        for fn in (test_success_matrix, test_trial_zero, test_customer_reused,
                   test_concurrent_first_checkouts,
                   test_client_idempotency, test_already_subscribed, test_validation,
                   test_cors, test_retries):
            t.run(fn, st)
        t.run(test_auth, st, keys)
        log = st.error_log()
        t.ok(SECRET_KEY not in log and "jwt-test-secret" not in log,
             "neither the Stripe key nor the JWT secret is in Apache's error log")
        t.ok("create-checkout-session" in log, "the CGI logged its request lines")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
