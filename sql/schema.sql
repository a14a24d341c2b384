-- billing-cgi schema (PostgreSQL 15).
--
-- Apply (fresh install and upgrade are the same command):
--
--     psql -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -f sql/schema.sql
--
-- The file is idempotent and is the upgrade path: re-running it on an existing
-- database succeeds and loses nothing.  It runs in one transaction, so a failed
-- upgrade changes nothing.  Rules for editing it:
--   * tables:      CREATE TABLE IF NOT EXISTS; a new column is added below the
--                  table as ALTER TABLE ... ADD COLUMN IF NOT EXISTS (with a
--                  DEFAULT if it is NOT NULL, existing rows need a value);
--   * constraints: named, added through pg_temp.ensure_constraint (adds it only
--                  if no constraint of that name exists on the table).  To change
--                  one, give the new definition a new name and drop the old one
--                  with ALTER TABLE ... DROP CONSTRAINT IF EXISTS.  A CHECK that
--                  calls a row predicate goes through pg_temp.ensure_check (see
--                  there); never narrow a predicate's function in place, which
--                  would check no existing row: write a new function with a new
--                  name and name it in the ensure_check call;
--   * indexes:     CREATE [UNIQUE] INDEX IF NOT EXISTS;
--   * functions and views: CREATE OR REPLACE (a changed return type or a
--                  removed/renamed view column needs an explicit DROP first);
--   * seed rows:   INSERT ... ON CONFLICT DO NOTHING, so operator changes
--                  (e.g. to plan_quotas) are preserved.
--
-- Objects are created unqualified, i.e. in the first schema of search_path
-- (normally "public"); the functions resolve table names through the caller's
-- search_path.
--
-- Conventions: user ids are TEXT (apps use UUIDs or integers), 1..128
-- characters.  Money is bigint in minor units (cents) with a currency code.
-- Usage periods are UTC calendar months: period_start is the first day of the
-- month, period_end the first day of the next month (exclusive).  Times are
-- timestamptz.

BEGIN;

-- Two concurrent applications of this file would race on CREATE ... IF NOT
-- EXISTS; serialise them.  (Constant: "billing-cgi" schema lock.)
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7294811532004411); END $$;

-- Quiet "already exists, skipping" notices on re-runs.
SET LOCAL client_min_messages = warning;

-- The tables this file alters, indexes or puts triggers on, locked before
-- anything else.  Taken one by one in file order, by a no-op ALTER TABLE ...
-- IF NOT EXISTS as much as by a real change, and held to COMMIT, they
-- deadlocked with the programs: no one order suits them all (webhook.cgi
-- records its event, then reads customers, then writes subscriptions; a
-- self-service action or a console action holds its subscription across a
-- Stripe call and then reads customers; billing-sync writes sync_changes from
-- billing_events).  So this transaction never waits holding part of them:
-- each try waits at most 200 ms in the queue (below deadlock_timeout, so no
-- waiter of ours ever deadlocks), then lets go of what it took, steps aside
-- for a moment and tries again; after 10 seconds (or the session's own
-- lock_timeout) it gives up, having changed nothing: run the file again.
-- Meanwhile writers wait for at most the 200 ms of a try.  The tables this
-- file only creates wait 5 seconds at most (or the session's lock_timeout).
DO $$
DECLARE
	v_tables text;
	v_own text := pg_catalog.current_setting('lock_timeout');
	v_limit interval := interval '10 seconds';
	v_deadline timestamptz;
BEGIN
	IF v_own <> '0' THEN
		v_limit := v_own::interval;
	END IF;
	v_deadline := pg_catalog.clock_timestamp() + v_limit;
	SELECT pg_catalog.string_agg(format('%I', t), ', ' ORDER BY o) INTO v_tables
	FROM unnest(ARRAY['billing_events', 'usage_idempotency', 'customers', 'checkout_sessions',
			  'subscriptions', 'ownership_conflicts', 'mrr_movements', 'mrr_monthly',
			  'subscription_counts', 'plan_quotas', 'usage_tracking', 'quota_refusals',
			  'usage_closed_months', 'notifications', 'sync_runs', 'sync_changes',
			  'sync_seen', 'admin_audit', 'rate_limits']) WITH ORDINALITY AS x(t, o)
	WHERE pg_catalog.to_regclass(format('%I', t)) IS NOT NULL;
	IF v_tables IS NULL THEN
		RETURN;
	END IF;
	PERFORM pg_catalog.set_config('lock_timeout', '200ms', true);
	LOOP
		BEGIN
			EXECUTE 'LOCK TABLE ' || v_tables || ' IN ACCESS EXCLUSIVE MODE';
			EXIT;
		EXCEPTION WHEN lock_not_available THEN
			-- The failed try's locks went with its subtransaction.
			IF pg_catalog.clock_timestamp() > v_deadline THEN
				RAISE EXCEPTION 'schema: the tables stayed in use for % (a long query or transaction holds one); nothing was changed: run the file again', v_limit
					USING ERRCODE = 'lock_not_available';
			END IF;
			PERFORM pg_catalog.pg_sleep(0.05 + 0.1 * pg_catalog.random());
		END;
	END LOOP;
	PERFORM pg_catalog.set_config('lock_timeout', CASE v_own WHEN '0' THEN '5s' ELSE v_own END,
				      true);
END
$$;

-- Adds constraint p_name to table p_table unless a constraint of that name
-- already exists there.  Lives in pg_temp: it vanishes with the session.
CREATE OR REPLACE PROCEDURE pg_temp.ensure_constraint(p_table regclass, p_name text, p_def text)
LANGUAGE plpgsql AS $fn$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
		       WHERE conrelid = p_table AND conname = p_name) THEN
		EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', p_table, p_name, p_def);
	END IF;
END
$fn$;

-- A CHECK constraint named p_name whose expression is p_check, written as
-- pg_get_constraintdef prints it: added (and the table checked) when
-- missing; when a constraint of that name says something else, it is
-- replaced NOT VALID, without a scan of the table under its exclusive lock:
-- the caller vouches that p_check accepts exactly the rows that the older,
-- validated definition did (the row predicates below restate the inline
-- checks of earlier versions).  New rows are checked either way;
-- ALTER TABLE ... VALIDATE CONSTRAINT checks the old ones later, without
-- blocking writes.
CREATE OR REPLACE PROCEDURE pg_temp.ensure_check(p_table regclass, p_name text, p_check text)
LANGUAGE plpgsql AS $fn$
DECLARE
	v_def text;
	v_valid boolean;
BEGIN
	SELECT pg_catalog.pg_get_constraintdef(oid), convalidated INTO v_def, v_valid
	FROM pg_catalog.pg_constraint WHERE conrelid = p_table AND conname = p_name;
	IF v_def IN ('CHECK (' || p_check || ')', 'CHECK (' || p_check || ') NOT VALID') THEN
		RETURN;
	END IF;
	IF v_def IS NOT NULL THEN
		EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, p_name);
	END IF;
	EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s)%s', p_table, p_name, p_check,
		       CASE WHEN v_valid THEN ' NOT VALID' ELSE '' END);
END
$fn$;

-- Sets updated_at to now() on UPDATE unless the statement set it explicitly.
CREATE OR REPLACE FUNCTION billing_touch_updated_at()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
		NEW.updated_at := now();
	END IF;
	RETURN NEW;
END
$fn$;

------------------------------------------------------------------------------
-- Vocabulary helpers
------------------------------------------------------------------------------

-- The five usage types, in display order.  (plan_quotas' CHECK and
-- billing_usage_type_ok below spell the same list out literally.)
CREATE OR REPLACE FUNCTION billing_usage_types()
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT ARRAY['pain_entry', 'mood_entry', 'activity_log', 'export', 'storage']::text[]
$fn$;

