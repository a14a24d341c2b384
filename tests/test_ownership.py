#!/usr/bin/env python3
"""Who owns a Stripe customer (issue 15): `customers` is the authority.

A link user <-> customer is made only while neither side is linked (or it
is the same link).  An event whose client_reference_id or metadata.userId
names another user than customers says changes no ownership: it is
recorded in ownership_conflicts and logged, and a subscription belongs to
its customer's user.  A user with two live subscriptions is recorded and
gets the higher tier.  Before the fix the event's claim won: a session
from a Payment Link naming user U gave U the subscription of someone
else's customer.

Real webhook.cgi (piped and through Apache), create-checkout-session.cgi,
PostgreSQL and the fake Stripe.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import LockHolder, Stack, Tap, make_jwt, wait_until  # noqa: E402
from test_webhook import SETTINGS, body_of, deliver, event, signed, sub_row  # noqa: E402

t = Tap()
N = [0]


def uniq(prefix):
    N[0] += 1
    return f"{prefix}{N[0]}"


def link(st, user, customer):
    st.psql(f"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('{user}', '{customer}')")


def links(st, where):
    return st.psql(f"SELECT user_id, stripe_customer_id FROM customers WHERE {where} ORDER BY 1")


def conflicts(st, evt_id):
    return st.psql("SELECT kind, claimed_user_id, stripe_customer_id, owner_user_id,"
                   " owner_customer_id FROM ownership_conflicts"
                   f" WHERE stripe_event_id = '{evt_id}' ORDER BY kind")


def session_event(customer, sub, claimed, via_metadata=False):
    ev = event("checkout.session.completed", id=uniq("evt_ses_"))
    o = ev["data"]["object"]
    o["id"] = uniq("cs_test_own_")
    o["customer"] = customer
    o["subscription"] = sub
    o["client_reference_id"] = None if via_metadata else claimed
    o["metadata"] = {"userId": claimed, "tier": "pro", "interval": "monthly"} if via_metadata \
        else {"tier": "pro", "interval": "monthly"}
    return ev


def sub_event(customer, sub, claimed=None, name="customer.subscription.updated", **fields):
    ev = event(name, id=uniq("evt_sub_"))
    o = ev["data"]["object"]
    o["id"] = sub
    o["customer"] = customer
    o["metadata"] = {"userId": claimed} if claimed else {}
    o.update(fields)
    return ev


def inv_event(customer, sub, claimed=None, name="invoice.paid", old_api=False):
    """An invoice event; old_api: the subscription and the claim where
    invoices had them before 2025 (top-level subscription, metadata)."""
    ev = event(name, id=uniq("evt_inv_"))
    o = ev["data"]["object"]
    o["customer"] = customer
    if old_api:
        o["parent"] = None
        o["subscription"] = sub
        o["metadata"] = {"userId": claimed} if claimed else {}
    else:
        o["parent"]["subscription_details"]["subscription"] = sub
        o["parent"]["subscription_details"]["metadata"] = {"userId": claimed} if claimed else {}
    return ev


def test_session_for_linked_customer(st):
    """The issue's case: a session naming U whose customer is someone else's."""
    for via_metadata in (False, True):
        how = "metadata.userId" if via_metadata else "client_reference_id"
        alice, mallory = uniq("alice-"), uniq("mallory-")
        cus, sub = uniq("cus_alice"), uniq("sub_alice")
        link(st, alice, cus)
        ev = session_event(cus, sub, mallory, via_metadata)
        r = deliver(st, ev)
        t.eq(r.status, 200, f"{how}: session naming {mallory} for {alice}'s customer: 200")
        t.eq(sub_row(st, sub)["user_id"], alice,
             f"{how}: the subscription follows the customer's owner, not the claim")
        t.eq(links(st, f"user_id IN ('{alice}', '{mallory}')"), [[alice, cus]],
             f"{how}: customers unchanged, {mallory} not linked")
        t.eq(conflicts(st, ev["id"]), [["customer_of_other_user", mallory, cus, alice, None]],
             f"{how}: recorded in ownership_conflicts")
        t.ok("ownership conflict customer_of_other_user" in r.stderr, f"{how}: logged", r.stderr)
        t.eq(st.psql_one(f"SELECT user_id FROM billing_events WHERE stripe_event_id = '{ev['id']}'"),
             alice, f"{how}: billing_events names the owner")


def test_session_for_linked_user(st):
    """A session naming a user already linked to another customer links nothing."""
    bob, cus_bob = uniq("bob-"), uniq("cus_bob")
    link(st, bob, cus_bob)
    cus_new, sub = uniq("cus_paylink"), uniq("sub_paylink")
    ev = session_event(cus_new, sub, bob)
    r = deliver(st, ev, via="http")
    t.eq(r.status, 200, "session naming a user linked elsewhere: 200")
    t.eq(links(st, f"user_id = '{bob}' OR stripe_customer_id = '{cus_new}'"), [[bob, cus_bob]],
         "no link made, the user keeps their customer")
    t.eq(sub_row(st, sub)["user_id"], None, "the subscription is nobody's")
    t.eq(conflicts(st, ev["id"]), [["user_has_other_customer", bob, cus_new, None, cus_bob]],
         "recorded as user_has_other_customer")
    # The user's next checkout through this API still uses their own customer.
    tok = make_jwt({"sub": bob, "exp": int(time.time()) + 600})
    r = st.http("POST", "/api/stripe/create-checkout-session",
                headers={"Authorization": "Bearer " + tok},
                body={"userId": bob, "tier": "pro", "interval": "monthly",
                      "successUrl": "https://app.example.test/ok",
                      "cancelUrl": "https://app.example.test/no"})
    ses = [q for q in st.stripe.requests() if q["path"] == "/v1/checkout/sessions"]
    t.ok(r.status == 200 and ses and ses[-1]["params"]["customer"] == cus_bob,
         "the user's next checkout is created on their own customer", repr(r))


def test_neither_linked(st):
    """The one case a webhook links: neither side is linked yet."""
    carol, cus, sub = uniq("carol-"), uniq("cus_carol"), uniq("sub_carol")
    ev = session_event(cus, sub, carol)
    r = deliver(st, ev)
    t.eq((r.status, links(st, f"user_id = '{carol}'")), (200, [[carol, cus]]),
         "neither linked: the session links them")
    t.eq(sub_row(st, sub)["user_id"], carol, "and the subscription is the user's")
    again = session_event(cus, uniq("sub_carol"), carol)
    r = deliver(st, again)
    t.eq((r.status, conflicts(st, again["id"])), (200, []), "the same link again: no conflict")


def test_subscription_metadata(st):
    """The same rule for metadata.userId on subscription events."""
    alice, mallory = uniq("alice-"), uniq("mallory-")
    cus, sub = uniq("cus_alice"), uniq("sub_alice")
    link(st, alice, cus)
    ev = sub_event(cus, sub, mallory, "customer.subscription.created")
    r = deliver(st, ev)
    t.eq((r.status, sub_row(st, sub)["user_id"]), (200, alice),
         "subscription event claiming another user: the customer's owner keeps it")
    t.eq([c[0] for c in conflicts(st, ev["id"])], ["customer_of_other_user"], "recorded")

    bob, cus_bob = uniq("bob-"), uniq("cus_bob")
    link(st, bob, cus_bob)
    cus2, sub2 = uniq("cus_other"), uniq("sub_other")
    ev = sub_event(cus2, sub2, bob, "customer.subscription.created")
    r = deliver(st, ev)
    t.eq((r.status, sub_row(st, sub2)["user_id"]), (200, None),
         "claiming a user linked to another customer: the subscription is nobody's")
    t.eq(links(st, f"stripe_customer_id = '{cus2}'"), [], "and no link is made")
    t.eq([c[0] for c in conflicts(st, ev["id"])], ["user_has_other_customer"], "recorded")

    # A row an earlier event gave to the wrong user follows the customer's owner.
    dave, cus_d, sub_d = uniq("dave-"), uniq("cus_dave"), uniq("sub_dave")
    link(st, dave, cus_d)
    st.psql("INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id,"
            f" tier, status) VALUES ('someone-else', '{cus_d}', '{sub_d}', 'pro', 'incomplete')")
    r = deliver(st, sub_event(cus_d, sub_d))
    t.eq((r.status, sub_row(st, sub_d)["user_id"]), (200, dave),
         "an existing row's owner becomes the customer's owner")

    # An invoice's claim (parent.subscription_details.metadata.userId) likewise.
    inv = event("invoice.paid", id=uniq("evt_inv_"))
    inv["data"]["object"]["customer"] = cus
    inv["data"]["object"]["parent"]["subscription_details"]["subscription"] = sub
    inv["data"]["object"]["parent"]["subscription_details"]["metadata"] = {"userId": mallory}
    r = deliver(st, inv)
    t.eq((r.status, st.psql_one(f"SELECT user_id FROM billing_events WHERE stripe_event_id = '{inv['id']}'")),
         (200, alice), "invoice naming another user: billing event is the owner's")


def test_second_subscription(st):
    """Two live subscriptions of one user: recorded, the higher tier counts."""
    erin, cus = uniq("erin-"), uniq("cus_erin")
    link(st, erin, cus)
    pro = sub_event(cus, uniq("sub_erin_pro"), erin, "customer.subscription.created",
                    status="active")
    deliver(st, pro)
    basic = sub_event(cus, uniq("sub_erin_basic"), erin, "customer.subscription.created",
                      status="active")
    item = basic["data"]["object"]["items"]["data"][0]
    item["price"]["id"] = "price_basic_monthly"
    item["current_period_end"] += 86400 * 20  # ends later than the pro one
    r = deliver(st, basic)
    t.eq(r.status, 200, "a second live subscription: 200")
    rows = st.psql("SELECT kind, owner_user_id, stripe_subscription_id, other_subscription_id"
                   f" FROM ownership_conflicts WHERE stripe_event_id = '{basic['id']}'")
    t.eq(rows, [["second_subscription", erin, basic["data"]["object"]["id"],
                 pro["data"]["object"]["id"]]], "recorded as second_subscription")
    t.ok("ownership conflict second_subscription" in r.stderr, "logged", r.stderr)
    t.eq(st.psql_one(f"SELECT get_user_subscription('{erin}')->>'tier'"), "pro",
         "the user gets the higher tier, though the basic one ends later")
    t.eq(st.psql(f"SELECT count(*) FROM subscriptions WHERE user_id = '{erin}'"), [["2"]],
         "both stay the user's (the operator decides about refunds)")


def test_concurrent_claims(st):
    """Two sessions naming two users for one new customer, delivered at once: one link."""
    cus = uniq("cus_race")
    users = [uniq("racer-"), uniq("racer-")]
    evs = [session_event(cus, uniq("sub_race"), u) for u in users]
    bodies = [body_of(e) for e in evs]
    results = [None, None]
    barrier = threading.Barrier(2)

    def one(i):
        barrier.wait()
        results[i] = st.http("POST", "/api/stripe/webhook", headers=signed(bodies[i]),
                             body=bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.eq([r.status for r in results], [200, 200], "both deliveries answered 200")
    owner = links(st, f"stripe_customer_id = '{cus}'")
    t.ok(len(owner) == 1 and owner[0][0] in users, "exactly one link", repr(owner))
    n = st.psql_one("SELECT count(*) FROM ownership_conflicts WHERE stripe_event_id IN"
                    f" ('{evs[0]['id']}', '{evs[1]['id']}')")
    t.eq(n, "1", "the other claim is recorded as a conflict")
    t.eq(st.psql(f"SELECT DISTINCT user_id FROM subscriptions WHERE stripe_customer_id = '{cus}'"),
         [[owner[0][0]]] if owner else [], "both subscriptions belong to the winner")


def event_owner(st, ev):
    return st.psql_one(f"SELECT user_id FROM billing_events WHERE stripe_event_id = '{ev['id']}'")


def event_row_as_inserted(st, ev):
    """'t' when the event's billing_events row is the version its INSERT
    wrote, 'f' when a later statement of the transaction updated it: cmin
    is the command of the transaction that wrote a row version, and the
    INSERT is the first that writes."""
    return st.psql_one("SELECT cmin::text::int = 0 FROM billing_events"
                       f" WHERE stripe_event_id = '{ev['id']}'")


def test_owner_recorded_with_event(st):
    """In event mode a subscription event's row gets its owner with its
    INSERT (the links are read in the same round trip): the same owner as
    the subscription's, in each case of the rule."""
    alice, mallory, bob = uniq("alice-"), uniq("mallory-"), uniq("bob-")
    cus_a, cus_b, cus_new = uniq("cus_alice"), uniq("cus_bob"), uniq("cus_new")
    link(st, alice, cus_a)
    link(st, bob, cus_b)
    cases = [
        ("a linked customer, another user claimed: the customer's user",
         sub_event(cus_a, uniq("sub_o"), mallory, "customer.subscription.created"), alice),
        ("a new customer claimed by a user linked elsewhere: nobody",
         sub_event(cus_new, uniq("sub_o"), bob, "customer.subscription.created"), None),
        ("a new customer and a new user: the user, linked now",
         sub_event(cus_new, uniq("sub_o"), mallory, "customer.subscription.created"), mallory),
        ("no claim, a linked customer: the customer's user",
         sub_event(cus_a, uniq("sub_o")), alice),
    ]
    for what, ev, want in cases:
        r = deliver(st, ev)
        t.eq((r.status, event_owner(st, ev), sub_row(st, ev["data"]["object"]["id"])["user_id"],
              event_row_as_inserted(st, ev)), (200, want, want, "t"),
             what + "; written by the INSERT, not updated after")
    t.eq(links(st, f"stripe_customer_id = '{cus_new}'"), [[mallory, cus_new]],
         "the one link made")

    # Invoice events resolve their owner too, always: the same, with the INSERT.
    cus_inv, carol = uniq("cus_inv"), uniq("carol-")
    cases = [
        ("invoice.paid, a linked customer, another user claimed: the customer's user",
         inv_event(cus_a, uniq("sub_i"), mallory), alice),
        ("invoice.paid, a new customer claimed by a user linked elsewhere: nobody",
         inv_event(uniq("cus_inv_x"), uniq("sub_i"), bob), None),
        ("invoice.paid, a new customer and a new user: the user, linked now",
         inv_event(cus_inv, uniq("sub_i"), carol), carol),
        ("invoice.payment_failed, no claim, a linked customer: the customer's user",
         inv_event(cus_a, uniq("sub_i"), name="invoice.payment_failed"), alice),
        ("invoice.payment_action_required, one-off (no subscription): the customer's user",
         inv_event(cus_a, None, name="invoice.payment_action_required"), alice),
    ]
    for what, ev, want in cases:
        r = deliver(st, ev)
        t.eq((r.status, event_owner(st, ev), event_row_as_inserted(st, ev)), (200, want, "t"),
             what + "; written by the INSERT, not updated after")
    t.eq(links(st, f"stripe_customer_id = '{cus_inv}'"), [[carol, cus_inv]],
         "the invoice's link made")

    # A failed renewal still turns the live subscription past_due (its row is
    # read with the INSERT, under the lock).
    sub_f = uniq("sub_fail")
    r = deliver(st, sub_event(cus_a, sub_f, status="active"))
    ev = inv_event(cus_a, sub_f, name="invoice.payment_failed")
    r = deliver(st, ev)
    t.eq((r.status, sub_row(st, sub_f)["status"], event_owner(st, ev), event_row_as_inserted(st, ev)),
         (200, "past_due", alice, "t"), "invoice.payment_failed on an active subscription: past_due")


