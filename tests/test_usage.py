#!/usr/bin/env python3
"""usage.cgi (GET|POST /api/usage): reading, recording, quotas, idempotency,
auth, validation and CORS -- piped to the CGI and through Apache.

Each check that works in both modes runs twice, once per mode, against its
own user ids (mode name in the id) so counts never mix.  The concurrency
tests live in test_usage_concurrency.py.
"""

import concurrent.futures
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_SETTINGS, Stack, Tap, make_jwt  # noqa: E402

API_KEY = DEFAULT_SETTINGS["USAGE_API_KEY"]
KEY = {"Authorization": "Bearer " + API_KEY}
ORIGIN = "https://app.example.test"
MODES = ("cgi", "http")
TYPES = ["pain_entry", "mood_entry", "activity_log", "export", "storage"]
FREE = {"pain_entry": 100, "mood_entry": 100, "activity_log": 100, "export": 2,
        "storage": 104857600}

t = Tap()


def jwt(sub, **extra):
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    claims.update(extra)
    return {"Authorization": "Bearer " + make_jwt(claims)}


def call(st, mode, method, query="", body=None, headers=None, env=None):
    """One request to usage.cgi, piped (mode "cgi") or through Apache ("http")."""
    if mode == "cgi":
        return st.cgi("usage", method, body=body if body is not None else b"",
                      headers=headers, query=query, env=env)
    path = "/api/usage" + ("?" + query if query else "")
    return st.http(method, path, headers=headers, body=body if body is not None else b"")


def get(st, mode, user, headers=KEY):
    return call(st, mode, "GET", query="userId=" + user, headers=headers)


def post(st, mode, body, headers=KEY, extra_headers=None):
    h = dict(headers or {})
    h.update(extra_headers or {})
    return call(st, mode, "POST", body=body, headers=h)


def used_in_db(st, user, usage_type):
    v = st.psql_one(f"SELECT amount FROM usage_tracking WHERE user_id = '{user}' "
                    f"AND usage_type = '{usage_type}' AND period_start = usage_period_start()")
    return int(v) if v is not None else 0


def period_now():
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return {"start": start.strftime("%Y-%m-01T00:00:00Z"),
            "end": end.strftime("%Y-%m-01T00:00:00Z")}


def add_subscription(st, user, tier, status, interval="monthly", trial_end=None,
                     period_end="2030-01-15 12:00:00+00", cancel=False):
    te = f"'{trial_end}'" if trial_end else "NULL"
    st.psql(f"""INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id,
                tier, status, billing_interval, trial_end, current_period_end, cancel_at_period_end)
                VALUES ('{user}', 'cus_{user}', 'sub_{user}', '{tier}', '{status}', '{interval}',
                        {te}, '{period_end}', {'true' if cancel else 'false'})""")


def usage_map(body):
    return {u["usageType"]: (u["used"], u["limit"], u["remaining"]) for u in body["usage"]}


def err(r):
    j = r.json() or {}
    e = j.get("error") or {}
    return e.get("code"), e.get("field")


# --------------------------------------------------------------------------
# Reading


