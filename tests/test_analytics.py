#!/usr/bin/env python3
"""The business figures of sql/schema.sql against a generated history.

Fourteen months of customers in two currencies (sign-ups with and without a
trial, upgrades, downgrades, seat changes, failed payments, unpaid,
cancellations, reactivations, second subscriptions, redelivered and stale
events) are delivered as signed Stripe events to the real webhook.cgi.  The
test keeps its own model of every subscription (the event-mode rules of
lib/subscription.c) and computes every figure from it in Python: MRR at each
month boundary from the subscriptions' states at that instant, the movements
per customer, churn, conversion, plan moves.  Then it compares them with
analytics_monthly(), mrr_now, analytics_snapshot(), and checks that
rebuild_mrr_movements() gives back the ledger live writing produced.

Usage: past months are written to usage_tracking directly (track_usage only
ever counts the current month); the current month goes through the real
usage.cgi, whose 402 answers the test counts and compares with
analytics_quota_breaches(); feature usage and quota utilisation likewise.
"""

import calendar
import datetime
import json
import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_SETTINGS, PsqlError, Stack, Tap, stripe_signature  # noqa: E402

SECRET = DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"]
USAGE_KEY = {"Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]}
SETTINGS = {"STRIPE_SYNC_MODE": "event"}

DAY = 86400
BASE = calendar.timegm((2025, 1, 1, 0, 0, 0))
END = BASE + 420 * DAY                    # last event time (2026-02-25)
FIRST_MONTH = (2024, 12)                  # compared range, one month either side
LAST_MONTH = (2026, 3)
TIERS = ["free", "basic", "pro", "enterprise"]
STATUSES = ["incomplete", "incomplete_expired", "trialing", "active", "past_due",
            "canceled", "unpaid", "paused"]
FINAL = {"canceled", "incomplete_expired"}
RANK = {"incomplete": 0, "trialing": 1, "active": 2, "past_due": 3, "unpaid": 3,
        "paused": 3, "canceled": 4, "incomplete_expired": 4}
PRICES = {"usd": {"basic": 900, "pro": 1900, "enterprise": 9900},
          "eur": {"basic": 800, "pro": 1700, "enterprise": 8900}}
TYPES = ["pain_entry", "mood_entry", "activity_log", "export", "storage"]
LIMITS = {"free": {"pain_entry": 100, "mood_entry": 100, "activity_log": 100, "export": 2,
                   "storage": 104857600},
          "basic": {"pain_entry": 1000, "mood_entry": 1000, "activity_log": 1000, "export": 20,
                    "storage": 1073741824},
          "pro": {"pain_entry": None, "mood_entry": None, "activity_log": None, "export": 200,
                  "storage": 10737418240},
          "enterprise": {t: None for t in TYPES}}
RATE_TOL = 2e-6


# ---------------------------------------------------------------------------
# Time helpers

def month_of(ts):
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return (d.year, d.month)


def month_start(ym):
    return calendar.timegm((ym[0], ym[1], 1, 0, 0, 0))


def next_month(ym):
    return (ym[0] + ym[1] // 12, ym[1] % 12 + 1)


def months(first, last):
    out = [first]
    while out[-1] != last:
        out.append(next_month(out[-1]))
    return out


def ym_text(ym):
    return f"{ym[0]:04d}-{ym[1]:02d}-01"


# ---------------------------------------------------------------------------
# The generated history


def monthly_amount(status, unit, qty, interval, cur):
    """Stripe Billing's MRR contribution (the rule in the README), written anew."""
    if status not in ("active", "past_due") or unit is None or unit <= 0 or cur is None:
        return 0
    q = 1 if qty is None else qty
    return (unit * q + 6) // 12 if interval == "yearly" else unit * q


class History:
    """Generates Stripe events for customers with random but seeded lives."""

    def __init__(self, seed):
        self.rnd = random.Random(seed)
        self.events = []
        self.n = 0
        self.nsub = 0
        self.live_users = {}       # user -> tier of a single live subscription at the end

    def event(self, typ, created, obj):
        self.n += 1
        self.events.append({"id": f"evt_an{self.n:05d}", "object": "event", "type": typ,
                            "created": created, "data": {"object": obj}})

    def sub_object(self, s, **over):
        unit = PRICES[s["cur"]][s["tier"]] * (10 if s["interval"] == "yearly" else 1)
        o = {
            "id": s["id"], "object": "subscription", "customer": s["customer"],
            "status": s["status"], "currency": s["cur"],
            "cancel_at_period_end": s.get("cape", False), "canceled_at": None,
            "ended_at": None, "trial_start": s.get("trial_start"),
            "trial_end": s.get("trial_end"),
            "metadata": {"userId": s["user"], "tier": s["tier"], "interval": s["interval"]},
            "items": {"object": "list", "data": [{
                "id": "si_" + s["id"][4:], "object": "subscription_item",
                "quantity": s["qty"],
                "current_period_start": s["t"], "current_period_end": s["t"] + 30 * DAY,
                "price": {"id": f"price_an_{s['tier']}_{s['interval']}_{s['cur']}",
                          "object": "price", "currency": s["cur"], "unit_amount": unit,
                          "recurring": {"interval": "year" if s["interval"] == "yearly"
                                        else "month", "interval_count": 1}}}]},
        }
        o.update(over)
        return o

    def emit(self, s, typ, t, **changes):
        s.update(changes)
        s["t"] = t
        self.event(typ, t, self.sub_object(s))

    def invoice_failed(self, s, t):
        self.event("invoice.payment_failed", t, {
            "id": f"in_an{self.n:05d}", "object": "invoice", "customer": s["customer"],
            "currency": s["cur"], "amount_due": 1, "attempt_count": 1,
            "parent": {"type": "subscription_details", "subscription_details": {
                "subscription": s["id"], "metadata": {"userId": s["user"]}}}})

    def checkout(self, s, t):
        self.event("checkout.session.completed", t, {
            "id": f"cs_an{self.n:05d}", "object": "checkout.session", "mode": "subscription",
            "status": "complete", "customer": s["customer"], "subscription": s["id"],
            "client_reference_id": s["user"], "currency": s["cur"], "amount_total": 1,
            "metadata": {"userId": s["user"], "tier": s["tier"], "interval": s["interval"]}})

    def new_sub(self, customer, user, cur, t):
        self.nsub += 1
        r = self.rnd
        return {"id": f"sub_an{self.nsub:04d}", "customer": customer, "user": user, "cur": cur,
                "tier": r.choice(["basic", "basic", "pro", "pro", "enterprise"]),
                "interval": "yearly" if r.random() < 0.2 else "monthly",
                "qty": r.choice([1, 1, 1, 1, 2, 3]), "status": "incomplete", "t": t}

    def life(self, s, t):
        """Events of one subscription from t; returns the time it ended or None."""
        r = self.rnd
        if r.random() < 0.15:
            self.checkout(s, t - 20)            # before the subscription: a stub row
        if r.random() < 0.4:
            te = t + 14 * DAY
            self.emit(s, "customer.subscription.created", t, status="trialing",
                      trial_start=t, trial_end=te)
            if r.random() < 0.5:
                self.checkout(s, t + 30)
            self.emit(s, "customer.subscription.trial_will_end", te - 3 * DAY)
            x = r.random()
            if x < 0.62:
                self.emit(s, "customer.subscription.updated", te, status="active")
            elif x < 0.77:
                self.emit(s, "customer.subscription.deleted", te - 2 * DAY, status="canceled")
                return te - 2 * DAY
            elif x < 0.9:
                self.invoice_failed(s, te + 60)
                s["status"] = "past_due"
                if r.random() < 0.6:
                    self.emit(s, "customer.subscription.updated", te + 3 * DAY, status="active")
                else:
                    self.emit(s, "customer.subscription.deleted", te + 5 * DAY, status="canceled")
                    return te + 5 * DAY
            else:
                self.emit(s, "customer.subscription.updated", te, status="paused")
                self.emit(s, "customer.subscription.deleted", te + 20 * DAY, status="canceled")
                return te + 20 * DAY
            t = te
        else:
            self.emit(s, "customer.subscription.created", t, status="incomplete")
            if r.random() < 0.5:
                self.checkout(s, t + 20)
            if r.random() < 0.05:
                self.emit(s, "customer.subscription.updated", t + 23 * 3600,
                          status="incomplete_expired")
                return t + 23 * 3600
            self.emit(s, "customer.subscription.updated", t + 60, status="active")
            t += 60
        while True:
            t += r.randrange(20 * DAY, 45 * DAY)
            if t > END:
                return None
            x = r.random()
            up = TIERS[min(TIERS.index(s["tier"]) + 1, 3)]
            down = TIERS[max(TIERS.index(s["tier"]) - 1, 1)]
            if x < 0.12:
                if up != s["tier"] and r.random() < 0.7:
                    self.emit(s, "customer.subscription.updated", t, tier=up)
                else:
                    self.emit(s, "customer.subscription.updated", t, qty=s["qty"] + 1)
            elif x < 0.20:
                if down != s["tier"] and r.random() < 0.5:
                    self.emit(s, "customer.subscription.updated", t, tier=down)
                elif s["qty"] > 1:
                    self.emit(s, "customer.subscription.updated", t, qty=s["qty"] - 1)
                else:
                    self.emit(s, "customer.subscription.updated", t,
                              interval="yearly" if s["interval"] == "monthly" else "monthly")
            elif x < 0.30 and s["status"] == "active":
                self.invoice_failed(s, t)
                if r.random() < 0.5:            # Stripe's own update, same status
                    self.emit(s, "customer.subscription.updated", t + 5, status="past_due")
                s["status"] = "past_due"
                y = r.random()
                if y < 0.55:
                    self.emit(s, "customer.subscription.updated", t + 4 * DAY, status="active")
                    t += 4 * DAY
                elif y < 0.8:
                    self.emit(s, "customer.subscription.updated", t + 15 * DAY, status="unpaid")
                    t += 15 * DAY
                    if r.random() < 0.5:
                        self.emit(s, "customer.subscription.updated", t + 25 * DAY,
                                  status="active")
                        t += 25 * DAY
                    else:
                        self.emit(s, "customer.subscription.deleted", t + 30 * DAY,
                                  status="canceled")
                        return t + 30 * DAY
                else:
                    self.emit(s, "customer.subscription.deleted", t + 20 * DAY, status="canceled")
                    return t + 20 * DAY
            elif x < 0.36:
                if r.random() < 0.5:
                    self.emit(s, "customer.subscription.updated", t, cape=True)
                    t += 10 * DAY
                self.emit(s, "customer.subscription.deleted", t, status="canceled")
                return t

    def customer(self, i):
        r = self.rnd
        cus, user = f"cus_an{i:03d}", f"an-user-{i}"
        cur = "eur" if r.random() < 0.3 else "usd"
        t = BASE + r.randrange(0, 300 * DAY)
        subs = []
        while t is not None and t < END:
            s = self.new_sub(cus, user, cur, t)
            subs.append(s)
            if r.random() < 0.12:               # a second subscription beside the first
                s2 = self.new_sub(cus, user, cur, t + r.randrange(5 * DAY, 60 * DAY))
                subs.append(s2)
                self.life(s2, s2["t"])
            ended = self.life(s, t)
            if ended is None or r.random() < 0.6:
                break
            t = ended + r.randrange(20 * DAY, 90 * DAY)
        # usage.cgi later: users with exactly one subscription, live at the end
        if len(subs) == 1 and subs[0]["status"] in ("active", "trialing", "past_due") \
                and subs[0]["t"] <= END:
            self.live_users[user] = subs[0]["tier"]

    def deliveries(self):
        """Events in created order, with redeliveries and stale events mixed in."""
        r = self.rnd
        evs = sorted(self.events, key=lambda e: e["created"])
        out = []
        for e in evs:
            if e["created"] > END:
                continue
            out.append(e)
            if r.random() < 0.05:
                out.append(e)                   # redelivered: same id
            if e["type"] == "customer.subscription.updated" and r.random() < 0.06:
                stale = json.loads(json.dumps(e))
                self.n += 1
                stale["id"] = f"evt_an{self.n:05d}"
                stale["created"] = e["created"] - 30
                stale["data"]["object"]["items"]["data"][0]["quantity"] = 9
                stale["data"]["object"]["status"] = "active"
                out.append(stale)               # older than what was applied: ignored
        return out


# ---------------------------------------------------------------------------
# The test's own model of the database (event mode of lib/subscription.c)


class Model:
    def __init__(self):
        self.subs = {}           # id -> state dict
        self.seen = set()
        self.changes = []        # (at, sub, customer, status_b, cur_b, amt_b, status_a, cur_a, amt_a)
        self.timeline = {}       # sub -> [(at, customer, cur, amount)]

    @staticmethod
    def applies(row, status, created, deletion):
        if row["status"] in FINAL and status not in FINAL:
            return False
        if deletion or row["last"] is None or created > row["last"]:
            return True
        if created < row["last"]:
            return False
        return RANK[status] >= RANK[row["status"]]

    def record(self, sid, old, new, at):
        amt = lambda s: 0 if s is None else monthly_amount(  # noqa: E731
            s["status"], s["unit"], s["qty"], s["interval"], s["cur"])
        key = lambda s: None if s is None else (  # noqa: E731
            s["status"], s["unit"], s["qty"], s["interval"], s["cur"])
        if old is not None and key(old) == key(new):
            return
        self.changes.append((at, sid, new["customer"] or sid,
                             old and old["status"], old and old["cur"], amt(old),
                             new["status"], new["cur"], amt(new)))
        self.timeline.setdefault(sid, []).append((at, new["customer"] or sid, new["cur"],
                                                  amt(new)))

    def apply(self, ev, now):
        if ev["id"] in self.seen:
            return
        self.seen.add(ev["id"])
        typ, o, created = ev["type"], ev["data"]["object"], ev["created"]
        if typ.startswith("customer.subscription."):
            sid, status = o["id"], o["status"]
            deletion = typ == "customer.subscription.deleted"
            if deletion and status not in FINAL:
                status = "canceled"
            row = self.subs.get(sid)
            if row is not None and not self.applies(row, status, created, deletion):
                return
            item = o["items"]["data"][0]
            new = {"customer": o["customer"], "status": status,
                   "unit": item["price"]["unit_amount"], "qty": item["quantity"],
                   "interval": o["metadata"]["interval"], "cur": o["currency"],
                   "tier": o["metadata"]["tier"],
                   "last": created if row is None or row["last"] is None
                   else max(row["last"], created)}
            self.subs[sid] = new
            self.record(sid, row, new, new["last"])
        elif typ == "checkout.session.completed":
            sid = o["subscription"]
            if sid not in self.subs:
                new = {"customer": o["customer"], "status": "incomplete", "unit": None,
                       "qty": None, "interval": o["metadata"]["interval"], "cur": None,
                       "tier": o["metadata"]["tier"], "last": None}
                self.subs[sid] = new
                self.record(sid, None, new, now)
        elif typ == "invoice.payment_failed":
            sid = o["parent"]["subscription_details"]["subscription"]
            row = self.subs.get(sid)
            if row is None or row["status"] not in ("active", "trialing") \
                    or not self.applies(row, "past_due", created, False):
                return
            new = dict(row, status="past_due", last=max(row["last"] or created, created))
            self.subs[sid] = new
            self.record(sid, row, new, new["last"])

    # -- figures ---------------------------------------------------------

    def movements(self):
        """Customer-level classification of every MRR change, in order."""
        cust = {}
        ever = set()
        out = []           # (at, cur, kind, delta)
        for at, sid, c, sb, cb, ab, sa, ca, aa in self.changes:
            assert cb in (None, ca) or ab == 0 or aa == 0, "no currency switches generated"
            cur = ca or cb
            if ab == aa:
                continue
            before = cust.get((c, cur), 0)
            after = before + aa - ab
            if before <= 0 < after:
                kind = "reactivation" if c in ever else "new"
            elif after <= 0 < before:
                kind = "churn"
            else:
                kind = "expansion" if aa > ab else "contraction"
            ever.add(c)
            cust[(c, cur)] = after
            out.append((at, cur, kind, aa - ab))
        return out

    def state_mrr(self, t, cur):
        """MRR and paying customers at instant t from the states then."""
        per_customer = {}
        for sid, tl in self.timeline.items():
            last = None
            for at, c, cu, amt in tl:
                if at < t:
                    last = (c, cu, amt)
            if last and last[1] == cur and last[2] > 0:
                per_customer[last[0]] = per_customer.get(last[0], 0) + last[2]
        return sum(per_customer.values()), sum(1 for v in per_customer.values() if v > 0)

    def monthly(self, cur, yms):
        mv = self.movements()
        rows = []
        for ym in yms:
            s, e = month_start(ym), month_start(next_month(ym))
            inm = [m for m in mv if m[1] == cur and s <= m[0] < e]

            def tot(kind):
                return sum(d for _, _, k, d in inm if k == kind)

            def cnt(kind):
                return sum(1 for _, _, k, _ in inm if k == kind)

            mrr_s, cust_s = self.state_mrr(s, cur)
            mrr_e, cust_e = self.state_mrr(e, cur)
            trans = [c for c in self.changes if (c[7] or c[4]) == cur and s <= c[0] < e]
            started = sum(1 for c in trans if c[6] == "trialing" and c[3] != "trialing")
            ended = [c for c in trans if c[3] == "trialing" and c[6] != "trialing"]
            converted = sum(1 for c in ended if c[6] in ("active", "past_due") and c[8] > 0)
            churned_mrr, contraction = -tot("churn"), -tot("contraction")
            expansion, reactivation = tot("expansion"), tot("reactivation")

            def rate(a, b):
                return None if b == 0 else a / b

            rows.append({
                "month": ym_text(ym), "mrr_start": mrr_s, "mrr_end": mrr_e, "arr_end": 12 * mrr_e,
                "new_mrr": tot("new"), "expansion_mrr": expansion,
                "contraction_mrr": contraction, "churned_mrr": churned_mrr,
                "reactivation_mrr": reactivation, "net_new_mrr": mrr_e - mrr_s,
                "customers_start": cust_s, "customers_end": cust_e,
                "new_customers": cnt("new"), "reactivated_customers": cnt("reactivation"),
                "churned_customers": cnt("churn"),
                "arpa": rate(mrr_e, cust_e),
                "customer_churn_rate": rate(cnt("churn"), cust_s),
                "gross_mrr_churn_rate": rate(churned_mrr + contraction, mrr_s),
                "net_mrr_churn_rate": rate(churned_mrr + contraction - expansion - reactivation,
                                           mrr_s),
                "upgrades": cnt("expansion"), "downgrades": cnt("contraction"),
                "upgrade_rate": rate(cnt("expansion"), cust_s),
                "downgrade_rate": rate(cnt("contraction"), cust_s),
                "trials_started": started, "trials_ended": len(ended),
                "trials_converted": converted, "trial_conversion_rate": rate(converted, len(ended)),
            })
        return rows


# ---------------------------------------------------------------------------
# Delivery and comparison

def deliver(st, ev):
    body = json.dumps(ev).encode()
    return st.cgi("webhook", body=body, headers={
        "Content-Type": "application/json", "Stripe-Signature": stripe_signature(SECRET, body)})


def close(got, want, tol):
    if want is None or got is None:
        return got is None and want is None
    return abs(float(got) - want) <= tol


def compare_rows(t, label, got_rows, want_rows):
    """got: dicts of text from psql; want: dicts of Python values."""
    bad = []
    for g, w in zip(got_rows, want_rows):
        for k, v in w.items():
            gv = g.get(k)
            if k == "month":
                ok = gv == v
            elif k == "arpa":
                ok = close(gv, v, 0.0051)
            elif k.endswith("_rate"):
                ok = close(gv, v, RATE_TOL)
            else:
                ok = gv is not None and int(gv) == v
            if not ok:
                bad.append((w["month"], k, gv, v))
    t.ok(not bad and len(got_rows) == len(want_rows), label,
         f"{len(bad)} differences, first: {bad[:6]}; rows {len(got_rows)}/{len(want_rows)}")


def query_dicts(st, sql):
    """Rows of sql as dicts (JSON values: numbers, strings, None)."""
    return [json.loads(r[0]) for r in st.psql(f"SELECT row_to_json(q) FROM ({sql}) q")]


LEDGER_COLS = ("stripe_subscription_id, customer, currency, kind, delta, amount, customer_amount,"
               " status_before, status, effective_at")


def ledger(st):
    return st.psql(f"SELECT {LEDGER_COLS} FROM mrr_movements ORDER BY id")


# ---------------------------------------------------------------------------
# Tests


def test_history(t, st):
    h = History(20260712)
    for i in range(110):
        h.customer(i)
    evs = h.deliveries()
    model = Model()
    failures = []
    for ev in evs:
        r = deliver(st, ev)
        if r.status != 200:
            failures.append((ev["id"], ev["type"], r.status, r.text[:200]))
            continue
        now = st.psql_one(f"SELECT extract(epoch FROM received_at) FROM billing_events "
                          f"WHERE stripe_event_id = '{ev['id']}'") \
            if ev["type"] == "checkout.session.completed" else None
        model.apply(ev, float(now) if now else None)
    t.ok(not failures, f"{len(evs)} events delivered to webhook.cgi", failures[:3])
    kinds = {k for _, _, k, _ in model.movements()}
    t.eq(sorted(kinds), ["churn", "contraction", "expansion", "new", "reactivation"],
         "the history has every kind of movement")
    t.diag(f"{len(model.subs)} subscriptions, {len(model.changes)} changes, "
           f"{len(model.movements())} movements")

    # Ledger rows against the model's changes (effective time = event created).
    got = st.psql("SELECT count(*) FILTER (WHERE kind IS NOT NULL), "
                  "count(*) FILTER (WHERE kind IS NULL) FROM mrr_movements")[0]
    want_mv = len(model.movements())
    want_status = sum(1 for c in model.changes if c[5] == c[8] and c[3] != c[6])
    t.eq([int(got[0]), int(got[1])], [want_mv, want_status],
         "ledger: one movement per MRR change, one status row per status-only change")
    times = st.psql("SELECT extract(epoch FROM effective_at)::bigint, kind, delta FROM mrr_movements"
                    " WHERE kind IS NOT NULL ORDER BY id")
    t.eq([(int(a), k, int(d)) for a, k, d in times],
         [(int(a), k, d) for a, _, k, d in model.movements()],
         "ledger: kinds, deltas and effective times (the events' created) match the model")

    yms = months(FIRST_MONTH, LAST_MONTH)
    for cur in ("usd", "eur"):
        got = query_dicts(st, f"SELECT * FROM analytics_monthly('{ym_text(yms[0])}', "
                              f"'{ym_text(yms[-1])}', '{cur.upper()}')")
        compare_rows(t, f"analytics_monthly {cur}: every figure of {len(yms)} months",
                     got, model.monthly(cur, yms))
        t.ok(all(g["currency"] == cur for g in got), f"analytics_monthly {cur}: currency column")
    # Some months must have the figures the comparison is about.
    usd = model.monthly("usd", yms)
    t.ok(sum(r["trials_ended"] for r in usd) > 5 and sum(r["churned_customers"] for r in usd) > 5
         and sum(r["upgrades"] for r in usd) > 3 and sum(r["downgrades"] for r in usd) > 3,
         "the usd history has trials, churn, upgrades and downgrades")

    # A sub-range starts from the right opening balance.
    part = query_dicts(st, "SELECT * FROM analytics_monthly('2025-07-15', '2025-09-01', 'eur')")
    compare_rows(t, "analytics_monthly: a sub-range opens with the MRR before it", part,
                 model.monthly("eur", months((2025, 7), (2025, 9))))

    # Current state: mrr_now and the snapshot against the model's final states.
    want_mrr = {}
    paying = {}
    for s in model.subs.values():
        a = monthly_amount(s["status"], s["unit"], s["qty"], s["interval"], s["cur"])
        if a > 0:
            want_mrr[s["cur"]] = want_mrr.get(s["cur"], 0) + a
            paying.setdefault(s["cur"], set()).add(s["customer"])
    snap = json.loads(st.psql_one("SELECT analytics_snapshot()"))
    t.eq(snap["monthlyRecurringRevenue"], want_mrr, "snapshot: MRR per currency")
    t.eq(snap["annualRecurringRevenue"], {c: 12 * v for c, v in want_mrr.items()},
         "snapshot: ARR = 12 x MRR")
    t.eq(snap["payingCustomers"], {c: len(v) for c, v in paying.items()},
         "snapshot: paying customers per currency")
    t.ok(all(abs(float(snap["averageRevenuePerAccount"][c]) - want_mrr[c] / len(paying[c])) < 0.0051
             for c in want_mrr), "snapshot: ARPA = MRR / paying customers",
         snap["averageRevenuePerAccount"])
    t.eq(snap["totalSubscriptions"], len(model.subs), "snapshot: totalSubscriptions")
    t.eq(snap["byTier"], {k: sum(1 for s in model.subs.values() if s["tier"] == k) for k in TIERS},
         "snapshot: byTier")
    t.eq(snap["byStatus"], {k: sum(1 for s in model.subs.values() if s["status"] == k)
                            for k in STATUSES}, "snapshot: byStatus")
    cells = {}
    for s in model.subs.values():
        cells.setdefault(s["tier"], {}).setdefault(s["status"], 0)
        cells[s["tier"]][s["status"]] += 1
    t.eq(snap["byTierAndStatus"], cells, "snapshot: byTierAndStatus")
    ledger_mrr = dict(st.psql("SELECT currency, sum(delta) FROM mrr_movements "
                              "GROUP BY currency HAVING sum(delta) <> 0"))
    t.eq({c: int(v) for c, v in ledger_mrr.items()}, want_mrr,
         "the ledger sums to today's MRR per currency")
    return h, model


MONTHLY_SUMS = ("SELECT currency, month, sum(net), sum(new_mrr), sum(expansion_mrr),"
                " sum(contraction_mrr), sum(churned_mrr), sum(reactivation_mrr),"
                " sum(new_customers), sum(reactivated_customers), sum(churned_customers),"
                " sum(upgrades), sum(downgrades), sum(trials_started), sum(trials_ended),"
                " sum(trials_converted) FROM mrr_monthly GROUP BY 1, 2 ORDER BY 1, 2")


def test_rebuild(t, st):
    before = ledger(st)
    sums = st.psql(MONTHLY_SUMS)
    n = st.psql_one("SELECT rebuild_mrr_movements()")
    after = ledger(st)
    t.eq(int(n), len(after), "rebuild_mrr_movements() returns the number of ledger rows")
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(before, after)) if a != b]
    t.ok(len(before) > 100 and before == after,
         f"rebuild_mrr_movements() gives back the live ledger ({len(before)} rows)",
         f"rows {len(before)} -> {len(after)}; first differences: {diff[:3]}")
    t.eq(st.psql(MONTHLY_SUMS), sums, "the rebuild gives back the monthly sums")
    st.psql("TRUNCATE mrr_movements")
    t.eq(st.psql_one("SELECT count(*) FROM mrr_monthly"), "0",
         "emptying the ledger empties its monthly sums")
    st.psql("SELECT rebuild_mrr_movements()")
    t.eq(ledger(st), before, "rebuild from an empty ledger (an existing install) is the same")
    st.psql("SELECT mrr_monthly_refresh()")
    t.eq(st.psql(MONTHLY_SUMS), sums,
         "monthly sums kept row by row equal the sums recomputed from the ledger")


