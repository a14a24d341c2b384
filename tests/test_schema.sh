#!/usr/bin/env bash
# tests/test_schema.sh: checks sql/schema.sql against a private PostgreSQL 15
# cluster and prints TAP.  Exits 1 if any check fails.
#
#   tests/test_schema.sh                      # uses ../sql/schema.sql
#   SCHEMA_SQL=/path/schema.sql tests/test_schema.sh
#   PGBIN=/usr/lib/postgresql/15/bin (default) selects the server binaries.
#
# The cluster lives in a mktemp directory, listens on a Unix socket in that
# directory only (no TCP), and is always stopped and removed on exit.  initdb
# and postgres refuse to run as root: when run as root the directory is handed
# to the "postgres" user and the server programs run through runuser; the psql
# client runs as the caller.

set -u

here=$(cd "$(dirname "$0")" && pwd)
SCHEMA_SQL=${SCHEMA_SQL:-$here/../sql/schema.sql}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PSQL=$PGBIN/psql
[ -x "$PSQL" ] || PSQL=psql
PGBENCH=$PGBIN/pgbench
[ -x "$PGBENCH" ] || PGBENCH=pgbench

# Nothing from the caller's libpq environment may redirect us elsewhere.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGSERVICEFILE \
	PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS PGAPPNAME
# A session time zone far from UTC: month arithmetic must not depend on it.
export PGTZ=Pacific/Kiritimati

n=0
failed=0
tmp=
started=0

as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	if [ "$started" = 1 ]; then
		as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1
	fi
	[ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

bail() {
	echo "Bail out! $*"
	if [ -n "$tmp" ]; then
		for f in "$tmp"/initdb.log "$tmp"/server.log; do
			[ -f "$f" ] && sed 's/^/# /' "$f" | tail -n 30
		done
	fi
	exit 1
}

diag() { sed 's/^/#   /'; }

pass() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }

# psql against database $DB (default billing); values unaligned, tuples only.
DB=billing
q() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h "$tmp" -U postgres -d "$DB" "$@"; }
# Runs statements, discarding output; fails loudly (diagnostics) on error.
run() {
	local out
	if ! out=$(q -c "$1" 2>&1 >/dev/null); then
		echo "# setup statement failed: $1"
		printf '%s\n' "$out" | diag
		return 1
	fi
}
# is DESCRIPTION SQL EXPECTED: the query's output (stdout+stderr) must equal EXPECTED.
is() {
	local desc=$1 sql=$2 want=$3 got
	got=$(q -c "$sql" 2>&1)
	if [ "$got" = "$want" ]; then
		pass "$desc"
	else
		fail "$desc"
		echo "#   query: $sql"
		printf 'got:\n%s\nwant:\n%s\n' "$got" "$want" | diag
	fi
}
# rejects DESCRIPTION SQL PATTERN: the statement must fail with a message matching PATTERN.
rejects() {
	local desc=$1 sql=$2 pat=$3 out
	if out=$(q -v VERBOSITY=verbose -c "$sql" 2>&1); then
		fail "$desc"
		echo "#   statement succeeded: $sql"
	elif printf '%s\n' "$out" | grep -Eq -- "$pat"; then
		pass "$desc"
	else
		fail "$desc"
		echo "#   expected error matching /$pat/, got:"
		printf '%s\n' "$out" | diag
	fi
}
# apply FILE [DB]: psql -v ON_ERROR_STOP=1 -f FILE, as documented.
apply() {
	"$PSQL" -X -v ON_ERROR_STOP=1 -h "$tmp" -U postgres -d "${2:-$DB}" -f "$1" >"$tmp/apply.log" 2>&1
}

# ---------------------------------------------------------------- cluster
[ -r "$SCHEMA_SQL" ] || bail "cannot read schema: $SCHEMA_SQL"
[ -x "$PGBIN/initdb" ] || bail "no initdb in $PGBIN"

tmp=$(mktemp -d) || bail "mktemp failed"
if [ "$(id -u)" = 0 ]; then
	id postgres >/dev/null 2>&1 || bail "running as root but there is no postgres user"
	chown postgres: "$tmp" || bail "chown $tmp"
fi
chmod 700 "$tmp"

as_pg "$PGBIN/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --no-locale \
	>"$tmp/initdb.log" 2>&1 || bail "initdb failed"
as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
	-o "-c listen_addresses='' -k $tmp -c fsync=off -c max_connections=100" \
	start >/dev/null 2>&1 || bail "server did not start"
started=1
DB=postgres run "CREATE DATABASE billing" || bail "createdb failed"

# ---------------------------------------------------------------- apply
if apply "$SCHEMA_SQL"; then
	pass "schema applies to an empty database"
else
	fail "schema applies to an empty database"
	diag <"$tmp/apply.log"
	bail "cannot continue without the schema"
fi

is "tables and view exist" \
	"SELECT string_agg(c, ',' ORDER BY c) FROM unnest(ARRAY['billing_events','current_usage','customers',
	   'notifications','plan_quotas','subscriptions','usage_idempotency','usage_tracking']) c
	 WHERE to_regclass(c) IS NOT NULL" \
	"billing_events,current_usage,customers,notifications,plan_quotas,subscriptions,usage_idempotency,usage_tracking"
is "issue 15 tables exist" \
	"SELECT count(*) FROM unnest(ARRAY['checkout_sessions','ownership_conflicts']) c
	 WHERE to_regclass(c) IS NOT NULL" "2"

is "functions exist with the documented signatures" \
	"SELECT count(*) FROM unnest(ARRAY['effective_tier(text,text)','user_live_subscription(text)',
	   'get_user_subscription(text)','track_usage(text,text,bigint)','prune_usage_idempotency()']) f
	 WHERE to_regprocedure(f) IS NOT NULL" \
	"5"

is "plan_quotas seeded with the documented defaults" \
	"SELECT string_agg(tier || '/' || usage_type || '=' || coalesce(monthly_limit::text, 'NULL'), ' '
	   ORDER BY array_position(ARRAY['free','basic','pro','enterprise'], tier),
		    array_position(billing_usage_types(), usage_type)) FROM plan_quotas" \
	"free/pain_entry=100 free/mood_entry=100 free/activity_log=100 free/export=2 free/storage=104857600 basic/pain_entry=1000 basic/mood_entry=1000 basic/activity_log=1000 basic/export=20 basic/storage=1073741824 pro/pain_entry=NULL pro/mood_entry=NULL pro/activity_log=NULL pro/export=200 pro/storage=10737418240 enterprise/pain_entry=NULL enterprise/mood_entry=NULL enterprise/activity_log=NULL enterprise/export=NULL enterprise/storage=NULL"

