#!/usr/bin/env python3
"""Fake Stripe API server for the test suite and the offline local stack.

    python3 tests/fake_stripe.py [--host 127.0.0.1] [--port 0] [--log FILE]

Port 0 picks a free port.  The first line on stdout is exactly
"listening on <host>:<port>"; nothing else is written to stdout.
SIGTERM / SIGINT stop it (exit status 0).  --log FILE appends one JSON line
per API request (the Authorization value masked).

Stripe behaviour modelled (docs.stripe.com/api, Stripe's OpenAPI definitions):
  * form-encoded bodies with bracket keys (a[b][0][c]=v, brackets encoded or not)
  * Authorization: Bearer sk_test_... / sk_live_... / rk_...; 401 otherwise
  * parameter names checked against data/stripe_params.json (generated from
    Stripe's OpenAPI by data/gen_stripe_params.py): unknown names, empty
    values for parameters that cannot be unset, malformed integers and
    booleans, missing required members -> 400 invalid_request_error
  * Checkout rules: mode, success_url, line_items, price in subscription mode,
    customer xor customer_email, trial_period_days >= 1
  * Idempotency-Key on POST: replay (Idempotent-Replayed: true), mismatch ->
    400 idempotency_error, concurrent use -> 409; requests rejected before
    execution (auth, validation, injected failures) are not stored
  * Request-Id, Stripe-Version and Content-Type: application/json headers

Endpoints: POST /v1/customers, GET /v1/customers/{id}, GET /v1/customers/search,
POST /v1/checkout/sessions, GET /v1/checkout/sessions/{id},
POST /v1/checkout/sessions/{id}/expire (only an open session: else 400),
POST /v1/billing_portal/sessions, GET /v1/subscriptions/{id}.

Customer search follows Stripe's query language for the forms we use
(field:'value', metadata['key']:'value', AND/OR, negation, ~) and answers
{"object":"search_result","data":[...],"has_more":...}.  Stripe's search
index is eventually consistent; PUT /_fake/search-lag makes customers
invisible to search for that many seconds after their creation.

Control API (no auth, JSON in and out):
  POST   /_fake/reset                 forget requests, keys, objects, failure rules
  GET    /_fake/requests              list of recorded API requests, oldest first
  POST   /_fake/fail                  add a failure rule (see FailRule below)
  GET    /_fake/fail                  list the failure rules still armed
  PUT    /_fake/subscriptions/{id}    store a subscription object (body)
  DELETE /_fake/subscriptions/{id}    remove it
  GET    /_fake/objects               customers, checkout sessions, subscriptions
  GET    /_fake/in-flight             idempotency keys whose first request is executing
  PUT    /_fake/search-lag            {"seconds": N}: new customers unsearchable for N s
  POST   /_fake/checkout/sessions/{id}/complete   the customer paid: status complete
"""
import argparse
import copy
import http.server
import io
import json
import os
import re
import secrets
import signal
import socket
import string
import struct
import sys
import threading
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS_FILE = os.path.join(HERE, "data", "stripe_params.json")

MAX_BODY = 1024 * 1024
DRAIN_MAX = 16 * MAX_BODY  # larger bodies are not read at all
DEFAULT_API_VERSION = "2026-07-29.dahlia"
KEY_RE = re.compile(r"^(?:sk_test_|sk_live_|rk_)[A-Za-z0-9_]+$")
DOCS = "https://stripe.com/docs/error-codes/"
ALNUM = string.ascii_letters + string.digits

# GET /v1/customers/{customer} and the expire call are not part of the
# OpenAPI subset we generate from; both accept expand[] and nothing else.
EXTRA_TREES = {"GET /v1/customers/{customer}": {"p": {"expand": {"a": "s"}}},
               "POST /v1/checkout/sessions/{session}/expire": {"p": {"expand": {"a": "s"}}}}


def rand_id(n):
    return "".join(secrets.choice(ALNUM) for _ in range(n))


def mask_key(key):
    """Stripe quotes a bad key only masked: prefix, asterisks, last 4."""
    if len(key) <= 8:
        return "*" * len(key)
    m = re.match(r"^[a-z]{2}_(?:test_|live_)?", key)
    head = m.group(0) if m and len(m.group(0)) <= len(key) - 8 else ""
    return head + "*" * (len(key) - len(head) - 4) + key[-4:]


def load_trees():
    with open(PARAMS_FILE, encoding="utf-8") as f:
        trees = json.load(f)["operations"]
    trees.update(EXTRA_TREES)
    return trees


class StripeError(Exception):
    """An error answer in Stripe's shape; stored for idempotency if stored=True."""

    def __init__(self, status, etype, message, code=None, param=None, stored=False,
                 headers=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": etype}}
        if code:
            self.body["error"]["code"] = code
            self.body["error"]["doc_url"] = DOCS + code.replace("_", "-")
        if param:
            self.body["error"]["param"] = param
        self.stored = stored
        self.headers = headers or {}


def invalid(message, code=None, param=None, status=400):
    return StripeError(status, "invalid_request_error", message, code, param)


# --------------------------------------------------------------------------
# Form decoding and parameter checks


def split_key(key):
    """'a[b][0]' -> ['a', 'b', '0']; None if the brackets are malformed."""
    m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
    if not m:
        return None
    return [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))


