#!/usr/bin/env python3
"""The console in a real browser: headless Chromium (Debian's `chromium`)
driven over the DevTools protocol by tests/browser.py (why a driver: see
there), with JavaScript disabled, through Apache with Basic auth.

A year of subscriptions is written to the database (the ledger triggers
date each change by its event time), plus the customers of test_admin.py
delivered as signed events.  The browser then
  - loads the dashboard: the style sheet applies under the CSP (a computed
    colour), no CSP violation is reported, the figures it renders (cards,
    the monthly table) equal the database's;
  - searches by typing into the header's search box and pressing Enter;
  - clicks through to the customer page and checks it against the database;
  - runs an action as an operator would: the action link, the confirmation,
    typing a reason, clicking the button; the browser's own form post
    (its Origin) passes the console's checks, and the database, the fake
    Stripe and admin_audit show the change;
  - saves a screenshot of every page under $BUILDDIR/tests/screenshots/.
"""

import os
import random
import re
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import Browser, BrowserError  # noqa: E402
from harness import Stack, Tap  # noqa: E402
from test_admin import (OPERATORS, SETTINGS, Cells, Page, audit_last, basic, fake_sub, money,  # noqa: E402
                        months_back, seed, sub_row)

DAY = 86400


def history(st, n=160, seed_=7):
    """n subscriptions over the past year: sign-ups (some after a trial),
    upgrades, downgrades and cancellations, each change dated by its event
    time through last_event_created (so the ledger has a past)."""
    rnd = random.Random(seed_)
    now = int(time.time())
    prices = {"basic": 900, "pro": 1900, "enterprise": 9900}
    stmts = []
    for i in range(n):
        tier = rnd.choice(["basic", "basic", "pro", "pro", "enterprise"])
        cur = "usd" if rnd.random() < 0.8 else "eur"
        t0 = now - rnd.randint(5, 360) * DAY
        trial = rnd.random() < 0.35
        user, sid = f"demo{i:03d}", f"sub_demo{i:03d}"
        first = "trialing" if trial else "active"
        stmts.append(
            f"INSERT INTO customers (user_id, stripe_customer_id, email) VALUES ('{user}',"
            f" 'cus_demo{i:03d}', '{user}@example.test');"
            f"INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id, tier,"
            f" status, billing_interval, unit_amount, currency, quantity, last_event_created,"
            f" last_event_id, created_at) VALUES ('{user}', 'cus_demo{i:03d}', '{sid}', '{tier}',"
            f" '{first}', 'monthly', {prices[tier]}, '{cur}', 1, to_timestamp({t0}), 'e{i}a',"
            f" to_timestamp({t0}));")
        t = t0
        if trial:
            t += 14 * DAY
            if t < now:
                status = "active" if rnd.random() < 0.7 else "canceled"
                stmts.append(f"UPDATE subscriptions SET status = '{status}', last_event_created ="
                             f" to_timestamp({t}), last_event_id = 'e{i}b' WHERE"
                             f" stripe_subscription_id = '{sid}';")
                if status == "canceled":
                    continue
            else:
                continue
        t += rnd.randint(10, 200) * DAY
        if t < now and rnd.random() < 0.35:
            qty = rnd.choice([2, 3]) if rnd.random() < 0.7 else 1
            amount = prices[tier] if qty > 1 else prices["basic"]
            stmts.append(f"UPDATE subscriptions SET quantity = {qty}, unit_amount = {amount},"
                         f" last_event_created = to_timestamp({t}), last_event_id = 'e{i}c'"
                         f" WHERE stripe_subscription_id = '{sid}';")
        t += rnd.randint(10, 200) * DAY
        if t < now and rnd.random() < 0.3:
            stmts.append(f"UPDATE subscriptions SET status = 'canceled', last_event_created ="
                         f" to_timestamp({t}), last_event_id = 'e{i}d' WHERE"
                         f" stripe_subscription_id = '{sid}';")
    st.psql("".join(stmts))
    # Usage this month, some near the basic limits.
    st.psql("INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount, tier)"
            " SELECT s.user_id, t, usage_period_start(), usage_period_end(),"
            " (hashtext(s.user_id || t) & 1023) % 1000, effective_tier(s.status, s.tier)"
            " FROM subscriptions s CROSS JOIN unnest(ARRAY['pain_entry', 'mood_entry', 'export']) t"
            " WHERE s.user_id LIKE 'demo%' AND s.status IN ('active', 'trialing')"
            " ON CONFLICT DO NOTHING")
    st.psql("UPDATE usage_tracking SET amount = least(amount, 20) WHERE usage_type = 'export'")


def check_page(t, b, name, shots):
    """No CSP violation or console error so far; the style sheet applied; a screenshot."""
    bad = [m for m in b.log if "Content Security Policy" in m[1] or m[0].endswith("/error")]
    t.ok(not bad, f"{name}: no CSP violation or error in the browser", bad[:3])
    t.eq(b.computed("header", "background-color"), "rgb(36, 41, 47)",
         f"{name}: the inline style sheet applies under the CSP")
    path = b.screenshot(os.path.join(shots, name + ".png"))
    t.ok(os.path.getsize(path) > 5000, f"{name}: screenshot {path}")


