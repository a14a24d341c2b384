#!/usr/bin/env python3
"""create-checkout-session (issue 15): one Stripe customer per user that a
retry always finds, and at most one open Checkout Session per user.

Customer: the user's existing customer is found by metadata.userId
(GET /v1/customers/search) before one is created, the creation's
Idempotency-Key is derived from exactly what is sent, and a link made
meanwhile (or a customer that is another user's) is handled, not a bare
500.  Sessions: the same order gets the open session back, another order
expires it first (a paid one: 409 already_subscribed), concurrent
checkouts cannot leave two open.  Before the fix a retry after a failed
database write got 502 for 24 hours, a concurrent link gave 500, and each
checkout made another open session: paying two gave two subscriptions.

Real Apache, create-checkout-session.cgi, webhook.cgi, PostgreSQL and the
fake Stripe.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, make_jwt  # noqa: E402
from test_webhook import deliver, event  # noqa: E402

PATH = "/api/stripe/create-checkout-session"
t = Tap()


def order(user, tier="pro", interval="monthly", email=None):
    body = {"userId": user, "tier": tier, "interval": interval,
            "successUrl": "https://app.example.test/ok?s={CHECKOUT_SESSION_ID}",
            "cancelUrl": "https://app.example.test/cancel"}
    if email:
        body["email"] = email
    return body


def post(st, user, body=None, headers=None):
    h = {"Authorization": "Bearer " + make_jwt({"sub": user, "exp": int(time.time()) + 600})}
    h.update(headers or {})
    return st.http("POST", PATH, headers=h, body=body or order(user))


def calls(st, method, path):
    return [q for q in st.stripe.requests() if q["method"] == method and q["path"] == path]


def objects(st, kind):
    return st.stripe.call("GET", "/_fake/objects")[kind]


def code(r):
    return ((r.json() or {}).get("error") or {}).get("code")


def fail_customer_insert(st, user, on=True):
    """A trigger that makes the customers INSERT of user fail (40001 -> 503)."""
    if on:
        st.psql(f"""CREATE FUNCTION pg_temp_fail() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF NEW.user_id = '{user}' THEN RAISE EXCEPTION 'test'
                    USING ERRCODE = 'serialization_failure'; END IF; RETURN NEW; END $$;
                    CREATE TRIGGER test_fail BEFORE INSERT ON customers
                    FOR EACH ROW EXECUTE FUNCTION pg_temp_fail();""")
    else:
        st.psql("DROP TRIGGER test_fail ON customers; DROP FUNCTION pg_temp_fail();")


def post_failing_link(st, user, email):
    """A checkout whose customers INSERT fails: Stripe has the customer, the database not."""
    fail_customer_insert(st, user)
    try:
        return post(st, user, order(user, email=email))
    finally:
        fail_customer_insert(st, user, on=False)


def stored_customer(st, user):
    return st.psql_one(f"SELECT stripe_customer_id FROM customers WHERE user_id = '{user}'")


def test_retry_after_database_failure(st):
    user = "cus-retry"
    r = post_failing_link(st, user, "first@example.test")
    t.eq((r.status, code(r)), (503, "unavailable"),
         "the database fails after Stripe created the customer: 503")
    made = [c for c in objects(st, "customers").values() if c["metadata"].get("userId") == user]
    t.eq(len(made), 1, "Stripe has the customer, the database does not")
    r = post(st, user, order(user, email="second@example.test"))
    t.eq(r.status, 200, "the retry with another email succeeds (before: 502 for 24 h)")
    t.eq(stored_customer(st, user), made[0]["id"], "it found and stored that customer")
    t.eq(len([c for c in objects(st, "customers").values()
              if c["metadata"].get("userId") == user]), 1, "no second customer")
    q = calls(st, "GET", "/v1/customers/search")[-1]
    t.eq(q["params"].get("query"), f"metadata['userId']:'{user}'",
         "found with Stripe's search query language on metadata['userId']")


def test_search_lag(st):
    """Stripe's search index lags: the idempotent create catches a same-body retry."""
    st.stripe.call("PUT", "/_fake/search-lag", {"seconds": 3600})
    try:
        user = "cus-lag"
        post_failing_link(st, user, "lag@example.test")
        r = post(st, user, order(user, email="lag@example.test"))
        mine = [c for c in objects(st, "customers").values() if c["metadata"].get("userId") == user]
        creates = [q for q in calls(st, "POST", "/v1/customers")
                   if q["params"].get("metadata", {}).get("userId") == user]
        t.ok(r.status == 200 and len(mine) == 1 and stored_customer(st, user) == mine[0]["id"]
             and creates[-1]["replayed"],
             "search cannot see it yet: the same body's Idempotency-Key gives the same customer",
             repr((r, len(mine), [c["replayed"] for c in creates])))
        keys = {q["idempotency_key"] for q in creates}
        r = post(st, "cus-lag-2", order("cus-lag-2", email="lag@example.test"))
        other = [q for q in calls(st, "POST", "/v1/customers")
                 if q["params"].get("metadata", {}).get("userId") == "cus-lag-2"]
        t.ok(r.status == 200 and other and other[0]["idempotency_key"] not in keys,
             "another user with the same email: another key", repr(other))
    finally:
        st.stripe.call("PUT", "/_fake/search-lag", {"seconds": 0})