def test_reading(st, mode):
    p = period_now()
    u = f"read-free-{mode}"
    r = get(st, mode, u)
    j = r.json()
    t.eq(r.status, 200, f"{mode}: GET free user answers 200")
    t.eq(r.headers.get("content-type"), "application/json", f"{mode}: GET is JSON")
    t.eq(list(j.keys()), ["userId", "tier", "status", "period", "subscription", "usage"],
         f"{mode}: GET members in order")
    t.eq((j["userId"], j["tier"], j["status"], j["subscription"]), (u, "free", "none", None),
         f"{mode}: no subscription -> free, status none, subscription null")
    t.eq(j["period"], p, f"{mode}: period is the current UTC month, RFC 3339")
    t.eq([x["usageType"] for x in j["usage"]], TYPES, f"{mode}: one entry per type, fixed order")
    t.eq(usage_map(j), {k: (0, v, v) for k, v in FREE.items()}, f"{mode}: free limits, nothing used")

    cases = [
        # status, sub tier, effective tier, interval
        ("trialing", "pro", "pro", "monthly"),
        ("active", "basic", "basic", "yearly"),
        ("past_due", "pro", "pro", "monthly"),
        ("canceled", "pro", "free", "monthly"),
        ("unpaid", "basic", "free", "monthly"),
        ("incomplete", "enterprise", "free", "monthly"),
        ("paused", "pro", "free", "yearly"),
    ]
    for status, tier, eff, interval in cases:
        u = f"read-{status}-{mode}"
        add_subscription(st, u, tier, status, interval,
                         trial_end="2026-12-15 10:20:30+00" if status == "trialing" else None,
                         cancel=(status == "past_due"))
        st.psql(f"SELECT * FROM track_usage('{u}', 'export', 1)")
        r = get(st, mode, u)
        j = r.json() or {}
        t.eq((r.status, j.get("tier"), j.get("status")), (200, eff, status),
             f"{mode}: {status} {tier} -> tier {eff}")
        t.eq(j.get("subscription"), {
            "interval": interval, "status": status,
            "trialEnd": "2026-12-15T10:20:30Z" if status == "trialing" else None,
            "currentPeriodEnd": "2030-01-15T12:00:00Z",
            "cancelAtPeriodEnd": status == "past_due"}, f"{mode}: {status} subscription object")
        want_export = {"free": 2, "basic": 20, "pro": 200, "enterprise": None}[eff]
        m = usage_map(j)
        t.eq(m.get("export"), (1, want_export, None if want_export is None else want_export - 1),
             f"{mode}: {status} export used/limit/remaining")
        if eff == "pro":
            t.eq(m.get("pain_entry"), (0, None, None), f"{mode}: {status} pro pain_entry unlimited")


def test_reading_timezone(st):
    """Times are UTC whatever the session TimeZone (PGTZ reaches libpq)."""
    u = "read-tz"
    add_subscription(st, u, "pro", "trialing", trial_end="2026-12-15 10:20:30+00")
    r = st.cgi("usage", "GET", query="userId=" + u, headers=KEY,
               env={"PGTZ": "Pacific/Kiritimati"})
    j = r.json() or {}
    t.eq((j.get("period"), (j.get("subscription") or {}).get("trialEnd")),
         (period_now(), "2026-12-15T10:20:30Z"), "cgi: period and times stay UTC under PGTZ=+14")


# --------------------------------------------------------------------------
# Recording


def test_recording(st, mode):
    p = period_now()
    u = f"rec-{mode}"
    r = post(st, mode, {"userId": u, "usageType": "pain_entry"})
    t.eq((r.status, r.json()), (200, {"userId": u, "usageType": "pain_entry", "amount": 1,
                                      "used": 1, "limit": 100, "remaining": 99, "period": p}),
         f"{mode}: POST default amount 1 -> 200 with totals and period")
    r = post(st, mode, {"userId": u, "usageType": "pain_entry", "amount": 5,
                        "metadata": {"source": "ios", "n": [1, 2]}})
    t.eq((r.status, (r.json() or {}).get("used"), (r.json() or {}).get("remaining")), (200, 6, 94),
         f"{mode}: POST amount 5 with metadata adds up")
    r = post(st, mode, {"userId": u, "usageType": "pain_entry", "amount": None, "metadata": None})
    t.eq((r.status, (r.json() or {}).get("used")), (200, 7), f"{mode}: null amount/metadata = absent")
    t.eq(used_in_db(st, u, "pain_entry"), 7, f"{mode}: database holds 7")


def test_boundary(st, mode):
    u = f"edge-{mode}"
    r = post(st, mode, {"userId": u, "usageType": "export", "amount": 3})
    j = r.json() or {}
    t.eq((r.status, err(r)[0], j.get("usageType"), j.get("used"), j.get("limit")),
         (402, "quota_exceeded", "export", 0, 2), f"{mode}: more than the whole limit -> 402")
    t.eq(st.psql_one(f"SELECT count(*) FROM usage_tracking WHERE user_id = '{u}'"), "0",
         f"{mode}: refused first request creates no row")
    r = post(st, mode, {"userId": u, "usageType": "export", "amount": 2})
    t.eq((r.status, (r.json() or {}).get("used"), (r.json() or {}).get("remaining")), (200, 2, 0),
         f"{mode}: exactly at the limit -> 200, remaining 0")
    r = post(st, mode, {"userId": u, "usageType": "export"})
    j = r.json() or {}
    t.eq((r.status, err(r)[0], j.get("usageType"), j.get("used"), j.get("limit"),
          j.get("remaining")), (402, "quota_exceeded", "export", 2, 2, 0),
         f"{mode}: one over -> 402 quota_exceeded with usageType/used/limit")
    t.eq(r.headers.get("www-authenticate"), None, f"{mode}: 402 has no auth challenge")
    t.eq(used_in_db(st, u, "export"), 2, f"{mode}: 402 left the count unchanged")
    g = get(st, mode, u).json() or {}
    t.eq(usage_map(g).get("export"), (2, 2, 0), f"{mode}: GET agrees after 402")
    # A quota lowered below what was used: remaining stays 0, never negative.
    u2 = f"edge-lowered-{mode}"
    st.psql(f"INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount) "
            f"VALUES ('{u2}', 'mood_entry', usage_period_start(), usage_period_end(), 150)")
    g = get(st, mode, u2).json() or {}
    t.eq(usage_map(g).get("mood_entry"), (150, 100, 0), f"{mode}: over a lowered limit, remaining 0")