def test_other_writers(t, st):
    """Any writer of subscriptions moves the ledger, in its transaction."""
    sub = st.psql_one("SELECT stripe_subscription_id FROM subscriptions WHERE status = 'active'"
                      " AND coalesce(quantity, 1) = 1 AND billing_interval = 'monthly'"
                      " ORDER BY id LIMIT 1")
    n0 = int(st.psql_one("SELECT count(*) FROM mrr_movements"))
    st.psql(f"BEGIN; UPDATE subscriptions SET quantity = 4 WHERE stripe_subscription_id = '{sub}';"
            " ROLLBACK;")
    t.eq(int(st.psql_one("SELECT count(*) FROM mrr_movements")), n0,
         "a rolled-back change leaves no movement")
    row = st.psql(f"UPDATE subscriptions SET quantity = 4 WHERE stripe_subscription_id = '{sub}';"
                  f" SELECT kind, delta, effective_at > now() - interval '1 minute'"
                  f" FROM mrr_movements WHERE stripe_subscription_id = '{sub}'"
                  f" ORDER BY id DESC LIMIT 1")
    unit = int(st.psql_one(f"SELECT unit_amount FROM subscriptions"
                           f" WHERE stripe_subscription_id = '{sub}'"))
    t.eq(row[-1], ["expansion", str(3 * unit), "t"],
         "a change without an event (operator, sync) is an expansion effective now")
    st.psql(f"UPDATE subscriptions SET user_id = user_id, updated_at = now()"
            f" WHERE stripe_subscription_id = '{sub}'")
    t.eq(int(st.psql_one("SELECT count(*) FROM mrr_movements")), n0 + 1,
         "a change that moves neither MRR nor status writes nothing")
    mrr = dict(st.psql("SELECT currency, mrr FROM mrr_now"))
    led = dict(st.psql("SELECT currency, sum(delta) FROM mrr_movements GROUP BY currency"
                       " HAVING sum(delta) <> 0"))
    t.eq(led, mrr, "ledger and subscriptions still agree")

    # A status change that moves no MRR and no trial writes a ledger row
    # but adds nothing to mrr_monthly: no row there, not even all zeros.
    month = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"
    cells = (f"SELECT count(*) FROM mrr_monthly WHERE currency = 'nok' AND month = {month}")
    st.psql("INSERT INTO subscriptions (stripe_customer_id, stripe_subscription_id, tier, status,"
            " billing_interval, unit_amount, currency, quantity) VALUES"
            " ('cus_quiet', 'sub_quiet', 'pro', 'incomplete', 'monthly', 900, 'nok', 1)")
    st.psql("UPDATE subscriptions SET status = 'incomplete_expired'"
            " WHERE stripe_subscription_id = 'sub_quiet'")
    t.eq([st.psql_one("SELECT count(*) FROM mrr_movements WHERE stripe_subscription_id = 'sub_quiet'"),
          st.psql_one(cells)], ["2", "0"],
         "status changes without MRR or a trial: two ledger rows, no mrr_monthly row")
    st.psql("UPDATE subscriptions SET status = 'trialing' WHERE stripe_subscription_id = 'sub_quiet'")
    t.eq(st.psql(f"SELECT sum(net), sum(trials_started) FROM mrr_monthly"
                 f" WHERE currency = 'nok' AND month = {month}"), [["0", "1"]],
         "a trial that starts is counted in mrr_monthly")
    st.psql("DELETE FROM subscriptions WHERE stripe_subscription_id = 'sub_quiet'")
    sums = st.psql(MONTHLY_SUMS)
    st.psql("SELECT mrr_monthly_refresh()")
    t.eq(st.psql(MONTHLY_SUMS), sums, "recomputed monthly sums still equal the live ones")


