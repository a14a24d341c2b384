#!/usr/bin/env python3
"""Stripe simulator: the fake Stripe API (tests/fake_stripe.py) plus what a
person sees and what time does, so that the whole subscription journey runs
offline.  A development and test tool (Python 3 standard library only).

    python3 tests/simulator.py [--host 127.0.0.1] [--port 0] [--log FILE]

Same command line, API and control API (/_fake/...) as tests/fake_stripe.py,
whose header documents them (tests/test_fake_stripe.py passes against both but
for the two hosted URLs, which point here).  Added here:

Pages (HTML without JavaScript or any external resource; Content-Security-Policy
default-src 'none'):
  /                        dashboard: simulated time with buttons to advance it, the
                           webhook endpoint, customers, subscriptions, invoices,
                           checkout and portal sessions, events with their deliveries
  /events/{id}             one event: its payload, every delivery attempt, Resend
  /c/pay/{session}         a Checkout Session's page (the session's `url` points here):
                           plan, price, trial, email, card, expiry, CVC, name, and
                           country + postal code when billing_address_collection=required
  /authenticate/{token}    the 3D Secure step of card 4000 0025 0000 3155
  /p/session/{token}       a Billing Portal session's page (its `url`): change plan,
                           cancel at period end, resume, update the card; flow_data
                           sessions show their flow and honour after_completion
  /demo/success, /demo/cancel  stand-ins for an app's success_url / cancel_url

Test cards (docs.stripe.com/testing; any future expiry, any 3-digit CVC):
  4242 4242 4242 4242  succeeds, now and later
  4000 0000 0000 0341  attaches, but every charge fails (card_declined,
                       generic_decline): with a trial, checkout succeeds and the
                       first invoice fails at the trial's end; without a trial,
                       checkout shows the decline
  4000 0025 0000 3155  asks for authentication (a confirm step) when it is set up;
                       later off-session charges succeed
  4000 0000 0000 9995  declined, insufficient_funds (nothing is created)
  4000 0000 0000 0002  declined, generic_decline
  any other number: "Your card number is incorrect." (Luhn) or declined as a
  non-test card.

What paying creates (events in this order): customer.created (only without a
session customer), customer.subscription.created (trialing with
subscription_data[trial_period_days], else incomplete), invoice.created,
invoice.finalized, invoice.paid (0 during a trial), customer.subscription.updated
(incomplete -> active, without a trial), checkout.session.completed; the browser
is sent (303) to success_url with {CHECKOUT_SESSION_ID} filled in.

The clock.  now() = real time + an offset that only grows (POST /_sim/advance,
`tools/stack advance 3d`, the dashboard's buttons).  Advancing runs, in time
order, everything that falls due, each at its own simulated time:
  * customer.subscription.trial_will_end 3 days before trial_end
  * trial end: the period moves to [trial_end, trial_end + interval), status
    active (customer.subscription.updated), the first invoice
    (billing_reason subscription_cycle, pending prorations included) is
    created, finalized and charged: invoice.paid, or invoice.payment_failed and
    status past_due (a second customer.subscription.updated)
  * period end: renewal the same way for active and past_due subscriptions;
    a subscription with cancel_at_period_end (or cancel_at) ends instead:
    customer.subscription.deleted, reason cancellation_requested
  * retries of a failed invoice (RETRY_DAYS, "days after the previous attempt",
    like the Dashboard's custom retry policy): attempts at 0, +3, +5 and +7
    days, i.e. 4 attempts over 15 days; a paid retry makes the subscription
    active again; after the last failed attempt the subscription is canceled
    (customer.subscription.deleted, reason payment_failed) or, with
    after_retries "unpaid", becomes unpaid; the invoice stays open.  Updating
    the card in the portal retries open invoices at once.
  * an incomplete subscription expires after 23 hours (incomplete_expired).
Unpaid subscriptions are not renewed.  Webhook signatures use the real time
(webhook.cgi checks the timestamp against its own clock); event `created` is
simulated time.

Webhooks.  With an endpoint configured (POST /_sim/config), every recorded
event of an enabled type is POSTed to it in the order recorded, one at a time,
as Stripe sends them: JSON body, Stripe-Signature t=<unix time>,v1=<HMAC-SHA256
of "t.body"> (one v1 per secret while rotating).  A non-2xx answer or no answer
(30 s) is retried after RETRY_BACKOFF seconds (Stripe's sandbox retries three
times over a few hours; later events are delivered meanwhile, so retried
events arrive out of order, as they do from Stripe).  Enabled by default: the
seven types README.md tells to subscribe to.

Control API (JSON; errors 400 {"error": "..."}):
  GET  /_sim/clock          {"now", "iso", "offset"}
  POST /_sim/advance        {"by": "3d" | "1w2d" | "36h" | seconds, or "to": unix time,
                            "wait": true (default: answer once each new event had its
                            first delivery attempt), "timeout": 60} -> {"from", "now",
                            "events": [...], "deliveries": [...], "summary": text};
                            with Accept: text/plain the summary only
  GET  /_sim/config, POST /_sim/config  {"webhook_url", "webhook_secret" (comma list),
                            "enabled_events" (list, ["*"] = all), "retry_backoff"
                            (seconds, one per retry), "retry_days", "after_retries"
                            ("cancel" | "unpaid")}; GET masks the secret
  GET  /_sim/deliveries     every delivery record with its attempts, oldest first
  POST /_sim/wait           {"timeout": 30, "settled": false}: until every delivery had
                            its first attempt (settled: until none will be retried)
                            -> {"idle": bool, "pending": n}
  POST /_sim/redeliver      {"event": "evt_..."}: deliver it again now
POST /_fake/reset also resets the clock, the deliveries and the configuration.

Prices: on top of the fake's catalogue, the plans of the local stack
(price_<tier>_<interval>, see PLANS).  Nothing here is authenticated or
protected against cross-site requests: it listens on loopback, for one developer.
"""
import copy
import hashlib
import hmac
import html
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_stripe as fs  # noqa: E402

DAY = 86400
TRIAL_WILL_END_BEFORE = 3 * DAY
INCOMPLETE_EXPIRES_AFTER = 23 * 3600
RETRY_DAYS = (3, 5, 7)
RETRY_BACKOFF = (60, 600, 3600)
DELIVERY_TIMEOUT = 30
MAX_STEPS = 20000  # one advance; a safety net against a schedule that never ends
DEFAULT_EVENTS = ("checkout.session.completed", "customer.subscription.created",
                  "customer.subscription.updated", "customer.subscription.deleted",
                  "customer.subscription.trial_will_end", "invoice.paid",
                  "invoice.payment_failed")

# The local stack's plans (tools/stack sets STRIPE_PRICE_<TIER>_<INTERVAL> to these ids).
PLANS = {
    "price_basic_monthly": ("Basic", 900, "month"),
    "price_basic_yearly": ("Basic", 9000, "year"),
    "price_pro_monthly": ("Pro", 1500, "month"),
    "price_pro_yearly": ("Pro", 15000, "year"),
    "price_enterprise_monthly": ("Enterprise", 4900, "month"),
    "price_enterprise_yearly": ("Enterprise", 49000, "year"),
}

CARDS = {
    "4242424242424242": {"charge": "ok", "setup": "ok"},
    "4000000000000341": {"charge": "fail", "setup": "ok", "decline_code": "generic_decline"},
    "4000002500003155": {"charge": "ok", "setup": "authenticate"},
    "4000000000009995": {"charge": "fail", "setup": "fail", "decline_code": "insufficient_funds"},
    "4000000000000002": {"charge": "fail", "setup": "fail", "decline_code": "generic_decline"},
}
DECLINE_MESSAGES = {"insufficient_funds": "Your card has insufficient funds.",
                    "generic_decline": "Your card was declined."}
FEEDBACK = (("", "No reason given"), ("too_expensive", "It's too expensive"),
            ("missing_features", "Some features are missing"),
            ("switched_service", "I'm switching to a different service"),
            ("unused", "I don't use the service enough"),
            ("customer_service", "Customer service was less than expected"),
            ("too_complex", "Ease of use was less than expected"),
            ("low_quality", "Quality was less than expected"), ("other", "Other reason"))
COUNTRIES = (("US", "United States"), ("GB", "United Kingdom"), ("DE", "Germany"),
             ("FR", "France"), ("NL", "Netherlands"), ("CA", "Canada"), ("AU", "Australia"))
CTX = {"livemode": False, "request_id": None, "idempotency_key": None}