def test_unstored_links_nothing(st):
    """An event whose subscription is not stored (a status we do not know)
    is only recorded: it links nobody and records no owner, though its
    links would go out with the INSERT were it stored.  A deletion is
    stored whatever its status says (as canceled): it links."""
    user, cus = uniq("unk-"), uniq("cus_unk")
    ev = sub_event(cus, uniq("sub_unk"), user, status="on_vacation")
    r = deliver(st, ev)
    t.eq((r.status, r.json().get("ignored"), event_owner(st, ev),
          links(st, f"stripe_customer_id = '{cus}'")), (200, True, None, []),
         "an update with an unknown status: recorded only, no owner, no link")
    ev = sub_event(cus, uniq("sub_unk"), user, "customer.subscription.deleted",
                   status="on_vacation")
    r = deliver(st, ev)
    t.eq((r.status, event_owner(st, ev), sub_row(st, ev["data"]["object"]["id"])["status"],
          links(st, f"stripe_customer_id = '{cus}'")), (200, user, "canceled", [[user, cus]]),
         "a deletion with an unknown status: stored as canceled, the customer linked")


def test_duplicate_links_nothing(st):
    """A redelivery sends the links statement with its INSERT, which finds
    the event recorded: it must link nothing (here: a link removed by hand
    after the first delivery stays removed)."""
    for what, make in (("a subscription event", lambda cus, sub, user: sub_event(
                            cus, sub, user, "customer.subscription.created")),
                       ("an invoice", inv_event)):
        user, cus = uniq("dup-"), uniq("cus_dup")
        ev = make(cus, uniq("sub_dup"), user)
        r = deliver(st, ev)
        t.eq((r.status, links(st, f"stripe_customer_id = '{cus}'")), (200, [[user, cus]]),
             f"{what}: the first delivery links the customer")
        st.psql(f"DELETE FROM customers WHERE stripe_customer_id = '{cus}'")
        r = deliver(st, ev)
        t.eq((r.status, r.json().get("duplicate"), links(st, f"stripe_customer_id = '{cus}'")),
             (200, True, []), f"{what}: its redelivery is a duplicate, and no link is made")


