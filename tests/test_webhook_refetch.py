"""webhook.cgi in refetch mode against a hostile or broken Stripe: answers
that are not the subscription asked for (another id, another customer,
another object, an error inside a 200), answers older than a subscription's
end, bodies that are not JSON, cut short, too large or too deep, redirects,
429/5xx/resets, and two events of one subscription whose first fetch is
slow.  Every refusal leaves nothing written, and the redelivery is applied
once.  Real PostgreSQL, real Apache (tests/harness.py); Stripe is the fake.
"""
import copy
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap  # noqa: E402
from test_webhook import (CUS42, SETTINGS, SUB42, count, deliver, error_code, event,  # noqa: E402
                          reset_db, sub_row)

REFETCH = dict(SETTINGS, STRIPE_SYNC_MODE="refetch")


def current():
    """Stripe's current subscription: the fixture's active one, user 42, customer CUS42."""
    return copy.deepcopy(event("customer.subscription.updated")["data"]["object"])


def seed(st):
    """SUB42 active, owned by user 42 through CUS42 (checkout, refetched)."""
    reset_db(st)
    st.psql("TRUNCATE ownership_conflicts")
    st.stripe.reset()
    st.stripe.put_subscription(SUB42, current())
    r = deliver(st, event("checkout.session.completed"))
    row = sub_row(st, SUB42)
    assert (r.status, row["status"], row["user_id"]) == (200, "active", "42"), (r, row)


def recorded(st, event_id):
    return count(st, "billing_events", f"stripe_event_id = '{event_id}'")


def owners(st):
    return st.psql("SELECT stripe_subscription_id, user_id, stripe_customer_id, status"
                   " FROM subscriptions ORDER BY stripe_subscription_id")


def past_due(eid):
    """An update whose own object says past_due (what event mode would store)."""
    ev = event("customer.subscription.updated", id=eid, created=1793614600)
    ev["data"]["object"]["status"] = "past_due"
    return ev


def test_not_the_subscription(t):
    """An answer that is not the subscription asked for is stored nowhere:
    502 bad_gateway, nothing recorded, and the redelivery is applied once."""
    with Stack(settings=REFETCH) as st:
        st.psql("INSERT INTO customers (user_id, stripe_customer_id) VALUES ('evil', 'cus_evil')")
        cases = []
        o = current()
        o["id"], o["status"] = "sub_other", "past_due"
        cases.append(("another id", o))
        o = current()
        o["customer"], o["metadata"] = "cus_evil", {}
        cases.append(("another customer", o))
        o = current()
        o["customer"], o["status"] = {"id": "cus_evil", "object": "customer"}, "past_due"
        cases.append(("another customer, expanded", o))
        o = current()
        o["object"], o["status"] = "invoice", "past_due"
        cases.append(("another object", o))
        o = current()
        del o["customer"]
        cases.append(("no customer", o))
        cases.append(("an error object in a 200",
                      {"error": {"type": "api_error", "message": "Something went wrong"}}))
        for i, (name, answer) in enumerate(cases):
            seed(st)
            before = owners(st)
            st.stripe.put_subscription(SUB42, answer)
            eid = f"evt_not_it_{i}"
            r = deliver(st, past_due(eid))
            t.eq((r.status, error_code(r)), (502, "bad_gateway"), f"{name}: 502 bad_gateway")
            t.eq((recorded(st, eid), owners(st)), (0, before),
                 f"{name}: nothing recorded, no row changed or added")
            t.eq(count(st, "ownership_conflicts"), 0, f"{name}: no ownership conflict recorded")
            t.ok("cus_evil" not in r.text and "sub_other" not in r.text,
                 f"{name}: the answer names nothing of Stripe's", r.text)
            st.stripe.put_subscription(SUB42, current())
            r = deliver(st, past_due(eid))
            t.eq((r.status, r.json(), recorded(st, eid), sub_row(st, SUB42)["user_id"]),
                 (200, {"received": True}, 1, "42"),
                 f"{name}: the redelivery, Stripe fixed, is applied once")

        # A row whose customer is not Stripe's (damaged by hand, say) is what
        # is wrong: Stripe's answer repairs it, as billing-sync would, rather
        # than every event of the subscription answering 502 for good.
        seed(st)
        st.psql(f"UPDATE subscriptions SET stripe_customer_id = 'cus_evil', user_id = 'evil'"
                f" WHERE stripe_subscription_id = '{SUB42}'")
        o = current()
        o["status"] = "past_due"
        st.stripe.put_subscription(SUB42, o)
        ev = event("invoice.paid", id="evt_row_customer")
        del ev["data"]["object"]["customer"]
        r = deliver(st, ev, "http")
        row = sub_row(st, SUB42)
        t.eq((r.status, recorded(st, "evt_row_customer"), row["stripe_customer_id"],
              row["user_id"], row["status"]), (200, 1, CUS42, "42", "past_due"),
             "a row whose customer is not Stripe's: Stripe's answer repairs it (not 502 for good)")

        # A raw 200 carrying Stripe's error shape, and one with the wrong Content-Type.
        seed(st)
        st.stripe.fail(path="/v1/subscriptions/", mode="raw",
                       body='{"error":{"type":"api_error","message":"x"}}')
        r = deliver(st, past_due("evt_raw_error"))
        t.eq((r.status, recorded(st, "evt_raw_error")), (502, 0),
             "a 200 whose body is an error object: 502, not recorded (was ignored and recorded)")
        o = current()
        o["status"] = "past_due"
        st.stripe.fail(path="/v1/subscriptions/", mode="raw", body=json.dumps(o),
                       content_type="text/plain")
        r = deliver(st, past_due("evt_text_plain"))
        t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "past_due"),
             "a subscription served as text/plain is still the subscription (the body decides)")


