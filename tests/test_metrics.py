#!/usr/bin/env python3
"""GET /metrics through the real Apache and PostgreSQL (TAP).

A scripted series of requests (usage, checkout, webhook, the scrapes
themselves) must show up as exact counters; every scrape passes
`promtool check metrics`; 20 parallel requests (20 processes under
mod_cgid) add exactly 20; the business gauges equal figures computed here
from the raw rows; the refusals (no token, wrong token, no way to
authenticate) and Apache's own authentication are checked; the database
down leaves the host counters scrapeable.  The shared file under many
processes is also tested in tests/unit/test_metrics.c (N x M updates).
"""
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fcgi_client import FcgiProcess  # noqa: E402
from harness import (DEFAULT_SETTINGS, PASSTHROUGH_ENV, Stack, Tap, make_jwt,  # noqa: E402
                     parallel, parse_cgi_output, program_env, stripe_signature)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "metrics-test-token-0123456789abcdef"
BEARER = {"Authorization": "Bearer " + TOKEN}
WHSEC = DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"]
ORIGIN = "https://app.example.test"
MODE = os.environ.get("BILLING_TEST_APACHE") or "cgid"

t = Tap()


def auth(user):
    now = int(time.time())
    return {"Authorization": "Bearer " + make_jwt({"sub": user, "exp": now + 600, "iat": now})}


