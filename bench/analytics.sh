#!/usr/bin/env bash
# Benchmark of the analytics queries at scale (prints figures; not a test).
#
#   bench/analytics.sh                   1,000,000 subscriptions, 10,000,000 usage
#                                        rows, 5,000,000 billing events
#   SCALE=0.01 bench/analytics.sh        the same shape, 1 % of the rows
#   BENCH_DIR=/tmp/bench-db KEEP=1 bench/analytics.sh
#                                        keep the cluster; a later run with the
#                                        same BENCH_DIR reuses it (no generation)
#   RUNS=5 (timed runs per query; the median and the fastest are reported)
#
# Creates a private PostgreSQL 15 cluster under /tmp (Unix socket only),
# applies sql/schema.sql, fills it with bench/gen_scale.sql, VACUUM ANALYZE,
# then
#   1. times each analytics query (psql \timing, median of RUNS runs) and the
#      whole analytics API call, analytics_report() over the last 12 months;
#   2. prints EXPLAIN (ANALYZE, BUFFERS) of every statement they run
#      (auto_explain with nested statements), into $BENCH_DIR/plans.txt;
#   3. runs the webhook and usage hot paths (a subscription update through the
#      ledger trigger, track_usage, the reads of usage.cgi and checkout) under
#      the same auto_explain and reports any sequential scan.
# The cluster is removed at the end unless KEEP=1.  Server settings: see
# PG_SETTINGS below (modest: 256 MB shared buffers, 16 MB work_mem).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SCALE=${SCALE:-1}
RUNS=${RUNS:-5}
KEEP=${KEEP:-0}
PG_SETTINGS="-c shared_buffers=256MB -c work_mem=16MB -c maintenance_work_mem=512MB
 -c max_wal_size=8GB -c checkpoint_timeout=30min -c fsync=off -c synchronous_commit=off
 -c full_page_writes=off -c max_parallel_workers_per_gather=2 -c jit=off"

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGPASSWORD
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

fresh=0
if [ -z "${BENCH_DIR:-}" ]; then
	BENCH_DIR=$(mktemp -d /tmp/billing-bench-analytics.XXXXXX)
fi
mkdir -p "$BENCH_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$BENCH_DIR"
started=0
cleanup() {
	[ "$started" = 1 ] && as_pg "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -m fast -w stop >/dev/null 2>&1
	if [ "$KEEP" != 1 ]; then rm -rf "$BENCH_DIR"; else echo "kept: $BENCH_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [ ! -d "$BENCH_DIR/data" ]; then
	as_pg "$PGBIN/initdb" -D "$BENCH_DIR/data" -U postgres -A trust -E UTF8 --no-locale \
		>"$BENCH_DIR/initdb.log" 2>&1
	fresh=1
fi
# shellcheck disable=SC2086  # PG_SETTINGS is a list of options
as_pg "$PGBIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w -t 120 \
	-o "-c listen_addresses='' -k $BENCH_DIR $(echo $PG_SETTINGS)" start >/dev/null
started=1
q() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -U postgres -d billing "$@"; }

subs=$(awk "BEGIN { printf \"%d\", 1000000 * $SCALE }")
usage=$(awk "BEGIN { printf \"%d\", 10000000 * $SCALE }")
events=$(awk "BEGIN { printf \"%d\", 5000000 * $SCALE }")
if [ "$fresh" = 1 ]; then
	"$PGBIN/psql" -X -q -h "$BENCH_DIR" -U postgres -d postgres -c "CREATE DATABASE billing"
	q -f "$top/sql/schema.sql"
	echo "generating: $subs subscriptions, $usage usage rows, $events billing events"
	start=$(date +%s)
	q -v subs="$subs" -v usage_rows="$usage" -v events="$events" -f "$top/bench/gen_scale.sql"
	q -c "VACUUM (ANALYZE)"
	echo "generated and vacuumed in $(($(date +%s) - start)) s"
else
	q -f "$top/sql/schema.sql"	# a kept cluster gets today's functions
fi
q -At -c "SELECT 'database size: ' || pg_size_pretty(pg_database_size('billing'))"

this=$(q -At -c "SELECT usage_period_start()")
from=$(q -At -c "SELECT (usage_period_start() - interval '11 months')::date")