def main():
    t = Tap()
    shots = os.path.join(os.environ.get("BUILDDIR", os.getcwd()), "tests", "screenshots")
    os.makedirs(shots, exist_ok=True)
    with Stack(SETTINGS, operators=OPERATORS) as st, Browser(st.tmp) as b:
        with t.guard("seed"):
            seed(st)
            history(st)
        base = f"http://127.0.0.1:{st.port}/admin/"
        b.headers({"Authorization": basic("operator")})
        b.scripts(False)

        with t.guard("dashboard"):
            b.go(base)
            html = b.html()
            c = Cells(html)
            mrr = st.psql_one("SELECT mrr FROM mrr_now WHERE currency = 'usd'")
            t.ok(int(mrr) > 0, f"the history has MRR ({mrr})")
            t.eq(c.figures.get("mrr"), money(mrr, "usd"), "rendered MRR = mrr_now")
            t.eq(c.figures.get("paying"), st.psql_one(
                "SELECT paying_customers FROM mrr_now WHERE currency = 'usd'"),
                "rendered paying customers = mrr_now")
            t.eq(c.figures.get("active"), st.psql_one(
                "SELECT count(*) FROM subscriptions WHERE status = 'active'"),
                "rendered active subscriptions = the table")
            want = st.psql(f"SELECT to_char(month, 'YYYY-MM'), mrr_end, net_new_mrr, customers_end,"
                           f" churned_customers FROM analytics_monthly('{months_back(11)}-01',"
                           f" '{months_back(0)}-01', 'usd')")
            got = [(m, c.rows.get(m, {}).get("mrr_end"), c.rows.get(m, {}).get("net_new_mrr"),
                    c.rows.get(m, {}).get("customers_end"),
                    c.rows.get(m, {}).get("churned_customers")) for m, *_ in want]
            t.eq(got, [(m, money(a), money(b_), cu, ch) for m, a, b_, cu, ch in want],
                 "rendered monthly table = analytics_monthly()")
            t.ok(len(set(r[1] for r in want)) > 3, "and the months differ (a real history)")
            t.eq(html.count("<svg"), 6, "six charts")
            check_page(t, b, "dashboard", shots)
            # The README's picture: the top of the dashboard.
            b.send("Emulation.setDeviceMetricsOverride",
                   {"width": 1100, "height": 780, "deviceScaleFactor": 1, "mobile": False})
            import base64 as b64
            data = b.send("Page.captureScreenshot", {"format": "png"})["data"]
            b.send("Emulation.clearDeviceMetricsOverride")
            with open(os.path.join(shots, "console.png"), "wb") as f:
                f.write(b64.b64decode(data))

        with t.guard("search"):
            b.go(base)
            b.type_into('header input[name="q"]', "Ada.Lovelace@EXAMPLE")
            url = b.key_enter()
            t.ok(url.startswith(base + "search?q=Ada.Lovelace%40EXAMPLE"),
                 "Enter in the search box submits the form (no script)", url)
            found = [a["href"] for tag, a in Page(b.html()).tags
                     if tag == "a" and a.get("href", "").startswith("customer?")]
            t.eq(found, ["customer?user=ada"], "the search finds ada by e-mail, any case")
            check_page(t, b, "search", shots)

        with t.guard("customer"):
            url = b.click('a[href="customer?user=ada"]')
            t.eq(url, base + "customer?user=ada", "clicking the result opens the customer")
            c = Cells(b.html())
            t.eq(c.rows.get("sub_ada", {}).get("status"), sub_row(st, "sub_ada")[0],
                 "rendered status = the database")
            t.eq(c.rows.get("pain_entry", {}).get("_cells", ["", ""])[1], st.psql_one(
                "SELECT used FROM user_usage('ada') WHERE usage_type = 'pain_entry'"),
                "rendered usage = user_usage()")
            check_page(t, b, "customer", shots)

        with t.guard("action"):
            url = b.click('a[href^="confirm?action=cancel_at_period_end"]')
            t.ok(url.startswith(base + "confirm?action=cancel_at_period_end"), "the confirmation")
            check_page(t, b, "confirm", shots)
            b.type_into('input[name="reason"]', "asked by phone, ticket 4711")
            url = b.click('#confirm button[type="submit"]')
            t.eq(url, base + "action", "the browser posts the form")
            result = Page(b.html()).all_text()
            t.ok("cancels at the end of its period" in result, "the result page says so",
                 result[-300:])
            t.eq(sub_row(st, "sub_ada")[:2], ("active", "t"), "database: cancels at period end")
            t.eq(fake_sub(st, "sub_ada")["cancel_at_period_end"], True, "Stripe: the same")
            a = audit_last(st)
            t.eq((a["operator"], a["action"], a["reason"], a["result"]),
                 ("operator", "cancel_at_period_end", "asked by phone, ticket 4711", "done"),
                 "admin_audit: operator, action, reason, done")
            check_page(t, b, "result", shots)
            url = b.click('a[href="customer?user=ada"]')
            t.ok("asked by phone, ticket 4711" in Page(b.html()).all_text(),
                 "the customer page lists it")
            t.ok('href="confirm?action=resume' in b.html(), "and now offers resume")

        with t.guard("without credentials"):
            b.headers({})
            try:
                b.go(base)
                err = "loaded " + b.html()[:200]
            except BrowserError as e:
                err = str(e)
            t.ok("ERR_INVALID_AUTH_CREDENTIALS" in err,
                 "without credentials the browser meets Apache's Basic challenge", err)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