# Every lookup the endpoints make has an index whose columns are exactly these.
is "indexes for every endpoint lookup" \
	"SELECT string_agg(w.t || '(' || w.c || ')', ' ') FROM (VALUES
	   ('subscriptions','user_id'), ('subscriptions','stripe_customer_id'),
	   ('subscriptions','stripe_subscription_id'),
	   ('customers','user_id'), ('customers','stripe_customer_id'),
	   ('billing_events','stripe_event_id'), ('billing_events','stripe_subscription_id'),
	   ('billing_events','user_id'), ('usage_tracking','user_id,period_start'),
	   ('usage_tracking','user_id,usage_type,period_start'),
	   ('usage_idempotency','user_id,idempotency_key'), ('usage_idempotency','created_at'),
	   ('usage_idempotency','user_id,created_at'), ('checkout_sessions','user_id'),
	   ('checkout_sessions','idempotency_key'), ('checkout_sessions','stripe_session_id'),
	   ('notifications','dedupe_key')) w(t, c)
	 WHERE NOT EXISTS (
	   SELECT 1 FROM pg_index i
	   WHERE i.indrelid = w.t::regclass
	     AND (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
		  FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
		  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) = w.c)" \
	""

is "unique: stripe ids, event id, dedupe key; partial index on pending notifications" \
	"SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	 WHERE (i.indisunique AND c.relname IN ('customers_stripe_customer_id_key',
		'subscriptions_stripe_subscription_id_key', 'billing_events_stripe_event_id_key',
		'notifications_dedupe_key_key', 'usage_tracking_user_type_period_key'))
	    OR (c.relname = 'notifications_pending_idx' AND i.indpred IS NOT NULL)" \
	"billing_events_stripe_event_id_key,customers_stripe_customer_id_key,notifications_dedupe_key_key,notifications_pending_idx,subscriptions_stripe_subscription_id_key,usage_tracking_user_type_period_key"

is "usage periods are UTC calendar months whatever the session time zone" \
	"SELECT current_setting('TimeZone') || ' ' || usage_period_start('2026-01-31 23:30:00+00') || ' '
	   || usage_period_end('2026-01-31 23:30:00+00') || ' ' || usage_period_start('2026-02-01 00:00:00+00')
	   || ' ' || usage_period_end('2026-12-15 00:00:00+00')
	   || ' ' || (usage_period_start() = date_trunc('month', now() AT TIME ZONE 'UTC')::date)" \
	"Pacific/Kiritimati 2026-01-01 2026-02-01 2026-02-01 2027-01-01 true"

# ---------------------------------------------------------------- re-apply
run "INSERT INTO customers (user_id, stripe_customer_id, email) VALUES
	('u-keep', 'cus_keep', 'keep@example.com'), ('42', 'cus_42', NULL);
     INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id, tier, status,
	billing_interval, price_id, unit_amount, currency, current_period_end, last_event_created, last_event_id)
     VALUES ('u-keep', 'cus_keep', 'sub_keep', 'basic', 'active', 'monthly', 'price_b', 900, 'usd',
	now() + interval '20 days', now(), 'evt_1'),
	    (NULL, 'cus_orphan', 'sub_orphan', 'pro', 'incomplete', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
     INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount)
     VALUES ('u-keep', 'pain_entry', usage_period_start(), usage_period_end(), 7);
     INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id, user_id, payload)
     VALUES ('evt_1', 'customer.subscription.created', 'sub_keep', 'u-keep', '{\"id\":\"evt_1\"}');
     INSERT INTO notifications (user_id, kind, payload, dedupe_key)
     VALUES ('u-keep', 'welcome', '{}', 'evt_1:welcome');
     INSERT INTO usage_idempotency (user_id, idempotency_key, request_hash, status, response)
     VALUES ('u-keep', 'k1', 'h1', 200, '{\"ok\":true}');
     UPDATE plan_quotas SET monthly_limit = 7 WHERE tier = 'free' AND usage_type = 'export';
     DELETE FROM plan_quotas WHERE tier = 'pro' AND usage_type = 'export';"

snapshot() {
	q -c "SELECT string_agg(t || ':' || coalesce(h, '-'), ' ' ORDER BY t) FROM (
		SELECT 'customers' t, md5(string_agg(x::text, '|' ORDER BY x::text)) h FROM customers x
		UNION ALL SELECT 'subscriptions', md5(string_agg(x::text, '|' ORDER BY x::text)) FROM subscriptions x
		UNION ALL SELECT 'usage_tracking', md5(string_agg(x::text, '|' ORDER BY x::text)) FROM usage_tracking x
		UNION ALL SELECT 'billing_events', md5(string_agg(x::text, '|' ORDER BY x::text)) FROM billing_events x
		UNION ALL SELECT 'notifications', md5(string_agg(x::text, '|' ORDER BY x::text)) FROM notifications x
		UNION ALL SELECT 'usage_idempotency', md5(string_agg(x::text, '|' ORDER BY x::text)) FROM usage_idempotency x
		UNION ALL SELECT 'constraints', count(*)::text FROM pg_constraint WHERE connamespace = 'public'::regnamespace
		UNION ALL SELECT 'indexes', count(*)::text FROM pg_indexes WHERE schemaname = 'public'
		UNION ALL SELECT 'triggers', count(*)::text FROM pg_trigger WHERE NOT tgisinternal
		UNION ALL SELECT 'counts', (SELECT count(*) FROM customers) || '/' || (SELECT count(*) FROM subscriptions)
		  || '/' || (SELECT count(*) FROM usage_tracking) || '/' || (SELECT count(*) FROM billing_events)
		  || '/' || (SELECT count(*) FROM notifications) || '/' || (SELECT count(*) FROM usage_idempotency)) s"
}
before=$(snapshot)
if apply "$SCHEMA_SQL" && apply "$SCHEMA_SQL"; then
	pass "schema re-applies twice on a database with data"
else
	fail "schema re-applies twice on a database with data"
	diag <"$tmp/apply.log"
fi
after=$(snapshot)
if [ -n "$before" ] && [ "$before" = "$after" ]; then
	pass "re-apply loses nothing (rows, constraints, indexes, triggers unchanged)"
else
	fail "re-apply loses nothing"
	printf 'before: %s\nafter:  %s\n' "$before" "$after" | diag
fi
if grep -Eiq 'notice|warning|error' "$tmp/apply.log"; then
	fail "re-apply output is quiet"
	diag <"$tmp/apply.log"
