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
  * Billing (docs.stripe.com/billing/subscriptions/prorations): plan changes
    prorated to the second (see plan_change()), create_prorations parks the
    proration lines until the next invoice, always_invoice (or a change of
    billing interval) invoices them at once; invoices use the customer's
    balance; payment outcome by payment_behavior and the /_fake/decline list
  * every change the API makes records an event (customer.created,
    customer.subscription.updated/deleted, invoice.created/finalized/paid/
    payment_failed, billing_portal.session.created), listed by GET /v1/events
  * lists newest first (created, then insertion order), limit 1..100 (default
    10), starting_after / ending_before, has_more
  * not modelled: webhook delivery, the 30-day window of GET /v1/events (an
    event expires on DELETE /_fake/events/{id}), test clocks, taxes,
    discounts, portal configurations (any id is accepted);
    tests/simulator.py adds hosted pages, a clock and webhook delivery on top
    of this fake (hooks: CLOCK_OFFSET, PAGE_BASES, EVENT_HOOKS, main(handler=))

Endpoints: POST /v1/customers, GET /v1/customers/{id}, GET /v1/customers/search,
POST /v1/checkout/sessions, GET /v1/checkout/sessions/{id},
POST /v1/billing_portal/sessions (customer must exist; flow_data checked: the
  flow's subscription must be the customer's and not canceled),
GET /v1/subscriptions (status: default all but canceled and incomplete_expired,
  "all", "ended" or one status; customer, price, created, current_period_*),
GET|POST|DELETE /v1/subscriptions/{id} (POST: items, proration_behavior,
  proration_date, payment_behavior, cancel_at_period_end, cancel_at, metadata,
  cancellation_details; DELETE: prorate, invoice_now),
POST /v1/invoices/create_preview (customer, subscription, subscription_details),
GET /v1/invoices/{id} (also upcoming_in_... previews), GET /v1/events,
GET /v1/events/{id}, POST /v1/checkout/sessions/{id}/expire (only an open
session: else 400), GET /v1/customers/search.

Customer search follows Stripe's query language for the forms we use
(field:'value', metadata['key']:'value', AND/OR, negation, ~) and answers
{"object":"search_result","data":[...],"has_more":...}.  Stripe's search
index is eventually consistent; PUT /_fake/search-lag makes customers
invisible to search for that many seconds after their creation.

