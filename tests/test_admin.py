#!/usr/bin/env python3
"""The operator console (admin.cgi) through a real Apache with the real
apache/billing-cgi.conf: Basic auth against the htpasswd file the harness
writes (BILLING_ADMIN_HTPASSWD), ADMIN_USERS, bearer JWTs for the API.

- who may enter: no credentials, a wrong password, an operator Apache knows
  but ADMIN_USERS does not list, ADMIN_USERS unset, JWTs (good, another sub,
  bad signature, expired), the usage API key;
- the analytics API: JSON equal to analytics_report(), CSV (RFC 4180) equal to
  analytics_monthly(), defaults, every parameter error, Accept negotiation;
- the pages: security headers (the CSP's style hash is the page's style
  sheet), the dashboard's figures against the database, search by every key,
  the customer page's tables;
- XSS: markup in user ids, Stripe metadata, e-mail addresses, notification
  errors and search terms comes out escaped on every page (no element, no
  attribute, no URL the page did not write itself);
- CSRF: no token, another operator's token, another target's token, another
  Origin, no Origin and no Referer, a same-site Referer, a missing reason, a
  form sent twice;
- every action end to end with its admin_audit row, the database and the
  fake Stripe's state: cancel at period end (and an older event arriving
  after it), resume, cancel now, re-sync, reset usage, and a Stripe failure;
- what Stripe really did decides the row and the audit: a cancel now whose
  answer is lost, a change applied before 500s, a resume refused because the
  subscription ended at Stripe unseen, a try that outlasts every timeout and
  is applied later, no answer at all;
- a form posted again while its first post waits on Stripe, and after it failed;
- the same console in the .htaccess layout, under mod_fcgid and under
  mod_proxy_fcgi (admin.cgi's page reaches it in PATH_INFO).
"""

import base64
import calendar
import csv
import hashlib
import html.parser
import io
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DEFAULT_SETTINGS, Stack, Tap, make_jwt, stripe_signature,  # noqa: E402
                     wait_until)

SECRET = DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"]
OPERATORS = {"alice": "alice-password", "mallory": "mallory-password"}
SETTINGS = {"ADMIN_USERS": "operator, alice", "STRIPE_SYNC_MODE": "event",
            "ADMIN_CSRF_SECRET": "console-test-secret-0123456789abcdef"}
DAY = 86400
NOW = int(time.time())
XSS_USER = 'x<script>alert("u")</script>\'"&amp;'
XSS_NOTE = "<img src=x onerror=alert('m')>"
XSS_EMAIL = '"><svg onload=alert(1)>@evil.test'
XSS_ERROR = "550 <b onmouseover=alert(2)>no</b>"


def basic(user="operator", password=None):
    pw = password if password is not None else (OPERATORS.get(user) or "operator-password")
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def jwt(sub, **claims):
    """An operator's token: it names the operators' audience (ADMIN_JWT_AUDIENCE)."""
    c = {"sub": sub, "exp": int(time.time()) + 300, "aud": "billing-admin"}
    c.update(claims)
    return "Bearer " + make_jwt(c)


def user_jwt(sub):
    """A user's token, as the app's endpoints take it: no aud."""
    return "Bearer " + make_jwt({"sub": sub, "exp": int(time.time()) + 300})


def get(st, path, user="operator", headers=None):
    h = {"Authorization": basic(user)}
    h.update(headers or {})
    return st.http("GET", path, headers=h)


def origin(st):
    return f"http://127.0.0.1:{st.port}"


class Page(html.parser.HTMLParser):
    """What a page holds: tags with attributes, text, forms' inputs."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags = []           # (tag, attrs dict)
        self.text = []
        self.inputs = {}         # form id -> {name: value}
        self._form = None
        self._stack = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "form":
            self._form = a.get("id") or a.get("action")
            self.inputs.setdefault(self._form, {})
        if tag == "input" and self._form is not None and "name" in a:
            self.inputs[self._form][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None

    def handle_data(self, data):
        self.text.append(data)

    def all_text(self):
        return "".join(self.text)

    def by_attr(self, name, value):
        return [a for t, a in self.tags if a.get(name) == value]


class Cells(html.parser.HTMLParser):
    """Text of elements carrying data-* attributes: {(attr, value): text}, and
    table rows by data-month/data-subscription/data-usage with data-col cells."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.figures = {}
        self.rows = {}
        self._row = None
        self._capture = None
        self._buf = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("data-month", "data-subscription", "data-usage"):
            if key in a and tag == "tr":
                self._row = a[key]
                self.rows[self._row] = {"_cells": []}
        if tag == "td" and self._row is not None:
            self._capture = ("cell", a.get("data-col"))
            self._buf = []
        if "data-figure" in a:
            self._figure = a["data-figure"]
        if tag == "b" and getattr(self, "_figure", None):
            self._capture = ("figure", self._figure)
            self._buf = []

    def handle_endtag(self, tag):
        if tag == "td" and self._capture and self._capture[0] == "cell":
            text = "".join(self._buf).strip()
            self.rows[self._row]["_cells"].append(text)
            if self._capture[1]:
                self.rows[self._row][self._capture[1]] = text
            self._capture = None
        elif tag == "b" and self._capture and self._capture[0] == "figure":
            self.figures[self._capture[1]] = "".join(self._buf).strip()
            self._capture = None
            self._figure = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._capture:
            self._buf.append(data)


ZERO_DECIMAL = {"jpy", "krw"}


def money(minor, cur=None):
    """The console's money format (html_money), written anew."""
    minor = int(minor)
    neg = "-" if minor < 0 else ""
    m = abs(minor)
    if cur and cur.lower() in ZERO_DECIMAL:
        s = f"{neg}{m:,}"
    else:
        s = f"{neg}{m // 100:,}.{m % 100:02d}"
    return s + ("\u00a0" + cur.upper() if cur else "")


def safe_markup(t, page, name, allowed_scripts=0):
    """No element, attribute or URL on the page that the console does not write."""
    p = Page(page)
    bad = [(tag, a) for tag, a in p.tags if tag in ("script", "img", "iframe", "object",
                                                      "embed", "svg:script", "i")]
    bad += [(tag, k) for tag, a in p.tags for k in a if k.startswith("on")]
    bad += [(tag, a["href"]) for tag, a in p.tags if "href" in a and
            re.match(r"\s*(javascript|data|vbscript):", a["href"], re.I)]
    t.ok(not bad, f"{name}: no element or attribute from data", f"found: {bad[:5]}")
    return p