else
	pass "re-apply output is quiet"
fi
is "operator-changed quota survives re-apply; a deleted default is re-seeded" \
	"SELECT (SELECT monthly_limit FROM plan_quotas WHERE tier = 'free' AND usage_type = 'export') || ' '
	     || (SELECT monthly_limit FROM plan_quotas WHERE tier = 'pro' AND usage_type = 'export') || ' '
	     || (SELECT count(*) FROM plan_quotas)" \
	"7 200 20"
run "UPDATE plan_quotas SET monthly_limit = 2 WHERE tier = 'free' AND usage_type = 'export'"

# Upgrade path: an older database lacking a constraint or index gets it back.
run "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
     DROP INDEX subscriptions_user_id_idx"
if apply "$SCHEMA_SQL"; then
	is "re-apply adds a missing constraint and index" \
		"SELECT (SELECT count(*) FROM pg_constraint WHERE conname = 'subscriptions_status_check') || ' '
		     || (to_regclass('subscriptions_user_id_idx') IS NOT NULL)" "1 true"
else
	fail "re-apply adds a missing constraint and index"
	diag <"$tmp/apply.log"
fi

# Upgrade path: a check as older versions wrote it (inline) is replaced by
# its predicate, NOT VALID (no scan under the table's lock; the old check
# was validated); re-applying then leaves every check as it is, and
# VALIDATE CONSTRAINT finds the rows good.
run "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_tier_check,
     ADD CONSTRAINT subscriptions_tier_check CHECK (tier IN ('free', 'basic', 'pro', 'enterprise'))"
checks="SELECT string_agg(conname || ' ' || oid || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conname)
	FROM pg_constraint WHERE contype = 'c'"
if apply "$SCHEMA_SQL" && before=$(q -c "$checks") && apply "$SCHEMA_SQL"; then
	is "re-apply replaces an inline check by its predicate, without a scan" \
		"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'subscriptions_tier_check'" \
		"CHECK (billing_tier_ok(tier)) NOT VALID"
	is "re-applying an up-to-date schema replaces no check" "$checks" "$before"
	is "VALIDATE CONSTRAINT then finds every row good" \
		"ALTER TABLE subscriptions VALIDATE CONSTRAINT subscriptions_tier_check;
		 SELECT convalidated FROM pg_constraint WHERE conname = 'subscriptions_tier_check'" "t"
	rejects "the replaced check refuses a bad tier" \
		"INSERT INTO subscriptions (stripe_subscription_id, tier, status) VALUES ('sub_nv', 'gold', 'active')" \
		"subscriptions_tier_check"
else
	fail "re-apply replaces an inline check by its predicate"
	diag <"$tmp/apply.log"
fi

# pg_dump and a restore give back every row: the row checks run while the
# restore loads the data, under pg_dump's empty search_path.
counts="SELECT (SELECT count(*) FROM usage_tracking) || ' ' || (SELECT count(*) FROM subscriptions)
	     || ' ' || (SELECT count(*) FROM billing_events) || ' ' || (SELECT count(*) FROM mrr_movements)"
if run "SELECT track_usage('u-dump', 'export', 1)" && want=$(q -c "$counts") &&
	"$PGBIN/pg_dump" -h "$tmp" -U postgres -d billing -f "$tmp/dump.sql" 2>"$tmp/apply.log" &&
	DB=postgres run "CREATE DATABASE billing_restored" &&
	"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -U postgres -d billing_restored -f "$tmp/dump.sql" \
		>"$tmp/apply.log" 2>&1; then
	DB=billing_restored is "a dump restores every row of the checked tables ($want)" "$counts" "$want"
else
	fail "a dump restores every row of the checked tables"
	diag <"$tmp/apply.log"
fi

# Upgrade path: a notifications outbox from before billing-mailer (no status
# columns): rows with sent_at become sent, the others pending and due now.
DB=postgres run "CREATE DATABASE billing_outbox"
DB=billing_outbox run "CREATE TABLE notifications (id bigserial PRIMARY KEY, user_id text,
	kind text NOT NULL, payload jsonb NOT NULL DEFAULT '{}'::jsonb, dedupe_key text,
	created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz);
     CREATE INDEX notifications_unsent_idx ON notifications (created_at) WHERE sent_at IS NULL;
     INSERT INTO notifications (user_id, kind, dedupe_key, sent_at) VALUES
	('u1', 'trial_will_end', 'evt_a:trial_will_end', now()),
	('u2', 'trial_will_end', 'evt_b:trial_will_end', NULL)"
if apply "$SCHEMA_SQL" billing_outbox; then
	DB=billing_outbox is "an old outbox upgrades: sent rows sent, others pending and due, old index gone" \
		"SELECT string_agg(user_id || '=' || status || '/' || attempts || '/' || (next_attempt_at <= now()), ' '
			ORDER BY id) || ' ' || (to_regclass('notifications_unsent_idx') IS NULL)
		 FROM notifications" \
		"u1=sent/0/true u2=pending/0/true true"
else
	fail "an old outbox upgrades"
	diag <"$tmp/apply.log"
fi
rejects "a notification of an unknown kind is refused" \
	"INSERT INTO notifications (kind) VALUES ('newsletter')" "notifications_kind_check"

# Upgrade path: what earlier versions had for closed months and the monthly
# figures (usage_monthly, a second mrr_monthly_rows, two more indexes) is gone.
DB=postgres run "CREATE DATABASE billing_leftovers"
apply "$SCHEMA_SQL" billing_leftovers
DB=billing_leftovers run "CREATE TABLE usage_monthly (month date, usage_type text, users bigint, total bigint,
	PRIMARY KEY (month, usage_type));
     CREATE FUNCTION usage_monthly_forget() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
     CREATE FUNCTION mrr_monthly_rows(p_rows mrr_movements[]) RETURNS SETOF mrr_monthly
	LANGUAGE sql AS 'SELECT * FROM mrr_monthly';
     CREATE INDEX usage_tracking_period_type_idx ON usage_tracking (period_start, usage_type) INCLUDE (amount, tier);
     CREATE INDEX mrr_movements_series_idx ON mrr_movements (currency, effective_at)"
if apply "$SCHEMA_SQL" billing_leftovers; then
	DB=billing_leftovers is "an upgrade drops the objects earlier versions left behind" \
		"SELECT concat_ws(',', to_regclass('usage_monthly'), to_regclass('usage_tracking_period_type_idx'),
			to_regclass('mrr_movements_series_idx'), to_regprocedure('usage_monthly_forget()'),
			to_regprocedure('mrr_monthly_rows(mrr_movements[])'))" ""