def decode_pairs(raw):
    """Form string -> [(key, segments or None, value)] in order."""
    out = []
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True,
                                             encoding="utf-8", errors="replace"):
        out.append((key, split_key(key), value))
    return out


def show(segs):
    return segs[0] + "".join("[%s]" % s for s in segs[1:])


def leaf_parts(node):
    """Split a node into (dict form, scalar kind or None, empty allowed)."""
    if isinstance(node, str):
        return {}, node.rstrip("?"), node.endswith("?")
    return node, node.get("t"), bool(node.get("e"))


def check_scalar(kind, value, name):
    if kind == "i" and not re.match(r"^-?[0-9]+$", value):
        raise invalid("Invalid integer: %s" % value, "parameter_invalid_integer", name)
    if kind == "b" and value not in ("true", "false"):
        raise invalid("Invalid boolean: %s" % value, None, name)
    if kind == "n":
        try:
            float(value)
        except ValueError:
            raise invalid("Invalid decimal: %s" % value, None, name) from None


def check_pair(tree, key, segs, value):
    """Raise StripeError if the parameter name or its value shape is wrong."""
    if segs is None:
        raise invalid("Received unknown parameter: %s" % key, "parameter_unknown", key)
    node, in_map = tree, False
    for i, seg in enumerate(segs):
        form, kind, _ = leaf_parts(node)
        if seg == "" and "a" not in form:
            nxt = None
        elif "a" in form and (seg == "" or seg.isdigit()):
            nxt, in_map = form["a"], False
        elif seg in form.get("p", {}):
            nxt, in_map = form["p"][seg], False
        elif "m" in form and seg != "":
            nxt, in_map = form["m"], True
        else:
            nxt = None
        if nxt is None:
            name = show(segs[:i + 1])
            raise invalid("Received unknown parameter: %s" % name, "parameter_unknown", name)
        node = nxt
    name = show(segs)
    form, kind, empty_ok = leaf_parts(node)
    if value == "":
        if empty_ok or in_map:
            return
        raise invalid("You passed an empty string for '%s'. We assume empty values are an "
                      "attempt to unset a parameter; however '%s' cannot be unset. You "
                      "should remove '%s' from your request or supply a non-empty value."
                      % (name, name, name), "parameter_invalid_empty", name)
    if kind is None:
        raise invalid("Invalid array" if "a" in form else "Invalid hash", None, name)
    check_scalar(kind, value, name)


class _Arr(dict):
    """Array under construction: index -> value."""


def build(tree, pairs):
    """Nest decoded pairs; arrays where the tree (or, off the tree, the key) says so."""
    root = {}
    for key, segs, value in pairs:
        segs = segs or [key]
        cur, node = root, tree
        for i, seg in enumerate(segs):
            form = node if isinstance(node, dict) else {}
            if isinstance(cur, _Arr):
                k = int(seg) if seg.isdigit() else len(cur)
                child = form.get("a")
            else:
                k = seg
                child = form.get("p", {}).get(seg) or form.get("m")
            if i == len(segs) - 1:
                cur[k] = value
                break
            nseg = segs[i + 1]
            indexed = nseg == "" or nseg.isdigit()
            if child is None:  # off the tree: guess from the key
                is_arr = indexed
            else:
                is_arr = indexed and isinstance(child, dict) and "a" in child
            want = _Arr if is_arr else dict
            if not isinstance(cur.get(k), want):
                cur[k] = want()
            cur, node = cur[k], child
    return finish(root)


def finish(v):
    if isinstance(v, _Arr):
        return [finish(v[k]) for k in sorted(v)]
    if isinstance(v, dict):
        return {k: finish(x) for k, x in v.items()}
    return v


def check_required(node, value, prefix, skip=()):
    form, _, _ = leaf_parts(node)
    if isinstance(value, dict):
        for r in form.get("r", []):
            if r not in value and r not in skip:
                name = "%s[%s]" % (prefix, r) if prefix else r
                raise invalid("Missing required param: %s." % name, "parameter_missing", name)
        for k, v in value.items():
            sub = form.get("p", {}).get(k, form.get("m"))
            if sub is not None:
                check_required(sub, v, "%s[%s]" % (prefix, k) if prefix else k)
    elif isinstance(value, list) and "a" in form:
        for i, v in enumerate(value):
            check_required(form["a"], v, "%s[%d]" % (prefix, i))


