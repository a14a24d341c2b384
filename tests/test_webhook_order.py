"""webhook.cgi out-of-order suite: every delivery order of the real sequence
(customer.subscription.created, invoice.paid, customer.subscription.updated,
checkout.session.completed), the same with every event delivered twice, and
every order of created / updated / a second update / deleted, in BOTH sync
modes; each order must end in the same final state.

Then event streams the Stripe simulator produces (tests/simulator.py): four
users through checkout, trial end, a failed payment and its retries, a card
fixed in the portal, a plan change, renewals and cancellations, delivered live
to webhook.cgi; the same events fed again in the delivered order, reversed and
shuffled must end in the state the live delivery left, in both modes."""
import itertools
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap  # noqa: E402
from test_simulator import (CARD_3DS, CARD_FAILS, CARD_OK, DEFAULT_EVENTS,  # noqa: E402
                            SIM_SETTINGS, Sim, user_row)
from test_webhook import (CUS42, SETTINGS, SUB42, count, deliver, event,  # noqa: E402
                          reset_db, sub_row)

SIGNUP = ["customer.subscription.created", "invoice.paid", "customer.subscription.updated",
          "checkout.session.completed"]
ENDING = ["customer.subscription.created", "customer.subscription.updated",
          "customer.subscription.updated.cancel_at_period_end", "customer.subscription.deleted"]


def play(st, mode, names, final_object):
    reset_db(st)
    if mode == "refetch":
        st.stripe.reset()
        st.stripe.put_subscription(SUB42, final_object)
    bad = []
    for i, name in enumerate(names):
        r = deliver(st, event(name), "http" if i % 5 == 4 else "cgi")
        if r.status != 200:
            bad.append((name, r.status, r.text))
    row = sub_row(st, SUB42)
    if row:
        row.pop("last_event_id")
    return bad, row


def run_orders(t, st, mode, label, names_list, final_object, want, nevents):
    first = None
    failures = []
    for names in names_list:
        bad, row = play(st, mode, names, final_object)
        short = " ".join(n.split(".")[-1][:8] for n in names)
        if bad:
            failures.append((short, "non-200", bad))
            continue
        if any(row.get(k) != v for k, v in want.items()):
            failures.append((short, "wrong state", row))
            continue
        if first is None:
            first = row
        elif row != first:
            failures.append((short, "differs from first order", row))
            continue
        if count(st, "billing_events") != nevents:
            failures.append((short, "billing_events", count(st, "billing_events")))
        if want.get("user_id") and count(st, "customers", f"stripe_customer_id = '{CUS42}'") != 1 \
                and "checkout.session.completed" in names:
            failures.append((short, "customer not linked", None))
    t.ok(not failures, f"{mode}: {label}: {len(names_list)} orders, same final state", failures[:3])
    return first


def sim_story(st, sim):
    """Four users' subscriptions through the simulator, delivered live.
    Separate actions are an hour apart (a person does not act twice within a
    second; events of one action share their second, as Stripe's do)."""
    def portal(user, **form):
        cus = user_row(st, user)["stripe_customer_id"]
        sub = user_row(st, user)["stripe_subscription_id"]
        sim.request("POST", sim.path(sim.portal(cus)), dict(form, subscription=sub))
        sim.wait()

    for user, tier, interval, card in (("o_ok", "pro", "monthly", CARD_OK),
                                       ("o_fix", "pro", "monthly", CARD_FAILS),
                                       ("o_lost", "pro", "monthly", CARD_FAILS),
                                       ("o_3ds", "basic", "yearly", CARD_3DS)):
        status, h, _ = sim.pay(sim.checkout(user, tier, interval), card)
        if card == CARD_3DS:
            sim.request("POST", h["location"], {"result": "complete"})
        sim.wait()
        sim.advance("1h")
    sim.advance("14d")                          # trials end: o_fix, o_lost past_due
    portal("o_fix", action="card", card_number=CARD_OK, card_expiry="12/34", card_cvc="123")
    sim.advance("1h")
    portal("o_ok", action="plan", price="price_basic_monthly")
    sim.advance("1h")
    portal("o_3ds", action="cancel", feedback="unused")
    sim.advance("20d")                          # o_lost's retries end: canceled
    portal("o_ok", action="cancel")
    sim.advance("1h")
    portal("o_ok", action="resume")
    sim.advance("1h")
    portal("o_ok", action="cancel")
    sim.advance("40d")                          # o_ok ends; o_fix renews twice
    sim.advance("365d")                         # o_3ds ends
    sim.wait(settled=True)


DB_SUBS = ("user_id", "stripe_customer_id", "stripe_subscription_id", "tier", "status",
           "billing_interval", "price_id", "unit_amount", "currency", "trial_start", "trial_end",
           "current_period_start", "current_period_end", "cancel_at_period_end", "canceled_at",
           "ended_at", "cancellation_reason", "last_event_created")
DB_TIMES = {"trial_start", "trial_end", "current_period_start", "current_period_end",
            "canceled_at", "ended_at", "last_event_created"}