else
	fail "an upgrade drops the objects earlier versions left behind"
	diag <"$tmp/apply.log"
fi

# Upgrade path: subscriptions from before the quantity column get the seats of
# their latest applied event, so a rebuilt ledger agrees with mrr_now; their
# updated_at is kept.
DB=billing_leftovers run "ALTER TABLE subscriptions DROP COLUMN quantity CASCADE;
     DROP TRIGGER subscriptions_mrr_ledger_insert ON subscriptions;
     DROP TRIGGER subscriptions_mrr_ledger_delete ON subscriptions;
     INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id, tier, status,
	billing_interval, unit_amount, currency, last_event_id, last_event_created, updated_at)
     VALUES ('u-q', 'cus_q', 'sub_q', 'pro', 'active', 'monthly', 1000, 'usd', 'evt_q2',
	'2026-01-02Z', '2026-01-03Z'),
	    ('u-q1', 'cus_q1', 'sub_q1', 'basic', 'active', 'monthly', 500, 'usd', NULL, NULL, '2026-01-03Z'),
	    ('u-qr', 'cus_qr', 'sub_qr', 'pro', 'active', 'monthly', 1000, 'usd', 'evt_qr2',
	'2026-01-02Z', '2026-01-03Z');
     INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id, processed_at, payload)
     VALUES ('evt_q1', 'customer.subscription.created', 'sub_q', now(), '{\"id\":\"evt_q1\",\"created\":1767225600,
	\"data\":{\"object\":{\"id\":\"sub_q\",\"customer\":\"cus_q\",\"status\":\"active\",\"currency\":\"usd\",
	\"items\":{\"data\":[{\"quantity\":2,\"price\":{\"unit_amount\":1000,\"recurring\":{\"interval\":\"month\"}}}]}}}}'),
	    ('evt_q2', 'customer.subscription.updated', 'sub_q', now(), '{\"id\":\"evt_q2\",\"created\":1767312000,
	\"data\":{\"object\":{\"id\":\"sub_q\",\"customer\":\"cus_q\",\"status\":\"active\",\"currency\":\"usd\",
	\"items\":{\"data\":[{\"quantity\":3,\"price\":{\"unit_amount\":1000,\"recurring\":{\"interval\":\"month\"}}}]}}}}');
     -- Delivered out of order: the older event came last (the higher id) and was not applied.
     INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id, processed_at,
	occurred_at, payload)
     VALUES ('evt_qr2', 'customer.subscription.updated', 'sub_qr', now(), '2026-01-02Z',
	'{\"id\":\"evt_qr2\",\"created\":1767312000,
	\"data\":{\"object\":{\"id\":\"sub_qr\",\"customer\":\"cus_qr\",\"status\":\"active\",\"currency\":\"usd\",
	\"items\":{\"data\":[{\"quantity\":3,\"price\":{\"unit_amount\":1000,\"recurring\":{\"interval\":\"month\"}}}]}}}}'),
	    ('evt_qr1', 'customer.subscription.created', 'sub_qr', now(), '2026-01-01Z',
	'{\"id\":\"evt_qr1\",\"created\":1767225600,
	\"data\":{\"object\":{\"id\":\"sub_qr\",\"customer\":\"cus_qr\",\"status\":\"active\",\"currency\":\"usd\",
	\"items\":{\"data\":[{\"quantity\":2,\"price\":{\"unit_amount\":1000,\"recurring\":{\"interval\":\"month\"}}}]}}}}')"
if apply "$SCHEMA_SQL" billing_leftovers; then
	DB=billing_leftovers is "an upgrade fills quantity from the latest event that has one, keeps updated_at" \
		"SELECT string_agg(stripe_subscription_id || '=' || coalesce(quantity::text, 'NULL') || '/'
			|| (updated_at = '2026-01-03Z'), ' ' ORDER BY id)
		 FROM subscriptions WHERE stripe_subscription_id IN ('sub_q', 'sub_q1', 'sub_qr')" \
		"sub_q=3/true sub_q1=NULL/true sub_qr=3/true"
	DB=billing_leftovers run "SELECT rebuild_mrr_movements()"
	DB=billing_leftovers is "after the upgrade, the rebuilt ledger gives the row's monthly amount" \
		"SELECT string_agg((SELECT sum(delta) FROM mrr_movements m WHERE m.customer = s.stripe_customer_id)
		     || ' ' || subscription_monthly_amount(status, unit_amount, quantity, billing_interval, currency),
		     ', ' ORDER BY id)
		 FROM subscriptions s WHERE stripe_subscription_id IN ('sub_q', 'sub_qr')" \
		"3000 3000, 3000 3000"
else
	fail "an upgrade fills quantity from the events"
	diag <"$tmp/apply.log"
fi

# in_transaction NAME STATEMENT...: the statements in one transaction, in the
# background; its output in $tmp/NAME.log, its exit status in $tmp/NAME.rc.
in_transaction() {
	local name=$1 args=(-c BEGIN) st
	shift
	for st in "$@"; do args+=(-c "$st"); done
	( "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h "$tmp" -U postgres -d billing \
		"${args[@]}" -c COMMIT >"$tmp/$name.log" 2>&1
	  echo $? >"$tmp/$name.rc" ) &
}
# wait_for SQL: until the query answers t (10 s at most).
wait_for() {
	local i
	for i in $(seq 200); do
		[ "$(q -c "$1" 2>/dev/null)" = t ] && return 0
		sleep 0.05
	done
	return 1
}
held() {	# held TABLE [CONDITION]: another session has a lock on TABLE (granted, by default)
	wait_for "SELECT count(*) > 0 FROM pg_locks WHERE relation = to_regclass('$1')
		AND pid <> pg_backend_pid() AND ${2:-granted}"
}
# Re-applying while the programs' transactions take their tables, in every
# order they do: a webhook records its event, then reads customers (the file
# used to take customers' lock first and wait for billing_events: a deadlock
# that killed one of them); a self-service or console action holds its
# subscription across a Stripe call, then reads customers; billing-sync
# writes sync_changes from billing_events.  No one lock order suits them
# all: the apply must let go and try again rather than wait holding part of
# them.
for order in "billing_events customers" "subscriptions customers" "sync_changes billing_events"; do
	first=${order% *} second=${order#* }
	if [ "$first" = billing_events ]; then	# as the webhook does it
		take="INSERT INTO billing_events (stripe_event_id, event_type) VALUES ('evt_during_apply', 't')"
	else
		take="SELECT count(*) FROM $first"
	fi
	in_transaction other "$take" "SELECT pg_sleep(1)" "SELECT count(*) FROM $second"
	held "$first"
	apply "$SCHEMA_SQL"; apply_rc=$?
	wait
	if [ "$apply_rc" = 0 ] && [ "$(cat "$tmp/other.rc")" = 0 ]; then
		pass "re-applying during a transaction that takes $first, then $second: both commit"
	else
		fail "re-applying during a transaction that takes $first, then $second: both commit"
		diag <"$tmp/apply.log"; diag <"$tmp/other.log"
	fi
done
# A transaction that keeps a table longer than the apply's lock_timeout: the
# apply gives up, changing nothing, and writers meanwhile were not held up.
in_transaction long "SELECT count(*) FROM subscriptions" "SELECT pg_sleep(3)"
held subscriptions
PGOPTIONS="-c lock_timeout=1500ms" apply "$SCHEMA_SQL" & apply_pid=$!
held subscriptions "NOT granted AND mode = 'AccessExclusiveLock'"	# the apply, trying
writer_ms=$(q -c "SELECT round(extract(epoch FROM clock_timestamp() - now()) * 1000)
	FROM (SELECT track_usage('u-during-apply', 'pain_entry', 1)) x" 2>&1)
wait "$apply_pid"; apply_rc=$?
wait
if [ "$apply_rc" != 0 ] && grep -q "the tables stayed in use for 00:00:01.5" "$tmp/apply.log" &&
	[ "$(cat "$tmp/long.rc")" = 0 ]; then
	pass "a table held past the session's lock_timeout: the apply gives up and says so"
else
	fail "a table held past the session's lock_timeout: the apply gives up and says so"
	diag <"$tmp/apply.log"; diag <"$tmp/long.log"
fi
if [ -n "$writer_ms" ] && [ "$writer_ms" -lt 1000 ] 2>/dev/null; then
	pass "  ... and a usage write meanwhile waited $writer_ms ms, not until it gave up"
else
	fail "  ... and a usage write meanwhile was not held up until it gave up (got: $writer_ms)"
fi
rejects "sent and sent_at go together" \
	"INSERT INTO notifications (kind, status) VALUES ('welcome', 'sent')" "notifications_sent_at_check"

# A failed apply must change nothing (one transaction).
DB=postgres run "CREATE DATABASE billing_fail"
sed 's/^COMMIT;$/SELECT 1\/0;\nCOMMIT;/' "$SCHEMA_SQL" >"$tmp/broken.sql"
if ! apply "$tmp/broken.sql" billing_fail; then
	DB=billing_fail is "a failing first apply leaves an empty database" \
		"SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace" "0"
else
	fail "a failing first apply leaves an empty database (apply unexpectedly succeeded)"
fi
sed 's/^COMMIT;$/ALTER TABLE customers ADD COLUMN IF NOT EXISTS zz int;\nUPDATE plan_quotas SET monthly_limit = 0;\nSELECT 1\/0;\nCOMMIT;/' \
	"$SCHEMA_SQL" >"$tmp/broken2.sql"
if ! apply "$tmp/broken2.sql"; then
	is "a failing upgrade changes nothing" \
		"SELECT (SELECT count(*) FROM information_schema.columns WHERE table_name = 'customers' AND column_name = 'zz')
		   || ' ' || (SELECT count(*) FROM plan_quotas WHERE monthly_limit = 0)" \
		"0 0"
else
	fail "a failing upgrade changes nothing (apply unexpectedly succeeded)"
fi

# ---------------------------------------------------------------- effective tier
is "effective_tier for every status" \
	"SELECT string_agg(coalesce(s, 'NULL') || '=' || effective_tier(s, 'pro'), ' ' ORDER BY o)
	 FROM unnest(ARRAY['incomplete','incomplete_expired','trialing','active','past_due','canceled',
			   'unpaid','paused',NULL]) WITH ORDINALITY u(s, o)" \
	"incomplete=free incomplete_expired=free trialing=pro active=pro past_due=pro canceled=free unpaid=free paused=free NULL=free"
is "effective_tier is IMMUTABLE; NULL tier gives free" \
	"SELECT provolatile::text || ' ' || effective_tier('active', NULL) || ' ' || effective_tier(status => 'active', tier => 'basic')
	 FROM pg_proc WHERE oid = 'effective_tier(text,text)'::regprocedure" \
	"i free basic"

# ---------------------------------------------------------------- track_usage
is "track_usage: below the limit" \
	"SELECT allowed || '|' || used || '|' || monthly_limit || '|' || remaining FROM track_usage('u-b', 'pain_entry', 99)" \
	"true|99|100|1"
is "track_usage: exactly at the limit is allowed" \
	"SELECT allowed || '|' || used || '|' || monthly_limit || '|' || remaining FROM track_usage('u-b', 'pain_entry', 1)" \
	"true|100|100|0"
is "track_usage: one more is refused, used is the current value" \
	"SELECT allowed || '|' || used || '|' || monthly_limit || '|' || remaining FROM track_usage('u-b', 'pain_entry', 1)" \
	"false|100|100|0"
is "track_usage: refusal changed nothing" \
	"SELECT count(*) || ' ' || sum(amount) FROM usage_tracking WHERE user_id = 'u-b'" \
	"1 100"
is "track_usage: amount 0 at the limit is allowed" \
	"SELECT allowed || '|' || used FROM track_usage('u-b', 'pain_entry', 0)" \
	"true|100"
is "track_usage: first call over the limit is refused and inserts nothing" \
	"SELECT allowed || '|' || used || '|' || monthly_limit || '|' || remaining
	   || '|' || (SELECT count(*) FROM usage_tracking WHERE user_id = 'u-big')
	 FROM track_usage('u-big', 'export', 3)" \
	"false|0|2|2|0"
is "track_usage: exact limit on the first call is allowed" \
	"SELECT allowed || '|' || used || '|' || remaining FROM track_usage('u-big', 'export', 2)" \
	"true|2|0"
is "track_usage: storage counts bytes (100 MiB free)" \
	"SELECT string_agg(allowed || '|' || used, ' ') FROM (
	   SELECT * FROM track_usage('u-st', 'storage', 104857599) UNION ALL
	   SELECT * FROM track_usage('u-st', 'storage', 2) UNION ALL
	   SELECT * FROM track_usage('u-st', 'storage', 1)) x" \
	"true|104857599 false|104857599 true|104857600"
is "track_usage: writes the current UTC month" \
	"SELECT period_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date
	   AND period_end = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')::date
	 FROM usage_tracking WHERE user_id = 'u-b'" \
	"t"

run "INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status)
     VALUES ('u-pro', 'sub_pro', 'pro', 'active'), ('u-pd', 'sub_pd', 'basic', 'past_due'),
	    ('u-ent', 'sub_ent', 'enterprise', 'trialing'), ('u-unpaid', 'sub_unpaid', 'pro', 'unpaid')"
is "track_usage: unlimited type (pro pain_entry) has NULL limit and remaining" \
	"SELECT allowed || '|' || used || '|' || coalesce(monthly_limit::text, 'NULL') || '|' || coalesce(remaining::text, 'NULL')
	 FROM track_usage('u-pro', 'pain_entry', 1000000000)" \
	"true|1000000000|NULL|NULL"
is "track_usage: pro export limit 200 still applies" \
	"SELECT string_agg(allowed || '|' || used, ' ') FROM (
	   SELECT * FROM track_usage('u-pro', 'export', 200) UNION ALL
	   SELECT * FROM track_usage('u-pro', 'export', 1)) x" \
	"true|200 false|200"
is "track_usage: enterprise (trialing) is unlimited everywhere" \
	"SELECT allowed || '|' || coalesce(monthly_limit::text, 'NULL') FROM track_usage('u-ent', 'export', 1000000)" \
	"true|NULL"
is "track_usage: past_due keeps the paid tier, unpaid falls back to free" \
	"SELECT (SELECT monthly_limit FROM track_usage('u-pd', 'export', 1)) || ' '
	     || (SELECT monthly_limit FROM track_usage('u-unpaid', 'export', 1))" \
	"20 2"

run "INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount)
     VALUES ('u-old', 'pain_entry', (usage_period_start() - interval '1 month')::date, usage_period_start(), 100),
	    ('u-old', 'export', (usage_period_start() - interval '1 year')::date,
	     (usage_period_start() - interval '11 months')::date, 2)"
is "rows dated in an earlier month do not count" \
	"SELECT string_agg(allowed || '|' || used, ' ') FROM (
	   SELECT * FROM track_usage('u-old', 'pain_entry', 1) UNION ALL
	   SELECT * FROM track_usage('u-old', 'export', 2)) x" \
	"true|1 true|2"