-- Row checks of the tables that every webhook event or usage POST writes
-- (customers, subscriptions, usage_tracking, billing_events, mrr_movements).
-- PostgreSQL keeps a CHECK's expression as stored text, and every statement
-- that writes the table reads it back and plans it again (ExecRelCheck):
-- for the literal lists and ranges these checks were, that took a third of
-- a subscription INSERT's instructions, its triggers included.  A PL/pgSQL
-- predicate is a short expression to read back and is compiled once per
-- session.  NULL passes, as it does in any CHECK.  A predicate calls
-- built-in functions only (see billing_usage_type_ok).  The other tables keep
-- their checks inline.
CREATE OR REPLACE FUNCTION billing_user_id_ok(p_user_id text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN length(p_user_id) BETWEEN 1 AND 128;
END
$fn$;

CREATE OR REPLACE FUNCTION billing_tier_ok(p_tier text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_tier IN ('free', 'basic', 'pro', 'enterprise');
END
$fn$;

CREATE OR REPLACE FUNCTION billing_interval_ok(p_interval text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_interval IN ('monthly', 'yearly');
END
$fn$;

-- The list of billing_usage_types(), spelt out: a predicate may call only
-- built-in functions, which resolve under any search_path (pg_dump's
-- restore loads the rows with an empty one, after the table's checks).
CREATE OR REPLACE FUNCTION billing_usage_type_ok(p_usage_type text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_usage_type IN ('pain_entry', 'mood_entry', 'activity_log', 'export', 'storage');
END
$fn$;

-- Stripe's subscription statuses.
CREATE OR REPLACE FUNCTION subscription_status_ok(p_status text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_status IN ('incomplete', 'incomplete_expired', 'trialing', 'active',
			    'past_due', 'canceled', 'unpaid', 'paused');
END
$fn$;

-- First day of the UTC calendar month containing p_at.
CREATE OR REPLACE FUNCTION usage_period_start(p_at timestamptz DEFAULT now())
RETURNS date LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT date_trunc('month', p_at AT TIME ZONE 'UTC')::date
$fn$;

-- First day of the next UTC calendar month (exclusive end of the period).
CREATE OR REPLACE FUNCTION usage_period_end(p_at timestamptz DEFAULT now())
RETURNS date LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT (date_trunc('month', p_at AT TIME ZONE 'UTC') + interval '1 month')::date
$fn$;

-- A usage counter's period: one whole UTC calendar month (row check, see
-- billing_user_id_ok).
CREATE OR REPLACE FUNCTION usage_period_ok(p_start date, p_end date)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN extract(day FROM p_start) = 1 AND p_end = (p_start + interval '1 month')::date;
END
$fn$;

-- ISO 8601 UTC text ("2026-07-29T12:00:00Z") for JSON output, independent of
-- the session's TimeZone.  NULL stays NULL.
CREATE OR REPLACE FUNCTION billing_iso_utc(p_at timestamptz)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
	SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$fn$;

-- The tier a subscription grants: its paid tier while trialing, active or
-- past_due; 'free' for any other status (canceled, incomplete,
-- incomplete_expired, unpaid, paused, NULL) or a NULL tier.
CREATE OR REPLACE FUNCTION effective_tier(status text, tier text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE
		WHEN $1 IN ('trialing', 'active', 'past_due') AND $2 IS NOT NULL THEN $2
		ELSE 'free'
	END
$fn$;

------------------------------------------------------------------------------
-- customers: application user <-> Stripe customer (1:1)
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS customers (
	user_id			text		NOT NULL PRIMARY KEY,
	stripe_customer_id	text		NOT NULL,
	email			text,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	updated_at		timestamptz	NOT NULL DEFAULT now()
);
-- The `created` of the Stripe event that set email (checkout.session.completed
-- or customer.updated): an older event never overwrites a newer address.
-- NULL when the address came from create-checkout-session.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS email_event_created timestamptz;
CALL pg_temp.ensure_check('customers', 'customers_user_id_length',
	'billing_user_id_ok(user_id)');
CALL pg_temp.ensure_constraint('customers', 'customers_stripe_customer_id_key',
	$c$UNIQUE (stripe_customer_id)$c$);
CREATE OR REPLACE TRIGGER customers_touch_updated_at
	BEFORE UPDATE ON customers
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

------------------------------------------------------------------------------
-- subscriptions: one row per Stripe subscription
-- user_id may be NULL: a subscription event can arrive before we know the
-- user (it is linked later, e.g. through customers).
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS subscriptions (
	id			bigserial	PRIMARY KEY,
	user_id			text,
	stripe_customer_id	text,
	stripe_subscription_id	text		NOT NULL,
	tier			text		NOT NULL,
	status			text		NOT NULL,
	billing_interval	text,
	price_id		text,
	unit_amount		bigint,		-- minor units
	currency		text,
	trial_start		timestamptz,
	trial_end		timestamptz,
	current_period_start	timestamptz,
	current_period_end	timestamptz,
	cancel_at_period_end	boolean		NOT NULL DEFAULT false,
	canceled_at		timestamptz,
	ended_at		timestamptz,
	cancellation_reason	text,
	last_event_created	timestamptz,	-- `created` of the last Stripe event applied
	last_event_id		text,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	updated_at		timestamptz	NOT NULL DEFAULT now()
);
CALL pg_temp.ensure_check('subscriptions', 'subscriptions_user_id_length',
	'billing_user_id_ok(user_id)');
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_stripe_subscription_id_key',
	$c$UNIQUE (stripe_subscription_id)$c$);
CALL pg_temp.ensure_check('subscriptions', 'subscriptions_tier_check', 'billing_tier_ok(tier)');
CALL pg_temp.ensure_check('subscriptions', 'subscriptions_status_check',
	'subscription_status_ok(status)');
CALL pg_temp.ensure_check('subscriptions', 'subscriptions_billing_interval_check',
	'billing_interval_ok(billing_interval)');
CREATE INDEX IF NOT EXISTS subscriptions_user_id_idx ON subscriptions (user_id);
CREATE INDEX IF NOT EXISTS subscriptions_stripe_customer_id_idx ON subscriptions (stripe_customer_id);
-- Seats of the first subscription item (Stripe's items.data[0].quantity);
-- NULL (rows written before the column existed) counts as 1.  When the column
-- is added to rows that exist, each gets the quantity of the latest applied
-- event of its subscription that carries one, the value
-- rebuild_mrr_movements() replays: left NULL, the ledger it rebuilds would
-- count the real seats and the row one, and the next event's change of
-- quantity would add the difference again as an expansion.  updated_at is
-- kept (user_live_subscription orders by it).
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
		   WHERE attrelid = 'subscriptions'::regclass AND attname = 'quantity'
		     AND NOT attisdropped) THEN
		RETURN;
	END IF;
	ALTER TABLE subscriptions ADD COLUMN quantity bigint;
	IF to_regclass('billing_events') IS NULL THEN
		RETURN;
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = 'subscriptions'::regclass
		   AND tgname = 'subscriptions_touch_updated_at') THEN
		ALTER TABLE subscriptions DISABLE TRIGGER subscriptions_touch_updated_at;
	END IF;
	-- The row's own last event when it carries a quantity, else the one
	-- Stripe created last: a late older delivery has the highest id.
	UPDATE subscriptions s SET quantity = q.quantity
	FROM (SELECT DISTINCT ON (b.stripe_subscription_id) b.stripe_subscription_id,
		     (b.payload #>> '{data,object,items,data,0,quantity}')::bigint AS quantity
	      FROM billing_events b
	      JOIN subscriptions r ON r.stripe_subscription_id = b.stripe_subscription_id
	      WHERE b.processed_at IS NOT NULL
		AND b.event_type LIKE 'customer.subscription.%'
		AND b.payload #>> '{data,object,id}' = b.stripe_subscription_id
		AND jsonb_typeof(b.payload #> '{data,object,items,data,0,quantity}') = 'number'
		AND b.payload #>> '{data,object,items,data,0,quantity}' ~ '^[0-9]{1,18}$'
	      ORDER BY b.stripe_subscription_id,
		       b.stripe_event_id IS NOT DISTINCT FROM r.last_event_id DESC,
		       b.occurred_at DESC NULLS LAST, b.id DESC) q
	WHERE q.stripe_subscription_id = s.stripe_subscription_id;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = 'subscriptions'::regclass
		   AND tgname = 'subscriptions_touch_updated_at') THEN
		ALTER TABLE subscriptions ENABLE TRIGGER subscriptions_touch_updated_at;
	END IF;
END
$$;
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_quantity_check',
	$c$CHECK (quantity >= 0)$c$);
-- The snapshot counts by tier and status; MRR reads the paying rows only.
CREATE INDEX IF NOT EXISTS subscriptions_tier_status_idx ON subscriptions (tier, status);
CREATE INDEX IF NOT EXISTS subscriptions_paying_idx ON subscriptions (currency)
	INCLUDE (unit_amount, quantity, billing_interval, stripe_customer_id, stripe_subscription_id)
	WHERE status IN ('active', 'past_due');
CREATE OR REPLACE TRIGGER subscriptions_touch_updated_at
	BEFORE UPDATE ON subscriptions
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

------------------------------------------------------------------------------
-- usage_tracking: one counter per user, usage type and UTC month
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS usage_tracking (
	id			bigserial	PRIMARY KEY,
	user_id			text		NOT NULL,
	usage_type		text		NOT NULL,
	period_start		date		NOT NULL,	-- first day of the UTC month
	period_end		date		NOT NULL,	-- first day of the next month
	amount			bigint		NOT NULL DEFAULT 0,
	updated_at		timestamptz	NOT NULL DEFAULT now()
);
CALL pg_temp.ensure_check('usage_tracking', 'usage_tracking_user_id_length',
	'billing_user_id_ok(user_id)');
CALL pg_temp.ensure_check('usage_tracking', 'usage_tracking_usage_type_check',
	'billing_usage_type_ok(usage_type)');
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_amount_check',
	$c$CHECK (amount >= 0)$c$);
CALL pg_temp.ensure_check('usage_tracking', 'usage_tracking_period_check',
	'usage_period_ok(period_start, period_end)');
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_user_type_period_key',
	$c$UNIQUE (user_id, usage_type, period_start)$c$);
CREATE INDEX IF NOT EXISTS usage_tracking_user_period_idx ON usage_tracking (user_id, period_start);
-- The effective tier the counter was last incremented under (track_usage
-- sets it), so quota utilisation per tier needs no join with subscriptions.
-- NULL on rows written before the column existed.
ALTER TABLE usage_tracking ADD COLUMN IF NOT EXISTS tier text;
CALL pg_temp.ensure_check('usage_tracking', 'usage_tracking_tier_check', 'billing_tier_ok(tier)');
-- Feature usage and quota utilisation of a month read only this index, in
-- its order (amount in the key also answers "how many reached the limit"
-- with a range scan).  It costs track_usage its HOT updates: amount is
-- indexed.
CREATE INDEX IF NOT EXISTS usage_tracking_month_idx
	ON usage_tracking (period_start, usage_type, tier, amount);
-- Counters from before the tier column, for utilisation's fallback.
CREATE INDEX IF NOT EXISTS usage_tracking_untiered_idx ON usage_tracking (period_start)
	WHERE tier IS NULL;
CREATE OR REPLACE TRIGGER usage_tracking_touch_updated_at
	BEFORE UPDATE ON usage_tracking
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

------------------------------------------------------------------------------
-- quota_refusals: how often track_usage refused a user's usage of a type in a
-- UTC month under a tier, i.e. how many 402 quota_exceeded answers usage.cgi
-- gave.  track_usage counts each refusal; usage.cgi counts again, after its
-- rollback, a refusal under an Idempotency-Key (whose transaction keeps
-- nothing).  One row per user keeps concurrent refusals of different users
-- from queueing on one counter.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS quota_refusals (
	user_id			text		NOT NULL,
	usage_type		text		NOT NULL,
	period_start		date		NOT NULL,	-- first day of the UTC month
	tier			text		NOT NULL,	-- effective tier when refused
	refusals		bigint		NOT NULL DEFAULT 1,
	last_refused_at		timestamptz	NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, usage_type, period_start, tier)
);
CREATE INDEX IF NOT EXISTS quota_refusals_period_idx ON quota_refusals (period_start)
	INCLUDE (tier, usage_type, refusals);

------------------------------------------------------------------------------
-- plan_quotas: monthly limit per (tier, usage_type); NULL = unlimited.
--
-- Seeded defaults (storage counted in bytes):
--
--   usage_type     free                basic                 pro                     enterprise
--   pain_entry     100                 1000                  NULL (unlimited)        NULL
--   mood_entry     100                 1000                  NULL                    NULL
--   activity_log   100                 1000                  NULL                    NULL
--   export         2                   20                    200                     NULL
--   storage        104857600 (100 MiB) 1073741824 (1 GiB)    10737418240 (10 GiB)    NULL
--
-- Operators may UPDATE these; re-applying this file keeps their values.  A
-- deleted row is re-seeded with the default on the next apply; while it is
-- missing, that (tier, usage_type) has a limit of 0 (fail closed).  To make a
-- type unlimited set monthly_limit to NULL, do not delete the row.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS plan_quotas (
	tier			text		NOT NULL,
	usage_type		text		NOT NULL,
	monthly_limit		bigint,
	updated_at		timestamptz	NOT NULL DEFAULT now(),
	PRIMARY KEY (tier, usage_type)
);
CALL pg_temp.ensure_constraint('plan_quotas', 'plan_quotas_tier_check',
	$c$CHECK (tier IN ('free', 'basic', 'pro', 'enterprise'))$c$);
CALL pg_temp.ensure_constraint('plan_quotas', 'plan_quotas_usage_type_check',
	$c$CHECK (usage_type IN ('pain_entry', 'mood_entry', 'activity_log', 'export', 'storage'))$c$);
CALL pg_temp.ensure_constraint('plan_quotas', 'plan_quotas_monthly_limit_check',
	$c$CHECK (monthly_limit >= 0)$c$);
CREATE OR REPLACE TRIGGER plan_quotas_touch_updated_at
	BEFORE UPDATE ON plan_quotas
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

INSERT INTO plan_quotas (tier, usage_type, monthly_limit) VALUES
	('free',       'pain_entry',   100),
	('free',       'mood_entry',   100),
	('free',       'activity_log', 100),
	('free',       'export',       2),
	('free',       'storage',      104857600),
	('basic',      'pain_entry',   1000),
	('basic',      'mood_entry',   1000),
	('basic',      'activity_log', 1000),
	('basic',      'export',       20),
	('basic',      'storage',      1073741824),
	('pro',        'pain_entry',   NULL),
	('pro',        'mood_entry',   NULL),
	('pro',        'activity_log', NULL),
	('pro',        'export',       200),
	('pro',        'storage',      10737418240),
	('enterprise', 'pain_entry',   NULL),
	('enterprise', 'mood_entry',   NULL),
	('enterprise', 'activity_log', NULL),
	('enterprise', 'export',       NULL),
	('enterprise', 'storage',      NULL)
ON CONFLICT (tier, usage_type) DO NOTHING;

------------------------------------------------------------------------------
-- billing_events: every Stripe event received (stripe_event_id = idempotency)
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS billing_events (
	id			bigserial	PRIMARY KEY,
	stripe_event_id		text		NOT NULL,
	event_type		text		NOT NULL,
	stripe_subscription_id	text,
	stripe_customer_id	text,
	user_id			text,
	amount			bigint,		-- minor units
	currency		text,
	status			text,
	attempt_count		integer,
	occurred_at		timestamptz,	-- the event's `created`
	received_at		timestamptz	NOT NULL DEFAULT now(),
	processed_at		timestamptz,
	payload			jsonb
);
CALL pg_temp.ensure_constraint('billing_events', 'billing_events_stripe_event_id_key',
	$c$UNIQUE (stripe_event_id)$c$);
CALL pg_temp.ensure_check('billing_events', 'billing_events_user_id_length',
	'billing_user_id_ok(user_id)');
-- Who delivered the event: Stripe's webhook, or billing-sync reading GET
-- /v1/events (an event the webhook had missed; the first to record it wins).
ALTER TABLE billing_events ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'webhook';
CREATE OR REPLACE FUNCTION billing_event_source_ok(p_source text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_source IN ('webhook', 'sync');
END
$fn$;
CALL pg_temp.ensure_check('billing_events', 'billing_events_source_check',
	'billing_event_source_ok(source)');
CREATE INDEX IF NOT EXISTS billing_events_user_id_idx ON billing_events (user_id);
CREATE INDEX IF NOT EXISTS billing_events_stripe_subscription_id_idx ON billing_events (stripe_subscription_id);
-- A signed event is always recorded, even when part of it cannot be stored:
-- left_out lists the JSON paths of the values that were left out (strings
-- holding \u0000 or a lone surrogate, numbers or times beyond a column's
-- range); the payload keeps everything else.  processed_at NULL = recorded
-- but not applied (the database refused the event's data; see the log).
ALTER TABLE billing_events ADD COLUMN IF NOT EXISTS left_out text[];
-- A payload (a few KB of JSON) is compressed before it goes to the TOAST table.
-- lz4 does that several times faster than the default pglz, which was the
-- largest single cost of recording an event; a server built without lz4
-- keeps pglz.  (Rows already stored keep theirs; both read alike.)
DO $$
BEGIN
	ALTER TABLE billing_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
	NULL;
END
$$;

------------------------------------------------------------------------------
-- ownership_conflicts: events that named a user the customers table does not
-- agree with, and users who ended up with a second live subscription.
-- customers is the authority on who owns a Stripe customer: a link is made
-- only while neither the user nor the customer is linked (or it is the same
-- link), and a subscription belongs to its customer's user.  An event that
-- claims otherwise changes no ownership; it is recorded here (and logged) for
-- an operator to look at.  kind:
--   customer_of_other_user  the event's customer is linked to owner_user_id,
--                           the event names claimed_user_id;
--   user_has_other_customer the claimed user is linked to owner_customer_id,
--                           the event's customer is another (unlinked) one;
--   second_subscription     owner_user_id now has two live (trialing, active,
--                           past_due) subscriptions: stripe_subscription_id
--                           and other_subscription_id.  The user gets the
--                           higher tier (user_live_subscription); refunding or
--                           canceling the extra one is the operator's call.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS ownership_conflicts (
	id			bigserial	PRIMARY KEY,
	stripe_event_id		text		NOT NULL,
	event_type		text		NOT NULL,
	kind			text		NOT NULL,
	claimed_user_id		text,
	stripe_customer_id	text,
	owner_user_id		text,
	owner_customer_id	text,
	stripe_subscription_id	text,
	other_subscription_id	text,
	created_at		timestamptz	NOT NULL DEFAULT now()
);
CALL pg_temp.ensure_constraint('ownership_conflicts', 'ownership_conflicts_kind_check',
	$c$CHECK (kind IN ('customer_of_other_user', 'user_has_other_customer',
			   'second_subscription'))$c$);
CALL pg_temp.ensure_constraint('ownership_conflicts', 'ownership_conflicts_event_kind_key',
	$c$UNIQUE (stripe_event_id, kind)$c$);

------------------------------------------------------------------------------
-- checkout_sessions: the Checkout Sessions create-checkout-session made.  A
-- user has at most one live row (status creating or open: the unique index
-- below), so at most one open session to pay: paying two would make two
-- subscriptions.  A new checkout for the same order (same request_body, the
-- exact form sent to Stripe) gets the open session back; for another order the
-- open one is expired at Stripe first.  status:
--   creating   the Stripe call is under way, or its answer was lost; the next
--              checkout of the user repeats it with the same idempotency_key
--              and request_body, so Stripe answers with the same session;
--   open       created; url is where to send the browser until expires_at;
--   complete   paid (checkout.session.completed, or Stripe said so);
--   expired    expired by Stripe or by a newer checkout of the user;
--   abandoned  Stripe refused it, or it stayed creating for a day (any
--              session it made has expired by then).
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS checkout_sessions (
	id			bigserial	PRIMARY KEY,
	user_id			text		NOT NULL,
	tier			text		NOT NULL,
	billing_interval	text		NOT NULL,
	stripe_customer_id	text		NOT NULL,
	idempotency_key		text		NOT NULL,
	request_body		text		NOT NULL,
	stripe_session_id	text,
	url			text,
	status			text		NOT NULL DEFAULT 'creating',
	expires_at		timestamptz,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	updated_at		timestamptz	NOT NULL DEFAULT now()
);
CALL pg_temp.ensure_constraint('checkout_sessions', 'checkout_sessions_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('checkout_sessions', 'checkout_sessions_status_check',
	$c$CHECK (status IN ('creating', 'open', 'complete', 'expired', 'abandoned'))$c$);
CALL pg_temp.ensure_constraint('checkout_sessions', 'checkout_sessions_tier_check',
	$c$CHECK (tier IN ('basic', 'pro', 'enterprise'))$c$);
CALL pg_temp.ensure_constraint('checkout_sessions', 'checkout_sessions_billing_interval_check',
	$c$CHECK (billing_interval IN ('monthly', 'yearly'))$c$);
CALL pg_temp.ensure_constraint('checkout_sessions', 'checkout_sessions_stripe_session_id_key',
	$c$UNIQUE (stripe_session_id)$c$);
CREATE UNIQUE INDEX IF NOT EXISTS checkout_sessions_one_live_per_user
	ON checkout_sessions (user_id) WHERE status IN ('creating', 'open');
CREATE INDEX IF NOT EXISTS checkout_sessions_idempotency_key_idx
	ON checkout_sessions (idempotency_key);
CREATE OR REPLACE TRIGGER checkout_sessions_touch_updated_at
	BEFORE UPDATE ON checkout_sessions
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

------------------------------------------------------------------------------
-- notifications: the outbox of lifecycle mails, written by webhook.cgi in the
-- event's transaction and sent by billing-mailer (lib/outbox.h).  dedupe_key
-- ("<event id>:<kind>") is unique when set, so a redelivered event cannot
-- queue the same message twice: INSERT ... ON CONFLICT DO NOTHING.
--
-- status: pending (sent by the first run after next_attempt_at), sent
-- (sent_at, message_id, recipient), failed (last_error says why; never
-- retried unless an operator sets it back to pending) or no_email (the user
-- had no customers.email when its turn came).  attempts counts SMTP
-- attempts; a temporary failure moves next_attempt_at back exponentially.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS notifications (
	id			bigserial	PRIMARY KEY,
	user_id			text,
	kind			text		NOT NULL,
	payload			jsonb		NOT NULL DEFAULT '{}'::jsonb,
	dedupe_key		text,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	sent_at			timestamptz
);
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'pending';
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS last_error text;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS message_id text;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS recipient text;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
-- Rows from before the status column: the ones with sent_at were sent.
UPDATE notifications SET status = 'sent' WHERE sent_at IS NOT NULL AND status = 'pending';
CALL pg_temp.ensure_constraint('notifications', 'notifications_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_dedupe_key_key',
	$c$UNIQUE (dedupe_key)$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_kind_check',
	$c$CHECK (kind IN ('trial_will_end', 'payment_failed', 'payment_action_required',
			   'subscription_canceled', 'welcome'))$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_status_check',
	$c$CHECK (status IN ('pending', 'sent', 'failed', 'no_email'))$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_sent_at_check',
	$c$CHECK ((status = 'sent') = (sent_at IS NOT NULL))$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_attempts_check',
	$c$CHECK (attempts >= 0)$c$);
-- billing-mailer walks the pending rows in id order.
DROP INDEX IF EXISTS notifications_unsent_idx;
CREATE INDEX IF NOT EXISTS notifications_pending_idx ON notifications (id) WHERE status = 'pending';
CREATE OR REPLACE TRIGGER notifications_touch_updated_at
	BEFORE UPDATE ON notifications
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

------------------------------------------------------------------------------
-- usage_idempotency: usage.cgi's Idempotency-Key store.  Only answers that
-- counted something (200) are kept; a 402 changed nothing and is not stored.
-- Keys are kept 24 hours (prune_usage_idempotency() deletes older ones), and
-- at most USAGE_IDEMPOTENCY_MAX_KEYS per user (the oldest go first).
-- status NULL = request still in progress.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS usage_idempotency (
	user_id			text		NOT NULL,
	idempotency_key		text		NOT NULL,
	request_hash		text		NOT NULL,
	status			integer,
	response		jsonb,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, idempotency_key)
);
CALL pg_temp.ensure_constraint('usage_idempotency', 'usage_idempotency_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('usage_idempotency', 'usage_idempotency_key_length',
	$c$CHECK (length(idempotency_key) BETWEEN 1 AND 255)$c$);
CREATE INDEX IF NOT EXISTS usage_idempotency_created_at_idx ON usage_idempotency (created_at);
-- The per-user cap (USAGE_IDEMPOTENCY_MAX_KEYS) forgets a user's oldest keys.
CREATE INDEX IF NOT EXISTS usage_idempotency_user_created_idx
	ON usage_idempotency (user_id, created_at);

-- Deletes idempotency keys older than 24 hours; returns how many.
CREATE OR REPLACE FUNCTION prune_usage_idempotency()
RETURNS bigint LANGUAGE sql VOLATILE AS $fn$
	WITH gone AS (
		DELETE FROM usage_idempotency
		WHERE created_at < now() - interval '24 hours'
		RETURNING 1
	)
	SELECT count(*) FROM gone
$fn$;

------------------------------------------------------------------------------
-- sync_runs: billing-sync's runs of `subscriptions` and `events`.  At most one
-- open run (finished_at NULL) per command.  cursor is the id of the last
-- object it handled, moved in the same transaction as that object's change,
-- so a run that was killed, or stopped by an outage, is continued from there
-- by the next one (when the next one asks for no more than it covers: same
-- scope, since not earlier).  owner is host:pid of the process working on
-- it (NULL: none); a run whose owner is gone, or silent for longer than
-- billing-sync's lease, is taken over.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS sync_runs (
	id			bigserial	PRIMARY KEY,
	command			text		NOT NULL,
	scope			text		NOT NULL DEFAULT '',	-- filters: "customer=cus_..."
	since			timestamptz,	-- objects created from then on; NULL = all
	cursor			text,
	owner			text,
	heartbeat_at		timestamptz	NOT NULL DEFAULT now(),
	started_at		timestamptz	NOT NULL DEFAULT now(),
	finished_at		timestamptz,
	outcome			text,		-- NULL while open
	resumed			integer		NOT NULL DEFAULT 0,	-- times continued
	pages			bigint		NOT NULL DEFAULT 0,
	objects			bigint		NOT NULL DEFAULT 0,
	changes			bigint		NOT NULL DEFAULT 0,
	last_error		text
);
CALL pg_temp.ensure_constraint('sync_runs', 'sync_runs_command_check',
	$c$CHECK (command IN ('subscriptions', 'events'))$c$);