def test_unlimited(st, mode):
    u = f"unl-{mode}"
    add_subscription(st, u, "enterprise", "active")
    for i in range(2):
        r = post(st, mode, {"userId": u, "usageType": "storage", "amount": 1073741824})
        j = r.json() or {}
        t.eq((r.status, j.get("used"), j.get("limit"), j.get("remaining")),
             (200, 1073741824 * (i + 1), None, None),
             f"{mode}: enterprise storage unlimited, 64-bit totals (#{i + 1})")
    u = f"unl-pro-{mode}"
    add_subscription(st, u, "pro", "active")
    r = post(st, mode, {"userId": u, "usageType": "pain_entry", "amount": 100000})
    t.eq((r.status, (r.json() or {}).get("limit")), (200, None), f"{mode}: pro pain_entry unlimited")


def test_rollover(st, mode):
    u = f"roll-{mode}"
    st.psql(f"""INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount)
                VALUES ('{u}', 'export', usage_period_start(now() - interval '1 month'),
                        usage_period_start(), 2),
                       ('{u}', 'export', usage_period_start(now() - interval '13 months'),
                        usage_period_start(now() - interval '12 months'), 2)""")
    g = get(st, mode, u).json() or {}
    t.eq(usage_map(g).get("export"), (0, 2, 2), f"{mode}: earlier months do not count (GET)")
    r = post(st, mode, {"userId": u, "usageType": "export", "amount": 2})
    t.eq((r.status, (r.json() or {}).get("used")), (200, 2), f"{mode}: full quota in a new month")
    t.eq(st.psql_one(f"SELECT sum(amount) FROM usage_tracking WHERE user_id = '{u}'"), "6",
         f"{mode}: old months kept, new month its own row")


def test_quota_from_sql(st, mode):
    """Operators change limits with SQL; the next request uses them."""
    st.psql("UPDATE plan_quotas SET monthly_limit = 3 WHERE tier = 'basic' AND usage_type = 'export'")
    u = f"ops-{mode}"
    add_subscription(st, u, "basic", "active")
    r = post(st, mode, {"userId": u, "usageType": "export", "amount": 3})
    r2 = post(st, mode, {"userId": u, "usageType": "export"})
    t.eq((r.status, (r.json() or {}).get("limit"), r2.status), (200, 3, 402),
         f"{mode}: plan_quotas change applies")
    st.psql("UPDATE plan_quotas SET monthly_limit = 20 WHERE tier = 'basic' AND usage_type = 'export'")


# --------------------------------------------------------------------------
# Idempotency