rejects "track_usage: unknown usage type is an error (22023)" \
	"SELECT * FROM track_usage('u-b', 'steps', 1)" "22023.*unknown usage type"
rejects "track_usage: negative amount is an error" \
	"SELECT * FROM track_usage('u-b', 'pain_entry', -1)" "amount must be"
rejects "track_usage: empty user id is an error" \
	"SELECT * FROM track_usage('', 'pain_entry', 1)" "user id"

# ---------------------------------------------------------------- concurrency
# 30 clients wait on a shared advisory lock held by a "barrier" session that
# lets go once all 30 are queued, so their track_usage calls really overlap.
race() { # race USER TYPE CLIENTS TAG
	local user=$1 type=$2 clients=$3 tag=$4 i tries=0
	q -c "DO \$\$ DECLARE i int := 0; BEGIN
		PERFORM pg_advisory_xact_lock(4242);
		WHILE (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242
		       AND NOT granted) < $clients AND i < 3000 LOOP
			PERFORM pg_sleep(0.01); i := i + 1;
		END LOOP; END \$\$" >/dev/null 2>&1 &
	until [ "$(q -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted")" = 1 ]; do
		tries=$((tries + 1)); [ $tries -gt 500 ] && break; sleep 0.02
	done
	for i in $(seq 1 "$clients"); do
		q -c "SELECT pg_advisory_lock_shared(4242)" \
		  -c "SELECT allowed FROM track_usage('$user', '$type', 1)" \
		  >"$tmp/$tag.$i.out" 2>"$tmp/$tag.$i.err" &
	done
	wait
}
count_race() { # count_race TAG -> "allowed refused errors"
	local tag=$1
	echo "$(cat "$tmp/$tag".*.out | grep -cx t) $(cat "$tmp/$tag".*.out | grep -cx f) $(cat "$tmp/$tag".*.err | grep -c .)"
}

