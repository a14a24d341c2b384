#!/bin/sh
# Benchmark of webhook.cgi on this machine (a script, not a timed test).
#
#   bench/webhook.sh [BUILDDIR]          (default: $BUILDDIR, else the current directory)
#
# Starts its own stack through tests/harness.py (private PostgreSQL, fake
# Stripe, Apache on 127.0.0.1; all torn down at the end), STRIPE_SYNC_MODE=event
# so that only our own work is measured, and prints:
#   1. the per-invocation wall time of webhook.cgi for one signed event piped on
#      stdin: median (and p90) over RUNS invocations, each a new event (new event
#      and subscription ids), timed from fork to exit; plus hyperfine's figure
#      for re-delivering one event (the duplicate path) when hyperfine exists;
#   2. events/s and p50/p99 latency through Apache at concurrency 1, 4 and 16
#      (REQUESTS requests each, unique event ids, valid signatures), with
#      bench/loadgen.py.
# Bounded: RUNS (default 200) and REQUESTS (default 400) requests; loopback only.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
SRCDIR=$(dirname "$here")
BUILDDIR=$(cd "${1:-${BUILDDIR:-.}}" && pwd)
if [ ! -x "$BUILDDIR/cgi-bin/webhook.cgi" ]; then
	echo "webhook.sh: $BUILDDIR/cgi-bin/webhook.cgi not found (build first, or pass BUILDDIR)" >&2
	exit 1
fi
RUNS=${RUNS:-200}
REQUESTS=${REQUESTS:-400}
export SRCDIR BUILDDIR RUNS REQUESTS
exec python3 - <<'EOF'
import json, os, re, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.environ["SRCDIR"], "tests"))
sys.path.insert(0, os.path.join(os.environ["SRCDIR"], "bench"))
from harness import Stack, stripe_signature  # noqa: E402
import loadgen  # noqa: E402

SECRET = "whsec_bench"
RUNS = max(1, min(int(os.environ["RUNS"]), 5000))
REQUESTS = max(1, min(int(os.environ["REQUESTS"]), 20000))
with open(os.path.join(os.environ["SRCDIR"], "tests/data/events/customer.subscription.created.json")) as f:
    TEMPLATE = json.load(f)


def body(tag, i):
    ev = json.loads(json.dumps(TEMPLATE))
    ev["id"] = f"evt_bench_{tag}_{i}"
    ev["data"]["object"]["id"] = f"sub_bench_{tag}_{i}"
    ev["data"]["object"]["customer"] = f"cus_bench_{tag}_{i}"
    return json.dumps(ev).encode()


def ms(v):
    return f"{v * 1000:.2f} ms"


settings = {"STRIPE_SYNC_MODE": "event", "STRIPE_WEBHOOK_SECRET": SECRET}
with Stack(settings=settings) as st:
    cgi = os.path.join(st.cgi_bin, "webhook.cgi")
    print(f"# webhook.cgi benchmark: {os.uname().nodename}, {os.cpu_count()} CPUs, "
          f"PostgreSQL + Apache on loopback, STRIPE_SYNC_MODE=event", flush=True)

    # 1. Piped invocations, each a new event.
    jobs = []
    for i in range(RUNS):
        b = body("cgi", i)
        jobs.append((b, st.cgi_env("webhook", body=b,
                                    headers={"Stripe-Signature": stripe_signature(SECRET, b)})))
    times, inside, bad = [], [], 0
    for b, env in jobs:
        t0 = time.perf_counter()
        p = subprocess.run([cgi], input=b, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
        bad += not p.stdout.startswith(b"Status: 200")
        m = re.search(rb" status=\d+ ms=(\d+)", p.stderr)
        if m:
            inside.append(int(m.group(1)) / 1000.0)
    times.sort()
    print(f"piped, new event each run     median {ms(statistics.median(times))}   "
          f"p90 {ms(loadgen.percentile(times, 90))}   min {ms(times[0])}   "
          f"runs={RUNS} non-200={bad}", flush=True)
    if inside:
        print(f"  of which inside main()      median {ms(statistics.median(inside))} "
              f"(log_begin to response, from the log line; the rest is exec, dynamic "
              f"linking and exit)", flush=True)

    if shutil.which("hyperfine"):
        tmp = tempfile.mkdtemp(prefix="webhook-bench-")
        b = body("hyperfine", 0)
        path = os.path.join(tmp, "event.json")
        with open(path, "wb") as f:
            f.write(b)
        env = st.cgi_env("webhook", body=b,
                         headers={"Stripe-Signature": stripe_signature(SECRET, b)})
        out = os.path.join(tmp, "hf.json")
        subprocess.run(["hyperfine", "--style", "none", "--warmup", "5", "--runs", str(RUNS),
                        "--export-json", out, f"{cgi} < {path}"], env=env,
                       stdout=subprocess.DEVNULL, check=True)
        with open(out) as f:
            r = json.load(f)["results"][0]
        print(f"hyperfine, redelivered event  median {ms(r['median'])}   mean {ms(r['mean'])}"
              f" ± {ms(r['stddev'])}   runs={RUNS} (duplicate path)", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)

    # 2. Through Apache.
    for c in (1, 4, 16):
        def make(i, c=c):
            b = body(f"http{c}", i)
            return ("POST", "/api/stripe/webhook",
                    {"Content-Type": "application/json",
                     "Stripe-Signature": stripe_signature(SECRET, b)}, b)
        s = loadgen.run("127.0.0.1", st.port, make, total=REQUESTS, concurrency=c)
        print(loadgen.format_stats(f"apache c={c}", s).replace("req/s", "events/s"), flush=True)
    n = st.psql_one("SELECT count(*) FROM billing_events")
    print(f"# billing_events rows written: {n} (expected {RUNS + 1 + 3 * REQUESTS})")
EOF
