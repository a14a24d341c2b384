"""billing-sync: subscriptions, events and check against the fake Stripe and a real
PostgreSQL, with the built program (bin/billing-sync) as cron would run it.

  * a Stripe account of 250 subscriptions in every status (canceled and
    incomplete_expired are listed only with status=all) over 3 pages: into an
    empty database, then into one with drift in every column; check's report
    and exit codes before and after; rows Stripe does not have are kept
  * 429 (Retry-After honoured), 500/503 and a reset mid-list; a Retry-After
    past the bound ends the run, and the next run continues from its cursor
  * a run killed while it reads page 2 and started again: page 1 is not read
    again, page 2 once more, nothing is missed (the fake's request log)
  * a second run while one is in progress does nothing
  * events the webhook never received: applied once, oldest first, from the
    newest event before --since (or from the oldest one when there is none);
    again while webhook.cgi delivers the same events: each recorded once
  * an events run stopped, then continued after its cursor expired at Stripe:
    on from the oldest event kept, exit 1 (events may be lost), not stuck
  * killed after an event's transaction, before its cursor step: the restart
    records the change the killed process made (sync_changes)
  * a listed event that is no event we can read: skipped, exit 1
  * SYNC_MAX_RPS paces the requests; no secret in what it prints
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import LockHolder, Stack, Tap, program_env, wait_until  # noqa: E402
from test_webhook import SUB_COLS, count, deliver, sub_row  # noqa: E402

BUILDDIR = os.environ.get("BUILDDIR") or os.getcwd()
BIN = os.path.join(BUILDDIR, "bin", "billing-sync")
KEY = "sk_test_harness"
PRICES = {"price_basic_monthly": ("basic", "monthly", 900, "month"),
          "price_basic_yearly": ("basic", "yearly", 9000, "year"),
          "price_pro_monthly": ("pro", "monthly", 1900, "month"),
          "price_pro_yearly": ("pro", "yearly", 19000, "year")}
STATUSES = ("active", "trialing", "past_due", "canceled", "incomplete", "incomplete_expired",
            "unpaid", "paused")
STATE_COLS = [c for c in SUB_COLS if c not in ("last_event_created", "last_event_id")]
SYNC_TABLES = "sync_changes, sync_seen, sync_runs"
# The event types webhook.cgi acts on (lib/subscription.c).
HANDLED = ("checkout.session.completed", "checkout.session.expired", "customer.updated",
           "customer.subscription.created", "customer.subscription.updated",
           "customer.subscription.deleted", "customer.subscription.trial_will_end",
           "invoice.paid", "invoice.payment_failed", "invoice.payment_action_required")


class Result:
    def __init__(self, p):
        self.status = p.returncode
        self.stdout = p.stdout.decode(errors="replace")
        self.stderr = p.stderr.decode(errors="replace")

    def summary(self):
        """key=value pairs of the last log line (the summary)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("billing-cgi sync ")]
        out = {}
        for word in (lines[-1].split() if lines else []):
            k, _, v = word.partition("=")
            out[k] = v
        return out

    def __repr__(self):
        return f"<exit {self.status}; stdout {self.stdout[-800:]!r}; stderr {self.stderr[-1500:]!r}>"


def eq(t, got, want, name, diag=None):
    """Tap.eq with a diagnostic for when it fails (the program's output)."""
    return t.ok(got == want, name, f"     got: {got!r}\nexpected: {want!r}"
                + ("" if diag is None else "\n" + str(diag)))


def sync_env(st, env=None):
    """The settings of the stack, fast pacing, then env (a None value unsets)."""
    return program_env({"TZ": "UTC"}, st.settings, {"SYNC_MAX_RPS": "100"}, env=env)


def run(st, *args, env=None, timeout=300):
    return Result(subprocess.run([BIN, *args], env=sync_env(st, env), capture_output=True,
                                 timeout=timeout))


