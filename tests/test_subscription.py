#!/usr/bin/env python3
"""subscription.cgi (GET|POST /api/subscription) through the real Apache and
piped, against the real PostgreSQL and the fake Stripe (TAP).

Each case seeds a user with a Stripe customer and a subscription in the fake
(prices of the harness settings, period started ten days ago), stores it
through webhook.cgi as Stripe would announce it, then acts and checks the
exact Stripe calls, the answer and the subscriptions row after it.
"""
import http.client
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, make_jwt, stripe_signature  # noqa: E402

PATH = "/api/subscription"
SECRET = "whsec_test_harness"
DAY = 86400
# The harness's price settings, as prices in the fake.
PRICES = {
    "price_basic_monthly": (900, "month"),
    "price_basic_yearly": (9000, "year"),
    "price_pro_monthly": (1900, "month"),
    "price_pro_yearly": (19000, "year"),
}
PLAN = {("basic", "monthly"): "price_basic_monthly", ("basic", "yearly"): "price_basic_yearly",
        ("pro", "monthly"): "price_pro_monthly", ("pro", "yearly"): "price_pro_yearly"}

t = Tap()
_serial = [0]


def token(sub):
    return make_jwt({"sub": sub, "exp": int(time.time()) + 600, "iat": int(time.time())})


def fresh_user(prefix):
    _serial[0] += 1
    return f"{prefix}-{_serial[0]}"


def prepare(st):
    st.stripe.reset()
    for pid, (amount, interval) in PRICES.items():
        st.stripe.put_price(pid, unit_amount=amount, currency="usd",
                            recurring={"interval": interval}, nickname=pid)


def deliver(st, ev):
    """A signed event piped to webhook.cgi (env: e.g. STRIPE_SYNC_MODE)."""
    body = json.dumps(ev).encode()
    return st.cgi("webhook", body=body,
                  headers={"Stripe-Signature": stripe_signature(SECRET, body)})


def deliver_in(st, ev, mode):
    body = json.dumps(ev).encode()
    return st.cgi("webhook", body=body, env={"STRIPE_SYNC_MODE": mode},
                  headers={"Stripe-Signature": stripe_signature(SECRET, body)})


def sub_event(sub, etype="customer.subscription.created", created=None):
    return {"id": f"evt_seed_{sub['id']}_{etype.rsplit('.', 1)[1]}_{created or 0}",
            "object": "event", "type": etype, "api_version": "2026-07-29.dahlia",
            "created": created or int(time.time()) - 60, "livemode": False,
            "data": {"object": sub}}


def seed(st, user, tier="pro", interval="monthly", status="active", customer=True, **spec):
    """A Stripe customer (stored in customers) and a subscription for user, stored
    through webhook.cgi as a customer.subscription.created event from a minute ago."""
    cus = "cus_" + user.replace("-", "")
    st.stripe.put_customer(cus, email=f"{user}@example.test")
    if customer:
        st.psql(f"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('{user}', '{cus}')")
    spec.setdefault("current_period_start", int(time.time()) - 10 * DAY)
    (sub,) = st.stripe.create_subscriptions(customer=cus, price=PLAN[(tier, interval)],
                                            status=status, metadata={"userId": user}, **spec)
    r = deliver(st, sub_event(sub))
    if r.status != 200:
        raise RuntimeError(f"seeding {user}: webhook answered {r.status} {r.body[:200]!r}")
    return sub


def row(st, sub_id):
    cols = ("user_id", "tier", "status", "billing_interval", "price_id", "unit_amount",
            "cancel_at_period_end", "canceled_at IS NOT NULL", "ended_at IS NOT NULL",
            "last_event_id", "extract(epoch FROM last_event_created)::bigint",
            "extract(epoch FROM current_period_start)::bigint",
            "extract(epoch FROM current_period_end)::bigint")
    names = ("user", "tier", "status", "interval", "price", "amount", "cape", "canceled",
             "ended", "last_event_id", "last_event_created", "period_start", "period_end")
    rows = st.psql(f"SELECT {', '.join(cols)} FROM subscriptions"
                   f" WHERE stripe_subscription_id = '{sub_id}'")
    return dict(zip(names, rows[0])) if rows else None


def calls(st, method=None, prefix="/v1/"):
    return [r for r in st.stripe.requests()
            if r["path"].startswith(prefix) and (method is None or r["method"] == method)]


def request(st, via, user, body=None, method="POST", headers=None, tok=None, query=None,
            env=None):
    h = {} if tok is False else {"Authorization": "Bearer " + (tok or token(user))}
    h.update(headers or {})
    if method == "GET":
        q = f"userId={user}" if query is None else query
        if via == "http":
            return st.http("GET", PATH + "?" + q, headers=h)
        return st.cgi("subscription", "GET", b"", headers=h, query=q, env=env)
    if via == "http":
        return st.http("POST", PATH, headers=h, body=body)
    return st.cgi("subscription", "POST", body, headers=h, env=env)


def act(st, via, user, action, **fields):
    env = fields.pop("env", None)
    headers = fields.pop("headers", None)
    body = {"userId": user, "action": action}
    body.update(fields)
    return request(st, via, user, body, headers=headers, env=env)


def code(r):
    return ((r.json() or {}).get("error") or {}).get("code")