Reference data (data/): parameter names stripe_params.json; object shapes and
the price catalogue (every price object in events/*.json) events/; portal
session shape objects/billing_portal.session.json.

Control API (no auth, JSON in and out; errors 400 {"error": "..."}):
  POST   /_fake/reset                 forget requests, keys, objects, events, failure
                                      rules and declines; prices back to the catalogue
  PUT    /_fake/search-lag            {"seconds": 0..3600}: customer search lags creation
  POST   /_fake/checkout/sessions/{id}/complete   an open session becomes complete (paid)
  GET    /_fake/requests              list of recorded API requests, oldest first
  POST   /_fake/fail                  add a failure rule: {"mode", "path" prefix (default
                                      "/"), "method", "at" (fire from the at-th matching
                                      call, default 1 = the next), "count" (calls it fires
                                      on, default 1), "delay", "should_retry",
                                      "retry_after" (Retry-After header), "message"}
                                      modes: 400 409 429 500 502 503 504 (Stripe-shaped
                                      errors, not stored under the Idempotency-Key),
                                      slow (answers after delay s), reset (TCP RST, no
                                      answer), close (FIN, no answer), reset_after (runs
                                      and stores the request, then RST), slow_after (runs
                                      the request at once, answers after delay s: an
                                      answer older than the state by then), raw (answers
                                      "status" (default 200) with "content_type" (default
                                      application/json), "headers" and the text "body"
                                      as it is, or "repeat" times; "truncate": that many
                                      bytes of it sent under the whole Content-Length,
                                      then FIN)
  GET    /_fake/fail                  list the failure rules still armed ("seen": calls)
  POST   /_fake/subscriptions         create subscriptions shaped like Stripe's: a spec or
                                      a list of specs {"customer", "price", "quantity",
                                      "status", "created", "current_period_start",
                                      "metadata", "cancel_at_period_end", "trial_end",
                                      "id", "count" (that many copies), "events" (true:
                                      record customer.subscription.created)}; unknown
                                      customers are created; answers {"data": [subs]}
  PUT    /_fake/subscriptions/{id}    store a subscription object (body) as it is
  DELETE /_fake/subscriptions/{id}    remove it
  PUT    /_fake/customers/{id}        create or update a customer (fields in the body)
  PUT    /_fake/prices/{id}           add a price {"unit_amount", "currency",
                                      "recurring": {"interval"}, "nickname", ...}
  POST   /_fake/events                add events (an event or a list, oldest first;
                                      id, created etc. filled in); answers {"ids": [...]}
  DELETE /_fake/events/{id}           the event expires (Stripe's 30 days): no longer
                                      listed, retrieved or accepted as a list cursor
  POST   /_fake/decline               {"customer", "decline_code"}: that customer's
                                      payments fail until DELETE /_fake/decline/{customer}
  GET    /_fake/objects               customers, checkout_sessions, subscriptions,
                                      billing_portal_sessions, invoices, invoice_previews,
                                      pending_invoice_items, prices, declines, events
  GET    /_fake/in-flight             idempotency keys whose first request is executing
  PUT    /_fake/search-lag            {"seconds": N}: new customers unsearchable for N s
  POST   /_fake/checkout/sessions/{id}/complete   the customer paid: status complete
"""
import argparse
import calendar
import copy
import datetime
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
DATA = os.path.join(HERE, "data")
PARAMS_FILE = os.path.join(DATA, "stripe_params.json")

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
    """One armed failure: {"path" prefix, "method", "mode", "count", "at", "delay",
    "should_retry", "retry_after", "message"}.  It fires on the at-th API call
    matching method and path prefix (counted from when it was armed; default
    1 = the next one) and on the count-1 matching calls after that."""

    MODES = ("500", "502", "503", "504", "429", "409", "400", "slow", "reset", "close",
             "reset_after", "slow_after", "raw")

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(spec) - {"path", "method", "mode", "count", "at", "delay",
                               "should_retry", "retry_after", "message", "status",
                               "content_type", "headers", "body", "repeat", "truncate"}
        if unknown:
            raise ValueError("unknown fields: %s" % ", ".join(sorted(unknown)))
        self.path = spec.get("path", "/")
        self.method = spec.get("method")
        self.mode = str(spec.get("mode", ""))
        self.count = spec.get("count", 1)
        self.at = spec.get("at", 1)
        self.seen = 0  # matching calls so far
        self.delay = spec.get("delay", 0)
        self.should_retry = spec.get("should_retry")
        self.retry_after = spec.get("retry_after")
        self.message = spec.get("message")
        # raw mode's answer
        self.status = spec.get("status", 200)
        self.content_type = spec.get("content_type", "application/json")
        self.headers = spec.get("headers") or {}
        self.body = spec.get("body", "")
        self.repeat = spec.get("repeat", 1)
        self.truncate = spec.get("truncate")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError("path must be a string starting with /")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError("method must be a string")
        self.method = self.method.upper() if self.method else None
        if self.mode not in self.MODES:
            raise ValueError("mode must be one of " + ", ".join(self.MODES))
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ValueError("count must be a positive integer")
        if not isinstance(self.at, int) or isinstance(self.at, bool) or self.at < 1:
            raise ValueError("at must be a positive integer (1 = the next matching call)")
        if not isinstance(self.delay, (int, float)) or isinstance(self.delay, bool) \
                or not 0 <= self.delay <= 300:
            raise ValueError("delay must be a number of seconds (0..300)")
        if self.should_retry not in (None, True, False):
            raise ValueError("should_retry must be true, false or null")
        if self.retry_after is not None and not isinstance(self.retry_after, (int, str)):
            raise ValueError("retry_after must be an integer or a string")
        if self.message is not None and not isinstance(self.message, str):
            raise ValueError("message must be a string")
        if not isinstance(self.status, int) or isinstance(self.status, bool) \
                or not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status (100..599)")
        if self.content_type is not None and not isinstance(self.content_type, str):
            raise ValueError("content_type must be a string or null (no header)")
        if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()):
            raise ValueError("headers must be an object of strings")
        if not isinstance(self.body, str):
            raise ValueError("body must be a string")
        if not isinstance(self.repeat, int) or isinstance(self.repeat, bool) \
                or not 1 <= self.repeat <= 64 * 1024 * 1024:
            raise ValueError("repeat must be a positive integer")
        if self.truncate is not None and (not isinstance(self.truncate, int) or isinstance(
                self.truncate, bool) or self.truncate < 0):
            raise ValueError("truncate must be a number of bytes")

    def matches(self, method, path):
        return path.startswith(self.path) and self.method in (None, method)

    def as_json(self):
        return {"path": self.path, "method": self.method, "mode": self.mode,
                "count": self.count, "at": self.at, "seen": self.seen, "delay": self.delay,
                "should_retry": self.should_retry, "retry_after": self.retry_after,
                "message": self.message, "status": self.status,
                "content_type": self.content_type, "headers": self.headers,
                "body": self.body[:200], "repeat": self.repeat, "truncate": self.truncate}


class State:
    def __init__(self):
        self.lock = threading.RLock()
        self.trees = load_trees()
        self.refs = load_reference_objects()
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
            self.session_params = {}  # create parameters (subscription_data), for the simulator
            self.subscriptions = {}
            self.portal_sessions = {}
            self.invoices = {}
            self.previews = {}        # create_preview answers, by their upcoming_in_ id
            self.pending_items = []   # proration lines waiting for the next invoice
            self.events = []          # oldest first
            self.event_ids = {}
            self.prices = copy.deepcopy(self.refs["prices"])
            self.declines = {}        # customer id -> decline_code
            self.order = {}           # object id -> insertion number (list order)
            self.counter = 0
            self.search_lag = 0
            self.created_at = {}    # customer id -> time.time() of creation

    def placed(self, oid):
        """Insertion number of an object: breaks ties between equal created times."""
        if oid not in self.order:
            self.counter += 1
            self.order[oid] = self.counter
        return self.order[oid]

    def take_rule(self, method, path):
        """The rule that fires on this call, if any.  Every matching rule counts
        the call, so "at" means the at-th matching call whatever else fired."""
        fired = None
        with self.lock:
            for rule in list(self.rules):
                if not rule.matches(method, path):
                    continue
                rule.seen += 1
                if fired is None and rule.seen >= rule.at:
                    fired = rule
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
        return fired

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

# Hooks for tests/simulator.py (which runs this fake with pages, a clock and
# webhook delivery): seconds the simulated clock is ahead of the real one;
# where the hosted Checkout and Billing Portal pages live; functions called
# with every event stored (under STATE.lock).
CLOCK_OFFSET = 0
PAGE_BASES = {"checkout": "https://checkout.stripe.com", "portal": "https://billing.stripe.com"}
EVENT_HOOKS = []


# --------------------------------------------------------------------------
# Object builders


def now():
    return int(time.time()) + CLOCK_OFFSET


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
        "url": PAGE_BASES["checkout"] + "/c/pay/" + sid,
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


# --------------------------------------------------------------------------
# Reference objects: new objects copy the shapes of the examples in data/

# Product names as the events' invoice lines print them ("1 × Pro (at $15.00 / month)").
PRODUCT_NAMES = {"prod_TPr0dPr0Xk2mQa": "Pro", "prod_TPr0dT3amZr8Wd": "Team"}

# Enum values, copied from the OpenAPI subset (data/stripe_params.json keeps names only).
PRORATION_BEHAVIORS = ("always_invoice", "create_prorations", "none")
PAYMENT_BEHAVIORS = ("allow_incomplete", "default_incomplete", "error_if_incomplete",
                     "pending_if_incomplete")
FEEDBACK = ("", "customer_service", "low_quality", "missing_features", "other",
            "switched_service", "too_complex", "too_expensive", "unused")
PORTAL_FLOWS = ("payment_method_update", "subscription_cancel", "subscription_update",
                "subscription_update_confirm")
AFTER_COMPLETION = ("hosted_confirmation", "portal_homepage", "redirect")
PORTAL_LOCALES = (
    "auto", "bg", "cs", "da", "de", "el", "en", "en-AU", "en-CA", "en-GB", "en-IE", "en-IN",
    "en-NZ", "en-SG", "es", "es-419", "et", "fi", "fil", "fr", "fr-CA", "hr", "hu", "id", "it",
    "ja", "ko", "lt", "lv", "ms", "mt", "nb", "nl", "pl", "pt", "pt-BR", "ro", "ru", "sk", "sl",
    "sv", "th", "tr", "vi", "zh", "zh-HK", "zh-TW")
SUB_STATUSES = ("active", "canceled", "incomplete", "incomplete_expired", "past_due",
                "paused", "trialing", "unpaid")
# What a payment_behavior=pending_if_incomplete update may carry
# (docs.stripe.com/billing/subscriptions/pending-updates-reference#supported-attributes).
PENDING_UPDATE_PARAMS = {"add_invoice_items", "billing_cycle_anchor", "expand", "items",
                         "payment_behavior", "proration_behavior", "proration_date",
                         "trial_end", "trial_from_plan"}


def load_reference_objects():
    """Templates: an active subscription and a paid invoice from data/events, the
    portal session fixture, and the price catalogue = every price in the events."""
    ev_dir = os.path.join(DATA, "events")
    events, prices = {}, {}

    def walk(o):
        if isinstance(o, dict):
            if o.get("object") == "price" and isinstance(o.get("unit_amount"), int):
                prices[o["id"]] = o
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for name in sorted(os.listdir(ev_dir)):
        if name.endswith(".json") and name != "index.json":
            with open(os.path.join(ev_dir, name), encoding="utf-8") as f:
                events[name] = json.load(f)
            walk(events[name])
    with open(os.path.join(DATA, "objects", "billing_portal.session.json"),
              encoding="utf-8") as f:
        portal = json.load(f)
    return {"subscription": events["customer.subscription.updated.json"]["data"]["object"],
            "invoice": events["invoice.paid.json"]["data"]["object"],
            "portal_session": portal, "prices": prices}


def join_or(values):
    values = list(values)
    return ", ".join(values[:-1]) + ", or " + values[-1] if len(values) > 2 \
        else " or ".join(values)


def check_enum(params, key, allowed, name=None):
    v = params.get(key) if isinstance(params, dict) else None
    if v is not None and v not in allowed:
        name = name or key
        raise invalid("Invalid %s: must be one of %s" % (name, join_or(a for a in allowed if a)),
                      None, name)


def exclusive(*names):
    return invalid("You may only specify one of these parameters: %s." % ", ".join(names),
                   "parameters_exclusive", names[-1])


def cus_of(obj):
    c = obj.get("customer")
    return c.get("id") if isinstance(c, dict) else c


# --------------------------------------------------------------------------
# Billing arithmetic


def add_interval(ts, interval, count=1):
    """ts plus count intervals; months and years keep the day of month (clamped to
    the month's length, as Stripe does for an anchor on the 29th-31st)."""
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    months = count * (12 if interval == "year" else 1)
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    m = d.month - 1 + months
    y, m = d.year + m // 12, m % 12 + 1
    return int(d.replace(year=y, month=m,
                         day=min(d.day, calendar.monthrange(y, m)[1])).timestamp())


def next_period_end(anchor, after, interval, count=1):
    """First anchor + k*interval (k >= 1) later than after."""
    k = 1
    while True:
        end = add_interval(anchor, interval, k * count)
        if end > after:
            return end
        k += 1


def prorate(amount, remaining, period):
    """Stripe's proration of amount for remaining of period seconds
    (docs.stripe.com/billing/subscriptions/prorations: "calculated down to the
    second" from the period's start and end): round(amount * remaining / period).
    Integer arithmetic, halves rounded away from zero (Stripe does not say how it
    rounds halves; a cent either way)."""
    if period <= 0:
        return 0
    remaining = max(0, min(remaining, period))
    v = (abs(amount) * remaining * 2 + period) // (2 * period)
    return v if amount >= 0 else -v


def money(amount, currency):
    sign = "-" if amount < 0 else ""
    v = "%.2f" % (abs(amount) / 100)
    sym = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency)
    return sign + (sym + v if sym else v + " " + (currency or "").upper())


def day_of(ts):
    return time.strftime("%d %b %Y", time.gmtime(ts))  # Stripe: "after 03 Mar 2017"


def get_price(pid, param):
    with STATE.lock:
        pr = STATE.prices.get(pid)
    if pr is None:
        raise invalid("No such price: '%s'" % pid, "resource_missing", param)
    return pr


def plan_of(price):
    """The legacy plan object Stripe still puts next to an item's price."""
    r = price.get("recurring") or {}
    amount = price.get("unit_amount")
    return {"id": price["id"], "object": "plan", "active": price.get("active", True),
            "amount": amount,
            "amount_decimal": price.get("unit_amount_decimal") or str(amount),
            "billing_scheme": price.get("billing_scheme", "per_unit"),
            "created": price.get("created"), "currency": price.get("currency"),
            "interval": r.get("interval"), "interval_count": r.get("interval_count", 1),
            "livemode": price.get("livemode", False), "metadata": price.get("metadata", {}),
            "meter": r.get("meter"), "nickname": price.get("nickname"),
            "product": price.get("product"), "tiers_mode": price.get("tiers_mode"),
            "transform_usage": None, "trial_period_days": r.get("trial_period_days"),
            "usage_type": r.get("usage_type", "licensed")}


def product_name(price):
    return PRODUCT_NAMES.get(price.get("product")) or price.get("nickname") \
        or price.get("product") or price["id"]


def sub_items(sub):
    items = sub.get("items")
    return (items.get("data") if isinstance(items, dict) else None) or []


def item_period(sub, item):
    start = item.get("current_period_start", sub.get("current_period_start"))
    end = item.get("current_period_end", sub.get("current_period_end"))
    if not isinstance(start, int) or not isinstance(end, int) or end <= start:
        raise invalid("fake_stripe: subscription %s has no current period (store "
                      "items.data[].current_period_start/end)" % sub.get("id"))
    return start, end


def item_price(sub, item):
    pr = item.get("price")
    if isinstance(pr, str):
        pr = STATE.prices.get(pr)
    if not isinstance(pr, dict) or not isinstance(pr.get("unit_amount"), int) \
            or not (pr.get("recurring") or {}).get("interval"):
        raise invalid("fake_stripe: item %s of subscription %s has no price with unit_amount "
                      "and recurring.interval" % (item.get("id"), sub.get("id")))
    return pr


def interval_of(price):
    r = price["recurring"]
    return r["interval"], r.get("interval_count", 1)


def new_item(price, qty, sub_id, created, start, end):
    it = copy.deepcopy(STATE.refs["subscription"]["items"]["data"][0])
    it.update(id="si_" + rand_id(14), billing_thresholds=None, created=created,
              current_period_end=end, current_period_start=start, discounts=[], metadata={},
              plan=plan_of(price), price=copy.deepcopy(price), quantity=qty,
              subscription=sub_id, tax_rates=[])
    return it


def invoice_line(sub, item_id, price, qty, amount, start, end, proration, description):
    ln = copy.deepcopy(STATE.refs["invoice"]["lines"]["data"][0])
    ln.update(id="il_" + rand_id(24), amount=amount, currency=price.get("currency"),
              description=description, discount_amounts=[], discounts=[], invoice=None,
              livemode=sub.get("livemode", False),
              metadata=dict(sub.get("metadata") or {}),
              parent={"invoice_item_details": None,
                      "subscription_item_details": {
                          "invoice_item": "ii_" + rand_id(24) if proration else None,
                          "proration": proration,
                          "proration_details": {"credited_items": None},
                          "subscription": sub["id"], "subscription_item": item_id},
                      "type": "subscription_item_details"},
              period={"end": end, "start": start},
              pricing={"price_details": {"price": price["id"],
                                         "product": price.get("product")},
                       "type": "price_details",
                       "unit_amount_decimal": price.get("unit_amount_decimal")
                       or str(price["unit_amount"])},
              quantity=qty, subscription=sub["id"], subtotal=amount, taxes=[])
    return ln


def qty_label(qty, price):
    name = product_name(price)
    return name if qty == 1 else "%d × %s" % (qty, name)


def renewal_line(sub, item, price, start, end):
    qty = item.get("quantity", 1)
    r = price["recurring"]
    desc = "%d × %s (at %s / %s)" % (qty, product_name(price),
                                    money(price["unit_amount"], price.get("currency")),
                                    r["interval"])
    return invoice_line(sub, item["id"], price, qty, price["unit_amount"] * qty, start, end,
                        False, desc)


def proration_when(sub, value, param):
    """The proration instant: proration_date if given (within the current period),
    else now, kept inside the period."""
    items = sub_items(sub)
    if not items:
        return now() if value in (None, "") else int(value)
    start, end = item_period(sub, items[0])
    if value in (None, ""):
        return max(start, min(now(), end))
    when = int(value)
    if not start <= when <= end:
        raise invalid("The proration_date must be within the subscription's current billing "
                      "period (%d to %d)." % (start, end), None, param)
    return when


def plan_change(sub, wanted, when, behavior, prefix):
    """Apply items[i][id|price|quantity|deleted] to a copy of sub's items.

    Returns (items, lines, period): the new item list, the proration lines, and
    the new (start, end) when the billing interval changes (Stripe then restarts
    the cycle at the change and bills the new period at once) or None.

    Stripe's proration (docs.stripe.com/billing/subscriptions/prorations, "How
    prorations work": upgrading from 10 USD to 20 USD halfway through the month
    gives -5 USD "unused time" and +10 USD "remaining time"):
      period    = current_period_end - current_period_start
      remaining = current_period_end - proration_date
      credit for the old price = -round(old_unit_amount * old_quantity * remaining / period)
      charge for the new price = +round(new_unit_amount * new_quantity * remaining / period)
    one pair per changed item (price or quantity), none with proration_behavior=none
    or during a trial.  Interval change: credit as above, charge = the whole new
    period's amount, new period = [proration_date, proration_date + interval)."""
    old = sub_items(sub)
    items = copy.deepcopy(old)
    by_id = {it["id"]: it for it in items}
    deleted = set()
    t = now()
    for i, w in enumerate(wanted):
        name = "%s[%d]" % (prefix, i)
        if not isinstance(w, dict):
            raise invalid("Invalid hash", None, name)
        if "price_data" in w:
            raise invalid("fake_stripe: price_data is not modelled; pass a price id", None,
                          name + "[price_data]")
        qty = int(w["quantity"]) if w.get("quantity") not in (None, "") else None
        if qty is not None and qty < 0:
            raise invalid("This value must be greater than or equal to 0.", None,
                          name + "[quantity]")
        if w.get("id"):
            it = by_id.get(w["id"])
            if it is None:
                with STATE.lock:
                    owner = next((s["id"] for s in STATE.subscriptions.values()
                                  if any(x.get("id") == w["id"] for x in sub_items(s))), None)
                if owner:
                    raise invalid("The subscription item %s does not belong to subscription "
                                  "%s." % (w["id"], sub["id"]), None, name + "[id]")
                raise invalid("No such subscription_item: '%s'" % w["id"], "resource_missing",
                              name + "[id]")
            if w.get("deleted") == "true":
                deleted.add(it["id"])
                continue
            if w.get("price"):
                pr = get_price(w["price"], name + "[price]")
                it["price"], it["plan"] = copy.deepcopy(pr), plan_of(pr)
            if qty is not None:
                it["quantity"] = qty
        else:
            if not w.get("price"):
                raise invalid("Missing required param: %s[price]." % name, "parameter_missing",
                              name + "[price]")
            pr = get_price(w["price"], name + "[price]")
            start, end = item_period(sub, old[0]) if old else \
                (when, add_interval(when, *interval_of(pr)))
            it = new_item(pr, 1 if qty is None else qty, sub["id"], t, start, end)
            items.append(it)
            by_id[it["id"]] = it
    items = [it for it in items if it["id"] not in deleted]
    if not items:
        raise invalid("A subscription needs at least one item; cancel it instead.", None,
                      prefix)
    prices = {it["id"]: item_price(sub, it) for it in items}
    if len({interval_of(p) for p in prices.values()}) > 1:
        raise invalid("Currency and interval fields must match across all plans on this "
                      "subscription. Found mismatch in interval field.", None, prefix)
    if len({p.get("currency") for p in prices.values()}) > 1:
        raise invalid("Currency and interval fields must match across all plans on this "
                      "subscription. Found mismatch in currency field.", None, prefix)

    old_by_id = {it["id"]: it for it in old}

    def changed(o):  # an old item that is deleted or has another price or quantity now
        n = None if o["id"] in deleted else by_id[o["id"]]
        return n is None or item_price(sub, o)["id"] != prices[n["id"]]["id"] \
            or o.get("quantity", 1) != n.get("quantity", 1)

    gone = [o for o in old if changed(o)]
    fresh = [n for n in items if n["id"] not in old_by_id or changed(old_by_id[n["id"]])]
    new_interval = interval_of(prices[items[0]["id"]])
    old_interval = interval_of(item_price(sub, old[0])) if old else new_interval
    reset = bool(old) and new_interval != old_interval
    lines, period = [], None
    credit_all = behavior != "none" and sub.get("status") != "trialing"
    if reset:
        period = (when, add_interval(when, *new_interval))
        gone = old
    for o in gone if credit_all else []:
        pr = item_price(sub, o)
        start, end = item_period(sub, o)
        qty = o.get("quantity", 1)
        lines.append(invoice_line(
            sub, o["id"], pr, qty, -prorate(pr["unit_amount"] * qty, end - when, end - start),
            when, end, True, "Unused time on %s after %s" % (qty_label(qty, pr), day_of(when))))
    if reset:
        for n in items:
            n["current_period_start"], n["current_period_end"] = period
            lines.append(renewal_line(sub, n, prices[n["id"]], *period))
    elif credit_all:
        for n in fresh:
            pr = prices[n["id"]]
            start, end = item_period(sub, n)
            qty = n.get("quantity", 1)
            lines.append(invoice_line(
                sub, n["id"], pr, qty, prorate(pr["unit_amount"] * qty, end - when, end - start),
                when, end, True,
                "Remaining time on %s after %s" % (qty_label(qty, pr), day_of(when))))
    return items, lines, period


def build_invoice(cus, sub, lines, reason, period, preview=False):
    """A draft invoice (or a create_preview answer) for lines, shaped like the paid
    invoice in data/events.  Balance: a negative customer balance is credit;
    amount_due = max(0, total + starting_balance)."""
    inv = copy.deepcopy(STATE.refs["invoice"])
    iid = ("upcoming_in_" if preview else "in_") + rand_id(24)
    total = sum(ln["amount"] for ln in lines)
    balance = (cus or {}).get("balance") or 0
    due = max(0, total + balance)
    cus = cus or {}
    for ln in lines:
        ln["invoice"] = iid
        if preview:
            ln["id"] = "il_tmp_" + ln["id"][3:]
    inv.update(
        id=iid, amount_due=due, amount_overpaid=0, amount_paid=0, amount_paid_off_stripe=0,
        amount_remaining=due, attempt_count=0, attempted=False, auto_advance=not preview,
        billing_reason=reason, created=now(),
        currency=lines[0]["currency"] if lines else sub.get("currency"),
        customer=cus.get("id") or cus_of(sub),
        customer_address=cus.get("address"), customer_email=cus.get("email"),
        customer_name=cus.get("name"), customer_phone=cus.get("phone"),
        customer_shipping=cus.get("shipping"),
        customer_tax_exempt=cus.get("tax_exempt") or "none",
        default_payment_method=None, description=None, due_date=None, effective_at=None,
        ending_balance=None, hosted_invoice_url=None, invoice_pdf=None,
        lines={"object": "list", "data": lines, "has_more": False, "total_count": len(lines),
               "url": "/v1/invoices/%s/lines" % iid},
        livemode=sub.get("livemode", False), metadata={}, next_payment_attempt=None,
        number=None,
        parent={"quote_details": None,
                "subscription_details": {"metadata": dict(sub.get("metadata") or {}),
                                         "subscription": sub["id"]},
                "type": "subscription_details"},
        period_end=period[1], period_start=period[0], receipt_number=None,
        starting_balance=balance, status="draft",
        status_transitions={"finalized_at": None, "marked_uncollectible_at": None,
                            "paid_at": None, "voided_at": None},
        subtotal=total, subtotal_excluding_tax=total, total=total, total_excluding_tax=total,
        total_discount_amounts=[], total_pretax_credit_amounts=[], total_taxes=[],
        webhooks_delivered_at=None)
    return inv


def payment_outcome(inv, payment_behavior):
    """paid | failed | unattempted, for an invoice about to be finalized."""
    if inv["amount_due"] == 0:
        return "paid"
    if payment_behavior == "default_incomplete":
        return "unattempted"  # waits for the client to confirm the payment
    with STATE.lock:
        return "failed" if inv["customer"] in STATE.declines else "paid"


def card_declined(customer):
    code = STATE.declines.get(customer) or "generic_decline"
    msg = {"insufficient_funds": "Your card has insufficient funds.",
           "expired_card": "Your card has expired."}.get(code, "Your card was declined.")
    err = StripeError(402, "card_error", msg, "card_declined", None, stored=True)
    err.body["error"]["decline_code"] = code
    return err


def settle_invoice(ctx, inv, outcome):
    """Finalize inv, apply the payment outcome, store it, record its events.
    Finalizing moves the customer balance into the invoice (ending_balance = credit
    left over, which becomes the customer's balance)."""
    t = now()
    cus = STATE.customers.get(inv["customer"])
    record_event(ctx, "invoice.created", inv)
    applied = inv["total"] + inv["starting_balance"]
    seq = cus.get("next_invoice_sequence", 1) if cus else 1
    prefix = (cus or {}).get("invoice_prefix") or "FAKE"
    inv.update(status="open", number="%s-%04d" % (prefix, seq), effective_at=t,
               ending_balance=min(0, applied),
               hosted_invoice_url="https://invoice.stripe.com/i/acct_fake/test_" + inv["id"][3:],
               invoice_pdf="https://pay.stripe.com/invoice/acct_fake/test_%s/pdf" % inv["id"][3:])
    inv["status_transitions"]["finalized_at"] = t
    if cus:
        cus["next_invoice_sequence"] = seq + 1
        cus["balance"] = min(0, applied)
    record_event(ctx, "invoice.finalized", inv)
    if outcome == "paid":
        inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0,
                   attempted=True, attempt_count=1 if inv["amount_due"] else 0)
        inv["status_transitions"]["paid_at"] = t
        record_event(ctx, "invoice.paid", inv)
    elif outcome == "failed":
        inv.update(attempted=True, attempt_count=1)
        record_event(ctx, "invoice.payment_failed", inv)
    STATE.invoices[inv["id"]] = inv
    STATE.placed(inv["id"])


def take_pending(sub_id):
    """Remove and return the pending proration lines of a subscription."""
    mine = [x["line"] for x in STATE.pending_items if x["subscription"] == sub_id]
    STATE.pending_items = [x for x in STATE.pending_items if x["subscription"] != sub_id]
    return mine


def previous_attributes(old, new):
    """Stripe's data.previous_attributes: the old value of each changed field;
    for metadata and cancellation_details only the changed keys."""
    prev = {}
    for k in new:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k in ("metadata", "cancellation_details") and isinstance(a, dict) \
                and isinstance(b, dict):
            keys = list(a) + [x for x in b if x not in a]
            prev[k] = {x: copy.deepcopy(a.get(x)) for x in keys if a.get(x) != b.get(x)}
        else:
            prev[k] = copy.deepcopy(a)
    return prev


def record_event(ctx, etype, obj, previous=None):
    """Store an event as Stripe would send it for a change this fake made."""
    data = {"object": copy.deepcopy(obj)}
    if previous is not None:
        data["previous_attributes"] = previous
    ev = {"id": "evt_" + rand_id(24), "object": "event",
          "api_version": ctx.get("api_version") or DEFAULT_API_VERSION, "created": now(),
          "data": data, "livemode": bool(ctx.get("livemode")), "pending_webhooks": 1,
          "request": {"id": ctx.get("request_id"),
                      "idempotency_key": ctx.get("idempotency_key")},
          "type": etype}
    store_event(ev)
    return ev


def store_event(ev):
    with STATE.lock:
        if ev["id"] in STATE.event_ids:
            raise ValueError("duplicate event id " + ev["id"])
        STATE.events.append(ev)
        STATE.event_ids[ev["id"]] = ev
        STATE.placed(ev["id"])
        for hook in EVENT_HOOKS:
            hook(ev)


def apply_metadata(obj, meta):
    if meta == "":
        obj["metadata"] = {}
    elif isinstance(meta, dict):
        md = dict(obj.get("metadata") or {})
        for k, v in meta.items():
            if v == "":
                md.pop(k, None)
            elif isinstance(v, str):
                md[k] = v
        obj["metadata"] = md


def apply_cancellation_details(obj, cd):
    if not isinstance(cd, dict):
        return
    det = dict(obj.get("cancellation_details") or {"comment": None, "feedback": None,
                                                   "reason": None})
    for k in ("comment", "feedback"):
        if k in cd:
            det[k] = cd[k] or None
    obj["cancellation_details"] = det


def set_cancel(obj, at, t):
    """Schedule (at = time, or "period_end") or unschedule (at = None) a cancellation."""
    det = dict(obj.get("cancellation_details") or {"comment": None, "feedback": None,
                                                   "reason": None})
    if at is None:
        obj.update(cancel_at=None, cancel_at_period_end=False, canceled_at=None)
        det["reason"] = None
    else:
        end = max((item_period(obj, it)[1] for it in sub_items(obj)), default=None)
        obj["cancel_at_period_end"] = at == "period_end"
        obj["cancel_at"] = end if at == "period_end" else at
        if obj.get("canceled_at") is None:
            obj["canceled_at"] = t
        det["reason"] = "cancellation_requested"
    obj["cancellation_details"] = det


def new_portal_session(p, livemode, flow):
    s = copy.deepcopy(STATE.refs["portal_session"])
    s.update(id="bps_" + rand_id(24), configuration=p.get("configuration") or
             "bpc_" + rand_id(24), created=now(), customer=p["customer"],
             customer_account=None, flow=flow, livemode=livemode,
             locale=p.get("locale") or None, on_behalf_of=p.get("on_behalf_of") or None,
             return_url=p.get("return_url") or None,
             url=PAGE_BASES["portal"] + "/p/session/%s_%s"
                 % ("live" if livemode else "test", rand_id(32)))
    return s


def portal_flow(p):
    """Validate flow_data like Stripe and return the session's flow object."""
    fd = p.get("flow_data")
    if fd is None:
        return None
    if not isinstance(fd, dict):
        raise invalid("Invalid hash", None, "flow_data")
    ftype = fd.get("type")
    check_enum(fd, "type", PORTAL_FLOWS, "flow_data[type]")
    flow = {"after_completion": {"hosted_confirmation": None, "redirect": None,
                                 "type": "portal_homepage"},
            "subscription_cancel": None, "subscription_update": None,
            "subscription_update_confirm": None, "type": ftype}
    ac = fd.get("after_completion")
    if isinstance(ac, dict):
        check_enum(ac, "type", AFTER_COMPLETION, "flow_data[after_completion][type]")
        if ac["type"] == "redirect" and not isinstance(ac.get("redirect"), dict):
            raise invalid("Missing required param: flow_data[after_completion][redirect].",
                          "parameter_missing", "flow_data[after_completion][redirect]")
        if ac["type"] == "hosted_confirmation":
            hc = ac.get("hosted_confirmation")
            flow["after_completion"]["hosted_confirmation"] = {
                "custom_message": (hc or {}).get("custom_message") or None}
        if ac["type"] == "redirect":
            flow["after_completion"]["redirect"] = {"return_url": ac["redirect"]["return_url"]}
        flow["after_completion"]["type"] = ac["type"]
    for other in ("subscription_cancel", "subscription_update", "subscription_update_confirm"):
        if other in fd and other != ftype:
            raise invalid("You can only pass flow_data[%s] when flow_data[type] is %s."
                          % (other, other), None, "flow_data[%s]" % other)
    if ftype == "payment_method_update":
        return flow
    sp = fd.get(ftype)
    if not isinstance(sp, dict):
        raise invalid("Missing required param: flow_data[%s]." % ftype, "parameter_missing",
                      "flow_data[%s]" % ftype)
    param = "flow_data[%s][subscription]" % ftype
    with STATE.lock:
        sub = STATE.subscriptions.get(sp["subscription"])
        if sub is None:
            raise invalid("No such subscription: '%s'" % sp["subscription"],
                          "resource_missing", param)
        if cus_of(sub) != p["customer"]:
            raise invalid("The subscription %s does not belong to the customer %s."
                          % (sub["id"], p["customer"]), None, param)
        if sub.get("status") in ("canceled", "incomplete_expired"):
            raise invalid("The subscription %s has been canceled; this flow needs a "
                          "subscription that is not canceled." % sub["id"], None, param)
        if ftype == "subscription_cancel":
            flow[ftype] = {"retention": sp.get("retention"), "subscription": sub["id"]}
        elif ftype == "subscription_update":
            flow[ftype] = {"subscription": sub["id"]}
        else:
            mine = {it["id"] for it in sub_items(sub)}
            for i, it in enumerate(sp.get("items") or []):
                name = "flow_data[subscription_update_confirm][items][%d]" % i
                if it.get("id") not in mine:
                    raise invalid("No such subscription_item: '%s'" % it.get("id"),
                                  "resource_missing", name + "[id]")
                if it.get("price"):
                    get_price(it["price"], name + "[price]")
            flow[ftype] = {"discounts": sp.get("discounts"),
                           "items": [{"id": it.get("id"), "price": it.get("price"),
                                      "quantity": int(it["quantity"]) if it.get("quantity")
                                      else None} for it in sp["items"]],
                           "subscription": sub["id"]}
    return flow


def make_subscription(spec):
    """A control-API subscription from {customer, price, quantity, status, created,
    current_period_start, metadata, cancel_at_period_end, trial_end, id}: the
    active subscription of data/events with these values and fresh ids."""
    known = {"id", "customer", "price", "quantity", "status", "created",
             "current_period_start", "metadata", "cancel_at_period_end", "trial_end",
             "livemode", "events"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError("unknown fields: %s" % ", ".join(sorted(unknown)))
    pid = spec.get("price", "price_1S0lRLkdIwHu7ix8acRYSi4M")
    price = STATE.prices.get(pid)
    if price is None:
        raise ValueError("unknown price %s (add it with PUT /_fake/prices/%s)" % (pid, pid))
    status = spec.get("status", "active")
    if status not in SUB_STATUSES:
        raise ValueError("status must be one of " + ", ".join(SUB_STATUSES))
    t = int(spec.get("created", now()))
    start = int(spec.get("current_period_start", t))
    end = add_interval(start, *interval_of(price))
    livemode = bool(spec.get("livemode", False))
    cid = spec.get("customer")
    if cid is None or cid not in STATE.customers:
        c = new_customer({}, livemode)
        if cid is not None:
            c["id"] = cid
        STATE.customers[c["id"]] = c
        STATE.placed(c["id"])
        cid = c["id"]
    sid = spec.get("id") or "sub_" + rand_id(24)
    sub = copy.deepcopy(STATE.refs["subscription"])
    sub.update(id=sid, billing_cycle_anchor=start, cancel_at=None, cancel_at_period_end=False,
               canceled_at=None,
               cancellation_details={"comment": None, "feedback": None, "reason": None},
               created=t, currency=price.get("currency"), customer=cid,
               default_payment_method="pm_" + rand_id(24), discounts=[], ended_at=None,
               latest_invoice=None, livemode=livemode,
               metadata=dict(spec.get("metadata") or {}), pause_collection=None,
               pending_update=None, schedule=None, start_date=t, status=status,
               trial_end=None, trial_start=None)
    sub["items"] = {"object": "list",
                    "data": [new_item(price, int(spec.get("quantity", 1)), sid, t, start, end)],
                    "has_more": False, "total_count": 1,
                    "url": "/v1/subscription_items?subscription=" + sid}
    if status == "trialing":
        sub.update(trial_start=start, trial_end=int(spec.get("trial_end", end)))
    if status in ("canceled", "incomplete_expired"):
        sub.update(canceled_at=t, ended_at=t)
    if spec.get("cancel_at_period_end"):
        set_cancel(sub, "period_end", t)
    return sub


# --------------------------------------------------------------------------
# Lists: newest first, cursor pagination (docs.stripe.com/api/pagination)


def list_key(obj):
    return (obj.get("created") or 0, STATE.order.get(obj.get("id"), 0))


def created_match(value, cond):
    if cond is None:
        return True
    if isinstance(cond, str):
        return value == int(cond)
    if not isinstance(cond, dict):
        return True
    ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
           "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
    return all(ops[k](value, int(v)) for k, v in cond.items() if k in ops and v != "")


def list_page(p, objs, store, kind, url):
    """One page of objs (already filtered) as Stripe lists them."""
    limit = int(p["limit"]) if p.get("limit") not in (None, "") else 10
    if limit < 1:
        raise invalid("This value must be greater than or equal to 1.", None, "limit")
    if limit > 100:
        raise invalid("This value must be less than or equal to 100.", None, "limit")
    after, before = p.get("starting_after"), p.get("ending_before")
    if after and before:
        raise exclusive("ending_before", "starting_after")
    objs = sorted(objs, key=list_key, reverse=True)
    if after or before:
        cursor = after or before
        if cursor not in store:
            raise invalid("No such %s: '%s'" % (kind, cursor), "resource_missing",
                          "starting_after" if after else "ending_before")
        ck = list_key(store[cursor])
        if after:
            rest = [o for o in objs if list_key(o) < ck]
            data, more = rest[:limit], len(rest) > limit
        else:
            rest = [o for o in objs if list_key(o) > ck]
            data, more = rest[-limit:], len(rest) > limit
    else:
        data, more = objs[:limit], len(objs) > limit
    sub_expand = {"expand": [x[5:] for x in p.get("expand") or []
                             if isinstance(x, str) and x.startswith("data.")]}
    return {"object": "list", "data": [expand(o, sub_expand) for o in data],
            "has_more": more, "url": url}


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
            for store in (STATE.customers, STATE.subscriptions, STATE.sessions,
                          STATE.invoices, STATE.prices):
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
        STATE.placed(c["id"])
        record_event(ctx, "customer.created", c)
        STATE.created_at[c["id"]] = time.time()  # search sees it STATE.search_lag s later
    return 200, expand(c, p)


def op_get_customer(ctx, p, cid):
    return retrieve(p, "customer", cid, STATE.customers)


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
        STATE.session_params[s["id"]] = copy.deepcopy(p)
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
    with STATE.lock:
        if p["customer"] not in STATE.customers:
            raise invalid("No such customer: '%s'" % p["customer"], "resource_missing",
                          "customer")
    check_enum(p, "locale", PORTAL_LOCALES)
    flow = portal_flow(p)
    s = new_portal_session(p, ctx["livemode"], flow)
    with STATE.lock:
        STATE.portal_sessions[s["id"]] = s
        STATE.placed(s["id"])
        record_event(ctx, "billing_portal.session.created", s)
    return 200, expand(s, p)


def retrieve(p, kind, oid, *stores):
    """GET /v1/<kind>s/{id}: the stored object, expanded, or 404."""
    with STATE.lock:
        for store in stores:
            if oid in store:
                return 200, expand(store[oid], p)
    raise missing(kind, oid)


def op_get_subscription(ctx, p, sub_id):
    return retrieve(p, "subscription", sub_id, STATE.subscriptions)


def op_update_subscription(ctx, p, sub_id):
    with STATE.lock:
        sub = STATE.subscriptions.get(sub_id)
        if sub is None:
            raise missing("subscription", sub_id)
        if sub.get("status") in ("canceled", "incomplete_expired") and \
                set(p) - {"cancellation_details", "metadata", "expand"}:
            raise invalid("A canceled subscription can only update its cancellation_details "
                          "and metadata.")
        check_enum(p, "proration_behavior", PRORATION_BEHAVIORS)
        check_enum(p, "payment_behavior", PAYMENT_BEHAVIORS)
        check_enum(p.get("cancellation_details"), "feedback", FEEDBACK,
                   "cancellation_details[feedback]")
        check_metadata(p.get("metadata"), "metadata")
        behavior = p.get("proration_behavior") or "create_prorations"
        paying = p.get("payment_behavior") or "allow_incomplete"
        if paying == "pending_if_incomplete" and set(p) - PENDING_UPDATE_PARAMS:
            bad = sorted(set(p) - PENDING_UPDATE_PARAMS)[0]
            raise invalid("When payment_behavior is pending_if_incomplete, you can only pass "
                          "parameters supported by pending updates; %s is not one of them."
                          % bad, None, bad)
        if p.get("cancel_at") not in (None, "") and p.get("cancel_at_period_end") == "true":
            raise exclusive("cancel_at", "cancel_at_period_end")
        t = now()
        when = proration_when(sub, p.get("proration_date"), "proration_date")
        new = copy.deepcopy(sub)
        lines, period = [], None
        if p.get("items"):
            items, lines, period = plan_change(sub, p["items"], when, behavior, "items")
            new["items"] = dict(new.get("items") or {}, data=items, total_count=len(items))
            if period:
                new["billing_cycle_anchor"] = period[0]
        if p.get("cancel_at_period_end") == "true":
            set_cancel(new, "period_end", t)
        elif p.get("cancel_at_period_end") == "false" and p.get("cancel_at") in (None, ""):
            set_cancel(new, None, t)
        if p.get("cancel_at") == "":
            set_cancel(new, None, t)
        elif p.get("cancel_at") is not None:
            set_cancel(new, int(p["cancel_at"]), t)
        apply_metadata(new, p.get("metadata"))
        apply_cancellation_details(new, p.get("cancellation_details"))

        inv = outcome = None
        pending = [x["line"] for x in STATE.pending_items if x["subscription"] == sub_id]
        if period or (behavior == "always_invoice" and lines):
            # Invoiced at once: the proration lines plus what was pending.
            inv = build_invoice(STATE.customers.get(cus_of(sub)), new,
                                copy.deepcopy(pending) + lines, "subscription_update", (t, t))
            outcome = payment_outcome(inv, paying)
            if outcome == "failed" and paying == "error_if_incomplete":
                raise card_declined(inv["customer"])  # nothing changes
            if outcome == "failed" and paying == "pending_if_incomplete":
                # Stripe keeps the old items and parks the change until it is paid
                # (docs.stripe.com/billing/subscriptions/pending-updates).
                kept = copy.deepcopy(sub)
                kept["pending_update"] = {
                    "billing_cycle_anchor": period[0] if period else None,
                    "expires_at": t + 23 * 3600,
                    "subscription_items": new["items"]["data"], "trial_end": None,
                    "trial_from_plan": None}
                new = kept
            elif outcome in ("failed", "unattempted"):
                new["status"] = "past_due"
            take_pending(sub_id)
            new["latest_invoice"] = inv["id"]
        elif lines:
            STATE.pending_items.extend({"customer": cus_of(sub), "subscription": sub_id,
                                        "line": ln} for ln in lines)
        STATE.subscriptions[sub_id] = new
        prev = previous_attributes(sub, new)
        if prev:
            record_event(ctx, "customer.subscription.updated", new, prev)
        if inv is not None:
            settle_invoice(ctx, inv, outcome)
        return 200, expand(new, p)


def op_cancel_subscription(ctx, p, sub_id):
    with STATE.lock:
        sub = STATE.subscriptions.get(sub_id)
        # Stripe answers a canceled subscription like an unknown one
        # (stripe/stripe-go#1887: "akin to being deleted already").
        if sub is None or sub.get("status") in ("canceled", "incomplete_expired"):
            raise missing("subscription", sub_id)
        check_enum(p.get("cancellation_details"), "feedback", FEEDBACK,
                   "cancellation_details[feedback]")
        t = now()
        new = copy.deepcopy(sub)
        new.update(status="canceled", cancel_at=None, cancel_at_period_end=False,
                   canceled_at=t, ended_at=t)
        apply_cancellation_details(new, p.get("cancellation_details"))
        new["cancellation_details"]["reason"] = "cancellation_requested"
        credits = []
        if p.get("prorate") == "true" and sub.get("status") != "trialing":
            for it in sub_items(sub):  # unused time until the period end, as a credit
                pr = item_price(sub, it)
                start, end = item_period(sub, it)
                qty = it.get("quantity", 1)
                credits.append(invoice_line(
                    sub, it["id"], pr, qty,
                    -prorate(pr["unit_amount"] * qty, end - t, end - start), t, end, True,
                    "Unused time on %s after %s" % (qty_label(qty, pr), day_of(t))))
        # Canceling now drops pending prorations, unless invoice_now bills them
        # (the DELETE operation's description in the OpenAPI spec).
        pending = take_pending(sub_id)
        inv = None
        if p.get("invoice_now") == "true" and pending + credits:
            inv = build_invoice(STATE.customers.get(cus_of(sub)), new, pending + credits,
                                "subscription_update", (t, t))
            new["latest_invoice"] = inv["id"]
        else:
            STATE.pending_items.extend({"customer": cus_of(sub), "subscription": sub_id,
                                        "line": ln} for ln in credits)
        STATE.subscriptions[sub_id] = new
        record_event(ctx, "customer.subscription.deleted", new)
        if inv is not None:
            settle_invoice(ctx, inv, payment_outcome(inv, "allow_incomplete"))
        return 200, expand(new, p)


def op_list_subscriptions(ctx, p):
    status = p.get("status")
    check_enum(p, "status", SUB_STATUSES + ("all", "ended"))
    with STATE.lock:
        def keep(s):
            st = s.get("status")
            if status is None:
                ok = st not in ("canceled", "incomplete_expired")
            elif status == "ended":
                ok = st in ("canceled", "incomplete_expired")
            else:
                ok = status == "all" or st == status
            items = sub_items(s)
            return ok and (not p.get("customer") or cus_of(s) == p["customer"]) \
                and (not p.get("price") or any(
                    (it.get("price") or {}).get("id") == p["price"] for it in items)) \
                and (not p.get("collection_method")
                     or s.get("collection_method") == p["collection_method"]) \
                and created_match(s.get("created") or 0, p.get("created")) \
                and all(created_match(it.get(f, s.get(f)) or 0, p.get(f)) for it in items[:1]
                        for f in ("current_period_start", "current_period_end"))

        found = [s for s in STATE.subscriptions.values() if keep(s)]
        return 200, list_page(p, found, STATE.subscriptions, "subscription", "/v1/subscriptions")


def op_list_events(ctx, p):
    if p.get("type") is not None and p.get("types") is not None:
        raise exclusive("type", "types")
    types = p.get("types")
    if types is not None and len(types) > 20:
        raise invalid("You may pass at most 20 types.", None, "types")
    rx = None
    if p.get("type"):  # "customer.*": * matches any run of characters
        rx = re.compile("^" + ".*".join(re.escape(x) for x in p["type"].split("*")) + "$")
    with STATE.lock:
        found = [e for e in STATE.events
                 if (types is None or e.get("type") in types)
                 and (rx is None or rx.match(e.get("type", "")))
                 and created_match(e.get("created") or 0, p.get("created"))]
        return 200, list_page(p, found, STATE.event_ids, "event", "/v1/events")


def op_get_event(ctx, p, eid):
    return retrieve(p, "event", eid, STATE.event_ids)


def op_get_invoice(ctx, p, iid):
    return retrieve(p, "invoice", iid, STATE.invoices, STATE.previews)


def op_create_preview(ctx, p):
    """POST /v1/invoices/create_preview for a subscription (changed or not) or a new one.

    Which invoice it shows (docs.stripe.com/billing/subscriptions/prorations,
    "Preview a proration"; docs.stripe.com/api/invoices/create_preview):
      proration_behavior=always_invoice, or a change of billing interval: the
      invoice the change would create now = pending prorations + the new ones
      (with a new interval also the whole new period);
      create_prorations (default) or none: the next renewal invoice = pending
      prorations + the new ones + the next period at the new prices, from the
      current period's end (none: no proration lines).
    Proration arithmetic: see plan_change().  amount_due = max(0, total + the
    customer's balance)."""
    sd = p.get("subscription_details") or {}
    if not isinstance(sd, dict):
        raise invalid("Invalid hash", None, "subscription_details")
    for unsupported in ("schedule", "schedule_details", "invoice_items"):
        if p.get(unsupported):
            raise invalid("fake_stripe: create_preview with %s is not modelled." % unsupported,
                          None, unsupported)
    sub_id = p.get("subscription")
    if not sub_id and not sd.get("items"):
        raise invalid("You must specify one of subscription, subscription_details[items], "
                      "schedule, schedule_details[phases] or invoice_items.", None,
                      "subscription")
    check_enum(sd, "proration_behavior", PRORATION_BEHAVIORS,
               "subscription_details[proration_behavior]")
    behavior = sd.get("proration_behavior") or "create_prorations"
    with STATE.lock:
        cid = p.get("customer")
        if cid and cid not in STATE.customers:
            raise invalid("No such customer: '%s'" % cid, "resource_missing", "customer")
        if not sub_id:
            return 200, preview_new_subscription(ctx, p, sd, cid)
        sub = STATE.subscriptions.get(sub_id)
        if sub is None:
            raise invalid("No such subscription: '%s'" % sub_id, "resource_missing",
                          "subscription")
        if cid and cus_of(sub) != cid:
            raise invalid("The subscription %s does not belong to the customer %s."
                          % (sub_id, cid), None, "subscription")
        cus = STATE.customers.get(cus_of(sub))
        if sub.get("status") in ("canceled", "incomplete_expired"):
            raise invalid("No upcoming invoices for customer: %s" % cus_of(sub),
                          "invoice_upcoming_none", None)
        when = proration_when(sub, sd.get("proration_date"),
                              "subscription_details[proration_date]")
        items, lines, period = sub_items(sub), [], None
        if sd.get("items"):
            items, lines, period = plan_change(sub, sd["items"], when, behavior,
                                               "subscription_details[items]")
        pending = copy.deepcopy([x["line"] for x in STATE.pending_items
                                 if x["subscription"] == sub_id])
        t = now()
        if period or behavior == "always_invoice":
            lines = pending + lines
            span = (t, t)
        else:
            view = dict(sub, items={"data": items})
            ends = sd.get("cancel_at_period_end") == "true" or (
                sub.get("cancel_at_period_end") and sd.get("cancel_at_period_end") != "false")
            start, end = item_period(view, items[0])
            renewal = []
            if not ends:
                for it in items:
                    pr = item_price(view, it)
                    nxt = next_period_end(sub.get("billing_cycle_anchor") or start, end,
                                          *interval_of(pr))
                    renewal.append(renewal_line(sub, it, pr, end, nxt))
            lines = pending + lines + renewal
            span = (start, end)
        if not lines:
            raise invalid("No upcoming invoices for customer: %s" % cus_of(sub),
                          "invoice_upcoming_none", None)
        inv = build_invoice(cus, sub, lines, "upcoming", span, preview=True)
        if not (period or behavior == "always_invoice"):
            inv["created"], inv["next_payment_attempt"] = span[1], span[1] + 3600
        STATE.previews[inv["id"]] = inv
        return 200, expand(inv, p)


def preview_new_subscription(ctx, p, sd, cid):
    """The first invoice of a subscription that does not exist yet."""
    if not cid:
        raise invalid("Missing required param: customer.", "parameter_missing", "customer")
    t = now()
    sub = {"id": None, "customer": cid, "metadata": {}, "livemode": ctx["livemode"]}
    lines = []
    for i, w in enumerate(sd["items"]):
        name = "subscription_details[items][%d]" % i
        if not isinstance(w, dict) or not w.get("price"):
            raise invalid("Missing required param: %s[price]." % name, "parameter_missing",
                          name + "[price]")
        pr = get_price(w["price"], name + "[price]")
        qty = int(w.get("quantity") or 1)
        end = add_interval(t, *interval_of(pr))
        lines.append(renewal_line(sub, {"id": None, "quantity": qty}, pr, t, end))
    inv = build_invoice(STATE.customers.get(cid), sub, lines, "upcoming", (t, t),
                        preview=True)
    STATE.previews[inv["id"]] = inv
    return expand(inv, p)


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
    ("GET", r"/v1/subscriptions", "GET /v1/subscriptions", op_list_subscriptions),
    ("GET", r"/v1/subscriptions/([^/]+)", "GET /v1/subscriptions/{subscription_exposed_id}",
     op_get_subscription),
    ("POST", r"/v1/subscriptions/([^/]+)", "POST /v1/subscriptions/{subscription_exposed_id}",
     op_update_subscription),
    ("DELETE", r"/v1/subscriptions/([^/]+)",
     "DELETE /v1/subscriptions/{subscription_exposed_id}", op_cancel_subscription),
    ("POST", r"/v1/invoices/create_preview", "POST /v1/invoices/create_preview",
     op_create_preview),
    ("GET", r"/v1/invoices/([^/]+)", "GET /v1/invoices/{invoice}", op_get_invoice),
    ("GET", r"/v1/events", "GET /v1/events", op_list_events),
    ("GET", r"/v1/events/([^/]+)", "GET /v1/events/{id}", op_get_event),
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
    elif mode in ("502", "504"):
        err = StripeError(int(mode), "api_error", "An error occurred while connecting to "
                          "Stripe (injected %s). Please try again later." % mode)
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
# Control API (see the module doc); ValueError -> 400 {"error": message}


def control_seed_customer(cid, livemode=False):
    """A customer for an id that a stored object refers to (every subscription
    has one at Stripe)."""
    if isinstance(cid, str) and cid not in STATE.customers:
        c = new_customer({}, livemode)
        c["id"] = cid
        STATE.customers[cid] = c
        STATE.placed(cid)


def control_list(doc, what):
    items = doc if isinstance(doc, list) else [doc]
    if not items or not all(isinstance(x, dict) for x in items):
        raise ValueError("body must be a JSON object (%s) or a list of them" % what)
    return items


def control_add_subscriptions(doc):
    out = []
    with STATE.lock:
        for spec in control_list(doc, "a subscription spec"):
            spec = dict(spec)
            n = spec.pop("count", 1)
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10000:
                raise ValueError("count must be an integer 1..10000")
            if n > 1 and ("id" in spec):
                raise ValueError("id and count > 1 do not go together")
            for _ in range(n):
                sub = make_subscription(spec)
                STATE.subscriptions[sub["id"]] = sub
                STATE.placed(sub["id"])
                if spec.get("events"):
                    record_event({"livemode": sub["livemode"]},
                                 "customer.subscription.created", sub)
                out.append(copy.deepcopy(sub))
    return 200, {"object": "list", "data": out}


def control_add_events(doc):
    ids = []
    with STATE.lock:
        evs = control_list(doc, "an event")
        for ev in evs:
            if not isinstance(ev.get("type"), str) or \
                    not isinstance((ev.get("data") or {}).get("object"), dict):
                raise ValueError("an event needs a type and data.object")
        for ev in evs:
            ev = copy.deepcopy(ev)
            ev.setdefault("id", "evt_" + rand_id(24))
            ev.setdefault("object", "event")
            ev.setdefault("api_version", DEFAULT_API_VERSION)
            ev.setdefault("created", now())
            ev.setdefault("livemode", False)
            ev.setdefault("pending_webhooks", 0)
            ev.setdefault("request", {"id": None, "idempotency_key": None})
            store_event(ev)
            ids.append(ev["id"])
    return 200, {"ids": ids}


def control_put_price(pid, doc):
    if not isinstance(doc, dict) or not isinstance(doc.get("unit_amount"), int) \
            or not isinstance(doc.get("currency"), str) \
            or (doc.get("recurring") or {}).get("interval") not in ("day", "week", "month",
                                                                    "year"):
        raise ValueError("a price needs unit_amount (integer), currency and "
                         "recurring.interval (day, week, month or year)")
    # the Pro price of data/events with the given fields (recurring merged)
    price = copy.deepcopy(STATE.refs["prices"]["price_1S0lRLkdIwHu7ix8acRYSi4M"])
    price.update(lookup_key=None, metadata={}, nickname=None, product="prod_" + rand_id(14))
    price["recurring"].update(doc["recurring"])
    price.update({k: v for k, v in doc.items() if k != "recurring"})
    price.update(id=pid, unit_amount_decimal=str(price["unit_amount"]))
    with STATE.lock:
        STATE.prices[pid] = price
    return 200, price


def control_call(method, path, doc):
    parts = [urllib.parse.unquote(x) for x in path.split("/")[2:]]
    route_ = (method, parts[0] if parts else "", len(parts))
    if route_ == ("POST", "reset", 1):
        STATE.reset()
        return 200, {"ok": True}
    if route_ == ("GET", "requests", 1):
        with STATE.lock:
            return 200, copy.deepcopy(STATE.requests)
    if route_ == ("POST", "fail", 1):
        rule = FailRule(doc)
        with STATE.lock:
            STATE.rules.append(rule)
        return 200, {"ok": True, "rule": rule.as_json()}
    if route_ == ("GET", "fail", 1):
        with STATE.lock:
            return 200, [r.as_json() for r in STATE.rules]
    if route_ == ("GET", "in-flight", 1):
        with STATE.lock:
            return 200, sorted(STATE.in_flight)
    if route_ == ("GET", "objects", 1):
        with STATE.lock:
            return 200, copy.deepcopy({
                "customers": STATE.customers, "checkout_sessions": STATE.sessions,
                "subscriptions": STATE.subscriptions,
                "billing_portal_sessions": STATE.portal_sessions,
                "invoices": STATE.invoices, "invoice_previews": STATE.previews,
                "pending_invoice_items": STATE.pending_items, "prices": STATE.prices,
                "declines": STATE.declines, "events": STATE.events})
    if route_ == ("PUT", "search-lag", 1):
        lag = doc.get("seconds") if isinstance(doc, dict) else None
        if not isinstance(lag, (int, float)) or isinstance(lag, bool) or not 0 <= lag <= 3600:
            raise ValueError("body must be {\"seconds\": 0..3600}")
        with STATE.lock:
            STATE.search_lag = lag
        return 200, {"seconds": lag}
    if route_ == ("POST", "checkout", 4) and parts[1] == "sessions" and parts[3] == "complete":
        with STATE.lock:
            sess = STATE.sessions.get(parts[2])
            if sess is None or sess["status"] != "open":
                return 409, {"error": "no open session %s" % parts[2]}
            sess["status"] = "complete"
            sess["payment_status"] = "paid"
            return 200, copy.deepcopy(sess)
    if route_ == ("POST", "subscriptions", 1):
        return control_add_subscriptions(doc)
    if route_ == ("PUT", "subscriptions", 2):
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object (a subscription)")
        doc.setdefault("id", parts[1])
        doc.setdefault("object", "subscription")
        with STATE.lock:
            STATE.subscriptions[parts[1]] = doc
            STATE.placed(parts[1])
            control_seed_customer(cus_of(doc), bool(doc.get("livemode")))
        return 200, doc
    if route_ == ("DELETE", "subscriptions", 2):
        with STATE.lock:
            gone = STATE.subscriptions.pop(parts[1], None) is not None
        return (200 if gone else 404), {"id": parts[1], "deleted": gone}
    if route_ == ("PUT", "customers", 2):
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object (customer fields)")
        with STATE.lock:
            c = STATE.customers.get(parts[1]) or new_customer({}, bool(doc.get("livemode")))
            c.update(doc)
            c["id"] = parts[1]
            STATE.customers[parts[1]] = c
            STATE.placed(parts[1])
            return 200, copy.deepcopy(c)
    if route_ == ("PUT", "prices", 2):
        return control_put_price(parts[1], doc)
    if route_ == ("POST", "events", 1):
        return control_add_events(doc)
    if route_ == ("DELETE", "events", 2):
        # Past Stripe's 30 days: no longer listed, retrieved or taken as a cursor.
        with STATE.lock:
            gone = STATE.event_ids.pop(parts[1], None)
            if gone is not None:
                STATE.events.remove(gone)
        return (200 if gone else 404), {"id": parts[1], "deleted": gone is not None}
    if route_ == ("POST", "decline", 1):
        if not isinstance(doc, dict) or not isinstance(doc.get("customer"), str):
            raise ValueError('body must be {"customer": "cus_...", "decline_code": "..."}')
        with STATE.lock:
            STATE.declines[doc["customer"]] = doc.get("decline_code") or "generic_decline"
        return 200, {"ok": True}
    if route_ == ("DELETE", "decline", 2):
        with STATE.lock:
            gone = STATE.declines.pop(parts[1], None) is not None
        return (200 if gone else 404), {"customer": parts[1], "deleted": gone}
    return 404, {"error": "no control endpoint %s %s" % (method, path)}


# --------------------------------------------------------------------------
# HTTP


class Reset(Exception):
    """Close the connection with a TCP RST instead of answering."""


class Close(Exception):
    """Close the connection in order (FIN) instead of answering."""


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

    def send_raw(self, rule):
        """raw mode: exactly the rule's status, headers and body (truncated: cut
        short under the whole Content-Length, then the connection closed)."""
        data = rule.body.encode("utf-8") * rule.repeat
        self.close_connection = True
        self.send_response(rule.status)
        if rule.content_type is not None:
            self.send_header("Content-Type", rule.content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in rule.headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data if rule.truncate is None else data[:rule.truncate])

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
        try:
            status, out = control_call(method, path, doc)
        except ValueError as e:
            status, out = 400, {"error": str(e)}
        except StripeError as e:
            status, out = 400, {"error": e.body["error"]["message"]}
        except Exception as e:  # a bug in the fake
            traceback.print_exc(file=sys.stderr)
            status, out = 500, {"error": "fake_stripe internal error: %s" % e}
        return reply(status, out)

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
        if method in ("POST", "DELETE"):  # Stripe reads DELETE parameters from either
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if body.strip() and ctype not in ("", "application/x-www-form-urlencoded"):
                pairs = []
            else:
                pairs = decode_pairs(raw) + pairs
        else:
            ctype = ""
        params = build(tree, pairs)
        entry["params"] = params

        rule = None
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
            ctx = {"livemode": "_live_" in key[:8], "request_id": req_id,
                   "idempotency_key": idem_key,
                   "api_version": headers.get("stripe-version") or DEFAULT_API_VERSION}

            # 2. injected failures (in front of the idempotency layer, never stored)
            rule = STATE.take_rule(method, path)
            extra = {}
            if rule is not None:
                entry["fault"] = rule.mode
                if rule.should_retry is not None:
                    extra["Stripe-Should-Retry"] = "true" if rule.should_retry else "false"
                if rule.retry_after is not None:
                    extra["Retry-After"] = str(rule.retry_after)
                if rule.mode in ("slow", "reset_after", "slow_after"):
                    pass  # step 5: sleeps while the key is in flight / resets after running
                elif rule.mode == "raw":
                    with STATE.lock:
                        entry["status"] = rule.status
                    STATE.log_line(entry)
                    return self.send_raw(rule)
                elif rule.mode in ("reset", "close"):
                    if rule.delay:
                        time.sleep(rule.delay)
                    raise Reset() if rule.mode == "reset" else Close()
                else:
                    err = injected_error(rule, idem_key)
                    err.headers.update(extra)
                    raise err

            # 3. routing
            if found is None:
                raise invalid("Unrecognized request URL (%s: %s). Please see "
                              "https://stripe.com/docs or we can help at "
                              "https://support.stripe.com/." % (method, path), status=404)
            if method in ("POST", "DELETE") and body.strip() and ctype not in (
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
            if rule is not None and rule.mode == "reset_after":
                raise Reset()  # executed (and stored under its key), never answered
            if rule is not None and rule.mode == "slow_after":
                time.sleep(rule.delay)  # the state read above may be changed by now
            answer(status, obj, extra)
        except StripeError as e:
            if rule is not None and rule.mode == "reset_after":
                with STATE.lock:
                    entry["status"] = None
                STATE.log_line(entry)
                return self.send_rst()
            answer(e.status, e.body, e.headers)
        except (Reset, Close) as e:
            with STATE.lock:
                entry["status"] = None
            STATE.log_line(entry)
            if isinstance(e, Reset):
                self.send_rst()
            else:
                self.close_connection = True

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


def main(argv=None, handler=None, setup=None, description="Fake Stripe API server for tests."):
    """Runs the server; tests/simulator.py passes its handler class and a setup
    function called once STATE exists."""
    global STATE
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", metavar="FILE", help="append one JSON line per API request")
    args = ap.parse_args(argv)

    STATE = State()
    STATE.log_file = args.log
    cls = Server6 if ":" in args.host else Server
    httpd = cls((args.host, args.port), handler or Handler)
    host, port = httpd.server_address[:2]
    if setup:
        setup(host, port)
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
