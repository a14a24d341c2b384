#!/usr/bin/env python3
"""TAP test of tests/fake_stripe.py: starts it on port 0, exercises the API and
the control API, always stops it.  Python 3 standard library only."""
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_stripe.py")
DATA = os.path.join(HERE, "data")
PARAMS = os.path.join(DATA, "stripe_params.json")
KEY = "sk_test_51FakeKeyForTestsOnly0000000000abcd"
VERSION = "2026-07-29.dahlia"
PRO_MONTH = "price_1S0lRLkdIwHu7ix8acRYSi4M"    # 15.00 USD / month (data/events)
TEAM_MONTH = "price_1SDF8LkdIwHu7ixkWCBX1Kpe"   # 49.00 USD / month
TEAM_YEAR = "price_1SZUaLkdIwHu7ixLJ4d8jOCs"    # 490.00 USD / year
DAY = 86400

# Exactly the parameters the C client (cgi-bin/create-checkout-session.c) sends.
CLIENT_CHECKOUT = [
    ("mode", "subscription"),
    ("line_items[0][price]", "price_1S0lRLkdIwHu7ix8acRYSi4M"),
    ("line_items[0][quantity]", "1"),
    ("success_url", "https://app.example.test/ok?session_id={CHECKOUT_SESSION_ID}"),
    ("cancel_url", "https://app.example.test/cancel"),
    ("customer", "cus_TQd8Kf2LmW7xYz"),
    ("client_reference_id", "42"),
    ("metadata[userId]", "42"),
    ("metadata[tier]", "pro"),
    ("metadata[interval]", "month"),
    ("subscription_data[metadata][userId]", "42"),
    ("subscription_data[metadata][tier]", "pro"),
    ("subscription_data[metadata][interval]", "month"),
    ("subscription_data[trial_period_days]", "14"),
    ("allow_promotion_codes", "true"),
    ("billing_address_collection", "required"),
]

results = []
PORT = None


def form(pairs, safe="[]"):
    """Encode like stripe-node: brackets left as they are, values percent-encoded."""
    return urllib.parse.urlencode(pairs, safe=safe)


class Resp:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.raw = raw
        try:
            self.json = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            self.json = None

    def err(self, field):
        return ((self.json or {}).get("error") or {}).get(field)


def request(method, path, body=None, headers=None, key=KEY, conn=None, timeout=10):
    h = {}
    if key is not None:
        h["Authorization"] = "Bearer " + key
    if method in ("POST", "PUT") and not path.startswith("/_fake"):
        h["Content-Type"] = "application/x-www-form-urlencoded"
        h["Stripe-Version"] = VERSION
    h.update(headers or {})
    if isinstance(body, list):
        body = form(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        if conn is None:
            c.close()


def api_get(path, **kw):
    return request("GET", path, **kw)


def api_post(path, pairs, idem=None, **kw):
    headers = dict(kw.pop("headers", {}) or {})
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return request("POST", path, pairs, headers=headers, **kw)


def control(method, path, doc=None):
    body = json.dumps(doc) if doc is not None else None
    r = request(method, path, body, key=None,
                headers={"Content-Type": "application/json"} if body else None)
    return r


def fail_rule(**rule):
    r = control("POST", "/_fake/fail", rule)
    assert r.status == 200, (r.status, r.raw)


def logged():
    r = control("GET", "/_fake/requests")
    assert r.status == 200
    return r.json


def check(name):
    def deco(fn):
        results.append((name, fn))
        return fn
    return deco


def eq(a, b, what=""):
    assert a == b, "%s: got %r, expected %r" % (what, a, b)


# ---------------------------------------------------------------------------


@check("every parameter the C client sends is in Stripe's OpenAPI definitions")
def _():
    with open(PARAMS, encoding="utf-8") as f:
        tree = json.load(f)["operations"]["POST /v1/checkout/sessions"]
    for key, _v in CLIENT_CHECKOUT:
        segs = [key.split("[")[0]] + re.findall(r"\[([^\]]*)\]", key)
        node = tree
        for seg in segs:
            assert isinstance(node, dict), "%s: %r is below a scalar" % (key, seg)
            if "a" in node and seg.isdigit():
                node = node["a"]
            elif seg in node.get("p", {}):
                node = node["p"][seg]
            elif "m" in node:
                node = node["m"]
            else:
                raise AssertionError("%s not in the OpenAPI subset" % key)
    for op in ("POST /v1/customers", "GET /v1/customers/search", "POST /v1/checkout/sessions",
               "GET /v1/checkout/sessions/{session}", "POST /v1/billing_portal/sessions",
               "GET /v1/subscriptions/{subscription_exposed_id}"):
        with open(PARAMS, encoding="utf-8") as f:
            assert op in json.load(f)["operations"], op


@check("missing API key -> 401 invalid_request_error")
def _():
    r = api_post("/v1/customers", [("email", "a@b.c")], key=None)
    eq(r.status, 401, "status")
    eq(r.err("type"), "invalid_request_error", "type")
    assert "API key" in r.err("message")


@check("bad API key -> 401 and the key is masked in the message")
def _():
    bad = "pk_test_ThisIsAPublishableKeyNotSecret1234"
    r = api_post("/v1/customers", [("email", "a@b.c")], key=bad)
    eq(r.status, 401, "status")
    assert r.err("message").startswith("Invalid API Key provided: "), r.err("message")
    assert bad not in r.raw.decode(), "full key echoed"
    assert "NotSecret" not in r.raw.decode(), "key body echoed"
    for good in ("sk_live_abc", "rk_test_abc"):
        eq(api_get("/v1/subscriptions/sub_x", key=good).status, 404, good)


@check("POST /v1/customers -> customer object")
def _():
    r = api_post("/v1/customers", [("email", "user42@example.test"), ("name", "User 42"),
                                   ("metadata[userId]", "42")])
    eq(r.status, 200, "status")
    c = r.json
    assert re.match(r"^cus_[A-Za-z0-9]{14}$", c["id"]), c["id"]
    eq(c["object"], "customer", "object")
    eq(c["email"], "user42@example.test", "email")
    eq(c["metadata"], {"userId": "42"}, "metadata")
    eq(c["livemode"], False, "livemode")
    for k in ("created", "invoice_settings", "preferred_locales", "tax_exempt", "balance"):
        assert k in c, k
    assert re.match(r"^req_", r.headers.get("request-id", "")), r.headers
    eq(r.headers.get("content-type"), "application/json", "content-type")
    eq(r.headers.get("stripe-version"), VERSION, "stripe-version")
    g = api_get("/v1/customers/" + c["id"])
    eq((g.status, g.json), (200, c), "GET customer")
    m = api_get("/v1/customers/cus_nope")
    eq((m.status, m.err("code"), m.err("type")), (404, "resource_missing",
                                                 "invalid_request_error"), "unknown customer")


@check("GET /v1/customers/search by metadata and by email")
def _():
    api_post("/v1/customers", [("email", "other@example.test"), ("metadata[userId]", "7")])
    q = urllib.parse.quote("metadata['userId']:'42'")
    r = api_get("/v1/customers/search?query=" + q)
    eq(r.status, 200, "status")
    eq(r.json["object"], "search_result", "object")
    eq([c["metadata"]["userId"] for c in r.json["data"]], ["42"], "hits")
    r = api_get("/v1/customers/search?" + urllib.parse.urlencode(
        {"query": "email:'OTHER@example.test'"}))
    eq([c["email"] for c in r.json["data"]], ["other@example.test"], "email hit")
    r = api_get("/v1/customers/search?" + urllib.parse.urlencode(
        {"query": "metadata['userId']:'999'"}))
    eq(r.json["data"], [], "no hit")
    r = api_get("/v1/customers/search")
    eq((r.status, r.err("code"), r.err("param")), (400, "parameter_missing", "query"), "no q")
    r = api_get("/v1/customers/search?query=x&bogus=1")
    eq((r.status, r.err("code")), (400, "parameter_unknown"), "unknown query param")


@check("checkout session with exactly the C client's parameters -> 200")
def _():
    r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem="test-client-1")
    eq(r.status, 200, "status: %s" % r.raw[:300])
    s = r.json
    assert re.match(r"^cs_test_[A-Za-z0-9]+$", s["id"]), s["id"]
    eq(s["object"], "checkout.session", "object")
    eq(s["url"], "https://checkout.stripe.com/c/pay/" + s["id"], "url")
    eq(s["mode"], "subscription", "mode")
    eq(s["customer"], "cus_TQd8Kf2LmW7xYz", "customer")
    eq(s["client_reference_id"], "42", "client_reference_id")
    eq(s["metadata"], {"userId": "42", "tier": "pro", "interval": "month"}, "metadata")
    eq(s["success_url"], CLIENT_CHECKOUT[3][1], "success_url")
    eq(s["cancel_url"], "https://app.example.test/cancel", "cancel_url")
    eq(s["status"], "open", "status")
    eq(s["subscription"], None, "subscription")
    eq(s["allow_promotion_codes"], True, "allow_promotion_codes")
    eq(s["billing_address_collection"], "required", "billing_address_collection")
    g = api_get("/v1/checkout/sessions/" + s["id"])
    eq((g.status, g.json), (200, s), "GET session")
    g = api_get("/v1/checkout/sessions/%s?expand[]=line_items" % s["id"])
    li = g.json["line_items"]["data"]
    eq([(x["price"]["id"], x["quantity"]) for x in li],
       [("price_1S0lRLkdIwHu7ix8acRYSi4M", 1)], "expanded line_items")
    m = api_get("/v1/checkout/sessions/cs_test_nope")
    eq((m.status, m.err("code")), (404, "resource_missing"), "unknown session")