def expect_error(r, status, err, name):
    t.ok(r.status == status and code(r) == err, name, f"got {r.status} {r.body[:400]!r}")


def stripe_sub(st, sub_id):
    return st.stripe.objects()["subscriptions"][sub_id]


# ---------------------------------------------------------------------------


def test_read(st, via):
    prepare(st)
    user = fresh_user(f"read-{via}")
    r = request(st, via, user, method="GET")
    t.eq((r.status, r.json()), (200, {
        "userId": user, "subscriptionId": None, "tier": "free", "interval": None,
        "status": "none", "priceId": None, "amount": None, "currency": None,
        "trialStart": None, "trialEnd": None, "currentPeriodStart": None,
        "currentPeriodEnd": None, "canceledAt": None, "endedAt": None,
        "cancelAtPeriodEnd": False, "actions": []}), f"{via}: GET without a subscription")
    sub = seed(st, user)
    it = sub["items"]["data"][0]
    before = len(calls(st))
    r = request(st, via, user, method="GET")
    j = r.json() or {}
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))  # noqa: E731
    t.eq((r.status, j), (200, {
        "userId": user, "subscriptionId": sub["id"], "tier": "pro", "interval": "monthly",
        "status": "active", "priceId": "price_pro_monthly", "amount": 1900, "currency": "usd",
        "trialStart": None, "trialEnd": None,
        "currentPeriodStart": iso(it["current_period_start"]),
        "currentPeriodEnd": iso(it["current_period_end"]), "canceledAt": None,
        "endedAt": None, "cancelAtPeriodEnd": False, "actions": ["change", "cancel"]}),
        f"{via}: GET an active subscription: stored state and actions")
    t.eq(calls(st)[before:], [], f"{via}: GET makes no Stripe call")
    trial = fresh_user(f"read-trial-{via}")
    seed(st, trial, "basic", "yearly", status="trialing")
    j = request(st, via, trial, method="GET").json() or {}
    t.ok(j.get("status") == "trialing" and j.get("tier") == "basic" and
         j.get("interval") == "yearly" and j.get("trialEnd") and
         j.get("actions") == ["change", "cancel"], f"{via}: GET a trialing subscription", j)


def test_read_refusals(st, via):
    user = fresh_user(f"readref-{via}")
    r = request(st, via, user, method="GET", tok=False)
    expect_error(r, 401, "unauthorized", f"{via}: GET without credentials: 401")
    r = request(st, via, user, method="GET", tok=token("someone-else"))
    expect_error(r, 403, "forbidden", f"{via}: GET another user's subscription: 403")
    r = request(st, via, user, method="GET", query="")
    t.ok(r.status == 400 and code(r) == "invalid_field" and
         r.json()["error"].get("field") == "userId", f"{via}: GET without userId: 400", r.body)
    r = request(st, via, user, method="GET", query=f"userId={user}&userId={user}")
    expect_error(r, 400, "invalid_field", f"{via}: GET with userId twice: 400")
    r = request(st, via, user, method="GET", tok="usage-test-key-0123456789abcdef")
    expect_error(r, 401, "unauthorized", f"{via}: the usage API key is not accepted")


def test_change(st, via):
    prepare(st)
    user = fresh_user(f"change-{via}")
    sub = seed(st, user)
    it = sub["items"]["data"][0]
    before = len(st.stripe.requests())
    r = act(st, via, user, "change", tier="basic", interval="monthly")
    j = r.json() or {}
    mine = st.stripe.requests()[before:]
    t.eq([(c["method"], c["path"]) for c in mine],
         [("GET", f"/v1/subscriptions/{sub['id']}"), ("POST", f"/v1/subscriptions/{sub['id']}")],
         f"{via}: change: GET the subscription, then POST the change")
    if len(mine) == 2:
        t.eq(mine[1]["params"], {"items": [{"id": it["id"], "price": "price_basic_monthly"}],
                                 "proration_behavior": "create_prorations",
                                 "payment_behavior": "pending_if_incomplete"},
             f"{via}: change: exact parameters (existing item, new price, defaults)")
        h = mine[1]["headers"]
        t.ok(mine[1]["status"] == 200 and h.get("stripe-version") == "2026-07-29.dahlia" and
             h.get("idempotency-key", "").startswith("subscription-"),
             f"{via}: change: pinned Stripe-Version and an Idempotency-Key", repr(h))
    t.ok(r.status == 200 and j.get("tier") == "basic" and j.get("interval") == "monthly" and
         j.get("priceId") == "price_basic_monthly" and j.get("amount") == 900 and
         j.get("status") == "active" and j.get("actions") == ["change", "cancel"],
         f"{via}: change: the answer is the new state", r.body)
    rw = row(st, sub["id"])
    t.ok(rw and (rw["tier"], rw["price"], rw["amount"], rw["last_event_id"]) ==
         ("basic", "price_basic_monthly", "900", "api:change") and
         abs(int(rw["last_event_created"]) - time.time()) < 30,
         f"{via}: change: the row is stored from Stripe's answer", rw)
    t.eq(stripe_sub(st, sub["id"])["items"]["data"][0]["price"]["id"], "price_basic_monthly",
         f"{via}: change: Stripe has the new price")
    before = len(st.stripe.requests())
    r = act(st, via, user, "change", tier="basic", interval="monthly")
    expect_error(r, 409, "no_change", f"{via}: the same plan again: 409 no_change")
    t.eq(st.stripe.requests()[before:], [], f"{via}: no_change makes no Stripe call")
    t.eq(row(st, sub["id"])["tier"], "basic", f"{via}: no_change leaves the row")