def test_concurrent_customer(t, st):
    """Two subscriptions of one customer changing at once chain customer_amount."""
    st.psql("INSERT INTO subscriptions (stripe_customer_id, stripe_subscription_id, tier, status,"
            " billing_interval, unit_amount, currency, quantity) VALUES"
            " ('cus_race', 'sub_race1', 'pro', 'active', 'monthly', 1000, 'usd', 1),"
            " ('cus_race', 'sub_race2', 'pro', 'active', 'monthly', 100, 'usd', 1)")
    loop = ("DO $$ BEGIN FOR i IN 1..150 LOOP UPDATE subscriptions SET quantity = 1 + i % 3"
            " WHERE stripe_subscription_id = '{sub}'; COMMIT; END LOOP; END $$;")
    errors = []

    def run(sub):
        try:
            st.psql(loop.format(sub=sub))
        except PsqlError as e:
            errors.append(str(e))

    th = [threading.Thread(target=run, args=(s,)) for s in ("sub_race1", "sub_race2")]
    for x in th:
        x.start()
    for x in th:
        x.join()
    rows = st.psql("SELECT delta, customer_amount FROM mrr_movements WHERE customer = 'cus_race'"
                   " AND kind IS NOT NULL ORDER BY id")
    prev, broken = 0, 0
    for d, ca in rows:
        broken += prev + int(d) != int(ca)
        prev = int(ca)
    final = int(st.psql_one("SELECT sum(unit_amount * quantity) FROM subscriptions"
                            " WHERE stripe_customer_id = 'cus_race'"))
    t.ok(not errors and len(rows) > 200 and broken == 0 and prev == final,
         f"concurrent changes of one customer: {len(rows)} movements, chain intact",
         f"errors {errors[:1]}, broken links {broken}, last {prev}, want {final}")