# The queries admin.cgi runs for GET /api/admin/analytics (JSON) and its CSV.
queries=$(cat <<EOF
analytics_report, 12 months (the JSON API)|SELECT analytics_report('$from', '$this', 'usd')
analytics_report, 24 months|SELECT analytics_report(('$this'::date - interval '23 months')::date, '$this', 'usd')
analytics_monthly usd, 12 months (the CSV)|SELECT * FROM analytics_monthly('$from', '$this', 'usd')
analytics_monthly eur, 12 months|SELECT * FROM analytics_monthly('$from', '$this', 'eur')
analytics_monthly usd, 24 months|SELECT * FROM analytics_monthly(('$this'::date - interval '23 months')::date, '$this', 'usd')
analytics_snapshot|SELECT analytics_snapshot()
analytics_feature_usage, 12 months|SELECT * FROM analytics_feature_usage('$from', '$this')
analytics_quota_breaches, 12 months|SELECT * FROM analytics_quota_breaches('$from', '$this')
analytics_quota_utilisation, this month|SELECT * FROM analytics_quota_utilisation()
EOF
)

echo
echo "ms, median and fastest of $RUNS runs (the machine is shared: the fastest is the"
echo "closest to an idle machine):"
while IFS='|' read -r name sql; do
	times=$( { echo '\timing on'; for _ in $(seq "$RUNS"); do echo "$sql;"; done; } |
		q -o /dev/null 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sort -n)
	median=$(echo "$times" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
	printf '  %9.1f %9.1f  %s\n' "$median" "$(echo "$times" | head -1)" "$name"
done <<<"$queries"

# The first request after the closed months' sums were dropped (a new
# month, a rebuild, a changed past counter) sums 24 months once.
cold=$( { echo '\timing on'; echo "TRUNCATE usage_closed_months;";
	echo "SELECT analytics_report(('$this'::date - interval '23 months')::date, '$this', 'usd');"; } |
	q -o /dev/null 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1)
printf '  %9.1f %9s  %s\n' "$cold" "" "analytics_report, 24 months, usage_closed_months empty (once)"

# Plans of every statement, nested ones included.
explain_setup="LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_timing = on;
SET client_min_messages = log;"
plans=$BENCH_DIR/plans.txt
: >"$plans"
while IFS='|' read -r name sql; do
	echo "=================== $name" >>"$plans"
	{ echo "$explain_setup"; echo "$sql;"; } | q -o /dev/null >>"$plans" 2>&1
done <<<"$queries"
[ "$KEEP" = 1 ] || cp "$plans" "${PLANS_OUT:-/tmp/billing-bench-analytics-plans.txt}"

# Hot paths under the same lens: one subscription update through the ledger
# trigger (as webhook.cgi writes it), the webhook's lookups, track_usage and
# the reads of usage.cgi and checkout, for a user of the generated data.
hot=$BENCH_DIR/hot.txt
{
	echo "$explain_setup"
	cat <<'EOF'
BEGIN;
INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id, occurred_at,
	processed_at, payload) VALUES ('evt_bench_hot', 'customer.subscription.updated',
	'sub_b4242', now(), now(), '{}') ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id;
SELECT pg_advisory_xact_lock(hashtext('sub_b4242'));
SELECT status, tier, billing_interval, extract(epoch FROM last_event_created)::bigint
	FROM subscriptions WHERE stripe_subscription_id = 'sub_b4242' FOR UPDATE;
SELECT user_id FROM customers WHERE stripe_customer_id = 'cus_b4241';
INSERT INTO subscriptions AS s (user_id, stripe_customer_id, stripe_subscription_id, tier, status,
	billing_interval, unit_amount, currency, quantity, last_event_created, last_event_id)
	VALUES ('bu4241', 'cus_b4241', 'sub_b4242', 'pro', 'active', 'monthly', 1900, 'usd', 7,
		now(), 'evt_bench_hot')
	ON CONFLICT (stripe_subscription_id) DO UPDATE SET status = EXCLUDED.status,
		unit_amount = EXCLUDED.unit_amount, quantity = EXCLUDED.quantity,
		currency = EXCLUDED.currency, billing_interval = EXCLUDED.billing_interval,
		last_event_created = greatest(s.last_event_created, EXCLUDED.last_event_created),
		last_event_id = EXCLUDED.last_event_id;
UPDATE billing_events SET user_id = 'bu4241'
	WHERE id = (SELECT id FROM billing_events WHERE stripe_event_id = 'evt_bench_hot')
	AND user_id IS NULL;
ROLLBACK;
BEGIN;
SELECT * FROM track_usage('bu4241', 'pain_entry', 1);
SELECT * FROM track_usage('bu4241', 'export', 1000);
ROLLBACK;
SELECT * FROM user_usage('bu4241');
SELECT * FROM user_live_subscription('bu4241');
SELECT user_id FROM customers WHERE user_id = 'bu4241';
EOF
} | q -o /dev/null >"$hot" 2>&1
echo
# plan_quotas (20 rows, one page) is read whole, as it should be.
if grep "Seq Scan" "$hot" | grep -vq "Seq Scan on plan_quotas"; then
	echo "hot paths: SEQUENTIAL SCANS:"
	grep -B3 "Seq Scan" "$hot" | grep -v plan_quotas