def start(st, *args, env=None):
    return subprocess.Popen([BIN, *args], env=sync_env(st, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def api(st, method, path, form=None):
    """A Stripe API call to the fake (what a dashboard or another client would do)."""
    data = urllib.parse.urlencode(form or {}).encode() if method != "GET" else None
    req = urllib.request.Request(st.stripe_base + path, data=data, method=method,
                                 headers={"Authorization": "Bearer " + KEY})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def put_prices(st):
    for pid, (_, _, amount, iv) in PRICES.items():
        st.stripe.put_price(pid, unit_amount=amount, currency="usd", recurring={"interval": iv})


def list_requests(st, path):
    """(query params, time) of the fake's GET requests to path, oldest first."""
    return [(urllib.parse.parse_qs(r["query"]), r["time"], r.get("fault"))
            for r in st.stripe.requests() if r["method"] == "GET" and r["path"] == path]


def cursors(reqs, name="starting_after"):
    return [(q.get(name) or [None])[0] for q, _, _ in reqs]


def reset_db(st):
    st.psql(f"TRUNCATE billing_events, subscriptions, customers, notifications,"
            f" ownership_conflicts, {SYNC_TABLES} RESTART IDENTITY")


# -- the account ------------------------------------------------------------------


def make_account(st, n=250):
    """n subscriptions: every status, every plan, some scheduled to cancel; most name
    their user in metadata.userId, some only through their customer's metadata, some
    not at all.  Returns {"subs": [...], "users": {customer: user}, "unlinked": set}."""
    now = int(time.time())
    users, unlinked, specs = {}, set(), []
    for i in range(n):
        cus = f"cus_sync{i:04d}"
        status = STATUSES[i % len(STATUSES)]
        spec = {"customer": cus, "price": list(PRICES)[i % 4], "status": status,
                "created": now - 100000 + i * 10, "metadata": {}}
        if i % 50 == 1:
            st.stripe.put_customer(cus, metadata={"userId": f"cust-user-{i}"})
            users[cus] = f"cust-user-{i}"
        elif i % 50 == 2:
            unlinked.add(cus)
        else:
            spec["metadata"] = {"userId": f"user-{i:03d}"}
            users[cus] = f"user-{i:03d}"
        if status in ("active", "trialing") and i % 3 == 0:
            spec["cancel_at_period_end"] = True
        specs.append(spec)
    subs = st.stripe.create_subscriptions(specs)
    # Stripe records why an ended subscription ended.
    for s in subs:
        if s["status"] in ("canceled", "incomplete_expired"):
            s["cancellation_details"] = {"comment": None, "feedback": None,
                                         "reason": "payment_failed" if s["status"] ==
                                         "incomplete_expired" else "cancellation_requested"}
            st.stripe.put_subscription(s["id"], s)
    return {"subs": subs, "users": users, "unlinked": unlinked}


def expected_row(sub, users):
    """The subscriptions row a Stripe subscription should give, computed here."""
    item = sub["items"]["data"][0]
    tier, interval, _, _ = PRICES[item["price"]["id"]]
    period = {k: item.get(k, sub.get(k)) for k in ("current_period_start", "current_period_end")}
    return {"user_id": users.get(sub["customer"]), "stripe_customer_id": sub["customer"],
            "tier": tier, "status": sub["status"], "billing_interval": interval,
            "price_id": item["price"]["id"], "unit_amount": item["price"]["unit_amount"],
            "currency": sub["currency"], "trial_start": sub.get("trial_start"),
            "trial_end": sub.get("trial_end"), **period,
            "cancel_at_period_end": "t" if sub["cancel_at_period_end"] else "f",
            "canceled_at": sub.get("canceled_at"), "ended_at": sub.get("ended_at"),
            "cancellation_reason": (sub.get("cancellation_details") or {}).get("reason")}


def state_of(st, sub_id):
    row = sub_row(st, sub_id)
    return None if row is None else {k: row[k] for k in STATE_COLS}


def rows_match(t, st, subs, users, name):
    bad = []
    for s in subs:
        want, got = expected_row(s, users), state_of(st, s["id"])
        if got != want:
            bad.append((s["id"], {k: (got or {}).get(k) for k in want
                                  if (got or {}).get(k) != want[k]}, want))
    t.ok(not bad, f"{name}: every row equals Stripe's subscription ({len(subs)})",
         repr(bad[:3]))


# -- subscriptions and check ------------------------------------------------------


def test_backfill(t, st, acct):
    subs, users = acct["subs"], acct["users"]
    r = run(st, "subscriptions")
    s = r.summary()
    eq(t, r.status, 1, "backfill: exit 1 (customers linked to no user need an operator)")
    eq(t, {k: s.get(k) for k in ("pages", "subscriptions", "created", "updated", "linked",
                                "unlinked", "missing_in_stripe")},
         {"pages": "3", "subscriptions": "250", "created": "250", "updated": "0",
          "linked": "245", "unlinked": "5", "missing_in_stripe": "0"},
         "backfill: the summary line counts 3 pages, 250 created, 245 linked, 5 unlinked")
    reqs = list_requests(st, "/v1/subscriptions")
    eq(t, [q.get("status") for q, _, _ in reqs], [["all"]] * 3,
         "backfill: 3 list requests, all with status=all")
    eq(t, [q.get("limit") for q, _, _ in reqs], [["100"]] * 3, "backfill: limit=100")
    order = sorted(subs, key=lambda x: x["created"], reverse=True)
    eq(t, cursors(reqs), [None, order[99]["id"], order[199]["id"]],
         "backfill: each page starts after the last subscription of the one before")
    got = {x[0] for x in st.psql("SELECT stripe_subscription_id FROM subscriptions")}
    eq(t, got, {x["id"] for x in subs}, "backfill: exactly Stripe's 250 subscriptions stored")
    eq(t, sorted(x[0] for x in st.psql("SELECT DISTINCT status FROM subscriptions")),
         sorted(STATUSES), "backfill: every status, canceled and incomplete_expired included")
    rows_match(t, st, subs, users, "backfill")
    eq(t, dict(st.psql("SELECT stripe_customer_id, user_id FROM customers")), users,
         "backfill: customers linked from metadata.userId of the subscription or the customer")
    cust = [r for r in st.stripe.requests() if r["path"].startswith("/v1/customers/")]
    eq(t, sorted(r["path"].rsplit("/", 1)[1] for r in cust),
         sorted([c for c in users if c.startswith("cus_sync") and
                 users[c].startswith("cust-user")] + list(acct["unlinked"])),
         "backfill: only customers not named by their subscription were fetched, once each")
    t.ok(all(f"customer {c} " in r.stderr for c in acct["unlinked"]),
         "backfill: each unlinked customer is reported", r.stderr[-2000:])
    eq(t, dict(st.psql("SELECT kind, count(*) FROM sync_changes GROUP BY kind")),
         {"created": "250", "customer_linked": "245"},
         "backfill: sync_changes records 250 created rows and 245 customer links")
    one = subs[3]
    ch = json.loads(st.psql_one("SELECT changes FROM sync_changes WHERE kind = 'created'"
                                f" AND stripe_subscription_id = '{one['id']}'"))
    eq(t, (ch["status"], ch["tier"]),
         ([None, one["status"]], [None, PRICES[one["items"]["data"][0]["price"]["id"]][0]]),
         "backfill: a created row's change record shows its columns from null")
    eq(t, st.psql("SELECT outcome, pages, objects, owner, cursor FROM sync_runs"),
         [["done", "3", "250", None, order[-1]["id"]]],
         "backfill: the run is done, its cursor at the last subscription")
    eq(t, count(st, "sync_seen"), 0, "backfill: the seen list is emptied at the end")
    eq(t, count(st, "billing_events"), 0, "backfill: no billing_events (those are Stripe's events)")
    t.ok(KEY not in r.stderr and KEY not in r.stdout, "backfill: the secret key is never printed")

    r = run(st, "check", "--json")
    rep = json.loads(r.stdout)
    eq(t, (r.status, rep["drift"], rep["stripe"], rep["database"]), (0, False, 250, 250),
         "check after the backfill: exit 0, no drift, 250 and 250")

    before = len(st.stripe.requests())
    r = run(st, "subscriptions")
    s = r.summary()
    eq(t, (r.status, s.get("created"), s.get("updated"), s.get("unchanged"), s.get("linked")),
         (1, "0", "0", "250", "0"), "second run: nothing changes")
    eq(t, count(st, "sync_changes", "run_id = 2"), 0, "second run: nothing recorded")
    eq(t, len(st.stripe.requests()) - before, 3 + len(acct["unlinked"]),
         "second run: 3 pages, and the unlinked customers asked again")


def drift(st, subs):
    """Damages the database: each column wrong in its own rows; three rows deleted,
    one added that Stripe does not have.  Returns ({sub id: column}, deleted ids)."""
    pool = list(subs)
    random.Random(11).shuffle(pool)
    used = set()

    def take(pred=lambda s: True):
        for s in pool:
            if s["id"] not in used and pred(s):
                used.add(s["id"])
                return s
        raise AssertionError("no subscription left for the drift")

    linked = lambda s: s["metadata"].get("userId")  # noqa: E731
    ended = lambda s: s["status"] in ("canceled", "incomplete_expired")  # noqa: E731
    trial = lambda s: s["status"] == "trialing"  # noqa: E731
    sql = {
        "status": "status = CASE status WHEN 'active' THEN 'past_due' ELSE 'active' END",
        "tier": "tier = CASE tier WHEN 'pro' THEN 'basic' ELSE 'enterprise' END",
        "billing_interval": "billing_interval = CASE billing_interval WHEN 'monthly'"
                            " THEN 'yearly' ELSE 'monthly' END",
        "price_id": "price_id = 'price_from_elsewhere'",
        "unit_amount": "unit_amount = unit_amount + 1",
        "currency": "currency = 'eur'",
        "trial_start": "trial_start = NULL",
        "trial_end": "trial_end = trial_end + interval '3 days'",
        "current_period_start": "current_period_start = current_period_start - interval '1 day'",
        "current_period_end": "current_period_end = current_period_end + interval '1 day'",
        "cancel_at_period_end": "cancel_at_period_end = NOT cancel_at_period_end",
        "canceled_at": "canceled_at = NULL",
        "ended_at": "ended_at = now()",
        "cancellation_reason": "cancellation_reason = 'fraudulent'",
        "stripe_customer_id": "stripe_customer_id = 'cus_someone_else'",
        "user_id": "user_id = 'intruder'",
    }
    preds = {"trial_start": trial, "trial_end": trial, "canceled_at": ended,
             "cancellation_reason": ended, "ended_at": lambda s: not ended(s),
             "user_id": linked, "stripe_customer_id": linked}
    damaged = {}
    for col, setter in sql.items():
        for _ in range(3):
            s = take(preds.get(col, lambda s: True))
            st.psql(f"UPDATE subscriptions SET {setter} WHERE stripe_subscription_id = '{s['id']}'")
            damaged[s["id"]] = col
    deleted = [take()["id"] for _ in range(3)]
    st.psql("DELETE FROM subscriptions WHERE stripe_subscription_id IN (%s)"
            % ", ".join(f"'{d}'" for d in deleted))
    st.psql("INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id, tier,"
            " status) VALUES ('user-local', 'cus_local', 'sub_localonly', 'pro', 'active')")
    return damaged, deleted


CHECKED = {"status": "status", "tier": "tier", "billing_interval": "interval",
           "current_period_end": "current_period_end", "cancel_at_period_end": "cancel_at_period_end"}


def test_drift(t, st, acct):
    subs, users = acct["subs"], acct["users"]
    damaged, deleted = drift(st, subs)
    eq(t, set(damaged.values()), set(STATE_COLS), "drift: every column damaged in some rows")

    r = run(st, "check", "--json")
    rep = json.loads(r.stdout) if r.status in (0, 1) else {}
    eq(t, r.status, 1, "check with drift: exit 1", repr(r))
    want = {sid: CHECKED[col] for sid, col in damaged.items() if col in CHECKED}
    got = {d["id"]: sorted(d["fields"]) for d in rep.get("differs", [])}
    eq(t, got, {sid: [f] for sid, f in want.items()},
         "check --json: exactly the rows with a checked column wrong, naming that column")
    byid = {s["id"]: s for s in subs}
    d0 = next(d for d in rep.get("differs", []) if "status" in d["fields"])
    eq(t, d0["fields"]["status"]["stripe"], byid[d0["id"]]["status"],
         "check --json: the Stripe side of a difference is Stripe's value")
    d1 = next(d for d in rep.get("differs", []) if "current_period_end" in d["fields"])
    t.ok(d1["fields"]["current_period_end"]["stripe"].endswith("Z"),
         "check --json: times are RFC 3339 UTC", repr(d1))
    eq(t, sorted(x["id"] for x in rep.get("missing_locally", [])), sorted(deleted),
         "check --json: the deleted rows are missing locally")
    eq(t, [x["id"] for x in rep.get("missing_in_stripe", [])], ["sub_localonly"],
         "check --json: the row Stripe does not have")
    eq(t, (rep.get("drift"), rep.get("stripe"), rep.get("database")), (True, 250, 248),
         "check --json: drift true, 250 in Stripe, 248 rows")

    r = run(st, "check")
    lines = r.stdout.splitlines()
    eq(t, (r.status, len(lines)), (1, len(want) + len(deleted) + 1),
         "check (text): exit 1, one line per subscription")
    t.ok(any(ln.startswith("sub_localonly (cus_local): in the database (status active),"
                           " not in Stripe") for ln in lines), "check (text): the extra row",
         "\n".join(lines[-5:]))
    eq(t, count(st, "sync_changes", "run_id > 2"), 0, "check changed nothing")

    r = run(st, "subscriptions")
    s = r.summary()
    eq(t, (r.status, s.get("created"), s.get("updated"), s.get("missing_in_stripe")),
         (1, "3", str(len(damaged)), "1"),
         "repair: exit 1, 3 rows created, every damaged row updated, 1 not in Stripe", repr(r))
    rows_match(t, st, subs, users, "repair")
    t.ok("subscription sub_localonly (active) is in the database but not in Stripe: kept"
         in r.stderr, "repair: the row Stripe does not have is reported")
    eq(t, count(st, "subscriptions", "stripe_subscription_id = 'sub_localonly'"), 1,
         "repair: ...and never deleted")
    run_id = st.psql_one("SELECT max(id) FROM sync_runs")
    recs = {x[0]: json.loads(x[1]) for x in st.psql(
        "SELECT stripe_subscription_id, changes FROM sync_changes"
        f" WHERE run_id = {run_id} AND kind = 'updated'")}
    eq(t, {sid: sorted(ch) for sid, ch in recs.items()},
         {sid: [col] for sid, col in damaged.items()},
         "repair: each change record names exactly the damaged column")
    sid = next(k for k, v in damaged.items() if v == "status")
    eq(t, recs[sid]["status"][1], byid[sid]["status"], "repair: [before, after] with Stripe's after")
    sid = next(k for k, v in damaged.items() if v == "user_id")
    eq(t, recs[sid]["user_id"], ["intruder", users[byid[sid]["customer"]]],
         "repair: the owner comes back from customers")
    eq(t, st.psql_one(f"SELECT reason FROM sync_changes WHERE run_id = {run_id} AND kind = 'updated' LIMIT 1"),
         "differed from Stripe's list", "repair: the record says why")

    r = run(st, "check", "--json")
    rep = json.loads(r.stdout)
    eq(t, (r.status, len(rep["differs"]), len(rep["missing_locally"]), len(rep["missing_in_stripe"])),
         (1, 0, 0, 1), "check after the repair: only the extra row left")
    st.psql("DELETE FROM subscriptions WHERE stripe_subscription_id = 'sub_localonly'")
    r = run(st, "check")
    eq(t, (r.status, r.stdout), (0, ""), "check with nothing to report: exit 0, silent stdout")


def test_newer_by_webhook(t, st, acct):
    """A row that a webhook stored from an event newer than the list is not
    overwritten by the list: it is fetched again under the lock (refetch mode)."""
    i = 16
    sub = acct["subs"][i]
    api(st, "POST", "/v1/subscriptions/" + sub["id"], {"cancel_at_period_end": "true"})
    ev = [e for e in st.stripe.events("customer.subscription.updated")
          if e["data"]["object"]["id"] == sub["id"]][-1]
    eq(t, deliver(st, ev).status, 200, "webhook.cgi stored an update just now")
    acct["subs"][i] = st.stripe.objects()["subscriptions"][sub["id"]]
    n0 = len(st.stripe.requests())
    r = run(st, "subscriptions")
    gets = [x["path"] for x in st.stripe.requests()[n0:] if x["path"].startswith("/v1/subscriptions/")]
    eq(t, (r.summary().get("refetched"), gets), ("1", ["/v1/subscriptions/" + sub["id"]]),
       "the list is older than that row: the subscription is fetched again", repr(r))
    rows_match(t, st, [acct["subs"][i]], acct["users"], "refetched")
    eq(t, r.summary().get("updated"), "0", "...and nothing needed changing")


def test_newer_row_other_customer(t, st, acct):
    """A row newer than the list whose customer drifted is repaired from
    Stripe's answer, as every other column: the refetch refused an answer
    naming another customer than the row's, and the store kept the row's,
    so that drift was reported on every run and never repaired."""
    sub = acct["subs"][16]
    # As test_newer_by_webhook's row, stored after the listing; its customer drifted.
    st.psql("UPDATE subscriptions SET stripe_customer_id = 'cus_someone_else',"
            " last_event_created = now() + interval '1 hour'"
            f" WHERE stripe_subscription_id = '{sub['id']}'")
    r = run(st, "subscriptions")
    s = r.summary()
    eq(t, (s.get("refetched"), s.get("updated")), ("1", "1"),
       "other customer: the row newer than the list is fetched again and repaired", repr(r))
    rows_match(t, st, [sub], acct["users"], "other customer repaired")


def test_filters(t, st, acct):
    subs = acct["subs"]
    one = subs[10]
    before = len(st.stripe.requests())
    r = run(st, "subscriptions", "--customer", one["customer"])
    s = r.summary()
    new = st.stripe.requests()[before:]
    eq(t, (r.status, s.get("subscriptions"), s.get("missing_in_stripe")), (0, "1", "0"),
         "--customer: that customer's one subscription", repr(r))
    eq(t, [urllib.parse.parse_qs(x["query"]).get("customer") for x in new],
         [[one["customer"]]], "--customer: passed to Stripe")
    cutoff = sorted(x["created"] for x in subs)[200]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cutoff))
    r = run(st, "subscriptions", "--since", date)
    eq(t, (r.status, r.summary().get("subscriptions"), r.summary().get("unlinked")), (1, "50", "1"),
         "--since DATE: created[gte] passed, 50 subscriptions (one unlinked)", repr(r))
    for bad in (["subscriptions", "--customer", "cus/../x"], ["subscriptions", "--since", "soon"],
                ["check", "--since", "1h"], ["events", "--json"], ["frobnicate"], []):
        r = run(st, *bad)
        eq(t, r.status, 2, f"usage error {bad}: exit 2")