def check_metadata(meta, prefix):
    if not isinstance(meta, dict):
        return
    if len(meta) > 50:
        raise invalid("You can specify up to 50 keys in %s." % prefix, None, prefix)
    for k, v in meta.items():
        name = "%s[%s]" % (prefix, k)
        if len(k) > 40:
            raise invalid("Metadata keys can have up to 40 characters, but you passed in a "
                          "key that is %d characters." % len(k), None, name)
        if isinstance(v, str) and len(v) > 500:
            raise invalid("Metadata values can have up to 500 characters, but you passed in "
                          "a value that is %d characters." % len(v), None, name)


def clean_metadata(meta):
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if isinstance(v, str) and v != ""}


# --------------------------------------------------------------------------
# Customer search (docs.stripe.com/search#search-query-language, simplified)

SEARCH_TERM = re.compile(
    r"""\s*(-?)(metadata\[(?:'([^']*)'|"([^"]*)")\]|[a-z_]+)\s*([:~])\s*"""
    r"""(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([0-9.]+))\s*""")
SEARCH_FIELDS = ("email", "name", "phone", "description")


def parse_search(query):
    terms, joins, pos = [], set(), 0
    while True:
        m = SEARCH_TERM.match(query, pos)
        if not m:
            raise invalid("Invalid search query: %s" % query, None, "query")
        neg, field, mk1, mk2, op, v1, v2, v3 = m.groups()
        if field.startswith("metadata["):
            key = ("metadata", mk1 if mk1 is not None else mk2)
        elif field in SEARCH_FIELDS:
            key = (field, None)
        else:
            raise invalid("Field '%s' is an unsupported search field for resource "
                          "`customers`." % field, None, "query")
        value = v1 if v1 is not None else v2 if v2 is not None else v3
        value = re.sub(r"\\(.)", r"\1", value)
        if op == "~" and len(value) < 3:
            raise invalid("Substring search requires at least 3 characters.", None, "query")
        terms.append((bool(neg), key, op, value))
        pos = m.end()
        if pos == len(query):
            break
        j = re.match(r"(AND|OR)\s+", query[pos:])
        if not j:
            raise invalid("Invalid search query: %s" % query, None, "query")
        joins.add(j.group(1))
        pos += j.end()
    if len(joins) > 1:
        raise invalid("Search queries cannot mix AND and OR.", None, "query")
    return terms, (joins.pop() if joins else "AND")


def search_match(obj, terms, join):
    results = []
    for neg, (field, mkey), op, value in terms:
        have = (obj.get("metadata") or {}).get(mkey) if field == "metadata" else obj.get(field)
        if have is None:
            hit = False
        elif op == ":":
            hit = have == value if field == "metadata" else have.lower() == value.lower()
        else:
            hit = value.lower() in have.lower()
        results.append(hit != neg)
    return all(results) if join == "AND" else any(results)


# --------------------------------------------------------------------------
# State


class FailRule:
    """One armed failure: {"path" prefix, "method", "mode", "count", "delay",
    "should_retry", "retry_after", "message"}."""

    MODES = ("500", "503", "429", "409", "400", "slow", "reset")

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(spec) - {"path", "method", "mode", "count", "delay", "should_retry",
                               "retry_after", "message"}
        if unknown:
            raise ValueError("unknown fields: %s" % ", ".join(sorted(unknown)))
        self.path = spec.get("path", "/")
        self.method = spec.get("method")
        self.mode = str(spec.get("mode", ""))
        self.count = spec.get("count", 1)
        self.delay = spec.get("delay", 0)
        self.should_retry = spec.get("should_retry")
        self.retry_after = spec.get("retry_after")
        self.message = spec.get("message")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError("path must be a string starting with /")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError("method must be a string")
        self.method = self.method.upper() if self.method else None
        if self.mode not in self.MODES:
            raise ValueError("mode must be one of " + ", ".join(self.MODES))
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ValueError("count must be a positive integer")
        if not isinstance(self.delay, (int, float)) or isinstance(self.delay, bool) \
                or not 0 <= self.delay <= 300:
            raise ValueError("delay must be a number of seconds (0..300)")
        if self.should_retry not in (None, True, False):
            raise ValueError("should_retry must be true, false or null")
        if self.retry_after is not None and not isinstance(self.retry_after, (int, str)):
            raise ValueError("retry_after must be an integer or a string")
        if self.message is not None and not isinstance(self.message, str):
            raise ValueError("message must be a string")

    def matches(self, method, path):
        return path.startswith(self.path) and self.method in (None, method)

    def as_json(self):
        return {"path": self.path, "method": self.method, "mode": self.mode,
                "count": self.count, "delay": self.delay, "should_retry": self.should_retry,
                "retry_after": self.retry_after, "message": self.message}