race_is() { # race_is TAG "allowed refused errors" NAME
	local got
	got=$(count_race "$1")
	if [ "$got" = "$2" ]; then
		pass "$3"
	else
		fail "$3"
		echo "#   allowed/refused/errors: $got, want $2"; cat "$tmp/$1".*.err | diag
	fi
}

run "UPDATE plan_quotas SET monthly_limit = 10 WHERE tier = 'free' AND usage_type = 'export'"
race u-conc export 30 r1
race_is r1 "10 20 0" "30 concurrent first calls against a limit of 10: exactly 10 allowed"
is "after the race used == 10 in a single row" \
	"SELECT count(*) || ' ' || sum(amount) FROM usage_tracking WHERE user_id = 'u-conc' AND usage_type = 'export'" \
	"1 10"
run "UPDATE plan_quotas SET monthly_limit = 20 WHERE tier = 'free' AND usage_type = 'export'"
race u-conc export 30 r2
race_is r2 "10 20 0" "30 concurrent updates of an existing row, 10 left: exactly 10 allowed"
is "after the second race used == 20" \
	"SELECT sum(amount) FROM usage_tracking WHERE user_id = 'u-conc' AND usage_type = 'export'" "20"

if [ -x "$PGBENCH" ] || command -v "$PGBENCH" >/dev/null; then
	run "UPDATE plan_quotas SET monthly_limit = 100 WHERE tier = 'free' AND usage_type = 'export'"
	printf '%s\n' "SELECT * FROM track_usage('u-bench', 'export', 3);" >"$tmp/bench.sql"
	if "$PGBENCH" -n -h "$tmp" -U postgres -c 20 -j 20 -t 25 -f "$tmp/bench.sql" billing >"$tmp/bench.log" 2>&1; then
		is "pgbench: 500 concurrent calls of 3 against a limit of 100 stop at 99" \
			"SELECT sum(amount) FROM usage_tracking WHERE user_id = 'u-bench'" "99"
	else
		fail "pgbench: 500 concurrent calls of 3 against a limit of 100 stop at 99"
		diag <"$tmp/bench.log"
	fi
fi
run "UPDATE plan_quotas SET monthly_limit = 2 WHERE tier = 'free' AND usage_type = 'export'"