@check("percent-encoded brackets are accepted")
def _():
    r = api_post("/v1/checkout/sessions", form(CLIENT_CHECKOUT, safe=""))
    eq(r.status, 200, "status: %s" % r.raw[:300])
    eq(r.json["metadata"]["tier"], "pro", "metadata")


@check("unknown parameters -> 400 parameter_unknown naming the parameter")
def _():
    for name in ("subscription_data[bogus]", "bogus", "line_items[0][bogus]",
                 "metadata[a][b]", "customer[x]", "ui_mode"):
        r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT + [(name, "x")])
        eq((r.status, r.err("type"), r.err("code"), r.err("param")),
           (400, "invalid_request_error", "parameter_unknown", name), name)
        eq(r.err("message"), "Received unknown parameter: " + name, "message")


@check("checkout validation rules catch client bugs")
def _():
    def without(*names):
        return [(k, v) for k, v in CLIENT_CHECKOUT if k not in names]

    cases = [
        (without("mode"), "parameter_missing", "mode"),
        (without("success_url"), "parameter_missing", "success_url"),
        (without("line_items[0][price]", "line_items[0][quantity]"), "parameter_missing",
         "line_items"),
        (without("line_items[0][price]"), "parameter_missing", "line_items[0][price]"),
        (CLIENT_CHECKOUT + [("customer_email", "a@b.c")], "parameters_exclusive",
         "customer_email"),
        (without("subscription_data[trial_period_days]") +
         [("subscription_data[trial_period_days]", "0")], None,
         "subscription_data[trial_period_days]"),
        (without("subscription_data[trial_period_days]") +
         [("subscription_data[trial_period_days]", "14d")], "parameter_invalid_integer",
         "subscription_data[trial_period_days]"),
        (without("allow_promotion_codes") + [("allow_promotion_codes", "1")], None,
         "allow_promotion_codes"),
        (without("customer") + [("customer", "")], "parameter_invalid_empty", "customer"),
        (without("mode") + [("mode", "subscriptions")], None, "mode"),
        (CLIENT_CHECKOUT + [("line_items[0][price_data][unit_amount]", "1500")],
         "parameter_missing", "line_items[0][price_data][currency]"),
    ]
    for pairs, code, param in cases:
        r = api_post("/v1/checkout/sessions", pairs)
        eq((r.status, r.err("type"), r.err("code"), r.err("param")),
           (400, "invalid_request_error", code, param), param)
    r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT + [("metadata[empty]", "")])
    eq(r.status, 200, "empty metadata value")


def new_sub(**spec):
    """A subscription made by the control API (customer created if unknown)."""
    r = control("POST", "/_fake/subscriptions", spec)
    assert r.status == 200, (r.status, r.raw[:300])
    return r.json["data"][0]


def new_customer():
    r = api_post("/v1/customers", [("email", "portal@example.test")])
    eq(r.status, 200, "customer")
    return r.json["id"]


def objects():
    r = control("GET", "/_fake/objects")
    eq(r.status, 200, "objects")
    return r.json


def events_of(obj_id, etype=None):
    """Events the fake recorded about an object, oldest first."""
    return [e for e in objects()["events"] if e["data"]["object"].get("id") == obj_id
            and (etype is None or e["type"] == etype)]


def err4(r):
    return (r.status, r.err("type"), r.err("code"), r.err("param"))


@check("POST /v1/billing_portal/sessions -> stored session with a portal url")
def _():
    cus = new_customer()
    r = api_post("/v1/billing_portal/sessions", [("customer", cus),
                                                 ("return_url", "https://app.example.test/"),
                                                 ("locale", "de")], idem="portal-1")
    eq(r.status, 200, "status: %s" % r.raw[:300])
    s = r.json
    eq((s["object"], s["customer"], s["return_url"], s["locale"], s["flow"]),
       ("billing_portal.session", cus, "https://app.example.test/", "de", None), "fields")
    assert re.match(r"^https://billing\.stripe\.com/p/session/test_[A-Za-z0-9]+$", s["url"]), \
        s["url"]
    assert re.match(r"^bps_[A-Za-z0-9]+$", s["id"]), s["id"]
    with open(os.path.join(DATA, "objects", "billing_portal.session.json"),
              encoding="utf-8") as f:
        eq(sorted(s), sorted(json.load(f)), "key set of Stripe's fixture")
    eq(objects()["billing_portal_sessions"][s["id"]], s, "stored for inspection")
    again = api_post("/v1/billing_portal/sessions", [("customer", cus),
                                                     ("return_url", "https://app.example.test/"),
                                                     ("locale", "de")], idem="portal-1")
    eq((again.json, again.headers.get("idempotent-replayed")), (s, "true"), "replay")
    eq(len(events_of(s["id"], "billing_portal.session.created")), 1, "one event")
    r = api_post("/v1/billing_portal/sessions", [("return_url", "https://a.test/")])
    eq(err4(r), (400, "invalid_request_error", "parameter_missing", "customer"), "no customer")
    r = api_post("/v1/billing_portal/sessions", [("customer", "cus_nope")])
    eq(err4(r), (400, "invalid_request_error", "resource_missing", "customer"), "unknown")
    eq(r.err("message"), "No such customer: 'cus_nope'", "message")
    r = api_post("/v1/billing_portal/sessions", [("customer", cus), ("locale", "xx")])
    eq(err4(r)[:2] + (r.err("param"),), (400, "invalid_request_error", "locale"), "locale")


@check("billing portal flow_data: flows, after_completion, validated like Stripe")
def _():
    cus = new_customer()
    sub = new_sub(customer=cus)
    other = new_sub()
    gone = new_sub(customer=cus, status="canceled")
    base = [("customer", cus), ("return_url", "https://app.example.test/account")]
    r = api_post("/v1/billing_portal/sessions", base + [
        ("flow_data[type]", "subscription_cancel"),
        ("flow_data[subscription_cancel][subscription]", sub["id"]),
        ("flow_data[after_completion][type]", "redirect"),
        ("flow_data[after_completion][redirect][return_url]", "https://app.example.test/bye")])
    eq(r.status, 200, "cancel flow: %s" % r.raw[:300])
    f = r.json["flow"]
    eq((f["type"], f["subscription_cancel"], f["subscription_update"]),
       ("subscription_cancel", {"retention": None, "subscription": sub["id"]}, None), "flow")
    eq(f["after_completion"], {"hosted_confirmation": None, "type": "redirect",
                               "redirect": {"return_url": "https://app.example.test/bye"}},
       "after_completion")
    r = api_post("/v1/billing_portal/sessions", base + [
        ("flow_data[type]", "subscription_update"),
        ("flow_data[subscription_update][subscription]", sub["id"])])
    eq((r.status, r.json["flow"]["subscription_update"], r.json["flow"]["after_completion"]
        ["type"]), (200, {"subscription": sub["id"]}, "portal_homepage"), "update flow")
    r = api_post("/v1/billing_portal/sessions", base + [
        ("flow_data[type]", "payment_method_update")])
    eq((r.status, r.json["flow"]["type"]), (200, "payment_method_update"), "pm flow")
    r = api_post("/v1/billing_portal/sessions", base + [
        ("flow_data[type]", "subscription_update_confirm"),
        ("flow_data[subscription_update_confirm][subscription]", sub["id"]),
        ("flow_data[subscription_update_confirm][items][0][id]", sub["items"]["data"][0]["id"]),
        ("flow_data[subscription_update_confirm][items][0][price]", TEAM_MONTH)])
    eq((r.status, r.json["flow"]["subscription_update_confirm"]["items"]),
       (200, [{"id": sub["items"]["data"][0]["id"], "price": TEAM_MONTH, "quantity": None}]),
       "update_confirm flow")
    cases = [
        ([("flow_data[type]", "subscription_cancel")],
         ("parameter_missing", "flow_data[subscription_cancel]")),
        ([("flow_data[type]", "subscription_cancel"),
          ("flow_data[subscription_cancel][subscription]", other["id"])],
         (None, "flow_data[subscription_cancel][subscription]")),
        ([("flow_data[type]", "subscription_update"),
          ("flow_data[subscription_update][subscription]", "sub_nope")],
         ("resource_missing", "flow_data[subscription_update][subscription]")),
        ([("flow_data[type]", "subscription_cancel"),
          ("flow_data[subscription_cancel][subscription]", gone["id"])],
         (None, "flow_data[subscription_cancel][subscription]")),
        ([("flow_data[type]", "subscription_cancel"),
          ("flow_data[subscription_update][subscription]", sub["id"])],
         (None, "flow_data[subscription_update]")),
        ([("flow_data[type]", "cancel")], (None, "flow_data[type]")),
        ([("flow_data[subscription_cancel][subscription]", sub["id"])],
         ("parameter_missing", "flow_data[type]")),
        ([("flow_data[type]", "payment_method_update"),
          ("flow_data[after_completion][type]", "redirect")],
         ("parameter_missing", "flow_data[after_completion][redirect]")),
        ([("flow_data[type]", "payment_method_update"),
          ("flow_data[after_completion][type]", "redirect"),
          ("flow_data[after_completion][redirect][url]", "https://a.test/")],
         ("parameter_unknown", "flow_data[after_completion][redirect][url]")),
        ([("flow_data[type]", "payment_method_update"),
          ("flow_data[after_completion][type]", "somewhere")],
         (None, "flow_data[after_completion][type]")),
        ([("flow_data[type]", "subscription_update_confirm"),
          ("flow_data[subscription_update_confirm][subscription]", sub["id"]),
          ("flow_data[subscription_update_confirm][items][0][id]", "si_nope")],
         ("resource_missing", "flow_data[subscription_update_confirm][items][0][id]")),
    ]
    for extra, want in cases:
        r = api_post("/v1/billing_portal/sessions", base + extra)
        eq(err4(r), (400, "invalid_request_error") + want, str(extra))


