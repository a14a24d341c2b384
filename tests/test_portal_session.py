#!/usr/bin/env python3
"""portal-session.cgi (POST /api/stripe/portal-session) through the real Apache
and piped, against the real PostgreSQL and the fake Stripe (TAP).

The fake checks flow_data like Stripe (the flow's subscription must be the
customer's and not canceled), so a 200 here means Stripe would accept it.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, make_jwt  # noqa: E402

PATH = "/api/stripe/portal-session"
RETURN = "https://app.example.test/billing"
SECRET_KEY = "sk_test_harness"

t = Tap()


def token(sub):
    return make_jwt({"sub": sub, "exp": int(time.time()) + 600, "iat": int(time.time())})


def post(st, via, user, body=None, headers=None, tok=None, env=None):
    h = {} if tok is False else {"Authorization": "Bearer " + (tok or token(user))}
    h.update(headers or {})
    body = {"userId": user, "returnUrl": RETURN} if body is None else body
    if via == "http":
        return st.http("POST", PATH, headers=h, body=body)
    return st.cgi("portal-session", "POST", body, headers=h, env=env)


def code(r):
    return ((r.json() or {}).get("error") or {}).get("code")


def expect_error(r, status, err, name, field=None):
    ok = r.status == status and code(r) == err
    if field is not None:
        ok = ok and (r.json() or {}).get("error", {}).get("field") == field
    t.ok(ok, name, f"got {r.status} {r.body[:300]!r}")


def sessions(st):
    return [r for r in st.stripe.requests() if r["path"] == "/v1/billing_portal/sessions"]


def customer_for(st, user, status=None):
    """A Stripe customer stored for user; with status also a subscription row."""
    cus = "cus_" + user.replace("-", "")
    st.stripe.put_customer(cus, email=f"{user}@example.test")
    st.psql(f"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('{user}', '{cus}')")
    sub = None
    if status:
        (sub,) = st.stripe.create_subscriptions(customer=cus, status=status,
                                                metadata={"userId": user})
        st.psql("INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id,"
                f" tier, status) VALUES ('{user}', '{cus}', '{sub['id']}', 'pro', '{status}')")
    return cus, sub


def test_sessions(st, via):
    st.stripe.reset()
    user = f"portal-{via}"
    cus, sub = customer_for(st, user, "active")
    r = post(st, via, user)
    s = sessions(st)
    t.ok(r.status == 200 and (r.json() or {}).get("url", "").startswith(
        "https://billing.stripe.com/p/session/") and len(s) == 1 and s[0]["status"] == 200,
        f"{via}: 200 with the portal URL", r.body)
    if s:
        t.eq(s[0]["params"], {"customer": cus, "return_url": RETURN},
             f"{via}: exact parameters: the stored customer and return_url")
        t.eq(r.json().get("url"), s[0]["response"]["url"], f"{via}: the URL is Stripe's")
        h = s[0]["headers"]
        t.ok(h.get("authorization") == "Bearer " + SECRET_KEY and
             h.get("stripe-version") == "2026-07-29.dahlia" and
             h.get("idempotency-key", "").startswith("portal-"),
             f"{via}: Authorization, pinned Stripe-Version, Idempotency-Key", repr(h))
    after = {"type": "redirect", "redirect": {"return_url": RETURN}}
    for flow, extra in (("payment_method_update", {}),
                        ("subscription_cancel", {"subscription_cancel": {"subscription": sub["id"]}}),
                        ("subscription_update", {"subscription_update": {"subscription": sub["id"]}})):
        r = post(st, via, user, {"userId": user, "returnUrl": RETURN, "flow": flow})
        s = sessions(st)[-1]
        want = {"type": flow, "after_completion": after}
        want.update(extra)
        t.ok(r.status == 200 and s["status"] == 200 and s["params"].get("flow_data") == want and
             s["response"]["flow"]["type"] == flow,
             f"{via}: flow {flow}: flow_data with the live subscription, redirect back",
             f"{r.status} {s['params']}")


def test_refusals(st, via):
    st.stripe.reset()
    user = f"portal-none-{via}"
    r = post(st, via, user)
    expect_error(r, 404, "no_customer", f"{via}: no stored customer: 404 no_customer")
    nosub = f"portal-nosub-{via}"
    customer_for(st, nosub)
    for flow in ("subscription_cancel", "subscription_update"):
        r = post(st, via, nosub, {"userId": nosub, "returnUrl": RETURN, "flow": flow})
        expect_error(r, 409, "no_subscription", f"{via}: {flow} without a live subscription: 409")
    ended = f"portal-ended-{via}"
    customer_for(st, ended, "canceled")
    r = post(st, via, ended, {"userId": ended, "returnUrl": RETURN, "flow": "subscription_update"})
    expect_error(r, 409, "no_subscription", f"{via}: subscription_update with a canceled one: 409")
    t.eq(sessions(st), [], f"{via}: none of them reached Stripe")
    r = post(st, via, ended, {"userId": ended, "returnUrl": RETURN, "flow": "payment_method_update"})
    t.eq(r.status, 200, f"{via}: payment_method_update needs only the customer")
    r = post(st, via, ended)
    t.eq(r.status, 200, f"{via}: a former subscriber still gets the portal (invoices)")

    for field, body, name in [
            ("returnUrl", {"userId": user, "returnUrl": "https://evil.example/x"}, "returnUrl host not allowed"),
            ("returnUrl", {"userId": user, "returnUrl": "/billing"}, "relative returnUrl"),
            ("returnUrl", {"userId": user}, "no returnUrl"),
            ("flow", {"userId": user, "returnUrl": RETURN, "flow": "subscription_update_confirm"},
             "flow not offered"),
            ("userId", {"returnUrl": RETURN}, "no userId")]:
        r = post(st, via, user, body)
        expect_error(r, 400, "invalid_field", f"{via}: {name}: 400 naming {field}", field)
    r = post(st, via, user, tok=False)
    expect_error(r, 401, "unauthorized", f"{via}: no credentials: 401")
    r = post(st, via, user, tok=token("someone-else"))
    expect_error(r, 403, "forbidden", f"{via}: another user: 403")
    r = post(st, via, user, tok="usage-test-key-0123456789abcdef")
    expect_error(r, 401, "unauthorized", f"{via}: the usage API key is not accepted")


def test_settings(st):
    st.stripe.reset()
    user = "portal-config"
    customer_for(st, user)
    r = post(st, "cgi", user, env={"STRIPE_PORTAL_CONFIGURATION": "bpc_1Config0001"})
    s = sessions(st)[-1]
    t.ok(r.status == 200 and s["params"].get("configuration") == "bpc_1Config0001",
         "STRIPE_PORTAL_CONFIGURATION becomes configuration", s["params"])
    r = post(st, "cgi", user, env={"STRIPE_PORTAL_CONFIGURATION": "bpc_1/../x"})
    expect_error(r, 500, "misconfigured", "a configuration that is no Stripe id: 500")
    r = post(st, "cgi", user, env={"STRIPE_SECRET_KEY": None})
    expect_error(r, 500, "misconfigured", "no STRIPE_SECRET_KEY: 500")


def test_retries(st):
    st.stripe.reset()
    user = "portal-retry"
    customer_for(st, user)
    st.stripe.fail(path="/v1/billing_portal/sessions", mode="500", count=1)
    r = post(st, "http", user)
    s = sessions(st)
    t.ok(r.status == 200 and len(s) == 2 and s[0]["status"] == 500 and
         s[0]["idempotency_key"] == s[1]["idempotency_key"],
         "500 then 200: retried with the same Idempotency-Key", repr([x["status"] for x in s]))
    st.stripe.fail(path="/v1/billing_portal/sessions", mode="400", count=1)
    r = post(st, "http", user)
    expect_error(r, 502, "stripe_error", "Stripe 400: 502 stripe_error")
    st.stripe.fail(path="/v1/billing_portal/sessions", mode="503", count=3)
    r = post(st, "http", user)
    expect_error(r, 503, "unavailable", "503 on every try: 503 unavailable")
    r = post(st, "cgi", user, env={"STRIPE_API_BASE": "http://127.0.0.1:1"})
    expect_error(r, 503, "unavailable", "Stripe unreachable: 503 unavailable")

    h = {"Idempotency-Key": "portal-click-1"}
    r1 = post(st, "http", user, headers=h)
    r2 = post(st, "http", user, headers=h)
    s = sessions(st)[-2:]
    t.ok(r1.status == 200 and r2.status == 200 and r1.json()["url"] == r2.json()["url"] and
         s[1]["replayed"], "the same client Idempotency-Key: Stripe replays the same session")
    r = post(st, "http", user, {"userId": user, "returnUrl": RETURN, "flow": "payment_method_update"},
             headers=h)
    expect_error(r, 409, "conflict", "the same key for another request: 409 conflict")
    r = post(st, "http", user, headers={"Idempotency-Key": ""})
    expect_error(r, 400, "invalid_field", "an empty Idempotency-Key header: 400 naming it",
                 "Idempotency-Key")
    r = post(st, "http", user, headers={"Idempotency-Key": "k" * 256})
    expect_error(r, 400, "invalid_field", "Idempotency-Key over 255 characters: 400 naming it",
                 "Idempotency-Key")


def test_cors(st):
    pre = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = st.http("OPTIONS", PATH, headers=pre)
    t.ok(r.status == 204 and r.headers.get("access-control-allow-origin") ==
         "https://app.example.test" and "POST" in r.headers.get("access-control-allow-methods", ""),
         "preflight from an allowed origin: 204 with Access-Control-*", repr(r.headers))
    r = st.cgi("portal-session", "OPTIONS", b"", headers=pre,
               env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                    "STRIPE_API_BASE": "http://127.0.0.1:1"})
    t.eq(r.status, 204, "preflight answered without database or Stripe")
    r = post(st, "http", "portal-cors-nobody", headers={"Origin": "https://app.example.test"})
    t.ok(r.status == 404 and r.headers.get("access-control-allow-origin"),
         "errors carry the CORS headers too", repr(r.headers))
    r = st.http("GET", PATH)
    t.ok(r.status == 405 and "POST" in r.headers.get("allow", ""), "GET: 405 with Allow")


def main():
    with t.guard("portal stack"), Stack() as st:
        for via in ("http", "cgi"):
            t.run(test_sessions, st, via)
            t.run(test_refusals, st, via)
        for fn in (test_settings, test_retries, test_cors):
            t.run(fn, st)
        t.ok(SECRET_KEY not in st.error_log(), "the Stripe key is not in Apache's error log")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