def test_key_follows_body(st):
    user = "cus-key"
    st.stripe.fail(path="/v1/customers", method="POST", mode="503", count=3)
    r1 = post(st, user, order(user, email="a@example.test"))
    r2 = post(st, user, order(user, email="b@example.test"))
    keys = [q["idempotency_key"] for q in calls(st, "POST", "/v1/customers")
            if q["params"].get("metadata", {}).get("userId") == user]
    t.ok(r1.status == 503 and r2.status == 200 and len(set(keys)) == 2 and
         all(k.startswith("customer-") for k in keys),
         "the customer's Idempotency-Key follows the body: another email, another key",
         repr((r1.status, r2.status, keys)))


def test_linked_meanwhile(st):
    """A webhook links the user while checkout waits for Stripe: that link is used."""
    user = "cus-meanwhile"
    st.stripe.fail(path="/v1/customers", method="POST", mode="slow", delay=1.5, count=1)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", post(st, user)))
    th.start()
    deadline = time.monotonic() + 10
    while not any(q["path"] == "/v1/customers" and q["status"] is None
                  for q in st.stripe.requests()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    st.psql(f"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('{user}', 'cus_fromhook')")
    th.join()
    r = result["r"]
    ses = calls(st, "POST", "/v1/checkout/sessions")
    t.ok(r.status == 200 and ses and ses[-1]["params"]["customer"] == "cus_fromhook",
         "unique violation on customers: the stored link is used (before: bare 500)", repr(r))
    t.ok("linked to cus_fromhook meanwhile" in st.error_log(), "and logged with its cause")


def test_customer_of_another_user(st):
    """Stripe hands back a customer that customers gives to someone else."""
    user, victim = "cus-taken", "cus-owner"
    # A customer Stripe has for user (metadata.userId) but the database links to victim.
    post_failing_link(st, user, "taken@example.test")
    cid = [c for c in objects(st, "customers").values() if c["metadata"].get("userId") == user][0]["id"]
    st.psql(f"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('{victim}', '{cid}')")
    r = post(st, user, order(user, email="other@example.test"))
    t.ok(r.status == 200 and stored_customer(st, user) not in (None, cid),
         "found by search but another user's: not used, a new customer made", repr(r))
    t.ok(f"stripe customer {cid} names user {user} but customers links it to {victim}"
         in st.error_log(), "logged")
    # The idempotent create replays it (search lagging): refused, clearly.
    st.psql(f"DELETE FROM customers WHERE user_id = '{user}'")
    st.stripe.call("PUT", "/_fake/search-lag", {"seconds": 3600})
    try:
        r = post(st, user, order(user, email="taken@example.test"))
    finally:
        st.stripe.call("PUT", "/_fake/search-lag", {"seconds": 0})
    t.eq((r.status, code(r)), (409, "customer_conflict"),
         "Stripe returned a customer linked to another user: 409 customer_conflict (before: 500)")
    t.ok(f"stripe customer {cid} for user {user} is linked to user {victim}" in st.error_log(),
         "logged with its cause")


def open_sessions(st, customer):
    return [s["id"] for s in objects(st, "checkout_sessions").values()
            if s["customer"] == customer and s["status"] == "open"]


def test_same_order_reused(st):
    user = "ses-same"
    r1, r2 = post(st, user), post(st, user)
    t.ok(r1.status == r2.status == 200 and r1.json()["sessionId"] == r2.json()["sessionId"],
         "the same order while its session is open: the same session", repr((r1, r2)))
    t.eq(len([q for q in calls(st, "POST", "/v1/checkout/sessions")
              if q["params"]["customer"] == stored_customer(st, user)]), 1, "Stripe was asked once")
    t.eq(open_sessions(st, stored_customer(st, user)), [r1.json()["sessionId"]],
         "one open session")


def test_other_order_expires(st):
    user = "ses-other"
    r1 = post(st, user)
    r2 = post(st, user, order(user, "basic", "yearly"))
    s1, s2 = r1.json()["sessionId"], r2.json()["sessionId"]
    t.ok(r2.status == 200 and s1 != s2, "another order: a new session", repr(r2))
    t.eq(objects(st, "checkout_sessions")[s1]["status"], "expired",
         "the first was expired at Stripe first")
    t.eq(open_sessions(st, stored_customer(st, user)), [s2], "one open session")
    t.eq(st.psql(f"SELECT status FROM checkout_sessions WHERE user_id = '{user}' ORDER BY id"),
         [["expired"], ["open"]], "recorded in checkout_sessions")
    exp = calls(st, "POST", f"/v1/checkout/sessions/{s1}/expire")
    t.ok(len(exp) == 1 and exp[0]["idempotency_key"], "one expire call, with an Idempotency-Key",
         repr(exp))


def test_paid_session(st):
    user = "ses-paid"
    s1 = post(st, user).json()["sessionId"]
    st.stripe.call("POST", f"/_fake/checkout/sessions/{s1}/complete", {})
    r = post(st, user, order(user, "basic"))
    t.eq((r.status, code(r)), (409, "already_subscribed"),
         "the open session was paid (webhook not here yet), another order: 409")
    t.eq(open_sessions(st, stored_customer(st, user)), [], "no second session to pay")
    t.eq(st.psql_one(f"SELECT status FROM checkout_sessions WHERE user_id = '{user}'"),
         "complete", "the row says complete")


def test_concurrent_orders(st):
    user = "ses-race"
    post(st, user)  # customer and a first open session
    orders = [order(user, "basic"), order(user, "pro", "yearly"), order(user, "basic", "yearly"),
              order(user, "pro")]
    results = [None] * len(orders)
    barrier = threading.Barrier(len(orders))

    def one(i):
        barrier.wait()
        results[i] = post(st, user, orders[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(orders))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    statuses = sorted(r.status for r in results)
    t.ok(all(s in (200, 409) for s in statuses) and 200 in statuses,
         "concurrent checkouts for different plans: 200 or 409 checkout_superseded",
         repr([(r.status, code(r)) for r in results]))
    t.ok(len(open_sessions(st, stored_customer(st, user))) <= 1,
         "at most one open session to pay afterwards",
         repr(open_sessions(st, stored_customer(st, user))))
    live = st.psql(f"SELECT stripe_session_id FROM checkout_sessions WHERE user_id = '{user}'"
                   " AND status IN ('creating', 'open')")
    t.ok(len(live) <= 1 and [s for (s,) in live] == open_sessions(st, stored_customer(st, user)),
         "at most one live row, and it is the open session", repr(live))


def test_lost_answer(st):
    """A creation whose answer was lost is finished with its own key, not repeated."""
    user = "ses-lost"
    s1 = post(st, user).json()["sessionId"]
    st.psql("UPDATE checkout_sessions SET status = 'creating', stripe_session_id = NULL,"
            f" url = NULL WHERE user_id = '{user}'")
    r = post(st, user)
    ses = calls(st, "POST", "/v1/checkout/sessions")
    t.ok(r.status == 200 and r.json()["sessionId"] == s1 and ses[-1]["replayed"],
         "same order: Stripe replays the session the lost call made", repr(r))
    st.psql("UPDATE checkout_sessions SET status = 'creating', stripe_session_id = NULL,"
            f" url = NULL WHERE user_id = '{user}'")
    r = post(st, user, order(user, "basic"))
    t.ok(r.status == 200 and objects(st, "checkout_sessions")[s1]["status"] == "expired" and
         open_sessions(st, stored_customer(st, user)) == [r.json()["sessionId"]],
         "another order: the lost one is finished, expired, then replaced", repr(r))


def test_webhook_marks_sessions(st):
    user = "ses-hook"
    s1 = post(st, user).json()["sessionId"]
    ev = event("checkout.session.completed", id="evt_ses_expired", type="checkout.session.expired")
    ev["data"]["object"] = {"id": s1, "object": "checkout.session", "status": "expired",
                            "mode": "subscription"}
    r = deliver(st, ev)
    t.eq((r.status, st.psql_one(f"SELECT status FROM checkout_sessions WHERE stripe_session_id = '{s1}'")),
         (200, "expired"), "checkout.session.expired marks the row expired")
    r = post(st, user)
    s2 = r.json()["sessionId"]
    t.ok(r.status == 200 and s2 != s1, "the next checkout makes a new session", repr(r))
    ev = event("checkout.session.completed", id="evt_ses_done")
    o = ev["data"]["object"]
    o["id"], o["customer"], o["client_reference_id"] = s2, stored_customer(st, user), user
    o["subscription"] = "sub_seshook"
    r = deliver(st, ev)
    t.eq((r.status, st.psql_one(f"SELECT status FROM checkout_sessions WHERE stripe_session_id = '{s2}'")),
         (200, "complete"), "checkout.session.completed marks the row complete")


def main():
    with t.guard("checkout sessions stack"), Stack(settings={"STRIPE_SYNC_MODE": "event"}) as st:
        for fn in (test_retry_after_database_failure, test_search_lag, test_key_follows_body,
                   test_linked_meanwhile, test_customer_of_another_user, test_same_order_reused,
                   test_other_order_expires, test_paid_session, test_concurrent_orders,
                   test_lost_answer, test_webhook_marks_sessions):
            t.run(fn, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
