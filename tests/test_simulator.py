#!/usr/bin/env python3
"""tests/simulator.py over HTTP (TAP): the Checkout page with every test card,
the 3D Secure step, what paying creates and in which order, the clock
(trial_will_end, trial end, renewal, the retry schedule ending in canceled or
unpaid, incomplete expiry, cancel at period end), webhook delivery (order,
signatures, retries with backoff, redelivery) to a receiver in this test and to
the real webhook.cgi behind Apache, with the database after each step, and
pages without scripts or external resources.

The helpers (Sim, user_row, ...) are also used by test_journey.py and
test_webhook_order.py."""
import hashlib
import hmac
import html
import http.client
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, make_jwt  # noqa: E402

DAY = 86400
CARD_OK = "4242 4242 4242 4242"
CARD_FAILS = "4000 0000 0000 0341"
CARD_3DS = "4000 0025 0000 3155"
CARD_NSF = "4000 0000 0000 9995"
# Pro has a 14-day trial, Basic none: both kinds of checkout in one stack.
SIM_SETTINGS = {"STRIPE_TRIAL_DAYS_PRO": "14", "STRIPE_TRIAL_DAYS_BASIC": "0",
                # The demo pages live on the simulator's port, which must be listed.
                "ALLOWED_REDIRECT_HOSTS": "127.0.0.1,{stripe_authority}"}
# What the simulator delivers unless told otherwise (tests/simulator.py).
DEFAULT_EVENTS = ["checkout.session.completed", "customer.subscription.created",
                  "customer.subscription.updated", "customer.subscription.deleted",
                  "customer.subscription.trial_will_end", "invoice.paid", "invoice.payment_failed"]