class Sim:
    """Everything the simulator adds to the fake's STATE (guarded by STATE.lock)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.payment_methods = {}   # pm id -> {"card": {...}, "customer", "number"}
        self.trial_warned = set()   # (subscription id, trial_end) already warned
        self.auth = {}              # authentication token -> pending card action
        self.session_errors = {}    # checkout session id -> last error shown
        fs.CLOCK_OFFSET = 0
        for pid, (name, amount, interval) in PLANS.items():
            fs.control_put_price(pid, {"unit_amount": amount, "currency": "usd",
                                       "recurring": {"interval": interval}, "nickname": name})


SIM = None
DELIVERIES = None


# --------------------------------------------------------------------------
# Time


def set_clock(t):
    """Move the simulated clock to t (never backwards)."""
    fs.CLOCK_OFFSET = max(t, fs.now()) - int(time.time())


UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


def parse_duration(text):
    """'3d', '1w2d', '36h', '90m', '45s' or a number of seconds -> seconds."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if not isinstance(text, str) or not re.fullmatch(r"(?:\d+[smhdw])+|\d+", text.strip()):
        raise ValueError("a duration is like 3d, 1w2d, 36h, 90m, 45s or a number of seconds")
    text = text.strip()
    if text.isdigit():
        return int(text)
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", text))


def iso(ts):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else ""


def day(ts):
    return time.strftime("%d %b %Y", time.gmtime(ts)) if ts else ""


def span(seconds):
    seconds = int(seconds)
    d, rest = divmod(abs(seconds), DAY)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    parts = [f"{d}d" if d else "", f"{h}h" if h else "", f"{m}m" if m and not d else ""]
    return ("-" if seconds < 0 else "") + ("".join(parts) or "0m")


# --------------------------------------------------------------------------
# Cards and payment methods


def luhn_ok(number):
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def read_card(form, now):
    """The card fields of a form -> (card dict, None) or (None, error message)."""
    number = re.sub(r"[\s-]", "", form.get("card_number", ""))
    if not number.isdigit() or not 13 <= len(number) <= 19 or not luhn_ok(number):
        return None, "Your card number is incorrect."
    m = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", form.get("card_expiry", ""))
    if not m or not 1 <= int(m.group(1)) <= 12:
        return None, "Your card's expiration date is incomplete."
    month, year = int(m.group(1)), int(m.group(2))
    year += 2000 if year < 100 else 0
    t = time.gmtime(now)
    if (year, month) < (t.tm_year, t.tm_mon):
        return None, "Your card's expiration year is in the past."
    if not re.fullmatch(r"\d{3,4}", form.get("card_cvc", "").strip()):
        return None, "Your card's security code is incomplete."
    behaviour = CARDS.get(number)
    if behaviour is None:
        return None, ("Your card was declined. Your request was in test mode, but used a "
                      "non test card. For a list of valid test cards, visit: "
                      "https://stripe.com/docs/testing.")
    brand = {"4": "visa", "5": "mastercard", "3": "amex"}.get(number[0], "unknown")
    return {"number": number, "brand": brand, "last4": number[-4:], "exp_month": month,
            "exp_year": year, **behaviour}, None


def setup_refusal(card):
    """The message when a card cannot even be set up (attached), else None."""
    if card["setup"] == "fail":
        return DECLINE_MESSAGES.get(card.get("decline_code"), "Your card was declined.")
    return None


def attach_card(cus_id, card):
    """A payment method for card, attached to the customer; the customer's
    payments fail from now on if the card's charges do (the fake's declines)."""
    pm = "pm_" + fs.rand_id(24)
    SIM.payment_methods[pm] = {"id": pm, "customer": cus_id, "card": {
        k: card[k] for k in ("brand", "last4", "exp_month", "exp_year")}, "number": card["number"]}
    if card["charge"] == "fail":
        fs.STATE.declines[cus_id] = card.get("decline_code") or "generic_decline"
    else:
        fs.STATE.declines.pop(cus_id, None)
    return pm


def customer_card(cus_id):
    """The customer's default card, else the one attached last (Checkout sets it
    on the subscription only)."""
    cus = fs.STATE.customers.get(cus_id) or {}
    pm = (cus.get("invoice_settings") or {}).get("default_payment_method")
    if pm not in SIM.payment_methods:
        mine = [p for p in SIM.payment_methods.values() if p["customer"] == cus_id]
        pm = mine[-1]["id"] if mine else None
    return pm


def card_label(pm_id):
    pm = SIM.payment_methods.get(pm_id or "")
    if pm is None:
        return ""
    c = pm["card"]
    return "%s •••• %s (%02d/%02d)" % (c["brand"].capitalize(), c["last4"], c["exp_month"],
                                       c["exp_year"] % 100)


# --------------------------------------------------------------------------
# Subscriptions, invoices and the events they produce (all under STATE.lock)


def store_sub(old, new):
    """Store new and record customer.subscription.updated when something changed."""
    fs.STATE.subscriptions[new["id"]] = new
    prev = fs.previous_attributes(old, new)
    if prev:
        fs.record_event(CTX, "customer.subscription.updated", new, prev)


def set_period(sub, start, end):
    for it in fs.sub_items(sub):
        it["current_period_start"], it["current_period_end"] = start, end


def period_of(sub):
    items = fs.sub_items(sub)
    return fs.item_period(sub, items[0]) if items else (None, None)


def first_price(sub):
    return fs.item_price(sub, fs.sub_items(sub)[0])


def charge(inv, t):
    """Finalize and charge a new invoice; on failure schedule the first retry."""
    outcome = fs.payment_outcome(inv, "allow_incomplete")
    if outcome == "failed" and CONFIG["retry_days"]:
        inv["next_payment_attempt"] = t + CONFIG["retry_days"][0] * DAY
    fs.settle_invoice(CTX, inv, outcome)
    return outcome


def bill_period(sub_id, start, end, reason, t):
    """Move the subscription to [start, end), invoice that period, charge it."""
    old = fs.STATE.subscriptions[sub_id]
    new = copy.deepcopy(old)
    set_period(new, start, end)
    if new["status"] == "trialing":
        new["status"] = "active"
    lines = fs.take_pending(sub_id) + [
        fs.renewal_line(new, it, fs.item_price(new, it), start, end) for it in fs.sub_items(new)]
    inv = fs.build_invoice(fs.STATE.customers.get(fs.cus_of(new)), new, lines, reason,
                           (start, end))
    new["latest_invoice"] = inv["id"]
    store_sub(old, new)
    if charge(inv, t) == "failed" and new["status"] == "active":
        store_sub(new, dict(copy.deepcopy(new), status="past_due"))


def end_subscription(sub_id, t, reason):
    old = fs.STATE.subscriptions[sub_id]
    new = copy.deepcopy(old)
    new.update(status="canceled", ended_at=t, cancel_at=None)
    if new.get("canceled_at") is None:
        new["canceled_at"] = t
    if reason == "payment_failed":
        new["cancel_at_period_end"] = False
    det = dict(new.get("cancellation_details") or {"comment": None, "feedback": None})
    det["reason"] = reason
    new["cancellation_details"] = det
    fs.STATE.subscriptions[sub_id] = new
    fs.record_event(CTX, "customer.subscription.deleted", new)


def open_invoices(sub_id):
    return [i for i in fs.STATE.invoices.values()
            if i.get("status") == "open" and invoice_sub(i) == sub_id]


def invoice_sub(inv):
    return ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")


def retry_invoice(inv_id, t, last_allowed=True):
    """One more payment attempt on an open invoice (the retry schedule's, or
    one a new card triggers: last_allowed=False never ends the subscription)."""
    inv = fs.STATE.invoices[inv_id]
    n = inv.get("attempt_count", 0) + 1
    outcome = fs.payment_outcome(inv, "allow_incomplete")
    inv.update(attempt_count=n, attempted=True)
    sub_id = invoice_sub(inv)
    sub = fs.STATE.subscriptions.get(sub_id)
    if outcome == "paid":
        inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0,
                   next_payment_attempt=None)
        inv["status_transitions"]["paid_at"] = t
        fs.record_event(CTX, "invoice.paid", inv)
        if sub and sub["status"] in ("past_due", "unpaid") and not open_invoices(sub_id):
            store_sub(sub, dict(copy.deepcopy(sub), status="active"))
        return
    days = CONFIG["retry_days"]
    if last_allowed:
        inv["next_payment_attempt"] = t + days[n - 1] * DAY if n - 1 < len(days) else None
    fs.record_event(CTX, "invoice.payment_failed", inv)
    if inv["next_payment_attempt"] is None and sub and sub["status"] == "past_due":
        if CONFIG["after_retries"] == "unpaid":
            store_sub(sub, dict(copy.deepcopy(sub), status="unpaid"))
        else:
            end_subscription(sub_id, t, "payment_failed")