def test_ended(t):
    """canceled and incomplete_expired are final at Stripe: a live answer
    read before the end neither undoes a deletion nor brings the row back."""
    with Stack(settings=REFETCH) as st:
        seed(st)
        ev = event("customer.subscription.deleted", id="evt_del_stale")
        r = deliver(st, ev)
        row = sub_row(st, SUB42)
        t.eq((r.status, row["status"], row["ended_at"]),
             (200, "canceled", ev["data"]["object"]["ended_at"]),
             "a deletion with Stripe still answering active: the deletion is stored")
        st.stripe.put_subscription(SUB42, current())
        r = deliver(st, event("invoice.paid", id="evt_paid_after_end", created=1798024900))
        t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "canceled"),
             "a later event with Stripe answering active: the ended row stays canceled")
        r = deliver(st, past_due("evt_upd_after_end"))
        t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "canceled"),
             "a later update, Stripe answering active: stays canceled")

        # The other way round: Stripe says canceled, the event says active.
        seed(st)
        o = current()
        o["status"], o["ended_at"], o["canceled_at"] = "canceled", 1798024832, 1798024832
        st.stripe.put_subscription(SUB42, o)
        r = deliver(st, event("customer.subscription.updated", id="evt_upd_active"))
        t.eq((r.status, sub_row(st, SUB42)["status"], sub_row(st, SUB42)["ended_at"]),
             (200, "canceled", 1798024832), "the event says active, Stripe canceled: canceled")

        # Stripe answers 404 for a subscription we hold: the event's own object, event mode's rule.
        seed(st)
        st.stripe.call("DELETE", "/_fake/subscriptions/" + SUB42)
        r = deliver(st, past_due("evt_404_newer"))
        t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "past_due"),
             "404 for a subscription we hold: the event's newer object is applied")
        r = deliver(st, event("customer.subscription.updated", id="evt_404_older",
                              created=1793614500))
        t.eq((r.status, sub_row(st, SUB42)["status"]), (200, "past_due"),
             "404 and an older event: not applied")


# (name, fail rule, status webhook.cgi answers): Stripe redelivers on any of them.
FAILURES = [
    ("not JSON", dict(mode="raw", body="<html>Bad gateway</html>", content_type="text/html"), 502),
    ("cut short", dict(mode="raw", body='{"id": "%s", "object": "subscription"}' % SUB42,
                       truncate=20, count=5), 503),
    ("over the 1 MiB cap", dict(mode="raw", body=" ", repeat=2 * 1024 * 1024, count=5), 503),
    ("nested past the depth limit", dict(mode="raw", body='{"a":' * 100 + "1" + "}" * 100), 502),
    ("302 to elsewhere", dict(mode="raw", status=302, body="",
                              headers={"Location": "/steal/subscription"}, count=5), 503),
    ("429, Retry-After past the bound", dict(mode="429", retry_after=30, count=5), 503),
    ("500 on every try", dict(mode="500", count=5), 503),
    ("connection reset on every try", dict(mode="reset", count=5), 503),
]