@check("unrecognized URL -> 404 invalid_request_error")
def _():
    r = api_get("/v1/nothing")
    eq((r.status, r.err("type")), (404, "invalid_request_error"), "GET")
    assert r.err("message").startswith("Unrecognized request URL (GET: /v1/nothing)")
    eq(request("DELETE", "/v1/customers/cus_x").status, 404, "DELETE")


@check("idempotent replay: same key and params -> stored answer, Idempotent-Replayed")
def _():
    params = [("email", "idem@example.test"), ("metadata[userId]", "5")]
    a = api_post("/v1/customers", params, idem="key-replay-1")
    b = api_post("/v1/customers", params, idem="key-replay-1")
    c = api_post("/v1/customers", list(reversed(params)), idem="key-replay-1")
    eq((a.status, b.status, c.status), (200, 200, 200), "status")
    eq(b.json, a.json, "replayed body")
    eq(c.json, a.json, "param order does not matter")
    assert "idempotent-replayed" not in a.headers
    eq(b.headers.get("idempotent-replayed"), "true", "header")
    eq(b.headers.get("original-request"), a.headers["request-id"], "original request")
    assert b.headers["request-id"] != a.headers["request-id"]
    objs = control("GET", "/_fake/objects").json["customers"]
    eq(sum(1 for x in objs.values() if x["email"] == "idem@example.test"), 1, "created once")


@check("idempotency_error: same key, different params or endpoint")
def _():
    api_post("/v1/customers", [("email", "k2@example.test")], idem="key-mismatch")
    r = api_post("/v1/customers", [("email", "k3@example.test")], idem="key-mismatch")
    eq((r.status, r.err("type")), (400, "idempotency_error"), "params")
    assert r.err("message").startswith("Keys for idempotent requests can only be used with "
                                       "the same parameters they were first used with")
    r = api_post("/v1/billing_portal/sessions", [("customer", "cus_1")], idem="key-mismatch")
    eq((r.status, r.err("type")), (400, "idempotency_error"), "endpoint")


@check("a request rejected by validation is not stored under its key")
def _():
    bad = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT + [("bogus", "1")], idem="k-val")
    eq(bad.status, 400, "first")
    good = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem="k-val")
    eq(good.status, 200, "retry with fixed params")
    assert "idempotent-replayed" not in good.headers


@check("concurrent use of a key -> 409 idempotency_key_in_use")
def _():
    # The delay only has to outlast the poll below, which ends as soon as the
    # fake reports the key in flight.
    fail_rule(path="/v1/customers", method="POST", mode="slow", delay=3.0)
    out = {}

    def first():
        out["a"] = api_post("/v1/customers", [("email", "c@example.test")], idem="k-conc")

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 3.0
    while "k-conc" not in control("GET", "/_fake/in-flight").json:
        assert time.monotonic() < deadline, "the first request never got in flight"
    b = api_post("/v1/customers", [("email", "c@example.test")], idem="k-conc")
    t.join()
    eq(out["a"].status, 200, "first")
    eq((b.status, b.err("type"), b.err("code")), (409, "idempotency_error",
                                                  "idempotency_key_in_use"), "second")
    c = api_post("/v1/customers", [("email", "c@example.test")], idem="k-conc")
    eq((c.status, c.headers.get("idempotent-replayed")), (200, "true"), "after")


def expect_fault(mode, status, etype, code=None, should_retry=None):
    fail_rule(path="/v1/checkout/sessions", mode=mode, should_retry=should_retry)
    key = "k-fault-" + mode
    r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem=key)
    eq((r.status, r.err("type"), r.err("code")), (status, etype, code), mode)
    eq(r.headers.get("stripe-should-retry"),
       None if should_retry is None else str(should_retry).lower(), "Stripe-Should-Retry")
    assert r.headers.get("request-id", "").startswith("req_")
    ok = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem=key)
    eq(ok.status, 200, "retry with the same key after an injected %s" % mode)
    assert "idempotent-replayed" not in ok.headers, "injected failure was stored"
    return r


@check("fail mode 500 -> api_error, not stored")
def _():
    expect_fault("500", 500, "api_error")


@check("fail mode 503 -> api_error, Stripe-Should-Retry: true")
def _():
    expect_fault("503", 503, "api_error", should_retry=True)


@check("fail mode 429 -> rate_limit, Stripe-Should-Retry: false")
def _():
    expect_fault("429", 429, "invalid_request_error", "rate_limit", should_retry=False)


@check("fail mode 409 -> idempotency_error")
def _():
    expect_fault("409", 409, "idempotency_error", "idempotency_key_in_use")


@check("fail mode 400 -> harmless invalid_request_error; custom message")
def _():
    r = expect_fault("400", 400, "invalid_request_error")
    assert "injected" in r.err("message")
    fail_rule(path="/v1/customers", mode="400", message="<b>x</b> & 'y'", retry_after=1)
    r = api_post("/v1/customers", [("email", "a@b.c")])
    eq((r.status, r.err("message"), r.headers.get("retry-after")),
       (400, "<b>x</b> & 'y'", "1"), "custom")


@check("fail count, method filter and path prefix")
def _():
    fail_rule(path="/v1/checkout", method="POST", mode="503", count=2)
    got = [api_get("/v1/checkout/sessions/cs_test_none").status]
    got += [api_post("/v1/checkout/sessions", CLIENT_CHECKOUT).status for _ in range(3)]
    eq(got, [404, 503, 503, 200], "statuses")
    eq(control("GET", "/_fake/fail").json, [], "rules used up")
    r = control("POST", "/_fake/fail", {"path": "/v1", "mode": "teapot"})
    eq(r.status, 400, "bad rule")


@check("fail mode slow -> answers normally after the delay")
def _():
    fail_rule(path="/v1/customers", mode="slow", delay=0.6)
    t = time.monotonic()
    r = api_post("/v1/customers", [("email", "slow@example.test")])
    took = time.monotonic() - t
    eq(r.status, 200, "status")
    assert took >= 0.55, took
    try:
        api_get("/v1/customers/search?query=email%3A%27x%27", timeout=5)
    except Exception as e:
        raise AssertionError("server busy after slow request: %r" % e)
    last = logged()[-1]
    eq((last["path"], last["fault"]), ("/v1/customers/search", None),
       "the rule fired once: the next call under its path is not slowed")


@check("fail mode reset -> TCP RST, no answer; next request works")
def _():
    fail_rule(path="/v1/checkout/sessions", mode="reset")
    try:
        r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem="k-reset")
        raise AssertionError("got an answer: %s" % r.status)
    except ConnectionResetError:
        pass
    r = api_post("/v1/checkout/sessions", CLIENT_CHECKOUT, idem="k-reset")
    eq(r.status, 200, "after reset")
    assert "idempotent-replayed" not in r.headers
    last = logged()[-2:]
    eq([(e["fault"], e["status"]) for e in last], [("reset", None), (None, 200)], "log")