# ---------------------------------------------------------------- live subscription
run "INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status, current_period_end, updated_at) VALUES
	('u-live', 'sub_l_active_old', 'basic', 'active', now() + interval '5 days', now() - interval '3 days'),
	('u-live', 'sub_l_active_long', 'pro', 'trialing', now() + interval '30 days', now() - interval '2 days'),
	('u-live', 'sub_l_canceled', 'enterprise', 'canceled', now() + interval '90 days', now()),
	('u-dead', 'sub_d_1', 'pro', 'canceled', now() - interval '40 days', now() - interval '40 days'),
	('u-dead', 'sub_d_2', 'basic', 'incomplete_expired', NULL, now() - interval '1 day'),
	('u-dead', 'sub_d_3', 'enterprise', 'unpaid', now() + interval '1 day', now() - interval '2 days')"
is "user_live_subscription prefers a live row with the latest period end" \
	"SELECT string_agg(stripe_subscription_id, ',') FROM user_live_subscription('u-live')" "sub_l_active_long"
is "user_live_subscription falls back to the most recently updated row" \
	"SELECT string_agg(stripe_subscription_id, ',') FROM user_live_subscription('u-dead')" "sub_d_2"
is "user_live_subscription returns no row for an unknown user" \
	"SELECT count(*) FROM user_live_subscription('nobody')" "0"

# ---------------------------------------------------------------- get_user_subscription
usage_list="(SELECT string_agg(e->>'usage_type' || ':' || (e->>'used') || ':' || coalesce(e->>'limit', 'null')
	|| ':' || coalesce(e->>'remaining', 'null'), ' ' ORDER BY o)
	FROM jsonb_array_elements(j->'usage') WITH ORDINALITY x(e, o))"
is "get_user_subscription without a subscription: free, status none, all five types" \
	"SELECT j->>'user_id', j->>'tier', j->>'status', j->'billing_interval', j->'cancel_at_period_end',
		jsonb_array_length(j->'usage'), $usage_list
	 FROM get_user_subscription('u-none') j" \
	"u-none|free|none|null|false|5|pain_entry:0:100:100 mood_entry:0:100:100 activity_log:0:100:100 export:0:2:2 storage:0:104857600:104857600"
run "INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status, billing_interval,
	trial_end, current_period_end, cancel_at_period_end)
     VALUES ('u-trial', 'sub_trial', 'pro', 'trialing', 'yearly', '2030-01-02 03:04:05+00',
	'2030-01-09 00:00:00+00', true);
     INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status, billing_interval)
     VALUES ('u-gone', 'sub_gone', 'pro', 'canceled', 'monthly')"
run "SELECT * FROM track_usage('u-trial', 'pain_entry', 5); SELECT * FROM track_usage('u-trial', 'export', 7)"
is "get_user_subscription with a trialing pro subscription" \
	"SELECT j->>'tier', j->>'status', j->>'subscription_tier', j->>'billing_interval', j->>'trial_end',
		j->>'current_period_end', j->'cancel_at_period_end', j->>'usage_period_start' = usage_period_start()::text,
		$usage_list
	 FROM get_user_subscription('u-trial') j" \
	"pro|trialing|pro|yearly|2030-01-02T03:04:05Z|2030-01-09T00:00:00Z|true|t|pain_entry:5:null:null mood_entry:0:null:null activity_log:0:null:null export:7:200:193 storage:0:10737418240:10737418240"
is "get_user_subscription with only a canceled subscription: free tier, status canceled" \
	"SELECT j->>'tier', j->>'status', j->>'subscription_tier', j->'usage'->3->>'limit'
	 FROM get_user_subscription('u-gone') j" \
	"free|canceled|pro|2"
is "get_user_subscription(NULL) is NULL" \
	"SELECT get_user_subscription(NULL) IS NULL" "t"

# ---------------------------------------------------------------- current_usage
is "current_usage covers users with usage rows or subscriptions, five rows each" \
	"SELECT string_agg(user_id || '=' || n, ' ' ORDER BY user_id) FROM (
	   SELECT user_id, count(*) n FROM current_usage
	   WHERE user_id IN ('u-b', 'u-old', 'u-gone', 'u-none', 'u-keep') GROUP BY user_id) x" \
	"u-b=5 u-gone=5 u-keep=5 u-old=5"
is "current_usage columns and values" \
	"SELECT user_id, usage_type, period_start = usage_period_start(), period_end = usage_period_end(),
		used, monthly_limit, remaining, tier
	 FROM current_usage WHERE user_id IN ('u-b', 'u-pro') AND usage_type = 'pain_entry' ORDER BY user_id" \
	"u-b|pain_entry|t|t|100|100|0|free
u-pro|pain_entry|t|t|1000000000|||pro"
is "current_usage: used 0 when no row, earlier months ignored" \
	"SELECT used || ' ' || remaining FROM current_usage WHERE user_id = 'u-old' AND usage_type = 'mood_entry'" \
	"0 100"
run "SELECT * FROM track_usage('u-over', 'mood_entry', 50);
     UPDATE plan_quotas SET monthly_limit = 10 WHERE tier = 'free' AND usage_type = 'mood_entry'"
is "remaining is never negative when a quota is lowered below usage" \
	"SELECT (SELECT used || '/' || monthly_limit || '/' || remaining FROM current_usage
		 WHERE user_id = 'u-over' AND usage_type = 'mood_entry') || ' '
	     || (SELECT allowed || '|' || used || '|' || remaining FROM track_usage('u-over', 'mood_entry', 0))" \
	"50/10/0 false|50|0"
run "UPDATE plan_quotas SET monthly_limit = 100 WHERE tier = 'free' AND usage_type = 'mood_entry'"

# ---------------------------------------------------------------- constraints
long=$(printf 'x%.0s' $(seq 1 129))
rejects "CHECK rejects a bad tier" \
	"INSERT INTO subscriptions (stripe_subscription_id, tier, status) VALUES ('sub_x1', 'gold', 'active')" \
	"subscriptions_tier_check"
rejects "CHECK rejects a bad status" \
	"INSERT INTO subscriptions (stripe_subscription_id, tier, status) VALUES ('sub_x2', 'pro', 'expired')" \
	"subscriptions_status_check"
rejects "CHECK rejects a bad billing interval" \
	"INSERT INTO subscriptions (stripe_subscription_id, tier, status, billing_interval)
	 VALUES ('sub_x3', 'pro', 'active', 'weekly')" "subscriptions_billing_interval_check"
rejects "CHECK rejects a bad usage_type" \
	"INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end)
	 VALUES ('u-x', 'steps', usage_period_start(), usage_period_end())" "usage_tracking_usage_type_check"
rejects "CHECK rejects a bad plan_quotas tier/usage_type" \
	"INSERT INTO plan_quotas (tier, usage_type, monthly_limit) VALUES ('gold', 'export', 1)" "plan_quotas_tier_check"