class State:
    def __init__(self):
        self.lock = threading.RLock()
        self.trees = load_trees()
        self.log_file = None
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = []
            self.idem = {}          # key -> stored result
            self.in_flight = set()  # keys whose first request is executing
            self.rules = []
            self.customers = {}
            self.sessions = {}
            self.line_items = {}
            self.subscriptions = {}
            self.search_lag = 0
            self.created_at = {}    # customer id -> time.time() of creation

    def take_rule(self, method, path):
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
                    return rule
        return None

    def log_line(self, entry):
        if not self.log_file:
            return
        headers = dict(entry["headers"])
        if "authorization" in headers:
            parts = headers["authorization"].split(" ", 1)
            headers["authorization"] = parts[0] + (" " + mask_key(parts[1])
                                                   if len(parts) > 1 else "")
        line = json.dumps({"time": entry["time"], "method": entry["method"],
                           "path": entry["path"], "status": entry["status"],
                           "request_id": entry["request_id"], "fault": entry["fault"],
                           "replayed": entry["replayed"], "headers": headers})
        with self.lock:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(line + "\n")


STATE = None


# --------------------------------------------------------------------------
# Object builders


def now():
    return int(time.time())


def new_customer(params, livemode):
    c = {
        "id": "cus_" + rand_id(14),
        "object": "customer",
        "address": params.get("address") or None,
        "balance": int(params.get("balance", 0) or 0),
        "created": now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": params.get("description") or None,
        "discount": None,
        "email": params.get("email") or None,
        "invoice_prefix": params.get("invoice_prefix") or rand_id(8).upper(),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                             "footer": None, "rendering_options": None},
        "livemode": livemode,
        "metadata": clean_metadata(params.get("metadata")),
        "name": params.get("name") or None,
        "next_invoice_sequence": 1,
        "phone": params.get("phone") or None,
        "preferred_locales": params.get("preferred_locales") or [],
        "shipping": params.get("shipping") or None,
        "tax_exempt": params.get("tax_exempt") or "none",
        "test_clock": params.get("test_clock") or None,
    }
    return c


def checkout_rules(p):
    mode = p.get("mode")
    if mode is None:
        raise invalid("Missing required param: mode.", "parameter_missing", "mode")
    if mode not in ("payment", "setup", "subscription"):
        raise invalid("Invalid mode: must be one of payment, setup, or subscription", None,
                      "mode")
    if "success_url" not in p and p.get("ui_mode") not in ("embedded", "custom"):
        raise invalid("Missing required param: success_url.", "parameter_missing",
                      "success_url")
    if p.get("customer") and p.get("customer_email"):
        raise invalid("You may only specify one of these parameters: customer, "
                      "customer_email.", "parameters_exclusive", "customer_email")
    items = p.get("line_items")
    if mode in ("payment", "subscription") and not items:
        raise invalid("Missing required param: line_items.", "parameter_missing", "line_items")
    if mode == "subscription":
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict) or ("price" not in item and "price_data" not in item):
                name = "line_items[%d][price]" % i
                raise invalid("Missing required param: %s." % name, "parameter_missing", name)
    elif "subscription_data" in p:
        raise invalid("You can only specify `subscription_data` in `subscription` mode.",
                      None, "subscription_data")
    sd = p.get("subscription_data")
    if isinstance(sd, dict) and isinstance(sd.get("trial_period_days"), str) \
            and sd["trial_period_days"] != "" and int(sd["trial_period_days"]) < 1:
        raise invalid("This value must be greater than or equal to 1.", None,
                      "subscription_data[trial_period_days]")
    if isinstance(sd, dict):
        check_metadata(sd.get("metadata"), "subscription_data[metadata]")


def new_session(p, livemode):
    sid = ("cs_live_" if livemode else "cs_test_") + "a1" + rand_id(56)
    mode = p["mode"]
    created = now()
    email = p.get("customer_email") or None
    s = {
        "id": sid,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": p["allow_promotion_codes"] == "true"
        if "allow_promotion_codes" in p else None,
        "amount_subtotal": None,
        "amount_total": None,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None,
                          "status": None},
        "billing_address_collection": p.get("billing_address_collection") or None,
        "cancel_url": p.get("cancel_url") or None,
        "client_reference_id": p.get("client_reference_id") or None,
        "client_secret": None,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": p.get("currency") or None,
        "custom_fields": [],
        "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                        "terms_of_service_acceptance": None},
        "customer": p.get("customer") or None,
        "customer_creation": p.get("customer_creation") or
        ("if_required" if mode == "payment" and not p.get("customer") else None),
        "customer_details": {"address": None, "email": email, "name": None, "phone": None,
                             "tax_exempt": "none", "tax_ids": None} if email else None,
        "customer_email": email,
        "discounts": [],
        "expires_at": int(p["expires_at"]) if p.get("expires_at") else created + 86400,
        "invoice": None,
        "invoice_creation": None,
        "livemode": livemode,
        "locale": p.get("locale") or None,
        "metadata": clean_metadata(p.get("metadata")),
        "mode": mode,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": p.get("payment_method_collection") or
        ("always" if mode == "subscription" else None),
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": p.get("payment_method_types") or ["card"],
        "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": p.get("submit_type") or None,
        "subscription": None,
        "success_url": p.get("success_url") or None,
        "total_details": None,
        "ui_mode": "hosted",
        "url": "https://checkout.stripe.com/c/pay/" + sid,
    }
    items = []
    for item in p.get("line_items") or []:
        if isinstance(item, dict):
            q = item.get("quantity")
            items.append({
                "id": "li_" + rand_id(24), "object": "item", "description": None,
                "price": {"id": item.get("price"), "object": "price"}
                if item.get("price") else None,
                "quantity": int(q) if q and q.lstrip("-").isdigit() else None,
            })
    return s, items