CALL pg_temp.ensure_constraint('sync_runs', 'sync_runs_outcome_check',
	$c$CHECK (outcome IN ('done', 'abandoned') AND finished_at IS NOT NULL
		  OR outcome IS NULL AND finished_at IS NULL)$c$);
CREATE UNIQUE INDEX IF NOT EXISTS sync_runs_open_key ON sync_runs (command) WHERE finished_at IS NULL;

------------------------------------------------------------------------------
-- sync_changes: what billing-sync changed and why, one row per change:
--   created / updated   a subscriptions row; changes = {"column": [before,
--                       after], ...} (bookkeeping columns left out)
--   customer_linked     customers got user_id <-> stripe_customer_id
--   event_applied       an event the webhook had missed (its billing_events
--                       row has source 'sync')
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS sync_changes (
	id			bigserial	PRIMARY KEY,
	run_id			bigint		NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
	at			timestamptz	NOT NULL DEFAULT now(),
	kind			text		NOT NULL,
	stripe_subscription_id	text,
	stripe_customer_id	text,
	user_id			text,
	stripe_event_id		text,
	changes			jsonb,
	reason			text		NOT NULL
);
CALL pg_temp.ensure_constraint('sync_changes', 'sync_changes_kind_check',
	$c$CHECK (kind IN ('created', 'updated', 'customer_linked', 'event_applied'))$c$);
CREATE INDEX IF NOT EXISTS sync_changes_run_id_idx ON sync_changes (run_id);
CREATE INDEX IF NOT EXISTS sync_changes_stripe_subscription_id_idx ON sync_changes (stripe_subscription_id);
-- billing-sync events asks, for each event it lists, whether a run recorded it.
CREATE INDEX IF NOT EXISTS sync_changes_stripe_event_id_idx ON sync_changes (stripe_event_id)
	WHERE stripe_event_id IS NOT NULL;

-- The subscriptions an open `subscriptions` run has seen in Stripe's list, so
-- that at its end the rows Stripe does not have can be reported (never
-- deleted), also when the run was continued.  Emptied when the run ends.
CREATE TABLE IF NOT EXISTS sync_seen (
	run_id			bigint		NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
	stripe_subscription_id	text		NOT NULL,
	PRIMARY KEY (run_id, stripe_subscription_id)
);

-- admin_audit: every action an operator takes in the console (admin.cgi):
-- who (operator: the name Apache authenticated), when, what (action, on
-- which user, subscription or usage type) and why (reason, required).  The
-- row is written before the action is tried (result 'started'), then
-- completed in the transaction that makes the change ('done', detail = what
-- it changed) or after a failure ('failed', detail = the error code), so an
-- attempt is on record even when Stripe or the database fails half-way.
-- form_nonce is the nonce of the confirmation form's token (lib/auth.h):
-- unique, so a form submitted twice acts once.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS admin_audit (
	id			bigserial	PRIMARY KEY,
	operator		text		NOT NULL,
	action			text		NOT NULL,
	user_id			text		NOT NULL,
	stripe_subscription_id	text,
	usage_type		text,
	reason			text		NOT NULL,
	form_nonce		text		NOT NULL,
	result			text		NOT NULL DEFAULT 'started',
	detail			jsonb,
	created_at		timestamptz	NOT NULL DEFAULT now(),
	finished_at		timestamptz
);
CALL pg_temp.ensure_constraint('admin_audit', 'admin_audit_action_check',
	$c$CHECK (action IN ('cancel_at_period_end', 'cancel_now', 'resume', 'resync',
			     'reset_usage'))$c$);
CALL pg_temp.ensure_constraint('admin_audit', 'admin_audit_result_check',
	$c$CHECK (result IN ('started', 'done', 'failed'))$c$);
CALL pg_temp.ensure_constraint('admin_audit', 'admin_audit_reason_check',
	$c$CHECK (length(btrim(reason)) BETWEEN 1 AND 500)$c$);
CALL pg_temp.ensure_constraint('admin_audit', 'admin_audit_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('admin_audit', 'admin_audit_form_nonce_key',
	$c$UNIQUE (form_nonce)$c$);
CREATE INDEX IF NOT EXISTS admin_audit_user_idx ON admin_audit (user_id, id);

