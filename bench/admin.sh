#!/usr/bin/env bash
# Benchmark of the operator console (admin.cgi) at scale (prints figures; not a test).
#
#   BENCH_DIR=/tmp/bench-admin bench/admin.sh [BUILDDIR]
#
# Uses the PostgreSQL cluster that `BENCH_DIR=... KEEP=1 bench/analytics.sh`
# generated (1,000,000 subscriptions, 10,000,000 usage rows, 5,000,000
# billing events; made first when BENCH_DIR holds none) and keeps it.  It
# applies today's sql/schema.sql (the console's indexes), then
#   1. runs BUILDDIR/cgi-bin/admin.cgi as Apache would run it (CGI
#      environment, REMOTE_USER, one fresh process and connection per request)
#      for every page and the analytics API, once to warm the caches and then
#      RUNS times (default 7), and prints the median and the slowest wall time;
#   2. runs each once more with auto_explain on (PGOPTIONS) and writes the
#      EXPLAIN (ANALYZE, BUFFERS) of every statement into
#      $BENCH_DIR/admin-plans.txt, and reports sequential scans of big tables.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILDDIR=${1:-${BUILDDIR:-$top/build}}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RUNS=${RUNS:-7}
[ -n "${BENCH_DIR:-}" ] || { echo "bench/admin.sh: set BENCH_DIR (a kept bench/analytics.sh cluster, or where to make one)" >&2; exit 2; }
[ -x "$BUILDDIR/cgi-bin/admin.cgi" ] || { echo "bench/admin.sh: no $BUILDDIR/cgi-bin/admin.cgi" >&2; exit 2; }
if [ ! -d "$BENCH_DIR/data" ]; then
	BENCH_DIR=$BENCH_DIR KEEP=1 RUNS=1 "$top/bench/analytics.sh"
fi
PG_SETTINGS="-c shared_buffers=256MB -c work_mem=16MB -c maintenance_work_mem=512MB
 -c max_wal_size=8GB -c fsync=off -c synchronous_commit=off -c full_page_writes=off
 -c max_parallel_workers_per_gather=2 -c jit=off"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGPASSWORD
# A cluster already running (started by hand) is used as it is and left running.
if ! as_pg "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" status >/dev/null 2>&1; then
	# shellcheck disable=SC2086  # PG_SETTINGS is a list of options
	as_pg "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w -t 120 \
		-o "-c listen_addresses='' -k $BENCH_DIR $(echo $PG_SETTINGS)" start >/dev/null
	trap 'as_pg "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -m fast -w stop >/dev/null 2>&1' EXIT
fi
q() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -U postgres -d billing "$@"; }
q -f "$top/sql/schema.sql"
q -c "ANALYZE customers; ANALYZE notifications; ANALYZE admin_audit"