def fake_api(st, method, path, pairs=()):
    """A Stripe API call to the fake, as a client library would make it."""
    u = urllib.parse.urlsplit(st.stripe_base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=urllib.parse.urlencode(list(pairs)),
                     headers={"Authorization": "Bearer sk_test_harness",
                              "Content-Type": "application/x-www-form-urlencoded"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def rounded(num, den):
    """Stripe's proration rounding as the fake does it (halves away from zero)."""
    return (2 * num + den) // (2 * den)


def prorations(old, new, start, end, when):
    return -rounded(old * (end - when), end - start), rounded(new * (end - when), end - start)


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_preview_create_prorations(st, via):
    """Default behaviour: nothing due now; the next invoice carries the prorations,
    and after the change Stripe's next invoice is exactly what the preview said."""
    prepare(st)
    user = fresh_user(f"preview-{via}")
    sub = seed(st, user)
    it = sub["items"]["data"][0]
    start, end = it["current_period_start"], it["current_period_end"]
    before = len(calls(st))
    r = act(st, via, user, "preview", tier="basic", interval="monthly")
    j = r.json() or {}
    mine = calls(st)[before:]
    t.eq([(c["method"], c["path"]) for c in mine],
         [("GET", f"/v1/subscriptions/{sub['id']}"), ("POST", "/v1/invoices/create_preview")],
         f"{via}: preview: GET the subscription, one create_preview")
    when = j.get("prorationDate") or 0
    t.ok(r.status == 200 and abs(when - time.time()) < 30, f"{via}: preview: 200 with a"
         " prorationDate of now", r.body)
    if len(mine) == 2:
        t.eq(mine[1]["params"], {"subscription": sub["id"], "subscription_details": {
            "items": [{"id": it["id"], "price": "price_basic_monthly"}],
            "proration_behavior": "create_prorations", "proration_date": str(when)}},
            f"{via}: preview: exact create_preview parameters")
        t.ok(mine[1]["headers"].get("idempotency-key", "").startswith("preview-"),
             f"{via}: preview: the POST carries an Idempotency-Key")
    credit, charge = prorations(1900, 900, start, end, when)
    next_total = credit + charge + 900
    t.eq({k: j.get(k) for k in ("proration", "currency", "dueNow")},
         {"proration": "create_prorations", "currency": "usd",
          "dueNow": {"amount": 0, "lines": []}}, f"{via}: preview: nothing is due now")
    nxt = j.get("nextInvoice") or {}
    t.eq((nxt.get("amount"), nxt.get("date"),
          [(ln["amount"], ln["proration"]) for ln in nxt.get("lines", [])]),
         (max(0, next_total), iso(end), [(credit, True), (charge, True), (900, False)]),
         f"{via}: preview: next invoice = Stripe's proration arithmetic + the next period")
    t.eq((row(st, sub["id"])["tier"], stripe_sub(st, sub["id"])["items"]["data"][0]["price"]["id"]),
         ("pro", "price_pro_monthly"), f"{via}: preview changes nothing")
    r = act(st, via, user, "change", tier="basic", interval="monthly", prorationDate=when)
    t.ok(r.status == 200 and (r.json() or {}).get("tier") == "basic",
         f"{via}: change at the previewed prorationDate", r.body)
    post = calls(st, "POST")[-1]
    t.eq(post["params"].get("proration_date"), str(when),
         f"{via}: the change carries the preview's proration_date")
    upcoming = fake_api(st, "POST", "/v1/invoices/create_preview", [("subscription", sub["id"])])
    t.eq(upcoming.get("amount_due"), nxt.get("amount"),
         f"{via}: Stripe's next invoice after the change is what the preview showed")


def test_preview_invoiced_now(st, via):
    """always_invoice, and a change of interval: due now = what the change charges."""
    prepare(st)
    user = fresh_user(f"previewnow-{via}")
    sub = seed(st, user, "basic", "monthly")
    it = sub["items"]["data"][0]
    start, end = it["current_period_start"], it["current_period_end"]
    before = len(calls(st))
    r = act(st, via, user, "preview", tier="pro", interval="monthly", proration="always_invoice")
    j = r.json() or {}
    when = j.get("prorationDate") or 0
    previews = [c for c in calls(st)[before:] if c["path"] == "/v1/invoices/create_preview"]
    t.eq([c["params"]["subscription_details"]["proration_behavior"] for c in previews],
         ["always_invoice", "none"], f"{via}: always_invoice: the change's invoice, then the"
         " renewal without prorations")
    credit, charge = prorations(900, 1900, start, end, when)
    t.eq((r.status, j.get("dueNow", {}).get("amount"), j.get("nextInvoice", {}).get("amount"),
          j.get("nextInvoice", {}).get("date")), (200, credit + charge, 1900, iso(end)),
         f"{via}: always_invoice: due now = the prorations, next invoice = the new price")
    r = act(st, via, user, "change", tier="pro", interval="monthly", proration="always_invoice",
            prorationDate=when)
    s = stripe_sub(st, sub["id"])
    inv = st.stripe.objects()["invoices"].get(s.get("latest_invoice") or "", {})
    t.ok(r.status == 200 and inv.get("status") == "paid" and
         inv.get("amount_paid") == j["dueNow"]["amount"],
         f"{via}: always_invoice: the change charges exactly what the preview showed",
         f"{r.status} {inv.get('status')} {inv.get('amount_paid')} vs {j.get('dueNow')}")
    upcoming = fake_api(st, "POST", "/v1/invoices/create_preview", [("subscription", sub["id"])])
    t.eq(upcoming.get("amount_due"), j["nextInvoice"]["amount"],
         f"{via}: always_invoice: the next invoice is what the preview showed")

    # A new interval restarts the cycle and bills the new period at once.
    r = act(st, via, user, "preview", tier="pro", interval="yearly")
    j = r.json() or {}
    when = j.get("prorationDate") or 0
    it = stripe_sub(st, sub["id"])["items"]["data"][0]
    credit = -rounded(1900 * (it["current_period_end"] - when),
                      it["current_period_end"] - it["current_period_start"])
    nxt = j.get("nextInvoice") or {}
    t.eq((r.status, j.get("proration"), j.get("dueNow", {}).get("amount"), nxt.get("amount")),
         (200, "create_prorations", credit + 19000, 19000),
         f"{via}: interval change: due now = credit + the whole year; renewals cost the year")
    r = act(st, via, user, "change", tier="pro", interval="yearly", prorationDate=when)
    s = stripe_sub(st, sub["id"])
    inv = st.stripe.objects()["invoices"].get(s.get("latest_invoice") or "", {})
    rw = row(st, sub["id"])
    year_end = s["items"]["data"][0]["current_period_end"]
    t.ok(r.status == 200 and inv.get("amount_paid") == j["dueNow"]["amount"] and
         nxt.get("date") == iso(year_end),
         f"{via}: interval change: charged what the preview showed; next invoice at the year's end",
         f"{r.body[:200]!r} paid={inv.get('amount_paid')} next={nxt}")
    t.ok(rw["interval"] == "yearly" and rw["price"] == "price_pro_yearly" and
         int(rw["period_start"]) == when and int(rw["period_end"]) == year_end,
         f"{via}: interval change: the row has the new cycle", rw)


def test_change_rules(st):
    prepare(st)
    user = fresh_user("rules")
    sub = seed(st, user)
    it = sub["items"]["data"][0]
    n = len(calls(st))
    r = act(st, "http", user, "change", tier="basic", interval="monthly", proration="none")
    t.ok(r.status == 400 and code(r) == "invalid_field" and
         r.json()["error"].get("field") == "proration",
         "proration none is refused unless STRIPE_PRORATION_CHOICES allows it", r.body)
    for field, extra, name in [
            ("prorationDate", {"prorationDate": int(time.time()) - 2 * 3600}, "two hours old"),
            ("prorationDate", {"prorationDate": int(time.time()) + 3600}, "in the future"),
            ("prorationDate", {"prorationDate": "1700000000"}, "a string")]:
        r = act(st, "http", user, "change", tier="basic", interval="monthly", **extra)
        t.ok(r.status == 400 and code(r) == "invalid_field" and
             r.json()["error"].get("field") == field, f"prorationDate {name}: 400", r.body)
    t.eq([c for c in calls(st, "POST")[n:] if c["path"].startswith("/v1/subscriptions")], [],
         "refused changes never reach Stripe's update")
    r = act(st, "cgi", user, "change", tier="basic", interval="monthly", proration="none",
            env={"STRIPE_PRORATION_CHOICES": "create_prorations,none"})
    t.ok(r.status == 200 and calls(st, "POST")[-1]["params"].get("proration_behavior") == "none",
         "proration none when STRIPE_PRORATION_CHOICES lists it", r.body)
    r = act(st, "cgi", user, "change", tier="pro", interval="monthly",
            env={"STRIPE_PRORATION_BEHAVIOR": "always_invoice"})
    t.ok(r.status == 200 and
         calls(st, "POST")[-1]["params"].get("proration_behavior") == "always_invoice",
         "STRIPE_PRORATION_BEHAVIOR is the default behaviour", r.body)
    r = act(st, "cgi", user, "change", tier="basic", interval="monthly",
            env={"STRIPE_PRORATION_BEHAVIOR": "sometimes"})
    expect_error(r, 500, "misconfigured", "a bad STRIPE_PRORATION_BEHAVIOR: 500 misconfigured")
    r = act(st, "cgi", user, "change", tier="basic", interval="yearly",
            env={"STRIPE_PRICE_BASIC_YEARLY": None})
    expect_error(r, 500, "misconfigured", "the new plan's price is not configured: 500")
    t.eq(row(st, sub["id"])["tier"], "pro", "refusals leave the row")

    # Cancel pending: resume first.
    act(st, "http", user, "cancel")
    r = act(st, "http", user, "change", tier="basic", interval="monthly")
    expect_error(r, 409, "cancel_pending", "change while scheduled to cancel: 409 cancel_pending")
    r = act(st, "http", user, "preview", tier="basic", interval="monthly")
    expect_error(r, 409, "cancel_pending", "preview while scheduled to cancel: 409")

    # A failed upgrade payment leaves the old plan (pending_if_incomplete).
    user = fresh_user("declined")
    sub = seed(st, user, "basic", "monthly")
    st.stripe.decline(sub["customer"], "insufficient_funds")
    r = act(st, "http", user, "change", tier="pro", interval="monthly", proration="always_invoice")
    j = r.json() or {}
    t.ok(r.status == 402 and code(r) == "payment_failed" and j.get("tier") == "basic" and
         j.get("priceId") == "price_basic_monthly" and j.get("subscriptionId") == sub["id"],
         "declined upgrade: 402 payment_failed with the state, old plan in force", r.body)
    s = stripe_sub(st, sub["id"])
    t.ok(s["pending_update"] and s["items"]["data"][0]["price"]["id"] == "price_basic_monthly"
         and row(st, sub["id"])["tier"] == "basic",
         "declined upgrade: Stripe parks the change, the row keeps the old plan")
    st.stripe.undecline(sub["customer"])


def test_no_subscription(st, via):
    prepare(st)
    user = fresh_user(f"nosub-{via}")
    for action, extra in (("change", {"tier": "pro", "interval": "monthly"}),
                          ("preview", {"tier": "pro", "interval": "monthly"}),
                          ("cancel", {}), ("cancel", {"atPeriodEnd": False}), ("resume", {})):
        r = act(st, via, user, action, **extra)
        expect_error(r, 404, "no_subscription", f"{via}: {action} {extra} without a subscription:"
                     " 404 no_subscription")
    st.psql("INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status)"
            f" VALUES ('{user}', 'sub_incomplete_{via}', 'pro', 'incomplete')")
    r = act(st, via, user, "cancel")
    expect_error(r, 404, "no_subscription", f"{via}: an incomplete subscription is not live: 404")
    t.eq(calls(st), [], f"{via}: no Stripe call for any of them")


def test_cancel_resume(st, via):
    prepare(st)
    user = fresh_user(f"cancel-{via}")
    sub = seed(st, user)
    path = f"/v1/subscriptions/{sub['id']}"
    n = len(calls(st))
    r = act(st, via, user, "cancel")
    j = r.json() or {}
    mine = calls(st)[n:]
    t.eq([(c["method"], c["path"], c["params"]) for c in mine],
         [("POST", path, {"cancel_at_period_end": "true"})],
         f"{via}: cancel: one POST cancel_at_period_end=true")
    t.ok(r.status == 200 and j.get("cancelAtPeriodEnd") is True and j.get("status") == "active"
         and j.get("actions") == ["cancel", "resume"] and j.get("canceledAt"),
         f"{via}: cancel: answer shows the pending cancel", r.body)
    rw = row(st, sub["id"])
    t.eq((rw["cape"], rw["status"], rw["last_event_id"]), ("t", "active", "api:cancel"),
         f"{via}: cancel: row scheduled to cancel")
    n = len(calls(st))
    r = act(st, via, user, "cancel", atPeriodEnd=True)
    expect_error(r, 409, "no_change", f"{via}: cancel again: 409 no_change")
    r = act(st, via, user, "resume")
    j = r.json() or {}
    t.eq([(c["method"], c["params"]) for c in calls(st)[n:]],
         [("POST", {"cancel_at_period_end": "false"})],
         f"{via}: resume: one POST cancel_at_period_end=false (none for the refused cancel)")
    t.ok(r.status == 200 and j.get("cancelAtPeriodEnd") is False and
         j.get("actions") == ["change", "cancel"] and j.get("canceledAt") is None,
         f"{via}: resume: the cancel is undone", r.body)
    t.eq(row(st, sub["id"])["cape"], "f", f"{via}: resume: row no longer scheduled")
    r = act(st, via, user, "resume")
    expect_error(r, 409, "not_resumable", f"{via}: resume without a pending cancel: 409")

    act(st, via, user, "cancel")
    n = len(calls(st))
    r = act(st, via, user, "cancel", atPeriodEnd=False)
    j = r.json() or {}
    mine = calls(st)[n:]
    t.eq([(c["method"], c["path"], c["query"]) for c in mine],
         [("DELETE", path, "prorate=false&invoice_now=false")],
         f"{via}: cancel now (also when scheduled): DELETE with prorate and invoice_now")
    t.ok(r.status == 200 and j.get("status") == "canceled" and j.get("endedAt") and
         j.get("actions") == [] and j.get("cancelAtPeriodEnd") is False,
         f"{via}: cancel now: answer canceled, nothing left to do", r.body)
    rw = row(st, sub["id"])
    t.ok((rw["status"], rw["ended"], rw["last_event_id"]) == ("canceled", "t", "api:cancel_now"),
         f"{via}: cancel now: row canceled and ended", rw)
    r = act(st, via, user, "resume")
    expect_error(r, 409, "not_resumable", f"{via}: resume a canceled subscription: 409")
    r = act(st, via, user, "cancel", atPeriodEnd=False)
    expect_error(r, 404, "no_subscription", f"{via}: cancel a canceled subscription: 404")
    r = request(st, via, user, method="GET")
    t.eq(((r.json() or {}).get("status"), (r.json() or {}).get("actions")), ("canceled", []),
         f"{via}: GET shows the canceled subscription")


def test_cancel_now_settings(st):
    prepare(st)
    user = fresh_user("cancelnow")
    sub = seed(st, user)
    env = {"STRIPE_CANCEL_NOW_PRORATE": "true", "STRIPE_CANCEL_NOW_INVOICE_NOW": "yes"}
    r = act(st, "cgi", user, "cancel", atPeriodEnd=False, env=env)
    expect_error(r, 500, "misconfigured", "STRIPE_CANCEL_NOW_INVOICE_NOW=yes: 500 misconfigured")
    env["STRIPE_CANCEL_NOW_INVOICE_NOW"] = "true"
    r = act(st, "cgi", user, "cancel", atPeriodEnd=False, env=env)
    d = calls(st, "DELETE")[-1]
    s = stripe_sub(st, sub["id"])
    inv = st.stripe.objects()["invoices"].get(s.get("latest_invoice") or "", {})
    t.ok(r.status == 200 and d["query"] == "prorate=true&invoice_now=true" and
         inv.get("total", 0) < 0, "prorate and invoice_now settings: DELETE credits the unused"
         " time on a final invoice", f"{r.status} {d['query']} {inv.get('total')}")


def test_ordering(st, mode):
    """An older customer.subscription.updated delivered after a change leaves the new plan."""
    prepare(st)
    user = fresh_user(f"order-{mode}")
    sub = seed(st, user)
    r = act(st, "http", user, "change", tier="basic", interval="yearly")
    t.eq(r.status, 200, f"{mode}: change to basic yearly")
    old = sub_event(sub, "customer.subscription.updated", int(time.time()) - 5)
    r = deliver_in(st, old, mode)
    rw = row(st, sub["id"])
    t.ok(r.status == 200 and (rw["tier"], rw["interval"], rw["price"]) ==
         ("basic", "yearly", "price_basic_yearly"),
         f"{mode}: an older updated event (old plan) delivered later leaves the new plan",
         f"{r.status} {rw}")
    own = [e for e in st.stripe.events("customer.subscription.updated")
           if e["data"]["object"]["id"] == sub["id"]]
    r = deliver_in(st, own[-1], mode)
    t.ok(r.status == 200 and row(st, sub["id"])["tier"] == "basic",
         f"{mode}: Stripe's own event for the change applies the same state", r.body)
    newer = json.loads(json.dumps(own[-1]["data"]["object"]))
    newer.update(cancel_at_period_end=True)
    ev = sub_event(newer, "customer.subscription.updated", int(time.time()) + 5)
    if mode == "refetch":
        st.stripe.put_subscription(sub["id"], newer)
    r = deliver_in(st, ev, mode)
    t.ok(r.status == 200 and row(st, sub["id"])["cape"] == "t",
         f"{mode}: a newer event still applies", r.body)


def test_retries(st):
    prepare(st)
    user = fresh_user("retry")
    sub = seed(st, user)
    path = f"/v1/subscriptions/{sub['id']}"
    st.stripe.fail(path=path, method="POST", mode="500", count=1)
    r = act(st, "http", user, "change", tier="basic", interval="monthly")
    posts = [c for c in calls(st, "POST") if c["path"] == path][-2:]
    t.ok(r.status == 200 and len(posts) == 2 and posts[0]["status"] == 500 and
         posts[1]["status"] == 200 and posts[0]["idempotency_key"] == posts[1]["idempotency_key"],
         "500 then 200: retried with the same Idempotency-Key",
         repr([(c["status"], c["idempotency_key"]) for c in posts]))
    t.eq(len([e for e in st.stripe.events("customer.subscription.updated")
              if e["data"]["object"]["id"] == sub["id"]]), 1, "changed once at Stripe")

    st.stripe.fail(path=path, method="POST", mode="reset_after", count=1)
    r = act(st, "http", user, "change", tier="pro", interval="monthly")
    posts = [c for c in calls(st, "POST") if c["path"] == path][-2:]
    t.ok(r.status == 200 and (r.json() or {}).get("tier") == "pro" and posts[1]["replayed"],
         "answer lost after Stripe changed it: the retry gets Stripe's replay", r.body)

    before = row(st, sub["id"])
    st.stripe.fail(path=path, method="POST", mode="400", count=1)
    r = act(st, "http", user, "change", tier="basic", interval="monthly")
    expect_error(r, 502, "stripe_error", "Stripe 400: 502 stripe_error")
    t.eq(row(st, sub["id"]), before, "Stripe 400: row unchanged (the refreshed state too)")
    st.stripe.fail(path=path, method="POST", mode="503", count=5)
    r = act(st, "http", user, "cancel")
    expect_error(r, 503, "unavailable", "503 on every try: 503 unavailable")
    t.eq(len([c for c in calls(st, "POST") if c["path"] == path and c["status"] == 503]), 3,
         "three tries, then 503")
    t.eq(row(st, sub["id"]), before, "Stripe unavailable: row unchanged")
    st.stripe.reset()
    prepare(st)
    r = act(st, "cgi", user, "cancel", env={"STRIPE_API_BASE": "http://127.0.0.1:1"})
    expect_error(r, 503, "unavailable", "Stripe unreachable: 503 unavailable")
    t.eq(row(st, sub["id"]), before, "Stripe unreachable: row unchanged")


def test_cancel_now_retry(st):
    prepare(st)
    user = fresh_user("delretry")
    sub = seed(st, user)
    st.stripe.fail(path=f"/v1/subscriptions/{sub['id']}", method="DELETE", mode="reset_after")
    r = act(st, "http", user, "cancel", atPeriodEnd=False)
    t.ok(r.status == 200 and (r.json() or {}).get("status") == "canceled" and
         [c["method"] for c in calls(st)[-3:]] == ["DELETE", "DELETE", "GET"],
         "DELETE answer lost: the retry's 404 is checked with a GET; 200 canceled",
         f"{r.body[:200]!r} {[(c['method'], c['status']) for c in calls(st)[-3:]]}")
    t.eq(row(st, sub["id"])["status"], "canceled", "row canceled")


def test_client_idempotency(st):
    prepare(st)
    user = fresh_user("idem")
    sub = seed(st, user)
    h = {"Idempotency-Key": "client-key-1"}
    r = act(st, "http", user, "change", tier="basic", interval="monthly", headers=h)
    k1 = calls(st, "POST")[-1]["idempotency_key"]
    t.ok(r.status == 200 and k1.startswith("subscription-"), "client key: change 200", r.body)
    n = len(calls(st))
    r = act(st, "http", user, "change", tier="basic", interval="monthly", headers=h)
    expect_error(r, 409, "no_change", "the same request again: the state says it is done (409)")
    t.eq(calls(st)[n:], [], "... without a Stripe call")
    r = act(st, "http", user, "cancel", headers=h)
    expect_error(r, 409, "conflict", "the same key for another request: 409 conflict")
    t.eq((calls(st, "POST")[-1]["idempotency_key"], row(st, sub["id"])["cape"]), (k1, "f"),
         "the conflicting request reached Stripe under the same key and changed nothing")
    other = fresh_user("idem-other")
    seed(st, other)
    act(st, "http", other, "cancel", headers=h)
    t.ok(calls(st, "POST")[-1]["idempotency_key"] != k1, "the client key is scoped to the user")
    r = act(st, "http", user, "cancel", headers={"Idempotency-Key": "x" * 256})
    expect_error(r, 400, "invalid_field", "Idempotency-Key over 255 characters: 400")
    t.eq((r.json() or {}).get("error", {}).get("field"), "Idempotency-Key",
         "... naming the header as the field")



def test_replay_after_another_change(st):
    """A client's retry under a key whose request took effect before another
    change: Stripe replays the first answer (the object as it was then); the
    row and the answer keep what Stripe holds now."""
    prepare(st)
    user = fresh_user("replay")
    sub = seed(st, user)
    path = f"/v1/subscriptions/{sub['id']}"
    act(st, "http", user, "change", tier="basic", interval="monthly",
        headers={"Idempotency-Key": "swap-1"})
    act(st, "http", user, "change", tier="pro", interval="monthly",
        headers={"Idempotency-Key": "swap-2"})
    n = len(calls(st))
    r = act(st, "http", user, "change", tier="basic", interval="monthly",
            headers={"Idempotency-Key": "swap-1"})
    mine = calls(st)[n:]
    t.eq([(c["method"], c["path"], c["replayed"]) for c in mine],
         [("GET", path, False), ("POST", path, True), ("GET", path, False)],
         "retry of an earlier change: Stripe replays it, the current state is fetched")
    t.ok(r.status == 200 and (r.json() or {}).get("tier") == "pro", "... and answered (pro)",
         r.body)
    t.eq((row(st, sub["id"])["price"], stripe_sub(st, sub["id"])["items"]["data"][0]["price"]["id"]),
         ("price_pro_monthly", "price_pro_monthly"), "... the row keeps the later change")

    user = fresh_user("replay-cancel")
    sub = seed(st, user)
    act(st, "http", user, "cancel", headers={"Idempotency-Key": "stop-1"})
    act(st, "http", user, "resume", headers={"Idempotency-Key": "go-1"})
    r = act(st, "http", user, "cancel", headers={"Idempotency-Key": "stop-1"})
    t.ok(r.status == 200 and (r.json() or {}).get("cancelAtPeriodEnd") is False and
         row(st, sub["id"])["cape"] == "f" and
         stripe_sub(st, sub["id"])["cancel_at_period_end"] is False,
         "retry of a cancel after a resume: row and answer not scheduled to cancel, as at Stripe",
         f"{r.body[:300]!r} {row(st, sub['id'])}")


def test_ended_at_stripe(st):
    """The row says live, Stripe has canceled it (its event missed): a cancel
    or resume that Stripe refuses is answered from Stripe's current state."""
    prepare(st)
    for action, scheduled, err in (("cancel", False, (404, "no_subscription")),
                                   ("resume", True, (409, "not_resumable"))):
        user = fresh_user(f"ended-{action}")
        sub = seed(st, user, cancel_at_period_end=scheduled)
        path = f"/v1/subscriptions/{sub['id']}"
        fake_api(st, "DELETE", path)
        n = len(calls(st))
        r = act(st, "http", user, action)
        t.eq([(c["method"], c["path"], c["status"]) for c in calls(st)[n:]],
             [("POST", path, 400), ("GET", path, 200)],
             f"{action} of a subscription Stripe has canceled: refused, then fetched")
        expect_error(r, *err, f"... answered {err[0]} {err[1]}")
        t.eq(row(st, sub["id"])["status"], "canceled", "... the row canceled, as at Stripe")

def test_auth(st, via):
    prepare(st)
    user = fresh_user(f"auth-{via}")
    victim = fresh_user(f"victim-{via}")
    sub = seed(st, victim)
    n = len(calls(st))
    r = request(st, via, user, {"userId": user, "action": "cancel"}, tok=False)
    expect_error(r, 401, "unauthorized", f"{via}: POST without credentials: 401")
    r = request(st, via, user, {"userId": victim, "action": "cancel"})
    expect_error(r, 403, "forbidden", f"{via}: cancel another user's subscription: 403")
    r = request(st, via, user, {"userId": victim, "action": "change", "tier": "basic",
                                "interval": "monthly"})
    expect_error(r, 403, "forbidden", f"{via}: change another user's subscription: 403")
    r = request(st, via, victim, {"userId": victim, "action": "cancel"},
                tok="usage-test-key-0123456789abcdef")
    expect_error(r, 401, "unauthorized", f"{via}: the usage API key may not act here")
    t.eq((calls(st)[n:], row(st, sub["id"])["cape"]), ([], "f"),
         f"{via}: refused callers reach neither Stripe nor the row")
    if via == "cgi":
        r = st.cgi("subscription", "POST", {"userId": victim, "action": "cancel"},
                   env={"REMOTE_USER": victim, "AUTH_JWT_SECRET": None})
        t.ok(r.status == 200 and row(st, sub["id"])["cape"] == "t",
             "REMOTE_USER set by Apache acts for that user", r.body)


def test_validation(st):
    user = fresh_user("valid")
    for field, body, name in [
            ("action", {"userId": user, "action": "upgrade"}, "unknown action"),
            ("action", {"userId": user}, "no action"),
            ("tier", {"userId": user, "action": "change", "interval": "monthly"}, "change without tier"),
            ("interval", {"userId": user, "action": "preview", "tier": "pro"}, "preview without interval"),
            ("tier", {"userId": user, "action": "change", "tier": "enterprise",
                      "interval": "monthly"}, "tier enterprise is not sold"),
            ("atPeriodEnd", {"userId": user, "action": "cancel", "atPeriodEnd": "no"}, "atPeriodEnd not boolean"),
            ("userId", {"userId": "", "action": "cancel"}, "empty userId")]:
        r = request(st, "http", user, body)
        t.ok(r.status == 400 and code(r) == "invalid_field" and
             r.json()["error"].get("field") == field, f"{name}: 400 naming {field}", r.body)
    r = request(st, "http", user, b'{"userId":')
    expect_error(r, 400, "invalid_json", "truncated JSON: 400 invalid_json")
    r = request(st, "http", user, {"userId": user, "action": "cancel"},
                headers={"Content-Type": "text/plain"})
    expect_error(r, 415, "unsupported_media_type", "text/plain: 415")
    r = st.http("DELETE", PATH, headers={"Authorization": "Bearer " + token(user)})
    t.ok(r.status == 405 and "GET" in r.headers.get("allow", "") and
         "POST" in r.headers.get("allow", ""), "DELETE: 405 with Allow", repr(r))


def test_cors(st):
    pre = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}
    r = st.http("OPTIONS", PATH, headers=pre)
    h = r.headers
    t.ok(r.status == 204 and h.get("access-control-allow-origin") == "https://app.example.test"
         and "GET" in h.get("access-control-allow-methods", "") and
         "POST" in h.get("access-control-allow-methods", ""),
         "preflight from an allowed origin: 204 with GET and POST allowed", repr(h))
    r = st.cgi("subscription", "OPTIONS", b"", headers=pre,
               env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                    "STRIPE_API_BASE": "http://127.0.0.1:1"})
    t.eq(r.status, 204, "preflight answered without database or Stripe")
    user = fresh_user("cors")
    r = request(st, "http", user, method="GET", headers={"Origin": "https://app.example.test"})
    t.ok(r.status == 200 and r.headers.get("access-control-allow-origin") ==
         "https://app.example.test", "GET from an allowed origin carries CORS headers", repr(r))
    r = request(st, "http", user, {"userId": user, "action": "cancel"},
                headers={"Origin": "https://evil.example"})
    t.ok(r.status == 404 and "access-control-allow-origin" not in r.headers,
         "another origin: no CORS headers (the 404 still answered)", repr(r))


def main():
    with t.guard("subscription stack"), Stack() as st:
        for via in ("http", "cgi"):
            for fn in (test_read, test_read_refusals, test_change, test_preview_create_prorations,
                       test_preview_invoiced_now, test_no_subscription, test_cancel_resume,
                       test_auth):
                t.run(fn, st, via)
        for mode in ("event", "refetch"):
            t.run(test_ordering, st, mode)
        for fn in (test_change_rules, test_cancel_now_settings, test_retries,
                   test_cancel_now_retry, test_client_idempotency, test_replay_after_another_change,
                   test_ended_at_stripe, test_validation, test_cors):
            t.run(fn, st)
        log = st.error_log()
        t.ok("sk_test_harness" not in log, "the Stripe key is not in Apache's error log")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