def post_usage(st, user, typ, amount, key=None):
    h = dict(USAGE_KEY)
    if key:
        h["Idempotency-Key"] = key
    return st.cgi("usage", "POST", body={"userId": user, "usageType": typ, "amount": amount},
                  headers=h)


def test_usage(t, st, h):
    rnd = random.Random(7)
    this_month = st.psql_one("SELECT usage_period_start()")
    cur_ym = tuple(int(x) for x in this_month.split("-")[:2])

    # Past months: counters as track_usage would have left them.
    past = {}
    values = []
    for ym in months((2025, 1), (2026, 2)):
        for u in range(25):
            for typ in TYPES:
                if rnd.random() < 0.5:
                    continue
                amount = rnd.choice([0, rnd.randrange(1, 900)])
                tier = rnd.choice(TIERS)
                values.append(f"('an-past-{u}', '{typ}', '{ym_text(ym)}', "
                              f"('{ym_text(ym)}'::date + interval '1 month')::date, {amount}, '{tier}')")
                agg = past.setdefault((ym_text(ym), typ), [0, 0])
                agg[0] += amount > 0
                agg[1] += amount
    st.psql("INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount,"
            " tier) VALUES " + ", ".join(values))

    # This month through usage.cgi: free users and users with one live subscription.
    users = {f"an-free-{i}": "free" for i in range(4)}
    for tier in ("basic", "pro", "enterprise"):
        for u in [u for u, tr in sorted(h.live_users.items()) if tr == tier][:2]:
            users[u] = tier
    t.ok(len(users) >= 8, f"usage users: {len(users)} across tiers",
         sorted(set(users.values())))
    used = {}
    breaches = {}
    wrong = []
    plan = []
    for u, tier in sorted(users.items()):
        for typ in TYPES:
            lim = LIMITS[tier][typ]
            if rnd.random() < 0.3:
                continue
            if typ == "storage":
                steps = [rnd.randrange(1, 60_000_000) for _ in range(3)]
            elif lim is not None and lim <= 20:
                steps = [1] * (lim + 2)               # runs into the limit
            else:
                steps = [rnd.randrange(0, 400) for _ in range(4)]
            plan += [(u, tier, typ, a) for a in steps]
    for u, tier, typ, a in plan:
        lim = LIMITS[tier][typ]
        r = post_usage(st, u, typ, a)
        cur = used.get((u, typ))
        allowed = lim is None or (cur or 0) + a <= lim
        if r.status != (200 if allowed else 402):
            wrong.append((u, tier, typ, a, r.status, r.text[:120]))
            continue
        if allowed:
            used[(u, typ)] = (cur or 0) + a
        else:
            breaches[(tier, typ)] = breaches.get((tier, typ), [0, set()])
            breaches[(tier, typ)][0] += 1
            breaches[(tier, typ)][1].add(u)
    # A refusal under an Idempotency-Key keeps nothing (not even the key), so
    # its retry is judged afresh: two 402 answers, both counted.
    for _ in range(2):
        r = post_usage(st, "an-free-0", "export", 50, key="an-replay-1")
        wrong += [] if r.status == 402 else [("keyed", r.status)]
    breaches.setdefault(("free", "export"), [0, set()])
    breaches[("free", "export")][0] += 2
    breaches[("free", "export")][1].add("an-free-0")
    t.ok(not wrong, f"{len(plan) + 2} usage.cgi answers as the quotas say (200 or 402)", wrong[:3])
    t.ok(sum(v[0] for v in breaches.values()) >= 10, "some requests were refused")

    got = st.psql(f"SELECT tier, usage_type, refusals, users FROM analytics_quota_breaches("
                  f"'{this_month}', '{this_month}')")
    t.eq(sorted((a, b, int(c), int(d)) for a, b, c, d in got),
         sorted((k[0], k[1], v[0], len(v[1])) for k, v in breaches.items()),
         "quota breaches: the 402 answers per tier and usage type this month")
    t.eq(st.psql_one("SELECT count(*) FROM analytics_quota_breaches('2025-01-01', '2026-02-01')"),
         "0", "quota breaches: none in months without refusals")

    # Quota utilisation this month.
    want = {}
    for (u, typ), amount in used.items():
        want.setdefault((users[u], typ), []).append(amount)
    got = st.psql("SELECT tier, usage_type, monthly_limit, users, avg_utilisation, at_limit"
                  " FROM analytics_quota_utilisation()")
    bad = []
    for tier, typ, lim, n, avg, at_limit in got:
        amounts = want.get((tier, typ), [])
        plim = LIMITS[tier][typ]
        wavg = None if not amounts or not plim else sum(a / plim for a in amounts) / len(amounts)
        wat = sum(1 for a in amounts if plim is not None and a >= plim)
        if (lim is None) != (plim is None) or (lim is not None and int(lim) != plim) \
                or int(n) != len(amounts) or not close(avg, wavg, 0.00005) or int(at_limit) != wat:
            bad.append((tier, typ, lim, n, avg, at_limit, plim, len(amounts), wavg, wat))
    t.ok(len(got) == 20 and not bad, "quota utilisation: users, average used/limit, at limit,"
         " per tier and usage type", bad[:3])

    # Feature usage per type per month (past months plus this one).
    cur_agg = {}
    for (u, typ), amount in used.items():
        a = cur_agg.setdefault((this_month, typ), [0, 0])
        a[0] += amount > 0
        a[1] += amount
    want_fu = dict(past)
    want_fu.update(cur_agg)
    got = st.psql(f"SELECT month, usage_type, users, total FROM analytics_feature_usage("
                  f"'2024-12-01', '{this_month}')")
    n_months = len(months((2024, 12), cur_ym))
    bad = [(m, ty, n, s) for m, ty, n, s in got
           if [int(n), int(s)] != want_fu.get((m, ty), [0, 0])]
    t.ok(len(got) == 5 * n_months and not bad,
         f"feature usage: users and totals per type for {n_months} months", bad[:3])
    t.eq(st.psql_one("SELECT count(DISTINCT month) FROM usage_closed_months"), str(n_months - 1),
         "feature usage: the closed months are kept in usage_closed_months")
    st.psql("UPDATE usage_tracking SET amount = amount + 5 WHERE id = (SELECT min(id)"
            " FROM usage_tracking WHERE period_start = '2025-03-01' AND usage_type = 'export')")
    want = want_fu.get(("2025-03-01", "export"), [0, 0])[1] + 5
    t.eq(st.psql_one("SELECT total FROM analytics_feature_usage('2025-03-01', '2025-03-01')"
                     " WHERE usage_type = 'export'"), str(want),
         "feature usage: a changed counter of a closed month is summed again")
    st.psql("INSERT INTO quota_refusals (user_id, usage_type, period_start, tier, refusals)"
            " VALUES ('an-past-1', 'export', '2025-03-01', 'basic', 3)")
    t.eq(st.psql("SELECT tier, usage_type, refusals, users FROM analytics_quota_breaches("
                 "'2025-01-01', '2025-12-01')"), [["basic", "export", "3", "1"]],
         "quota breaches: a refusal added to a closed month is summed again")