rejects "CHECK rejects a negative usage amount" \
	"INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount)
	 VALUES ('u-x', 'export', usage_period_start(), usage_period_end(), -1)" "usage_tracking_amount_check"
rejects "CHECK rejects a period that is not a calendar month" \
	"INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end)
	 VALUES ('u-x', 'export', usage_period_start() + 1, usage_period_end())" "usage_tracking_period_check"
rejects "CHECK rejects an empty user id" \
	"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('', 'cus_empty')" "customers_user_id_length"
rejects "CHECK rejects a 129-character user id" \
	"INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status) VALUES ('$long', 'sub_x4', 'pro', 'active')" \
	"subscriptions_user_id_length"
is "a 128-character user id is accepted" \
	"INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end)
	 VALUES ('${long:1}', 'export', usage_period_start(), usage_period_end()) RETURNING length(user_id)" "128"
rejects "stripe_subscription_id is unique" \
	"INSERT INTO subscriptions (stripe_subscription_id, tier, status) VALUES ('sub_keep', 'pro', 'active')" \
	"subscriptions_stripe_subscription_id_key"
rejects "customers.stripe_customer_id is unique" \
	"INSERT INTO customers (user_id, stripe_customer_id) VALUES ('u-other', 'cus_keep')" "customers_stripe_customer_id_key"
rejects "billing_events.stripe_event_id is unique (idempotency)" \
	"INSERT INTO billing_events (stripe_event_id, event_type) VALUES ('evt_1', 'x')" "billing_events_stripe_event_id_key"
is "notifications: a redelivered event cannot queue twice; NULL dedupe keys are free" \
	"WITH a AS (INSERT INTO notifications (user_id, kind, dedupe_key) VALUES ('u-keep', 'welcome', 'evt_1:welcome')
		    ON CONFLICT (dedupe_key) DO NOTHING RETURNING 1)
	 SELECT (SELECT count(*) FROM a)" "0"
run "INSERT INTO notifications (user_id, kind) VALUES ('u-keep', 'trial_will_end'), ('u-keep', 'payment_failed')"
is "notifications: new rows are pending, due now, unsent" \
	"SELECT count(*) FROM notifications WHERE sent_at IS NULL AND status = 'pending' AND attempts = 0
	   AND next_attempt_at <= now() AND user_id = 'u-keep'" "3"

# ---------------------------------------------------------------- misc
run "INSERT INTO usage_idempotency (user_id, idempotency_key, request_hash, created_at) VALUES
	('u-i', 'old', 'h', now() - interval '25 hours'), ('u-i', 'recent', 'h', now() - interval '23 hours'),
	('u-i', 'new', 'h', now())"
is "prune_usage_idempotency deletes only keys older than 24 hours" \
	"SELECT prune_usage_idempotency();
	 SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM usage_idempotency WHERE user_id = 'u-i'" \
	"1
new,recent"
is "updated_at is refreshed on update unless set explicitly" \
	"UPDATE subscriptions SET updated_at = '2001-01-01Z' WHERE stripe_subscription_id = 'sub_keep';
	 UPDATE subscriptions SET status = 'past_due' WHERE stripe_subscription_id = 'sub_keep';
	 SELECT updated_at > now() - interval '1 minute' FROM subscriptions WHERE stripe_subscription_id = 'sub_keep'" "t"
is "subscriptions.user_id may be NULL and linked later" \
	"UPDATE subscriptions SET user_id = 'u-linked' WHERE stripe_subscription_id = 'sub_orphan' AND user_id IS NULL;
	 SELECT user_id FROM subscriptions WHERE stripe_subscription_id = 'sub_orphan'" "u-linked"

# ---------------------------------------------------------------- issue 15
run "INSERT INTO checkout_sessions (user_id, tier, billing_interval, stripe_customer_id,
	idempotency_key, request_body) VALUES ('u-cs', 'pro', 'monthly', 'cus_cs', 'k1', 'b1')"
rejects "checkout_sessions: a second live session of one user is refused" \
	"INSERT INTO checkout_sessions (user_id, tier, billing_interval, stripe_customer_id,
	   idempotency_key, request_body) VALUES ('u-cs', 'basic', 'monthly', 'cus_cs', 'k2', 'b2')" \
	"checkout_sessions_one_live_per_user"
is "checkout_sessions: once the first has ended another may be created" \
	"UPDATE checkout_sessions SET status = 'expired' WHERE user_id = 'u-cs';
	 INSERT INTO checkout_sessions (user_id, tier, billing_interval, stripe_customer_id,
	   idempotency_key, request_body) VALUES ('u-cs', 'basic', 'monthly', 'cus_cs', 'k2', 'b2');
	 SELECT string_agg(status, ',' ORDER BY id) FROM checkout_sessions WHERE user_id = 'u-cs'" \
	"expired,creating"
rejects "ownership_conflicts: kinds are checked" \
	"INSERT INTO ownership_conflicts (stripe_event_id, event_type, kind) VALUES ('e', 't', 'other')" \
	"ownership_conflicts_kind_check"
is "a user with two live subscriptions gets the higher tier, not the later period end" \
	"INSERT INTO subscriptions (user_id, stripe_subscription_id, tier, status, current_period_end)
	 VALUES ('u-two', 'sub_two_pro', 'pro', 'active', now() + interval '5 days'),
		('u-two', 'sub_two_basic', 'basic', 'active', now() + interval '25 days');
	 SELECT (SELECT stripe_subscription_id FROM user_live_subscription('u-two')) || ' '
		|| user_effective_tier('u-two')" \
	"sub_two_pro pro"
is "billing_events.left_out holds the paths left out" \
	"INSERT INTO billing_events (stripe_event_id, event_type, left_out)
	 VALUES ('evt_lo', 't', ARRAY['data.object.attempt_count']);
	 SELECT left_out[1] FROM billing_events WHERE stripe_event_id = 'evt_lo'" \
	"data.object.attempt_count"
if apply "$SCHEMA_SQL"; then
	is "re-applying keeps checkout_sessions and ownership_conflicts rows" \
		"SELECT (SELECT count(*) FROM checkout_sessions) || ' ' || (SELECT count(*) FROM billing_events
		 WHERE left_out IS NOT NULL)" "2 1"
else
	fail "schema re-applies with the issue 15 objects"
	diag <"$tmp/apply.log"
fi

echo "1..$n"
if [ "$failed" -gt 0 ]; then
	echo "# $failed of $n checks failed"
	exit 1
fi
exit 0
