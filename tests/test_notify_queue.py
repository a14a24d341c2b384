"""webhook.cgi queues the lifecycle notifications (issue 10) and keeps
customers.email current: every kind, its payload, NOTIFY_KINDS, the rows
that must not be queued, redeliveries, both sync modes.  Events are the
fixtures in tests/data/events piped to the real webhook.cgi against a
real PostgreSQL (tests/harness.py).
"""
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap  # noqa: E402
from test_webhook import (CUS42, PRICE_PRO_MONTH, SUB42, SUB77, count, deliver,  # noqa: E402
                          error_code, event, reset_db)

CUS77 = "cus_TVr3Nq8HsK1pLe"
PRICE_TEAM_YEAR = "price_1SZUaLkdIwHu7ixLJ4d8jOCs"
SETTINGS = {"STRIPE_SYNC_MODE": "event", "STRIPE_PRICE_PRO_MONTHLY": PRICE_PRO_MONTH,
            "STRIPE_PRICE_ENTERPRISE_YEARLY": PRICE_TEAM_YEAR, "NOTIFY_KINDS": "all"}
# The story of user 42, then 77's trial and 3-D Secure request.
STORY = ["customer.subscription.created", "invoice.paid", "customer.subscription.updated",
         "checkout.session.completed", "invoice.payment_failed", "customer.updated",
         "customer.subscription.deleted", "customer.subscription.trial_will_end",
         "invoice.payment_action_required"]


def rows(st, where="true"):
    """notifications as {kind: (user_id, payload dict, status)}."""
    out = {}
    for kind, user, payload, status in st.psql(
            f"SELECT kind, user_id, payload::text, status FROM notifications WHERE {where}"
            " ORDER BY id"):
        out[kind] = (user, json.loads(payload), status)
    return out


def email_of(st, customer):
    return st.psql_one(f"SELECT email FROM customers WHERE stripe_customer_id = '{customer}'")


def test_every_kind(t):
    with Stack(settings=SETTINGS, apache=False, stripe=False) as st:
        # User 77 came through create-checkout-session (customer stored, email given there).
        st.psql(f"INSERT INTO customers (user_id, stripe_customer_id, email)"
                f" VALUES ('77', '{CUS77}', 'user77@example.test')")
        for name in STORY:
            r = deliver(st, event(name))
            t.eq((r.status, r.json()), (200, {"received": True}), f"{name} -> 200, applied")
        got = rows(st)
        t.eq(sorted(got), sorted(["welcome", "payment_failed", "subscription_canceled",
                                  "trial_will_end", "payment_action_required"]),
             "one row per kind, nothing else")
        common42 = {"stripe_subscription_id": SUB42, "stripe_customer_id": CUS42, "plan": "pro",
                    "interval": "monthly", "currency": "usd"}
        user, p, status = got["welcome"]
        t.eq((user, status, {k: p.get(k) for k in common42}, p.get("amount"),
              p.get("stripe_event_id")),
             ("42", "pending", common42, 1500, event("checkout.session.completed")["id"]),
             "welcome: user 42, plan, interval and price from the subscription row")
        user, p, status = got["payment_failed"]
        t.eq((user, {k: p.get(k) for k in common42}, p.get("amount"), p.get("hosted_invoice_url"),
              p.get("invoice_number"), p.get("attempt_count"), p.get("next_payment_attempt")),
             ("42", common42, 1500,
              "https://invoice.stripe.com/i/acct_1QLkdIwHu7ixAb12/test_1Scj7LkdIwHu7ixbsHXDYzEz?s=ap",
              "EXSAAS01-0002", 1, "2026-12-05T11:15:17Z"),
             "payment_failed: amount due, hosted invoice URL, number, attempt, next attempt")
        user, p, status = got["subscription_canceled"]
        t.eq((user, p.get("plan"), p.get("ended_at"), p.get("cancellation_reason")),
             ("42", "pro", "2026-12-23T11:20:31Z", "payment_failed"),
             "subscription_canceled: ended_at and reason")
        user, p, status = got["trial_will_end"]
        t.eq((user, p.get("plan"), p.get("interval"), p.get("amount"), p.get("currency"),
              p.get("trial_end"), p.get("stripe_subscription_id"), p.get("stripe_customer_id")),
             ("77", "enterprise", "yearly", 49000, "usd", "2026-11-27T09:00:00Z", SUB77, CUS77),
             "trial_will_end: trial_end, plan and price of 77's subscription")
        user, p, status = got["payment_action_required"]
        t.eq((user, p.get("amount"), p.get("invoice_number"), p.get("hosted_invoice_url", "")[:30]),
             ("77", 49000, "EXSAAS02-0002", "https://invoice.stripe.com/i/a"),
             "payment_action_required: a new event type, queued with its invoice")
        t.eq(st.psql("SELECT status, amount, user_id, stripe_subscription_id FROM billing_events"
                     " WHERE event_type = 'invoice.payment_action_required'"),
             [["action_required", "49000", "77", SUB77]],
             "payment_action_required: recorded as a billing event with its amount")
        t.eq(st.psql("SELECT user_id, stripe_customer_id FROM billing_events"
                     " WHERE event_type = 'customer.updated'"), [["42", CUS42]],
             "customer.updated: recorded with its customer and user")

        t.eq(email_of(st, CUS42), "fortytwo@example.test",
             "customers.email: checkout's address, then customer.updated's")
        older = event("customer.updated", id="evt_old_customer_update", created=1795000000)
        older["data"]["object"]["email"] = "stale@example.test"
        deliver(st, older)
        t.eq(email_of(st, CUS42), "fortytwo@example.test",
             "an older customer.updated delivered late does not overwrite a newer address")
        again = event("checkout.session.completed", id="evt_checkout_replayed_later")
        deliver(st, again)
        t.eq(email_of(st, CUS42), "fortytwo@example.test",
             "nor does an older checkout session's customer_details.email")

        before = count(st, "notifications")
        for name in STORY:
            r = deliver(st, event(name))
            if r.json() != {"received": True, "duplicate": True}:
                t.ok(False, f"redelivered {name} is a duplicate", r.text)
        t.eq(count(st, "notifications"), before, "redelivering every event queues nothing new")

        bad = event("customer.updated", id="evt_bad_email", created=1799999999)
        bad["data"]["object"]["email"] = "Fortytwo <fortytwo@example.test>\r\nBcc: x@evil.test"
        deliver(st, bad)
        t.eq(email_of(st, CUS42), None, "an address the mailer could not use is stored as none")
        gone = event("customer.updated", id="evt_no_email", created=1800000000)
        gone["data"]["object"]["email"] = "later@example.test"
        deliver(st, gone)
        gone = event("customer.updated", id="evt_email_removed", created=1800000001)
        gone["data"]["object"]["email"] = None
        deliver(st, gone)
        t.eq(email_of(st, CUS42), None, "customer.updated with email null clears it")


