#!/usr/bin/env python3
"""What the derived tables cost a plain-CGI webhook: a script that prints figures.

    python3 bench/without-triggers.py [BUILDDIR]     (RUNS=150 by default)

Issue 8's per-invocation target compares webhook.cgi with the minimal C
webhook of ../shared/bench/floor (one INSERT into one table).  Beyond
recording the event, a webhook writes the customer link and the
subscription, whose triggers keep the MRR ledger, the monthly MRR table,
the subscription counts and updated_at.  This times, interleaved in one
loop against one PostgreSQL, webhook.cgi (event mode, a fresh signed
customer.subscription.created of a new user each run) against three copies
of its database:
  full        the schema as shipped;
  no counts   the counts and monthly-MRR triggers disabled;
  no triggers every trigger on subscriptions disabled (no ledger either);
and the floor beside them.  Disabling triggers is for measuring only: the
schema's guarantees need them.
"""
import os
import statistics
import sys
import shutil
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deployments as d  # noqa: E402  (BUILDDIR, SRCDIR, helpers)
from harness import Stack, stripe_signature  # noqa: E402

RUNS = max(10, min(int(os.environ.get("RUNS", "150")), 2000))
VARIANTS = [
    ("full", None),
    ("no counts", "ALTER TABLE subscriptions DISABLE TRIGGER subscriptions_counts_insert;"
                  "ALTER TABLE subscriptions DISABLE TRIGGER subscriptions_counts_update;"
                  "ALTER TABLE mrr_movements DISABLE TRIGGER mrr_movements_monthly_row;"),
    ("no triggers", "ALTER TABLE subscriptions DISABLE TRIGGER USER;"),
]


def main():
    tmp = tempfile.mkdtemp(prefix="billing-bench-")
    try:
        floor = d.floor_cgi(tmp, "without-triggers.py")
        with Stack({"STRIPE_SYNC_MODE": "event"}, builddir=d.BUILDDIR, srcdir=d.SRCDIR,
                   apache=False) as st:
            d.create_floor_db(st)
            urls = {}
            for n, (label, sql) in enumerate(VARIANTS):
                if sql is None:
                    urls[label] = st.database_url
                    continue
                st.psql(f"CREATE DATABASE variant{n} TEMPLATE billing")
                urls[label] = st.database_url.replace("/billing?", f"/variant{n}?", 1)
                st.psql(sql, url=urls[label])
            webhook = os.path.join(st.cgi_bin, "webhook.cgi")
            progs = [(f"webhook.cgi, {label}", webhook, label) for label, _ in VARIANTS]
            progs.append(("floor limit.cgi", floor, None))
            tags = {name: f"wt{k}" for k, (name, _, _) in enumerate(progs)}
            times = {p[0]: [] for p in progs}
            bad = {p[0]: 0 for p in progs}
            for i in range(RUNS + 10):
                # Programs take turns at going first: no one gains from its place.
                for name, prog, label in progs if i % 2 == 0 else progs[::-1]:
                    b = d.event_body(tags[name], i)
                    env = st.cgi_env("webhook", body=b,
                                     headers={"Stripe-Signature": stripe_signature(d.SECRET, b)})
                    if label is None:
                        env = d.floor_env(env, st.pg_run, st.pg_port)
                    else:
                        env["DATABASE_URL"] = urls[label]
                    t0 = time.perf_counter()
                    out, _ = d.spawn(prog, env, b)
                    dt = time.perf_counter() - t0
                    if i >= 10:
                        times[name].append(dt)
                    bad[name] += not out.startswith(b"Status: 200")
            base = statistics.median(times["floor limit.cgi"])
            print(f"# webhook.cgi without the derived tables' triggers, {time.strftime('%Y-%m-%d %H:%M')},"
                  f" {RUNS} runs each, interleaved")
            print("| program | wall median ms | x floor | not 200 |")
            print("|---|---|---|---|")
            for name, _, _ in progs:
                m = statistics.median(times[name])
                print(f"| {name} | {m * 1000:.1f} | {m / base:.3f} | {bad[name]} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