def new_portal_session(p, livemode):
    return {
        "id": "bps_" + rand_id(24),
        "object": "billing_portal.session",
        "configuration": p.get("configuration") or "bpc_" + rand_id(24),
        "created": now(),
        "customer": p["customer"],
        "flow": None,
        "livemode": livemode,
        "locale": p.get("locale") or None,
        "on_behalf_of": p.get("on_behalf_of") or None,
        "return_url": p.get("return_url") or None,
        "url": "https://billing.stripe.com/p/session/%s_%s"
               % ("live" if livemode else "test", rand_id(32)),
    }


# --------------------------------------------------------------------------
# API operations: (method, path regex, operation key, handler)


def expand(obj, params, session_items=None):
    obj = copy.deepcopy(obj)
    for path in params.get("expand") or []:
        if not isinstance(path, str):
            continue
        if path == "line_items" and session_items is not None:
            obj["line_items"] = {"object": "list", "data": copy.deepcopy(session_items),
                                 "has_more": False,
                                 "url": "/v1/checkout/sessions/%s/line_items" % obj["id"]}
            continue
        val = obj.get(path)
        if isinstance(val, str):
            for store in (STATE.customers, STATE.subscriptions, STATE.sessions):
                if val in store:
                    obj[path] = copy.deepcopy(store[val])
                    break
    return obj


def missing(kind, oid):
    return StripeError(404, "invalid_request_error", "No such %s: '%s'" % (kind, oid),
                       "resource_missing", "id", stored=True)


def op_create_customer(ctx, p):
    check_metadata(p.get("metadata"), "metadata")
    c = new_customer(p, ctx["livemode"])
    with STATE.lock:
        STATE.customers[c["id"]] = c
        STATE.created_at[c["id"]] = time.time()  # search sees it STATE.search_lag s later
    return 200, expand(c, p)


def op_get_customer(ctx, p, cid):
    with STATE.lock:
        c = STATE.customers.get(cid)
        if c is None:
            raise missing("customer", cid)
        return 200, expand(c, p)


def op_search_customers(ctx, p):
    terms, join = parse_search(p.get("query", ""))
    limit = int(p.get("limit") or 10)
    if not 1 <= limit <= 100:
        raise invalid("This value must be between 1 and 100.", None, "limit")
    with STATE.lock:
        indexed = time.time() - STATE.search_lag
        found = [c for c in STATE.customers.values()
                 if STATE.created_at.get(c["id"], 0) <= indexed and
                 search_match(c, terms, join)]
        found.sort(key=lambda c: c["created"], reverse=True)
        data = [expand(c, {}) for c in found[:limit]]
    return 200, {"object": "search_result", "data": data, "has_more": len(found) > limit,
                 "next_page": None, "url": "/v1/customers/search"}


def op_create_session(ctx, p):
    checkout_rules(p)
    check_metadata(p.get("metadata"), "metadata")
    s, items = new_session(p, ctx["livemode"])
    with STATE.lock:
        STATE.sessions[s["id"]] = s
        STATE.line_items[s["id"]] = items
    return 200, expand(s, p, items)


def op_get_session(ctx, p, sid):
    with STATE.lock:
        s = STATE.sessions.get(sid)
        if s is None:
            raise missing("checkout.session", sid)
        return 200, expand(s, p, STATE.line_items.get(sid, []))


def op_expire_session(ctx, p, sid):
    with STATE.lock:
        s = STATE.sessions.get(sid)
        if s is None:
            raise missing("checkout.session", sid)
        if s["status"] != "open":
            raise invalid("Only Checkout Sessions with a status in [\"open\"] can be expired. "
                          "This Checkout Session has a status of \"%s\"." % s["status"])
        s["status"] = "expired"
        return 200, expand(s, p, STATE.line_items.get(sid, []))


def op_create_portal(ctx, p):
    return 200, expand(new_portal_session(p, ctx["livemode"]), p)


def op_get_subscription(ctx, p, sub_id):
    with STATE.lock:
        s = STATE.subscriptions.get(sub_id)
        if s is None:
            raise missing("subscription", sub_id)
        return 200, expand(s, p)