def due_actions():
    """Everything that falls due at some time: [(time, order, kind, id)]."""
    out = []
    for sub in fs.STATE.subscriptions.values():
        status, sid = sub.get("status"), sub["id"]
        if status in ("canceled", "incomplete_expired") or not fs.sub_items(sub):
            continue
        try:
            start, end = period_of(sub)
        except fs.StripeError:
            continue  # a hand-made subscription without a period: nothing to run
        if status == "incomplete":
            out.append((sub["created"] + INCOMPLETE_EXPIRES_AFTER, 5, "expire", sid))
            continue
        if status == "trialing" and sub.get("trial_end"):
            te = sub["trial_end"]
            if (sid, te) not in SIM.trial_warned:
                out.append((te - TRIAL_WILL_END_BEFORE, 0, "trial_will_end", sid))
            if not sub.get("cancel_at") or sub["cancel_at"] > te:
                out.append((te, 3, "trial_end", sid))
        if sub.get("cancel_at"):
            out.append((sub["cancel_at"], 2, "cancel", sid))
        if status in ("active", "past_due") and (not sub.get("cancel_at")
                                                 or sub["cancel_at"] > end):
            out.append((end, 4, "renew", sid))
    for inv in fs.STATE.invoices.values():
        sub = fs.STATE.subscriptions.get(invoice_sub(inv)) or {}
        if inv.get("status") == "open" and inv.get("next_payment_attempt") and \
                sub.get("status") not in ("canceled", "incomplete_expired"):
            out.append((inv["next_payment_attempt"], 1, "retry", inv["id"]))
    return sorted(out)


def run_action(kind, oid, t):
    if kind == "trial_will_end":
        sub = fs.STATE.subscriptions[oid]
        SIM.trial_warned.add((oid, sub["trial_end"]))
        fs.record_event(CTX, "customer.subscription.trial_will_end", sub)
    elif kind == "trial_end":
        sub = fs.STATE.subscriptions[oid]
        start = sub["trial_end"]
        end = fs.add_interval(start, *fs.interval_of(first_price(sub)))
        bill_period(oid, start, end, "subscription_cycle", t)
    elif kind == "renew":
        sub = fs.STATE.subscriptions[oid]
        start, end = period_of(sub)
        nxt = fs.next_period_end(sub.get("billing_cycle_anchor") or start, end,
                                 *fs.interval_of(first_price(sub)))
        bill_period(oid, end, nxt, "subscription_cycle", t)
    elif kind == "cancel":
        end_subscription(oid, t, "cancellation_requested")
    elif kind == "retry":
        retry_invoice(oid, t)
    elif kind == "expire":
        old = fs.STATE.subscriptions[oid]
        store_sub(old, dict(copy.deepcopy(old), status="incomplete_expired", ended_at=t))


def advance_to(target):
    """Run everything due up to target, in time order, then set the clock to target.
    Returns the events recorded meanwhile."""
    with fs.STATE.lock:
        first = len(fs.STATE.events)
        if target < fs.now():
            raise ValueError("the simulated clock only moves forward")
        for _ in range(MAX_STEPS):
            due = [a for a in due_actions() if a[0] <= target]
            if not due:
                break
            t, _, kind, oid = due[0]
            set_clock(t)
            run_action(kind, oid, fs.now())
        else:
            raise ValueError("more than %d things fell due in one advance; advance less"
                             % MAX_STEPS)
        set_clock(target)
        return copy.deepcopy(fs.STATE.events[first:])


# --------------------------------------------------------------------------
# Checkout


def session_price(sid):
    items = fs.STATE.line_items.get(sid) or []
    pid = ((items[0].get("price") or {}).get("id")) if items else None
    price = fs.STATE.prices.get(pid)
    qty = (items[0].get("quantity") or 1) if items else 1
    return price, qty


def session_trial_days(sid):
    sd = (fs.STATE.session_params.get(sid) or {}).get("subscription_data") or {}
    v = sd.get("trial_period_days") if isinstance(sd, dict) else None
    return int(v) if isinstance(v, str) and v.isdigit() else 0


def session_open(s):
    """Open sessions past expires_at expire (checkout.session.expired) when looked at."""
    if s["status"] == "open" and fs.now() >= s["expires_at"]:
        s["status"] = "expired"
        fs.record_event(CTX, "checkout.session.expired", s)
    return s["status"] == "open"


def checkout_pay(sid, form):
    """The Pay button.  Returns ("redirect", url) or ("error", message)."""
    with fs.STATE.lock:
        s = fs.STATE.sessions.get(sid)
        if s is None or not session_open(s):
            return "error", "This checkout session is no longer open."
        t = fs.now()
        price, qty = session_price(sid)
        if price is None:
            return "error", "This session's price is unknown to the simulator."
        card, err = read_card(form, t)
        if err:
            return "error", err
        email = s.get("customer_email") or form.get("email", "").strip()
        cus = fs.STATE.customers.get(s.get("customer") or "")
        if cus is not None:
            email = cus.get("email") or email
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email or ""):
            return "error", "Your email address is incomplete."
        name = form.get("name", "").strip()
        if not name:
            return "error", "Your name is incomplete."
        address = None
        if s.get("billing_address_collection") == "required":
            if form.get("country") not in dict(COUNTRIES) or not form.get("postal_code", "").strip():
                return "error", "Your billing address is incomplete."
            address = {"city": None, "country": form["country"], "line1": None, "line2": None,
                       "postal_code": form["postal_code"].strip(), "state": None}
        refusal = setup_refusal(card)
        if refusal is None and card["charge"] == "fail" and not session_trial_days(sid):
            refusal = DECLINE_MESSAGES.get(card.get("decline_code"), "Your card was declined.")
        if refusal:
            return "error", refusal
        if card["setup"] == "authenticate":
            token = fs.rand_id(24)
            SIM.auth[token] = {"kind": "checkout", "session": sid, "card": card, "email": email,
                               "name": name, "address": address}
            return "redirect", "/authenticate/" + token
        return "redirect", complete_checkout(sid, card, email, name, address)


def complete_checkout(sid, card, email, name, address):
    """Create what Stripe creates when a subscription-mode session is paid;
    returns the success URL."""
    s = fs.STATE.sessions[sid]
    t = fs.now()
    price, qty = session_price(sid)
    params = fs.STATE.session_params.get(sid) or {}
    sd = params.get("subscription_data") if isinstance(params.get("subscription_data"),
                                                       dict) else {}
    cus_id = s.get("customer")
    if cus_id not in fs.STATE.customers:
        cus = fs.new_customer({"email": email, "name": name}, False)
        if cus_id:
            cus["id"] = cus_id
        fs.STATE.customers[cus["id"]] = cus
        fs.STATE.placed(cus["id"])
        fs.record_event(CTX, "customer.created", cus)
        cus_id = cus["id"]
    pm = attach_card(cus_id, card)
    days = session_trial_days(sid)
    sub = fs.make_subscription({"customer": cus_id, "price": price["id"], "quantity": qty,
                                "status": "trialing" if days else "incomplete", "created": t,
                                "metadata": fs.clean_metadata(sd.get("metadata"))})
    sub["default_payment_method"] = pm
    end = fs.add_interval(t, *fs.interval_of(price))
    if days:
        end = t + days * DAY
        sub.update(trial_start=t, trial_end=end, billing_cycle_anchor=end)
    set_period(sub, t, end)
    item = fs.sub_items(sub)[0]
    if days:
        lines = [fs.invoice_line(sub, item["id"], price, qty, 0, t, end, False,
                                 "Trial period for %s" % fs.product_name(price))]
    else:
        lines = [fs.renewal_line(sub, item, price, t, end)]
    inv = fs.build_invoice(fs.STATE.customers[cus_id], sub, lines, "subscription_create", (t, t))
    sub["latest_invoice"] = inv["id"]
    fs.STATE.subscriptions[sub["id"]] = sub
    fs.STATE.placed(sub["id"])
    fs.record_event(CTX, "customer.subscription.created", sub)
    fs.settle_invoice(CTX, inv, "paid")
    if not days:
        store_sub(sub, dict(copy.deepcopy(sub), status="active"))
    s.update(status="complete", customer=cus_id, subscription=sub["id"], invoice=inv["id"],
             payment_status="no_payment_required" if inv["amount_due"] == 0 else "paid",
             amount_subtotal=price["unit_amount"] * qty, amount_total=inv["amount_due"],
             currency=price.get("currency"),
             customer_details={"address": address, "email": email, "name": name,
                               "phone": None, "tax_exempt": "none", "tax_ids": []})
    fs.record_event(CTX, "checkout.session.completed", s)
    SIM.session_errors.pop(sid, None)
    return (s.get("success_url") or "/").replace("{CHECKOUT_SESSION_ID}", sid)