def parse(text):
    """Samples of the text format: {(name, frozenset(labels)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        if not m:
            raise ValueError(f"unparsable sample line {line!r}")
        labels = frozenset(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def v(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def promtool(text):
    data = text if isinstance(text, bytes) else text.encode()
    p = subprocess.run(["promtool", "check", "metrics"], input=data,
                       capture_output=True)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def scrape(st, label):
    r = st.http("GET", "/metrics", headers=BEARER)
    t.ok(r.status == 200 and r.headers.get("content-type", "").startswith(
        "text/plain; version=0.0.4"), f"{label}: 200 in the text exposition format", r)
    rc, out = promtool(r.body)  # the bytes: r.text has replaced what is not UTF-8
    t.ok(rc == 0 and out.strip() == "", f"{label}: promtool check metrics is silent", out)
    return parse(r.text)


def event(etype, created, eid, obj=None):
    return json.dumps({"id": eid, "object": "event", "type": etype, "created": created,
                       "data": {"object": obj or {"id": "x", "object": "test"}}}).encode()


def hook(st, body, sig=True):
    h = {"Stripe-Signature": stripe_signature(WHSEC, body)} if sig else {}
    return st.http("POST", "/api/stripe/webhook", headers=h, body=body)


def series(st):
    """The scripted requests; returns what they must have counted."""
    u = "m-user"
    for _ in range(4):
        st.http("GET", f"/api/usage?userId={u}", headers=auth(u))                 # 200 x4
    st.http("GET", f"/api/usage?userId={u}")                                      # 401
    st.http("GET", "/api/usage?userId=someone-else", headers=auth(u))             # 403
    st.http("PUT", "/api/usage", headers=auth(u), body={})                        # 405
    st.http("OPTIONS", "/api/usage", headers={"Origin": ORIGIN,
                                              "Access-Control-Request-Method": "POST"})  # 204
    post = {"userId": u, "usageType": "export"}
    codes = [st.http("POST", "/api/usage", headers=auth(u), body=post).status for _ in range(3)]
    k = dict(auth(u), **{"Idempotency-Key": "m-key-1"})
    codes += [st.http("POST", "/api/usage", headers=k, body=post).status for _ in range(2)]
    t.eq(codes, [200, 200, 402, 402, 402], "usage POSTs: 2 counted, 3 refused (one a replay)")
    # Checkout: 2 per address per 10 minutes, then 429 before the program runs.
    order = {"userId": "m-buyer", "tier": "pro", "interval": "monthly",
             "successUrl": "https://app.example.test/ok", "cancelUrl": "https://app.example.test/no"}
    codes = [st.http("POST", "/api/stripe/create-checkout-session", body=order).status
             for _ in range(3)]
    t.eq(codes, [401, 401, 429], "checkouts: 401, 401, then 429 (address limit 2/10m)")
    # Webhook: applied, duplicate, ignored; and three refusals.
    with open(os.path.join(HERE, "data", "events", "customer.subscription.created.json")) as f:
        sub_event = json.load(f)
    now = int(time.time())
    sub_event["created"] = now - 120
    body = json.dumps(sub_event).encode()
    codes = [hook(st, body).status, hook(st, body).status,
             hook(st, event("ping.test", now, "evt_m_ping")).status,
             hook(st, event("ping.test", now, "evt_m_bad"), sig=False).status]
    bad = event("ping.test", now, "evt_m_forged")
    codes.append(st.http("POST", "/api/stripe/webhook", body=bad,
                         headers={"Stripe-Signature": stripe_signature("whsec_wrong", bad)}).status)
    codes.append(hook(st, b'{"not":"an event"}').status)
    t.eq(codes, [200, 200, 200, 400, 400, 400], "webhook deliveries: 3 x 200, 3 x 400")
    # Two refused scrapes.
    r1 = st.http("GET", "/metrics")
    r2 = st.http("GET", "/metrics", headers={"Authorization": "Bearer not-the-token"})
    t.ok(r1.status == 401 and r1.headers.get("www-authenticate", "").startswith("Bearer") and
         (r1.json() or {}).get("error", {}).get("code") == "unauthorized" and
         b"billing_" not in r1.body,
         "no credentials: 401 with a Bearer challenge, no figures", r1)
    t.ok(r2.status == 401 and 'error="invalid_token"' in r2.headers.get("www-authenticate", "")
         and b"billing_" not in r2.body, "a wrong token: 401 invalid_token, no figures", r2)


def check_series(s):
    ep = "billing_http_requests_total"
    want = {("usage", "2xx"): 7, ("usage", "4xx"): 6, ("usage", "1xx"): 0, ("usage", "3xx"): 0,
            ("usage", "5xx"): 0, ("create-checkout-session", "4xx"): 3,
            ("create-checkout-session", "2xx"): 0, ("webhook", "2xx"): 3, ("webhook", "4xx"): 3,
            ("metrics", "4xx"): 2, ("metrics", "2xx"): 0}
    got = {k: v(s, ep, endpoint=k[0], code=k[1]) for k in want}
    t.eq(got, {k: float(n) for k, n in want.items()},
         "requests by endpoint and status class, exactly (this scrape not yet counted)")
    h = "billing_http_request_duration_seconds"
    t.ok(v(s, h + "_count", endpoint="usage") == 13 and
         v(s, h + "_bucket", endpoint="usage", le="+Inf") == 13 and
         v(s, h + "_bucket", endpoint="usage", le="10") <= 13 and
         0 < v(s, h + "_sum", endpoint="usage") < 13 * 10,
         "usage duration histogram: 13 observations, a plausible sum")
    t.eq((v(s, "billing_rate_limited_total", endpoint="create-checkout-session", scope="address"),
          v(s, "billing_rate_limited_total", endpoint="create-checkout-session", scope="caller"),
          v(s, "billing_rate_limited_total", endpoint="usage", scope="caller")),
         (1.0, 0.0, 0.0), "429s by endpoint and scope")
    w = "billing_webhook_events_total"
    t.eq({r: v(s, w, type="customer.subscription.created", result=r)
          for r in ("applied", "duplicate", "ignored", "failed")},
         {"applied": 1.0, "duplicate": 1.0, "ignored": 0.0, "failed": 0.0},
         "webhook events by type and result: the subscription applied once, then a duplicate")
    t.eq(v(s, w, type="ping.test", result="ignored"), 1.0, "ping.test ignored once")
    t.eq({r: v(s, "billing_webhook_rejected_total", reason=r)
          for r in ("signature_missing", "signature_mismatch", "invalid_payload")},
         {"signature_missing": 1.0, "signature_mismatch": 1.0, "invalid_payload": 1.0},
         "webhook refusals by reason")
    lag = "billing_webhook_lag_seconds"
    t.ok(v(s, lag + "_bucket", le="5") == 1 and v(s, lag + "_bucket", le="60") == 1 and
         v(s, lag + "_bucket", le="300") == 3 and v(s, lag + "_count") == 3 and
         240 <= v(s, lag + "_sum") <= 250,
         "lag: the ping at once, the two subscription deliveries ~120 s after creation",
         {k: val for k, val in s.items() if k[0].startswith(lag)})
    # A 402 stores no Idempotency-Key (it counted nothing), so its retry is
    # judged afresh and is a 402 answer of its own: 3.
    t.eq(v(s, "billing_usage_quota_breaches_total", tier="free", usage_type="export"), 3.0,
         "402 breaches by tier and type: 3 (a retried 402 is answered, and counted, again)")
    t.eq(v(s, "billing_metrics_file_up"), 1.0, "the counter file is in use")

# Runs in a private mount namespace (unshare; as root, or as a user mapped to
# root): a 256 KiB tmpfs at argv[1], then each step of the JSON on stdin, in
# order: ["fill"] writes a file until the tmpfs is full; ["sparse"] writes the
# metrics file as earlier builds made it (header, then a hole: ftruncate);
# [prog, env, body] runs a program.  Prints [[returncode, stdout, stderr], ...].
FULL_FS = r"""
import base64, json, os, struct, subprocess, sys, time
d = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", d], check=True)
out = []
for step in json.load(sys.stdin):
    if step[0] == "fill":
        fd = os.open(os.path.join(d, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, bytes(4096)) > 0:
                pass
        except OSError:
            pass
        os.close(fd)
    elif step[0] == "sparse":
        with open(os.path.join(d, "billing-metrics.v1"), "wb") as f:
            f.write(b"BILLMTRC" + struct.pack("=IIIIQQ", 1, 64, 256, 512, int(time.time()), 0)
                    + bytes(24))
            f.truncate(64 + 256 * 512)
    else:
        p = subprocess.run([step[0]], env=step[1], input=step[2].encode(), capture_output=True)
        out.append([p.returncode, base64.b64encode(p.stdout).decode(), p.stderr.decode()])
print(json.dumps(out))
"""


def in_full_fs(mnt, steps):
    """FULL_FS's steps with a tmpfs at mnt; the answers of the programs run, as Resp."""
    ns = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    p = subprocess.run(ns + [sys.executable, "-c", FULL_FS, mnt], capture_output=True,
                       input=json.dumps(steps).encode(), timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"full file system: {p.stderr.decode(errors='replace')}")
    return [parse_cgi_output(base64.b64decode(o), e, rc) for rc, o, e in json.loads(p.stdout)]


def test_disk_full(st, tmp):
    """A full file system must cost the counts, never an answer.  The file's
    pages were holes (ftruncate) until first touched through the mapping; on
    a full file system that touch was SIGBUS: the process killed, a scrape
    without an answer, a request after its database work (usage counted, no
    answer, so the client retries)."""
    mnt = os.path.join(tmp, "full")
    os.mkdir(mnt)
    os.chmod(mnt, 0o755)

    def usage(user):
        body = json.dumps({"userId": user, "usageType": "pain_entry"})
        h = dict(auth(user), **{"Content-Type": "application/json"})
        return [os.path.join(st.cgi_bin, "usage.cgi"),
                st.cgi_env("usage", "POST", body.encode(), {"METRICS_DIR": mnt}, h), body]

    scrape_step = [os.path.join(st.cgi_bin, "metrics.cgi"),
                   st.cgi_env("metrics", "GET", b"", {"METRICS_DIR": mnt, "REMOTE_USER": "ops"}),
                   ""]
    # The file made by a usage POST while there was room; the disk fills; the
    # scrape is the first to touch the other series' pages (on tmpfs a read
    # through a shared mapping needs a block too).
    r, after = in_full_fs(mnt, [usage("m-full-1"), ["fill"], scrape_step])
    t.eq(r.status, 200, "full disk: the counter file made by a usage POST while there was room")
    s = parse(after.text) if after.status == 200 else {}
    t.ok(after.returncode == 0 and v(s, "billing_metrics_file_up") == 1 and
         v(s, "billing_http_requests_total", endpoint="usage", code="2xx") == 1,
         "... the disk full, a scrape answers with the count: the file's blocks were its own "
         "from the start", after)
    # A file with holes (as builds before this one made it), then the disk full.
    r, after = in_full_fs(mnt, [["sparse"], ["fill"], usage("m-full-2"), scrape_step])
    t.ok(r.returncode == 0 and r.status == 200 and
         "cannot be given its blocks" in r.stderr,
         "a file with holes on a full disk: the usage POST answers 200, counting off, logged", r)
    s = parse(after.text) if after.status == 200 else {}
    t.ok(after.returncode == 0 and v(s, "billing_metrics_file_up") == 0,
         "... and the scrape answers, billing_metrics_file_up 0", after)
    t.eq(st.psql_one("SELECT sum(amount) FROM usage_tracking WHERE user_id LIKE 'm-full-%'"), "2",
         "... each POST counted once in the database")


def fcgi_metrics(st, d, stderr_path=None):
    """A FastCGI /metrics process counting in METRICS_DIR d, as mod_fcgid
    starts it, and the params of a scrape request to it."""
    params = st.cgi_env("metrics", "GET", b"", {"REMOTE_USER": "ops"})
    for k in list(st.settings) + ["PATH"] + list(PASSTHROUGH_ENV):
        params.pop(k, None)
    return FcgiProcess(os.path.join(st.cgi_bin, "metrics.cgi"),
                       program_env(st.settings, {"METRICS_DIR": d}), stderr_path), params


def scrape_until(proc, params, done):
    """Scrapes proc until done(parsed scrape) holds, 5 s at most (the file
    is looked at once a second); the last scrape, parsed."""
    deadline, s = time.monotonic() + 5, {}
    while time.monotonic() < deadline:
        r = proc.request(params)
        s = parse(r.body.decode()) if r.status == 200 else {}
        if done(s):
            break
        time.sleep(0.05)
    return s


def test_file_deleted(st, tmp):
    """Deleting the file is how an operator resets the counts.  A FastCGI
    process maps it once: it went on counting into the deleted file (lost)
    and, as /metrics, serving the old counts while new processes counted in
    a new file.  It must follow the path within a second."""
    d = os.path.join(tmp, "reset")
    os.mkdir(d)
    os.chmod(d, 0o777)
    f = os.path.join(d, "billing-metrics.v1")
    proc, params = fcgi_metrics(st, d)
    try:
        r = proc.request(params)
        t.ok(r.status == 200 and os.path.exists(f), "a FastCGI /metrics process made the file", r)
        os.unlink(f)
        r = st.cgi("usage", method="GET", query="userId=m-reset", headers=auth("m-reset"),
                   env={"METRICS_DIR": d})
        t.ok(r.status == 200 and os.path.exists(f),
             "the file deleted; a plain CGI's request made a new one", r)
        s = scrape_until(proc, params, lambda s: v(
            s, "billing_http_requests_total", endpoint="usage", code="2xx") == 1)
        t.eq(v(s, "billing_http_requests_total", endpoint="usage", code="2xx"), 1.0,
             "... the FastCGI process serves the new file's counts within a second")
    finally:
        proc.cleanup()
    r = st.cgi("metrics", method="GET", env={"METRICS_DIR": d, "REMOTE_USER": "ops"})
    s = parse(r.text) if r.status == 200 else {}
    t.eq(v(s, "billing_http_requests_total", endpoint="metrics", code="2xx"), 1.0,
         "... and counts in it: its answer of that scrape is in the new file")


def test_foreign_file(st, tmp):
    """A file of another layout is left alone, and said once per process:
    it was reopened and logged again on every later update."""
    d = os.path.join(tmp, "foreign")
    os.mkdir(d)
    with open(os.path.join(d, "billing-metrics.v1"), "wb") as f:
        f.write(b"NOTOURS!" + bytes(64 + 256 * 512 - 8))
    r = st.cgi("metrics", method="GET", env={"METRICS_DIR": d, "REMOTE_USER": "ops"})
    s = parse(r.text) if r.status == 200 else {}
    t.ok(v(s, "billing_metrics_file_up") == 0 and r.stderr.count("has another layout") == 1,
         "a file of another layout: a scrape answers, file_up 0, logged once", r)


def test_foreign_file_replaced(st, tmp):
    """A FastCGI process that found no usable file (another layout, or a
    full disk when it tried to make one) takes the file that is at the
    path later: it stayed without counting until it was restarted, and as
    /metrics answered billing_metrics_file_up 0 for good."""
    d = os.path.join(tmp, "foreign-replaced")
    os.mkdir(d)
    os.chmod(d, 0o777)
    f = os.path.join(d, "billing-metrics.v1")
    with open(f, "wb") as fh:
        fh.write(b"NOTOURS!" + bytes(64 + 256 * 512 - 8))
    log = os.path.join(tmp, "foreign-replaced.stderr")
    proc, params = fcgi_metrics(st, d, log)
    try:
        r = proc.request(params)
        s = parse(r.body.decode()) if r.status == 200 else {}
        t.ok(v(s, "billing_metrics_file_up") == 0,
             "a FastCGI /metrics process finds a file of another layout: file_up 0", r)
        os.unlink(f)
        r = st.cgi("usage", method="GET", query="userId=m-foreign", headers=auth("m-foreign"),
                   env={"METRICS_DIR": d})
        t.ok(r.status == 200 and os.path.exists(f),
             "the operator removes it; a plain CGI's request makes ours", r)
        s = scrape_until(proc, params, lambda s: v(s, "billing_metrics_file_up") == 1)
        t.ok(v(s, "billing_metrics_file_up") == 1 and
             v(s, "billing_http_requests_total", endpoint="usage", code="2xx") == 1,
             "... the FastCGI process maps the new file within a second and serves its counts",
             s)
    finally:
        proc.cleanup()
    with open(log, errors="replace") as fh:
        t.eq(fh.read().count("has another layout"), 1,
             "... the file of another layout was said once, not once a second")


def test_damaged_slots(st, tmp):
    """Slots no program of ours could have written (a damaged file) are
    left out: one key of invalid UTF-8 made the whole scrape unparsable."""
    d = os.path.join(tmp, "damaged")
    os.mkdir(d)
    slots = bytearray(256 * 512)

    def put(i, kind, key, value):
        slots[i * 512:i * 512 + 8] = struct.pack("=II", 2, kind)  # ready
        slots[i * 512 + 8:i * 512 + 8 + len(key)] = key
        slots[i * 512 + 64 + 8:i * 512 + 72 + 8] = struct.pack("=Q", value)  # 2xx / counter 1

    put(3, 1, b"us\xffage\x01", 5)
    put(4, 1, b"usage", 6)
    put(5, 2, b'evil"}\nx', 7)
    with open(os.path.join(d, "billing-metrics.v1"), "wb") as f:
        f.write(b"BILLMTRC" + struct.pack("=IIIIQQ", 1, 64, 256, 512, int(time.time()), 0) +
                bytes(24) + bytes(slots))
    r = st.cgi("metrics", method="GET", env={"METRICS_DIR": d, "REMOTE_USER": "ops"})
    rc, out = promtool(r.body)  # the bytes: r.text has replaced what is not UTF-8
    t.ok(r.status == 200 and rc == 0, "damaged slots: promtool check metrics accepts the scrape",
         out)
    s = parse(r.text) if rc == 0 else {}
    t.ok(v(s, "billing_http_requests_total", endpoint="usage", code="2xx") == 6 and
         not any(k[0] == "billing_webhook_events_total" for k in s),
         "... the sound slot's count is there, the damaged ones are left out")


def seed_business(st):
    rows = []
    tiers = ["free", "basic", "pro", "enterprise"]
    statuses = ["trialing", "active", "past_due", "canceled", "unpaid", "incomplete", "paused"]
    for i in range(40):
        tier = tiers[i % 4]
        status = statuses[i % 7]
        interval = "yearly" if i % 3 == 0 else "monthly"
        amount = None if i % 11 == 5 else 500 + 37 * i
        currency = None if i % 13 == 7 else ("usd" if i % 2 else "EUR")
        rows.append((f"m-sub-{i}", tier, status, interval, amount, currency))

    def lit(x):
        return "NULL" if x is None else f"'{x}'" if isinstance(x, str) else str(x)

    st.psql("INSERT INTO subscriptions (stripe_subscription_id, user_id, tier, status, "
            "billing_interval, unit_amount, currency) VALUES " +
            ", ".join(f"({lit(r[0])}, {lit(r[0])}, {lit(r[1])}, {lit(r[2])}, {lit(r[3])}, "
                      f"{lit(r[4])}, {lit(r[5])})" for r in rows))
    st.psql("INSERT INTO notifications (kind, created_at, status, sent_at) VALUES "
            "('trial_will_end', now() - interval '3600 seconds', 'pending', NULL), "
            "('trial_will_end', now() - interval '60 seconds', 'pending', NULL), "
            "('trial_will_end', now(), 'pending', NULL), "
            "('trial_will_end', now() - interval '9999 seconds', 'sent', now()), "
            "('trial_will_end', now() - interval '50 seconds', 'sent', now())")


def check_business(st, s, label):
    """The gauges against figures computed here from the raw rows."""
    raw = st.psql("SELECT tier, status, billing_interval, unit_amount, currency FROM subscriptions")
    subs, trials, mrr = defaultdict(int), defaultdict(int), defaultdict(float)
    for tier, status, interval, amount, currency in raw:
        subs[(tier, status)] += 1
        if status == "trialing":
            trials[tier] += 1
        if status in ("active", "past_due") and amount is not None and currency is not None:
            # yearly: amount / 12 rounded half up per subscription (README)
            mrr[currency.lower()] += (int(amount) + 6) // 12 if interval == "yearly" \
                else int(amount)
    got_subs = {(dict(k[1])["tier"], dict(k[1])["status"]): val for k, val in s.items()
                if k[0] == "billing_subscriptions"}
    t.ok(len(got_subs) == 32 and all(got_subs[k] == subs.get(k, 0) for k in got_subs),
         f"{label}: subscriptions by tier x status (all 32, zeros included) match the rows",
         {k: (got_subs[k], subs.get(k, 0)) for k in got_subs if got_subs[k] != subs.get(k, 0)})
    t.eq({dict(k[1])["tier"]: val for k, val in s.items() if k[0] == "billing_trials"},
         {tier: float(trials.get(tier, 0)) for tier in ("free", "basic", "pro", "enterprise")},
         f"{label}: trials by tier")
    got_mrr = {dict(k[1])["currency"]: val for k, val in s.items()
               if k[0] == "billing_mrr_minor_units"}
    t.ok(set(got_mrr) == set(mrr) and all(abs(got_mrr[c] - mrr[c]) < 1e-6 for c in mrr),
         f"{label}: MRR by currency (active + past_due, yearly / 12, rounded) = {dict(mrr)}", got_mrr)


def check_notifications(st, s, failed, oldest, label):
    t.eq((v(s, "billing_notifications", status="pending"), v(s, "billing_notifications",
                                                             status="failed")),
         (3.0 - failed, float(failed)), f"{label}: notifications pending and failed")
    age = v(s, "billing_notification_oldest_pending_age_seconds")
    t.ok(age is not None and oldest <= age < oldest + 120,
         f"{label}: oldest pending notification ~{oldest} s old ({age})")


def parallel_scrape(st, before):
    n = 20
    out = [getattr(r, "status", r) for r in parallel(n, lambda i: st.http(
        "GET", "/api/usage?userId=m-par", headers=auth("m-par")))]
    after = scrape(st, "after 20 parallel requests")
    t.eq(out.count(200), n, f"{n} parallel usage GETs answered 200")
    ep = "billing_http_requests_total"
    t.eq(v(after, ep, endpoint="usage", code="2xx") - v(before, ep, endpoint="usage", code="2xx"),
         float(n), f"... each counted once by its own process: 2xx +{n}")
    h = "billing_http_request_duration_seconds_count"
    t.eq(v(after, h, endpoint="usage") - v(before, h, endpoint="usage"), float(n),
         f"... and observed once in the histogram: +{n}")
    t.eq(v(after, ep, endpoint="metrics", code="2xx") - v(before, ep, endpoint="metrics",
                                                            code="2xx"),
         1.0, "the previous scrape is counted too (after its answer)")


def apache_auth_conf(tmp):
    """/ops/metrics: the same program behind Apache's Basic authentication."""
    pw = os.path.join(tmp, "htpasswd")
    subprocess.run(["htpasswd", "-cbB", pw, "ops", "ops-secret"], check=True, capture_output=True)
    os.chmod(pw, 0o644)
    mods = "/usr/lib/apache2/modules"
    alias = "AliasMatch" if MODE == "fcgid" else "ScriptAliasMatch"
    return "\n".join(
        [f"LoadModule {m}_module {mods}/mod_{m}.so"
         for m in ("authn_core", "authn_file", "auth_basic", "authz_user")] +
        [f'{alias} "^/ops/metrics$" "${{BILLING_CGI_BIN}}/metrics.cgi"',
         '<Location "/ops/metrics">', "    AuthType Basic", '    AuthName "ops"',
         f'    AuthUserFile "{pw}"', "    Require valid-user", "</Location>"])


def test_auth(st):
    basic = "Basic " + base64.b64encode(b"ops:ops-secret").decode()
    r = st.http("GET", "/ops/metrics", headers={"Authorization": basic})
    t.ok(r.status == 200 and "billing_http_requests_total" in r.text,
         "Apache's Basic authentication (REMOTE_USER) is enough: 200 without the token", r)
    r = st.http("GET", "/ops/metrics")
    t.eq(r.status, 401, "... and Apache refuses the same URL without credentials")
    r = st.cgi("metrics", method="GET", env={"METRICS_TOKEN": None})
    t.ok(r.status == 500 and ((r.json() or {}).get("error") or {}).get("code") == "misconfigured"
         and "METRICS_TOKEN" in r.stderr,
         "no METRICS_TOKEN and no Apache authentication: 500 misconfigured, named in the log", r)
    r = st.cgi("metrics", method="GET", env={"METRICS_TOKEN": "short"},
               headers={"Authorization": "Bearer short"})
    t.eq(r.status, 500, "a METRICS_TOKEN under 16 bytes is refused as misconfigured")
    r = st.cgi("metrics", method="POST", headers=BEARER)
    t.eq(r.status, 405, "POST /metrics: 405")


def test_database_down(st):
    st.pg_stop()
    try:
        r = st.http("GET", "/metrics", headers=BEARER)
        s = parse(r.text) if r.status == 200 else {}
        t.ok(r.status == 200 and v(s, "billing_database_up") == 0 and
             v(s, "billing_http_requests_total", endpoint="usage", code="2xx") is not None and
             v(s, "billing_subscriptions", tier="pro", status="active") is None,
             "database down: still 200, host counters there, billing_database_up 0, no gauges", r)
        rc, out = promtool(r.body)  # the bytes: r.text has replaced what is not UTF-8
        t.ok(rc == 0, "... and promtool accepts it", out)
    finally:
        st.pg_start()


def main():
    tmp = tempfile.mkdtemp(prefix="billing-metrics-test-")
    os.chmod(tmp, 0o755)
    mdir = os.path.join(tmp, "counters")
    os.mkdir(mdir)
    os.chmod(mdir, 0o777)  # the server user (nobody when we are root) creates the file
    settings = {"METRICS_DIR": mdir, "METRICS_TOKEN": TOKEN, "STRIPE_SYNC_MODE": "event",
                "RATE_LIMIT_CHECKOUT_IP": "2/10m"}
    try:
        with t.guard("metrics"), Stack(settings, extra_apache_conf=apache_auth_conf(tmp)) as st:
            series(st)
            s = scrape(st, "after the series")
            t.run(check_series, s)
            seed_business(st)
            s = scrape(st, "with business rows")
            t.run(check_business, st, s, "business")
            t.run(check_notifications, st, s, 0, 3600, "all unsent rows pending")
            # Failed rows (the mailer gave up) are not pending.
            st.psql("UPDATE notifications SET status = 'failed' "
                    "WHERE sent_at IS NULL AND created_at < now() - interval '3000 seconds'")
            s = scrape(st, "with a status column")
            t.run(check_notifications, st, s, 1, 60, "one failed")
            t.run(parallel_scrape, st, s)
            t.run(test_auth, st)
            t.run(test_disk_full, st, tmp)
            t.run(test_file_deleted, st, tmp)
            t.run(test_foreign_file, st, tmp)
            t.run(test_foreign_file_replaced, st, tmp)
            t.run(test_damaged_slots, st, tmp)
            t.run(test_database_down, st)
            names = os.listdir(mdir)
            t.eq(names, ["billing-metrics.v1"], "METRICS_DIR holds the one counter file")
        # Every process that counted is gone, and so are Apache and PostgreSQL;
        # a new process still finds the counts.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REQUEST_METHOD": "GET",
               "REMOTE_ADDR": "127.0.0.1", "REMOTE_USER": "ops", "METRICS_DIR": mdir,
               "DATABASE_URL": f"postgresql:///none?host={tmp}&connect_timeout=2"}
        env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)})
        p = subprocess.run([os.path.join(st.cgi_bin, "metrics.cgi")], env=env,
                           capture_output=True, timeout=60)
        r = parse_cgi_output(p.stdout)
        s = parse(r.text) if r.status == 200 else {}
        t.ok(v(s, "billing_http_requests_total", endpoint="usage", code="2xx") == 27 and
             v(s, "billing_database_up") == 0,
             "the counts outlive every process that made them: usage 2xx still 27", r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