def test_kinds_setting(t):
    with Stack(settings=SETTINGS, apache=False, stripe=False) as st:
        cases = [
            (None, ["payment_failed", "subscription_canceled", "trial_will_end"]),
            ("none", []),
            ("welcome, payment_failed", ["welcome", "payment_failed"]),
            ("all", ["welcome", "payment_failed", "subscription_canceled", "trial_will_end"]),
        ]
        for setting, want in cases:
            reset_db(st)
            for name in ("customer.subscription.created", "checkout.session.completed",
                         "invoice.payment_failed", "customer.subscription.deleted",
                         "customer.subscription.trial_will_end"):
                deliver(st, event(name), env={"NOTIFY_KINDS": setting})
            t.eq(sorted(rows(st)), sorted(want), f"NOTIFY_KINDS={setting!r} queues {want}")
        reset_db(st)
        r = deliver(st, event("invoice.payment_failed"), env={"NOTIFY_KINDS": "payment_failed,bogus"})
        t.eq((r.status, error_code(r), count(st, "billing_events")), (500, "misconfigured", 0),
             "an unknown kind in NOTIFY_KINDS -> 500 misconfigured, nothing recorded")
        t.ok("NOTIFY_KINDS" in r.stderr, "the log line names the setting", r.stderr)


def test_not_queued(t):
    with Stack(settings=SETTINGS, apache=False, stripe=False) as st:
        ev = event("customer.subscription.deleted", id="evt_expired")
        ev["data"]["object"]["status"] = "incomplete_expired"
        r = deliver(st, ev)
        t.eq((r.status, count(st, "notifications")), (200, 0),
             "a subscription that never started (incomplete_expired) gets no cancellation mail")
        ev = event("invoice.payment_failed", id="evt_one_off")
        inv = ev["data"]["object"]
        inv["parent"] = None
        inv.pop("subscription", None)
        r = deliver(st, ev)
        t.eq((r.status, count(st, "notifications")), (200, 0),
             "a one-off invoice (no subscription) queues nothing")
        ev = event("invoice.payment_failed", id="evt_bad_url")
        ev["data"]["object"]["hosted_invoice_url"] = "javascript:alert(1)"
        deliver(st, ev)
        p = rows(st)["payment_failed"][1]
        t.ok("hosted_invoice_url" not in p and p.get("amount") == 1500,
             "an invoice URL that is not https is left out (the mailer then refuses the row)", p)
        # Unknown user at queue time: linked when checkout names the user.
        reset_db(st)
        ev = event("customer.subscription.trial_will_end", id="evt_trial_nouser")
        o = ev["data"]["object"]
        o["id"], o["customer"], o["metadata"] = SUB42, CUS42, {}
        deliver(st, ev)
        t.eq(rows(st)["trial_will_end"][0], None, "trial_will_end for an unknown user: user NULL")
        deliver(st, event("checkout.session.completed"), env={"NOTIFY_KINDS": "trial_will_end"})
        t.eq(rows(st)["trial_will_end"][0], "42", "checkout.session.completed links it to 42")


def test_refetch_mode(t):
    settings = dict(SETTINGS)
    settings.pop("STRIPE_SYNC_MODE")
    with Stack(settings=settings, apache=False) as st:
        current = copy.deepcopy(event("customer.subscription.updated")["data"]["object"])
        st.stripe.put_subscription(SUB42, current)
        for name in ("checkout.session.completed", "invoice.payment_failed"):
            r = deliver(st, event(name))
            t.eq(r.status, 200, f"refetch mode: {name} -> 200")
        got = rows(st)
        t.eq((sorted(got), got["payment_failed"][1].get("plan"),
              got["payment_failed"][1].get("amount")),
             (["payment_failed", "welcome"], "pro", 1500),
             "refetch mode: queued the same way, plan from the refetched subscription")


def main():
    t = Tap()
    for fn in (test_every_kind, test_kinds_setting, test_not_queued, test_refetch_mode):
        t.run(fn, t)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