def test_failures(t):
    """Stripe failing: answered 5xx so that Stripe redelivers, nothing
    recorded; then the redelivery is applied once and the next is a duplicate."""
    with Stack(settings=REFETCH) as st:
        for i, (name, rule, status) in enumerate(FAILURES):
            seed(st)
            st.stripe.fail(path="/v1/subscriptions/", **rule)
            eid = f"evt_failure_{i}"
            r = deliver(st, past_due(eid))
            t.eq((r.status, recorded(st, eid), sub_row(st, SUB42)["status"]),
                 (status, 0, "active"), f"{name}: {status}, nothing recorded")
            t.ok(r.json() and set(r.json()) == {"error"} and "stripe.com" not in r.text
                 and "html" not in r.text.lower(), f"{name}: our JSON error only", r.text)
            if "302" in name:
                t.ok(not any(q["path"].startswith("/steal") for q in st.stripe.requests()),
                     "the redirect is not followed (the request carries the secret key)")
            st.stripe.reset()
            o = current()
            o["status"] = "past_due"
            st.stripe.put_subscription(SUB42, o)
            r = deliver(st, past_due(eid))
            t.eq((r.status, r.json(), sub_row(st, SUB42)["status"]),
                 (200, {"received": True}, "past_due"), f"{name}: the redelivery is applied")
            r = deliver(st, past_due(eid))
            t.eq((r.status, r.json(), recorded(st, eid)),
                 (200, {"received": True, "duplicate": True}, 1), f"{name}: then a duplicate")

        seed(st)
        st.stripe.fail(path="/v1/subscriptions/", mode="429", retry_after=1)
        r = deliver(st, past_due("evt_429_short"))
        gets = [q for q in st.stripe.requests() if q["path"] == "/v1/subscriptions/" + SUB42]
        t.eq((r.status, recorded(st, "evt_429_short"), len(gets)), (200, 1, 3),
             "429 with Retry-After: 1: waited, asked again, applied (seed's GET, 429, retry)")


def test_slow_first_fetch(t):
    """Two events of one subscription at once: the first one's fetch reads
    Stripe's state, which then changes, and answers 2 s later.  The second
    event waits for the subscription's lock and fetches after it: the older
    answer never overwrites the newer one."""
    with Stack(settings=REFETCH) as st:
        seed(st)
        path = "/v1/subscriptions/" + SUB42
        seen = len([q for q in st.stripe.requests() if q["path"] == path])
        st.stripe.fail(path=path, mode="slow_after", delay=2)
        results = {}

        def send(name, ev):
            results[name] = deliver(st, ev, "http")

        first = threading.Thread(target=send, args=("first", event(
            "customer.subscription.updated", id="evt_slow_first", created=1793614600)))
        first.start()
        deadline = time.monotonic() + 10
        while len([q for q in st.stripe.requests() if q["path"] == path]) == seen and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        t.ok(time.monotonic() < deadline, "the first event's GET reached Stripe")
        newer = current()
        newer["status"] = "past_due"
        st.stripe.put_subscription(SUB42, newer)
        second = threading.Thread(target=send, args=("second", event(
            "invoice.payment_failed", id="evt_fast_second", created=1793614601)))
        second.start()
        first.join(30)
        second.join(30)
        t.eq((results["first"].status, results["second"].status), (200, 200), "both applied")
        t.eq(sub_row(st, SUB42)["status"], "past_due",
             "the state Stripe answered last is stored, not the slow first answer")
        t.eq((sub_row(st, SUB42)["last_event_id"], recorded(st, "evt_slow_first"),
              recorded(st, "evt_fast_second")), ("evt_fast_second", 1, 1),
             "both recorded, the second stored last")


def main():
    t = Tap()
    for fn in (test_not_the_subscription, test_ended, test_failures, test_slow_first_fetch):
        t.run(fn, t)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