def linked_while_waiting(st, claimed, other_link, make=None):
    """Delivers a new customer's first subscription event (or make(cus,
    sub, claimed)) while its subscription's lock is held elsewhere; once
    the event's INSERT has run (recording the owner it saw) and the
    delivery waits for the lock, other_link (user, customer) is committed,
    then the lock released.  Returns (answer, event)."""
    cus, sub = uniq("cus_wait"), uniq("sub_wait")
    ev = make(cus, sub, claimed) if make else \
        sub_event(cus, sub, claimed, "customer.subscription.created")
    other_link = (other_link[0], other_link[1] or cus)
    h = LockHolder(st, f"SELECT pg_advisory_xact_lock(hashtext('{sub}'))")
    got = []
    th = threading.Thread(target=lambda: got.append(deliver(st, ev)))
    try:
        th.start()
        wait_until("the delivery to wait for the lock", lambda: st.psql_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            f" AND pid <> {h.pid}") == "1")
        link(st, *other_link)
    finally:
        h.release()
        th.join(30)
    return got[0], ev


def test_link_made_while_waiting(st):
    """The INSERT records the owner as the links stood before the lock; a
    link committed meanwhile changes the owner, and the event's row is
    corrected at commit (the subscription's is written after)."""
    alice, mallory = uniq("alice-"), uniq("mallory-")
    r, ev = linked_while_waiting(st, alice, (mallory, None))
    sub = ev["data"]["object"]["id"]
    t.eq((r.status, event_owner(st, ev), sub_row(st, sub)["user_id"], event_row_as_inserted(st, ev)),
         (200, mallory, mallory, "f"), "the customer linked to another user meanwhile: that"
         " user owns the event (its row updated at commit) and the subscription")
    t.eq([c[0] for c in conflicts(st, ev["id"])], ["customer_of_other_user"], "recorded")

    carol = uniq("carol-")
    r, ev = linked_while_waiting(st, carol, (carol, uniq("cus_elsewhere")))
    sub = ev["data"]["object"]["id"]
    t.eq((r.status, event_owner(st, ev), sub_row(st, sub)["user_id"], event_row_as_inserted(st, ev)),
         (200, None, None, "f"), "the claimed user linked to another customer meanwhile:"
         " the event's recorded owner is taken back at commit")
    t.eq([c[0] for c in conflicts(st, ev["id"])], ["user_has_other_customer"], "recorded")

    dave, erin = uniq("dave-"), uniq("erin-")
    r, ev = linked_while_waiting(st, dave, (erin, None), inv_event)
    t.eq((r.status, event_owner(st, ev), event_row_as_inserted(st, ev)), (200, erin, "f"),
         "an invoice, its customer linked to another user meanwhile: that user owns the event")
    t.eq([c[0] for c in conflicts(st, ev["id"])], ["customer_of_other_user"], "recorded")

    fay, gus = uniq("fay-"), uniq("gus-")
    r, ev = linked_while_waiting(st, fay, (gus, None),
                                 lambda cus, sub, claimed: inv_event(cus, sub, claimed, old_api=True))
    t.eq((r.status, event_owner(st, ev), event_row_as_inserted(st, ev)), (200, gus, "f"),
         "the same for a pre-2025 invoice (top-level subscription and metadata)")