else
	echo "hot paths: $(grep -c 'Index' "$hot") index scan nodes, no sequential scan" \
		"(but of plan_quotas, 20 rows)"
fi
echo "hot path plans: $hot; analytics plans: $plans"
[ "$KEEP" = 1 ] || cp "$hot" "${HOT_OUT:-/tmp/billing-bench-analytics-hot.txt}"

# What the ledger and the usage triggers add to a write, in SQL time: 4000
# MRR-moving subscription updates (2000 seat increments, then the 2000
# decrements that undo them) and 5000 track_usage calls, each committed on
# its own as webhook.cgi and usage.cgi do, with the triggers and without.
cost() { # cost LABEL SETUP LOOP TEARDOWN
	q -At 2>&1 <<EOF | sed -n 's/.*NOTICE:  //p'
$2
DO \$b\$
DECLARE
	t0 timestamptz := clock_timestamp();
	ids text[] := ARRAY(SELECT stripe_subscription_id FROM subscriptions
			    WHERE status = 'active' ORDER BY id LIMIT 2000 OFFSET 5000);
	users text[] := ARRAY(SELECT DISTINCT user_id FROM usage_tracking
			      WHERE period_start = usage_period_start() LIMIT 5000);
	n integer := 0;
BEGIN
	t0 := clock_timestamp();
	$3
	RAISE NOTICE '%: % ms per call (% calls)', '$1',
		round((extract(epoch FROM clock_timestamp() - t0) * 1000 / n)::numeric, 3), n;
END
\$b\$;
$4
EOF
}
upd='FOR d IN -1..1 BY 2 LOOP
		FOR i IN 1..array_length(ids, 1) LOOP
			UPDATE subscriptions SET quantity = coalesce(quantity, 1) - d,
				last_event_created = now(), last_event_id = $$evt_cost$$ || i
			WHERE stripe_subscription_id = ids[i];
			COMMIT;
			n := n + 1;
		END LOOP;
	END LOOP;'
trk='FOR i IN 1..array_length(users, 1) LOOP
		PERFORM track_usage(users[i], $$mood_entry$$, 1);
		COMMIT;
		n := n + 1;
	END LOOP;'
echo
echo "write cost (SQL time per statement, each committed; two rounds, the first warms up):"
for round in 1 2; do
	cost "round $round: subscription update moving MRR, with the ledger" "" "$upd" ""
	cost "round $round: the same, ledger trigger off" \
		"ALTER TABLE subscriptions DISABLE TRIGGER subscriptions_mrr_ledger_update;" "$upd" \
		"ALTER TABLE subscriptions ENABLE TRIGGER subscriptions_mrr_ledger_update;"
	cost "round $round: track_usage, with the usage_tracking triggers" "" "$trk" ""
	cost "round $round: the same, closed-month triggers off" \
		"ALTER TABLE usage_tracking DISABLE TRIGGER usage_tracking_closed_insert;
ALTER TABLE usage_tracking DISABLE TRIGGER usage_tracking_closed_update;" "$trk" \
		"ALTER TABLE usage_tracking ENABLE TRIGGER usage_tracking_closed_insert;
ALTER TABLE usage_tracking ENABLE TRIGGER usage_tracking_closed_update;"
done
