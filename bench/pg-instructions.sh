#!/usr/bin/env bash
# PostgreSQL's own instructions per statement on the hot paths, counted by
# callgrind: repeatable to the instruction whatever else the machine does,
# so a schema change of a few percent shows (wall-clock figures on a shared
# VM drift by more).  A script that prints figures, not a test.
#
#   bench/pg-instructions.sh [SCHEMA_SQL]     (default: sql/schema.sql)
#
# Makes a throw-away cluster under $TMPDIR, applies the schema, stops the
# server and runs each workload in a single-user backend (postgres --single)
# under valgrind --tool=callgrind, twice: with 100 and with 600 executions
# of a prepared statement on a fresh copy of the cluster.  The difference
# divided by 500 is one execution, start-up and the first executions'
# planning left out.  Workloads:
#   subscription INSERT   a new subscription (status incomplete), with its
#                         ledger and counter triggers, as a webhook writes it
#   track_usage           one usage record counted against its quota, as a
#                         usage POST counts it (200 users, so mostly updates)
# Needs valgrind and the PostgreSQL 15 server binaries (PGBIN).  Runs the
# server as user postgres when started as root.
set -eu
cd "$(dirname "$0")/.."
schema=${1:-sql/schema.sql}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pg-instructions.XXXXXX")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
chmod 755 "$tmp"
[ "$(id -u)" = 0 ] && chown postgres "$tmp"

as_pg "$PGBIN/initdb" -D "$tmp/data" -U billing --auth=trust >"$tmp/initdb.log" 2>&1
as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w \
	-o "-c listen_addresses='' -k $tmp -p 5432 -c fsync=off" start >/dev/null
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p 5432 -U billing "$@"; }
psql -d postgres -c "CREATE DATABASE billing"
psql -d billing -f "$schema" >"$tmp/schema.log"
as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -w stop >/dev/null

# workload NAME N: N executions, each a command of its own (single-user
# mode with -j ends a command at a semicolon followed by an empty line).
workload() {
	local i
	case $1 in
	subscription)
		echo "PREPARE w(text) AS INSERT INTO subscriptions (user_id, stripe_customer_id,
		  stripe_subscription_id, tier, status, billing_interval, unit_amount, currency, quantity)
		  VALUES ('u_' || \$1, 'cus_' || \$1, 'sub_' || \$1, 'pro', 'incomplete', 'monthly',
		  1000, 'usd', 1);"
		;;
	usage)
		echo "PREPARE w(text) AS SELECT * FROM track_usage('u_' || (\$1::integer % 200), 'pain_entry', 1);"
		;;
	esac
	echo
	for ((i = 0; i < $2; i++)); do
		printf 'EXECUTE w(%s);\n\n' "$i"
	done
}

# instructions NAME N: callgrind's total for a single-user backend running it.
instructions() {
	rm -rf "$tmp/run"
	cp -a "$tmp/data" "$tmp/run"
	workload "$1" "$2" >"$tmp/in.sql"
	chmod 644 "$tmp/in.sql"
	as_pg valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" \
		"$PGBIN/postgres" --single -D "$tmp/run" -j billing <"$tmp/in.sql" >"$tmp/out.txt" 2>"$tmp/vg.txt"
	if grep -qi "error" "$tmp/out.txt"; then
		echo "$1: the backend reported an error:" >&2
		grep -i -m3 "error" "$tmp/out.txt" >&2
		exit 1
	fi
	sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$tmp/vg.txt"
}

echo "# PostgreSQL instructions per execution (callgrind, single-user backend), schema $schema"
echo "| workload | instructions |"
echo "|---|---|"
for w in subscription usage; do
	a=$(instructions "$w" 100)
	b=$(instructions "$w" 600)
	case $w in
	subscription) label="subscription INSERT (incomplete, triggers included)" ;;
	usage) label="track_usage (one usage POST's count)" ;;
	esac
	echo "| $label | $(((b - a) / 500)) |"
done