@check("request log records method, path, headers, raw body, params, status")
def _():
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    body = form(CLIENT_CHECKOUT)
    api_post("/v1/checkout/sessions", body, idem="log-1")
    api_get("/v1/subscriptions/sub_missing?expand[]=customer")
    control("GET", "/_fake/objects")
    log = logged()
    eq(len(log), 2, "entries (control requests are not recorded)")
    a, b = log
    eq((a["method"], a["path"], a["status"], a["body"]),
       ("POST", "/v1/checkout/sessions", 200, body), "POST entry")
    eq(a["headers"]["idempotency-key"], "log-1", "lowercased headers")
    eq(a["headers"]["stripe-version"], VERSION, "Stripe-Version")
    eq(a["headers"]["authorization"], "Bearer " + KEY, "authorization")
    p = a["params"]
    eq(p["line_items"], [{"price": "price_1S0lRLkdIwHu7ix8acRYSi4M", "quantity": "1"}], "li")
    eq(p["subscription_data"], {"metadata": {"userId": "42", "tier": "pro",
                                             "interval": "month"},
                                "trial_period_days": "14"}, "subscription_data")
    eq(p["metadata"]["userId"], "42", "metadata")
    eq((b["method"], b["path"], b["query"], b["status"], b["params"]),
       ("GET", "/v1/subscriptions/sub_missing", "expand[]=customer", 404,
        {"expand": ["customer"]}), "GET entry")


@check("subscription store: PUT, GET, DELETE, 404 resource_missing")
def _():
    sub = {"id": "sub_1S4bWLkdIwHu7ixYTI6wLqee", "object": "subscription",
           "status": "active", "customer": "cus_TQd8Kf2LmW7xYz",
           "metadata": {"userId": "42", "tier": "pro", "interval": "month"},
           "items": {"object": "list", "data": [{"id": "si_1", "current_period_end": 1800000000,
                                                 "price": {"id": "price_1"}}],
                     "has_more": False, "url": "/v1/subscription_items"}}
    r = control("PUT", "/_fake/subscriptions/" + sub["id"], sub)
    eq(r.status, 200, "PUT")
    g = api_get("/v1/subscriptions/" + sub["id"])
    eq((g.status, g.json), (200, sub), "GET")
    eq(control("DELETE", "/_fake/subscriptions/" + sub["id"]).status, 200, "DELETE")
    g = api_get("/v1/subscriptions/" + sub["id"])
    eq((g.status, g.err("type"), g.err("code")),
       (404, "invalid_request_error", "resource_missing"), "GET after DELETE")
    eq(g.err("message"), "No such subscription: '%s'" % sub["id"], "message")


@check("HTTP/1.1 keep-alive with Content-Length on every answer")
def _():
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    try:
        for _ in range(3):
            r = request("GET", "/v1/subscriptions/sub_x", conn=conn)
            eq(r.status, 404, "status")
            assert int(r.headers["content-length"]) == len(r.raw)
        r = request("POST", "/v1/customers", [("email", "ka@example.test")], conn=conn)
        eq(r.status, 200, "POST on the same connection")
    finally:
        conn.close()


@check("body over 1 MiB -> 413")
def _():
    r = api_post("/v1/customers", "description=" + "x" * (1024 * 1024))
    eq(r.status, 413, "status")


@check("POST /_fake/reset clears objects, keys, rules and the log")
def _():
    api_post("/v1/customers", [("email", "r@example.test")], idem="k-reset-all")
    control("PUT", "/_fake/subscriptions/sub_r", {"status": "active"})
    fail_rule(path="/v1/nothing-matches-this", mode="500")
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    eq(logged(), [], "log")
    eq(control("GET", "/_fake/fail").json, [], "rules")
    o = control("GET", "/_fake/objects").json
    eq((o["customers"], o["subscriptions"]), ({}, {}), "objects")
    r = api_post("/v1/customers", [("email", "other@example.test")], idem="k-reset-all")
    eq((r.status, r.headers.get("idempotent-replayed")), (200, None), "key forgotten")


def rounded(num, den):
    """num/den rounded to the nearest integer, halves away from zero."""
    q = Fraction(num, den)
    return int(q + Fraction(1, 2)) if q >= 0 else -int(-q + Fraction(1, 2))


def expected_proration(old_amount, new_amount, sub, when):
    """(credit, charge) by Stripe's formula, computed here independently."""
    it = sub["items"]["data"][0]
    start, end = it["current_period_start"], it["current_period_end"]
    return (-rounded(old_amount * (end - when), end - start),
            rounded(new_amount * (end - when), end - start))


def active_sub(**kw):
    """Pro monthly, period started 10 days ago (so now is inside it)."""
    kw.setdefault("current_period_start", int(time.time()) - 10 * DAY)
    return new_sub(**kw)


def sub_post(sub_id, pairs, **kw):
    return api_post("/v1/subscriptions/" + sub_id, pairs, **kw)


@check("POST /v1/subscriptions/{id}: price change answers the updated subscription")
def _():
    sub = active_sub(metadata={"userId": "42", "tier": "pro"})
    si = sub["items"]["data"][0]["id"]
    r = sub_post(sub["id"], [("items[0][id]", si), ("items[0][price]", TEAM_MONTH),
                             ("proration_behavior", "none"), ("metadata[tier]", "team"),
                             ("payment_behavior", "allow_incomplete")], idem="upd-1")
    eq(r.status, 200, "status: %s" % r.raw[:300])
    s = r.json
    it = s["items"]["data"][0]
    eq((it["id"], it["price"]["id"], it["price"]["recurring"]["interval"], it["price"]
        ["unit_amount"]), (si, TEAM_MONTH, "month", 4900), "item keeps its id, new price")
    eq((it["plan"]["id"], it["plan"]["amount"], it["plan"]["interval"], it["quantity"]),
       (TEAM_MONTH, 4900, "month", 1), "plan")
    eq((s["status"], s["cancel_at_period_end"], s["cancel_at"], s["canceled_at"]),
       ("active", False, None, None), "status and cancellation unchanged")
    eq(s["metadata"], {"userId": "42", "tier": "team"}, "metadata merged")
    eq(api_get("/v1/subscriptions/" + sub["id"]).json, s, "stored")
    evs = events_of(sub["id"], "customer.subscription.updated")
    eq(len(evs), 1, "one event")
    ev = evs[0]
    eq(ev["data"]["previous_attributes"]["items"], sub["items"], "previous items")
    eq(ev["data"]["previous_attributes"]["metadata"], {"tier": "pro"}, "previous metadata")
    eq((ev["request"]["id"], ev["request"]["idempotency_key"], ev["data"]["object"]),
       (r.headers["request-id"], "upd-1", s), "event request and object")
    with open(os.path.join(DATA, "events", "customer.subscription.updated.price_change.json"),
              encoding="utf-8") as f:
        ref = json.load(f)
    eq(sorted(ev), sorted(ref), "event envelope keys")
    eq(sorted(s), sorted(ref["data"]["object"]), "subscription keys")
    eq(sorted(it), sorted(ref["data"]["object"]["items"]["data"][0]), "item keys")
    again = sub_post(sub["id"], [("items[0][id]", si), ("items[0][price]", TEAM_MONTH),
                                 ("proration_behavior", "none"), ("metadata[tier]", "team"),
                                 ("payment_behavior", "allow_incomplete")], idem="upd-1")
    eq((again.json, again.headers.get("idempotent-replayed")), (s, "true"), "replay")
    eq(len(events_of(sub["id"])), 1, "a replay records nothing")
    bad = sub_post(sub["id"], [("items[0][id]", si), ("items[0][price]", PRO_MONTH)],
                   idem="upd-1")
    eq((bad.status, bad.err("type")), (400, "idempotency_error"), "other params, same key")
    r = sub_post(sub["id"], [("metadata[tier]", ""), ("metadata[new]", "1")])
    eq(r.json["metadata"], {"userId": "42", "new": "1"}, "metadata unset and added")
    eq(events_of(sub["id"])[-1]["data"]["previous_attributes"],
       {"metadata": {"tier": "team", "new": None}}, "previous metadata keys")
    n = len(events_of(sub["id"]))
    eq(sub_post(sub["id"], [("metadata[new]", "1")]).status, 200, "no-op")
    eq(len(events_of(sub["id"])), n, "a change that changes nothing records no event")