def test_invoice_claims(st):
    """An invoice claiming two users (its subscription's metadata as
    parent.subscription_details carries it, and its own metadata): the
    subscription's wins, the same for the INSERT's links as for the
    owner; and an invoice.paid does not wait for its subscription's row."""
    hal, ivy, cus = uniq("hal-"), uniq("ivy-"), uniq("cus_two_claims")
    ev = inv_event(cus, uniq("sub_two_claims"), hal)
    ev["data"]["object"]["metadata"] = {"userId": ivy}
    r = deliver(st, ev)
    t.eq((r.status, event_owner(st, ev), event_row_as_inserted(st, ev),
          links(st, f"stripe_customer_id = '{cus}'")), (200, hal, "t", [[hal, cus]]),
         "two claims: the subscription's (parent) is the owner, linked with the INSERT")

    sub = uniq("sub_rowlocked")
    r = deliver(st, sub_event(cus, sub, status="active"))
    h = LockHolder(st, f"SELECT 1 FROM subscriptions WHERE stripe_subscription_id = '{sub}' FOR UPDATE")
    try:
        ev = inv_event(cus, sub)
        r = deliver(st, ev)
    finally:
        h.release()
    t.eq((r.status, event_owner(st, ev)), (200, hal),
         "invoice.paid while another transaction holds its subscription's row: no wait for it")