def test_idempotency(st, mode):
    u = f"idem-{mode}"
    body = {"userId": u, "usageType": "mood_entry", "amount": 4, "metadata": {"a": 1, "b": "x"}}
    idem = {"Idempotency-Key": f"key-{mode}-1"}
    r1 = post(st, mode, body, extra_headers=idem)
    r2 = post(st, mode, {"metadata": {"b": "x", "a": 1}, "amount": 4, "usageType": "mood_entry",
                         "userId": u}, extra_headers=idem)
    t.eq((r1.status, (r1.json() or {}).get("used")), (200, 4), f"{mode}: keyed POST counts")
    t.eq((r2.status, r2.body), (r1.status, r1.body),
         f"{mode}: retry (members reordered) gets the same status and bytes")
    t.eq((r1.headers.get("idempotent-replayed"), r2.headers.get("idempotent-replayed")),
         (None, "true"), f"{mode}: Idempotent-Replayed only on the replay")
    t.eq(used_in_db(st, u, "mood_entry"), 4, f"{mode}: retried POST counted once")

    r3 = post(st, mode, dict(body, amount=5), extra_headers=idem)
    t.eq((r3.status, err(r3)[0]), (409, "conflict"), f"{mode}: same key, other amount -> 409 conflict")
    r3 = post(st, mode, dict(body, metadata={"a": 2}), extra_headers=idem)
    t.eq(r3.status, 409, f"{mode}: same key, other metadata -> 409")
    t.eq(used_in_db(st, u, "mood_entry"), 4, f"{mode}: conflicts count nothing")

    r4 = post(st, mode, dict(body, userId=u + "-other"), extra_headers=idem)
    t.eq((r4.status, (r4.json() or {}).get("used")), (200, 4),
         f"{mode}: keys are per user: same key for another user is a new request")

    r5 = post(st, mode, body, extra_headers={"Idempotency-Key": f"key-{mode}-2"})
    t.eq((r5.status, (r5.json() or {}).get("used")), (200, 8), f"{mode}: a new key counts again")

    # A refusal counted nothing and is not stored: the retry is judged afresh.
    ue = f"idem402-{mode}"
    k402 = {"Idempotency-Key": f"key-{mode}-402"}
    a = post(st, mode, {"userId": ue, "usageType": "export", "amount": 3}, extra_headers=k402)
    stored = st.psql_one(f"SELECT count(*) FROM usage_idempotency WHERE user_id = '{ue}'")
    st.psql("UPDATE plan_quotas SET monthly_limit = 50 WHERE tier = 'free' AND usage_type = 'export'")
    b = post(st, mode, {"userId": ue, "usageType": "export", "amount": 3}, extra_headers=k402)
    st.psql("UPDATE plan_quotas SET monthly_limit = 2 WHERE tier = 'free' AND usage_type = 'export'")
    t.eq((a.status, stored), (402, "0"), f"{mode}: a keyed 402 stores nothing, not even the key")
    t.eq((b.status, b.headers.get("idempotent-replayed"), used_in_db(st, ue, "export")),
         (200, None, 3), f"{mode}: its retry after the quota changed is counted, once")

    # Without a key nothing is stored.
    n = st.psql_one(f"SELECT count(*) FROM usage_idempotency WHERE user_id = '{u}'")
    t.eq(n, "2", f"{mode}: one idempotency row per key")


def test_idempotency_bounded(st):
    """A user over quota cannot grow usage_idempotency; keys per user are capped."""
    u = "idem-flood"
    for i in range(2):
        post(st, "cgi", {"userId": u, "usageType": "export"})
    codes = [post(st, "cgi", {"userId": u, "usageType": "export"},
                  extra_headers={"Idempotency-Key": f"flood-{i}"}).status for i in range(20)]
    t.eq((set(codes), st.psql_one(f"SELECT count(*) FROM usage_idempotency WHERE user_id = '{u}'")),
         ({402}, "0"), "20 fresh keys refused over quota: no rows kept")

    u = "idem-cap"
    cap = {"USAGE_IDEMPOTENCY_MAX_KEYS": "3"}
    for i in range(5):
        r = st.cgi("usage", "POST", body={"userId": u, "usageType": "pain_entry"},
                   headers=dict(KEY, **{"Idempotency-Key": f"cap-{i}"}), env=cap)
        t.eq(r.status, 200, f"keyed POST {i} with USAGE_IDEMPOTENCY_MAX_KEYS=3: 200")
    t.eq(st.psql(f"SELECT idempotency_key FROM usage_idempotency WHERE user_id = '{u}'"
                 " ORDER BY created_at"), [["cap-2"], ["cap-3"], ["cap-4"]],
         "only the user's newest 3 keys are kept")
    r = st.cgi("usage", "POST", body={"userId": u, "usageType": "pain_entry"},
               headers=dict(KEY, **{"Idempotency-Key": "cap-4"}), env=cap)
    t.eq((r.headers.get("idempotent-replayed"), used_in_db(st, u, "pain_entry")), ("true", 5),
         "a kept key still replays")
    r = st.cgi("usage", "POST", body={"userId": u, "usageType": "pain_entry"},
               headers=dict(KEY, **{"Idempotency-Key": "cap-0"}), env=cap)
    t.eq((r.headers.get("idempotent-replayed"), used_in_db(st, u, "pain_entry")), (None, 6),
         "a forgotten one is a new request (documented)")
    t.eq(st.psql_one("SELECT count(*) FROM usage_idempotency WHERE user_id = 'idem-cgi'"), "2",
         "other users' keys are untouched")
    r = st.cgi("usage", "POST", body={"userId": u, "usageType": "pain_entry"},
               headers=dict(KEY, **{"Idempotency-Key": "cap-x"}),
               env={"USAGE_IDEMPOTENCY_MAX_KEYS": "0"})
    t.ok(r.status == 500 and err(r)[0] == "misconfigured" and
         "USAGE_IDEMPOTENCY_MAX_KEYS" in r.stderr, "USAGE_IDEMPOTENCY_MAX_KEYS=0: misconfigured",
         repr(r))