def test_failures(t, st, acct):
    subs, users = acct["subs"], acct["users"]
    reset_db(st)
    start_n = len(st.stripe.requests())
    st.stripe.fail(mode="429", path="/v1/subscriptions", method="GET", at=2, count=2,
                   retry_after=1)
    st.stripe.fail(mode="500", path="/v1/subscriptions", method="GET", at=5, count=1)
    st.stripe.fail(mode="503", path="/v1/subscriptions", method="GET", at=6, count=1)
    st.stripe.fail(mode="reset", path="/v1/customers/", method="GET", at=2, count=1)
    r = run(st, "subscriptions")
    reqs = [x for x in st.stripe.requests()[start_n:]
            if x["path"] == "/v1/subscriptions"]
    eq(t, (r.status, r.summary().get("subscriptions"), r.summary().get("created")), (1, "250", "250"),
         "429, 500, 503 and a reset mid-list: the run completes", repr(r))
    eq(t, [x.get("fault") for x in reqs], [None, "429", "429", None, "500", "503", None],
         "the failed pages were asked again")
    gaps = [reqs[i + 1]["time"] - reqs[i]["time"] for i in (1, 2)]
    t.ok(min(gaps) >= 0.99, "Retry-After: 1 honoured before each next try", repr(gaps))
    rows_match(t, st, subs, users, "after failures")
    t.ok("retrying" in r.stderr, "retries are logged")

    # A Retry-After longer than billing-sync waits ends the run; the next continues.
    reset_db(st)
    st.stripe.fail(mode="429", path="/v1/subscriptions", method="GET", at=2, count=1,
                   retry_after=600)
    t0 = time.monotonic()
    r = run(st, "subscriptions")
    t.ok(r.status == 2 and time.monotonic() - t0 < 20,
         "Retry-After 600 s: exit 2 at once, without waiting", repr(r))
    t.ok("error=" in r.stderr.splitlines()[-1], "...its summary line says why", r.stderr[-300:])
    order = sorted(subs, key=lambda x: x["created"], reverse=True)
    eq(t, st.psql("SELECT cursor, owner IS NULL, last_error IS NOT NULL, finished_at IS NULL"
                 " FROM sync_runs"), [[order[99]["id"], "t", "t", "t"]],
         "the run stays open at its cursor, released, with the error")
    eq(t, count(st, "subscriptions"), 100, "page 1 is stored")
    n0 = len(st.stripe.requests())
    r = run(st, "subscriptions")
    reqs = list_requests(st, "/v1/subscriptions")[-2:]
    eq(t, (r.status, r.summary().get("created")), (1, "150"), "the next run stores the rest")
    eq(t, cursors([(urllib.parse.parse_qs(x["query"]), 0, 0) for x in st.stripe.requests()[n0:]
                  if x["path"] == "/v1/subscriptions"]), [order[99]["id"], order[199]["id"]],
         "...continuing after the cursor: page 1 not read again")
    eq(t, st.psql("SELECT resumed, outcome FROM sync_runs"), [["1", "done"]],
         "...as the same run, continued once")


