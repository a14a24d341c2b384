"""webhook.cgi out-of-order suite: every delivery order of the real sequence
(customer.subscription.created, invoice.paid, customer.subscription.updated,
checkout.session.completed), the same with every event delivered twice, and
every order of created / updated / a second update / deleted, in BOTH sync
modes; each order must end in the same final state."""
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap  # noqa: E402
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
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
