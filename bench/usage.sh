#!/usr/bin/env bash
# Benchmark of usage.cgi (prints figures; not a test).
#
#   bench/usage.sh                       BUILDDIR=build tree (default: ./build, or cwd
#                                        if it holds cgi-bin/usage.cgi)
#   RUNS=200 REQUESTS=2000 SECONDS_PER_LEVEL=30 bench/usage.sh   (the defaults)
#
# Starts its own stack (tests/harness.py: PostgreSQL, Apache with the real
# apache/billing-cgi.conf) and measures
#   1. the wall time of one POST piped on stdin to cgi-bin/usage.cgi
#      (hyperfine, RUNS runs after 20 warm-ups; median reported), and
#   2. requests/s and latency p50/p99 of POST /api/usage through Apache on
#      loopback at concurrency 1, 4 and 16 (ApacheBench `ab`, keep-alive; at
#      most REQUESTS requests or SECONDS_PER_LEVEL seconds per level; GET as
#      well for comparison).
# Every POST is counted for real against an unlimited (enterprise) user, with
# the server-to-server API key, so each one runs track_usage in PostgreSQL.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BUILDDIR:-}" ]; then
	if [ -x cgi-bin/usage.cgi ]; then BUILDDIR=$PWD; else BUILDDIR=$top/build; fi
fi
[ -x "$BUILDDIR/cgi-bin/usage.cgi" ] || { echo "bench/usage.sh: no $BUILDDIR/cgi-bin/usage.cgi (build first, or set BUILDDIR)" >&2; exit 1; }
for tool in hyperfine ab python3; do
	command -v "$tool" >/dev/null || { echo "bench/usage.sh: $tool not found (apt-get install hyperfine apache2-utils)" >&2; exit 1; }
done
export BUILDDIR SRCDIR=$top RUNS=${RUNS:-200} REQUESTS=${REQUESTS:-2000} \
	SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-30}

exec python3 - <<'EOF'
import json, os, re, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.environ["SRCDIR"], "tests"))
from harness import DEFAULT_SETTINGS, Stack

RUNS = int(os.environ["RUNS"])
SECONDS = int(os.environ["SECONDS_PER_LEVEL"])
REQUESTS = int(os.environ["REQUESTS"])
AUTH = "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]
USER = "bench-user"
BODY = json.dumps({"userId": USER, "usageType": "pain_entry", "amount": 1}).encode()


def ab(st, tmp, concurrency, method):
    n = REQUESTS
    csv = os.path.join(tmp, f"ab-{method}-{concurrency}.csv")
    # -t then -n: at most n requests, at most SECONDS seconds per level.
    cmd = ["ab", "-q", "-k", "-t", str(SECONDS), "-n", str(n), "-c", str(concurrency), "-e", csv,
           "-H", "Authorization: " + AUTH]
    if method == "POST":
        cmd += ["-p", os.path.join(tmp, "body.json"), "-T", "application/json"]
        cmd.append(st.url("/api/usage"))
    else:
        cmd.append(st.url("/api/usage?userId=" + USER))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    n = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    # ab calls a body of another length "failed"; our bodies carry running totals.
    m = re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)", out)
    failed = sum(int(x) for x in m.groups()) if m else 0
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = {}
    with open(csv) as f:
        next(f)
        for line in f:
            p, ms = line.strip().split(",")
            pct[int(float(p))] = float(ms)
    return n, rps, pct[50], pct[99], failed + (int(non2xx.group(1)) if non2xx else 0)


with Stack() as st, tempfile.TemporaryDirectory() as tmp:
    st.psql(f"""INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status)
                VALUES ('{USER}', 'sub_bench', 'enterprise', 'active')""")
    with open(os.path.join(tmp, "body.json"), "wb") as f:
        f.write(BODY)

    # 1. Piped: the CGI environment as Apache would set it, body on stdin.
    env = st.cgi_env("usage", "POST", BODY, headers={"Authorization": AUTH})
    check = subprocess.run([os.path.join(st.cgi_bin, "usage.cgi")], input=BODY, env=env,
                           capture_output=True)
    if not check.stdout.startswith(b"Status: 200"):
        sys.exit("bench: piped POST did not answer 200: " + check.stdout[:300].decode(errors="replace"))
    hf = os.path.join(tmp, "hyperfine.json")
    cgi = os.path.join(st.cgi_bin, "usage.cgi")
    subprocess.run(["hyperfine", "--style", "none", "--warmup", "20", "--runs", str(RUNS),
                    "--export-json", hf, f"{cgi} < {tmp}/body.json > /dev/null 2>&1"],
                   env=dict(env, PATH=os.environ["PATH"]), check=True, capture_output=True)
    r = json.load(open(hf))["results"][0]
    # The cost of starting any process on this machine right now, for scale.
    subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", "20", "--runs", str(RUNS),
                    "--export-json", hf, "/bin/true"], check=True, capture_output=True)
    base = json.load(open(hf))["results"][0]
    print(f"usage.cgi benchmark  ({os.cpu_count()} CPUs, loopback, PostgreSQL {st.psql_one('SHOW server_version')})")
    print(f"piped POST (hyperfine, {RUNS} runs): median {r['median'] * 1000:.2f} ms, "
          f"mean {r['mean'] * 1000:.2f} ± {r['stddev'] * 1000:.2f} ms, "
          f"min {r['min'] * 1000:.2f} ms  (baseline /bin/true: median {base['median'] * 1000:.2f} ms; "
          f"load average {os.getloadavg()[0]:.1f})")

    # 2. Through Apache.
    print(f"{'through Apache (ab -k)':<24} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for method in ("POST", "GET"):
        for c in (1, 4, 16):
            n, rps, p50, p99, bad = ab(st, tmp, c, method)
            print(f"{method + ' c=' + str(c):<24} {n:>8} {rps:>9.1f} {p50:>8.1f} {p99:>8.1f} {bad:>7}")
    total = st.psql_one(f"SELECT amount FROM usage_tracking WHERE user_id = '{USER}'")
    print(f"(pain_entry counted for {USER}: {total})")
EOF