@check("POST /v1/subscriptions/{id}: cancel_at_period_end on and off")
def _():
    sub = active_sub()
    end = sub["items"]["data"][0]["current_period_end"]
    t0 = int(time.time())
    r = sub_post(sub["id"], [("cancel_at_period_end", "true"),
                             ("cancellation_details[feedback]", "too_expensive")])
    s = r.json
    eq((r.status, s["cancel_at_period_end"], s["cancel_at"], s["status"], s["ended_at"]),
       (200, True, end, "active", None), "scheduled")
    assert t0 <= s["canceled_at"] <= t0 + 5, s["canceled_at"]
    eq(s["cancellation_details"], {"comment": None, "feedback": "too_expensive",
                                   "reason": "cancellation_requested"}, "details")
    with open(os.path.join(DATA, "events",
                           "customer.subscription.updated.cancel_at_period_end.json"),
              encoding="utf-8") as f:
        ref = json.load(f)["data"]["previous_attributes"]
    prev = events_of(sub["id"])[-1]["data"]["previous_attributes"]
    ref["cancellation_details"]["feedback"] = None  # this request also set a feedback
    eq(prev, ref, "previous_attributes like Stripe's event")
    r = sub_post(sub["id"], [("cancel_at_period_end", "false")])
    eq((r.json["cancel_at_period_end"], r.json["cancel_at"], r.json["canceled_at"],
        r.json["cancellation_details"]["reason"]), (False, None, None, None), "undone")
    r = sub_post(sub["id"], [("cancel_at_period_end", "maybe")])
    eq(err4(r)[0::3], (400, "cancel_at_period_end"), "boolean")
    r = sub_post(sub["id"], [("cancel_at_period_end", "true"), ("cancel_at", str(end))])
    eq(err4(r)[0::2], (400, "parameters_exclusive"), "cancel_at with cancel_at_period_end")


@check("POST /v1/subscriptions/{id}: refusals like Stripe")
def _():
    sub = active_sub()
    other = active_sub()
    si = sub["items"]["data"][0]["id"]
    cases = [
        ([("items[0][id]", other["items"]["data"][0]["id"]), ("items[0][price]", TEAM_MONTH)],
         (None, "items[0][id]")),
        ([("items[0][id]", "si_nope"), ("items[0][price]", TEAM_MONTH)],
         ("resource_missing", "items[0][id]")),
        ([("items[0][id]", si), ("items[0][price]", "price_nope")],
         ("resource_missing", "items[0][price]")),
        ([("items[0][id]", si), ("items[0][quantity]", "two")],
         ("parameter_invalid_integer", "items[0][quantity]")),
        ([("items[0][id]", si), ("items[0][bogus]", "1")],
         ("parameter_unknown", "items[0][bogus]")),
        ([("proration_behavior", "always")], (None, "proration_behavior")),
        ([("payment_behavior", "whatever")], (None, "payment_behavior")),
        ([("proration_date", "1")], (None, "proration_date")),
        ([("payment_behavior", "pending_if_incomplete"), ("metadata[a]", "b")],
         (None, "metadata")),
        ([("plan", "x")], ("parameter_unknown", "plan")),
    ]
    for pairs, want in cases:
        r = sub_post(sub["id"], pairs)
        eq(err4(r), (400, "invalid_request_error") + want, str(pairs))
    eq(sub_post(sub["id"], []).json, api_get("/v1/subscriptions/" + sub["id"]).json,
       "nothing changed")
    r = sub_post("sub_nope", [("metadata[a]", "b")])
    eq((r.status, r.err("code"), r.err("message")),
       (404, "resource_missing", "No such subscription: 'sub_nope'"), "unknown")
    gone = new_sub(status="canceled")
    r = sub_post(gone["id"], [("items[0][id]", gone["items"]["data"][0]["id"]),
                              ("items[0][price]", TEAM_MONTH)])
    eq((r.status, r.err("type"), r.err("message")),
       (400, "invalid_request_error",
        "A canceled subscription can only update its cancellation_details and metadata."),
       "canceled")
    eq(sub_post(gone["id"], [("cancel_at_period_end", "false")]).status, 400, "canceled 2")
    r = sub_post(gone["id"], [("metadata[note]", "x"),
                              ("cancellation_details[comment]", "moved")])
    eq((r.status, r.json["metadata"], r.json["cancellation_details"]["comment"],
        r.json["status"]), (200, {"note": "x"}, "moved", "canceled"), "metadata still allowed")