-- The console's customer search finds users by the start of their user id or
-- e-mail address (case-insensitive); text_pattern_ops serves LIKE 'abc%'
-- whatever the database's collation.
CREATE INDEX IF NOT EXISTS customers_user_id_prefix_idx ON customers (user_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS customers_email_prefix_idx ON customers (lower(email) text_pattern_ops);
-- The console's customer page: a user's notifications, newest first.
CREATE INDEX IF NOT EXISTS notifications_user_idx ON notifications (user_id, id);

------------------------------------------------------------------------------
-- Subscription and quota functions
------------------------------------------------------------------------------

-- Order of the tiers, lowest first.
CREATE OR REPLACE FUNCTION billing_tier_rank(tier text)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT array_position(ARRAY['free', 'basic', 'pro', 'enterprise']::text[], $1)
$fn$;

-- The subscription that counts for a user: zero or one subscriptions row.
-- Rows with status trialing/active/past_due first: the highest tier (a user
-- paying for two live subscriptions gets the better one, see
-- ownership_conflicts), then the latest current_period_end, then the latest
-- updated_at; otherwise the most recently updated row (so a canceled
-- subscription can still be shown); no row if the user has none.
CREATE OR REPLACE FUNCTION user_live_subscription(p_user_id text)
RETURNS SETOF subscriptions LANGUAGE sql STABLE ROWS 1 AS $fn$
	SELECT s.*
	FROM subscriptions s
	WHERE s.user_id = p_user_id
	ORDER BY (s.status IN ('trialing', 'active', 'past_due')) DESC,
		 CASE WHEN s.status IN ('trialing', 'active', 'past_due')
		      THEN billing_tier_rank(s.tier) END DESC NULLS LAST,
		 CASE WHEN s.status IN ('trialing', 'active', 'past_due')
		      THEN s.current_period_end END DESC NULLS LAST,
		 s.updated_at DESC,
		 s.id DESC
	LIMIT 1
$fn$;

-- The tier a user is on now: effective_tier of user_live_subscription, else 'free'.
-- PL/pgSQL, like plan_limit below: PostgreSQL cannot inline a SQL function
-- whose body holds a subquery or a FROM, and plans such a function's body
-- anew in every statement that calls it (twice per usage POST, which cost
-- more than counting the use); PL/pgSQL keeps the plan for the session.
CREATE OR REPLACE FUNCTION user_effective_tier(p_user_id text)
RETURNS text LANGUAGE plpgsql STABLE AS $fn$
BEGIN
	RETURN coalesce((SELECT effective_tier(s.status, s.tier)
			 FROM user_live_subscription(p_user_id) s), 'free');
END
$fn$;

-- Monthly limit of (tier, usage_type): NULL = unlimited; 0 when no
-- plan_quotas row exists (fail closed).
CREATE OR REPLACE FUNCTION plan_limit(p_tier text, p_usage_type text)
RETURNS bigint LANGUAGE plpgsql STABLE AS $fn$
DECLARE
	v_found boolean;
	v_limit bigint;
BEGIN
	SELECT true, q.monthly_limit INTO v_found, v_limit
	FROM plan_quotas q WHERE q.tier = p_tier AND q.usage_type = p_usage_type;
	RETURN CASE WHEN v_found THEN v_limit ELSE 0 END;
END
$fn$;

-- Usage of one user for the current UTC month, one row per usage type (all
-- five, in billing_usage_types() order), for any user id (a user with no
-- subscription is on 'free', a type with no usage row has used = 0).
-- monthly_limit NULL = unlimited; remaining NULL = unlimited, never negative.
CREATE OR REPLACE FUNCTION user_usage(p_user_id text)
RETURNS TABLE (usage_type text, period_start date, period_end date, used bigint,
	       monthly_limit bigint, remaining bigint, tier text)
LANGUAGE sql STABLE AS $fn$
	SELECT t.usage_type,
	       usage_period_start(now()),
	       usage_period_end(now()),
	       coalesce(u.amount, 0)::bigint,
	       l.lim,
	       CASE WHEN l.lim IS NULL THEN NULL
		    ELSE greatest(l.lim - coalesce(u.amount, 0), 0) END::bigint,
	       et.tier
	FROM (SELECT user_effective_tier(p_user_id) AS tier) et
	CROSS JOIN unnest(billing_usage_types()) WITH ORDINALITY AS t(usage_type, ord)
	CROSS JOIN LATERAL (SELECT plan_limit(et.tier, t.usage_type) AS lim) l
	LEFT JOIN usage_tracking u
	       ON u.user_id = p_user_id
	      AND u.usage_type = t.usage_type
	      AND u.period_start = usage_period_start(now())
	ORDER BY t.ord
$fn$;

-- current_usage: per user and usage type, the current UTC calendar month.
-- Covers every user that has any usage_tracking row (any month) or any
-- subscription with a user_id; for other users call user_usage(user_id) or
-- get_user_subscription(user_id).  Columns: user_id, usage_type, period_start,
-- period_end, used (0 when no row), monthly_limit (NULL = unlimited),
-- remaining (NULL = unlimited, never negative), tier (effective).
CREATE OR REPLACE VIEW current_usage AS
	SELECT users.user_id, uu.usage_type, uu.period_start, uu.period_end,
	       uu.used, uu.monthly_limit, uu.remaining, uu.tier
	FROM (SELECT user_id FROM usage_tracking
	      UNION
	      SELECT user_id FROM subscriptions WHERE user_id IS NOT NULL) AS users
	CROSS JOIN LATERAL user_usage(users.user_id) AS uu;

-- get_user_subscription(user_id) -> jsonb (NULL for a NULL argument):
-- {
--   "user_id": "...",
--   "tier": "free|basic|pro|enterprise",      effective tier ('free' without a
--                                              live paid subscription)
--   "status": "active|...|none",               'none' without any subscription
--   "subscription_tier": "pro" | null,         the subscription's own tier
--   "stripe_subscription_id": "sub_..." | null,
--   "billing_interval": "monthly|yearly" | null,
--   "trial_end": "2026-07-29T12:00:00Z" | null,        (ISO 8601, UTC)
--   "current_period_start": "..." | null,
--   "current_period_end": "..." | null,
--   "cancel_at_period_end": false,
--   "canceled_at": "..." | null,
--   "usage_period_start": "2026-07-01",         current UTC month
--   "usage_period_end": "2026-08-01",
--   "usage": [ {"usage_type": "pain_entry", "used": 3, "limit": 100,
--               "remaining": 97}, ... ]         all five types; limit and
--                                              remaining null = unlimited
-- }
CREATE OR REPLACE FUNCTION get_user_subscription(p_user_id text)
RETURNS jsonb LANGUAGE sql STABLE STRICT AS $fn$
	SELECT jsonb_build_object(
		'user_id', p_user_id,
		'tier', effective_tier(s.status, s.tier),
		'status', coalesce(s.status, 'none'),
		'subscription_tier', s.tier,
		'stripe_subscription_id', s.stripe_subscription_id,
		'billing_interval', s.billing_interval,
		'trial_end', billing_iso_utc(s.trial_end),
		'current_period_start', billing_iso_utc(s.current_period_start),
		'current_period_end', billing_iso_utc(s.current_period_end),
		'cancel_at_period_end', coalesce(s.cancel_at_period_end, false),
		'canceled_at', billing_iso_utc(s.canceled_at),
		'usage_period_start', usage_period_start(now()),
		'usage_period_end', usage_period_end(now()),
		'usage', (SELECT jsonb_agg(jsonb_build_object(
					'usage_type', uu.usage_type,
					'used', uu.used,
					'limit', uu.monthly_limit,
					'remaining', uu.remaining)
				ORDER BY array_position(billing_usage_types(), uu.usage_type))
			  FROM user_usage(p_user_id) uu))
	FROM (SELECT 1) AS one
	LEFT JOIN LATERAL user_live_subscription(p_user_id) s ON true
$fn$;

-- Counts one refusal of p_usage_type for p_user_id in the current UTC month,
-- under p_tier (NULL: the user's effective tier now).
CREATE OR REPLACE FUNCTION quota_refusal_record(p_user_id text, p_usage_type text,
	p_tier text DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE AS $fn$
	INSERT INTO quota_refusals AS r (user_id, usage_type, period_start, tier)
	VALUES (p_user_id, p_usage_type, usage_period_start(now()),
		coalesce(p_tier, user_effective_tier(p_user_id)))
	ON CONFLICT (user_id, usage_type, period_start, tier) DO UPDATE
		SET refusals = r.refusals + 1, last_refused_at = now()
$fn$;

-- track_usage(user_id, usage_type, amount): records amount (>= 0) against the
-- user's current UTC month if, and only if, the total stays within the limit
-- of the user's effective tier.  Returns exactly one row:
--   allowed        true if recorded;
--   used           the total for the month after the call (unchanged if refused);
--   monthly_limit  NULL = unlimited;
--   remaining      monthly_limit - used, never negative; NULL = unlimited.
-- Never exceeds the limit under concurrency: the increment is one INSERT ...
-- ON CONFLICT DO UPDATE ... WHERE, which locks the row and checks the latest
-- committed amount (READ COMMITTED; under REPEATABLE READ/SERIALIZABLE a
-- concurrent update raises a serialization failure, retry).  Concurrent first
-- inserts are resolved by ON CONFLICT.
-- Errors (SQLSTATE 22023 invalid_parameter_value): NULL or bad user id,
-- unknown usage type, NULL or negative amount.
CREATE OR REPLACE FUNCTION track_usage(p_user_id text, p_usage_type text, p_amount bigint)
RETURNS TABLE (allowed boolean, used bigint, monthly_limit bigint, remaining bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
	v_start date := usage_period_start(now());
	v_end date := usage_period_end(now());
	v_limit bigint;
	v_used bigint;
	v_allowed boolean;
	v_tier text;
BEGIN
	IF p_user_id IS NULL OR length(p_user_id) NOT BETWEEN 1 AND 128 THEN
		RAISE EXCEPTION 'track_usage: user id must be 1..128 characters'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_usage_type IS NULL OR NOT (p_usage_type = ANY (billing_usage_types())) THEN
		RAISE EXCEPTION 'track_usage: unknown usage type %', p_usage_type
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_amount IS NULL OR p_amount < 0 THEN
		RAISE EXCEPTION 'track_usage: amount must be >= 0'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	v_tier := user_effective_tier(p_user_id);
	v_limit := plan_limit(v_tier, p_usage_type);

	IF v_limit IS NULL OR p_amount <= v_limit THEN
		-- A first insert can only carry p_amount <= v_limit; an update is
		-- applied only if the new total stays within the limit.
		INSERT INTO usage_tracking AS u
			(user_id, usage_type, period_start, period_end, amount, updated_at, tier)
		VALUES (p_user_id, p_usage_type, v_start, v_end, p_amount, now(), v_tier)
		ON CONFLICT (user_id, usage_type, period_start) DO UPDATE
			SET amount = u.amount + EXCLUDED.amount,
			    updated_at = now(),
			    tier = EXCLUDED.tier
			WHERE v_limit IS NULL OR u.amount + EXCLUDED.amount <= v_limit
		RETURNING u.amount INTO v_used;
		v_allowed := FOUND;
	ELSE
		v_allowed := false;	-- cannot fit even into an empty month
	END IF;

	IF NOT v_allowed THEN
		-- Refused: report the current amount.  (If the INSERT ran, it
		-- locked the conflicting row, so this is its latest committed value.)
		SELECT u.amount INTO v_used
		FROM usage_tracking u
		WHERE u.user_id = p_user_id AND u.usage_type = p_usage_type
		  AND u.period_start = v_start;
		v_used := coalesce(v_used, 0);
		-- usage.cgi answers this refusal with 402: count it (quota breaches).
		PERFORM quota_refusal_record(p_user_id, p_usage_type, v_tier);
	END IF;

	allowed := v_allowed;
	used := v_used;
	monthly_limit := v_limit;
	remaining := CASE WHEN v_limit IS NULL THEN NULL ELSE greatest(v_limit - v_used, 0) END;
	RETURN NEXT;
END
$fn$;

------------------------------------------------------------------------------
-- rate_limits: the state of the per-caller and per-address rate limits
-- (lib/ratelimit.c, GCRA).  One row per policy and subject, key e.g.
-- 'checkout user:42' or 'usage_ip 203.0.113.7': tat is the subject's
-- theoretical arrival time (a request is allowed while tat - now stays within
-- the window), allowed the decision of the last check (RETURNING cannot show
-- the old row in PostgreSQL 15).  Each check is one INSERT ... ON CONFLICT DO
-- UPDATE on this table, outside any transaction.
-- UNLOGGED: no WAL for a write per request; after a crash the table is empty
-- and every limit starts afresh, which is harmless.  fillfactor 70 leaves room
-- for HOT updates (tat is not indexed).  Rows whose tat has passed mean the
-- same as no row: the checks delete them in small batches (no cron job).
------------------------------------------------------------------------------
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limits (
	key			text		NOT NULL PRIMARY KEY,
	tat			timestamptz	NOT NULL,
	allowed			boolean		NOT NULL
) WITH (fillfactor = 70);

------------------------------------------------------------------------------
-- The MRR movement ledger
--
-- mrr_movements holds one row per change of a subscription's monthly
-- recurring amount and one per change of its status, written by triggers on
-- subscriptions in the same transaction as the change, whoever makes it
-- (webhook.cgi today, the self-service endpoints and billing-sync later).
-- Every business figure over time below is computed from it.
--
-- Monthly amount of a subscription (minor units): unit_amount x quantity
-- (NULL quantity = 1) while the status is active or past_due; a yearly price
-- counts amount x quantity / 12, rounded half up per subscription; 0 for any
-- other status (trialing, incomplete, incomplete_expired, unpaid, paused,
-- canceled), without a price amount or without a currency.  This is Stripe
-- Billing's MRR rule (trials, unpaid and canceled subscriptions count nothing;
-- past_due still counts until Stripe cancels it or marks it unpaid).
--
-- Movements are classified per customer (stripe_customer_id; the
-- subscription id when the customer is unknown) and currency, as Stripe
-- Billing does for its "Customer MRR changes":
--   new           the customer's MRR in the currency goes from 0 to > 0 and
--                 the customer never had a movement before;
--   reactivation  the same for a customer who had MRR before (came back);
--   expansion     it rises while staying > 0 (upgrade, more seats, monthly
--                 price increase);
--   contraction   it falls while staying > 0 (downgrade, fewer seats);
--   churn         it falls to 0 (canceled, unpaid, paused, ended).
-- A customer with two subscriptions who cancels one has a contraction, not a
-- churn.  Rows with kind NULL record a status change that moved no MRR
-- (trialing -> canceled, active -> past_due, ...): trial conversion counts
-- them.  effective_at is the `created` of the Stripe event that made the
-- change (last_event_created, which never goes backwards for a
-- subscription), or the time of writing for changes no event made.
------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS mrr_movements (
	id			bigserial	PRIMARY KEY,
	stripe_subscription_id	text		NOT NULL,
	customer		text		NOT NULL,	-- stripe_customer_id, else the subscription id
	currency		text,				-- lower case; NULL if never known
	kind			text,				-- NULL: status change only
	delta			bigint		NOT NULL DEFAULT 0,	-- change of the customer's MRR (minor units)
	amount			bigint		NOT NULL DEFAULT 0,	-- the subscription's monthly amount after it
	customer_amount		bigint,				-- the customer's MRR in the currency after it
	status_before		text,				-- NULL: the row was new
	status			text,				-- NULL: the row was deleted
	effective_at		timestamptz	NOT NULL,
	recorded_at		timestamptz	NOT NULL DEFAULT now()
);
-- Row checks (see billing_user_id_ok): the five kinds of movement; a status
-- change alone (kind NULL) moves nothing and chains no customer_amount.
CREATE OR REPLACE FUNCTION mrr_kind_ok(p_kind text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_kind IN ('new', 'expansion', 'contraction', 'churn', 'reactivation');
END
$fn$;
CREATE OR REPLACE FUNCTION mrr_kind_delta_ok(p_kind text, p_delta bigint, p_customer_amount bigint)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN (p_kind IS NULL) = (p_delta = 0) AND (p_kind IS NULL) = (p_customer_amount IS NULL);
END
$fn$;
CALL pg_temp.ensure_check('mrr_movements', 'mrr_movements_kind_check', 'mrr_kind_ok(kind)');
CALL pg_temp.ensure_check('mrr_movements', 'mrr_movements_kind_delta_check',
	'mrr_kind_delta_ok(kind, delta, customer_amount)');
-- The customer's latest movement (classification) and the admin pages.
CREATE INDEX IF NOT EXISTS mrr_movements_customer_idx ON mrr_movements (customer, currency, id)
	WHERE kind IS NOT NULL;
CREATE INDEX IF NOT EXISTS mrr_movements_subscription_idx ON mrr_movements (stripe_subscription_id, id);

-- mrr_monthly: the ledger summed per currency and UTC month, kept by a
-- row trigger on mrr_movements in the same transaction, so the monthly figures
-- read a few hundred rows instead of millions.  Each (currency, month) is
-- split into 16 slots by customer so that concurrent webhooks of different
-- customers rarely wait on the same counter row; readers sum the slots.
-- Signed sums of delta per kind (contraction and churn are negative), counts
-- of movements per kind, and the trial transitions of analytics_monthly.
CREATE TABLE IF NOT EXISTS mrr_monthly (
	currency		text		NOT NULL,
	month			date		NOT NULL,	-- first day of the UTC month
	slot			smallint	NOT NULL,
	net			bigint		NOT NULL DEFAULT 0,
	new_mrr			bigint		NOT NULL DEFAULT 0,
	expansion_mrr		bigint		NOT NULL DEFAULT 0,
	contraction_mrr		bigint		NOT NULL DEFAULT 0,
	churned_mrr		bigint		NOT NULL DEFAULT 0,
	reactivation_mrr	bigint		NOT NULL DEFAULT 0,
	new_customers		bigint		NOT NULL DEFAULT 0,
	reactivated_customers	bigint		NOT NULL DEFAULT 0,
	churned_customers	bigint		NOT NULL DEFAULT 0,
	upgrades		bigint		NOT NULL DEFAULT 0,
	downgrades		bigint		NOT NULL DEFAULT 0,
	trials_started		bigint		NOT NULL DEFAULT 0,
	trials_ended		bigint		NOT NULL DEFAULT 0,
	trials_converted	bigint		NOT NULL DEFAULT 0,
	PRIMARY KEY (currency, month, slot)
);

-- Whether a ledger row adds anything to mrr_monthly: it needs a currency,
-- and then a movement of MRR (every kind is counted) or a trial that starts
-- or ends.  Any other status change (incomplete, then active before an
-- amount is known, say) adds only zeros: the trigger below is not called for
-- it, so it locks no counter row, and mrr_monthly_rows gives no row for it,
-- so a recomputation has no all-zero rows either.  PL/pgSQL because a
-- trigger's WHEN is planned again for every statement that fires it, and
-- the planner would inline a SQL function there, parsing its body each time.
CREATE OR REPLACE FUNCTION mrr_monthly_counts(p_currency text, p_kind text,
	p_status_before text, p_status text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_currency IS NOT NULL
	       AND (p_kind IS NOT NULL
		    OR (p_status IS NOT DISTINCT FROM 'trialing')
		       <> (p_status_before IS NOT DISTINCT FROM 'trialing'));
END
$fn$;

-- What one ledger row adds to mrr_monthly (no row when it adds nothing, see
-- above): the one place that says which sum and count a row belongs to.
-- SETOF so that the planner inlines it into its callers like a view: a
-- scalar SQL function in FROM is planned anew at every call, which cost the
-- ledger trigger more than its upsert.  (Its first version, mrr_monthly_of,
-- returned one row and was dropped for that reason.)
DROP FUNCTION IF EXISTS mrr_monthly_of(mrr_movements);
DROP FUNCTION IF EXISTS mrr_monthly_rows(mrr_movements[]);	-- an earlier, set-at-a-time version
CREATE OR REPLACE FUNCTION mrr_monthly_rows(m mrr_movements)
RETURNS SETOF mrr_monthly LANGUAGE sql IMMUTABLE AS $fn$
	SELECT m.currency, date_trunc('month', m.effective_at AT TIME ZONE 'UTC')::date,
	       (hashtext(m.customer) & 15)::smallint,
	       m.delta,
	       CASE WHEN m.kind = 'new' THEN m.delta ELSE 0 END,
	       CASE WHEN m.kind = 'expansion' THEN m.delta ELSE 0 END,
	       CASE WHEN m.kind = 'contraction' THEN m.delta ELSE 0 END,
	       CASE WHEN m.kind = 'churn' THEN m.delta ELSE 0 END,
	       CASE WHEN m.kind = 'reactivation' THEN m.delta ELSE 0 END,
	       ((m.kind = 'new') IS TRUE)::integer,
	       ((m.kind = 'reactivation') IS TRUE)::integer,
	       ((m.kind = 'churn') IS TRUE)::integer,
	       ((m.kind = 'expansion') IS TRUE)::integer,
	       ((m.kind = 'contraction') IS TRUE)::integer,
	       ((m.status = 'trialing' AND m.status_before IS DISTINCT FROM 'trialing') IS TRUE)::integer,
	       ((m.status_before = 'trialing' AND m.status IS DISTINCT FROM 'trialing') IS TRUE)::integer,
	       ((m.status_before = 'trialing' AND m.status IN ('active', 'past_due')
		 AND m.amount > 0) IS TRUE)::integer
	WHERE mrr_monthly_counts(m.currency, m.kind, m.status_before, m.status)
$fn$;

-- Adds a new ledger row to mrr_monthly (row trigger: a statement trigger's
-- transition table costs more than the upsert itself).
CREATE OR REPLACE FUNCTION mrr_monthly_add()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	INSERT INTO mrr_monthly AS r
	SELECT c.* FROM mrr_monthly_rows(NEW) c
	ON CONFLICT (currency, month, slot) DO UPDATE SET
		net = r.net + EXCLUDED.net,
		new_mrr = r.new_mrr + EXCLUDED.new_mrr,
		expansion_mrr = r.expansion_mrr + EXCLUDED.expansion_mrr,
		contraction_mrr = r.contraction_mrr + EXCLUDED.contraction_mrr,
		churned_mrr = r.churned_mrr + EXCLUDED.churned_mrr,
		reactivation_mrr = r.reactivation_mrr + EXCLUDED.reactivation_mrr,
		new_customers = r.new_customers + EXCLUDED.new_customers,
		reactivated_customers = r.reactivated_customers + EXCLUDED.reactivated_customers,
		churned_customers = r.churned_customers + EXCLUDED.churned_customers,
		upgrades = r.upgrades + EXCLUDED.upgrades,
		downgrades = r.downgrades + EXCLUDED.downgrades,
		trials_started = r.trials_started + EXCLUDED.trials_started,
		trials_ended = r.trials_ended + EXCLUDED.trials_ended,
		trials_converted = r.trials_converted + EXCLUDED.trials_converted;
	RETURN NULL;
END
$fn$;

-- Recomputes mrr_monthly from the whole ledger; returns its row count.
-- The ledger is append-only; after any UPDATE or DELETE of its rows (by
-- hand) the triggers below call this.
CREATE OR REPLACE FUNCTION mrr_monthly_refresh()
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	v_count bigint;
BEGIN
	LOCK TABLE mrr_monthly IN EXCLUSIVE MODE;
	DELETE FROM mrr_monthly;
	INSERT INTO mrr_monthly
	SELECT c.currency, c.month, c.slot, sum(c.net), sum(c.new_mrr), sum(c.expansion_mrr),
	       sum(c.contraction_mrr), sum(c.churned_mrr), sum(c.reactivation_mrr),
	       sum(c.new_customers), sum(c.reactivated_customers), sum(c.churned_customers),
	       sum(c.upgrades), sum(c.downgrades), sum(c.trials_started), sum(c.trials_ended),
	       sum(c.trials_converted)
	FROM mrr_movements m
	CROSS JOIN LATERAL mrr_monthly_rows(m) c
	WHERE m.currency IS NOT NULL
	GROUP BY c.currency, c.month, c.slot;
	GET DIAGNOSTICS v_count = ROW_COUNT;
	RETURN v_count;
END
$fn$;

CREATE OR REPLACE FUNCTION mrr_monthly_resync()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		TRUNCATE mrr_monthly;
	ELSE
		PERFORM mrr_monthly_refresh();
	END IF;
	RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS mrr_movements_monthly_insert ON mrr_movements;	-- was per statement
CREATE OR REPLACE TRIGGER mrr_movements_monthly_row
	AFTER INSERT ON mrr_movements
	FOR EACH ROW
	WHEN (mrr_monthly_counts(NEW.currency, NEW.kind, NEW.status_before, NEW.status))
	EXECUTE FUNCTION mrr_monthly_add();
-- Upgrade: the all-zero rows that status changes used to add.
DELETE FROM mrr_monthly
WHERE net = 0 AND new_mrr = 0 AND expansion_mrr = 0 AND contraction_mrr = 0
  AND churned_mrr = 0 AND reactivation_mrr = 0 AND new_customers = 0
  AND reactivated_customers = 0 AND churned_customers = 0 AND upgrades = 0
  AND downgrades = 0 AND trials_started = 0 AND trials_ended = 0 AND trials_converted = 0;
CREATE OR REPLACE TRIGGER mrr_movements_monthly_change
	AFTER UPDATE OR DELETE ON mrr_movements
	FOR EACH STATEMENT EXECUTE FUNCTION mrr_monthly_resync();
CREATE OR REPLACE TRIGGER mrr_movements_monthly_truncate
	AFTER TRUNCATE ON mrr_movements
	FOR EACH STATEMENT EXECUTE FUNCTION mrr_monthly_resync();

-- Monthly amount of a subscription in minor units (rule above).
CREATE OR REPLACE FUNCTION subscription_monthly_amount(p_status text, p_unit_amount bigint,
	p_quantity bigint, p_interval text, p_currency text)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE
		WHEN p_status IS NULL OR p_status NOT IN ('active', 'past_due')
		     OR p_unit_amount IS NULL OR p_unit_amount <= 0 OR p_currency IS NULL THEN 0
		WHEN p_interval = 'yearly' THEN (p_unit_amount * coalesce(p_quantity, 1) + 6) / 12
		ELSE p_unit_amount * coalesce(p_quantity, 1)
	END::bigint
$fn$;

-- One MRR movement of p_delta for a customer in a currency: classifies it
-- against the customer's previous MRR there and appends it.  Movements of
-- one customer are serialised (transaction-scoped advisory lock in a key
-- space of its own), so two subscriptions of the customer changing at once
-- still chain their customer_amount.
CREATE OR REPLACE FUNCTION mrr_ledger_move(p_sub text, p_customer text, p_currency text,
	p_delta bigint, p_amount bigint, p_status_before text, p_status text, p_at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	v_before bigint;
	v_after bigint;
	v_kind text;
BEGIN
	PERFORM pg_advisory_xact_lock(7294811, hashtext(p_customer));
	SELECT m.customer_amount INTO v_before
	FROM mrr_movements m
	WHERE m.customer = p_customer AND m.currency = p_currency AND m.kind IS NOT NULL
	ORDER BY m.id DESC LIMIT 1;
	v_before := coalesce(v_before, 0);
	v_after := v_before + p_delta;
	-- (An MRR at or below 0 before a movement only happens on a ledger
	-- that started after the subscriptions did: run rebuild_mrr_movements().)
	IF v_before <= 0 AND v_after > 0 THEN
		v_kind := CASE WHEN EXISTS (SELECT 1 FROM mrr_movements m
					    WHERE m.customer = p_customer AND m.kind IS NOT NULL)
			       THEN 'reactivation' ELSE 'new' END;
	ELSIF v_before > 0 AND v_after <= 0 THEN
		v_kind := 'churn';
	ELSIF p_delta > 0 THEN
		v_kind := 'expansion';
	ELSE
		v_kind := 'contraction';
	END IF;
	INSERT INTO mrr_movements (stripe_subscription_id, customer, currency, kind, delta, amount,
				   customer_amount, status_before, status, effective_at)
	VALUES (p_sub, p_customer, p_currency, v_kind, p_delta, p_amount, v_after,
		p_status_before, p_status, p_at);
END
$fn$;

-- Writes the ledger rows for one change of a subscription from (status,
-- currency, monthly amount) before to after: the MRR movement(s), or a
-- status-only row when the status changed and MRR did not.  A change of
-- currency while paying leaves the old currency and enters the new one (two
-- movements; the status change rides on the first).  Shared by the
-- subscriptions triggers and rebuild_mrr_movements(), so live writing and a
-- rebuild classify alike.
CREATE OR REPLACE FUNCTION mrr_ledger_write(p_sub text, p_customer text,
	p_status_before text, p_currency_before text, p_amount_before bigint,
	p_status text, p_currency text, p_amount bigint, p_at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	v_customer text := coalesce(p_customer, p_sub);
	v_sb text := p_status_before;
	v_moved boolean := false;
BEGIN
	IF p_amount_before > 0 AND (p_amount = 0 OR p_currency IS DISTINCT FROM p_currency_before) THEN
		PERFORM mrr_ledger_move(p_sub, v_customer, p_currency_before, -p_amount_before, 0,
					v_sb, p_status, p_at);
		v_sb := p_status;
		v_moved := true;
	END IF;
	IF p_amount > 0 AND (p_amount_before = 0 OR p_currency IS DISTINCT FROM p_currency_before) THEN
		PERFORM mrr_ledger_move(p_sub, v_customer, p_currency, p_amount, p_amount,
					v_sb, p_status, p_at);
		v_moved := true;
	ELSIF p_amount > 0 AND p_amount <> p_amount_before THEN
		PERFORM mrr_ledger_move(p_sub, v_customer, p_currency, p_amount - p_amount_before,
					p_amount, v_sb, p_status, p_at);
		v_moved := true;
	END IF;
	IF NOT v_moved AND p_status IS DISTINCT FROM p_status_before THEN
		INSERT INTO mrr_movements (stripe_subscription_id, customer, currency, kind, amount,
					   status_before, status, effective_at)
		VALUES (p_sub, v_customer, coalesce(p_currency, p_currency_before), NULL, p_amount,
			p_status_before, p_status, p_at);
	END IF;
END
$fn$;

-- Trigger on subscriptions (AFTER INSERT, UPDATE of the columns that make
-- MRR or status, DELETE).  The effective time is last_event_created when the
-- statement applied an event (a new last_event_id), else now().
CREATE OR REPLACE FUNCTION subscriptions_mrr_ledger()
RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
	v_before bigint := 0;
	v_after bigint := 0;
	v_at timestamptz := now();
BEGIN
	IF TG_OP <> 'INSERT' THEN
		v_before := subscription_monthly_amount(OLD.status, OLD.unit_amount, OLD.quantity,
							OLD.billing_interval, OLD.currency);
	END IF;
	IF TG_OP <> 'DELETE' THEN
		v_after := subscription_monthly_amount(NEW.status, NEW.unit_amount, NEW.quantity,
						       NEW.billing_interval, NEW.currency);
		IF NEW.last_event_created IS NOT NULL
		   AND (TG_OP = 'INSERT' OR NEW.last_event_id IS DISTINCT FROM OLD.last_event_id) THEN
			v_at := NEW.last_event_created;
		END IF;
	END IF;
	IF TG_OP = 'INSERT' THEN
		PERFORM mrr_ledger_write(NEW.stripe_subscription_id, NEW.stripe_customer_id,
			NULL, NULL, 0, NEW.status, lower(NEW.currency), v_after, v_at);
	ELSIF TG_OP = 'UPDATE' THEN
		PERFORM mrr_ledger_write(NEW.stripe_subscription_id, NEW.stripe_customer_id,
			OLD.status, lower(OLD.currency), v_before,
			NEW.status, lower(NEW.currency), v_after, v_at);
	ELSE
		PERFORM mrr_ledger_write(OLD.stripe_subscription_id, OLD.stripe_customer_id,
			OLD.status, lower(OLD.currency), v_before, NULL, lower(OLD.currency), 0, v_at);
	END IF;
	RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER subscriptions_mrr_ledger_insert
	AFTER INSERT ON subscriptions
	FOR EACH ROW EXECUTE FUNCTION subscriptions_mrr_ledger();
CREATE OR REPLACE TRIGGER subscriptions_mrr_ledger_update
	AFTER UPDATE ON subscriptions
	FOR EACH ROW
	WHEN ((OLD.status, OLD.unit_amount, OLD.quantity, OLD.billing_interval, lower(OLD.currency))
	      IS DISTINCT FROM
	      (NEW.status, NEW.unit_amount, NEW.quantity, NEW.billing_interval, lower(NEW.currency)))
	EXECUTE FUNCTION subscriptions_mrr_ledger();
CREATE OR REPLACE TRIGGER subscriptions_mrr_ledger_delete
	AFTER DELETE ON subscriptions
	FOR EACH ROW EXECUTE FUNCTION subscriptions_mrr_ledger();

-- subscription_counts: how many subscriptions rows there are per tier and
-- status (the snapshot's byTier and byStatus), kept by triggers on
-- subscriptions, in 16 slots by subscription id like mrr_monthly.  Readers
-- sum the slots.
CREATE TABLE IF NOT EXISTS subscription_counts (
	tier			text		NOT NULL,
	status			text		NOT NULL,
	slot			smallint	NOT NULL,
	n			bigint		NOT NULL,
	PRIMARY KEY (tier, status, slot)
);

CREATE OR REPLACE FUNCTION subscription_counts_move()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		TRUNCATE subscription_counts;
		RETURN NULL;
	END IF;
	-- A new or a deleted row moves one cell: a one-row upsert (a third of
	-- the general statement's instructions below).
	IF TG_OP = 'INSERT' THEN
		INSERT INTO subscription_counts AS c (tier, status, slot, n)
		VALUES (NEW.tier, NEW.status, (hashtext(NEW.stripe_subscription_id) & 15)::smallint, 1)
		ON CONFLICT (tier, status, slot) DO UPDATE SET n = c.n + 1;
		RETURN NULL;
	ELSIF TG_OP = 'DELETE' THEN
		INSERT INTO subscription_counts AS c (tier, status, slot, n)
		VALUES (OLD.tier, OLD.status, (hashtext(OLD.stripe_subscription_id) & 15)::smallint, -1)
		ON CONFLICT (tier, status, slot) DO UPDATE SET n = c.n - 1;
		RETURN NULL;
	END IF;
	-- A change moves two cells, in one statement with its rows in key
	-- order: two transactions moving subscriptions between the same cells
	-- lock them in the same order.
	INSERT INTO subscription_counts AS c (tier, status, slot, n)
	SELECT x.tier, x.status, x.slot, sum(x.n)
	FROM (SELECT OLD.tier, OLD.status, (hashtext(OLD.stripe_subscription_id) & 15)::smallint, -1
	      WHERE TG_OP <> 'INSERT'
	      UNION ALL
	      SELECT NEW.tier, NEW.status, (hashtext(NEW.stripe_subscription_id) & 15)::smallint, 1
	      WHERE TG_OP <> 'DELETE') x(tier, status, slot, n)
	GROUP BY 1, 2, 3
	ORDER BY 1, 2, 3
	ON CONFLICT (tier, status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
	RETURN NULL;
END
$fn$;

-- Recomputes subscription_counts from subscriptions; returns its row count.
CREATE OR REPLACE FUNCTION subscription_counts_refresh()
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	v_count bigint;
BEGIN
	LOCK TABLE subscription_counts IN EXCLUSIVE MODE;
	DELETE FROM subscription_counts;
	INSERT INTO subscription_counts (tier, status, slot, n)
	SELECT s.tier, s.status, (hashtext(s.stripe_subscription_id) & 15)::smallint, count(*)
	FROM subscriptions s
	GROUP BY 1, 2, 3;
	GET DIAGNOSTICS v_count = ROW_COUNT;
	RETURN v_count;
END
$fn$;
CREATE OR REPLACE TRIGGER subscriptions_counts_insert
	AFTER INSERT ON subscriptions
	FOR EACH ROW EXECUTE FUNCTION subscription_counts_move();
CREATE OR REPLACE TRIGGER subscriptions_counts_update
	AFTER UPDATE ON subscriptions
	FOR EACH ROW
	WHEN ((OLD.tier, OLD.status, OLD.stripe_subscription_id)
	      IS DISTINCT FROM (NEW.tier, NEW.status, NEW.stripe_subscription_id))
	EXECUTE FUNCTION subscription_counts_move();
CREATE OR REPLACE TRIGGER subscriptions_counts_delete
	AFTER DELETE ON subscriptions
	FOR EACH ROW EXECUTE FUNCTION subscription_counts_move();
CREATE OR REPLACE TRIGGER subscriptions_counts_truncate
	AFTER TRUNCATE ON subscriptions
	FOR EACH STATEMENT EXECUTE FUNCTION subscription_counts_move();

------------------------------------------------------------------------------
-- Rebuilding the ledger from billing_events
--
-- rebuild_mrr_movements() empties mrr_movements and replays every recorded
-- Stripe event (billing_events in the order received, payload copies) through
-- the rules lib/subscription.c applies in event mode, writing through the same
-- mrr_ledger_write() as the triggers.  For events processed one after the
-- other in event mode, the result is the ledger live writing produced.  It
-- differs where the live path had information the payloads lack: refetch
-- mode (Stripe's state at that moment instead of the event's object), the
-- self-service endpoints' writes (Stripe's answer, stored before its event
-- arrives), tier and interval from configured price ids when the
-- subscription carries neither metadata.interval nor a price interval,
-- events stored without a payload or not applied (processed_at NULL), and
-- rows changed by hand.  Returns the number of ledger rows.  Locks
-- subscriptions against writers while it runs.
------------------------------------------------------------------------------

-- A Stripe id as lib/subscription.c accepts one ([A-Za-z0-9_]{1,255}): the
-- string, or an expanded object's "id"; NULL otherwise.
CREATE OR REPLACE FUNCTION billing_json_stripe_id(p jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE WHEN v ~ '^[A-Za-z0-9_]{1,255}$' THEN v END
	FROM (SELECT CASE jsonb_typeof(p)
			WHEN 'string' THEN p #>> '{}'
			WHEN 'object' THEN CASE WHEN jsonb_typeof(p -> 'id') = 'string'
						THEN p ->> 'id' END
		     END AS v) x
$fn$;

-- A JSON integer as bigint (NULL for anything else), like jsonget_path_int.
CREATE OR REPLACE FUNCTION billing_json_int(p jsonb)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE WHEN jsonb_typeof(p) = 'number' AND (p #>> '{}') ~ '^-?[0-9]{1,18}$'
		    THEN (p #>> '{}')::bigint END
$fn$;

-- A JSON string (NULL for anything else), like jsonget_str.
CREATE OR REPLACE FUNCTION billing_json_text(p jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE WHEN jsonb_typeof(p) = 'string' THEN p #>> '{}' END
$fn$;

-- A JSON string fit for a text column of at most p_max bytes, without
-- control characters (column_text in lib/subscription.c); NULL otherwise.
CREATE OR REPLACE FUNCTION billing_json_column_text(p jsonb, p_max integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE WHEN octet_length(v) <= p_max AND v !~ '[\x01-\x1f\x7f]' THEN v END
	FROM (SELECT billing_json_text(p) AS v) x
$fn$;

-- 'monthly' / 'yearly' for the spellings plan_interval_parse accepts.
CREATE OR REPLACE FUNCTION billing_interval_parse(p text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE WHEN p IN ('monthly', 'month') THEN 'monthly'
		    WHEN p IN ('yearly', 'year') THEN 'yearly' END
$fn$;

-- Lifecycle rank of a status (status_ranks in lib/subscription.c); NULL
-- for a status Stripe does not have.
CREATE OR REPLACE FUNCTION subscription_status_rank(p_status text)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE p_status
		WHEN 'incomplete' THEN 0 WHEN 'trialing' THEN 1 WHEN 'active' THEN 2
		WHEN 'past_due' THEN 3 WHEN 'unpaid' THEN 3 WHEN 'paused' THEN 3
		WHEN 'canceled' THEN 4 WHEN 'incomplete_expired' THEN 4
	END
$fn$;

-- Whether an event applies to the stored row: should_apply() of
-- lib/subscription.c (newer event wins; a deletion always applies; nothing
-- resurrects a canceled or incomplete_expired subscription; in the same
-- second an update's previous_attributes (p_previous) decide: one that moved
-- the status away from ours is the next step, one that left the status
-- alone came before a different status we hold; otherwise the later
-- lifecycle stage wins).
DROP FUNCTION IF EXISTS subscription_event_applies(text, timestamptz, text, timestamptz, boolean);
CREATE OR REPLACE FUNCTION subscription_event_applies(p_row_status text, p_row_last timestamptz,
	p_status text, p_created timestamptz, p_deletion boolean, p_previous jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT CASE
		WHEN p_row_status IS NULL THEN true
		WHEN subscription_status_rank(p_row_status) = 4
		     AND subscription_status_rank(p_status) IS DISTINCT FROM 4 THEN false
		WHEN p_deletion OR p_row_last IS NULL OR p_created > p_row_last THEN true
		WHEN p_created < p_row_last THEN false
		WHEN jsonb_typeof(p_previous) = 'object' AND p_previous ? 'status' THEN
			billing_json_text(p_previous -> 'status') IS NOT DISTINCT FROM p_row_status
			OR subscription_status_rank(p_status) >= subscription_status_rank(p_row_status)
		WHEN jsonb_typeof(p_previous) = 'object' AND p_status <> p_row_status THEN false
		ELSE subscription_status_rank(p_status) >= subscription_status_rank(p_row_status)
	END
$fn$;

CREATE OR REPLACE FUNCTION rebuild_mrr_movements()
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	e record;
	o jsonb;
	r record;
	v_sub text;
	v_status text;
	v_created timestamptz;
	v_deletion boolean;
	v_customer text;
	v_unit bigint;
	v_qty bigint;
	v_interval text;
	v_currency text;
	v_last timestamptz;
	v_before bigint;
	v_after bigint;
	v_count bigint;
BEGIN
	-- Webhooks wait until the rebuild commits, so none is lost in between.
	LOCK TABLE subscriptions IN SHARE ROW EXCLUSIVE MODE;
	LOCK TABLE mrr_movements IN ACCESS EXCLUSIVE MODE;
	TRUNCATE mrr_movements;
	CREATE TEMP TABLE IF NOT EXISTS mrr_replay (
		sub text PRIMARY KEY, customer text, status text, unit_amount bigint,
		quantity bigint, billing_interval text, currency text, last timestamptz
	) ON COMMIT DROP;
	TRUNCATE mrr_replay;

	FOR e IN
		SELECT b.event_type, b.occurred_at, b.received_at, b.payload
		FROM billing_events b
		WHERE b.payload IS NOT NULL AND b.processed_at IS NOT NULL	-- NULL: not applied
		  AND b.event_type IN ('customer.subscription.created', 'customer.subscription.updated',
				       'customer.subscription.deleted',
				       'customer.subscription.trial_will_end',
				       'checkout.session.completed', 'invoice.payment_failed')
		ORDER BY b.id
	LOOP
		o := e.payload #> '{data,object}';
		v_created := to_timestamp(billing_json_int(e.payload -> 'created'));
		IF jsonb_typeof(o) IS DISTINCT FROM 'object' OR v_created IS NULL THEN
			CONTINUE;
		END IF;

		IF e.event_type = 'checkout.session.completed' THEN
			-- Until the subscription itself is known: a row with status incomplete.
			v_sub := billing_json_stripe_id(o -> 'subscription');
			IF billing_json_text(o -> 'mode') IS DISTINCT FROM 'subscription' OR v_sub IS NULL
			   OR EXISTS (SELECT 1 FROM mrr_replay x WHERE x.sub = v_sub) THEN
				CONTINUE;
			END IF;
			v_customer := billing_json_stripe_id(o -> 'customer');
			INSERT INTO mrr_replay (sub, customer, status, billing_interval)
			VALUES (v_sub, v_customer, 'incomplete',
				billing_interval_parse(billing_json_text(o #> '{metadata,interval}')));
			PERFORM mrr_ledger_write(v_sub, v_customer, NULL, NULL, 0, 'incomplete', NULL, 0,
						 e.received_at);
			CONTINUE;
		END IF;

		IF e.event_type = 'invoice.payment_failed' THEN
			-- A renewal failure makes an active or trialing subscription past_due.
			v_sub := coalesce(billing_json_stripe_id(o #> '{parent,subscription_details,subscription}'),
					  billing_json_stripe_id(o -> 'subscription'));
			SELECT * INTO r FROM mrr_replay x WHERE x.sub = v_sub;
			IF NOT FOUND OR r.status NOT IN ('active', 'trialing')
			   OR NOT subscription_event_applies(r.status, r.last, 'past_due', v_created, false,
							     NULL) THEN
				CONTINUE;
			END IF;
			v_last := greatest(r.last, v_created);
			UPDATE mrr_replay x SET status = 'past_due', last = v_last WHERE x.sub = v_sub;
			v_before := subscription_monthly_amount(r.status, r.unit_amount, r.quantity,
								r.billing_interval, r.currency);
			v_after := subscription_monthly_amount('past_due', r.unit_amount, r.quantity,
							       r.billing_interval, r.currency);
			IF v_before <> v_after OR r.status <> 'past_due' THEN
				PERFORM mrr_ledger_write(v_sub, r.customer, r.status, lower(r.currency),
					v_before, 'past_due', lower(r.currency), v_after, v_last);
			END IF;
			CONTINUE;
		END IF;

		-- customer.subscription.*: store_subscription() in event mode.
		v_sub := billing_json_stripe_id(o -> 'id');
		v_status := billing_json_text(o -> 'status');
		v_deletion := e.event_type = 'customer.subscription.deleted';
		IF v_deletion AND subscription_status_rank(v_status) IS DISTINCT FROM 4 THEN
			v_status := 'canceled';
		END IF;
		IF v_sub IS NULL OR subscription_status_rank(v_status) IS NULL THEN
			CONTINUE;
		END IF;
		SELECT * INTO r FROM mrr_replay x WHERE x.sub = v_sub;
		IF FOUND AND NOT subscription_event_applies(r.status, r.last, v_status, v_created,
				v_deletion, CASE WHEN e.event_type = 'customer.subscription.updated'
						 THEN e.payload #> '{data,previous_attributes}' END) THEN
			CONTINUE;
		END IF;
		v_customer := coalesce(billing_json_stripe_id(o -> 'customer'), r.customer);
		v_unit := coalesce(billing_json_int(o #> '{items,data,0,price,unit_amount}'), r.unit_amount);
		v_qty := coalesce(CASE WHEN billing_json_int(o #> '{items,data,0,quantity}') >= 0
				       THEN billing_json_int(o #> '{items,data,0,quantity}') END, r.quantity);
		v_interval := coalesce(
			billing_interval_parse(billing_json_text(o #> '{metadata,interval}')),
			billing_interval_parse(billing_json_text(o #> '{items,data,0,price,recurring,interval}')),
			r.billing_interval);
		v_currency := coalesce(billing_json_column_text(o -> 'currency', 16),
				       billing_json_column_text(o #> '{items,data,0,price,currency}', 16),
				       r.currency);
		v_last := CASE WHEN r.last IS NULL THEN v_created ELSE greatest(r.last, v_created) END;
		INSERT INTO mrr_replay AS x (sub, customer, status, unit_amount, quantity,
					     billing_interval, currency, last)
		VALUES (v_sub, v_customer, v_status, v_unit, v_qty, v_interval, v_currency, v_last)
		ON CONFLICT (sub) DO UPDATE SET customer = EXCLUDED.customer, status = EXCLUDED.status,
			unit_amount = EXCLUDED.unit_amount, quantity = EXCLUDED.quantity,
			billing_interval = EXCLUDED.billing_interval, currency = EXCLUDED.currency,
			last = EXCLUDED.last;
		v_before := CASE WHEN r IS NULL THEN 0 ELSE subscription_monthly_amount(r.status,
				r.unit_amount, r.quantity, r.billing_interval, r.currency) END;
		v_after := subscription_monthly_amount(v_status, v_unit, v_qty, v_interval, v_currency);
		IF r IS NULL THEN
			PERFORM mrr_ledger_write(v_sub, v_customer, NULL, NULL, 0, v_status,
						 lower(v_currency), v_after, v_last);
		ELSIF (r.status, r.unit_amount, r.quantity, r.billing_interval, lower(r.currency))
		      IS DISTINCT FROM (v_status, v_unit, v_qty, v_interval, lower(v_currency)) THEN
			PERFORM mrr_ledger_write(v_sub, v_customer, r.status, lower(r.currency), v_before,
						 v_status, lower(v_currency), v_after, v_last);
		END IF;
	END LOOP;
	SELECT count(*) INTO v_count FROM mrr_movements;
	RETURN v_count;
END
$fn$;

------------------------------------------------------------------------------
-- Business figures (the operator console's analytics; also for psql)
--
-- Months are UTC calendar months, given as their first day (a date).  Money
-- is in minor units of one currency: figures are never summed across
-- currencies.  Rates are fractions (0.05 = 5 %), rounded to 6 decimals, NULL
-- when the denominator is 0.  Where SaaS metric vendors differ, these follow
-- Stripe Billing's metric definitions
-- (https://docs.stripe.com/billing/subscriptions/analytics/glossary).
------------------------------------------------------------------------------

-- The months p_from .. p_to (each truncated to its first day), checked:
-- both given, p_from <= p_to, at most 240 months.  Errors: SQLSTATE 22023.
CREATE OR REPLACE FUNCTION analytics_months(p_from date, p_to date)
RETURNS SETOF date LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
	v_from date := date_trunc('month', p_from)::date;
	v_to date := date_trunc('month', p_to)::date;
BEGIN
	IF v_from IS NULL OR v_to IS NULL OR v_from > v_to
	   OR v_to >= (v_from + interval '240 months')::date THEN
		RAISE EXCEPTION 'analytics: months must be from <= to, at most 240 of them'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY SELECT g::date FROM generate_series(v_from, v_to, interval '1 month') g;
END
$fn$;

-- A currency code as the figures use it: lower case, three letters.
-- Errors: SQLSTATE 22023.
CREATE OR REPLACE FUNCTION analytics_currency(p_currency text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
	IF p_currency IS NULL OR p_currency !~ '^[A-Za-z]{3}$' THEN
		RAISE EXCEPTION 'analytics: currency must be a three-letter code'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN lower(p_currency);
END
$fn$;

-- analytics_monthly(from, to, currency): one row per month, from the ledger
-- (through its monthly sums, mrr_monthly).
-- For month M (start S, end E) in the currency:
--   mrr_start, mrr_end    MRR at S and at E = sum of all movement deltas
--                         effective before that instant (equals the sum of
--                         the monthly amounts of the active and past_due
--                         subscriptions then); arr_end = 12 x mrr_end;
--   new_mrr, expansion_mrr, reactivation_mrr     sum of those movements in M;
--   contraction_mrr, churned_mrr   the same, as positive amounts;
--   net_new_mrr           mrr_end - mrr_start;
--   customers_start, customers_end   paying customers (MRR > 0 in the
--                         currency) at S and E = new + reactivation - churn
--                         movements before that instant;
--   new_customers, reactivated_customers, churned_customers   those
--                         movements in M (a customer who leaves and comes
--                         back within M counts in both);
--   arpa                  mrr_end / customers_end (average revenue per
--                         account; Stripe: per active subscriber), 2 decimals;
--   customer_churn_rate   churned_customers / customers_start.  (Stripe's
--                         subscriber churn rate; some vendors divide by the
--                         average or add the month's new customers);
--   gross_mrr_churn_rate  (churned_mrr + contraction_mrr) / mrr_start;
--   net_mrr_churn_rate    (churned_mrr + contraction_mrr - expansion_mrr
--                         - reactivation_mrr) / mrr_start (negative = net
--                         expansion; Stripe counts reactivation in it);
--   upgrades, downgrades  expansion and contraction movements in M (Stripe
--                         reports MRR changes as upgrades and downgrades, so
--                         a switch to a cheaper yearly price is a downgrade);
--   upgrade_rate, downgrade_rate   upgrades or downgrades / customers_start;
--   trials_started        subscriptions entering trialing in M;
--   trials_ended          subscriptions leaving trialing in M (converted,
--                         canceled, expired, paused, ...);
--   trials_converted      those that left it for active or past_due with a
--                         monthly amount > 0 (became paying);
--   trial_conversion_rate trials_converted / trials_ended.
CREATE OR REPLACE FUNCTION analytics_monthly(p_from date, p_to date, p_currency text)
RETURNS TABLE (month date, currency text, mrr_start bigint, mrr_end bigint, arr_end bigint,
	       new_mrr bigint, expansion_mrr bigint, contraction_mrr bigint, churned_mrr bigint,
	       reactivation_mrr bigint, net_new_mrr bigint,
	       customers_start bigint, customers_end bigint, new_customers bigint,
	       reactivated_customers bigint, churned_customers bigint,
	       arpa numeric, customer_churn_rate numeric, gross_mrr_churn_rate numeric,
	       net_mrr_churn_rate numeric, upgrades bigint, downgrades bigint,
	       upgrade_rate numeric, downgrade_rate numeric,
	       trials_started bigint, trials_ended bigint, trials_converted bigint,
	       trial_conversion_rate numeric)
LANGUAGE sql STABLE AS $fn$
	WITH months AS (
		SELECT g AS month FROM analytics_months(p_from, p_to) g
	), cur AS (
		SELECT analytics_currency(p_currency) AS c
	), per AS (
		-- Months before the range fold into one opening row (month NULL).
		SELECT CASE WHEN r.month < (SELECT min(months.month) FROM months) THEN NULL
			    ELSE r.month END AS month,
		       sum(r.net) AS net,
		       sum(r.new_customers + r.reactivated_customers - r.churned_customers) AS dcust,
		       sum(r.new_mrr) AS new_mrr,
		       sum(r.expansion_mrr) AS expansion_mrr,
		       -sum(r.contraction_mrr) AS contraction_mrr,
		       -sum(r.churned_mrr) AS churned_mrr,
		       sum(r.reactivation_mrr) AS reactivation_mrr,
		       sum(r.new_customers) AS new_customers,
		       sum(r.reactivated_customers) AS reactivated_customers,
		       sum(r.churned_customers) AS churned_customers,
		       sum(r.upgrades) AS upgrades,
		       sum(r.downgrades) AS downgrades,
		       sum(r.trials_started) AS trials_started,
		       sum(r.trials_ended) AS trials_ended,
		       sum(r.trials_converted) AS trials_converted
		FROM mrr_monthly r, cur
		WHERE r.currency = cur.c AND r.month <= (SELECT max(months.month) FROM months)
		GROUP BY 1
	), opening AS (
		SELECT coalesce((SELECT net FROM per WHERE per.month IS NULL), 0) AS mrr,
		       coalesce((SELECT dcust FROM per WHERE per.month IS NULL), 0) AS customers
	), series AS (
		SELECT months.month,
		       o.mrr + coalesce(sum(p.net) OVER w, 0) - coalesce(p.net, 0) AS mrr_start,
		       o.mrr + coalesce(sum(p.net) OVER w, 0) AS mrr_end,
		       o.customers + coalesce(sum(p.dcust) OVER w, 0) - coalesce(p.dcust, 0) AS customers_start,
		       o.customers + coalesce(sum(p.dcust) OVER w, 0) AS customers_end,
		       p.new_mrr, p.expansion_mrr, p.contraction_mrr, p.churned_mrr,
		       p.reactivation_mrr, p.new_customers, p.reactivated_customers,
		       p.churned_customers, p.upgrades, p.downgrades, p.trials_started,
		       p.trials_ended, p.trials_converted
		FROM months
		CROSS JOIN opening o
		LEFT JOIN per p ON p.month = months.month
		WINDOW w AS (ORDER BY months.month)
	)
	SELECT s.month, cur.c,
	       s.mrr_start::bigint, s.mrr_end::bigint, 12 * s.mrr_end::bigint,
	       coalesce(s.new_mrr, 0)::bigint, coalesce(s.expansion_mrr, 0)::bigint,
	       coalesce(s.contraction_mrr, 0)::bigint, coalesce(s.churned_mrr, 0)::bigint,
	       coalesce(s.reactivation_mrr, 0)::bigint, (s.mrr_end - s.mrr_start)::bigint,
	       s.customers_start::bigint, s.customers_end::bigint,
	       coalesce(s.new_customers, 0), coalesce(s.reactivated_customers, 0),
	       coalesce(s.churned_customers, 0),
	       round(s.mrr_end / nullif(s.customers_end, 0), 2),
	       round(coalesce(s.churned_customers, 0) / nullif(s.customers_start, 0)::numeric, 6),
	       round((coalesce(s.churned_mrr, 0) + coalesce(s.contraction_mrr, 0))
		     / nullif(s.mrr_start, 0)::numeric, 6),
	       round((coalesce(s.churned_mrr, 0) + coalesce(s.contraction_mrr, 0)
		      - coalesce(s.expansion_mrr, 0) - coalesce(s.reactivation_mrr, 0))
		     / nullif(s.mrr_start, 0)::numeric, 6),
	       coalesce(s.upgrades, 0), coalesce(s.downgrades, 0),
	       round(coalesce(s.upgrades, 0) / nullif(s.customers_start, 0)::numeric, 6),
	       round(coalesce(s.downgrades, 0) / nullif(s.customers_start, 0)::numeric, 6),
	       coalesce(s.trials_started, 0), coalesce(s.trials_ended, 0),
	       coalesce(s.trials_converted, 0),
	       round(coalesce(s.trials_converted, 0) / nullif(s.trials_ended, 0)::numeric, 6)
	FROM series s CROSS JOIN cur
	ORDER BY s.month
$fn$;

-- mrr_now: the current MRR per currency straight from subscriptions (the
-- same figure the ledger sums to).  mrr = sum of the monthly amounts of the
-- active and past_due subscriptions; arr = 12 x mrr; paying_customers =
-- customers with a monthly amount > 0 in the currency; arpa = mrr /
-- paying_customers (2 decimals).  Currencies with no paying customer are
-- left out.
CREATE OR REPLACE VIEW mrr_now AS
	SELECT c.currency, sum(c.amount)::bigint AS mrr, (12 * sum(c.amount))::bigint AS arr,
	       count(*) FILTER (WHERE c.amount > 0) AS paying_customers,
	       round(sum(c.amount) / nullif(count(*) FILTER (WHERE c.amount > 0), 0), 2) AS arpa
	FROM (SELECT lower(s.currency) AS currency,
		     coalesce(s.stripe_customer_id, s.stripe_subscription_id) AS customer,
		     sum(subscription_monthly_amount(s.status, s.unit_amount, s.quantity,
						     s.billing_interval, s.currency)) AS amount
	      FROM subscriptions s
	      WHERE s.status IN ('active', 'past_due') AND s.currency IS NOT NULL
	      GROUP BY 1, 2) c
	GROUP BY c.currency
	HAVING sum(c.amount) > 0;

-- analytics_snapshot() -> jsonb, the state now (the original backend's
-- getSubscriptionAnalytics(), extended):
-- {
--   "totalSubscriptions": 1234,                    every subscriptions row
--   "byTier":   {"free": 0, "basic": 0, "pro": 0, "enterprise": 0},
--   "byStatus": {"incomplete": 0, ..., "paused": 0},  all eight statuses
--   "byTierAndStatus": {"pro": {"active": 3, ...}, ...}  non-zero cells only
--   "monthlyRecurringRevenue": {"usd": 123400, "eur": 5600},  minor units,
--   "annualRecurringRevenue":  {"usd": 1480800, ...},      per currency
--   "payingCustomers": {"usd": 80, ...},
--   "averageRevenuePerAccount": {"usd": 1542.50, ...}
-- }
CREATE OR REPLACE FUNCTION analytics_snapshot()
RETURNS jsonb LANGUAGE sql STABLE AS $fn$
	WITH cells AS MATERIALIZED (
		SELECT c.tier, c.status, sum(c.n)::bigint AS n
		FROM subscription_counts c
		GROUP BY c.tier, c.status
		HAVING sum(c.n) <> 0
	), mrr AS MATERIALIZED (
		-- mrr_now's figures, summed from the ledger (equal to mrr_now, and
		-- a few hundred rows to read instead of every paying subscription).
		SELECT r.currency, sum(r.net)::bigint AS mrr, (12 * sum(r.net))::bigint AS arr,
		       sum(r.new_customers + r.reactivated_customers - r.churned_customers)::bigint
			       AS paying_customers,
		       round(sum(r.net) / nullif(sum(r.new_customers + r.reactivated_customers
						      - r.churned_customers), 0), 2) AS arpa
		FROM mrr_monthly r
		GROUP BY r.currency
		HAVING sum(r.net) <> 0
	)
	SELECT jsonb_build_object(
		'totalSubscriptions', (SELECT coalesce(sum(n), 0) FROM cells),
		'byTier', (SELECT jsonb_object_agg(t, (SELECT coalesce(sum(n), 0) FROM cells WHERE cells.tier = t))
			   FROM unnest(ARRAY['free', 'basic', 'pro', 'enterprise']) t),
		'byStatus', (SELECT jsonb_object_agg(st, (SELECT coalesce(sum(n), 0) FROM cells WHERE cells.status = st))
			     FROM unnest(ARRAY['incomplete', 'incomplete_expired', 'trialing', 'active',
					       'past_due', 'canceled', 'unpaid', 'paused']) st),
		'byTierAndStatus', coalesce((SELECT jsonb_object_agg(t.tier, t.o) FROM (
				SELECT cells.tier, jsonb_object_agg(cells.status, cells.n) AS o
				FROM cells GROUP BY cells.tier) t), '{}'::jsonb),
		'monthlyRecurringRevenue', coalesce((SELECT jsonb_object_agg(currency, mrr) FROM mrr), '{}'::jsonb),
		'annualRecurringRevenue', coalesce((SELECT jsonb_object_agg(currency, arr) FROM mrr), '{}'::jsonb),
		'payingCustomers', coalesce((SELECT jsonb_object_agg(currency, paying_customers) FROM mrr), '{}'::jsonb),
		'averageRevenuePerAccount', coalesce((SELECT jsonb_object_agg(currency, arpa) FROM mrr), '{}'::jsonb))
$fn$;

-- usage_closed_months: feature usage and quota refusals of months that
-- ended, per tier and usage type, summed on first demand by
-- analytics_feature_usage() and analytics_quota_breaches().  track_usage
-- only ever writes the current month, so a month that ended (an hour ago:
-- no transaction that counted in it is still open) no longer changes; a
-- change to a closed month's rows anyway (by hand, an admin reset) drops
-- that month from here (triggers on usage_tracking and quota_refusals), and
-- it is summed again when next asked for.  tier NULL: counters written
-- before usage_tracking.tier existed.
CREATE TABLE IF NOT EXISTS usage_closed_months (
	month			date		NOT NULL,	-- first day of the UTC month
	tier			text,
	usage_type		text		NOT NULL,
	users			bigint		NOT NULL,	-- users who recorded > 0
	total			bigint		NOT NULL,	-- sum recorded
	refusals		bigint		NOT NULL,	-- 402 answers
	refused_users		bigint		NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_closed_months_key
	ON usage_closed_months (month, usage_type, tier) NULLS NOT DISTINCT;

-- Whether the UTC month starting p_month ended more than an hour ago.
-- PL/pgSQL, like mrr_monthly_counts: the triggers below call it in their
-- WHEN clauses, where a SQL function would be inlined, its body parsed,
-- twice per usage POST that adds to a counter.
CREATE OR REPLACE FUNCTION usage_month_closed(p_month date)
RETURNS boolean LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
BEGIN
	RETURN p_month < usage_period_start(now() - interval '1 hour');
END
$fn$;

-- Fillers and forgetters of one month are serialised by this lock key.
CREATE OR REPLACE FUNCTION usage_month_lock_key(p_month date)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT (p_month - DATE '2000-01-01')::integer
$fn$;

CREATE OR REPLACE FUNCTION usage_closed_months_forget()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		TRUNCATE usage_closed_months;
		RETURN NULL;
	END IF;
	IF TG_OP <> 'INSERT' THEN
		PERFORM pg_advisory_xact_lock_shared(7294812, usage_month_lock_key(OLD.period_start));
		DELETE FROM usage_closed_months WHERE month = OLD.period_start;
	END IF;
	IF TG_OP <> 'DELETE' THEN
		PERFORM pg_advisory_xact_lock_shared(7294812, usage_month_lock_key(NEW.period_start));
		DELETE FROM usage_closed_months WHERE month = NEW.period_start;
	END IF;
	RETURN NULL;
END
$fn$;
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['usage_tracking', 'quota_refusals'] LOOP
		EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %I FOR EACH ROW
			WHEN (usage_month_closed(NEW.period_start))
			EXECUTE FUNCTION usage_closed_months_forget()', t || '_closed_insert', t);
		EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %I FOR EACH ROW
			WHEN (usage_month_closed(OLD.period_start) OR usage_month_closed(NEW.period_start))
			EXECUTE FUNCTION usage_closed_months_forget()', t || '_closed_update', t);
		EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %I FOR EACH ROW
			WHEN (usage_month_closed(OLD.period_start))
			EXECUTE FUNCTION usage_closed_months_forget()', t || '_closed_delete', t);
		EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %I FOR EACH STATEMENT
			EXECUTE FUNCTION usage_closed_months_forget()', t || '_closed_truncate', t);
	END LOOP;
END
$$;
-- Upgrade: what earlier versions had for closed months and the monthly
-- figures, replaced by the above (the triggers of the same names now call
-- usage_closed_months_forget) and read by nothing; the indexes cost every
-- usage increment and ledger row a write.
DROP TABLE IF EXISTS usage_monthly;
DROP FUNCTION IF EXISTS usage_monthly_forget();
DROP INDEX IF EXISTS usage_tracking_period_type_idx;
DROP INDEX IF EXISTS mrr_movements_series_idx;

-- Sums the closed months of p_from .. p_to that usage_closed_months lacks
-- and returns the months of the range that are still open, to be summed
-- from the live tables (an array, not a subquery: the planner then sees how
-- few rows match).  Every tier x type gets a row (zeros included), so a
-- summed month is known to be there.
CREATE OR REPLACE FUNCTION usage_closed_months_fill(p_from date, p_to date)
RETURNS date[] LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
	v_month date;
BEGIN
	FOR v_month IN
		SELECT g FROM analytics_months(p_from, p_to) g
		WHERE usage_month_closed(g)
		  AND NOT EXISTS (SELECT 1 FROM usage_closed_months c WHERE c.month = g)
	LOOP
		-- Waits for writers that are dropping this month; then sums it.
		PERFORM pg_advisory_xact_lock(7294812, usage_month_lock_key(v_month));
		INSERT INTO usage_closed_months (month, tier, usage_type, users, total, refusals,
						 refused_users)
		WITH u AS (
			SELECT x.tier, x.usage_type, count(*) FILTER (WHERE x.amount > 0) AS users,
			       sum(x.amount)::bigint AS total
			FROM usage_tracking x WHERE x.period_start = v_month
			GROUP BY x.tier, x.usage_type
		), r AS (
			SELECT x.tier, x.usage_type, sum(x.refusals)::bigint AS refusals,
			       count(*) AS users
			FROM quota_refusals x WHERE x.period_start = v_month
			GROUP BY x.tier, x.usage_type
		), k AS (
			SELECT u.tier, u.usage_type FROM u
			UNION SELECT r.tier, r.usage_type FROM r
			UNION SELECT t, ut FROM unnest(ARRAY['free', 'basic', 'pro', 'enterprise']) t
					 CROSS JOIN unnest(billing_usage_types()) ut
		)
		SELECT v_month, k.tier, k.usage_type, coalesce(u.users, 0), coalesce(u.total, 0),
		       coalesce(r.refusals, 0), coalesce(r.users, 0)
		FROM k
		LEFT JOIN u ON u.tier IS NOT DISTINCT FROM k.tier AND u.usage_type = k.usage_type
		LEFT JOIN r ON r.tier = k.tier AND r.usage_type = k.usage_type
		ON CONFLICT DO NOTHING;
	END LOOP;
	RETURN ARRAY(SELECT g FROM analytics_months(p_from, p_to) g WHERE NOT usage_month_closed(g));
END
$fn$;

-- analytics_feature_usage(from, to): usage per type per month, every month x
-- type of the range (zeros included): users = users who recorded more than
-- 0 of the type that month, total = the sum recorded (storage: bytes).
-- Closed months come from usage_closed_months (summed there the first
-- time), the others from usage_tracking.  VOLATILE: it may fill
-- usage_closed_months; call it in a READ COMMITTED transaction.
CREATE OR REPLACE FUNCTION analytics_feature_usage(p_from date, p_to date)
RETURNS TABLE (month date, usage_type text, users bigint, total bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
	v_open date[];
BEGIN
	v_open := usage_closed_months_fill(p_from, p_to);
	RETURN QUERY
	WITH months AS (
		SELECT g AS month FROM analytics_months(p_from, p_to) g
	), sums AS (
		SELECT c.month, c.usage_type, sum(c.users)::bigint AS users,
		       sum(c.total)::bigint AS total
		FROM usage_closed_months c
		WHERE c.month IN (SELECT m.month FROM months m) AND NOT (c.month = ANY (v_open))
		GROUP BY c.month, c.usage_type
		UNION ALL
		SELECT u.period_start, u.usage_type, count(*) FILTER (WHERE u.amount > 0),
		       sum(u.amount)::bigint
		FROM usage_tracking u
		WHERE u.period_start = ANY (v_open)
		GROUP BY u.period_start, u.usage_type
	)
	SELECT m.month, t.usage_type, coalesce(x.users, 0), coalesce(x.total, 0)
	FROM months m
	CROSS JOIN unnest(billing_usage_types()) WITH ORDINALITY AS t(usage_type, ord)
	LEFT JOIN sums x ON x.month = m.month AND x.usage_type = t.usage_type
	ORDER BY m.month, t.ord;
END
$fn$;

-- analytics_quota_breaches(from, to): 402 quota_exceeded answers of
-- usage.cgi per month, tier (effective when refused) and usage type;
-- refusals = answers, users = distinct users refused (quota_refusals has one
-- row per user in such a group).  Only non-zero rows.  Closed months come
-- from usage_closed_months, as for analytics_feature_usage (VOLATILE).
CREATE OR REPLACE FUNCTION analytics_quota_breaches(p_from date, p_to date)
RETURNS TABLE (month date, tier text, usage_type text, refusals bigint, users bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
	v_open date[];
BEGIN
	v_open := usage_closed_months_fill(p_from, p_to);
	RETURN QUERY
	SELECT x.month, x.tier, x.usage_type, x.refusals, x.users
	FROM (SELECT c.month, c.tier, c.usage_type, c.refusals, c.refused_users AS users
	      FROM usage_closed_months c
	      WHERE c.month IN (SELECT g FROM analytics_months(p_from, p_to) g)
		AND NOT (c.month = ANY (v_open)) AND c.refusals > 0
	      UNION ALL
	      SELECT r.period_start, r.tier, r.usage_type, sum(r.refusals)::bigint, count(*)
	      FROM quota_refusals r
	      WHERE r.period_start = ANY (v_open)
	      GROUP BY r.period_start, r.tier, r.usage_type) x
	ORDER BY x.month, array_position(ARRAY['free', 'basic', 'pro', 'enterprise'], x.tier),
		 array_position(billing_usage_types(), x.usage_type);
END
$fn$;

-- analytics_quota_utilisation(month = this month): per tier and usage type,
-- over the users with a counter of that type in the month, counted under the
-- tier it was last incremented under: users, the tier's monthly limit now
-- (NULL = unlimited), avg_utilisation = average of used / limit (NULL when
-- unlimited, the limit is 0 or nobody used it; 4 decimals) and at_limit =
-- users whose counter reached the limit.  Every tier x type, zeros included.
CREATE OR REPLACE FUNCTION analytics_quota_utilisation(p_month date DEFAULT NULL)
RETURNS TABLE (month date, tier text, usage_type text, monthly_limit bigint, users bigint,
	       avg_utilisation numeric, at_limit bigint)
LANGUAGE sql STABLE AS $fn$
	WITH m AS (
		SELECT coalesce(date_trunc('month', p_month)::date, usage_period_start(now())) AS month
	), grid AS (
		-- plan_limit() for every tier x type, in display order.
		SELECT t.tier, ut.usage_type, t.tord, ut.uord,
		       CASE WHEN q.tier IS NULL THEN 0 ELSE q.monthly_limit END AS lim
		FROM unnest(ARRAY['free', 'basic', 'pro', 'enterprise']) WITH ORDINALITY AS t(tier, tord)
		CROSS JOIN unnest(billing_usage_types()) WITH ORDINALITY AS ut(usage_type, uord)
		LEFT JOIN plan_quotas q ON q.tier = t.tier AND q.usage_type = ut.usage_type
	), known AS (
		-- One pass over the month's index range, in index order.
		SELECT u.usage_type, u.tier, count(*) AS users, sum(u.amount) AS total
		FROM usage_tracking u
		WHERE u.period_start = (SELECT m.month FROM m) AND u.tier IS NOT NULL
		GROUP BY u.usage_type, u.tier
	), legacy AS (
		-- Counters written before usage_tracking.tier existed count under
		-- the user's tier now.
		SELECT x.tier, x.usage_type, count(*) AS users, sum(x.amount) AS total,
		       count(*) FILTER (WHERE x.amount >= plan_limit(x.tier, x.usage_type)) AS at_limit
		FROM (SELECT user_effective_tier(u.user_id) AS tier, u.usage_type, u.amount
		      FROM usage_tracking u
		      WHERE u.period_start = (SELECT m.month FROM m) AND u.tier IS NULL) x
		GROUP BY x.tier, x.usage_type
	), per AS (
		SELECT g.tier, g.usage_type, g.tord, g.uord, g.lim,
		       coalesce(k.users, 0) + coalesce(l.users, 0) AS users,
		       coalesce(k.total, 0) + coalesce(l.total, 0) AS total,
		       coalesce(l.at_limit, 0)
		       + CASE WHEN g.lim IS NULL THEN 0
			      ELSE (SELECT count(*) FROM usage_tracking u
				    WHERE u.period_start = (SELECT m.month FROM m)
				      AND u.usage_type = g.usage_type AND u.tier = g.tier
				      AND u.amount >= g.lim) END AS at_limit
		FROM grid g
		LEFT JOIN known k ON k.tier = g.tier AND k.usage_type = g.usage_type
		LEFT JOIN legacy l ON l.tier = g.tier AND l.usage_type = g.usage_type
	)
	SELECT m.month, p.tier, p.usage_type, p.lim, p.users,
	       round(p.total::numeric / nullif(p.users, 0) / nullif(p.lim, 0), 4), p.at_limit
	FROM per p CROSS JOIN m
	ORDER BY p.tord, p.uord
$fn$;

-- analytics_report(from, to, currency) -> jsonb, everything the console's
-- GET /api/admin/analytics answers:
-- {
--   "from": "2026-01", "to": "2026-06", "currency": "usd",
--   "months": [ {"month": "2026-01", <every column of analytics_monthly>}, ... ],
--   "featureUsage": [ {"month": "2026-01", "usage_type": ..., "users", "total"}, ... ],
--   "quotaBreaches": [ {"month", "tier", "usage_type", "refusals", "users"}, ... ],
--   "quotaUtilisation": [ {"month", "tier", "usage_type", "monthly_limit", "users",
--                          "avg_utilisation", "at_limit"}, ... ],   this month
--   "snapshot": analytics_snapshot()
-- }
CREATE OR REPLACE FUNCTION analytics_report(p_from date, p_to date, p_currency text)
RETURNS jsonb LANGUAGE sql VOLATILE AS $fn$
	SELECT jsonb_build_object(
		'from', to_char(date_trunc('month', p_from), 'YYYY-MM'),
		'to', to_char(date_trunc('month', p_to), 'YYYY-MM'),
		'currency', analytics_currency(p_currency),
		'months', (SELECT jsonb_agg(to_jsonb(a) || jsonb_build_object('month', to_char(a.month, 'YYYY-MM'))
					    ORDER BY a.month)
			   FROM analytics_monthly(p_from, p_to, p_currency) a),
		'featureUsage', coalesce((SELECT jsonb_agg((to_jsonb(f) - 'ordinality') || jsonb_build_object('month', to_char(f.month, 'YYYY-MM'))
						  ORDER BY f.ordinality)
				 FROM analytics_feature_usage(p_from, p_to) WITH ORDINALITY f), '[]'::jsonb),
		'quotaBreaches', coalesce((SELECT jsonb_agg((to_jsonb(b) - 'ordinality') || jsonb_build_object('month', to_char(b.month, 'YYYY-MM'))
						   ORDER BY b.ordinality)
				  FROM analytics_quota_breaches(p_from, p_to) WITH ORDINALITY b), '[]'::jsonb),
		'quotaUtilisation', (SELECT jsonb_agg((to_jsonb(q) - 'ordinality') || jsonb_build_object('month', to_char(q.month, 'YYYY-MM'))
					      ORDER BY q.ordinality)
				     FROM analytics_quota_utilisation() WITH ORDINALITY q),
		'snapshot', analytics_snapshot())
$fn$;

------------------------------------------------------------------------------
-- metrics_gauges(): the business figures GET /metrics exposes (lib/metrics.c
-- names and renders them), read at scrape time: one row per series,
-- (metric, label1, label2, value).
--
--   subscriptions (tier, status)   subscriptions rows; every tier x status,
--                                  zeros included, so that alerts see 0
--   trials (tier)                  subscriptions in status trialing
--   mrr (currency)                 monthly recurring revenue in minor units
--                                  (cents), the view mrr_now: the business
--                                  figures' definition (README, Business
--                                  figures).  One row per currency with MRR.
-- The counts come from subscription_counts and MRR from the paying rows'
-- index, so a scrape stays cheap at a million subscriptions.
--   notifications (status)         notifications not sent: 'pending' (still
--                                  to send) and 'failed' (given up).  The
--                                  status is the mailer's status column when
--                                  the table has one (read through to_jsonb,
--                                  so this works with and without it), else
--                                  every unsent row is pending.
--   notification_oldest_pending_age  seconds since the oldest pending
--                                  notification was queued; 0 when none
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION metrics_gauges()
RETURNS TABLE (metric text, label1 text, label2 text, value double precision)
LANGUAGE sql STABLE AS $fn$
	WITH tiers(tier) AS (VALUES ('free'), ('basic'), ('pro'), ('enterprise')),
	statuses(status) AS (VALUES ('incomplete'), ('incomplete_expired'), ('trialing'),
				    ('active'), ('past_due'), ('canceled'), ('unpaid'), ('paused')),
	unsent AS (
		SELECT coalesce(to_jsonb(n) ->> 'status', 'pending') AS status, n.created_at
		FROM notifications n
		WHERE n.sent_at IS NULL
	)
	SELECT 'subscriptions', t.tier, st.status, coalesce(sum(c.n), 0)::float8
	FROM tiers t CROSS JOIN statuses st
	LEFT JOIN subscription_counts c ON c.tier = t.tier AND c.status = st.status
	GROUP BY t.tier, st.status
	UNION ALL
	SELECT 'trials', t.tier, NULL, coalesce(sum(c.n), 0)::float8
	FROM tiers t
	LEFT JOIN subscription_counts c ON c.tier = t.tier AND c.status = 'trialing'
	GROUP BY t.tier
	UNION ALL
	SELECT 'mrr', m.currency, NULL, m.mrr::float8
	FROM mrr_now m
	UNION ALL
	SELECT 'notifications', k.status, NULL, count(u.status)::float8
	FROM (VALUES ('pending'), ('failed')) AS k(status)
	LEFT JOIN unsent u ON u.status = k.status
	GROUP BY k.status
	UNION ALL
	SELECT 'notification_oldest_pending_age', NULL, NULL,
	       coalesce(extract(epoch FROM now() - min(u.created_at)), 0)::float8
	FROM unsent u
	WHERE u.status = 'pending'
	ORDER BY 1, 2, 3
$fn$;

-- Upgrade: counters created on a database with rows get filled once.
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM mrr_monthly)
	   AND EXISTS (SELECT 1 FROM mrr_movements m
		       WHERE mrr_monthly_counts(m.currency, m.kind, m.status_before, m.status)) THEN
		PERFORM mrr_monthly_refresh();
	END IF;
	IF NOT EXISTS (SELECT 1 FROM subscription_counts) AND EXISTS (SELECT 1 FROM subscriptions) THEN
		PERFORM subscription_counts_refresh();
	END IF;
END
$$;

DROP PROCEDURE pg_temp.ensure_constraint(regclass, text, text);
DROP PROCEDURE pg_temp.ensure_check(regclass, text, text);

COMMIT;