def test_short_api_key(st):
    """A USAGE_API_KEY under 16 bytes (a placeholder such as "changeme")
    is a misconfiguration, refused for every caller, never accepted."""
    short = {"USAGE_API_KEY": "changeme"}
    r = st.cgi("usage", "GET", query="userId=short-key",
               headers={"Authorization": "Bearer changeme"}, env=short)
    t.ok(r.status == 500 and err(r)[0] == "misconfigured" and "USAGE_API_KEY" in r.stderr
         and "changeme" not in r.stderr and "changeme" not in r.text,
         "USAGE_API_KEY of 8 bytes: 500 misconfigured, the key itself in neither answer nor log",
         repr(r))
    jwt = {"Authorization": "Bearer " + make_jwt({"sub": "short-key", "exp": int(time.time()) + 600})}
    r = st.cgi("usage", "GET", query="userId=short-key", headers=jwt, env=short)
    t.eq(r.status, 500, "...also for a caller with a valid JWT (the setting is wrong, not the caller)")
    r = st.cgi("usage", "GET", query="userId=short-key", headers={"Authorization": "Bearer "
                                                                 + "k" * 15},
               env={"USAGE_API_KEY": "k" * 15})
    t.eq(r.status, 500, "a key of 15 bytes: still 500 misconfigured")
    r = st.cgi("usage", "GET", query="userId=short-key", headers={"Authorization": "Bearer "
                                                                 + "k" * 16},
               env={"USAGE_API_KEY": "k" * 16})
    t.eq(r.status, 200, "a key of 16 bytes is accepted")


def test_prune(st):
    u = "prune"
    idem = {"Idempotency-Key": "old-key"}
    post(st, "cgi", {"userId": u, "usageType": "activity_log"}, extra_headers=idem)
    st.psql(f"UPDATE usage_idempotency SET created_at = now() - interval '23 hours' WHERE user_id = '{u}'")
    t.eq(st.psql_one("SELECT prune_usage_idempotency()"), "0", "keys younger than 24 h are kept")
    r = post(st, "cgi", {"userId": u, "usageType": "activity_log"}, extra_headers=idem)
    t.eq((r.headers.get("idempotent-replayed"), used_in_db(st, u, "activity_log")), ("true", 1),
         "a retry after 23 h still replays")
    st.psql(f"UPDATE usage_idempotency SET created_at = now() - interval '25 hours' WHERE user_id = '{u}'")
    t.eq(st.psql_one("SELECT prune_usage_idempotency()"), "1", "keys older than 24 h are pruned")
    r = post(st, "cgi", {"userId": u, "usageType": "activity_log"}, extra_headers=idem)
    t.eq((r.status, r.headers.get("idempotent-replayed"), used_in_db(st, u, "activity_log")),
         (200, None, 2), "after pruning the key is new again")
    # usage.cgi prunes on 1 POST in 100: enough POSTs remove an aged key by
    # themselves (batches of 25 in parallel; 1000 POSTs miss with p = 4e-5).
    st.psql("UPDATE usage_idempotency SET created_at = now() - interval '25 hours'")
    aged = "SELECT count(*) FROM usage_idempotency WHERE created_at < now() - interval '24 hours'"
    one = lambda _: st.cgi("usage", "POST", body={"userId": "prune-driver", "usageType": "storage"},
                           headers=KEY)
    posts = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while posts < 1000 and st.psql_one(aged) != "0":
            list(pool.map(one, range(25)))
            posts += 25
    t.eq(st.psql_one(aged), "0", f"usage.cgi pruned aged keys by itself (after {posts} POSTs)")


# --------------------------------------------------------------------------
# Auth


