#!/usr/bin/env python3
"""Request fixtures as data: every tests/fixtures/<endpoint>/NNN-name.json is
one request piped to the real .cgi (and, with "apache": true, also sent
through Apache), with the expected status, JSON and database effect beside
it.  One Stack for all; the state is reset before every case, so cases are
independent and run in sorted order.

A fixture (unknown members are an error, so a typo cannot silently skip a
check):

  description  what the case shows (required)
  endpoint     "webhook" | "create-checkout-session" | "usage"; must match
               the directory
  method       default "POST"
  query        QUERY_STRING, default ""
  env          CGI environment overrides (null = unset), st.cgi only
  headers      request headers (Content-Type/-Length as CONTENT_*)
  settings     overrides of the harness settings (null removes one),
               st.cgi only (Apache's environment is fixed at start)
  setup_sql    list of SQL statements run after the reset
  body         a JSON value, sent as compact JSON; or
  body_text    a raw string, sent as it is
  sign         webhook: true = a valid Stripe-Signature for the body with
               the default secret and the current time; or an object
               {"secret": "...", "t_offset": seconds added to now}
  signature    a literal Stripe-Signature header
  auth         "jwt:<sub>" (HS256 JWT for sub, valid 10 min) | "api_key"
  apache       true: also send it through Apache and expect the same
  expect       status; error_code (error.code); json (the whole answer);
               json_subset (members that must be present with those
               values; lists must have the same length, element by
               element); json_match ({"member.path": "regex"} on the
               string value); headers (lower-case name -> value, null =
               absent)
  db           [{"sql": "...", "rows": [[...], ...]}] after the request
               (psql's text values; SQL NULL is null)
"""

import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import (DEFAULT_SETTINGS, ENDPOINTS, Stack, Tap, make_jwt,  # noqa: E402
                     stripe_signature)

FIXTURES = os.path.join(HERE, "fixtures")
RESET_SQL = ("TRUNCATE billing_events, subscriptions, customers, usage_tracking,"
             " usage_idempotency, notifications RESTART IDENTITY;")
KEYS = {"description", "endpoint", "method", "query", "env", "headers", "settings",
        "setup_sql", "body", "body_text", "sign", "signature", "auth", "apache", "expect", "db"}
EXPECT_KEYS = {"status", "error_code", "json", "json_subset", "json_match", "headers"}

t = Tap()


def fixture_files():
    out = []
    for endpoint in sorted(os.listdir(FIXTURES)):
        d = os.path.join(FIXTURES, endpoint)
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".json")]
    return out


def check_shape(fx, endpoint):
    """Problems with the fixture itself, as a list of strings."""
    bad = [f"unknown member {k!r}" for k in fx if k not in KEYS]
    bad += [f"unknown expect member {k!r}" for k in fx.get("expect", {}) if k not in EXPECT_KEYS]
    if not fx.get("description"):
        bad.append("no description")
    if fx.get("endpoint") != endpoint or endpoint not in ENDPOINTS:
        bad.append(f"endpoint {fx.get('endpoint')!r} is not the directory's {endpoint!r}")
    if "body" in fx and "body_text" in fx:
        bad.append("both body and body_text")
    if "sign" in fx and "signature" in fx:
        bad.append("both sign and signature")
    if "status" not in fx.get("expect", {}):
        bad.append("no expect.status")
    if fx.get("apache") and (fx.get("env") or fx.get("settings")):
        bad.append("apache: true with env/settings (Apache's environment is fixed)")
    return bad


def body_bytes(fx):
    if "body_text" in fx:
        return fx["body_text"].encode()
    if "body" in fx:
        return json.dumps(fx["body"], separators=(",", ":"), ensure_ascii=False).encode()
    return b""