# --------------------------------------------------------------------------
# Billing Portal


def portal_session(token):
    for s in fs.STATE.portal_sessions.values():
        if urllib.parse.urlsplit(s["url"]).path == "/p/session/" + token:
            return s
    return None


def customer_subs(cus_id):
    subs = [s for s in fs.STATE.subscriptions.values() if fs.cus_of(s) == cus_id]
    return sorted(subs, key=lambda s: (s["status"] in ("canceled", "incomplete_expired"),
                                       -s.get("created", 0)))


def portal_act(ps, form):
    """One portal form.  Returns (message or None, error or None, redirect or None)."""
    action, sub_id = form.get("action"), form.get("subscription", "")
    cus_id = ps["customer"]
    sub = fs.STATE.subscriptions.get(sub_id)
    if action != "card" and (sub is None or fs.cus_of(sub) != cus_id):
        return None, "No such subscription.", None
    try:
        if action == "plan":
            price = fs.STATE.prices.get(form.get("price", ""))
            if price is None:
                return None, "Choose a plan.", None
            item = fs.sub_items(sub)[0]
            fs.op_update_subscription(CTX, {"items": [{"id": item["id"], "price": price["id"]}],
                                            "proration_behavior": "create_prorations"}, sub_id)
            return "Your plan is now %s." % plan_label(price), None, None
        if action == "cancel":
            p = {"cancel_at_period_end": "true"}
            if form.get("feedback"):
                p["cancellation_details"] = {"feedback": form["feedback"],
                                             "comment": form.get("comment", "")}
            fs.op_update_subscription(CTX, p, sub_id)
            return "Your plan will be canceled on %s." % day(period_of(sub)[1]), None, None
        if action == "resume":
            fs.op_update_subscription(CTX, {"cancel_at_period_end": "false"}, sub_id)
            return "Your plan will renew.", None, None
        if action == "card":
            card, err = read_card(form, fs.now())
            err = err or (setup_refusal(card) if card else None)
            if err:
                return None, err, None
            if card["setup"] == "authenticate":
                token = fs.rand_id(24)
                SIM.auth[token] = {"kind": "portal_card", "portal": ps["id"], "card": card}
                return None, None, "/authenticate/" + token
            return update_card(cus_id, card), None, None
    except fs.StripeError as e:
        return None, e.body["error"]["message"], None
    return None, "Unknown action.", None


def update_card(cus_id, card):
    """New default card for the customer and its live subscriptions; open
    invoices are retried at once (Stripe retries when a card is added)."""
    pm = attach_card(cus_id, card)
    old = fs.STATE.customers[cus_id]
    new = copy.deepcopy(old)
    new["invoice_settings"] = dict(new.get("invoice_settings") or {}, default_payment_method=pm)
    fs.STATE.customers[cus_id] = new
    fs.record_event(CTX, "customer.updated", new, fs.previous_attributes(old, new))
    for sub in customer_subs(cus_id):
        if sub["status"] not in ("canceled", "incomplete_expired"):
            store_sub(sub, dict(copy.deepcopy(sub), default_payment_method=pm))
            for inv in open_invoices(sub["id"]):
                retry_invoice(inv["id"], fs.now(), last_allowed=False)
    return "Your card ending in %s is saved." % card["last4"]


def finish_flow(ps, done):
    """Where a flow session goes once done (flow.after_completion)."""
    ac = ((ps.get("flow") or {}).get("after_completion")) or {}
    if ac.get("type") == "redirect":
        return (ac.get("redirect") or {}).get("return_url")
    return None


def plan_label(price):
    r = price.get("recurring") or {}
    return "%s (%s / %s)" % (fs.product_name(price), fs.money(price["unit_amount"],
                                                              price.get("currency")),
                             r.get("interval"))


# --------------------------------------------------------------------------
# Webhook delivery

CONFIG = {}


def default_config():
    return {"webhook_url": None, "webhook_secret": None, "enabled_events": list(DEFAULT_EVENTS),
            "retry_backoff": list(RETRY_BACKOFF), "retry_days": list(RETRY_DAYS),
            "after_retries": "cancel"}


def set_config(doc):
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    unknown = set(doc) - set(default_config())
    if unknown:
        raise ValueError("unknown fields: " + ", ".join(sorted(unknown)))
    url = doc.get("webhook_url", CONFIG["webhook_url"])
    if url is not None and (not isinstance(url, str) or
                            urllib.parse.urlsplit(url).scheme not in ("http", "https")):
        raise ValueError("webhook_url must be an http(s) URL or null")
    sec = doc.get("webhook_secret", CONFIG["webhook_secret"])
    if sec is not None and (not isinstance(sec, str) or not sec.strip(", ")):
        raise ValueError("webhook_secret must be a non-empty string (comma-separated) or null")
    ev = doc.get("enabled_events", CONFIG["enabled_events"])
    if not isinstance(ev, list) or not all(isinstance(x, str) for x in ev):
        raise ValueError("enabled_events must be a list of event types (or [\"*\"])")
    for key in ("retry_backoff", "retry_days"):
        v = doc.get(key, CONFIG[key])
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and
                                              not isinstance(x, bool) and 0 <= x <= 86400 * 60
                                              for x in v):
            raise ValueError(key + " must be a list of non-negative numbers")
    if doc.get("after_retries", "cancel") not in ("cancel", "unpaid"):
        raise ValueError('after_retries must be "cancel" or "unpaid"')
    with DELIVERIES.cv:
        CONFIG.update(doc)
        DELIVERIES.cv.notify_all()


def public_config():
    c = dict(CONFIG)
    if c["webhook_secret"]:
        c["webhook_secret"] = ",".join(s[:10] + "…" for s in c["webhook_secret"].split(","))
    return c


def signature(secrets, t, payload):
    sigs = ["v1=" + hmac.new(s.strip().encode(), b"%d." % t + payload, hashlib.sha256).hexdigest()
            for s in secrets.split(",") if s.strip()]
    return "t=%d," % t + ",".join(sigs)