def test_auth(st, mode):
    me = f"auth-me-{mode}"
    r = get(st, mode, me, headers=jwt(me))
    t.eq(r.status, 200, f"{mode}: JWT caller reads own usage")
    r = post(st, mode, {"userId": me, "usageType": "pain_entry"}, headers=jwt(me))
    t.eq(r.status, 200, f"{mode}: JWT caller records own usage")
    r = get(st, mode, "someone-else", headers=jwt(me))
    t.eq((r.status, err(r)[0]), (403, "forbidden"), f"{mode}: JWT caller reading another user -> 403")
    r = post(st, mode, {"userId": "someone-else", "usageType": "pain_entry"}, headers=jwt(me))
    t.eq((r.status, err(r)[0]), (403, "forbidden"), f"{mode}: JWT caller recording for another -> 403")
    t.eq(used_in_db(st, "someone-else", "pain_entry"), 0, f"{mode}: forbidden POST counted nothing")
    r = post(st, mode, {"userId": "anyone-" + mode, "usageType": "pain_entry"}, headers=KEY)
    t.eq(r.status, 200, f"{mode}: API key records for any user")
    r = get(st, mode, "anyone-" + mode, headers=KEY)
    t.eq(r.status, 200, f"{mode}: API key reads any user")
    r = get(st, mode, me, headers={})
    t.eq((r.status, err(r)[0], "Bearer" in (r.headers.get("www-authenticate") or "")),
         (401, "unauthorized", True), f"{mode}: no credentials -> 401 with WWW-Authenticate")
    r = post(st, mode, b"not json", headers={})
    t.eq(r.status, 401, f"{mode}: 401 comes before body validation")
    bad = {"Authorization": "Bearer " + make_jwt({"sub": me, "exp": int(time.time()) + 600},
                                                 secret="wrong-secret-0123456789abcdef0123")}
    t.eq(get(st, mode, me, headers=bad).status, 401, f"{mode}: JWT with a wrong signature -> 401")
    expired = {"Authorization": "Bearer " + make_jwt({"sub": me, "exp": int(time.time()) - 3600})}
    t.eq(get(st, mode, me, headers=expired).status, 401, f"{mode}: expired JWT -> 401")
    t.eq(get(st, mode, me, headers={"Authorization": "Bearer " + API_KEY + "x"}).status, 401,
         f"{mode}: wrong API key -> 401")
    t.eq(get(st, mode, me, headers={"Authorization": "Basic dTpw"}).status, 401,
         f"{mode}: non-Bearer credentials -> 401")


def test_remote_user(st):
    r = st.cgi("usage", "GET", query="userId=ru", env={"REMOTE_USER": "ru"})
    t.eq(r.status, 200, "cgi: REMOTE_USER reads own usage")
    r = st.cgi("usage", "GET", query="userId=other", env={"REMOTE_USER": "ru"})
    t.eq(r.status, 403, "cgi: REMOTE_USER reading another user -> 403")


# --------------------------------------------------------------------------
# Validation


