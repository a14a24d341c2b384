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
--                  with ALTER TABLE ... DROP CONSTRAINT IF EXISTS;
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

-- The five usage types, in display order.  (The CHECK constraints below spell
-- the same list out literally so that it is visible in the catalog.)
CREATE OR REPLACE FUNCTION billing_usage_types()
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT ARRAY['pain_entry', 'mood_entry', 'activity_log', 'export', 'storage']::text[]
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
CALL pg_temp.ensure_constraint('customers', 'customers_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
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
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_stripe_subscription_id_key',
	$c$UNIQUE (stripe_subscription_id)$c$);
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_tier_check',
	$c$CHECK (tier IN ('free', 'basic', 'pro', 'enterprise'))$c$);
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_status_check',
	$c$CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing', 'active',
			     'past_due', 'canceled', 'unpaid', 'paused'))$c$);
CALL pg_temp.ensure_constraint('subscriptions', 'subscriptions_billing_interval_check',
	$c$CHECK (billing_interval IN ('monthly', 'yearly'))$c$);
CREATE INDEX IF NOT EXISTS subscriptions_user_id_idx ON subscriptions (user_id);
CREATE INDEX IF NOT EXISTS subscriptions_stripe_customer_id_idx ON subscriptions (stripe_customer_id);
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
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_usage_type_check',
	$c$CHECK (usage_type IN ('pain_entry', 'mood_entry', 'activity_log', 'export', 'storage'))$c$);
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_amount_check',
	$c$CHECK (amount >= 0)$c$);
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_period_check',
	$c$CHECK (extract(day FROM period_start) = 1
		  AND period_end = (period_start + interval '1 month')::date)$c$);
CALL pg_temp.ensure_constraint('usage_tracking', 'usage_tracking_user_type_period_key',
	$c$UNIQUE (user_id, usage_type, period_start)$c$);
CREATE INDEX IF NOT EXISTS usage_tracking_user_period_idx ON usage_tracking (user_id, period_start);
CREATE OR REPLACE TRIGGER usage_tracking_touch_updated_at
	BEFORE UPDATE ON usage_tracking
	FOR EACH ROW EXECUTE FUNCTION billing_touch_updated_at();

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
CALL pg_temp.ensure_constraint('billing_events', 'billing_events_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
-- Who delivered the event: Stripe's webhook, or billing-sync reading GET
-- /v1/events (an event the webhook had missed; the first to record it wins).
ALTER TABLE billing_events ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'webhook';
CALL pg_temp.ensure_constraint('billing_events', 'billing_events_source_check',
	$c$CHECK (source IN ('webhook', 'sync'))$c$);
CREATE INDEX IF NOT EXISTS billing_events_user_id_idx ON billing_events (user_id);
CREATE INDEX IF NOT EXISTS billing_events_stripe_subscription_id_idx ON billing_events (stripe_subscription_id);

------------------------------------------------------------------------------
-- notifications: outbox of messages to send (e-mail etc.).  dedupe_key (e.g.
-- the Stripe event id plus kind) is unique when set, so a redelivered event
-- cannot queue the same message twice: INSERT ... ON CONFLICT DO NOTHING.
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
CALL pg_temp.ensure_constraint('notifications', 'notifications_user_id_length',
	$c$CHECK (length(user_id) BETWEEN 1 AND 128)$c$);
CALL pg_temp.ensure_constraint('notifications', 'notifications_dedupe_key_key',
	$c$UNIQUE (dedupe_key)$c$);
CREATE INDEX IF NOT EXISTS notifications_unsent_idx ON notifications (created_at) WHERE sent_at IS NULL;

------------------------------------------------------------------------------
-- usage_idempotency: usage.cgi's Idempotency-Key store.  Keys are kept at
-- least 24 hours; prune_usage_idempotency() deletes older ones.
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

-- The subscriptions an open `subscriptions` run has seen in Stripe's list, so
-- that at its end the rows Stripe does not have can be reported (never
-- deleted), also when the run was continued.  Emptied when the run ends.
CREATE TABLE IF NOT EXISTS sync_seen (
	run_id			bigint		NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
	stripe_subscription_id	text		NOT NULL,
	PRIMARY KEY (run_id, stripe_subscription_id)
);

------------------------------------------------------------------------------
-- Subscription and quota functions
------------------------------------------------------------------------------

-- The subscription that counts for a user: zero or one subscriptions row.
-- Rows with status trialing/active/past_due first (latest current_period_end,
-- then latest updated_at); otherwise the most recently updated row (so a
-- canceled subscription can still be shown); no row if the user has none.
CREATE OR REPLACE FUNCTION user_live_subscription(p_user_id text)
RETURNS SETOF subscriptions LANGUAGE sql STABLE ROWS 1 AS $fn$
	SELECT s.*
	FROM subscriptions s
	WHERE s.user_id = p_user_id
	ORDER BY (s.status IN ('trialing', 'active', 'past_due')) DESC,
		 CASE WHEN s.status IN ('trialing', 'active', 'past_due')
		      THEN s.current_period_end END DESC NULLS LAST,
		 s.updated_at DESC,
		 s.id DESC
	LIMIT 1
$fn$;

-- The tier a user is on now: effective_tier of user_live_subscription, else 'free'.
CREATE OR REPLACE FUNCTION user_effective_tier(p_user_id text)
RETURNS text LANGUAGE sql STABLE AS $fn$
	SELECT coalesce((SELECT effective_tier(s.status, s.tier)
			 FROM user_live_subscription(p_user_id) s), 'free')
$fn$;

-- Monthly limit of (tier, usage_type): NULL = unlimited; 0 when no
-- plan_quotas row exists (fail closed).
CREATE OR REPLACE FUNCTION plan_limit(p_tier text, p_usage_type text)
RETURNS bigint LANGUAGE sql STABLE AS $fn$
	SELECT CASE WHEN q.tier IS NULL THEN 0 ELSE q.monthly_limit END
	FROM (SELECT 1) AS one
	LEFT JOIN plan_quotas q ON q.tier = p_tier AND q.usage_type = p_usage_type
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

	v_limit := plan_limit(user_effective_tier(p_user_id), p_usage_type);

	IF v_limit IS NULL OR p_amount <= v_limit THEN
		-- A first insert can only carry p_amount <= v_limit; an update is
		-- applied only if the new total stays within the limit.
		INSERT INTO usage_tracking AS u
			(user_id, usage_type, period_start, period_end, amount, updated_at)
		VALUES (p_user_id, p_usage_type, v_start, v_end, p_amount, now())
		ON CONFLICT (user_id, usage_type, period_start) DO UPDATE
			SET amount = u.amount + EXCLUDED.amount,
			    updated_at = now()
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
	END IF;

	allowed := v_allowed;
	used := v_used;
	monthly_limit := v_limit;
	remaining := CASE WHEN v_limit IS NULL THEN NULL ELSE greatest(v_limit - v_used, 0) END;
	RETURN NEXT;
END
$fn$;

DROP PROCEDURE pg_temp.ensure_constraint(regclass, text, text);

COMMIT;