# ---------------------------------------------------------------------------
# Data: subscriptions in the fake Stripe, delivered as signed events

def deliver(st, obj, typ="customer.subscription.created", created=None, evid=None):
    ev = {"id": evid or f"evt_adm_{obj['id']}_{typ.split('.')[-1]}_{created}", "object": "event",
          "type": typ, "created": created or NOW, "api_version": "2026-07-29.dahlia",
          "data": {"object": obj}}
    body = json.dumps(ev).encode()
    r = st.cgi("webhook", body=body, headers={"Content-Type": "application/json",
                                              "Stripe-Signature": stripe_signature(SECRET, body)})
    if r.status != 200:
        raise RuntimeError(f"webhook {r.status}: {r.text[:300]}")
    return r


def fake_sub(st, sub_id):
    return st.stripe.objects()["subscriptions"][sub_id]


def seed(st):
    st.stripe.put_price("price_basic_monthly", unit_amount=900, currency="usd",
                        recurring={"interval": "month"})
    st.stripe.put_price("price_pro_monthly", unit_amount=1900, currency="usd",
                        recurring={"interval": "month"})
    st.stripe.put_price("price_pro_yearly", unit_amount=19000, currency="usd",
                        recurring={"interval": "year"})
    st.stripe.put_price("price_pro_eur", unit_amount=1700, currency="eur",
                        recurring={"interval": "month"})
    specs = [
        ("ada", "cus_ada", "sub_ada", "price_pro_monthly", "active", 95, {}),
        ("bob", "cus_bob", "sub_bob", "price_basic_monthly", "active", 70, {}),
        ("cyd", "cus_cyd", "sub_cyd", "price_pro_yearly", "trialing", 5, {}),
        ("dee", "cus_dee", "sub_dee", "price_pro_eur", "active", 40, {"tier": "pro"}),
        ("syn", "cus_syn", "sub_syn", "price_basic_monthly", "active", 50, {}),
        ("fay", "cus_fay", "sub_fay", "price_pro_monthly", "active", 20, {}),
        (XSS_USER, "cus_xss", "sub_xss", "price_basic_monthly", "active", 30,
         {"note": XSS_NOTE}),
    ]
    for user, cus, sid, price, status, days, meta in specs:
        md = {"userId": user}
        md.update(meta)
        st.stripe.create_subscriptions(id=sid, customer=cus, price=price, status=status,
                                       created=NOW - days * DAY, metadata=md)
        deliver(st, fake_sub(st, sid), created=NOW - days * DAY)
    st.psql("UPDATE customers SET email = 'Ada.Lovelace@Example.test' WHERE user_id = 'ada'")
    st.psql("UPDATE customers SET email = $$" + XSS_EMAIL + "$$ WHERE user_id = "
            "$$" + XSS_USER + "$$")
    # Usage this month through usage.cgi, and a past month written directly.
    key = {"Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]}
    for user, typ, n in (("ada", "pain_entry", 5), ("ada", "export", 2), ("bob", "pain_entry", 7),
                         ("fay", "mood_entry", 3)):
        r = st.http("POST", "/api/usage", headers=key,
                    body={"userId": user, "usageType": typ, "amount": n})
        if r.status != 200:
            raise RuntimeError(f"usage {r.status} {r.text}")
    st.psql("INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount)"
            " VALUES ('ada', 'pain_entry', usage_period_start() - interval '1 month',"
            " usage_period_start(), 42)")
    st.psql("INSERT INTO notifications (user_id, kind, status, attempts, last_error)"
            " VALUES ('bob', 'payment_failed', 'failed', 3, $$" + XSS_ERROR + "$$),"
            " ('bob', 'trial_will_end', 'pending', 0, NULL)")


# ---------------------------------------------------------------------------
# Who may enter

def test_access(t, st):
    r = st.http("GET", "/admin/")
    t.eq(r.status, 401, "page without credentials: 401 (Apache)")
    t.ok("Basic" in (r.headers.get("www-authenticate") or ""), "with a Basic challenge")
    t.eq(get(st, "/admin/", "operator", {"Authorization": basic("operator", "wrong")}).status,
         401, "wrong password: 401")
    t.eq(st.http("GET", "/admin/", headers={"Authorization": basic("nobody", "x")}).status, 401,
         "unknown user: 401")
    r = get(st, "/admin/", "mallory")
    t.eq(r.status, 403, "an operator Apache knows but ADMIN_USERS does not list: 403")
    t.ok("text/html" in r.headers.get("content-type", ""), "as a page")
    t.eq(get(st, "/admin/", "alice").status, 200, "alice (listed): 200")
    r = get(st, "/admin/")
    t.eq(r.status, 200, "operator: 200")
    t.ok("signed in as operator" in r.text, "the page names the operator")
    t.eq(st.http("GET", "/admin/", headers={"Authorization": jwt("operator")}).status, 401,
         "pages do not take a JWT (Apache wants Basic)")

    # The API: Basic, or a bearer JWT admin.cgi verifies.
    r = st.http("GET", "/api/admin/analytics")
    t.eq(r.status, 401, "API without credentials: 401")
    t.eq((r.json() or {}).get("error", {}).get("code"), "unauthorized", "as JSON")
    ch = r.headers.get("www-authenticate") or ""
    t.ok("Basic" in ch, "offering Basic", ch)
    t.eq(get(st, "/api/admin/analytics").status, 200, "API with Basic: 200")
    r = get(st, "/api/admin/analytics", "mallory")
    t.eq((r.status, (r.json() or {}).get("error", {}).get("code")), (403, "forbidden"),
         "API, operator not in ADMIN_USERS: 403 forbidden")
    t.eq(st.http("GET", "/api/admin/analytics", headers={"Authorization": jwt("alice")}).status,
         200, "API with a JWT of a listed operator: 200")
    r = st.http("GET", "/api/admin/analytics", headers={"Authorization": jwt("mallory")})
    t.eq(r.status, 403, "a JWT of someone else: 403")
    # A user's token is no operator's, even when the user's id is an
    # operator's name; and an operator's token is no user's.
    r = st.http("GET", "/api/admin/analytics", headers={"Authorization": user_jwt("alice")})
    t.eq(r.status, 401, "a user's JWT (no aud) whose sub is a listed operator: 401")
    t.ok("invalid_token" in (r.headers.get("www-authenticate") or ""), "...invalid_token")
    t.eq(st.http("GET", "/api/admin/analytics", headers={
        "Authorization": jwt("alice", aud="billing")}).status, 401,
        "a JWT for another audience: 401")
    t.eq(st.http("GET", "/api/usage?userId=alice",
                 headers={"Authorization": user_jwt("alice")}).status, 200,
         "the user's JWT still serves the user's endpoints")
    t.eq(st.http("GET", "/api/usage?userId=alice",
                 headers={"Authorization": jwt("alice")}).status, 401,
         "an operator's JWT is refused by the users' endpoints: 401")
    r = st.http("GET", "/api/admin/analytics",
                headers={"Authorization": "Bearer " + make_jwt(
                    {"sub": "operator", "exp": NOW + 300, "aud": "billing-admin"},
                    secret="x" * 40)})
    t.eq(r.status, 401, "a JWT with a bad signature: 401")
    t.ok("invalid_token" in (r.headers.get("www-authenticate") or ""), "invalid_token")
    t.eq(st.http("GET", "/api/admin/analytics",
                 headers={"Authorization": jwt("operator", exp=NOW - 3600)}).status, 401,
         "an expired JWT: 401")
    t.eq(st.http("GET", "/api/admin/analytics", headers={
        "Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]}).status, 401,
        "the usage API key is not an operator: 401")

    # Straight to the program (no Apache): no REMOTE_USER, ADMIN_USERS unset.
    r = st.cgi("admin", method="GET", env={"PATH_INFO": "/"})
    t.eq(r.status, 401, "program without REMOTE_USER: 401 (never trusts a missing config)")
    r = st.cgi("admin", method="GET", env={"PATH_INFO": "/", "REMOTE_USER": "operator",
                                           "ADMIN_USERS": None})
    t.eq(r.status, 403, "ADMIN_USERS unset: nobody may enter")
    r = st.cgi("admin", method="GET", env={"PATH_INFO": "/", "REMOTE_USER": "operatorx"})
    t.eq(r.status, 403, "a name that only starts like a listed one: 403")

    # URLs and methods.
    r = get(st, "/admin")
    t.eq((r.status, r.headers.get("location")), (301, "admin/"),
         "/admin redirects to /admin/ (the pages link relatively)")
    t.eq(get(st, "/admin/nothing").status, 404, "an unknown page: 404")
    r = st.http("POST", "/admin/", headers={"Authorization": basic(), "Origin": origin(st)})
    t.eq((r.status, r.headers.get("allow")), (405, "GET, HEAD"), "POST to a page: 405, Allow")
    r = get(st, "/admin/action")
    t.eq(r.status, 405, "GET of the action URL: 405")
    r = st.http("HEAD", "/admin/", headers={"Authorization": basic()})
    t.eq((r.status, r.body), (200, b""), "HEAD of a page: 200 without a body")


# ---------------------------------------------------------------------------
# The analytics API

def months_back(n):
    y, m = time.gmtime().tm_year, time.gmtime().tm_mon
    idx = y * 12 + m - 1 - n
    return f"{idx // 12:04d}-{idx % 12 + 1:02d}"


def test_api(t, st):
    this, first = months_back(0), months_back(11)
    r = get(st, "/api/admin/analytics")
    t.eq(r.status, 200, "API: 200")
    t.eq(r.headers.get("content-type"), "application/json", "JSON")
    body = r.json()
    want = json.loads(st.psql_one(
        f"SELECT analytics_report('{first}-01', '{this}-01', 'usd')"))
    t.eq(body, want, "defaults: the last 12 months, the currency with the most MRR (usd), "
         "equal to analytics_report()")
    t.eq(set(body.get("snapshot", {})) >= {"totalSubscriptions", "byTier", "byStatus",
                                           "monthlyRecurringRevenue"}, True,
         "the seed's snapshot members are there")
    t.eq(body["snapshot"]["totalSubscriptions"], int(st.psql_one("SELECT count(*) FROM subscriptions")),
         "totalSubscriptions counts every subscription")

    q = f"from={months_back(3)}&to={this}&currency=EUR"
    r = get(st, "/api/admin/analytics?" + q)
    want = json.loads(st.psql_one(
        f"SELECT analytics_report('{months_back(3)}-01', '{this}-01', 'eur')"))
    t.eq(r.json(), want, "from, to and currency (any case) given: analytics_report() of those")
    t.eq(len(r.json()["months"]), 4, "four months")

    for query, field in (("from=2026-13", "from"), ("from=26-01", "from"), ("to=2026-1", "to"),
                         (f"from={this}&to={months_back(2)}", "from"),
                         ("from=2000-01&to=2020-01", "from"), ("currency=us", "currency"),
                         ("currency=u%24d", "currency"), ("from=2026-01&from=2026-02", "from")):
        r = get(st, "/api/admin/analytics?" + query)
        err = (r.json() or {}).get("error", {})
        t.eq((r.status, err.get("code"), err.get("field")), (400, "invalid_field", field),
             f"{query}: 400 naming {field}")

    # CSV: the monthly series.
    rows = st.psql(f"SELECT * FROM analytics_monthly('{first}-01', '{this}-01', 'usd') ORDER BY 1")
    cols = st.psql(f"SELECT column_name FROM (SELECT (jsonb_each(to_jsonb(a))).key AS column_name,"
                   f" row_number() OVER () FROM analytics_monthly('{this}-01', '{this}-01', 'usd') a) x")
    for accept in ("text/csv", "text/csv;q=0.9, application/json;q=0.5", "application/json, text/csv"):
        r = get(st, "/api/admin/analytics", headers={"Accept": accept})
        t.ok(r.headers.get("content-type", "").startswith("text/csv"), f"Accept: {accept}: CSV")
    r = get(st, "/api/admin/analytics", headers={"Accept": "text/csv"})
    t.eq(r.headers.get("content-type"), "text/csv; charset=utf-8; header=present",
         "text/csv with header=present (RFC 7111)")
    t.ok("attachment" in (r.headers.get("content-disposition") or ""), "as a download")
    t.ok(r.body.count(b"\r\n") == len(rows) + 1 and b"\n" not in r.body.replace(b"\r\n", b""),
         "CRLF line ends, one line per month plus the header (RFC 4180 2.1)")
    got = list(csv.reader(io.StringIO(r.text, newline="")))
    t.eq(len(got[0]), len(cols), "one column per analytics_monthly column")
    t.eq(got[0][0], "month", "header starts with month")
    want = [[(v[:7] if i == 0 else ("" if v is None else v)) for i, v in enumerate(row)]
            for row in rows]
    t.eq(got[1:], want, "rows equal analytics_monthly() (month as YYYY-MM, NULL empty)")
    r = get(st, "/api/admin/analytics?format=csv&currency=eur")
    t.ok(r.text.splitlines()[1].split(",")[1] == "eur", "format=csv&currency=eur: eur rows")
    r = get(st, "/api/admin/analytics", headers={"Accept": "text/csv;q=0, application/json"})
    t.eq(r.headers.get("content-type"), "application/json", "text/csv;q=0: JSON")
    t.ok("Accept" in (r.headers.get("vary") or ""), "Vary: Accept")


# ---------------------------------------------------------------------------
# The pages

def test_pages(t, st):
    r = get(st, "/admin/")
    t.eq(r.status, 200, "dashboard: 200")
    csp = r.headers.get("content-security-policy") or ""
    style = re.search(r"<style>(.*?)</style>", r.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    t.eq(csp, f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
         "frame-ancestors 'none'; base-uri 'none'",
         "strict CSP; its hash is the page's own style sheet")
    t.eq((r.headers.get("x-frame-options"), r.headers.get("referrer-policy"),
          r.headers.get("cache-control")), ("DENY", "same-origin", "no-store"),
         "no framing, same-origin referrers, not cached")
    p = safe_markup(t, r.text, "dashboard")
    t.ok(not [a for tag, a in p.tags if tag in ("link", "script") or
              re.match(r"https?://", a.get("src", "") + a.get("href", ""))],
         "no external resource, no script")
    t.eq(r.text.count("<svg"), 6, "charts as inline SVG (MRR, movements, churn, conversion, "
         "tiers and statuses, quotas)")
    c = Cells(r.text)
    mrr = st.psql_one("SELECT mrr FROM mrr_now WHERE currency = 'usd'")
    t.eq(c.figures.get("mrr"), money(mrr, "usd"), f"MRR card = mrr_now ({mrr})")
    t.eq(c.figures.get("arr"), money(int(mrr) * 12, "usd"), "ARR card = 12 x MRR")
    t.eq(c.figures.get("paying"), st.psql_one(
        "SELECT paying_customers FROM mrr_now WHERE currency = 'usd'"), "paying customers")
    t.eq(c.figures.get("subscriptions"), st.psql_one("SELECT count(*) FROM subscriptions"),
         "subscriptions")
    t.eq(c.figures.get("trialing"), st.psql_one(
        "SELECT count(*) FROM subscriptions WHERE status = 'trialing'"), "trialing")
    this, first = months_back(0), months_back(11)
    want = st.psql(f"SELECT to_char(month, 'YYYY-MM'), mrr_end, new_mrr, churned_mrr, customers_end"
                   f" FROM analytics_monthly('{first}-01', '{this}-01', 'usd')")
    got = [(m, c.rows.get(m, {}).get("mrr_end"), c.rows.get(m, {}).get("new_mrr"),
            c.rows.get(m, {}).get("churned_mrr"), c.rows.get(m, {}).get("customers_end"))
           for m, *_ in want]
    t.eq(got, [(m, money(a), money(b), money(d), e) for m, a, b, d, e in want],
         "the monthly table equals analytics_monthly() for 12 months")
    r = get(st, "/admin/?currency=eur")
    t.eq(Cells(r.text).figures.get("mrr"), money(st.psql_one(
        "SELECT mrr FROM mrr_now WHERE currency = 'eur'"), "eur"), "currency=eur: EUR MRR")
    r = get(st, "/admin/?from=2026-13")
    t.eq(r.status, 400, "dashboard with a bad month: 400 page")
    t.ok("from must be a month" in r.text, "naming the field")

    # Search by every key.
    cases = [("ada", ["ada"]), ("cus_bob", ["bob"]), ("sub_cyd", ["cyd"]),
             ("ADA.LOVELACE@example", ["ada"]), ("ad", ["ada"]), ("  dee ", ["dee"]),
             ("nobody", []), ("%", []), ("_", [])]
    for term, users in cases:
        r = get(st, "/admin/search?q=" + urllib.parse.quote(term))
        found = [urllib.parse.parse_qs(urllib.parse.urlsplit(a["href"]).query)["user"][0]
                 for tag, a in Page(r.text).tags if tag == "a" and
                 a.get("href", "").startswith("customer?")]
        t.eq((r.status, found), (200, users), f"search {term!r}: {users}")
    st.psql("INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, tier, status)"
            " VALUES ('sub_orphan', 'cus_orphan', 'basic', 'active')")
    r = get(st, "/admin/search?q=cus_orphan")
    t.ok('id="unlinked"' in r.text and "sub_orphan" in r.text,
         "a subscription no user owns is listed apart")
    t.eq(get(st, "/admin/search?q=" + "x" * 201).status, 400, "a search term over 200 bytes: 400")

    # A customer.
    r = get(st, "/admin/customer?user=ada")
    t.eq(r.status, 200, "customer page: 200")
    c = Cells(r.text)
    t.eq(c.rows.get("sub_ada", {}).get("status"), "active", "subscription and its status")
    t.eq(c.rows.get("pain_entry", {}).get("_cells", [None, None])[1], "5",
         "usage this month (through usage.cgi)")
    t.ok(re.search(r"<td>" + months_back(1) + r"</td><td class=\"n\">42</td>", r.text),
         "usage of past months")
    t.ok("customer.subscription.created" in r.text, "billing events")
    t.ok('id="movements"' in r.text and ">new<" in r.text, "MRR movements")
    t.ok("Ada.Lovelace@Example.test" in r.text, "e-mail")
    r = get(st, "/admin/customer?user=bob")
    c = Cells(r.text)
    t.ok('id="notifications"' in r.text and "payment_failed" in r.text and "pending" in r.text,
         "notifications and their delivery state")
    t.eq(get(st, "/admin/customer?user=ghost").status, 404, "an unknown user: 404")
    t.eq(get(st, "/admin/customer?user=a%01b").status, 400, "a control character: 400")
    t.eq(get(st, "/admin/customer").status, 400, "no user: 400")
    links = [a["href"] for tag, a in Page(get(st, "/admin/customer?user=ada").text).tags
             if tag == "a" and a.get("href", "").startswith("confirm?")]
    t.ok(any("action=cancel_at_period_end" in h for h in links) and
         any("action=cancel_now" in h for h in links) and
         not any("action=resume" in h for h in links) and
         any("action=reset_usage" in h and "target=pain_entry" in h for h in links) and
         any("action=resync" in h for h in links),
         "the actions that apply are offered, resume is not", links)


# ---------------------------------------------------------------------------
# XSS

def test_xss(t, st):
    q = urllib.parse.quote(XSS_USER)
    pages = {
        "customer page": get(st, "/admin/customer?user=" + q),
        "search by prefix": get(st, "/admin/search?q=" + urllib.parse.quote(XSS_USER[:9])),
        "search term reflected": get(st, "/admin/search?q=" + urllib.parse.quote(
            '"><script>alert(3)</script>')),
        "confirm page": get(st, f"/admin/confirm?action=cancel_now&user={q}&target=sub_xss"),
        "reset confirm": get(st, f"/admin/confirm?action=resync&user={q}"),
    }
    for name, r in pages.items():
        t.eq(r.status, 200, f"{name}: 200")
        safe_markup(t, r.text, name)
        t.ok("<script>" not in r.text and "<img" not in r.text and "<svg onload" not in r.text,
             f"{name}: no raw markup from data")
    cust = pages["customer page"].text
    t.ok("x&lt;script&gt;alert(&quot;u&quot;)&lt;/script&gt;&#39;&quot;&amp;amp;" in cust,
         "the user id shows as text")
    t.ok("&lt;img src=x onerror=alert(&#39;m&#39;)&gt;" in cust, "Stripe metadata shows as text")
    t.ok("&quot;&gt;&lt;svg onload=alert(1)&gt;@evil.test" in cust, "the e-mail shows as text")
    p = Page(cust)
    t.ok(XSS_USER in p.all_text() and XSS_NOTE in p.all_text(),
         "and reads back exactly as stored")
    hrefs = [a["href"] for tag, a in p.tags if "href" in a]
    t.ok(all(urllib.parse.parse_qs(urllib.parse.urlsplit(h).query).get("user", [XSS_USER])[0]
             == XSS_USER for h in hrefs), "links carry the user id percent-encoded, intact")
    conf = Page(pages["confirm page"].text)
    t.eq(conf.inputs.get("confirm", {}).get("user"), XSS_USER,
         "the confirmation's hidden field holds the user id intact")
    t.ok("&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in pages["search term reflected"].text,
         "the search term is escaped in the page and in the input's value")
    r = get(st, "/admin/customer?user=bob")
    safe_markup(t, r.text, "notification errors")
    t.ok("&lt;b onmouseover=alert(2)&gt;" in r.text, "an SMTP error shows as text")
    r = get(st, "/admin/")
    safe_markup(t, r.text, "dashboard after the XSS data")


# ---------------------------------------------------------------------------
# CSRF and the form rules

def confirm(st, action, user, target=None, who="operator"):
    q = {"action": action, "user": user}
    if target is not None:
        q["target"] = target
    r = get(st, "/admin/confirm?" + urllib.parse.urlencode(q), who)
    if r.status != 200:
        raise RuntimeError(f"confirm {q}: {r.status} {r.text[-400:]}")
    return Page(r.text).inputs["confirm"]


def post(st, fields, who="operator", org="self", referer=None, reason="checked with the customer"):
    f = dict(fields)
    if reason is not None:
        f["reason"] = reason
    h = {"Authorization": basic(who), "Content-Type": "application/x-www-form-urlencoded"}
    if org == "self":
        h["Origin"] = origin(st)
    elif org is not None:
        h["Origin"] = org
    if referer is not None:
        h["Referer"] = referer
    return st.http("POST", "/admin/action", headers=h, body=urllib.parse.urlencode(f).encode())


def audit_count(st):
    return int(st.psql_one("SELECT count(*) FROM admin_audit"))


def usage_of(st, user, typ):
    return st.psql_one(f"SELECT amount FROM usage_tracking WHERE user_id = '{user}' AND"
                       f" usage_type = '{typ}' AND period_start = usage_period_start()")


def test_csrf(t, st):
    before = audit_count(st)
    form = confirm(st, "reset_usage", "bob", "pain_entry")
    t.ok(form.get("token") and form.get("action") == "reset_usage", "the confirmation has a token")
    no_token = {k: v for k, v in form.items() if k != "token"}
    r = post(st, no_token)
    t.eq(r.status, 403, "no token: 403")
    r = post(st, dict(form, token="1.2.3"))
    t.eq(r.status, 403, "a made-up token: 403")
    r = post(st, form, org="https://evil.example")
    t.eq(r.status, 403, "another Origin: 403")
    t.ok("not sent from the console" in r.text, "saying why")
    r = post(st, form, org="null")
    t.eq(r.status, 403, "Origin: null: 403")
    r = post(st, form, org=None)
    t.eq(r.status, 403, "neither Origin nor Referer: 403")
    r = post(st, form, org=None, referer="https://evil.example/admin/confirm")
    t.eq(r.status, 403, "a Referer from another site: 403")
    r = post(st, form, org=None, referer=f"http://127.0.0.1:{st.port}.evil.example/")
    t.eq(r.status, 403, "a Referer that only starts like ours: 403")
    alice_form = confirm(st, "reset_usage", "bob", "pain_entry", who="alice")
    r = post(st, alice_form)
    t.eq(r.status, 403, "alice's form sent by operator: 403")
    other = confirm(st, "reset_usage", "bob", "export")
    r = post(st, dict(other, target="pain_entry"))
    t.eq(r.status, 403, "a token for another target: 403")
    r = post(st, dict(form, action="cancel_now", target="sub_bob"))
    t.eq(r.status, 403, "a token for another action: 403")
    r = post(st, form, reason=None)
    t.eq(r.status, 400, "no reason: 400")
    r = post(st, form, reason="   ")
    t.eq(r.status, 400, "a blank reason: 400")
    r = post(st, form, reason="x" * 501)
    t.eq(r.status, 400, "a reason over 500 bytes: 400")
    r = st.http("POST", "/admin/action", headers={"Authorization": basic(), "Origin": origin(st),
                                                  "Content-Type": "application/json"},
                body=json.dumps(form))
    t.eq(r.status, 400, "a JSON body instead of a form: 400")
    t.eq((audit_count(st), usage_of(st, "bob", "pain_entry")), (before, "7"),
         "none of them changed anything or wrote an audit row")

    r = post(st, form, org=None, referer=f"http://127.0.0.1:{st.port}/admin/confirm?x=1")
    t.eq(r.status, 200, "a same-site Referer without Origin: accepted")
    t.eq(usage_of(st, "bob", "pain_entry"), "0", "the counter was reset")
    r = post(st, form)
    t.eq(r.status, 200, "the same form again: answered")
    t.ok("already submitted" in r.text, "as already done")
    t.eq(audit_count(st), before + 1, "one audit row for the form sent twice")


# ---------------------------------------------------------------------------
# The actions end to end

def audit_last(st):
    rows = st.psql("SELECT operator, action, user_id, stripe_subscription_id, usage_type, reason,"
                   " result, detail::text, created_at <= now(), finished_at IS NOT NULL"
                   " FROM admin_audit ORDER BY id DESC LIMIT 1")
    r = rows[0]
    return {"operator": r[0], "action": r[1], "user": r[2], "sub": r[3], "type": r[4],
            "reason": r[5], "result": r[6], "detail": json.loads(r[7]) if r[7] else None,
            "finished": r[9] == "t"}


def sub_row(st, sid):
    r = st.psql("SELECT status, cancel_at_period_end, quantity, user_id FROM subscriptions"
                f" WHERE stripe_subscription_id = '{sid}'")
    return tuple(r[0]) if r else None


def stripe_calls(st, method, path):
    return [q for q in st.stripe.requests() if q.get("method") == method and
            q.get("path", "").split("?")[0] == path]


def test_actions(t, st):
    # Cancel at period end.
    form = confirm(st, "cancel_at_period_end", "ada", "sub_ada")
    r = post(st, form, reason="customer asked by mail")
    t.eq(r.status, 200, "cancel at period end: 200")
    t.ok("cancels at the end of its period" in r.text, "the page says what happened")
    t.eq(sub_row(st, "sub_ada")[:2], ("active", "t"), "database: still active, cancels at period end")
    t.eq(fake_sub(st, "sub_ada")["cancel_at_period_end"], True, "Stripe: cancel_at_period_end")
    calls = stripe_calls(st, "POST", "/v1/subscriptions/sub_ada")
    t.eq(len(calls), 1, "one Stripe call")
    t.ok((calls[0].get("headers") or {}).get("Idempotency-Key", "admin-").startswith("admin-")
         if calls else False, "with an Idempotency-Key from the form")
    a = audit_last(st)
    t.eq((a["operator"], a["action"], a["user"], a["sub"], a["reason"], a["result"], a["finished"]),
         ("operator", "cancel_at_period_end", "ada", "sub_ada", "customer asked by mail", "done",
          True), "audit: who, what, on what, why, done")
    t.eq((a["detail"] or {}).get("cancel_at_period_end"), True, "audit detail: Stripe's answer")
    t.eq(st.psql_one("SELECT last_event_id FROM subscriptions WHERE stripe_subscription_id = 'sub_ada'"),
         "admin:" + st.psql_one("SELECT max(id) FROM admin_audit"),
         "the row says the console changed it last")
    # An event from before the action, delivered late (event mode): ignored.
    old = dict(fake_sub(st, "sub_ada"), cancel_at_period_end=False)
    deliver(st, old, typ="customer.subscription.updated", created=NOW - 60, evid="evt_adm_late")
    t.eq(sub_row(st, "sub_ada")[1], "t", "an older event arriving later does not undo it")
    r = get(st, "/admin/customer?user=ada")
    t.ok("action=resume" in r.text and "action=cancel_at_period_end" not in r.text,
         "the customer page now offers resume")
    t.ok("customer asked by mail" in r.text, "and lists the action with its reason")

    # Nothing to do twice.
    form = confirm(st, "cancel_at_period_end", "ada", "sub_ada")
    r = post(st, form)
    t.eq(r.status, 409, "cancel at period end again: 409")
    t.eq((audit_last(st)["result"], audit_last(st)["detail"].get("error")), ("failed", "no_change"),
         "audit: failed, no_change")

    # Resume.
    r = post(st, confirm(st, "resume", "ada", "sub_ada"), reason="changed their mind")
    t.eq(r.status, 200, "resume: 200")
    t.eq(sub_row(st, "sub_ada")[:2], ("active", "f"), "database: renews again")
    t.eq(fake_sub(st, "sub_ada")["cancel_at_period_end"], False, "Stripe: renews again")
    t.eq((audit_last(st)["action"], audit_last(st)["result"]), ("resume", "done"), "audit: resume")

    # Cancel now.
    mrr_before = int(st.psql_one("SELECT coalesce(mrr, 0) FROM mrr_now WHERE currency = 'usd'"))
    r = post(st, confirm(st, "cancel_now", "bob", "sub_bob"), reason="fraud")
    t.eq(r.status, 200, "cancel now: 200")
    t.eq(sub_row(st, "sub_bob")[0], "canceled", "database: canceled")
    t.eq(fake_sub(st, "sub_bob")["status"], "canceled", "Stripe: canceled")
    t.eq(len(stripe_calls(st, "DELETE", "/v1/subscriptions/sub_bob")), 1, "one DELETE")
    t.eq(st.psql_one("SELECT kind FROM mrr_movements WHERE stripe_subscription_id = 'sub_bob'"
                     " ORDER BY id DESC LIMIT 1"), "churn", "the ledger has the churn")
    t.eq(int(st.psql_one("SELECT coalesce(mrr, 0) FROM mrr_now WHERE currency = 'usd'")),
         mrr_before - 900, "MRR fell by bob's 9.00")
    a = audit_last(st)
    t.eq((a["action"], a["result"], a["detail"].get("status")), ("cancel_now", "done", "canceled"),
         "audit: cancel_now done")
    t.eq(st.psql_one("SELECT user_effective_tier('bob')"), "free", "bob is on free now")
    r = get(st, f"/admin/confirm?action=cancel_now&user=bob&target=sub_ada")
    t.eq(r.status, 404, "confirming an action on another user's subscription: 404")

    # Re-sync: Stripe has changed behind our back, and has one more subscription.
    obj = fake_sub(st, "sub_syn")
    obj["items"]["data"][0]["quantity"] = 3
    st.stripe.put_subscription("sub_syn", obj)
    st.stripe.create_subscriptions(id="sub_syn2", customer="cus_syn", price="price_pro_monthly",
                                   status="active", created=NOW - 3 * DAY)
    t.eq(sub_row(st, "sub_syn2"), None, "before: the database does not know sub_syn2")
    r = post(st, confirm(st, "resync", "syn"), reason="webhooks were down")
    t.eq(r.status, 200, "re-sync: 200")
    t.ok("Re-synced 2 subscription(s) of cus_syn" in r.text, "the page says what it stored", r.text[-600:])
    t.eq(sub_row(st, "sub_syn")[2], "3", "the changed quantity is stored")
    t.eq(sub_row(st, "sub_syn2"), ("active", "f", "1", "syn"),
         "the new subscription is stored, the user's")
    t.eq(len(stripe_calls(st, "GET", "/v1/subscriptions")), 1, "one list call")
    a = audit_last(st)
    t.eq((a["action"], a["result"], sorted(a["detail"].get("stored", []))),
         ("resync", "done", ["sub_syn", "sub_syn2"]), "audit: resync with what it stored")
    r = get(st, "/admin/confirm?action=resync&user=nocustomer")
    t.eq(r.status, 404, "re-sync of a user without a Stripe customer: 404")

    # Reset a usage counter.
    t.eq(usage_of(st, "ada", "pain_entry"), "5", "before: 5 pain entries")
    r = post(st, confirm(st, "reset_usage", "ada", "pain_entry"), reason="bug in the app")
    t.eq(r.status, 200, "reset usage: 200")
    t.eq(usage_of(st, "ada", "pain_entry"), "0", "the counter is 0")
    t.eq(usage_of(st, "ada", "export"), "2", "the other types are untouched")
    a = audit_last(st)
    t.eq((a["action"], a["type"], a["result"], a["detail"].get("before")),
         ("reset_usage", "pain_entry", "done", 5), "audit: reset of pain_entry from 5")
    r = st.http("POST", "/api/usage", headers={"Authorization": "Bearer " +
                                               DEFAULT_SETTINGS["USAGE_API_KEY"]},
                body={"userId": "ada", "usageType": "pain_entry", "amount": 1})
    t.eq((r.json() or {}).get("used"), 1, "usage counts on from 0")

    # Stripe failing: nothing changes, the attempt is on record.
    st.stripe.fail(mode="500", path="/v1/subscriptions/sub_fay", count=5)
    r = post(st, confirm(st, "cancel_now", "fay", "sub_fay"), reason="test")
    t.ok(r.status in (502, 503), f"Stripe down: {r.status}")
    t.eq(sub_row(st, "sub_fay")[0], "active", "database unchanged")
    t.eq(fake_sub(st, "sub_fay")["status"], "active", "Stripe unchanged")
    t.eq((audit_last(st)["action"], audit_last(st)["result"]), ("cancel_now", "failed"),
         "audit: the attempt, failed")
    t.ok("unchanged" in r.text and "could yet apply" in r.text,
         "the page says Stripe has it unchanged, and that a try under way could yet apply")


def new_customer(st, user, sid, **spec):
    """A customer and subscription at Stripe, stored by its webhook event."""
    spec.setdefault("price", "price_basic_monthly")
    spec.setdefault("status", "active")
    st.stripe.create_subscriptions(id=sid, customer="cus_" + user, created=NOW - 10 * DAY,
                                   metadata={"userId": user}, **spec)
    deliver(st, fake_sub(st, sid), created=NOW - 10 * DAY)


def test_stripe_outcomes(t, st):
    """What Stripe really did decides the row and the audit, not the call's answer."""
    # Cancel now whose answer is lost: Stripe cancels, the connection is reset,
    # and the retried DELETE finds nothing (Stripe answers a canceled
    # subscription as an unknown one).
    new_customer(st, "lost", "sub_lost")
    st.stripe.fail(mode="reset_after", path="/v1/subscriptions/sub_lost", method="DELETE")
    r = post(st, confirm(st, "cancel_now", "lost", "sub_lost"), reason="lost answer")
    t.eq(fake_sub(st, "sub_lost")["status"], "canceled", "lost answer: Stripe canceled it")
    t.eq(r.status, 200, "lost answer: 200, the cancellation took place")
    t.eq(sub_row(st, "sub_lost")[0], "canceled", "lost answer: the database says canceled")
    a = audit_last(st)
    t.eq((a["action"], a["result"], (a["detail"] or {}).get("status")),
         ("cancel_now", "done", "canceled"), "lost answer: audit done, canceled")
    t.ok("nothing changed" not in r.text and "nothing changed" not in
         (a["detail"] or {}).get("summary", ""), "lost answer: nobody is told nothing changed")

    # Cancel at period end whose every answer is lost or refused: Stripe
    # applied the first try, the retries get 500s.
    new_customer(st, "gone5", "sub_gone5")
    st.stripe.fail(mode="reset_after", path="/v1/subscriptions/sub_gone5", method="POST")
    st.stripe.fail(mode="500", path="/v1/subscriptions/sub_gone5", method="POST", count=10)
    r = post(st, confirm(st, "cancel_at_period_end", "gone5", "sub_gone5"), reason="5xx")
    t.eq(fake_sub(st, "sub_gone5")["cancel_at_period_end"], True,
         "applied, then 500s: Stripe cancels at period end")
    t.eq(sub_row(st, "sub_gone5")[:2], ("active", "t"),
         "applied, then 500s: so does the database")
    a = audit_last(st)
    t.eq((a["result"], (a["detail"] or {}).get("cancel_at_period_end")), ("done", True),
         "applied, then 500s: audit done, with Stripe's state")

    # Stripe refuses because the subscription changed meanwhile: the customer
    # canceled it at Stripe and we missed the event.
    new_customer(st, "moved", "sub_moved", cancel_at_period_end=True)
    t.eq(sub_row(st, "sub_moved")[:2], ("active", "t"), "before: active, cancels at period end")
    obj = fake_sub(st, "sub_moved")
    obj.update(status="canceled", ended_at=NOW, canceled_at=NOW)
    st.stripe.put_subscription("sub_moved", obj)
    n = len(st.stripe.requests())
    r = post(st, confirm(st, "resume", "moved", "sub_moved"), reason="changed state")
    t.eq(r.status, 409, "refused for a changed subscription: 409 (nothing to resume)")
    t.eq(sub_row(st, "sub_moved")[0], "canceled", "refused: Stripe's state is stored now")
    a = audit_last(st)
    t.eq((a["result"], (a["detail"] or {}).get("error"), (a["detail"] or {}).get("status")),
         ("failed", "no_change", "canceled"), "refused: audit failed, with the state found")
    t.eq(len([q for q in st.stripe.requests()[n:] if q.get("method") == "POST"]), 1,
         "refused: one POST, not retried")

    # A try that outlasts every timeout: the retries find its key in flight
    # (409), Stripe has it unchanged when read back, and then applies it.
    new_customer(st, "late", "sub_late")
    st.stripe.fail(mode="slow", delay=10, path="/v1/subscriptions/sub_late", method="POST")
    r = post(st, confirm(st, "cancel_at_period_end", "late", "sub_late"), reason="slow")
    t.eq(r.status, 503, "a try longer than every timeout: 503")
    t.ok("nothing changed" not in r.text and "could yet apply" in r.text,
         "...not 'nothing changed': the try under way could yet apply")
    wait_until("Stripe applying the slow try",
               lambda: fake_sub(st, "sub_late")["cancel_at_period_end"], seconds=15)
    t.ok("nothing changed" not in (audit_last(st)["detail"] or {}).get("summary", ""),
         "...and Stripe did apply it: the audit never said nothing changed")

    # Stripe down for every call: nothing is known, and nobody is told nothing changed.
    new_customer(st, "dark", "sub_dark")
    st.stripe.fail(mode="reset_after", path="/v1/subscriptions/sub_dark", method="POST")
    st.stripe.fail(mode="503", path="/v1/subscriptions/sub_dark", count=20)
    r = post(st, confirm(st, "cancel_at_period_end", "dark", "sub_dark"), reason="dark")
    t.eq(r.status, 503, "no answer at all: 503")
    t.eq(sub_row(st, "sub_dark")[:2], ("active", "f"), "no answer: the database is unchanged")
    a = audit_last(st)
    t.eq(a["result"], "failed", "no answer: audit failed")
    t.ok("not known" in (a["detail"] or {}).get("summary", "") and "not known" in r.text
         and "nothing changed" not in r.text,
         "no answer: the page and audit say the outcome is not known", a)


def armed(st, path):
    """Failure rules of the fake still waiting for a call to path."""
    return [r for r in st.stripe.call("GET", "/_fake/fail") or [] if r.get("path") == path]


def test_resubmits(t, st):
    """A form posted again: while the first is at Stripe, after it failed."""
    # A double click: the second post arrives while the first waits on Stripe.
    new_customer(st, "dbl", "sub_dbl")
    form = confirm(st, "cancel_at_period_end", "dbl", "sub_dbl")
    st.stripe.fail(mode="slow", delay=2, path="/v1/subscriptions/sub_dbl", method="POST")
    first = {}
    th = threading.Thread(target=lambda: first.update(r=post(st, form, reason="double click")))
    th.start()
    wait_until("the first post at Stripe", lambda: not armed(st, "/v1/subscriptions/sub_dbl"))
    r = post(st, form, reason="double click")
    th.join()
    t.eq(first["r"].status, 200, "double click: the first post acts")
    t.eq(r.status, 409, "double click: the second, while the first is at Stripe, is 409")
    t.ok("still being carried out" in r.text, "...saying the first is still being carried out")
    t.eq(len(stripe_calls(st, "POST", "/v1/subscriptions/sub_dbl")), 1, "double click: one Stripe call")
    t.eq(st.psql("SELECT result FROM admin_audit WHERE stripe_subscription_id = 'sub_dbl'"),
         [["done"]], "double click: one audit row, done")
    r = post(st, form, reason="double click")
    t.eq(r.status, 200, "the same form after it was done: 200, as done")
    t.ok("already submitted" in r.text and 'class="msg ok"' in r.text, "...saying so")

    # A failed form posted again: answered as it failed, not as a success, and not tried again.
    new_customer(st, "rep", "sub_rep")
    st.stripe.fail(mode="503", path="/v1/subscriptions/sub_rep", count=20)
    form = confirm(st, "cancel_now", "rep", "sub_rep")
    r = post(st, form, reason="down")
    t.eq(r.status, 503, "Stripe down: 503")
    n = len(st.stripe.requests())
    r = post(st, form, reason="down")
    t.eq(r.status, 503, "the failed form posted again: 503 as then, not 200")
    t.ok("already submitted" in r.text and 'class="msg err"' in r.text,
         "...saying it was already submitted, as an error")
    t.eq(len(st.stripe.requests()), n, "...and not sent to Stripe again")
    t.eq(int(st.psql_one("SELECT count(*) FROM admin_audit WHERE stripe_subscription_id = 'sub_rep'")),
         1, "one audit row for the failed form")


def test_layouts(t, variant):
    kw = {"htaccess": True} if variant == "htaccess" else {"apache_mode": variant}
    with Stack(SETTINGS, operators=OPERATORS, **kw) as st:
        seed(st)
        t.eq(st.http("GET", "/admin/").status, 401, f"{variant}: no credentials: 401")
        t.eq(get(st, "/admin/", "mallory").status, 403, f"{variant}: not in ADMIN_USERS: 403")
        t.eq(get(st, "/admin/").status, 200, f"{variant}: dashboard")
        t.eq(get(st, "/admin").headers.get("location"), "admin/", f"{variant}: /admin redirects")
        t.eq(get(st, "/admin/customer?user=ada").status, 200, f"{variant}: customer page")
        t.eq(get(st, "/admin/search?q=ada").status, 200, f"{variant}: search")
        r = st.http("GET", "/api/admin/analytics", headers={"Authorization": jwt("operator")})
        t.eq(r.status, 200, f"{variant}: API with a JWT")
        t.eq(st.http("GET", "/api/admin/analytics").status, 401, f"{variant}: API without: 401")
        r = post(st, confirm(st, "cancel_at_period_end", "ada", "sub_ada"))
        t.eq((r.status, sub_row(st, "sub_ada")[1]), (200, "t"), f"{variant}: an action end to end")
        r = post(st, confirm(st, "reset_usage", "ada", "export"), org="https://evil.example")
        t.eq(r.status, 403, f"{variant}: another Origin: 403")


def test_rate_limit(t):
    """The console is limited per operator (issue 13), like the other endpoints."""
    with Stack(dict(SETTINGS, RATE_LIMIT_ADMIN="2/60s"), operators=OPERATORS) as st:
        got = [get(st, "/admin/").status for _ in range(3)]
        t.eq(got, [200, 200, 429], "RATE_LIMIT_ADMIN=2/60s: the operator's third page is 429")
        r = st.http("GET", "/api/admin/analytics", headers={"Authorization": jwt("operator")})
        t.ok(r.status == 429 and (r.json() or {}).get("error", {}).get("code") == "rate_limited"
             and r.headers.get("retry-after") is not None,
             "...and the API for the same operator: 429 rate_limited with Retry-After", r)


def main():
    t = Tap()
    with t.guard("rate limit"):
        test_rate_limit(t)
    with Stack(SETTINGS, operators=OPERATORS) as st:
        with t.guard("seed"):
            seed(st)
        for fn in (test_access, test_api, test_pages, test_xss, test_csrf, test_actions,
                   test_stripe_outcomes, test_resubmits):
            with t.guard(fn.__name__):
                fn(t, st)
    for variant in ("htaccess", "fcgid", "proxy_fcgi"):
        with t.guard("layout " + variant):
            test_layouts(t, variant)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