# A user with everything: subscriptions, billing events, usage this month.
BENCH_USER=$(q -At -c "SELECT u.user_id FROM usage_tracking u JOIN subscriptions s USING (user_id)
	WHERE u.period_start = usage_period_start() AND u.usage_type = 'pain_entry' AND u.amount > 0
	ORDER BY u.user_id LIMIT 1")
BENCH_SUB=$(q -At -c "SELECT stripe_subscription_id FROM subscriptions WHERE user_id = '$BENCH_USER' LIMIT 1")
BENCH_CUS=$(q -At -c "SELECT stripe_customer_id FROM customers WHERE user_id = '$BENCH_USER'")
SMALL_TABLES=$(q -At -c "SELECT string_agg(relname, ' ') FROM pg_class WHERE relkind = 'r'
	AND relname IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public') AND reltuples < 10000")
export BENCH_USER BENCH_SUB BENCH_CUS SMALL_TABLES
export BENCH_DIR RUNS CGI="$BUILDDIR/cgi-bin/admin.cgi" SERVER_LOG="$BENCH_DIR/server.log"
python3 - <<'EOF'
import os, re, statistics, subprocess, time, urllib.parse

bench, runs, cgi = os.environ["BENCH_DIR"], int(os.environ["RUNS"]), os.environ["CGI"]
url = f"postgresql:///billing?host={bench}&user=postgres"
this = time.strftime("%Y-%m", time.gmtime())
base = {"PATH": os.environ["PATH"], "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "bench.test", "HTTP_HOST": "bench.test", "REQUEST_SCHEME": "https",
        "HTTPS": "on", "REMOTE_ADDR": "127.0.0.1", "REMOTE_USER": "bench",
        "ADMIN_USERS": "bench", "DATABASE_URL": url,
        "ADMIN_CSRF_SECRET": "bench-secret-0123456789abcdef0123456789",
        "STRIPE_SECRET_KEY": "sk_test_bench", "STRIPE_API_BASE": "http://127.0.0.1:9"}


def run(path, query="", method="GET", body=b"", extra=None, pgoptions=None):
    env = dict(base, REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query,
               SCRIPT_NAME="/admin", REQUEST_URI="/admin" + path + ("?" + query if query else ""))
    if body:
        env.update(CONTENT_LENGTH=str(len(body)),
                   CONTENT_TYPE="application/x-www-form-urlencoded")
    env.update(extra or {})
    if pgoptions:
        env["PGOPTIONS"] = pgoptions
    t0 = time.perf_counter()
    p = subprocess.run([cgi], input=body, capture_output=True, env=env)
    ms = (time.perf_counter() - t0) * 1000
    head = p.stdout.split(b"\n\n", 1)[0].decode(errors="replace")
    status = re.search(r"^Status: (\d+)", head, re.M)
    return ms, int(status.group(1)) if status else 0, p.stdout


user, sub, cus = os.environ["BENCH_USER"], os.environ["BENCH_SUB"], os.environ["BENCH_CUS"]
small = set(os.environ["SMALL_TABLES"].split())
print(f"user {user}, subscription {sub}, customer {cus}")
pages = [
    ("dashboard, 12 months", "/", ""),
    ("dashboard, 24 months, eur", "/", "from=" + time.strftime("%Y-%m", time.gmtime(time.time() - 700 * 86400)) + "&to=" + this + "&currency=eur"),
    ("search: exact user id", "/search", "q=" + user),
    ("search: user id prefix", "/search", "q=" + user[:-1]),
    ("search: e-mail prefix, any case", "/search", "q=" + user.upper() + "%40Example"),
    ("search: Stripe customer id", "/search", "q=" + cus),
    ("search: subscription id", "/search", "q=" + sub),
    ("search: no match", "/search", "q=nobody-at-all"),
    ("customer page", "/customer", "user=" + user),
    ("confirm: cancel at period end", "/confirm", "action=cancel_at_period_end&user=" + user + "&target=" + sub),
    ("confirm: reset usage", "/confirm", "action=reset_usage&user=" + user + "&target=pain_entry"),
    ("analytics API, JSON, 12 months", "/api/analytics", ""),
    ("analytics API, CSV, 12 months", "/api/analytics", "format=csv"),
]
print(f"admin.cgi piped, {runs} runs each after one to warm the caches (ms: median, slowest; status):")
for name, path, query in pages:
    run(path, query)
    times, status = [], 0
    for _ in range(runs):
        ms, status, _out = run(path, query)
        times.append(ms)
    print(f"  {statistics.median(times):8.1f} {max(times):8.1f}  {status}  {name}")

# One action end to end: the confirmation's token, then the POST (reset of a
# counter of this month: a write and its audit row).
_, _, page = run("/confirm", "action=reset_usage&user=" + user + "&target=pain_entry")
token = re.search(rb'name="token" value="([^"]+)"', page).group(1).decode()
body = urllib.parse.urlencode({"action": "reset_usage", "user": user, "target": "pain_entry",
                               "token": token, "reason": "benchmark"}).encode()
ms, status, out = run("/action", method="POST", body=body, extra={"HTTP_ORIGIN": "https://bench.test"})
print(f"  {ms:8.1f} {ms:8.1f}  {status}  action: reset usage (one run)")

# Plans: auto_explain in the CGI's own session, into the server log.
opts = ("-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0"
        " -c auto_explain.log_analyze=on -c auto_explain.log_buffers=on"
        " -c auto_explain.log_nested_statements=on -c auto_explain.log_timing=on")
log = os.environ["SERVER_LOG"]
out_path = os.path.join(bench, "admin-plans.txt")
seq = []
with open(out_path, "w") as out:
    for name, path, query in pages:
        start = os.path.getsize(log)
        run(path, query, pgoptions=opts)
        time.sleep(0.2)
        with open(log, errors="replace") as f:
            f.seek(start)
            text = f.read()
        out.write(f"=================== {name}\n{text}\n")
        for m in re.finditer(r"Seq Scan on (\w+)", text):
            if m.group(1) not in small:
                seq.append((name, m.group(1)))
print(f"plans: {out_path}")
print("sequential scans of tables over 10,000 rows: " + (", ".join(f"{t} ({n})" for n, t in seq) if seq else "none"))
EOF