def request_headers(fx, body):
    """Headers for this send (signatures and tokens made now)."""
    h = dict(fx.get("headers") or {})
    sign = fx.get("sign")
    if sign:
        opts = sign if isinstance(sign, dict) else {}
        secret = opts.get("secret", DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"])
        h["Stripe-Signature"] = stripe_signature(secret, body,
                                                 int(time.time()) + opts.get("t_offset", 0))
    elif "signature" in fx:
        h["Stripe-Signature"] = fx["signature"]
    auth = fx.get("auth")
    if auth == "api_key":
        h["Authorization"] = "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]
    elif isinstance(auth, str) and auth.startswith("jwt:"):
        h["Authorization"] = "Bearer " + make_jwt({"sub": auth[4:],
                                                   "exp": int(time.time()) + 600})
    elif auth is not None:
        raise ValueError(f"unknown auth {auth!r}")
    return h


def subset_problems(got, want, path="$"):
    """Where got does not contain want (see json_subset above)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not an object"]
        out = []
        for k, v in want.items():
            if k not in got:
                out.append(f"{path}.{k}: missing")
            else:
                out += subset_problems(got[k], v, f"{path}.{k}")
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} is not a list of {len(want)}"]
        out = []
        for i, (g, w) in enumerate(zip(got, want)):
            out += subset_problems(g, w, f"{path}[{i}]")
        return out
    # bool is an int in Python: compare types too.
    if got != want or type(got) is not type(want):
        return [f"{path}: got {got!r}, want {want!r}"]
    return []


def member(doc, path):
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def reset(st, quotas):
    st.psql(RESET_SQL + quotas)
    st.stripe.reset()


def prepare(st, fx, quotas):
    reset(st, quotas)
    if fx.get("setup_sql"):
        st.psql(";\n".join(s.rstrip().rstrip(";") for s in fx["setup_sql"]) + ";")


def send(st, fx, via):
    body = body_bytes(fx)
    headers = request_headers(fx, body)
    method = fx.get("method", "POST")
    query = fx.get("query", "")
    if via == "apache":
        path = ENDPOINTS[fx["endpoint"]] + ("?" + query if query else "")
        return st.http(method, path, headers=headers, body=body)
    env = dict(fx.get("settings") or {})
    env.update(fx.get("env") or {})
    return st.cgi(fx["endpoint"], method, body=body, env=env, headers=headers, query=query)


def check(st, fx, r, name):
    exp = fx["expect"]
    answer = r.json()
    shown = f"{r.status} {r.headers}\n{r.body[:600]!r}" + (
        f"\nstderr: {r.stderr[-600:]}" if getattr(r, "stderr", "") else "")
    t.ok(r.status == exp["status"], f"{name}: status {exp['status']}", shown)
    if "error_code" in exp:
        code = member(answer, "error.code")
        t.ok(code == exp["error_code"], f"{name}: error code {exp['error_code']}", shown)
    if "json" in exp:
        # == alone would take true for 1; the subset walk compares types.
        t.ok(answer == exp["json"] and not subset_problems(answer, exp["json"]),
             f"{name}: JSON answer", f"got {answer!r}\nwant {exp['json']!r}")
    if "json_subset" in exp:
        p = subset_problems(answer, exp["json_subset"])
        t.ok(not p, f"{name}: JSON members", "\n".join(p) + f"\nanswer: {answer!r}")
    for path, rx in (exp.get("json_match") or {}).items():
        v = member(answer, path)
        t.ok(isinstance(v, str) and re.search(rx, v) is not None,
             f"{name}: {path} matches /{rx}/", f"got {v!r}")
    for h, v in (exp.get("headers") or {}).items():
        got = r.headers.get(h.lower())
        t.ok(got == v, f"{name}: header {h}" + (" absent" if v is None else ""),
             f"got {got!r}, want {v!r}")
    for i, q in enumerate(fx.get("db") or []):
        rows = st.psql(q["sql"])
        t.ok(rows == q["rows"], f"{name}: db[{i}] {q['sql'][:70]}",
             f"got  {rows!r}\nwant {q['rows']!r}")


def run_fixture(st, path, quotas):
    endpoint = os.path.basename(os.path.dirname(path))
    name = f"{endpoint}/{os.path.basename(path)[:-5]}"
    with open(path, encoding="utf-8") as f:
        fx = json.load(f)
    problems = check_shape(fx, endpoint)
    if problems:
        t.ok(False, f"{name}: fixture is well-formed", "\n".join(problems))
        return
    prepare(st, fx, quotas)
    check(st, fx, send(st, fx, "cgi"), name)
    if fx.get("apache"):
        prepare(st, fx, quotas)
        check(st, fx, send(st, fx, "apache"), name + " (apache)")


def quota_restore_sql(st):
    """SQL putting plan_quotas back as the schema seeded it (setup_sql may change it)."""
    rows = st.psql("SELECT tier, usage_type, coalesce(monthly_limit::text, 'NULL')"
                   " FROM plan_quotas ORDER BY 1, 2")
    values = ", ".join(f"('{a}', '{b}', {c})" for a, b, c in rows)
    return f"DELETE FROM plan_quotas; INSERT INTO plan_quotas (tier, usage_type, monthly_limit)" \
           f" VALUES {values};"


def main():
    files = fixture_files()
    t.ok(len(files) > 0, f"fixtures found in {FIXTURES}")
    with t.guard("fixtures"), Stack() as st:
        quotas = quota_restore_sql(st)
        for path in files:
            with t.guard(os.path.relpath(path, FIXTURES)):
                run_fixture(st, path, quotas)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