def test_kill(t, st, acct):
    subs, users = acct["subs"], acct["users"]
    reset_db(st)
    order = sorted(subs, key=lambda x: x["created"], reverse=True)
    n0 = len(st.stripe.requests())
    st.stripe.fail(mode="slow", path="/v1/subscriptions", method="GET", at=2, count=1, delay=20)
    p = start(st, "subscriptions")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len([x for x in st.stripe.requests()[n0:] if x["path"] == "/v1/subscriptions"]) >= 2:
            break
        time.sleep(0.05)
    # Page 2 was asked for: page 1 is committed.  A second run finds this one alive.
    r = run(st, "subscriptions")
    eq(t, (r.status, "busy" in r.stderr.splitlines()[-1]), (0, True),
         "a run while another is in progress: exit 0, nothing done", repr(r))
    p.send_signal(signal.SIGKILL)
    p.wait()
    eq(t, count(st, "subscriptions"), 100, "killed while reading page 2: page 1 is stored")
    owner = st.psql_one("SELECT owner FROM sync_runs WHERE finished_at IS NULL")
    t.ok(owner and owner.endswith(f":{p.pid}"), "the open run still names the killed process",
         repr(owner))
    r = run(st, "subscriptions")
    reqs = [urllib.parse.parse_qs(x["query"]) for x in st.stripe.requests()[n0:]
            if x["path"] == "/v1/subscriptions"]
    got = [(q.get("starting_after") or [None])[0] for q in reqs]
    eq(t, got, [None, order[99]["id"], order[99]["id"], order[199]["id"]],
         "restarted: page 1 read once, page 2 twice (killed in flight), page 3 once")
    eq(t, (r.status, r.summary().get("created"), r.summary().get("subscriptions")),
         (1, "150", "150"), "restarted: the other 150 stored", repr(r))
    rows_match(t, st, subs, users, "after kill and restart")
    eq(t, st.psql("SELECT resumed, outcome, pages, objects, changes >= 250 FROM sync_runs"),
         [["1", "done", "3", "250", "t"]],
         "one run, continued once: 3 pages and 250 objects counted once each")
    eq(t, count(st, "sync_changes", "kind = 'created'"), 250, "each row's creation recorded once")