ROUTES = [
    ("POST", r"/v1/customers", "POST /v1/customers", op_create_customer),
    ("GET", r"/v1/customers/search", "GET /v1/customers/search", op_search_customers),
    ("GET", r"/v1/customers/([^/]+)", "GET /v1/customers/{customer}", op_get_customer),
    ("POST", r"/v1/checkout/sessions", "POST /v1/checkout/sessions", op_create_session),
    ("GET", r"/v1/checkout/sessions/([^/]+)", "GET /v1/checkout/sessions/{session}",
     op_get_session),
    ("POST", r"/v1/checkout/sessions/([^/]+)/expire",
     "POST /v1/checkout/sessions/{session}/expire", op_expire_session),
    ("POST", r"/v1/billing_portal/sessions", "POST /v1/billing_portal/sessions",
     op_create_portal),
    ("GET", r"/v1/subscriptions/([^/]+)", "GET /v1/subscriptions/{subscription_exposed_id}",
     op_get_subscription),
]
ROUTES = [(m, re.compile("^" + r + "/?$"), k, h) for m, r, k, h in ROUTES]


def route(method, path):
    for m, rx, key, handler in ROUTES:
        match = rx.match(path)
        if match and m == method:
            return key, handler, [urllib.parse.unquote(g) for g in match.groups()]
    return None


# --------------------------------------------------------------------------
# Canned failures


def injected_error(rule, idem_key):
    mode = rule.mode
    if mode == "500":
        err = StripeError(500, "api_error", "Sorry, something went wrong. We've already been "
                          "notified of the problem, but if you need any help, you can reach "
                          "us at https://support.stripe.com/contact.")
    elif mode == "503":
        err = StripeError(503, "api_error", "Stripe is temporarily unavailable. Please try "
                          "again later.")
    elif mode == "429":
        # What Stripe sends today: type invalid_request_error, code rate_limit
        err = StripeError(429, "invalid_request_error", "Request rate limit exceeded. Learn "
                          "more about rate limits here https://stripe.com/docs/rate-limits.",
                          "rate_limit")
    elif mode == "409":
        err = StripeError(409, "idempotency_error", "There is currently another in-progress "
                          "request using this Idempotency-Key (that probably means you "
                          "submitted twice, and the other request is still going through): "
                          "%s. Please try again later." % (idem_key or "-"),
                          "idempotency_key_in_use")
    else:  # "400"
        err = invalid("This is an injected test failure from the fake Stripe server; "
                      "nothing is wrong with your request.", None, None)
    if rule.message is not None:
        err.body["error"]["message"] = rule.message
    return err


# --------------------------------------------------------------------------
# HTTP