def customer_lock_waiters(st, cus):
    """Sessions waiting for the lock of customer cus (subscription.c, LOCK_CUSTOMER)."""
    return int(st.psql_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        f" AND classid = 7294813 AND objsubid = 2 AND objid = hashtext('{cus}')::oid"))


def test_checkout_updates_while_event_links(st):
    """Checkout links customer C to U and then updates C's other
    subscriptions (row locks, without their advisory locks) while an
    event for one of them waits, under its own lock, for the customer's
    lock that checkout holds.  The event must not hold its subscription's
    row then: PostgreSQL would find a deadlock and abort one of the two
    (retried, but a second of waiting and an error in the log)."""
    for kind in ("invoice.payment_failed", "customer.subscription.updated"):
        cus, user = uniq("cus_dl"), uniq("dl-")
        sub1, sub2 = uniq("sub_dl1_"), uniq("sub_dl2_")
        st.psql("INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, tier, status,"
                f" last_event_created) VALUES ('{sub1}', '{cus}', 'pro', 'active', to_timestamp(1000)),"
                f" ('{sub2}', '{cus}', 'pro', 'incomplete', to_timestamp(1000))")
        log = os.path.join(st.tmp, "logs", "postgres.log")
        deadlocks = open(log, errors="replace").read().count("deadlock detected")
        row2 = LockHolder(st, f"SELECT 1 FROM subscriptions WHERE stripe_subscription_id = '{sub2}' FOR UPDATE")
        lock1 = LockHolder(st, f"SELECT pg_advisory_xact_lock(hashtext('{sub1}'))")
        holders = f"{row2.pid}, {lock1.pid}"
        ev = inv_event(cus, sub1, user, name=kind) if kind.startswith("invoice") \
            else sub_event(cus, sub1, user, kind, status="active")
        got = {}
        # Checkout waits through every step below: lock waits longer than
        # the default 4 s, which a slow (ASan) build on a busy host can near.
        patient = {"DB_LOCK_TIMEOUT_MS": "20000", "DB_STATEMENT_TIMEOUT_MS": "30000"}
        threads = [threading.Thread(target=lambda: got.update(
                       ses=deliver(st, session_event(cus, sub2, user), env=patient))),
                   threading.Thread(target=lambda: got.update(ev=deliver(st, ev, env=patient)))]

        def waiting(locktype):
            return int(st.psql_one("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                   f" AND locktype = '{locktype}' AND pid NOT IN ({holders})"))
        try:
            threads[0].start()  # links C to U, then waits for sub2's row
            wait_until("checkout to wait for sub2's row", lambda: waiting("transactionid") == 1)
            threads[1].start()  # waits for sub1's lock
            wait_until("the event to wait for sub1's lock", lambda: waiting("advisory") == 1)
            lock1.release()     # the event goes on: waits for the customer's lock, checkout's
            wait_until("the event to wait for the customer's lock",
                       lambda: customer_lock_waiters(st, cus) == 1)
        finally:
            lock1.release()
            row2.release()      # checkout goes on: its UPDATE reaches sub1's row
            for th in threads:
                th.join(30)
        retried = [k for k in ("ses", "ev") if "transaction retried" in got[k].stderr]
        t.eq((got["ses"].status, got["ev"].status, retried,
              open(log, errors="replace").read().count("deadlock detected") - deadlocks,
              sub_row(st, sub1)["user_id"], event_owner(st, ev)), (200, 200, [], 0, user, user),
             f"{kind} waiting for a link while checkout updates its subscription: no deadlock")


def test_unclaimed_while_checkout_links(st, mode="event"):
    """An unclaimed event for a customer's second subscription while
    checkout links that customer: the event found no link, and could
    commit after checkout's update of the customer's subscriptions had
    run and missed its uncommitted row; that subscription stayed unowned.
    Now both take the customer's lock (held here until both wait for it),
    and in either order the second subscription is the owner's."""
    patient = {"DB_LOCK_TIMEOUT_MS": "20000", "DB_STATEMENT_TIMEOUT_MS": "30000"}
    for first in ("unclaimed event", "checkout"):
        cus, user = uniq("cus_race"), uniq("race-")
        sub1, sub2 = uniq("sub_race1_"), uniq("sub_race2_")
        unclaimed = sub_event(cus, sub2, None, "customer.subscription.created", status="active")
        checkout = session_event(cus, sub1, user)
        if mode == "refetch":
            st.stripe.put_subscription(sub2, unclaimed["data"]["object"])
            st.stripe.put_subscription(sub1, sub_event(cus, sub1, None, status="active")
                                       ["data"]["object"])
        runs = {"unclaimed event": unclaimed, "checkout": checkout}
        order = [first] + [k for k in runs if k != first]
        got = {}
        h = LockHolder(st, f"SELECT pg_advisory_xact_lock(7294813, hashtext('{cus}'))")
        threads = []
        try:
            for n, name in enumerate(order, 1):
                threads.append(threading.Thread(target=lambda name=name: got.update(
                    {name: deliver(st, runs[name], env=patient)})))
                threads[-1].start()
                wait_until(f"{name} to wait for the customer's lock",
                           lambda n=n: customer_lock_waiters(st, cus) == n)
        finally:
            h.release()
            for th in threads:
                th.join(30)
        t.eq(([got[k].status for k in order], sub_row(st, sub2)["user_id"],
              sub_row(st, sub1)["user_id"], links(st, f"stripe_customer_id = '{cus}'")),
             ([200, 200], user, user, [[user, cus]]),
             f"{mode} mode, {first} first: the unclaimed second subscription is the linked"
             " user's too")


def test_unclaimed_stopped_at_its_upsert(st):
    """The race itself, held open where it bit: an unclaimed event for a
    customer's second subscription has found no link and waits at its
    upsert (another session holds an uncommitted row of that
    subscription) when checkout links the customer.  Without the
    customer's lock checkout committed first, its update of the
    customer's subscriptions missed the event's row, and the event then
    stored it unowned."""
    cus, user = uniq("cus_held"), uniq("held-")
    sub1, sub2 = uniq("sub_held1_"), uniq("sub_held2_")
    patient = {"DB_LOCK_TIMEOUT_MS": "20000", "DB_STATEMENT_TIMEOUT_MS": "30000"}
    got = {}
    h = LockHolder(st, "INSERT INTO subscriptions (stripe_subscription_id, tier, status)"
                       f" VALUES ('{sub2}', 'pro', 'incomplete')")
    threads = [threading.Thread(target=lambda: got.update(ev=deliver(
                   st, sub_event(cus, sub2, None, "customer.subscription.created",
                                 status="active"), env=patient))),
               threading.Thread(target=lambda: got.update(ses=deliver(
                   st, session_event(cus, sub1, user), env=patient)))]
    try:
        threads[0].start()
        wait_until("the event to wait at its upsert", lambda: st.psql_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
            f" AND pid <> {h.pid}") == "1")
        threads[1].start()
        wait_until("checkout to end or to wait for the customer's lock",
                   lambda: "ses" in got or customer_lock_waiters(st, cus) == 1)
    finally:
        h.release()
        for th in threads:
            th.join(30)
    t.eq((got["ev"].status, got["ses"].status, sub_row(st, sub2)["user_id"],
          sub_row(st, sub1)["user_id"]), (200, 200, user, user),
         "an unclaimed event stopped at its upsert while checkout links: the second"
         " subscription is the linked user's")


def test_linked_customer_takes_no_lock(st):
    """A linked customer's user is settled: its events do not take the
    customer's lock, so one held elsewhere (self-service holds a
    subscription's lock across its calls to Stripe) delays none of them.
    Checkout does wait for it: it updates the customer's other
    subscriptions, which an unclaimed event may be storing (the customer
    linked by create-checkout-session meanwhile), and two checkouts
    would take those rows in opposite orders."""
    user, cus = uniq("settled-"), uniq("cus_settled")
    link(st, user, cus)
    h = LockHolder(st, f"SELECT pg_advisory_xact_lock(7294813, hashtext('{cus}'))")
    got = []
    th = threading.Thread(target=lambda: got.append(deliver(
        st, session_event(cus, uniq("sub_settled"), user),
        env={"DB_LOCK_TIMEOUT_MS": "20000", "DB_STATEMENT_TIMEOUT_MS": "30000"})))
    try:
        sub = uniq("sub_settled")
        answers = [deliver(st, ev).status for ev in (
            sub_event(cus, sub, None, "customer.subscription.created", status="active"),
            inv_event(cus, sub, name="invoice.payment_failed"))]
        th.start()
        wait_until("checkout to wait for the customer's lock",
                   lambda: customer_lock_waiters(st, cus) == 1)
    finally:
        h.release()
        th.join(30)
    t.eq((answers, (sub_row(st, sub) or {}).get("user_id"), got[0].status if got else None),
         ([200, 200], user, 200), "a linked customer's events while its lock is held elsewhere:"
         " answered, owned; its checkout waited for the lock, then answered")


def test_refetch_mode(t_, settings):
    with Stack(settings=settings) as st:
        alice, mallory = uniq("alice-"), uniq("mallory-")
        cus, sub = uniq("cus_alice"), uniq("sub_alice")
        link(st, alice, cus)
        obj = sub_event(cus, sub, mallory)["data"]["object"]
        st.stripe.put_subscription(sub, obj)
        r = deliver(st, session_event(cus, sub, mallory))
        t.eq((r.status, sub_row(st, sub)["user_id"]), (200, alice),
             "refetch mode: the refetched subscription's claim loses to customers too")
        test_unclaimed_while_checkout_links(st, "refetch")


def main():
    with t.guard("ownership stack"), Stack(settings=dict(SETTINGS, STRIPE_SYNC_MODE="event")) as st:
        for fn in (test_session_for_linked_customer, test_session_for_linked_user,
                   test_neither_linked, test_subscription_metadata, test_second_subscription,
                   test_concurrent_claims, test_owner_recorded_with_event,
                   test_unstored_links_nothing, test_duplicate_links_nothing,
                   test_link_made_while_waiting, test_invoice_claims,
                   test_checkout_updates_while_event_links,
                   test_unclaimed_while_checkout_links, test_unclaimed_stopped_at_its_upsert,
                   test_linked_customer_takes_no_lock):
            t.run(fn, st)
    t.run(test_refetch_mode, t, dict(SETTINGS, STRIPE_SYNC_MODE="refetch"))
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