def test_validation(st, mode):
    u = f"val-{mode}"
    ok = {"userId": u, "usageType": "export"}
    big_meta = {"k": "x" * 4100}
    fit_meta = {"k": "x" * 4000}
    cases = [
        ({k: v for k, v in ok.items() if k != "userId"}, "userId"),
        (dict(ok, userId=""), "userId"),
        (dict(ok, userId="u" * 129), "userId"),
        (dict(ok, userId=5), "userId"),
        (dict(ok, userId="a\u0007b"), "userId"),
        ({"userId": u}, "usageType"),
        (dict(ok, usageType="photos"), "usageType"),
        (dict(ok, usageType="EXPORT"), "usageType"),
        (dict(ok, usageType=["export"]), "usageType"),
        (dict(ok, amount=0), "amount"),
        (dict(ok, amount=-1), "amount"),
        (dict(ok, amount=1073741825), "amount"),
        (dict(ok, amount=2 ** 70), "amount"),
        (dict(ok, amount=1.5), "amount"),
        (dict(ok, amount="2"), "amount"),
        (dict(ok, amount=True), "amount"),
        (dict(ok, metadata=[1]), "metadata"),
        (dict(ok, metadata="x"), "metadata"),
        (dict(ok, metadata=3), "metadata"),
        (dict(ok, metadata=big_meta), "metadata"),
    ]
    for body, field in cases:
        r = post(st, mode, body)
        shown = json.dumps(body)[:70]
        t.eq((r.status, err(r)), (400, ("invalid_field", field)), f"{mode}: {shown} -> 400 {field}")
    r = post(st, mode, dict(ok, metadata=fit_meta))
    t.eq(r.status, 200, f"{mode}: metadata just under 4 KiB accepted")
    for raw, what in ((b"not json", "garbage"), (b"[1,2]", "an array"), (b"", "empty"),
                      (b'{"userId":"a"} x', "trailing garbage"), (b"{'a':1}", "single quotes"),
                      (json.dumps(dict(ok, metadata={"a": ["x", {"b": "nul\u0000"}]})).encode(),
                       "\\u0000 deep in metadata")):
        r = post(st, mode, raw, extra_headers={"Content-Type": "application/json"})
        t.eq((r.status, err(r)[0]), (400, "invalid_json"), f"{mode}: body {what} -> 400 invalid_json")
    # Numbers jsonb cannot store (the idempotency hash casts metadata):
    # the same 400 with and without a key, never a 500, nothing counted.
    for num in ("1E200000", "-1E1000", "1E-200000", "0E99999999999999999999", "1." + "0" * 63 + "1"):
        raw = ('{"userId":"%s","usageType":"export","metadata":{"a":[{"x":%s}]}}' % (u, num)).encode()
        for key in ({}, {"Idempotency-Key": f"num-{num}"}):
            r = post(st, mode, raw, extra_headers=dict(key, **{"Content-Type": "application/json"}))
            t.eq((r.status, err(r)), (400, ("invalid_field", "metadata")),
                 f"{mode}: metadata number {num[:12]}{' with a key' if key else ''} -> 400 metadata")
    raw = ('{"userId":"%s-num","usageType":"export","metadata":{"x":1.5E308,"y":-2E-300,'
           '"z":[1e-310,-1E400,1E999]}}' % u).encode()
    r = post(st, mode, raw, extra_headers={"Content-Type": "application/json", "Idempotency-Key": "num-ok"})
    t.eq(r.status, 200, f"{mode}: metadata numbers numeric stores accepted with a key (1e-310, -1E400)")
    r = post(st, mode, json.dumps(ok), extra_headers={"Content-Type": "text/plain"})
    t.eq((r.status, err(r)[0]), (415, "unsupported_media_type"), f"{mode}: text/plain -> 415")
    r = post(st, mode, ok, extra_headers={"Idempotency-Key": "k" * 256})
    t.eq((r.status, err(r)), (400, ("invalid_field", "Idempotency-Key")),
         f"{mode}: 256-character Idempotency-Key -> 400")
    r = post(st, mode, dict(ok, userId=u + "-k255"), extra_headers={"Idempotency-Key": "k" * 255})
    t.eq(r.status, 200, f"{mode}: 255-character Idempotency-Key accepted")
    t.eq(used_in_db(st, u, "export"), 1, f"{mode}: only the valid POST counted")
    # GET
    for query, what in (("", "missing"), ("userId=", "empty"), ("userId=a&userId=b", "repeated"),
                        ("userId=" + "u" * 129, "129 characters"), ("userId=a%01b", "control byte"),
                        ("userId=%zz", "bad escape")):
        r = call(st, mode, "GET", query=query, headers=KEY)
        t.eq((r.status, err(r)), (400, ("invalid_field", "userId")), f"{mode}: GET userId {what} -> 400")
    r = call(st, mode, "GET", query="userId=caf%C3%A9%20au%20lait", headers=KEY)
    t.eq((r.status, (r.json() or {}).get("userId")), (200, "caf\u00e9 au lait"),
         f"{mode}: GET userId percent-decoded UTF-8")
    # Methods
    r = call(st, mode, "PUT", body=ok, headers=KEY)
    t.eq((r.status, err(r)[0]), (405, "method_not_allowed"), f"{mode}: PUT -> 405")
    t.eq(r.headers.get("allow"), "GET, POST, HEAD, OPTIONS",
         f"{mode}: 405 lists every method the resource answers (RFC 9110 15.5.6)")


def test_body_limits(st):
    ok = json.dumps({"userId": "lim", "usageType": "export"}).encode()
    r = st.cgi("usage", "POST", body=ok, headers=KEY, env={"CONTENT_LENGTH": None})
    t.eq(r.status, 411, "cgi: POST without CONTENT_LENGTH -> 411")
    r = st.cgi("usage", "POST", body=ok, headers=KEY, env={"BILLING_MAX_BODY": "20"})
    t.eq(r.status, 413, "cgi: body over BILLING_MAX_BODY -> 413")
    r = st.cgi("usage", "POST", body=ok, headers=KEY, env={"CONTENT_LENGTH": str(len(ok) + 10)})
    t.eq(r.status, 400, "cgi: short body -> 400")
    r = st.cgi("usage", "POST", body=ok, headers=dict(KEY, **{"Idempotency-Key": "a\x01b"}))
    t.eq((r.status, err(r)[1]), (400, "Idempotency-Key"), "cgi: control byte in Idempotency-Key -> 400")
    r = st.http("POST", "/api/usage", headers=KEY, body=b"{" + b" " * (1024 * 1024 + 10) + b"}")
    t.eq(r.status, 413, "http: body over 1 MiB -> 413")


