#!/usr/bin/env python3
"""usage.cgi under concurrency, through Apache: parallel POSTs never push
usage past the limit, and parallel retries of one Idempotency-Key count once.
"""

import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_SETTINGS, Stack, Tap  # noqa: E402
from harness import parallel as harness_parallel  # noqa: E402

KEY = {"Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]}
N = 30
L = 10

t = Tap()


def parallel(st, bodies, headers_list):
    """POSTs all bodies at once; the Resps (or transport errors) in order."""
    return harness_parallel(len(bodies), lambda i: st.http("POST", "/api/usage",
                                                           headers=headers_list[i],
                                                           body=bodies[i]))


def statuses(rs):
    return Counter(getattr(r, "status", type(r).__name__) for r in rs)


def used(st, user, usage_type):
    v = st.psql_one(f"SELECT amount FROM usage_tracking WHERE user_id = '{user}' "
                    f"AND usage_type = '{usage_type}' AND period_start = usage_period_start()")
    return int(v) if v is not None else 0


def test_limit_race(st):
    st.psql(f"UPDATE plan_quotas SET monthly_limit = {L} "
            "WHERE tier = 'free' AND usage_type = 'activity_log'")
    # Round 1 races on the first INSERT of the month's row, round 2 on an existing row.
    for rnd, user, pre in ((1, "race-new", 0), (2, "race-existing", 3)):
        if pre:
            st.psql(f"SELECT * FROM track_usage('{user}', 'activity_log', {pre})")
        body = {"userId": user, "usageType": "activity_log"}
        rs = parallel(st, [body] * N, [KEY] * N)
        c = statuses(rs)
        t.eq(dict(c), {200: L - pre, 402: N - L + pre},
             f"round {rnd}: {N} parallel POSTs, limit {L}, {pre} used before: "
             f"exactly {L - pre} succeed")
        t.eq(used(st, user, "activity_log"), L, f"round {rnd}: used == {L} afterwards")
        ok_used = sorted(r.json()["used"] for r in rs if getattr(r, "status", 0) == 200)
        t.eq(ok_used, list(range(pre + 1, L + 1)),
             f"round {rnd}: each success saw a distinct running total")
        refused = [r.json() for r in rs if getattr(r, "status", 0) == 402]
        t.ok(all(j["used"] <= L and j["limit"] == L and j["error"]["code"] == "quota_exceeded"
                 for j in refused), f"round {rnd}: every 402 reports used <= limit")
    # Mixed amounts: never over the limit.
    user = "race-mixed"
    bodies = [{"userId": user, "usageType": "activity_log", "amount": 1 + i % 3} for i in range(N)]
    rs = parallel(st, bodies, [KEY] * N)
    granted = sum(b["amount"] for b, r in zip(bodies, rs) if getattr(r, "status", 0) == 200)
    t.ok(used(st, user, "activity_log") == granted <= L and
         set(statuses(rs)) <= {200, 402},
         f"mixed amounts: used == sum of granted == {granted} <= {L}", statuses(rs))
    st.psql("UPDATE plan_quotas SET monthly_limit = 100 "
            "WHERE tier = 'free' AND usage_type = 'activity_log'")


def test_same_key_race(st):
    user = "race-idem"
    body = {"userId": user, "usageType": "pain_entry", "amount": 7}
    h = dict(KEY, **{"Idempotency-Key": "same-key-everywhere"})
    rs = parallel(st, [body] * 20, [h] * 20)
    t.eq(dict(statuses(rs)), {200: 20}, "20 parallel retries of one key: all 200")
    t.eq(len({r.body for r in rs if hasattr(r, "body")}), 1, "... all with the same body")
    t.eq(sum(1 for r in rs if getattr(r, "headers", {}).get("idempotent-replayed") == "true"), 19,
         "... 19 of them marked Idempotent-Replayed")
    t.eq(used(st, user, "pain_entry"), 7, "... and counted once")
    # Distinct keys against a limit: keys do not let anyone past it.
    st.psql("UPDATE plan_quotas SET monthly_limit = 5 WHERE tier = 'free' AND usage_type = 'export'")
    user = "race-keys"
    hs = [dict(KEY, **{"Idempotency-Key": f"k{i}"}) for i in range(N)]
    rs = parallel(st, [{"userId": user, "usageType": "export"}] * N, hs)
    t.eq(dict(statuses(rs)), {200: 5, 402: N - 5}, f"{N} distinct keys, limit 5: exactly 5 succeed")
    t.eq(used(st, user, "export"), 5, "... used == 5")
    # Their retries replay the first answers exactly.
    again = parallel(st, [{"userId": user, "usageType": "export"}] * N, hs)
    t.ok(all(a.status == b.status and a.body == b.body for a, b in zip(rs, again)),
         "parallel retries of all of them replay each first answer")
    t.eq(used(st, user, "export"), 5, "... nothing more counted")
    st.psql("UPDATE plan_quotas SET monthly_limit = 2 WHERE tier = 'free' AND usage_type = 'export'")


def main():
    with t.guard("usage concurrency"), Stack() as st:
        t.run(test_limit_race, st)
        t.run(test_same_key_race, st)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