@check("DELETE /v1/subscriptions/{id}: canceled now, prorate + invoice_now credit")
def _():
    sub = active_sub()
    t0 = int(time.time())
    r = request("DELETE", "/v1/subscriptions/%s?prorate=true&invoice_now=true" % sub["id"])
    eq(r.status, 200, "status: %s" % r.raw[:300])
    s = r.json
    eq((s["status"], s["cancel_at_period_end"], s["cancellation_details"]["reason"]),
       ("canceled", False, "cancellation_requested"), "canceled")
    assert t0 <= s["canceled_at"] == s["ended_at"] <= t0 + 5, (s["canceled_at"], s["ended_at"])
    ev = events_of(sub["id"], "customer.subscription.deleted")
    eq((len(ev), "previous_attributes" in ev[0]["data"], ev[0]["data"]["object"]),
       (1, False, s), "deleted event")
    inv = objects()["invoices"][s["latest_invoice"]]
    (line,) = inv["lines"]["data"]
    credit, _ = expected_proration(1500, 0, sub, s["canceled_at"])
    eq((line["amount"], line["parent"]["subscription_item_details"]["proration"]),
       (credit, True), "credit for the unused time")
    assert credit < 0
    eq((inv["total"], inv["amount_due"], inv["ending_balance"], inv["status"]),
       (credit, 0, credit, "paid"), "a credit invoice")
    cus = api_get("/v1/customers/" + s["customer"]).json
    eq(cus["balance"], credit, "credit goes to the customer balance")
    r = request("DELETE", "/v1/subscriptions/" + sub["id"])
    eq((r.status, r.err("code")), (404, "resource_missing"), "already canceled")
    plain = active_sub()
    r = request("DELETE", "/v1/subscriptions/" + plain["id"], body=form([("prorate", "false")]),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    eq((r.status, r.json["status"], r.json["latest_invoice"]), (200, "canceled", None),
       "params in the body, no invoice")
    r = request("DELETE", "/v1/subscriptions/%s?at_period_end=true" % active_sub()["id"])
    eq(err4(r), (400, "invalid_request_error", "parameter_unknown", "at_period_end"),
       "unknown parameter")


@check("create_preview: proration lines with Stripe's arithmetic, both invoices")
def _():
    sub = active_sub(customer=new_customer())
    it = sub["items"]["data"][0]
    start, end = it["current_period_start"], it["current_period_end"]
    when = start + 11 * DAY + 3 * 3600 + 17  # any second inside the period
    credit, charge = expected_proration(1500, 4900, sub, when)
    eq((credit, charge), (-rounded(1500 * (end - when), end - start),
                          rounded(4900 * (end - when), end - start)), "formula")
    base = [("subscription", sub["id"]), ("subscription_details[items][0][id]", it["id"]),
            ("subscription_details[items][0][price]", TEAM_MONTH),
            ("subscription_details[proration_date]", str(when))]

    def preview(behavior):
        r = api_post("/v1/invoices/create_preview",
                     base + [("subscription_details[proration_behavior]", behavior)])
        eq(r.status, 200, "%s: %s" % (behavior, r.raw[:300]))
        return r.json

    def summary(inv):
        return [(ln["amount"], ln["parent"]["subscription_item_details"]["proration"],
                 ln["pricing"]["price_details"]["price"], ln["period"]["start"],
                 ln["period"]["end"]) for ln in inv["lines"]["data"]]

    now_inv = preview("always_invoice")
    eq(summary(now_inv), [(credit, True, PRO_MONTH, when, end),
                          (charge, True, TEAM_MONTH, when, end)], "immediate invoice lines")
    eq((now_inv["amount_due"], now_inv["total"]), (credit + charge, credit + charge), "due now")
    eq((now_inv["object"], now_inv["status"], now_inv["billing_reason"], now_inv["customer"]),
       ("invoice", "draft", "upcoming", sub["customer"]), "fields")
    assert now_inv["id"].startswith("upcoming_in_"), now_inv["id"]
    assert all(ln["id"].startswith("il_tmp_") for ln in now_inv["lines"]["data"])
    eq(now_inv["parent"]["subscription_details"]["subscription"], sub["id"], "parent")
    eq(api_get("/v1/invoices/" + now_inv["id"]).json, now_inv, "retrievable")
    with open(os.path.join(DATA, "events", "invoice.upcoming.json"), encoding="utf-8") as f:
        ref = json.load(f)["data"]["object"]
    eq(sorted(now_inv), sorted(list(ref) + ["id"]), "invoice keys: the upcoming one's plus id")
    eq(sorted(now_inv["lines"]["data"][0]), sorted(ref["lines"]["data"][0]), "line keys")

    later = preview("create_prorations")
    renewal = later["lines"]["data"][2]
    eq(summary(later)[:2], summary(now_inv), "same prorations")
    eq((renewal["amount"], renewal["period"]["start"], renewal["pricing"]["price_details"]
        ["price"], renewal["description"]), (4900, end, TEAM_MONTH,
                                             "1 × Team (at $49.00 / month)"), "next period")
    assert renewal["period"]["end"] > end + 27 * DAY, renewal["period"]
    eq(later["amount_due"], credit + charge + 4900, "next invoice: prorations + full period")
    eq((later["period_start"], later["period_end"], later["created"]), (start, end, end),
       "the renewal invoice's period and date")
    only = preview("none")
    eq([x[:3] for x in summary(only)], [(4900, False, TEAM_MONTH)], "none: no prorations")

    upd = sub_post(sub["id"], [("items[0][id]", it["id"]), ("items[0][price]", TEAM_MONTH),
                               ("proration_behavior", "always_invoice"),
                               ("proration_date", str(when))])
    eq((upd.status, upd.json["status"]), (200, "active"), "update: %s" % upd.raw[:300])
    inv = api_get("/v1/invoices/" + upd.json["latest_invoice"]).json
    eq(summary(inv), summary(now_inv), "the update invoices exactly what was previewed")
    eq((inv["status"], inv["amount_paid"], inv["billing_reason"]),
       ("paid", credit + charge, "subscription_update"), "paid at once")
    types = [e["type"] for e in objects()["events"]
             if e["data"]["object"].get("id") in (sub["id"], inv["id"])]
    eq(types, ["customer.subscription.updated", "invoice.created", "invoice.finalized",
               "invoice.paid"], "events in order")


@check("create_prorations: lines wait for the renewal invoice; interval change bills now")
def _():
    sub = active_sub()
    it = sub["items"]["data"][0]
    end = it["current_period_end"]
    when = it["current_period_start"] + 5 * DAY
    r = sub_post(sub["id"], [("items[0][id]", it["id"]), ("items[0][price]", TEAM_MONTH),
                             ("proration_date", str(when))])
    eq((r.status, r.json["latest_invoice"]), (200, None), "no invoice now")
    credit, charge = expected_proration(1500, 4900, sub, when)
    pend = [x["line"]["amount"] for x in objects()["pending_invoice_items"]
            if x["subscription"] == sub["id"]]
    eq(pend, [credit, charge], "pending proration items")
    nxt = api_post("/v1/invoices/create_preview", [("subscription", sub["id"])]).json
    eq([ln["amount"] for ln in nxt["lines"]["data"]], [credit, charge, 4900], "renewal")
    eq(nxt["amount_due"], credit + charge + 4900, "amount_due")
    ending = api_post("/v1/invoices/create_preview", [
        ("subscription", sub["id"]), ("subscription_details[cancel_at_period_end]", "true")])
    eq([ln["amount"] for ln in ending.json["lines"]["data"]], [credit, charge],
       "ending at the period end: no next period")
    # month -> year: the cycle restarts now, the year is billed at once with a credit
    r = sub_post(sub["id"], [("items[0][id]", it["id"]), ("items[0][price]", TEAM_YEAR),
                             ("proration_date", str(when + DAY))])
    s = r.json
    eq(r.status, 200, "status: %s" % r.raw[:300])
    new_it = s["items"]["data"][0]
    eq((new_it["price"]["recurring"]["interval"], new_it["plan"]["interval"],
        new_it["current_period_start"], s["billing_cycle_anchor"]),
       ("year", "year", when + DAY, when + DAY), "new cycle")
    assert 365 * DAY <= new_it["current_period_end"] - (when + DAY) <= 366 * DAY
    inv = api_get("/v1/invoices/" + s["latest_invoice"]).json
    credit2 = -rounded(4900 * (end - when - DAY), end - it["current_period_start"])
    eq([ln["amount"] for ln in inv["lines"]["data"]], [credit, charge, credit2, 49000],
       "pending lines, credit for the unused month, the whole year")
    eq(objects()["pending_invoice_items"], [], "pending items invoiced")


@check("create_preview refusals")
def _():
    sub = active_sub()
    it = sub["items"]["data"][0]
    other = active_sub()
    cases = [
        ([], (None, "subscription")),
        ([("subscription", "sub_nope")], ("resource_missing", "subscription")),
        ([("customer", "cus_nope"), ("subscription", sub["id"])],
         ("resource_missing", "customer")),
        ([("customer", other["customer"]), ("subscription", sub["id"])],
         (None, "subscription")),
        ([("subscription", sub["id"]),
          ("subscription_details[items][0][id]", other["items"]["data"][0]["id"]),
          ("subscription_details[items][0][price]", TEAM_MONTH)],
         (None, "subscription_details[items][0][id]")),
        ([("subscription", sub["id"]), ("subscription_details[items][0][id]", it["id"]),
          ("subscription_details[items][0][price]", "price_nope")],
         ("resource_missing", "subscription_details[items][0][price]")),
        ([("subscription", sub["id"]), ("subscription_details[proration_date]", "100")],
         (None, "subscription_details[proration_date]")),
        ([("subscription", sub["id"]),
          ("subscription_details[proration_behavior]", "later")],
         (None, "subscription_details[proration_behavior]")),
        ([("subscription", sub["id"]), ("subscription_details[bogus]", "1")],
         ("parameter_unknown", "subscription_details[bogus]")),
        ([("subscription_proration_date", "1")],
         ("parameter_unknown", "subscription_proration_date")),
    ]
    for pairs, want in cases:
        r = api_post("/v1/invoices/create_preview", pairs)
        eq(err4(r), (400, "invalid_request_error") + want, str(pairs))
    gone = new_sub(status="canceled")
    r = api_post("/v1/invoices/create_preview", [("subscription", gone["id"])])
    eq(err4(r)[:3], (400, "invalid_request_error", "invoice_upcoming_none"), "canceled")
    r = api_post("/v1/invoices/create_preview", [
        ("customer", sub["customer"]), ("subscription_details[items][0][price]", TEAM_YEAR)])
    eq((r.status, r.json and r.json["amount_due"]), (200, 49000), "a new subscription")


@check("payment_behavior with a declined card; default_incomplete")
def _():
    def fresh():
        sub = active_sub()
        eq(control("POST", "/_fake/decline", {"customer": sub["customer"],
                                              "decline_code": "insufficient_funds"}).status,
           200, "decline")
        return sub, sub["items"]["data"][0]

    def upgrade(sub, it, behavior):
        return sub_post(sub["id"], [("items[0][id]", it["id"]), ("items[0][price]", TEAM_MONTH),
                                    ("proration_behavior", "always_invoice"),
                                    ("payment_behavior", behavior)])

    sub, it = fresh()
    r = upgrade(sub, it, "error_if_incomplete")
    eq((r.status, r.err("type"), r.err("code"), r.json["error"].get("decline_code")),
       (402, "card_error", "card_declined", "insufficient_funds"), "402")
    eq(api_get("/v1/subscriptions/" + sub["id"]).json, sub, "nothing changed")
    eq(events_of(sub["id"]), [], "no events")
    r = upgrade(sub, it, "allow_incomplete")
    eq((r.status, r.json["status"], r.json["items"]["data"][0]["price"]["id"]),
       (200, "past_due", TEAM_MONTH), "allow_incomplete: applied, past_due")
    inv = api_get("/v1/invoices/" + r.json["latest_invoice"]).json
    eq((inv["status"], inv["attempted"], inv["amount_paid"]), ("open", True, 0), "open invoice")
    eq([e["type"] for e in events_of(inv["id"])],
       ["invoice.created", "invoice.finalized", "invoice.payment_failed"], "invoice events")
    sub, it = fresh()
    r = upgrade(sub, it, "pending_if_incomplete")
    s = r.json
    eq((r.status, s["status"], s["items"]["data"][0]["price"]["id"]),
       (200, "active", PRO_MONTH), "pending_if_incomplete: old items kept")
    eq(s["pending_update"]["subscription_items"][0]["price"]["id"], TEAM_MONTH, "pending")
    eq(control("DELETE", "/_fake/decline/" + sub["customer"]).status, 200, "undecline")
    sub = active_sub()
    r = upgrade(sub, sub["items"]["data"][0], "default_incomplete")
    inv = api_get("/v1/invoices/" + r.json["latest_invoice"]).json
    eq((r.json["status"], inv["status"], inv["attempted"]), ("past_due", "open", False),
       "default_incomplete waits for confirmation")


def ref_list(name):
    with open(os.path.join(DATA, "lists", name), encoding="utf-8") as f:
        return json.load(f)


def walk(path, **params):
    """Every page of a list, following has_more with starting_after."""
    pages = []
    while True:
        r = api_get(path + "?" + urllib.parse.urlencode(params))
        eq(r.status, 200, "%s %s: %s" % (path, params, r.raw[:300]))
        pages.append(r.json)
        if not r.json["has_more"]:
            return pages
        params["starting_after"] = r.json["data"][-1]["id"]


@check("GET /v1/subscriptions answers exactly the reference pages")
def _():
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    p1, p2 = ref_list("subscriptions.page-1.json"), ref_list("subscriptions.page-2.json")
    for s in reversed(p1["data"] + p2["data"]):  # stored oldest first
        eq(control("PUT", "/_fake/subscriptions/" + s["id"], s).status, 200, "PUT")
    r = api_get("/v1/subscriptions?status=all&limit=2")
    eq(r.json, p1, "page 1")
    r = api_get("/v1/subscriptions?status=all&limit=2&starting_after=" + p1["data"][-1]["id"])
    eq(r.json, p2, "page 2")
    r = api_get("/v1/subscriptions?status=all&limit=2&ending_before=" + p2["data"][0]["id"])
    eq((r.json["data"], r.json["has_more"]), (p1["data"], False),
       "back to page 1 with ending_before; nothing newer")
    r = api_get("/v1/subscriptions")
    eq(([s["id"] for s in r.json["data"]], r.json["has_more"], r.json["url"]),
       ([s["id"] for s in p1["data"]], False, "/v1/subscriptions"), "default hides canceled")
    r = api_get("/v1/subscriptions?status=canceled")
    eq([s["id"] for s in r.json["data"]], [p2["data"][0]["id"]], "status=canceled")
    r = api_get("/v1/subscriptions?status=ended")
    eq([s["id"] for s in r.json["data"]], [p2["data"][0]["id"]], "status=ended")
    cus = p1["data"][1]["customer"]
    r = api_get("/v1/subscriptions?status=all&customer=" + cus)
    eq([s["customer"] for s in r.json["data"]], [cus], "customer filter")
    r = api_get("/v1/subscriptions?price=price_1SZUaLkdIwHu7ixLJ4d8jOCs")
    eq([s["id"] for s in r.json["data"]], [p1["data"][1]["id"]], "price filter")
    r = api_get("/v1/subscriptions?status=all&created[gte]=%d&created[lt]=%d"
                % (p1["data"][1]["created"], p1["data"][0]["created"]))
    eq([s["id"] for s in r.json["data"]], [p1["data"][1]["id"]], "created range")
    r = api_get("/v1/subscriptions?limit=1&expand[]=data.customer")
    eq(r.json["data"][0]["customer"]["object"], "customer", "expand data.customer")


@check("GET /v1/subscriptions: 250 subscriptions, limit 1..100, cursors both ways")
def _():
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    t = int(time.time())
    specs = [{"created": t - 1000 + i // 3} for i in range(240)]  # equal created times too
    r = control("POST", "/_fake/subscriptions", specs + [{"count": 10, "status": "canceled"}])
    eq((r.status, len(r.json["data"])), (200, 250), "bulk")
    made = [s["id"] for s in r.json["data"]]
    order = sorted(enumerate(r.json["data"]), key=lambda x: (x[1]["created"], x[0]),
                   reverse=True)
    newest_first = [s["id"] for _, s in order]
    pages = walk("/v1/subscriptions", status="all", limit=100)
    eq([(len(p["data"]), p["has_more"]) for p in pages], [(100, True), (100, True),
                                                         (50, False)], "pages")
    got = [s["id"] for p in pages for s in p["data"]]
    eq(got, newest_first, "newest first, then the later-added first")
    eq(sorted(got), sorted(made), "each once")
    back = api_get("/v1/subscriptions?status=all&limit=100&ending_before=" + got[200]).json
    eq(([s["id"] for s in back["data"]], back["has_more"]), (got[100:200], True),
       "ending_before: the page before, newest first")
    eq(len(walk("/v1/subscriptions", limit=100)[-1]["data"]), 40, "default hides canceled")
    eq(len(api_get("/v1/subscriptions").json["data"]), 10, "default limit 10")
    for q, want in [("limit=0", (None, "limit")), ("limit=101", (None, "limit")),
                    ("limit=x", ("parameter_invalid_integer", "limit")),
                    ("starting_after=%s&ending_before=%s" % (got[1], got[0]),
                     ("parameters_exclusive", "starting_after")),
                    ("starting_after=sub_nope", ("resource_missing", "starting_after")),
                    ("status=gone", (None, "status")),
                    ("created[after]=1", ("parameter_unknown", "created[after]")),
                    ("bogus=1", ("parameter_unknown", "bogus"))]:
        r = api_get("/v1/subscriptions?" + q)
        eq(err4(r), (400, "invalid_request_error") + want, q)


@check("GET /v1/events: the reference page, filters, recorded changes")
def _():
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    evs = []
    for name in sorted(os.listdir(os.path.join(DATA, "events"))):
        if name != "index.json":
            with open(os.path.join(DATA, "events", name), encoding="utf-8") as f:
                evs.append(json.load(f))
    evs.sort(key=lambda e: e["created"])
    r = control("POST", "/_fake/events", evs)
    eq((r.status, r.json["ids"]), (200, [e["id"] for e in evs]), "bulk add")
    ref = ref_list("events.json")
    r = api_get("/v1/events?types[]=customer.deleted&types[]=customer.subscription.deleted"
                "&types[]=customer.updated&created[gte]=1797000000&limit=10")
    eq(r.json, ref, "reference page")
    r = api_get("/v1/events?type=customer.subscription.*&limit=100")
    want = [e["id"] for e in reversed(evs) if e["type"].startswith("customer.subscription.")]
    eq([e["id"] for e in r.json["data"]], want, "type wildcard, newest first")
    r = api_get("/v1/events?type=invoice.paid")
    eq([e["type"] for e in r.json["data"]], ["invoice.paid"], "type")
    eq(evs[1]["created"], evs[2]["created"], "two events of the same second")
    r = api_get("/v1/events?created[lt]=%d&limit=100" % evs[3]["created"])
    eq([e["id"] for e in r.json["data"]], [evs[2]["id"], evs[1]["id"], evs[0]["id"]],
       "created[lt]; equal times: the later-added first")
    pages = walk("/v1/events", limit=5)
    eq([e["id"] for p in pages for e in p["data"]], [e["id"] for e in reversed(evs)],
       "paged walk")
    eq(api_get("/v1/events/" + evs[3]["id"]).json, evs[3], "GET one")
    eq(api_get("/v1/events/evt_nope").err("code"), "resource_missing", "GET unknown")
    r = api_get("/v1/events?type=a&types[]=b")
    eq(err4(r)[0::2], (400, "parameters_exclusive"), "type and types")
    eq(control("POST", "/_fake/events", {"type": "x"}).status, 400, "event without object")
    eq(control("POST", "/_fake/events", evs[0]).status, 400, "duplicate id")
    # an event past Stripe's 30 days: not listed, retrieved or accepted as a cursor
    eq(control("DELETE", "/_fake/events/" + evs[0]["id"]).status, 200, "expire")
    eq(control("DELETE", "/_fake/events/" + evs[0]["id"]).status, 404, "expire again: 404")
    eq([e["id"] for p in walk("/v1/events", limit=5) for e in p["data"]],
       [e["id"] for e in reversed(evs[1:])], "expired: not listed")
    eq(api_get("/v1/events/" + evs[0]["id"]).err("code"), "resource_missing",
       "expired: GET resource_missing")
    eq(err4(api_get("/v1/events?ending_before=" + evs[0]["id"])),
       (400, "invalid_request_error", "resource_missing", "ending_before"),
       "expired: refused as a cursor")
    # events the fake records itself
    sub = active_sub()
    sub_post(sub["id"], [("cancel_at_period_end", "true")], idem="evt-cape")
    r = api_get("/v1/events?limit=1&type=customer.subscription.updated")
    e = r.json["data"][0]
    eq((e["type"], e["data"]["object"]["id"], e["request"]["idempotency_key"],
        e["api_version"], e["livemode"]),
       ("customer.subscription.updated", sub["id"], "evt-cape", VERSION, False), "recorded")
    assert re.match(r"^evt_[A-Za-z0-9]{24}$", e["id"]), e["id"]


@check("fail rules fire at the Nth matching call, for count calls")
def _():
    eq(control("POST", "/_fake/reset").status, 200, "reset")
    fail_rule(path="/v1/customers", method="POST", mode="503", at=3, count=2)
    got = []
    for _ in range(6):
        api_get("/v1/customers/cus_x")  # other method: not counted
        got.append(api_post("/v1/customers", [("email", "n@example.test")]).status)
    eq(got, [200, 200, 503, 503, 200, 200], "statuses")
    fail_rule(path="/v1/subscriptions", mode="429", at=2, retry_after=7)
    eq(control("GET", "/_fake/fail").json[0]["seen"], 0, "seen")
    a, b, c = (api_get("/v1/subscriptions") for _ in range(3))
    eq((a.status, b.status, b.headers.get("retry-after"), b.err("code"), c.status),
       (200, 429, "7", "rate_limit", 200), "429 with Retry-After at call 2")
    for mode in ("500", "502", "504"):
        fail_rule(path="/v1/events", mode=mode)
        r = api_get("/v1/events")
        eq((r.status, r.err("type")), (int(mode), "api_error"), mode)
    eq(control("POST", "/_fake/fail", {"mode": "500", "at": 0}).status, 400, "bad at")


@check("fail modes reset and close at the Nth call, reset_after stores the result")
def _():
    fail_rule(path="/v1/customers", method="POST", mode="reset", at=2)
    eq(api_post("/v1/customers", [("email", "r1@example.test")]).status, 200, "call 1")
    try:
        api_post("/v1/customers", [("email", "r2@example.test")])
        raise AssertionError("call 2 was answered")
    except ConnectionResetError:
        pass
    fail_rule(path="/v1/customers", method="POST", mode="close")
    try:
        api_post("/v1/customers", [("email", "r3@example.test")])
        raise AssertionError("answered despite close")
    except http.client.RemoteDisconnected:
        pass
    eq([e["fault"] for e in logged()[-2:]], ["reset", "close"], "logged")
    fail_rule(path="/v1/customers", method="POST", mode="reset_after")
    try:
        api_post("/v1/customers", [("email", "after@example.test")], idem="k-after")
        raise AssertionError("answered despite reset_after")
    except ConnectionResetError:
        pass
    r = api_post("/v1/customers", [("email", "after@example.test")], idem="k-after")
    eq((r.status, r.headers.get("idempotent-replayed")), (200, "true"),
       "the retry gets the stored answer")
    made = [c for c in objects()["customers"].values() if c["email"] == "after@example.test"]
    eq(len(made), 1, "created once")


@check("fail mode raw -> exactly the given status, headers and body; truncate cuts it short")
def _():
    fail_rule(path="/v1/subscriptions/", mode="raw", status=302, body="moved",
              content_type="text/plain", headers={"Location": "/elsewhere"})
    r = api_get("/v1/subscriptions/sub_raw")
    eq((r.status, r.headers.get("location"), r.headers.get("content-type"), r.raw),
       (302, "/elsewhere", "text/plain", b"moved"), "raw answer")
    fail_rule(path="/v1/subscriptions/", mode="raw", body="ab", repeat=3)
    eq(api_get("/v1/subscriptions/sub_raw").raw, b"ababab", "repeat")
    fail_rule(path="/v1/subscriptions/", mode="raw", body='{"id": "sub_raw"}', truncate=4)
    try:
        r = api_get("/v1/subscriptions/sub_raw")
        raise AssertionError("a whole answer: %r" % r.raw)
    except http.client.IncompleteRead as e:
        eq(e.partial, b'{"id', "the first 4 bytes, under the whole Content-Length")
    eq([(e["fault"], e["status"]) for e in logged()[-3:]],
       [("raw", 302), ("raw", 200), ("raw", 200)], "logged")
    eq(control("POST", "/_fake/fail", {"mode": "raw", "status": 99}).status, 400, "bad status")
    eq(control("POST", "/_fake/fail", {"mode": "raw", "body": 1}).status, 400, "bad body")


@check("fail mode slow_after -> runs at once, answers after the delay (an older state)")
def _():
    made = api_post("/v1/customers", [("email", "before@example.test")]).json["id"]
    fail_rule(path="/v1/customers/" + made, method="GET", mode="slow_after", delay=0.8)
    got = {}
    th = threading.Thread(target=lambda: got.update(r=api_get("/v1/customers/" + made)))
    t = time.monotonic()
    th.start()
    while not any(e["path"] == "/v1/customers/" + made and e["method"] == "GET"
                  for e in logged()) and time.monotonic() - t < 5:
        time.sleep(0.02)
    r = control("PUT", "/_fake/customers/" + made, {"email": "after@example.test"})
    eq(r.status, 200, "update while the GET waits")
    th.join(10)
    eq(got["r"].json["email"], "before@example.test", "the slow answer is the state it read")
    assert time.monotonic() - t >= 0.75, "answered after the delay"


@check("PUT /_fake/prices: a custom price; a second of proration is visible")
def _():
    big = control("PUT", "/_fake/prices/price_big", {
        "unit_amount": 99999999, "currency": "usd", "nickname": "Huge",
        "recurring": {"interval": "month"}})
    eq((big.status, big.json["unit_amount_decimal"], big.json["recurring"]["interval_count"]),
       (200, "99999999", 1), "stored")
    eq(control("PUT", "/_fake/prices/price_bad", {"unit_amount": 5}).status, 400, "bad price")
    sub = active_sub()
    it = sub["items"]["data"][0]
    when = it["current_period_start"] + 7 * DAY + 1
    r = api_post("/v1/invoices/create_preview", [
        ("subscription", sub["id"]), ("subscription_details[items][0][id]", it["id"]),
        ("subscription_details[items][0][price]", "price_big"),
        ("subscription_details[items][0][quantity]", "3"),
        ("subscription_details[proration_date]", str(when)),
        ("subscription_details[proration_behavior]", "always_invoice")])
    eq(r.status, 200, "status: %s" % r.raw[:300])
    credit, charge = expected_proration(1500, 3 * 99999999, sub, when)
    lines = r.json["lines"]["data"]
    eq([(ln["amount"], ln["quantity"]) for ln in lines], [(credit, 1), (charge, 3)], "amounts")
    eq(lines[1]["description"], "Remaining time on 3 × Huge after %s"
       % time.strftime("%d %b %Y", time.gmtime(when)), "description")


@check("harness _Stripe helper drives the control API")
def _():
    sys.path.insert(0, HERE)
    from harness import _Stripe
    fs = _Stripe("http://127.0.0.1:%d" % PORT)
    fs.reset()
    fs.put_customer("cus_helper", email="helper@example.test")
    eq(api_get("/v1/customers/cus_helper").json["email"], "helper@example.test", "customer")
    subs = fs.create_subscriptions(customer="cus_helper", count=3, events=True)
    eq([s["customer"] for s in subs], ["cus_helper"] * 3, "subscriptions")
    eq(len(fs.events("customer.subscription.created")), 3, "events on request")
    eq(len(fs.create_subscriptions([{"price": TEAM_YEAR}, {"status": "trialing"}])), 2, "list")
    eq(fs.put_price("price_h", unit_amount=700, currency="eur",
                    recurring={"interval": "week"})["recurring"]["interval"], "week", "price")
    eq(len(fs.add_events([{"type": "x.y", "data": {"object": {"id": "x_1"}}}])), 1, "event")
    fs.decline("cus_helper", "expired_card")
    eq(fs.objects()["declines"], {"cus_helper": "expired_card"}, "decline")
    fs.undecline("cus_helper")
    eq(fs.objects()["declines"], {}, "undecline")
    fs.fail(path="/v1/events", mode="504", at=2)
    eq([api_get("/v1/events").status for _ in range(3)], [200, 504, 200], "fail at")


# ---------------------------------------------------------------------------


def main():
    global PORT
    proc = subprocess.Popen([sys.executable, FAKE, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    n = 0
    failed = 0
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        m = re.match(r"^listening on 127\.0\.0\.1:(\d+)\n$", line)
        n += 1
        if not m:
            print("not ok %d - fake starts and prints its port # got %r" % (n, line))
            print("1..%d" % n)
            return 1
        print("ok %d - fake starts and prints 'listening on 127.0.0.1:PORT'" % n)
        PORT = int(m.group(1))
        for name, fn in results:
            n += 1
            try:
                fn()
                print("ok %d - %s" % (n, name))
            except Exception as e:  # report and go on
                failed += 1
                print("not ok %d - %s" % (n, name))
                for ln in ("%s: %s" % (type(e).__name__, e)).splitlines():
                    print("# " + ln)
            sys.stdout.flush()
        n += 1
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0:
            print("ok %d - SIGTERM stops the fake with status 0" % n)
        else:
            failed += 1
            print("not ok %d - SIGTERM stops the fake with status 0 # rc=%r" % (n, rc))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        for ln in err.splitlines()[-20:]:
            print("# fake stderr: " + ln)
    print("1..%d" % n)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