# --------------------------------------------------------------------------
# CORS, database down


def test_cors(st, mode):
    h = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
         "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}
    env = {"DATABASE_URL": "postgresql:///nope?host=/nonexistent"} if mode == "cgi" else None
    r = call(st, mode, "OPTIONS", headers=h, env=env)
    t.eq((r.status, r.headers.get("access-control-allow-origin")), (204, ORIGIN),
         f"{mode}: preflight from an allowed origin -> 204 (no database needed)")
    t.ok("POST" in (r.headers.get("access-control-allow-methods") or "") and
         "Idempotency-Key" in (r.headers.get("access-control-allow-headers") or ""),
         f"{mode}: preflight allows POST and Idempotency-Key", r.headers)
    r = call(st, mode, "OPTIONS", headers=dict(h, Origin="https://evil.test"))
    t.eq((r.status, r.headers.get("access-control-allow-origin")), (204, None),
         f"{mode}: preflight from another origin gets no CORS headers")
    r = call(st, mode, "GET", query="userId=cors", headers=dict(KEY, Origin=ORIGIN))
    t.eq((r.status, r.headers.get("access-control-allow-origin")), (200, ORIGIN),
         f"{mode}: GET from an allowed origin carries Access-Control-Allow-Origin")
    r = call(st, mode, "GET", query="userId=cors", headers=dict(KEY, Origin="https://evil.test"))
    t.eq((r.status, r.headers.get("access-control-allow-origin")), (200, None),
         f"{mode}: other origins get no Access-Control-Allow-Origin")


def test_database_down(st):
    bad = {"DATABASE_URL": "postgresql:///billing?host=/nonexistent"}
    r = st.cgi("usage", "GET", query="userId=down", headers=KEY, env=bad)
    t.eq((r.status, err(r)[0], r.headers.get("retry-after") is not None), (503, "unavailable", True),
         "cgi: unreachable database -> 503 with Retry-After")
    st.pg_stop()
    try:
        r = st.http("POST", "/api/usage", headers=KEY, body={"userId": "down", "usageType": "export"})
        t.eq((r.status, err(r)[0]), (503, "unavailable"), "http: database stopped -> 503 on POST")
        r = st.http("GET", "/api/usage?userId=down", headers=KEY)
        t.eq(r.status, 503, "http: database stopped -> 503 on GET")
    finally:
        st.pg_start()
    get_ = lambda: st.http("GET", "/api/usage?userId=down", headers=KEY)  # noqa: E731
    # PgBouncer refuses logins for a moment after PostgreSQL returns
    # (server_login_retry): a client that retries gets through soon.
    r = st.retry_while_pooler_recovers(get_) if st.want_pgbouncer else get_()
    t.eq(r.status, 200, "http: back to 200 once the database is up")


def test_logging(st):
    """The log line names what happened, never a key or token."""
    secret_key = "idem-secret-value"
    st.http("POST", "/api/usage", headers=dict(KEY, **{"Idempotency-Key": secret_key}),
            body={"userId": "logu", "usageType": "export", "metadata": {"secret": "meta-value"}})
    log = st.error_log()
    t.ok(API_KEY not in log and secret_key not in log and "meta-value" not in log,
         "http: error log holds no API key, Idempotency-Key or metadata")


def main():
    with t.guard("usage"), Stack() as st:
        for mode in MODES:
            for fn in (test_reading, test_recording, test_boundary, test_unlimited,
                       test_rollover, test_quota_from_sql, test_idempotency, test_auth,
                       test_validation, test_cors):
                with t.guard(f"{fn.__name__} ({mode})"):
                    fn(st, mode)
        for fn in (test_reading_timezone, test_idempotency_bounded, test_prune, test_remote_user,
                   test_body_limits, test_short_api_key,
                   test_logging, test_database_down):
            t.run(fn, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