class Reset(Exception):
    """Close the connection with a TCP RST instead of answering."""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-stripe/1.0"
    timeout = 120  # idle keep-alive connections

    def log_message(self, fmt, *args):  # quiet: stdout/stderr may be unread pipes
        pass

    def version_string(self):
        return self.server_version

    def handle_expect_100(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = 0
        if n > MAX_BODY:
            return True  # no 100 Continue: do_* answers 413 without reading
        return super().handle_expect_100()

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    # -- plumbing --

    def read_body(self):
        """Return the body as bytes, or None after answering 4xx (connection closed)."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    return self.early_error(400, "Malformed chunked body.")
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                if len(data) + size > MAX_BODY:
                    return self.early_error(413, "Request body too large.")
                data += self.rfile.read(size)
                self.rfile.readline(8)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            return self.early_error(400, "Invalid Content-Length.")
        if n > MAX_BODY:
            if n <= DRAIN_MAX and "100-continue" not in self.headers.get("Expect", "").lower():
                left = n  # read it first, so the client is not cut off mid-send
                while left > 0:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)
            return self.early_error(413, "Request body too large (limit %d bytes)." % MAX_BODY)
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            return None
        return data

    def early_error(self, status, message):
        self.close_connection = True
        body = {"error": {"type": "invalid_request_error", "message": message}}
        self.send_json(status, body, {"Connection": "close"})
        return None

    def send_json(self, status, obj, headers=None):
        data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_rst(self):
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.wfile.flush()
        except OSError:
            pass
        # the fd (and so the RST) goes when the socket and both files are closed
        for f in (self.rfile, self.wfile, self.connection):
            try:
                f.close()
            except OSError:
                pass
        self.wfile = io.BytesIO()  # for the flush/close the base class still does

    def dispatch(self, method):
        try:
            url = urllib.parse.urlsplit(self.path)
            path, query = url.path, url.query
            body = self.read_body()
            if body is None:
                return
            if path == "/_fake" or path.startswith("/_fake/"):
                self.control(method, path, body)
            else:
                self.api(method, path, query, body)
        except OSError:  # the client went away
            self.close_connection = True

    # -- control API --

    def control(self, method, path, body):
        def reply(status, obj):
            self.send_json(status, obj)

        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError):
            return reply(400, {"error": "body is not JSON"})
        m = re.match(r"^/_fake/subscriptions/([^/]+)$", path)
        done = re.match(r"^/_fake/checkout/sessions/([^/]+)/complete$", path)
        if path == "/_fake/search-lag" and method == "PUT":
            lag = (doc or {}).get("seconds") if isinstance(doc, dict) else None
            if not isinstance(lag, (int, float)) or isinstance(lag, bool) or not 0 <= lag <= 3600:
                return reply(400, {"error": "body must be {\"seconds\": 0..3600}"})
            with STATE.lock:
                STATE.search_lag = lag
            return reply(200, {"seconds": lag})
        if done and method == "POST":
            sid = urllib.parse.unquote(done.group(1))
            with STATE.lock:
                s = STATE.sessions.get(sid)
                if s is None or s["status"] != "open":
                    return reply(409, {"error": "no open session %s" % sid})
                s["status"] = "complete"
                s["payment_status"] = "paid"
                return reply(200, copy.deepcopy(s))
        if path == "/_fake/reset" and method == "POST":
            STATE.reset()
            return reply(200, {"ok": True})
        if path == "/_fake/requests" and method == "GET":
            with STATE.lock:
                out = copy.deepcopy(STATE.requests)
            return reply(200, out)
        if path == "/_fake/fail" and method == "POST":
            try:
                rule = FailRule(doc)
            except ValueError as e:
                return reply(400, {"error": str(e)})
            with STATE.lock:
                STATE.rules.append(rule)
            return reply(200, {"ok": True, "rule": rule.as_json()})
        if path == "/_fake/fail" and method == "GET":
            with STATE.lock:
                return reply(200, [r.as_json() for r in STATE.rules])
        if path == "/_fake/in-flight" and method == "GET":
            with STATE.lock:
                return reply(200, sorted(STATE.in_flight))
        if path == "/_fake/objects" and method == "GET":
            with STATE.lock:
                return reply(200, copy.deepcopy({
                    "customers": STATE.customers, "checkout_sessions": STATE.sessions,
                    "subscriptions": STATE.subscriptions}))
        if m and method == "PUT":
            if not isinstance(doc, dict):
                return reply(400, {"error": "body must be a JSON object (a subscription)"})
            sub_id = urllib.parse.unquote(m.group(1))
            doc.setdefault("id", sub_id)
            doc.setdefault("object", "subscription")
            with STATE.lock:
                STATE.subscriptions[sub_id] = doc
            return reply(200, doc)
        if m and method == "DELETE":
            sub_id = urllib.parse.unquote(m.group(1))
            with STATE.lock:
                gone = STATE.subscriptions.pop(sub_id, None) is not None
            return reply(200 if gone else 404, {"id": sub_id, "deleted": gone})
        return reply(404, {"error": "no control endpoint %s %s" % (method, path)})

    # -- Stripe API --

    def api(self, method, path, query, body):
        req_id = "req_" + rand_id(14)
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        raw = body.decode("utf-8", errors="replace")
        entry = {"method": method, "path": path, "query": query, "headers": headers,
                 "body": raw, "params": {}, "status": None, "request_id": req_id,
                 "stripe_version": headers.get("stripe-version"),
                 "idempotency_key": headers.get("idempotency-key"),
                 "replayed": False, "fault": None, "response": None, "time": time.time()}
        with STATE.lock:
            STATE.requests.append(entry)
        out_headers = {"Request-Id": req_id,
                       "Stripe-Version": headers.get("stripe-version") or DEFAULT_API_VERSION}
        idem_key = headers.get("idempotency-key") if method == "POST" else None
        if idem_key is not None:
            out_headers["Idempotency-Key"] = idem_key

        def answer(status, obj, extra=None):
            h = dict(out_headers)
            h.update(extra or {})
            with STATE.lock:
                entry["status"] = status
                entry["response"] = copy.deepcopy(obj)
            self.send_json(status, obj, h)
            STATE.log_line(entry)

        found = route(method, path)
        op_key = found[0] if found else None
        tree = STATE.trees.get(op_key) if op_key else None
        pairs = decode_pairs(query)
        if method == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if body.strip() and ctype not in ("", "application/x-www-form-urlencoded"):
                pairs = []
            else:
                pairs = decode_pairs(raw) + pairs
        else:
            ctype = ""
        params = build(tree, pairs)
        entry["params"] = params

        try:
            # 1. authentication (before anything else, never stored)
            auth = headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                raise StripeError(
                    401, "invalid_request_error",
                    "You did not provide an API key. You need to provide your API key in the "
                    "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                    "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for "
                    "details, or we can help at https://support.stripe.com/.",
                    headers={"WWW-Authenticate": 'Bearer realm="Stripe"'})
            if not KEY_RE.match(key):
                raise StripeError(401, "invalid_request_error",
                                  "Invalid API Key provided: " + mask_key(key),
                                  headers={"WWW-Authenticate": 'Bearer realm="Stripe"'})
            ctx = {"livemode": "_live_" in key[:8]}

            # 2. injected failures (in front of the idempotency layer, never stored)
            rule = STATE.take_rule(method, path)
            extra = {}
            if rule is not None:
                entry["fault"] = rule.mode
                if rule.should_retry is not None:
                    extra["Stripe-Should-Retry"] = "true" if rule.should_retry else "false"
                if rule.retry_after is not None:
                    extra["Retry-After"] = str(rule.retry_after)
                if rule.mode == "slow":
                    pass  # sleeps in step 5, while the key is in flight
                elif rule.mode == "reset":
                    if rule.delay:
                        time.sleep(rule.delay)
                    raise Reset()
                else:
                    err = injected_error(rule, idem_key)
                    err.headers.update(extra)
                    raise err

            # 3. routing
            if found is None:
                raise invalid("Unrecognized request URL (%s: %s). Please see "
                              "https://stripe.com/docs or we can help at "
                              "https://support.stripe.com/." % (method, path), status=404)
            if method == "POST" and body.strip() and ctype not in (
                    "", "application/x-www-form-urlencoded"):
                raise invalid("Invalid request: unsupported Content-Type %s. If error "
                              "persists and you need assistance, please contact "
                              "support@stripe.com." % ctype)
            if idem_key is not None and (len(idem_key) > 255 or idem_key == ""):
                raise invalid("Idempotency keys must be between 1 and 255 characters long.",
                              None, None)

            # 4. idempotency layer
            sig = json.dumps(params, sort_keys=True)
            if idem_key is not None:
                with STATE.lock:
                    stored = STATE.idem.get(idem_key)
                    if stored is None and idem_key in STATE.in_flight:
                        raise StripeError(
                            409, "idempotency_error",
                            "There is currently another in-progress request using this "
                            "Idempotency-Key (that probably means you submitted twice, and "
                            "the other request is still going through): %s. Please try "
                            "again later." % idem_key, "idempotency_key_in_use",
                            headers={"Stripe-Should-Retry": "true"})
                    if stored is None:
                        STATE.in_flight.add(idem_key)
            if rule is not None and rule.mode == "slow":
                time.sleep(rule.delay)  # a slow Stripe: a new key stays in flight meanwhile
            if idem_key is not None:
                if stored is not None:
                    if stored["endpoint"] != (method, path):
                        raise StripeError(
                            400, "idempotency_error",
                            "Keys for idempotent requests can only be used for the same "
                            "endpoint they were first used for ('%s' vs '%s'). Try using a "
                            "key other than '%s' if you meant to execute a different request."
                            % (stored["endpoint"][1], path, idem_key))
                    if stored["sig"] != sig:
                        raise StripeError(
                            400, "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other "
                            "than '%s' if you meant to execute a different request."
                            % idem_key)
                    entry["replayed"] = True
                    h = dict(extra)
                    h.update(stored["headers"])
                    h["Idempotent-Replayed"] = "true"
                    h["Original-Request"] = stored["request_id"]
                    return answer(stored["status"], copy.deepcopy(stored["body"]), h)

            # 5. validation (not stored) and execution (stored)
            try:
                status, obj = self.execute(found, tree, pairs, params, ctx)
                if idem_key is not None:
                    self.remember(idem_key, method, path, sig, status, obj, {}, req_id)
            except StripeError as e:
                if idem_key is not None and e.stored:
                    self.remember(idem_key, method, path, sig, e.status, e.body, e.headers,
                                  req_id)
                raise
            except Exception as e:  # a bug in the fake: answer like Stripe's 500
                traceback.print_exc(file=sys.stderr)
                raise StripeError(500, "api_error", "fake_stripe internal error: %s" % e)
            finally:
                if idem_key is not None:
                    with STATE.lock:
                        STATE.in_flight.discard(idem_key)
            answer(status, obj, extra)
        except StripeError as e:
            answer(e.status, e.body, e.headers)
        except Reset:
            with STATE.lock:
                entry["status"] = None
            STATE.log_line(entry)
            self.send_rst()

    def execute(self, found, tree, pairs, params, ctx):
        op_key, handler, args = found
        for key, segs, value in pairs:
            check_pair(tree, key, segs, value)
        skip = ("success_url",) if op_key == "POST /v1/checkout/sessions" else ()
        if op_key == "POST /v1/checkout/sessions":
            checkout_rules(params)
        check_required(tree, params, "", skip)
        return handler(ctx, params, *args)

    @staticmethod
    def remember(key, method, path, sig, status, body, headers, req_id):
        with STATE.lock:
            STATE.idem[key] = {"endpoint": (method, path), "sig": sig, "status": status,
                               "body": copy.deepcopy(body), "headers": dict(headers),
                               "request_id": req_id}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class Server6(Server):
    address_family = socket.AF_INET6


def main(argv=None):
    global STATE
    ap = argparse.ArgumentParser(description="Fake Stripe API server for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", metavar="FILE", help="append one JSON line per API request")
    args = ap.parse_args(argv)

    STATE = State()
    STATE.log_file = args.log
    cls = Server6 if ":" in args.host else Server
    httpd = cls((args.host, args.port), Handler)
    host, port = httpd.server_address[:2]
    sys.stdout.write("listening on %s:%d\n" % (host, port))
    sys.stdout.flush()

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True)
    t.start()
    while not stop.wait(0.5):
        if not t.is_alive():
            break
    httpd.shutdown()
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