def test_pace_and_errors(t, st):
    n0 = len(st.stripe.requests())
    r = run(st, "check", env={"SYNC_MAX_RPS": "4"})
    times = [x["time"] for x in st.stripe.requests()[n0:]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    t.ok(r.status in (0, 1) and len(times) == 3 and min(gaps) >= 0.249,
         "SYNC_MAX_RPS=4: requests at least 250 ms apart", repr((gaps, r)))
    r = run(st, "check", env={"SYNC_MAX_RPS": "0"})
    t.ok(r.status == 2 and "SYNC_MAX_RPS" in r.stderr, "SYNC_MAX_RPS=0: exit 2, named", repr(r))
    r = run(st, "check", env={"STRIPE_SECRET_KEY": "not_a_key"})
    eq(t, (r.status, r.stdout), (2, ""), "check when Stripe refuses the key: exit 2, no report")
    t.ok("not_a_key" not in r.stderr, "...and the key is not printed")
    r = run(st, "check", env={"DATABASE_URL": "postgresql:///nothere?host=/nonexistent"})
    eq(t, r.status, 2, "check without a database: exit 2")
    r = run(st, "subscriptions", env={"STRIPE_SECRET_KEY": None})
    t.ok(r.status == 2 and "STRIPE_SECRET_KEY" in r.stderr, "no secret key: exit 2, named",
         repr(r))


# -- events -----------------------------------------------------------------------


def test_waits_for_customer_link(t, st):
    """billing-sync stores a subscription of an unlinked customer under
    the customer's lock, the one checkout takes while it links: held here
    while a link is made and committed, the subscription is then stored as
    the linked user's.  Read before the lock, the customer was unlinked and
    the subscription stayed unowned."""
    reset_db(st)
    cus, sub, user = "cus_sync_race", "sub_sync_race", "sync-race-user"
    st.stripe.put_customer(cus, metadata={})
    st.stripe.create_subscriptions(id=sub, customer=cus, price="price_pro_monthly",
                                   status="active", created=int(time.time()) - 86400)
    h = LockHolder(st, f"SELECT pg_advisory_xact_lock(7294813, hashtext('{cus}'))")
    p = None
    try:
        p = start(st, "subscriptions", "--customer", cus)
        wait_until("billing-sync to wait for the customer's lock", lambda: st.psql_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = 7294813 AND objsubid = 2") == "1")
        h.p.stdin.write(f"INSERT INTO customers (user_id, stripe_customer_id)"
                        f" VALUES ('{user}', '{cus}'); COMMIT;\n".encode())
        h.p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        h.release()
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    row = sub_row(st, sub)
    eq(t, (p.returncode, row and row["user_id"]), (0, user),
       "a link committed while billing-sync waited: the subscription is its user's",
       err.decode(errors="replace")[-1500:] if p.returncode else None)


def test_created_while_listing(t, st, acct):
    """A subscription created after the first page was read, and stored (as its webhook
    would) before the listing ends: Stripe has it, so neither check nor subscriptions may
    report it as missing in Stripe."""
    for cmd in ("check", "subscriptions"):
        st.stripe.fail(mode="slow", path="/v1/subscriptions", method="GET", at=2, delay=3)
        p = start(st, cmd, *(["--json"] if cmd == "check" else []))
        time.sleep(1.5)
        cus = f"cus_race{cmd[:5]}"
        new = st.stripe.create_subscriptions([{"customer": cus, "price": list(PRICES)[0],
                                               "status": "active"}])[0]
        st.psql(f"INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, tier,"
                f" status) VALUES ('{new['id']}', '{cus}', 'pro', 'active')")
        out, err = p.communicate(timeout=120)
        res = Result(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        if cmd == "check":
            missing = [e["id"] for e in json.loads(res.stdout)["missing_in_stripe"]]
        else:
            missing = [ln for ln in res.stderr.splitlines() if "not in Stripe" in ln]
        t.ok(all(new["id"] not in m for m in missing),
             f"{cmd}: a subscription stored while the list was read is not missing in Stripe",
             res)


def test_unstorable_needs_operator(t, st):
    """A listed subscription that cannot be stored (a status Stripe added after this
    code, say) is skipped and logged; the run then needs an operator (exit 1), as
    check, which reports the same subscription as drift, says too."""
    cus = "cus_sync_odd"
    st.stripe.put_customer(cus, metadata={})
    sub = st.stripe.create_subscriptions(id="sub_sync_odd", customer=cus,
                                         price="price_pro_monthly", status="active",
                                         metadata={"userId": "sync-odd-user"})[0]
    try:
        st.stripe.put_subscription(sub["id"], dict(sub, status="on_hold_future"))
        r = run(st, "subscriptions", "--customer", cus)
        sm = r.summary()
        eq(t, (r.status, sm.get("skipped"), sm.get("unlinked"), sm.get("missing_in_stripe")),
           (1, "1", "0", "0"), "a listed subscription in an unknown status: skipped=1, exit 1",
           repr(r))
        eq(t, sub_row(st, sub["id"]), None, "  ... and nothing stored for it")
        st.stripe.put_subscription(sub["id"], sub)
        r = run(st, "subscriptions", "--customer", cus)
        eq(t, (r.status, r.summary().get("skipped")), (0, "0"),
           "the same subscription in a known status: stored, exit 0", repr(r))
    finally:
        st.stripe.call("DELETE", "/_fake/subscriptions/" + sub["id"])


def make_events(st, n_subs=40):
    """Subscriptions created, changed and canceled through the API (each change an
    event), trial_will_end events, an invoice, and a type we do not handle."""
    subs = st.stripe.create_subscriptions(
        [{"customer": f"cus_ev{i:03d}", "price": list(PRICES)[i % 4],
          "status": "trialing" if i % 4 == 0 else "active", "events": True,
          "metadata": {"userId": f"ev-user-{i}"}} for i in range(n_subs)])
    for s in subs[: n_subs // 2]:
        api(st, "POST", "/v1/subscriptions/" + s["id"], {"cancel_at_period_end": "true"})
    for s in subs[n_subs // 2: n_subs * 3 // 4]:
        api(st, "DELETE", "/v1/subscriptions/" + s["id"])
    trials = [s for s in subs if s["status"] == "trialing"][:3]
    st.stripe.add_events([{"type": "customer.subscription.trial_will_end",
                           "data": {"object": api(st, "GET", "/v1/subscriptions/" + s["id"])}}
                          for s in trials] +
                         [{"type": "charge.refunded", "data": {"object": {"id": "ch_1", "object": "charge"}}}])
    return subs, trials


def fresh_events(st, n_subs):
    """A fresh fake and database with make_events(n_subs): (subs, trials, handled events)."""
    st.stripe.reset()
    put_prices(st)
    reset_db(st)
    subs, trials = make_events(st, n_subs)
    return subs, trials, handled(st)


def events_rows_match(t, st, subs, name):
    """Each row equals the fake's subscription as it is now."""
    objs = st.stripe.objects()["subscriptions"]
    rows_match(t, st, [objs[x["id"]] for x in subs],
               {s["customer"]: s["metadata"]["userId"] for s in subs}, name)


def handled(st):
    return [e for e in st.stripe.events() if e["type"] in HANDLED]


def test_events(t, st):
    st.stripe.reset()
    put_prices(st)
    reset_db(st)
    now = int(time.time())
    old_sub = st.stripe.create_subscriptions(customer="cus_old", price="price_pro_monthly",
                                             metadata={"userId": "old-user"})[0]
    old_ids = st.stripe.add_events([{"type": "customer.subscription.updated",
                                     "created": now - 5 * 86400, "data": {"object": old_sub}}])
    subs, trials = make_events(st, 60)
    evs = handled(st)
    new_evs = [e for e in evs if e["id"] not in old_ids]
    n0 = len(st.stripe.requests())
    r = run(st, "events")
    s = r.summary()
    eq(t, (r.status, s.get("events"), s.get("applied"), s.get("duplicates")),
         (0, str(len(new_evs)), str(len(new_evs)), "0"),
         f"events: the {len(new_evs)} events of the last 72 h applied", repr(r))
    got = [x[0] for x in st.psql("SELECT stripe_event_id FROM billing_events ORDER BY id")]
    eq(t, got, [e["id"] for e in new_evs], "events: applied oldest first, each once")
    eq(t, st.psql("SELECT DISTINCT source FROM billing_events"), [["sync"]],
         "events: recorded with source sync")
    eq(t, count(st, "billing_events", f"stripe_event_id = '{old_ids[0]}'"), 0,
         "events: the event before --since is where the walk starts, not applied")
    eq(t, count(st, "billing_events", "event_type = 'charge.refunded'"), 0,
         "events: types we do not handle are not asked for")
    reqs = [urllib.parse.parse_qs(x["query"]) for x in st.stripe.requests()[n0:]
            if x["path"] == "/v1/events"]
    eq(t, reqs[0].get("types[]") and sorted(reqs[0]["types[]"]), sorted(HANDLED),
         "events: types[] lists every type webhook.cgi handles")
    eq(t, [(q.get("limit"), q.get("ending_before")) for q in reqs[1:]],
         [(["100"], [old_ids[0]]), (["100"], [new_evs[99]["id"]])],
         "events: the walk goes forwards with ending_before, 100 at a time")
    events_rows_match(t, st, subs, "events")
    eq(t, count(st, "notifications", "kind = 'trial_will_end'"), len(trials),
         "events: one trial_will_end notification per event")
    eq(t, count(st, "sync_changes", "kind = 'event_applied'"), len(new_evs),
         "events: each recorded in sync_changes")

    queued = count(st, "notifications")
    r = run(st, "events")
    s = r.summary()
    eq(t, (r.status, s.get("applied"), s.get("duplicates")), (0, "0", str(len(new_evs))),
         "events again: every one a duplicate")
    eq(t, count(st, "notifications"), queued, "events again: no notification twice")

    r = run(st, "events", "--since", "31d")
    t.ok(r.status == 2 and "30 days" in r.stderr, "--since past 30 days refused, saying why",
         repr(r))


def test_events_from_oldest(t, st):
    """No event before --since: the oldest event in the window is the first."""
    subs, trials, evs = fresh_events(st, 80)
    n0 = len(st.stripe.requests())
    r = run(st, "events", "--since", "2h")
    eq(t, (r.status, r.summary().get("applied")), (0, str(len(evs))),
         f"from the oldest: all {len(evs)} events applied", repr(r))
    got = [x[0] for x in st.psql("SELECT stripe_event_id FROM billing_events ORDER BY id")]
    eq(t, got, [e["id"] for e in evs], "from the oldest: oldest first, each once")
    reqs = [urllib.parse.parse_qs(x["query"]) for x in st.stripe.requests()[n0:]
            if x["path"] == "/v1/events"]
    shape = [tuple(k for k in ("created[lt]", "created[gte]", "starting_after", "ending_before")
                   if k in q) for q in reqs]
    eq(t, shape, [("created[lt]",), ("created[gte]",), ("created[gte]", "starting_after"),
                 ("ending_before",), ("ending_before",)],
         "from the oldest: probe, two pages down to the oldest, two pages forwards", repr(shape))
    events_rows_match(t, st, subs, "from the oldest")


def test_events_race(t, st):
    """The same events through webhook.cgi while billing-sync applies them."""
    subs, trials, evs = fresh_events(st, 30)
    answers = []
    lock = threading.Lock()
    todo = list(evs)
    random.Random(5).shuffle(todo)

    def webhook(batch):
        for ev in batch:
            res = deliver(st, ev)
            with lock:
                answers.append((ev["id"], res.status, (res.json() or {}).get("duplicate", False)))

    # billing-sync first (paced, so that it takes a while), the webhook once it applied one.
    p = start(st, "events", env={"SYNC_MAX_RPS": "10"})
    deadline = time.monotonic() + 60
    while count(st, "billing_events") == 0 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    threads = [threading.Thread(target=webhook, args=(todo[i::3],)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out, err = p.communicate(timeout=300)
    r = Result(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    s = r.summary()
    eq(t, r.status, 0, "race: billing-sync exit 0", repr(r))
    t.ok(all(a[1] == 200 for a in answers), "race: every webhook delivery answered 200")
    ids = [x[0] for x in st.psql("SELECT stripe_event_id FROM billing_events")]
    eq(t, sorted(ids), sorted(e["id"] for e in evs), "race: every event recorded exactly once")
    fresh_by_webhook = sum(1 for a in answers if not a[2])
    eq(t, int(s.get("applied", -1)) + fresh_by_webhook, len(evs),
         "race: applied by billing-sync + applied by webhook.cgi = the events",
         f"sync {s.get('applied')} webhook {fresh_by_webhook}")
    t.ok(int(s.get("applied", 0)) > 0 and fresh_by_webhook > 0,
         "race: both applied some (they overlapped)", f"sync {s.get('applied')} webhook {fresh_by_webhook}")
    eq(t, dict(st.psql("SELECT source, count(*) FROM billing_events GROUP BY source")),
         {k: v for k, v in (("sync", s.get("applied")), ("webhook", str(fresh_by_webhook)))
          if v != "0"}, "race: billing_events.source says who was first")
    eq(t, count(st, "notifications", "kind = 'trial_will_end'"), len(trials),
         "race: one notification per trial_will_end event")
    events_rows_match(t, st, subs, "race")


def test_events_expired_cursor(t, st):
    """A stopped run is continued after its cursor left Stripe's 30 days."""
    subs, trials, evs = fresh_events(st, 80)
    # From the oldest: probe, two pages down, then page 1 forwards; page 2 stops the run.
    st.stripe.fail(mode="429", path="/v1/events", method="GET", at=5, count=1,
                   retry_after=600)
    r = run(st, "events", "--since", "2h")
    eq(t, (r.status, st.psql("SELECT cursor FROM sync_runs WHERE finished_at IS NULL")),
       (2, [[evs[100]["id"]]]), "expired cursor: the run stopped at its cursor", repr(r))
    # The cursor, what came before it and five events never applied expire.
    for e in evs[:106]:
        st.stripe.call("DELETE", "/_fake/events/" + e["id"])
    r = run(st, "events", "--since", "2h")
    s = r.summary()
    eq(t, (r.status, s.get("applied"), s.get("duplicates")), (1, str(len(evs) - 106), "0"),
       "expired cursor: the run goes on from the oldest event kept, exit 1", repr(r))
    t.ok("billing-sync subscriptions" in r.stderr and evs[100]["id"] in r.stderr,
         "...saying which cursor expired and what repairs what may be lost", r.stderr[-1500:])
    eq(t, st.psql("SELECT outcome, resumed FROM sync_runs ORDER BY id"), [["done", "1"]],
       "...as the same run, now done")
    got = [x[0] for x in st.psql("SELECT stripe_event_id FROM billing_events ORDER BY id")]
    eq(t, got, [e["id"] for e in evs[:101] + evs[106:]],
       "...every event Stripe still has applied once, oldest first")
    r = run(st, "events", "--since", "2h")
    eq(t, (r.status, r.summary().get("duplicates")), (0, str(len(evs) - 106)),
       "expired cursor: the next run is a normal one", repr(r))


def test_events_killed_after_apply(t, st):
    """Killed between an event's transaction and its cursor step: recorded on restart."""
    subs, trials, evs = fresh_events(st, 10)
    hold = LockHolder(st, "LOCK TABLE sync_changes IN SHARE MODE")
    try:
        p = start(st, "events")
        waiting = ("SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                   " WHERE NOT l.granted AND l.relation = 'sync_changes'::regclass")
        wait_until("billing-sync to wait for sync_changes", lambda: st.psql_one(waiting),
                   seconds=60)
        backend = st.psql_one(waiting)
        eq(t, count(st, "billing_events"), 1, "killed: the oldest event's transaction committed")
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        hold.release()
    wait_until("the killed run's session to end", lambda: st.psql_one(
        f"SELECT 1 FROM pg_stat_activity WHERE pid = {backend}") is None, seconds=30)
    eq(t, count(st, "sync_changes"), 0, "killed: its sync_changes row went with it")
    r = run(st, "events")
    s = r.summary()
    eq(t, (r.status, s.get("applied"), s.get("duplicates")), (0, str(len(evs)), "0"),
       "restarted: the event the killed process applied counts as applied", repr(r))
    eq(t, sorted(x[0] for x in st.psql("SELECT stripe_event_id FROM sync_changes"
                                       " WHERE kind = 'event_applied'")),
       sorted(e["id"] for e in evs), "restarted: every event applied by sync recorded once")
    events_rows_match(t, st, subs, "killed after apply")


def test_events_malformed(t, st):
    """A listed event we cannot read is skipped, and the run says it needs an operator."""
    subs, trials, evs = fresh_events(st, 5)
    sub = st.stripe.create_subscriptions(customer="cus_evbad", price="price_pro_monthly",
                                         metadata={"userId": "ev-bad"})[0]
    # created is not a whole number of seconds: subscription_event_parse refuses it.
    bad = st.stripe.add_events([{"type": "customer.subscription.updated",
                                 "created": time.time() + 0.5, "data": {"object": sub}}])[0]
    r = run(st, "events")
    s = r.summary()
    eq(t, (r.status, s.get("skipped"), s.get("applied")), (1, "1", str(len(evs))),
       "malformed event: skipped, the others applied, exit 1", repr(r))
    t.ok(bad in r.stderr and "billing-sync subscriptions" in r.stderr,
         "...the log names the event and what repairs its object", r.stderr[-800:])
    eq(t, count(st, "billing_events", f"stripe_event_id = '{bad}'"), 0,
       "...and it is not recorded")


def main():
    t = Tap()
    with t.guard("subscriptions"), Stack(apache=False) as st:
        put_prices(st)
        acct = make_account(st)
        t.run(test_backfill, t, st, acct)
        t.run(test_drift, t, st, acct)
        t.run(test_newer_by_webhook, t, st, acct)
        t.run(test_newer_row_other_customer, t, st, acct)
        t.run(test_filters, t, st, acct)
        t.run(test_failures, t, st, acct)
        t.run(test_kill, t, st, acct)
        t.run(test_pace_and_errors, t, st)
        t.run(test_waits_for_customer_link, t, st)
        t.run(test_created_while_listing, t, st, acct)
        t.run(test_unstorable_needs_operator, t, st)
    with t.guard("events"), Stack(apache=False) as st:
        t.run(test_events, t, st)
        t.run(test_events_from_oldest, t, st)
        t.run(test_events_race, t, st)
        t.run(test_events_expired_cursor, t, st)
        t.run(test_events_killed_after_apply, t, st)
        t.run(test_events_malformed, t, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