def db_state(st):
    cols = ", ".join(f"extract(epoch FROM {c})::bigint" if c in DB_TIMES else c for c in DB_SUBS)
    return {"subscriptions": [dict(zip(DB_SUBS, r)) for r in st.psql(
                f"SELECT {cols} FROM subscriptions ORDER BY stripe_subscription_id")],
            "customers": st.psql("SELECT user_id, stripe_customer_id FROM customers ORDER BY 1"),
            "notifications": st.psql("SELECT user_id, kind, dedupe_key FROM notifications "
                                     "ORDER BY dedupe_key"),
            "billing_events": count(st, "billing_events")}


def differences(a, b):
    out = []
    for k in a:
        if a[k] != b[k]:
            out.append((k, [x for x in b[k] if x not in a[k]] if isinstance(a[k], list)
                        else b[k]))
    return out


def sim_streams(t, mode, shuffles):
    """Live delivery, then replays of the same events in other orders."""
    with Stack(settings=dict(SIM_SETTINGS, STRIPE_SYNC_MODE=mode), simulator=True) as st:
        sim = Sim(st)
        sim.deliver_to_stack()
        sim_story(st, sim)
        objs = sim.objects()
        recs = sim.call("GET", "deliveries")
        evs = [e for e in objs["events"] if e["type"] in DEFAULT_EVENTS]
        t.ok([r["event"] for r in recs] == [e["id"] for e in evs] and
             all(r["state"] == "succeeded" and len(r["attempts"]) == 1 for r in recs),
             f"{mode}: the simulator delivered {len(evs)} events in the order recorded, "
             "each accepted at once")
        live = db_state(st)
        want = {"o_ok": "canceled", "o_fix": "active", "o_lost": "canceled", "o_3ds": "canceled"}
        got = {r["user_id"]: r["status"] for r in live["subscriptions"]}
        t.eq(got, want, f"{mode}: live delivery: each user's final status")
        t.eq(live["billing_events"], len(evs), f"{mode}: each event recorded once")
        rng = random.Random(14)
        orders = [("delivered", evs), ("reversed", evs[::-1])]
        for i in range(shuffles):
            orders.append((f"shuffle {i + 1}", rng.sample(evs, len(evs))))
        for name, order in orders:
            reset_db(st)
            bad = []
            for i, ev in enumerate(order):
                r = deliver(st, json.dumps(ev).encode(), "http" if i % 7 == 6 else "cgi",
                            secret=st.settings["STRIPE_WEBHOOK_SECRET"])
                if r.status != 200:
                    bad.append((ev["type"], r.status, r.text))
            diff = differences(live, db_state(st))
            t.ok(not bad and not diff, f"{mode}: simulator stream, {name}: the live state",
                 bad[:3] or diff[:4])
        return {r["user_id"]: {k: r[k] for k in ("tier", "status", "billing_interval",
                                                 "cancel_at_period_end", "cancellation_reason")}
                for r in live["subscriptions"]}


def main():
    t = Tap()
    signup_orders = list(itertools.permutations(SIGNUP))
    twice_orders = [o + o[::-1] for o in signup_orders[::3]]
    ending_orders = list(itertools.permutations(ENDING))
    active = event("customer.subscription.updated")["data"]["object"]
    canceled = event("customer.subscription.deleted")["data"]["object"]
    want_active = {"user_id": "42", "stripe_customer_id": CUS42, "status": "active", "tier": "pro",
                   "billing_interval": "monthly", "unit_amount": 1500,
                   "current_period_end": 1796206504, "cancel_at_period_end": "f"}
    want_canceled = {"user_id": "42", "status": "canceled", "tier": "pro",
                     "canceled_at": 1798024831, "ended_at": 1798024831,
                     "cancellation_reason": "payment_failed", "cancel_at_period_end": "f"}
    finals = {}
    for mode in ("event", "refetch"):
        with t.guard(mode), Stack(settings=dict(SETTINGS, STRIPE_SYNC_MODE=mode)) as st:
            finals[mode] = run_orders(t, st, mode, "signup sequence", signup_orders, active,
                                      want_active, 4)
            run_orders(t, st, mode, "signup sequence, every event twice", twice_orders, active,
                       want_active, 4)
            run_orders(t, st, mode, "created/updated/updated/deleted (updated after deleted)",
                       ending_orders, canceled, want_canceled, 4)
    if finals.get("event") and finals.get("refetch"):
        keys = set(want_active) | {"price_id", "currency", "current_period_start", "trial_end"}
        t.eq({k: finals["event"][k] for k in keys}, {k: finals["refetch"][k] for k in keys},
             "both modes converge to the same subscription")
    sim_finals = {}
    for mode, shuffles in (("event", 4), ("refetch", 1)):
        with t.guard(f"simulator streams, {mode}"):
            sim_finals[mode] = sim_streams(t, mode, shuffles)
    if len(sim_finals) == 2:
        t.eq(sim_finals["event"], sim_finals["refetch"],
             "simulator streams: both modes end with the same subscriptions")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