def test_report(t, st):
    rep = json.loads(st.psql_one("SELECT analytics_report('2025-01-01', '2025-12-01', 'usd')"))
    t.eq(sorted(rep), ["currency", "featureUsage", "from", "months", "quotaBreaches",
                       "quotaUtilisation", "snapshot", "to"], "analytics_report: its members")
    t.eq([m["month"] for m in rep["months"]], [f"2025-{m:02d}" for m in range(1, 13)],
         "analytics_report: the months as YYYY-MM, in order")
    t.eq(len(rep["featureUsage"]), 60, "analytics_report: feature usage for 12 months x 5 types")
    t.eq(len(rep["quotaUtilisation"]), 20, "analytics_report: utilisation for 4 tiers x 5 types")
    first = rep["months"][5]
    mon = query_dicts(st, "SELECT * FROM analytics_monthly('2025-06-01', '2025-06-01', 'usd')")[0]
    t.ok(all(first[k] == mon[k] for k in mon if k != "month"),
         "analytics_report: a month carries analytics_monthly's figures", (first, mon))
    for sql, name in (("analytics_monthly('2025-05-01', '2025-04-01', 'usd')", "from after to"),
                      ("analytics_monthly('2000-01-01', '2025-04-01', 'usd')", "over 240 months"),
                      ("analytics_monthly('2025-01-01', '2025-04-01', 'dollars')", "bad currency"),
                      ("analytics_monthly(NULL, '2025-04-01', 'usd')", "no from")):
        try:
            st.psql(f"\\set VERBOSITY verbose\nSELECT count(*) FROM {sql}")
            t.ok(False, f"analytics_monthly refuses {name}")
        except PsqlError as e:
            t.ok("22023" in e.stderr, f"analytics_monthly refuses {name} (SQLSTATE 22023)",
                 e.stderr)


def main():
    t = Tap()
    with t.guard("analytics"), Stack(SETTINGS, apache=False) as st:
        h, _ = test_history(t, st)
        with t.guard("rebuild"):
            test_rebuild(t, st)
        with t.guard("usage"):
            test_usage(t, st, h)
        with t.guard("report"):
            test_report(t, st)
        with t.guard("other writers"):
            test_other_writers(t, st)
        with t.guard("concurrency"):
            test_concurrent_customer(t, st)
        t.eq(st.psql("SELECT tier, status, sum(n) FROM subscription_counts GROUP BY 1, 2"
                     " HAVING sum(n) <> 0 ORDER BY 1, 2"),
             st.psql("SELECT tier, status, count(*) FROM subscriptions GROUP BY 1, 2 ORDER BY 1, 2"),
             "subscription_counts, kept by triggers through every change above, counts the rows")
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