class Deliveries:
    """One worker POSTs events to the endpoint in the order recorded; failed
    ones wait for their retry while later ones go ahead."""

    def __init__(self):
        self.cv = threading.Condition()
        self.recs = {}   # event id -> record
        self.seq = 0
        threading.Thread(target=self.run, daemon=True).start()

    def reset(self):
        with self.cv:
            self.recs = {}
            CONFIG.clear()
            CONFIG.update(default_config())
            self.cv.notify_all()

    def wanted(self, etype):
        ev = CONFIG["enabled_events"]
        return "*" in ev or etype in ev

    def add(self, ev, force=False):
        """Queue an event (EVENT_HOOKS; called under STATE.lock)."""
        with self.cv:
            if not CONFIG["webhook_url"] or not CONFIG["webhook_secret"] or \
                    not (force or self.wanted(ev["type"])):
                return False
            rec = self.recs.get(ev["id"])
            if rec is None:
                self.seq += 1
                rec = self.recs[ev["id"]] = {
                    "event": ev["id"], "type": ev["type"], "created": ev["created"],
                    "seq": self.seq, "attempts": [], "state": "pending",
                    "payload": json.dumps(ev, indent=2).encode()}
            rec.update(state="pending", next_at=time.monotonic(), retries_left=None)
            self.cv.notify_all()
            return True

    def next_due(self):
        due = [r for r in self.recs.values() if r["state"] == "pending"]
        return min(due, key=lambda r: (r["next_at"], r["seq"])) if due else None

    def run(self):
        while True:
            with self.cv:
                rec = self.next_due()
                wait = None if rec is None else rec["next_at"] - time.monotonic()
                if rec is None or wait > 0:
                    self.cv.wait(wait)
                    continue
                rec["state"] = "sending"
                url, secret = CONFIG["webhook_url"], CONFIG["webhook_secret"]
                backoff = list(CONFIG["retry_backoff"])
            attempt = self.post(url, secret, rec["payload"])
            with self.cv:
                if self.recs.get(rec["event"]) is not rec:
                    continue  # reset meanwhile
                rec["attempts"].append(attempt)
                if rec["retries_left"] is None:
                    rec["retries_left"] = backoff
                if attempt["status"] is not None and 200 <= attempt["status"] < 300:
                    rec["state"] = "succeeded"
                elif rec["retries_left"]:
                    rec["state"] = "pending"
                    rec["next_at"] = time.monotonic() + rec["retries_left"].pop(0)
                    attempt["next_retry_in"] = round(rec["next_at"] - time.monotonic(), 3)
                else:
                    rec["state"] = "failed"
                self.cv.notify_all()

    @staticmethod
    def post(url, secret, payload):
        u = urllib.parse.urlsplit(url)
        t0 = time.monotonic()
        at = int(time.time())
        attempt = {"at": at, "sim_at": fs.now(), "status": None, "error": None, "ms": None,
                   "response": None}
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=DELIVERY_TIMEOUT)
        try:
            conn.request("POST", (u.path or "/") + ("?" + u.query if u.query else ""), payload, {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Accept": "*/*; q=0.5, application/xml", "Cache-Control": "no-cache",
                "Stripe-Signature": signature(secret, at, payload)})
            r = conn.getresponse()
            attempt["status"] = r.status
            attempt["response"] = r.read(2000).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            attempt["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            conn.close()
        attempt["ms"] = int((time.monotonic() - t0) * 1000)
        return attempt

    def wait(self, timeout, settled=False, ids=None):
        """Until every (or every listed) delivery had its first attempt, or none
        will be tried again (settled).  True if so before the timeout."""
        def busy():
            recs = [self.recs[i] for i in ids if i in self.recs] if ids is not None \
                else list(self.recs.values())
            return [r for r in recs if r["state"] in ("pending", "sending")
                    and (settled or not r["attempts"])]
        with self.cv:
            ok = self.cv.wait_for(lambda: not busy(), timeout)
            return ok, len(busy())

    def snapshot(self, ids=None):
        with self.cv:
            recs = sorted(self.recs.values(), key=lambda r: r["seq"])
            return [{k: copy.deepcopy(v) for k, v in r.items()
                     if k not in ("payload", "retries_left", "next_at")}
                    for r in recs if ids is None or r["event"] in ids]

    def of(self, eid):
        with self.cv:
            r = self.recs.get(eid)
            return copy.deepcopy({k: v for k, v in r.items() if k != "payload"}) if r else None


# --------------------------------------------------------------------------
# Pages: plain HTML forms, no JavaScript, nothing loaded from elsewhere

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
       "frame-ancestors 'none'")
CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1a1f36;background:#f6f8fa}
a{color:#635bff}
.top{background:#fff;border-bottom:1px solid #e3e8ee;padding:10px 24px;display:flex;gap:16px;
 align-items:center;flex-wrap:wrap}
.top b{font-size:16px}
.badge{background:#ffde92;color:#8a3c00;font-weight:600;font-size:12px;border-radius:4px;
 padding:2px 6px}
.wrap{max-width:1180px;margin:0 auto;padding:20px 24px}
.checkout{display:flex;flex-wrap:wrap;max-width:940px;margin:32px auto;gap:56px;padding:0 24px}
.checkout>div{flex:1;min-width:300px}
.price{font-size:36px;font-weight:600;margin:4px 0}
.price small{font-size:15px;font-weight:400;color:#697386}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:20px 24px;
 margin-bottom:18px}
label{display:block;font-size:13px;color:#4f566b;margin:12px 0 4px;font-weight:500}
input,select,textarea{width:100%;padding:9px 10px;border:1px solid #d5dbe1;border-radius:6px;
 font:inherit;background:#fff}
.row{display:flex;gap:8px}.row>*{flex:1}
button{background:#635bff;color:#fff;border:0;border-radius:6px;padding:11px 16px;
 font-weight:600;font-size:15px;cursor:pointer}
button.wide{width:100%;margin-top:18px;font-size:16px}
button.light{background:#fff;color:#1a1f36;border:1px solid #d5dbe1;font-weight:500;
 padding:6px 10px;font-size:13px}
button.danger{background:#df1b41}
form.inline{display:inline}
.error{background:#fde8e8;color:#9b1c1c;padding:10px 12px;border-radius:6px;margin:12px 0}
.note{background:#e3f4ff;color:#0a4f7a;padding:10px 12px;border-radius:6px;margin:12px 0}
.muted{color:#697386}.small{font-size:13px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e3e8ee;padding:6px 8px;text-align:left;vertical-align:top}
th{color:#4f566b;font-weight:600;background:#fafbfc}
h2{font-size:17px;margin:26px 0 8px}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#fff;border:1px solid #e3e8ee;padding:12px;overflow:auto;max-height:520px}
.pill{display:inline-block;border-radius:10px;padding:0 7px;font-size:12px;font-weight:600;
 background:#e3e8ee;color:#3c4257}
.s-active,.s-paid,.s-succeeded,.s-complete{background:#d7f7c2;color:#05690d}
.s-trialing,.s-open,.s-pending,.s-sending{background:#cff5f6;color:#0055bc}
.s-past_due,.s-incomplete{background:#fcedb9;color:#a82c00}
.s-unpaid,.s-failed{background:#ffe7f2;color:#b3093c}
.tests{font-size:13px;color:#4f566b;margin-top:18px}
.tests td{background:transparent;padding:3px 6px}.tests code{white-space:nowrap}
.checkout code{word-break:break-all}
"""


def esc(x):
    return html.escape("" if x is None else str(x), quote=True)


def pill(status):
    return '<span class="pill s-%s">%s</span>' % (esc(status), esc(status))


def page(title, body, nav=True):
    top = ('<div class="top"><b>Stripe simulator</b><span class="badge">TEST MODE</span>'
           '<a href="/">Dashboard</a><span class="muted small">simulated time %s</span></div>'
           % esc(iso(fs.now()))) if nav else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>%s</title><style>%s</style></head><body>%s%s</body></html>'
            % (esc(title), CSS, top, body)).encode("utf-8")


def card_fields(prefix_note=""):
    return ("""<label for="card_number">Card information</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number"
 placeholder="1234 1234 1234 1234">
<div class="row"><input id="card_expiry" name="card_expiry" placeholder="MM / YY"
 autocomplete="cc-exp" aria-label="Expiration"><input id="card_cvc" name="card_cvc"
 placeholder="CVC" inputmode="numeric" autocomplete="cc-csc" aria-label="CVC"></div>%s"""
            % prefix_note)


TEST_CARDS_HTML = """<table class="tests"><tr><td colspan="2"><b>Test cards</b> (any future
expiry, any CVC)</td></tr>
<tr><td><code>4242 4242 4242 4242</code></td><td>succeeds</td></tr>
<tr><td><code>4000 0000 0000 0341</code></td><td>attaches, then every charge fails</td></tr>
<tr><td><code>4000 0025 0000 3155</code></td><td>asks for authentication</td></tr>
<tr><td><code>4000 0000 0000 9995</code></td><td>declined: insufficient funds</td></tr></table>"""


def checkout_page(sid, error=None, form=None):
    form = form or {}
    with fs.STATE.lock:
        s = fs.STATE.sessions.get(sid)
        if s is None:
            return 404, page("Not found", '<div class="wrap"><h1>No such checkout session'
                             '</h1></div>')
        is_open = session_open(s)
        price, qty = session_price(sid)
        days = session_trial_days(sid)
        cus = fs.STATE.customers.get(s.get("customer") or "") or {}
        email = cus.get("email") or s.get("customer_email") or form.get("email", "")
        error = error or SIM.session_errors.pop(sid, None)
        s = copy.deepcopy(s)
    back = ('<a href="%s">&larr; Back</a>' % esc(s["cancel_url"])) if s.get("cancel_url") else ""
    if not is_open:
        msg = {"complete": "This checkout session is complete.",
               "expired": "This checkout session has expired."}.get(s["status"], s["status"])
        link = ('<p><a href="%s">Continue</a></p>' % esc(
            s["success_url"].replace("{CHECKOUT_SESSION_ID}", sid))
            if s["status"] == "complete" and s.get("success_url") else "")
        return 200, page("Checkout", '<div class="wrap">%s<h1>%s</h1>%s</div>'
                         % (back, esc(msg), link))
    if price is None:
        return 200, page("Checkout", '<div class="wrap">%s<div class="error">The price of '
                         'this session is unknown to the simulator (add it with PUT '
                         '/_fake/prices/...).</div></div>' % back)
    interval = (price.get("recurring") or {}).get("interval", "")
    amount = fs.money(price["unit_amount"] * qty, price.get("currency"))
    name = fs.product_name(price)
    if days:
        headline = '%d days free' % days
        then = ('<p>Then %s per %s starting %s</p>'
                % (esc(amount), esc(interval), esc(day(fs.now() + days * DAY))))
        button = "Start trial"
    else:
        headline = '%s <small>per %s</small>' % (esc(amount), esc(interval))
        then = ""
        button = "Subscribe"
    country = form.get("country", "US")
    address = ""
    if s.get("billing_address_collection") == "required":
        address = ('<label for="country">Billing address</label><select id="country" '
                   'name="country">%s</select><input id="postal_code" name="postal_code" '
                   'placeholder="ZIP / Postal code" value="%s" autocomplete="postal-code">'
                   % ("".join('<option value="%s"%s>%s</option>'
                              % (c, " selected" if c == country else "", esc(n))
                              for c, n in COUNTRIES), esc(form.get("postal_code", ""))))
    body = """<div class="checkout"><div>%(back)s
<p class="muted" style="margin-top:28px">Subscribe to %(name)s</p>
<div class="price" id="headline">%(headline)s</div>%(then)s
<div class="card small"><div class="row"><span>%(name)s</span><span style="text-align:right">
%(amount)s / %(interval)s</span></div>
<div class="muted">Billed %(interval)sly%(trial)s</div></div>
<p class="muted small">Session <code>%(sid)s</code></p></div>
<div><form class="card" method="post" action="/c/pay/%(sid)s" id="payment-form">
<h3 style="margin:0 0 4px">Pay with card</h3>%(error)s
<label for="email">Email</label><input id="email" name="email" type="email" value="%(email)s"
 %(ro)s autocomplete="email">
%(card)s
<label for="name">Cardholder name</label><input id="name" name="name" value="%(cname)s"
 placeholder="Full name on card" autocomplete="cc-name">
%(address)s
<button class="wide" id="submit" type="submit">%(button)s</button>
%(tests)s</form></div></div>""" % {
        "back": back, "name": esc(name), "headline": headline, "then": then,
        "amount": esc(amount), "interval": esc(interval), "sid": esc(sid),
        "trial": esc(", after a %d-day free trial" % days if days else ""),
        "error": '<div class="error" id="error">%s</div>' % esc(error) if error else "",
        "email": esc(email), "ro": "readonly" if cus.get("email") else "",
        "card": card_fields(), "cname": esc(form.get("name", "")), "address": address,
        "button": button, "tests": TEST_CARDS_HTML}
    return 200, page("Subscribe to %s" % name, body)


def authenticate_page(token, error=None):
    with fs.STATE.lock:
        a = SIM.auth.get(token)
        if a is None:
            return 404, page("Not found", '<div class="wrap"><h1>No such authentication</h1>'
                             '</div>')
        label = "Card •••• %s" % a["card"]["last4"]
    body = """<div class="checkout"><div class="card" style="max-width:460px;margin:auto">
<h2 style="margin-top:0">3D Secure 2 Test Page</h2>
<p>%s asks for authentication. This is what your bank's confirm step looks like in test mode.</p>
<form method="post" action="/authenticate/%s"><div class="row">
<button id="fail" name="result" value="fail" class="danger" type="submit">Fail authentication</button>
<button id="complete" name="result" value="complete" type="submit">Complete authentication</button>
</div></form></div></div>""" % (esc(label), esc(token))
    return 200, page("Authenticate", body)


def authenticate_post(token, form):
    """Returns the URL the browser goes to next."""
    with fs.STATE.lock:
        a = SIM.auth.pop(token, None)
        if a is None:
            return "/"
        ok = form.get("result") == "complete"
        msg = ("We are unable to authenticate your payment method. Please choose a "
               "different payment method and try again.")
        if a["kind"] == "checkout":
            if not ok:
                SIM.session_errors[a["session"]] = msg
                return "/c/pay/" + a["session"]
            s = fs.STATE.sessions.get(a["session"])
            if s is None or not session_open(s):
                return "/c/pay/" + a["session"]
            return complete_checkout(a["session"], a["card"], a["email"], a["name"],
                                     a["address"])
        ps = fs.STATE.portal_sessions.get(a["portal"])
        if ps is None:
            return "/"
        path = urllib.parse.urlsplit(ps["url"]).path
        if not ok:
            return path + "?" + urllib.parse.urlencode({"error": msg})
        done = update_card(ps["customer"], a["card"])
        return finish_flow(ps, done) or path + "?" + urllib.parse.urlencode({"done": done})


def portal_page(token, query):
    with fs.STATE.lock:
        ps = portal_session(token)
        if ps is None:
            return 404, page("Not found", '<div class="wrap"><h1>No such portal session</h1>'
                             '</div>')
        cus = copy.deepcopy(fs.STATE.customers.get(ps["customer"]) or {})
        subs = copy.deepcopy(customer_subs(ps["customer"]))
        invoices = sorted((copy.deepcopy(i) for i in fs.STATE.invoices.values()
                           if i.get("customer") == ps["customer"]),
                          key=lambda i: -i.get("created", 0))
        plans = sorted((p for p in fs.STATE.prices.values() if p["id"] in PLANS),
                       key=lambda p: (p["recurring"]["interval"], p["unit_amount"]))
        card = card_label(customer_card(ps["customer"]))
        ps = copy.deepcopy(ps)
    flow = (ps.get("flow") or {}).get("type")
    head, parts = [], []  # the left column, the right one
    if ps.get("return_url"):
        head.append('<p><a href="%s" id="return">&larr; Return to the app</a></p>'
                     % esc(ps["return_url"]))
    head.append('<h1 style="font-size:22px">Billing</h1><p class="muted">%s</p>'
                % esc(cus.get("email") or cus.get("id")))
    for key, cls in (("done", "note"), ("error", "error")):
        if query.get(key):
            head.append('<div class="%s" id="%s">%s</div>' % (cls, key, esc(query[key])))
    flow_sub = ((ps.get("flow") or {}).get(flow or "") or {}).get("subscription")
    for s in subs:
        if flow_sub and s["id"] != flow_sub:
            continue
        live = s["status"] not in ("canceled", "incomplete_expired")
        try:
            price = first_price(s)
            start, end = period_of(s)
        except fs.StripeError:
            continue
        if s["status"] == "trialing":
            when = "Trial ends %s" % day(s.get("trial_end"))
        elif s.get("cancel_at"):
            when = "Cancels %s" % day(s["cancel_at"])
        elif live:
            when = "Renews %s" % day(end)
        else:
            when = "Ended %s" % day(s.get("ended_at"))
        forms = []
        hidden = '<input type="hidden" name="subscription" value="%s">' % esc(s["id"])
        if live and flow in (None, "subscription_update", "subscription_update_confirm"):
            opts = "".join('<option value="%s"%s>%s</option>'
                           % (esc(p["id"]), " selected" if p["id"] == price["id"] else "",
                              esc(plan_label(p))) for p in plans)
            forms.append('<form method="post"><input type="hidden" name="action" value="plan">'
                         '%s<label for="price">Change plan</label><div class="row"><select '
                         'name="price" id="price" style="flex:2">%s</select><button '
                         'type="submit" id="update-plan">Update plan</button></div></form>'
                         % (hidden, opts))
        if live and not s.get("cancel_at") and flow in (None, "subscription_cancel"):
            opts = "".join('<option value="%s">%s</option>' % (k, esc(v)) for k, v in FEEDBACK)
            forms.append('<form method="post"><input type="hidden" name="action" value="cancel">'
                         '%s<label for="feedback">Why are you canceling?</label><select '
                         'name="feedback" id="feedback">%s</select><p><button class="danger" '
                         'type="submit" id="cancel-plan">Cancel plan</button></p></form>'
                         % (hidden, opts))
        if live and s.get("cancel_at_period_end") and flow is None:
            forms.append('<form method="post"><input type="hidden" name="action" value="resume">'
                         '%s<button type="submit" id="resume-plan">Renew plan</button></form>'
                         % hidden)
        parts.append('<div class="card"><b>%s</b> %s<div class="muted">%s <span class="small">'
                     '&middot; %s</span></div>%s</div>'
                     % (esc(plan_label(price)), pill(s["status"]), esc(when), esc(s["id"]),
                        "".join(forms)))
    if flow in (None, "payment_method_update"):
        parts.append('<div class="card"><b>Payment method</b><p id="current-card">%s</p>'
                     '<form method="post" id="card-form"><input type="hidden" name="action" '
                     'value="card">%s<button class="wide" type="submit" id="save-card">Update '
                     'payment method</button></form></div>'
                     % (esc(card or "No card on file"), card_fields()))
    if flow is None and invoices:
        rows = "".join('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                       % (esc(day(i.get("created"))), esc(fs.money(i["amount_due"],
                                                                   i.get("currency"))),
                          pill(i.get("status")), esc(i.get("number") or i["id"]))
                       for i in invoices)
        parts.append('<h2>Invoice history</h2><table>%s</table>' % rows)
    return 200, page("Billing", '<div class="checkout"><div>%s</div><div>%s</div></div>'
                     % ("".join(head), "".join(parts)))


def portal_post(token, form):
    """Returns the URL the browser goes to next."""
    with fs.STATE.lock:
        ps = portal_session(token)
        if ps is None:
            return "/"
        done, err, go = portal_act(ps, form)
        if go:
            return go
        path = urllib.parse.urlsplit(ps["url"]).path
        if err:
            return path + "?" + urllib.parse.urlencode({"error": err})
        return finish_flow(ps, done) or path + "?" + urllib.parse.urlencode({"done": done})


def demo_page(kind, query):
    sid = query.get("session_id", "")
    with fs.STATE.lock:
        s = copy.deepcopy(fs.STATE.sessions.get(sid) or {})
        sub = copy.deepcopy(fs.STATE.subscriptions.get(s.get("subscription") or "") or {})
    if kind == "success":
        title = "Thanks for subscribing"
        info = ('<p>Checkout session <code id="session">%s</code> is <b>%s</b>; subscription '
                '<code>%s</code> is %s.</p>' % (esc(sid), esc(s.get("status")),
                                                esc(sub.get("id")), pill(sub.get("status"))))
    else:
        title = "Checkout canceled"
        info = "<p>Nothing was charged.</p>"
    body = ('<div class="wrap"><div class="card"><p class="muted small">This page stands in '
            'for your app\'s %s_url.</p><h1>%s</h1>%s<p>What Stripe sent to the webhook: '
            '<a href="/">the simulator\'s dashboard</a>.</p></div></div>'
            % (esc(kind), esc(title), info))
    return 200, page(title, body)


def deliveries_cell(rec):
    if rec is None:
        return '<span class="muted">not sent</span>'
    last = rec["attempts"][-1] if rec["attempts"] else None
    got = ("%s" % last["status"]) if last and last["status"] is not None else \
        (last["error"].split(":")[0] if last else "")
    return '%s %s <span class="muted">(%d attempt%s)</span>' % (
        pill(rec["state"]), esc(got), len(rec["attempts"]), "" if len(rec["attempts"]) == 1
        else "s")


def object_id(ev):
    return (ev.get("data") or {}).get("object", {}).get("id") or ""


def dashboard_page(query):
    with fs.STATE.lock:
        st = fs.STATE
        custs = sorted(st.customers.values(), key=lambda c: -c.get("created", 0))
        subs = sorted(st.subscriptions.values(), key=lambda s: -s.get("created", 0))
        invs = sorted(st.invoices.values(), key=lambda i: -i.get("created", 0))
        sessions = sorted(st.sessions.values(), key=lambda s: -s.get("created", 0))
        portals = sorted(st.portal_sessions.values(), key=lambda s: -s.get("created", 0))
        events = list(reversed(st.events))[:200]
        due = {}
        for t, _, kind, oid in due_actions():
            due.setdefault(oid, (t, kind))
        t_now, offset = fs.now(), fs.CLOCK_OFFSET
        cards = {c["id"]: card_label(customer_card(c["id"])) for c in custs}
        custs, subs, invs, sessions, portals, events = copy.deepcopy(
            (custs, subs, invs, sessions, portals, events))
    recs = {r["event"]: r for r in DELIVERIES.snapshot()}
    out = ['<div class="wrap">']
    if query.get("done"):
        out.append('<div class="note" id="done">%s</div>' % esc(query["done"]))
    if query.get("error"):
        out.append('<div class="error" id="error">%s</div>' % esc(query["error"]))
    buttons = "".join('<button class="light" name="by" value="%s" id="advance-%s">+%s</button> '
                      % (b, b, b) for b in ("1h", "1d", "3d", "1w", "30d", "365d"))
    out.append('<div class="card"><b>Simulated time</b> <span id="clock">%s</span> '
               '<span class="muted">(%s ahead of real time)</span>'
               '<form method="post" action="/clock" style="margin-top:8px">%s '
               '<input name="custom" placeholder="e.g. 10d12h" style="width:130px"> '
               '<button class="light" type="submit" id="advance">Advance</button></form></div>'
               % (esc(iso(t_now)), esc(span(offset)), buttons))
    url = CONFIG["webhook_url"]
    out.append('<div class="card"><b>Webhook endpoint</b> %s<div class="muted small">events: '
               '%s; retries after %s s</div></div>'
               % ('<code>%s</code>' % esc(url) if url else
                  '<span class="muted">none configured: events are recorded, not sent '
                  '(POST /_sim/config)</span>',
                  esc(", ".join(CONFIG["enabled_events"])),
                  esc(", ".join("%g" % x for x in CONFIG["retry_backoff"]))))

    def table(title, head, rows, tid):
        out.append('<h2>%s</h2>' % esc(title))
        if not rows:
            out.append('<p class="muted">none</p>')
            return
        out.append('<table id="%s"><tr>%s</tr>%s</table>' % (
            tid, "".join("<th>%s</th>" % esc(h) for h in head),
            "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % c for c in r) for r in rows)))

    def due_text(oid):
        if oid not in due:
            return ""
        t, kind = due[oid]
        return esc("%s %s" % (kind.replace("_", " "), iso(t)))

    sub_rows = []
    for s in subs:
        try:
            price = first_price(s)
            plan, (start, end) = plan_label(price), period_of(s)
        except (fs.StripeError, IndexError):
            plan, start, end = "", None, None
        flags = " cancels at period end" if s.get("cancel_at_period_end") else ""
        sub_rows.append(("<code>%s</code>" % esc(s["id"]), "<code>%s</code>" % esc(fs.cus_of(s)),
                         esc(plan), pill(s["status"]) + esc(flags),
                         esc(iso(s.get("trial_end"))), esc("%s – %s" % (day(start), day(end))),
                         due_text(s["id"])))
    table("Subscriptions", ("id", "customer", "plan", "status", "trial end", "period", "next"),
          sub_rows, "subscriptions")
    table("Invoices", ("number", "id", "reason", "amount", "status", "attempts", "next"),
          [(esc(i.get("number")), "<code>%s</code>" % esc(i["id"]), esc(i.get("billing_reason")),
            esc(fs.money(i["amount_due"], i.get("currency"))), pill(i.get("status")),
            esc(i.get("attempt_count")), due_text(i["id"])) for i in invs], "invoices")
    table("Customers", ("id", "email", "card", "created"),
          [("<code>%s</code>" % esc(c["id"]), esc(c.get("email")), esc(cards.get(c["id"])),
            esc(iso(c.get("created")))) for c in custs], "customers")
    table("Checkout sessions", ("id", "status", "page"),
          [("<code>%s</code>" % esc(s["id"][:28] + "…"), pill(s["status"]),
            '<a href="%s">open</a>' % esc(urllib.parse.urlsplit(s["url"]).path)
            if s["status"] == "open" else "") for s in sessions], "sessions")
    table("Billing portal sessions", ("id", "customer", "flow", "page"),
          [("<code>%s</code>" % esc(s["id"]), "<code>%s</code>" % esc(s["customer"]),
            esc((s.get("flow") or {}).get("type") or ""),
            '<a href="%s">open</a>' % esc(urllib.parse.urlsplit(s["url"]).path))
           for s in portals], "portal-sessions")
    table("Events (newest first) and their deliveries", ("created", "type", "object", "delivery"),
          [(esc(iso(e["created"])), '<a href="/events/%s">%s</a>' % (esc(e["id"]), esc(e["type"])),
            "<code>%s</code>" % esc(object_id(e)), deliveries_cell(recs.get(e["id"])))
           for e in events], "events")
    out.append("</div>")
    return 200, page("Stripe simulator", "".join(out))


def event_page(eid):
    with fs.STATE.lock:
        ev = copy.deepcopy(fs.STATE.event_ids.get(eid))
    if ev is None:
        return 404, page("Not found", '<div class="wrap"><h1>No such event</h1></div>')
    rec = DELIVERIES.of(eid)
    rows = "".join('<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td><code>%s'
                   '</code></td></tr>' % (i + 1, esc(iso(a["at"])), esc(a["status"]),
                                          esc(a["error"] or ""), esc(a["ms"]),
                                          esc((a["response"] or "")[:300]))
                   for i, a in enumerate((rec or {}).get("attempts", [])))
    body = ('<div class="wrap"><h1 style="font-size:20px">%s</h1><p><code>%s</code> created %s '
            '(simulated)</p><h2>Deliveries %s</h2><table><tr><th>#</th><th>sent (real time)'
            '</th><th>status</th><th>error</th><th>ms</th><th>answer</th></tr>%s</table>'
            '<form method="post" action="/events/%s" style="margin-top:10px"><button '
            'class="light" id="resend" type="submit">Resend</button></form><h2>Payload</h2>'
            '<pre>%s</pre></div>'
            % (esc(ev["type"]), esc(eid), esc(iso(ev["created"])),
               pill(rec["state"]) if rec else "", rows, esc(eid),
               esc(json.dumps(ev, indent=2))))
    return 200, page(ev["type"], body)


# --------------------------------------------------------------------------
# Control API


def advance(doc):
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    start = fs.now()
    if "to" in doc:
        if not isinstance(doc["to"], int) or isinstance(doc["to"], bool):
            raise ValueError("to must be a unix time")
        target = doc["to"]
    else:
        target = start + parse_duration(doc.get("by", doc.get("seconds")))
    events = advance_to(target)
    ids = [e["id"] for e in events]
    idle = True
    if doc.get("wait", True):
        idle, _ = DELIVERIES.wait(float(doc.get("timeout", 60)), ids=ids)
    recs = {r["event"]: r for r in DELIVERIES.snapshot(set(ids))}
    lines = ["clock: %s -> %s (+%s)" % (iso(start), iso(fs.now()), span(fs.now() - start))]
    for e in events:
        r = recs.get(e["id"])
        got = "not sent (type not enabled)" if r is None else ", ".join(
            str(a["status"]) if a["status"] is not None else a["error"].split(":")[0]
            for a in r["attempts"]) or "sending"
        lines.append("  %s  %-40s %-30s -> %s" % (iso(e["created"]), e["type"], object_id(e),
                                                  got))
    lines.append("%d event%s; dashboard: %s/" % (len(events), "" if len(events) == 1 else "s",
                                                 fs.PAGE_BASES["checkout"]))
    return {"from": start, "now": fs.now(), "iso": iso(fs.now()),
            "events": [{"id": e["id"], "type": e["type"], "created": e["created"],
                        "object": object_id(e)} for e in events],
            "deliveries": list(recs.values()), "idle": idle, "summary": "\n".join(lines) + "\n"}


def sim_control(method, path, doc):
    what = path[len("/_sim/"):]
    if (method, what) == ("GET", "clock"):
        return 200, {"now": fs.now(), "iso": iso(fs.now()), "offset": fs.CLOCK_OFFSET}
    if (method, what) == ("POST", "advance"):
        return 200, advance(doc if doc is not None else {})
    if (method, what) == ("GET", "config"):
        return 200, public_config()
    if (method, what) == ("POST", "config"):
        set_config(doc)
        return 200, public_config()
    if (method, what) == ("GET", "deliveries"):
        return 200, DELIVERIES.snapshot()
    if (method, what) == ("POST", "wait"):
        doc = doc or {}
        ok, n = DELIVERIES.wait(float(doc.get("timeout", 30)), bool(doc.get("settled")))
        return 200, {"idle": ok, "pending": n}
    if (method, what) == ("POST", "redeliver"):
        with fs.STATE.lock:
            ev = fs.STATE.event_ids.get((doc or {}).get("event"))
            if ev is None:
                raise ValueError("no such event")
            if not DELIVERIES.add(ev, force=True):
                raise ValueError("no webhook endpoint configured")
        return 200, {"ok": True}
    return 404, {"error": "no simulator endpoint %s %s" % (method, path)}


# --------------------------------------------------------------------------
# HTTP

PAGE_RE = re.compile(r"^/(?:$|events/[^/]+$|c/pay/[^/]+$|p/session/[^/]+$|authenticate/[^/]+$|"
                     r"demo/(?:success|cancel)$|clock$|favicon\.ico$)")


class SimHandler(fs.Handler):
    server_version = "stripe-simulator/1.0"

    def dispatch(self, method):
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path.startswith("/_sim/"):
                body = self.read_body()
                if body is not None:
                    self.sim_api(method, path, body)
            elif PAGE_RE.match(path) and method in ("GET", "POST"):
                body = self.read_body()
                if body is not None:
                    self.pages(method, path, body)
            elif (method, path.rstrip("/")) == ("POST", "/_fake/reset"):
                with fs.STATE.lock:  # nobody sees the fake reset without the rest
                    DELIVERIES.reset()
                    fs.Handler.dispatch(self, method)
                    SIM.reset()
            else:
                fs.Handler.dispatch(self, method)
        except OSError:
            self.close_connection = True

    def sim_api(self, method, path, body):
        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else None
            status, out = sim_control(method, path, doc)
        except (UnicodeDecodeError, ValueError) as e:
            status, out = 400, {"error": str(e) if not isinstance(e, json.JSONDecodeError)
                                else "body is not JSON"}
        if status == 200 and "summary" in out and "text/plain" in self.headers.get("Accept", ""):
            return self.send_page(200, out["summary"].encode(), "text/plain; charset=utf-8")
        self.send_json(status, out)

    def send_page(self, status, data, ctype="text/html; charset=utf-8", location=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, url):
        self.send_page(303, b"", location=url)

    def pages(self, method, path, body):
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(
            urllib.parse.urlsplit(self.path).query).items()}
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(
            body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        parts = path.split("/")
        try:
            if path == "/favicon.ico":
                return self.send_page(204, b"", "image/x-icon")
            if path == "/":
                return self.send_page(*dashboard_page(query))
            if path == "/clock":
                if method != "POST":
                    return self.redirect("/")
                by = form.get("custom", "").strip() or form.get("by", "")
                try:
                    r = advance({"by": by, "timeout": 20})
                    msg = "Advanced %s: %d event%s." % (span(r["now"] - r["from"]),
                                                       len(r["events"]),
                                                       "" if len(r["events"]) == 1 else "s")
                    return self.redirect("/?" + urllib.parse.urlencode({"done": msg}))
                except ValueError as e:
                    return self.redirect("/?" + urllib.parse.urlencode({"error": str(e)}))
            if parts[1] == "events":
                if method == "POST":
                    try:
                        sim_control("POST", "/_sim/redeliver", {"event": parts[2]})
                    except ValueError:
                        pass
                    return self.redirect("/events/" + parts[2])
                return self.send_page(*event_page(parts[2]))
            if parts[1] == "c":
                if method == "POST":
                    kind, value = checkout_pay(parts[3], form)
                    if kind == "redirect":
                        return self.redirect(value)
                    status, data = checkout_page(parts[3], value, form)
                    return self.send_page(402 if status == 200 else status, data)
                return self.send_page(*checkout_page(parts[3]))
            if parts[1] == "authenticate":
                if method == "POST":
                    return self.redirect(authenticate_post(parts[2], form))
                return self.send_page(*authenticate_page(parts[2]))
            if parts[1] == "p":
                if method == "POST":
                    return self.redirect(portal_post(parts[3], form))
                return self.send_page(*portal_page(parts[3], query))
            if parts[1] == "demo":
                return self.send_page(*demo_page(parts[2], query))
        except Exception as e:  # a bug in the simulator: say so on the page
            import traceback
            traceback.print_exc(file=sys.stderr)
            return self.send_page(500, page("Error", '<div class="wrap"><div class="error">'
                                            'simulator error: %s</div></div>' % esc(e)))
        return self.send_page(404, page("Not found", '<div class="wrap"><h1>Not found</h1>'
                                        '</div>'))


def setup(host, port):
    """Called by fake_stripe.main() once STATE exists, before it says where it listens."""
    global SIM, DELIVERIES
    base = "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)
    fs.PAGE_BASES.update(checkout=base, portal=base)
    DELIVERIES = Deliveries()
    DELIVERIES.reset()
    with fs.STATE.lock:
        SIM = Sim()
    fs.EVENT_HOOKS.append(DELIVERIES.add)


def main(argv=None):
    return fs.main(argv, handler=SimHandler, setup=setup,
                   description="Stripe simulator: the fake Stripe API with hosted pages, a "
                   "clock and webhook delivery.")


if __name__ == "__main__":
    sys.exit(main())
