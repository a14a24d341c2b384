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

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_stripe.py")
PARAMS = os.path.join(HERE, "data", "stripe_params.json")
KEY = "sk_test_51FakeKeyForTestsOnly0000000000abcd"
VERSION = "2026-07-29.dahlia"

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


@check("POST /v1/billing_portal/sessions -> url; customer required")
def _():
    r = api_post("/v1/billing_portal/sessions", [("customer", "cus_TQd8Kf2LmW7xYz"),
                                                 ("return_url", "https://app.example.test/")])
    eq(r.status, 200, "status")
    eq(r.json["object"], "billing_portal.session", "object")
    eq(r.json["customer"], "cus_TQd8Kf2LmW7xYz", "customer")
    eq(r.json["return_url"], "https://app.example.test/", "return_url")
    assert r.json["url"].startswith("https://billing.stripe.com/"), r.json["url"]
    r = api_post("/v1/billing_portal/sessions", [("return_url", "https://a.test/")])
    eq((r.status, r.err("code"), r.err("param")), (400, "parameter_missing", "customer"), "")


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
        api_get("/v1/customers/search?query=email%3A%27x%27", timeout=0.2)
    except Exception as e:
        raise AssertionError("server busy after slow request: %r" % e)


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