class Sim:
    """The simulator of a Stack(simulator=True): its control API, its pages as a
    form-posting client that does not follow redirects, and the app's checkout."""

    def __init__(self, st):
        self.st = st
        self.base = st.stripe_base
        u = urllib.parse.urlsplit(self.base)
        self.host, self.port = u.hostname, u.port

    def call(self, method, what, body=None):
        return self.st.stripe.call(method, "/_sim/" + what, body)

    def configure(self, **cfg):
        return self.call("POST", "config", cfg)

    def deliver_to_stack(self, **more):
        return self.configure(webhook_url=self.st.url("/api/stripe/webhook"),
                              webhook_secret=self.st.settings["STRIPE_WEBHOOK_SECRET"], **more)

    def now(self):
        return self.call("GET", "clock")["now"]

    def advance(self, by=None, to=None):
        body = {"to": to} if to is not None else {"by": by}
        body["timeout"] = 60
        r = self.call("POST", "advance", body)
        if not r["idle"]:
            raise AssertionError("deliveries still pending after advance: %r" % r["deliveries"])
        return r

    def wait(self, settled=False, timeout=60):
        r = self.call("POST", "wait", {"timeout": timeout, "settled": settled})
        if not r["idle"]:
            raise AssertionError("simulator deliveries still pending: %r" % r)

    def objects(self):
        return self.st.stripe.objects()

    def request(self, method, path, form=None, headers=None):
        """-> (status, headers (lower-case), body text); redirects are not followed."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            data = urllib.parse.urlencode(form).encode() if form is not None else None
            h = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
            h.update(headers or {})
            conn.request(method, path, data, h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, \
                r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def path(self, url):
        u = urllib.parse.urlsplit(url)
        return u.path + ("?" + u.query if u.query else "")

    def success_url(self):
        return self.base + "/demo/success?session_id={CHECKOUT_SESSION_ID}"

    def checkout(self, user, tier="pro", interval="monthly", email=None):
        """Asks the app (through Apache, with a JWT) for a Checkout Session; -> its url."""
        now = int(time.time())
        tok = make_jwt({"sub": user, "iat": now, "exp": now + 3600})
        body = {"userId": user, "tier": tier, "interval": interval,
                "successUrl": self.success_url(), "cancelUrl": self.base + "/demo/cancel",
                "email": email or user + "@example.test"}
        r = self.st.http("POST", "/api/stripe/create-checkout-session",
                         headers={"Authorization": "Bearer " + tok}, body=body)
        if r.status != 200:
            raise AssertionError("checkout for %s: %d %s" % (user, r.status, r.text))
        return r.json()["url"]

    def pay(self, url, card, name="Ada Lovelace", **over):
        form = {"email": "", "card_number": card, "card_expiry": "12 / 34", "card_cvc": "123",
                "name": name, "country": "US", "postal_code": "10001"}
        form.update(over)
        return self.request("POST", self.path(url), form)

    def app_portal(self, user, flow=None):
        """A Billing Portal session asked of the app (POST /api/stripe/portal-session
        through Apache, with the user's JWT), returning to the dashboard; -> its url."""
        now = int(time.time())
        tok = make_jwt({"sub": user, "iat": now, "exp": now + 3600})
        body = {"userId": user, "returnUrl": self.base + "/"}
        if flow:
            body["flow"] = flow
        r = self.st.http("POST", "/api/stripe/portal-session",
                         headers={"Authorization": "Bearer " + tok}, body=body)
        if r.status != 200:
            raise AssertionError("portal session for %s: %d %s" % (user, r.status, r.text))
        return r.json()["url"]

    def portal(self, customer, **params):
        """A Billing Portal session made through the simulator's API; -> its url."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            pairs = {"customer": customer, **params}
            conn.request("POST", "/v1/billing_portal/sessions", urllib.parse.urlencode(pairs),
                         {"Authorization": "Bearer " + self.st.settings["STRIPE_SECRET_KEY"],
                          "Content-Type": "application/x-www-form-urlencoded"})
            r = conn.getresponse()
            doc = json.loads(r.read())
        finally:
            conn.close()
        if r.status != 200:
            raise AssertionError("portal session: %r" % doc)
        return doc["url"]


def error_text(body):
    m = re.search(r'id="error">([^<]*)<', body)
    return html.unescape(m.group(1)) if m else None


def user_row(st, user):
    """The user's latest subscription row: status, tier, times as unix seconds."""
    cols = ("stripe_subscription_id", "status", "tier", "billing_interval", "trial_end",
            "current_period_end", "cancel_at_period_end", "canceled_at", "ended_at",
            "cancellation_reason", "unit_amount", "stripe_customer_id")
    times = {"trial_end", "current_period_end", "canceled_at", "ended_at"}
    rows = st.psql("SELECT %s FROM subscriptions WHERE user_id = '%s' ORDER BY id DESC LIMIT 1"
                   % (", ".join("extract(epoch FROM %s)::bigint" % c if c in times else c
                                for c in cols), user))
    if not rows:
        return None
    row = dict(zip(cols, rows[0]))
    for c in times | {"unit_amount"}:
        row[c] = int(row[c]) if row[c] is not None else None
    return row


def usage(st, user):
    r = st.http("GET", "/api/usage?userId=" + urllib.parse.quote(user),
                headers={"Authorization": "Bearer " + st.settings["USAGE_API_KEY"]})
    j = r.json() or {}
    return j.get("tier"), j.get("status")


def events_of(objs, cus=None, sub=None, since=0):
    """Event types (oldest first) about a customer or subscription."""
    out = []
    for e in objs["events"][since:]:
        o = e["data"]["object"]
        ids = {o.get("id"), o.get("customer"), o.get("subscription"),
               ((o.get("parent") or {}).get("subscription_details") or {}).get("subscription")}
        if (cus and cus in ids) or (sub and sub in ids):
            out.append(e)
    return out


def sub_of(objs, cus):
    subs = [s for s in objs["subscriptions"].values() if s["customer"] == cus]
    return max(subs, key=lambda s: s["created"]) if subs else None


def period(sub):
    it = sub["items"]["data"][0]
    return it["current_period_start"], it["current_period_end"]


# --------------------------------------------------------------------------


def check_checkout(t, st, sim):
    """Every test card at the Checkout page; what paying creates; the database."""
    t0 = sim.now()
    url = sim.checkout("sim_ok", "pro", "monthly")
    sid = url.rsplit("/", 1)[1]
    t.ok(url.startswith(sim.base + "/c/pay/cs_test_"), "the session url is the simulator's page",
         url)
    status, h, body = sim.request("GET", sim.path(url))
    t.ok(status == 200 and "14 days free" in body and "$15.00" in body and "Start trial" in body,
         "checkout page: plan, price, trial", body[:300])

    for card, form, want in (
            ("4242 4242 4242 4241", {}, "Your card number is incorrect."),
            (CARD_OK, {"card_expiry": "01 / 20"}, "Your card's expiration year is in the past."),
            (CARD_OK, {"card_cvc": "1"}, "Your card's security code is incomplete."),
            (CARD_OK, {"name": ""}, "Your name is incomplete."),
            (CARD_OK, {"postal_code": ""}, "Your billing address is incomplete."),
            ("4000 0566 5566 5556", {}, None)):
        status, _, body = sim.pay(url, card, **form)
        got = error_text(body)
        t.ok(status == 402 and (got == want if want else "non test card" in (got or "")),
             "checkout refuses %s %s: %s" % (card, form or "", want or "a non-test card"), got)

    before = len(sim.objects()["events"])
    status, h, _ = sim.pay(url, CARD_OK)
    t.eq((status, h.get("location")), (303, sim.base + "/demo/success?session_id=" + sid),
         "4242: 303 to success_url with {CHECKOUT_SESSION_ID} filled in")
    objs = sim.objects()
    s = objs["checkout_sessions"][sid]
    sub = objs["subscriptions"].get(s["subscription"] or "")
    t.ok(s["status"] == "complete" and s["payment_status"] == "no_payment_required"
         and sub is not None and sub["status"] == "trialing"
         and sub["trial_end"] - sub["trial_start"] == 14 * DAY
         and period(sub) == (sub["trial_start"], sub["trial_end"])
         and sub["metadata"].get("userId") == "sim_ok" and sub["trial_start"] >= t0,
         "4242 with a trial: session complete, subscription trialing for 14 days",
         {"session": s["status"], "sub": sub and sub["status"]})
    types = [e["type"] for e in events_of(objs, cus=s["customer"], since=before)]
    t.eq(types, ["customer.subscription.created", "invoice.created", "invoice.finalized",
                 "invoice.paid", "checkout.session.completed"],
         "4242 with a trial: the events, in Stripe's order")
    inv = objs["invoices"][sub["latest_invoice"]]
    t.eq((inv["amount_due"], inv["status"], inv["billing_reason"]), (0, "paid", "subscription_create"),
         "the trial's first invoice: 0, paid")
    status, _, body = sim.request("GET", sim.path(url))
    t.ok("This checkout session is complete." in body, "a paid session's page says complete")
    n = len(sim.objects()["subscriptions"])
    status, _, body = sim.pay(url, CARD_OK)
    t.ok(status == 402 and "This checkout session is complete." in body
         and len(sim.objects()["subscriptions"]) == n, "paying a complete session again: refused")

    url = sim.checkout("sim_nsf", "basic", "monthly")
    n = len(sim.objects()["subscriptions"])
    status, _, body = sim.pay(url, CARD_NSF)
    t.eq((status, error_text(body)), (402, "Your card has insufficient funds."),
         "9995: declined, insufficient funds, on the page")
    url2 = sim.checkout("sim_declined", "basic", "monthly")
    status, _, body = sim.pay(url2, CARD_FAILS)
    t.eq((status, error_text(body)), (402, "Your card was declined."),
         "0341 without a trial: the first payment is declined on the page")
    t.eq(len(sim.objects()["subscriptions"]), n, "declined cards create no subscription")

    url = sim.checkout("sim_3ds", "basic", "yearly")
    sid = url.rsplit("/", 1)[1]
    status, h, _ = sim.pay(url, CARD_3DS)
    auth = h.get("location", "")
    t.ok(status == 303 and auth.startswith("/authenticate/"), "3155: sent to the confirm step",
         (status, auth))
    status, _, body = sim.request("GET", auth)
    t.ok(status == 200 and 'value="complete"' in body and 'value="fail"' in body,
         "the confirm step offers complete and fail")
    status, h, _ = sim.request("POST", auth, {"result": "fail"})
    t.eq((status, h.get("location")), (303, sim.path(url)), "failed authentication: back to checkout")
    _, _, body = sim.request("GET", sim.path(url))
    t.ok("unable to authenticate" in (error_text(body) or ""), "which says so", error_text(body))
    status, h, _ = sim.pay(url, CARD_3DS)
    before = len(sim.objects()["events"])
    status, h, _ = sim.request("POST", h["location"], {"result": "complete"})
    t.eq((status, h.get("location")), (303, sim.base + "/demo/success?session_id=" + sid),
         "completed authentication: success_url")
    objs = sim.objects()
    s = objs["checkout_sessions"][sid]
    sub = objs["subscriptions"][s["subscription"]]
    inv = objs["invoices"][sub["latest_invoice"]]
    t.ok(sub["status"] == "active" and sub["trial_end"] is None and inv["amount_paid"] == 9000
         and s["payment_status"] == "paid" and s["amount_total"] == 9000,
         "3155 without a trial: active, first invoice of 90.00 paid")
    types = [e["type"] for e in events_of(objs, cus=s["customer"], since=before)]
    t.eq(types, ["customer.subscription.created", "invoice.created", "invoice.finalized",
                 "invoice.paid", "customer.subscription.updated", "checkout.session.completed"],
         "without a trial: created incomplete, paid, updated to active, then completed")
    created = next(e for e in events_of(objs, cus=s["customer"], since=before)
                   if e["type"] == "customer.subscription.created")
    t.eq(created["data"]["object"]["status"], "incomplete", "created as incomplete")

    sim.wait()
    t.eq(usage(st, "sim_ok"), ("pro", "trialing"), "GET /api/usage: sim_ok pro, trialing")
    t.eq(usage(st, "sim_3ds"), ("basic", "active"), "GET /api/usage: sim_3ds basic, active")
    t.eq(usage(st, "sim_nsf"), ("free", "none"), "GET /api/usage: sim_nsf free, none")
    row = user_row(st, "sim_3ds")
    t.ok(row and row["billing_interval"] == "yearly" and row["unit_amount"] == 9000,
         "database: yearly at 90.00", row)


def check_clock(t, st, sim):
    """Trial reminder, trial end, renewal, the retry schedule, its two endings."""
    url = sim.checkout("sim_dunning", "pro", "monthly")
    t.eq(sim.pay(url, CARD_FAILS)[0], 303, "0341 with a trial: checkout succeeds")
    sim.wait()
    objs = sim.objects()
    ok_sub = sub_of(objs, user_row(st, "sim_ok")["stripe_customer_id"])
    dun_cus = user_row(st, "sim_dunning")["stripe_customer_id"]
    dun = sub_of(objs, dun_cus)
    te = dun["trial_end"]
    mark = len(objs["events"])

    r = sim.advance(to=te - 3 * DAY - 1)
    t.eq([e["type"] for e in r["events"]
          if e["object"] == dun["id"]], [], "nothing before trial_end - 3 days")
    r = sim.advance(by="1s")
    warn = [e for e in r["events"] if e["type"] == "customer.subscription.trial_will_end"]
    t.ok(any(e["object"] == dun["id"] and e["created"] == te - 3 * DAY for e in warn),
         "trial_will_end exactly 3 days before trial_end", r["events"])
    t.ok(all(d["attempts"] and d["attempts"][0]["status"] == 200 for d in r["deliveries"]),
         "delivered to webhook.cgi: 200", r["deliveries"])
    t.eq(int(st.psql_one("SELECT count(*) FROM notifications WHERE user_id = 'sim_dunning'")), 1,
         "database: a trial_will_end notification for the mailer")

    r = sim.advance(to=te)
    objs = sim.objects()
    dun = objs["subscriptions"][dun["id"]]
    inv = objs["invoices"][dun["latest_invoice"]]
    t.ok(dun["status"] == "past_due" and period(dun)[0] == te and inv["status"] == "open"
         and inv["attempt_count"] == 1 and inv["next_payment_attempt"] == te + 3 * DAY,
         "trial end with 0341: invoice open after attempt 1, next in 3 days, past_due",
         (dun["status"], inv["status"], inv["attempt_count"]))
    mine = [e["type"] for e in r["events"] if e["object"] in (dun["id"], inv["id"])]
    t.eq(mine, ["customer.subscription.updated", "invoice.created", "invoice.finalized",
                "invoice.payment_failed", "customer.subscription.updated"],
         "trial end events: active, invoice, payment failed, past_due")
    t.eq((user_row(st, "sim_dunning")["status"], usage(st, "sim_dunning")), ("past_due", ("pro", "past_due")),
         "database and /api/usage: past_due keeps pro")
    ok_row = user_row(st, "sim_ok")
    t.ok(ok_row["status"] == "active" and ok_row["current_period_end"] ==
         period(objs["subscriptions"][ok_sub["id"]])[1], "4242's trial ended too: active",
         ok_row)

    r = sim.advance(to=te + 15 * DAY)
    fails = [e for e in r["events"] if e["type"] == "invoice.payment_failed"
             and e["object"] == inv["id"]]
    t.eq([e["created"] - te for e in fails], [3 * DAY, 8 * DAY, 15 * DAY],
         "retries 3, 5 and 7 days after the previous attempt")
    objs = sim.objects()
    dun = objs["subscriptions"][dun["id"]]
    t.ok(dun["status"] == "canceled" and dun["ended_at"] == te + 15 * DAY
         and dun["cancellation_details"]["reason"] == "payment_failed",
         "after the 4th failed attempt: canceled (payment_failed)")
    row = user_row(st, "sim_dunning")
    t.ok(row["status"] == "canceled" and row["cancellation_reason"] == "payment_failed"
         and row["ended_at"] == te + 15 * DAY, "database: canceled, payment_failed", row)
    t.eq(usage(st, "sim_dunning"), ("free", "canceled"), "/api/usage: free, canceled")

    ok_sub = objs["subscriptions"][ok_sub["id"]]
    end = period(ok_sub)[1]
    r = sim.advance(to=end)
    objs = sim.objects()
    ok_sub = objs["subscriptions"][ok_sub["id"]]
    inv = objs["invoices"][ok_sub["latest_invoice"]]
    t.ok(period(ok_sub)[0] == end and inv["status"] == "paid" and inv["amount_paid"] == 1500
         and inv["billing_reason"] == "subscription_cycle", "renewal: next period, 15.00 paid")
    t.eq(user_row(st, "sim_ok")["current_period_end"], period(ok_sub)[1],
         "database: the renewed period")

    sim.configure(after_retries="unpaid")
    url = sim.checkout("sim_unpaid", "pro", "monthly")
    sim.pay(url, CARD_FAILS)
    sim.advance(by="14d")
    sim.advance(by="15d")
    t.eq((user_row(st, "sim_unpaid")["status"], usage(st, "sim_unpaid")),
         ("unpaid", ("free", "unpaid")), "after_retries unpaid: unpaid, on free")
    sim.configure(after_retries="cancel")

    st.stripe.create_subscriptions(customer="cus_incomplete", price="price_pro_monthly",
                                   status="incomplete", created=sim.now())
    r = sim.advance(by="23h")
    t.ok(any(e["type"] == "customer.subscription.updated" for e in r["events"])
         and sub_of(sim.objects(), "cus_incomplete")["status"] == "incomplete_expired",
         "an incomplete subscription expires after 23 hours")

    cus = user_row(st, "sim_3ds")["stripe_customer_id"]
    sub = sub_of(sim.objects(), cus)
    status, h, _ = sim.request("POST", sim.path(sim.portal(cus)),
                               {"action": "cancel", "subscription": sub["id"],
                                "feedback": "too_expensive"})
    sim.wait()
    row = user_row(st, "sim_3ds")
    t.ok(status == 303 and row["cancel_at_period_end"] == "t" and row["status"] == "active",
         "portal cancel: cancel_at_period_end, still active", row)
    r = sim.advance(to=period(sub)[1])
    row = user_row(st, "sim_3ds")
    t.ok(row["status"] == "canceled" and row["ended_at"] == period(sub)[1]
         and row["cancellation_reason"] == "cancellation_requested",
         "at period end: canceled (cancellation_requested)", row)
    types = [e["type"] for e in r["events"] if e["object"] == sub["id"]]
    t.eq(types, ["customer.subscription.deleted"], "and only customer.subscription.deleted")
    return mark


def check_card_recovery(t, st, sim):
    """A past_due subscription whose customer enters a working card in the
    portal: Stripe sets the card on the subscription (updated, still
    past_due), retries the open invoice (paid) and the subscription is active
    again (updated), all in the same second."""
    url = sim.checkout("sim_recover", "pro", "monthly")
    sim.pay(url, CARD_FAILS)
    sim.advance("14d")
    row = user_row(st, "sim_recover")
    t.eq(row["status"], "past_due", "the trial's first payment failed: past_due")
    status, h, _ = sim.request("POST", sim.path(sim.portal(row["stripe_customer_id"])),
                               {"action": "card", "card_number": CARD_OK,
                                "card_expiry": "12 / 34", "card_cvc": "123"})
    sim.wait()
    sub = sim.objects()["subscriptions"][row["stripe_subscription_id"]]
    inv = sim.objects()["invoices"][sub["latest_invoice"]]
    t.ok(status == 303 and "saved" in h.get("location", "") and sub["status"] == "active"
         and inv["status"] == "paid" and inv["attempt_count"] == 2,
         "portal: a new card pays the open invoice at once; the simulator's subscription is active")
    types = [e["type"] for e in events_of(sim.objects(), sub=sub["id"])][-3:]
    t.eq(types, ["customer.subscription.updated", "invoice.paid", "customer.subscription.updated"],
         "events: card set on the subscription, invoice paid, active again")
    # Both updates come in the same second: data.previous_attributes says
    # the second one moved the status away from past_due (should_apply).
    t.ok(user_row(st, "sim_recover")["status"] == "active",
         "database: active again after the new card (event mode, same-second updates)",
         user_row(st, "sim_recover"))


class Receiver:
    """A webhook endpoint in this test: records each POST, answers from a plan."""

    def __init__(self):
        self.got = []           # (monotonic time, headers, body)
        self.plan = {}          # event id -> statuses to answer, in turn (then 200)
        self.lock = threading.Lock()
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                eid = json.loads(body)["id"]
                with rec.lock:
                    rec.got.append((time.monotonic(), dict(self.headers), body))
                    todo = rec.plan.get(eid) or []
                    status = todo.pop(0) if todo else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def of(self, eid):
        with self.lock:
            return [g for g in self.got if json.loads(g[2])["id"] == eid]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def verify(header, body, secret, now):
    parts = dict(p.split("=", 1) for p in header.split(",") if p.startswith("t="))
    sigs = [p[3:] for p in header.split(",") if p.startswith("v1=")]
    want = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return want in sigs and abs(int(parts["t"]) - now) <= 5


def check_delivery(t, st, sim):
    """Signatures, order, retries with backoff, giving up, redelivery."""
    rx = Receiver()
    try:
        sim.configure(webhook_url=rx.url, webhook_secret="whsec_one,whsec_two",
                      enabled_events=["*"], retry_backoff=[0.4, 0.8])
        rx.plan["evt_sim_a"] = [500, 503]
        st.stripe.add_events([{"id": "evt_sim_a", "type": "ping.a",
                               "data": {"object": {"id": "x_a"}}},
                              {"id": "evt_sim_b", "type": "ping.b",
                               "data": {"object": {"id": "x_b"}}}])
        sim.wait(settled=True)
        got_a, got_b = rx.of("evt_sim_a"), rx.of("evt_sim_b")
        t.eq(len(got_a), 3, "500, 503, then 200: three attempts")
        t.ok(len(got_a) == 3 and got_a[1][0] - got_a[0][0] >= 0.4
             and got_a[2][0] - got_a[1][0] >= 0.8, "retried after the backoff (0.4 s, 0.8 s)",
             [round(g[0] - got_a[0][0], 3) for g in got_a])
        t.ok(got_b and got_b[0][0] < got_a[1][0], "a later event goes ahead of a retry")
        h, body = got_a[0][1], got_a[0][2]
        now = int(time.time())
        t.ok(verify(h["Stripe-Signature"], body, "whsec_one", now) and
             verify(h["Stripe-Signature"], body, "whsec_two", now),
             "signed with each secret (t = real time)", h.get("Stripe-Signature"))
        t.ok(h.get("Content-Type", "").startswith("application/json") and
             h.get("User-Agent", "").startswith("Stripe/1.0"), "Stripe's headers")
        recs = {r["event"]: r for r in sim.call("GET", "deliveries")}
        ra = recs["evt_sim_a"]
        t.ok(ra["state"] == "succeeded" and [x["status"] for x in ra["attempts"]] == [500, 503, 200],
             "the delivery record lists every attempt", ra)
        sim.call("POST", "redeliver", {"event": "evt_sim_b"})
        sim.wait(settled=True)
        t.eq(len(rx.of("evt_sim_b")), 2, "redeliver sends it again")

        sim.configure(webhook_url="http://127.0.0.1:9/nobody")
        st.stripe.add_events([{"id": "evt_sim_c", "type": "ping.c",
                               "data": {"object": {"id": "x_c"}}}])
        sim.wait(settled=True)
        rc = {r["event"]: r for r in sim.call("GET", "deliveries")}["evt_sim_c"]
        t.ok(rc["state"] == "failed" and len(rc["attempts"]) == 3
             and all(x["status"] is None and x["error"] for x in rc["attempts"]),
             "nobody listening: 3 attempts, then failed", rc)
    finally:
        rx.close()
        sim.deliver_to_stack(enabled_events=list(DEFAULT_EVENTS), retry_backoff=[60, 600, 3600])


def check_pages(t, sim):
    """Every kind of page: no script, nothing from elsewhere, a CSP that forbids both."""
    objs = sim.objects()
    cus = next(iter(objs["customers"]))
    pages = {"/": None, "/demo/success?session_id=x": None, "/demo/cancel": None}
    open_url = sim.checkout("sim_pages", "pro", "yearly")
    pages[sim.path(open_url)] = None
    pages[sim.path(sim.portal(cus, return_url="http://127.0.0.1:1/back"))] = None
    pages["/events/" + objs["events"][-1]["id"]] = None
    status, h, _ = sim.pay(open_url, CARD_3DS)
    pages[h["location"]] = None
    bad = []
    for path in pages:
        status, h, body = sim.request("GET", path)
        csp = h.get("content-security-policy", "")
        refs = re.findall(r'(?:href|action|src)="([^"]*)"', body)
        external = [r for r in refs if not r.startswith("/") and r not in (
            "http://127.0.0.1:1/back", sim.base + "/demo/cancel")]
        if status != 200 or "default-src 'none'" not in csp or re.search(
                r"<script|<link|<iframe|@import|url\(|\son[a-z]+=", body, re.I) or external:
            bad.append((path, status, csp, external))
    t.ok(not bad, "%d pages: HTML forms only, no script, nothing loaded from elsewhere"
         % len(pages), bad)
    status, _, body = sim.request("POST", "/clock", {"by": "1h"})
    t.eq(status, 303, "the dashboard's advance button answers with a redirect")


def check_control(t, sim):
    for body, name in (({"by": "3 days"}, "a malformed duration"), ({"to": 1}, "going back")):
        try:
            sim.call("POST", "advance", body)
            t.ok(False, "advance refuses " + name)
        except Exception as e:  # harness: StackError with the 400
            t.ok("400" in str(e), "advance refuses " + name, str(e))
    try:
        sim.configure(after_retries="never")
        t.ok(False, "config refuses an unknown after_retries")
    except Exception as e:
        t.ok("400" in str(e), "config refuses an unknown after_retries", str(e))


def main():
    t = Tap()
    settings = dict(SIM_SETTINGS, STRIPE_SYNC_MODE="event")
    with t.guard("simulator"), Stack(settings=settings, simulator=True) as st:
        sim = Sim(st)
        sim.deliver_to_stack()
        check_checkout(t, st, sim)
        check_clock(t, st, sim)
        check_card_recovery(t, st, sim)
        check_pages(t, sim)
        check_delivery(t, st, sim)
        check_control(t, sim)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
