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
-- The `created` of the Stripe event that set email (checkout.session.completed
-- or customer.updated): an older event never overwrites a newer address.
-- NULL when the address came from create-checkout-session.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS email_event_created timestamptz;
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
-- A signed event is always recorded, even when part of it cannot be stored:
-- left_out lists the JSON paths of the values that were left out (strings
-- holding \u0000 or a lone surrogate, numbers or times beyond a column's
-- range); the payload keeps everything else.  processed_at NULL = recorded
-- but not applied (the database refused the event's data; see the log).
ALTER TABLE billing_events ADD COLUMN IF NOT EXISTS left_out text[];

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
-- metrics_gauges(): the business figures GET /metrics exposes (lib/metrics.c
-- names and renders them), read at scrape time: one row per series,
-- (metric, label1, label2, value).
--
--   subscriptions (tier, status)   subscriptions rows; every tier x status,
--                                  zeros included, so that alerts see 0
--   trials (tier)                  subscriptions in status trialing
--   mrr (currency)                 monthly recurring revenue in minor units
--                                  (cents): unit_amount of the active and
--                                  past_due subscriptions, a yearly one
--                                  divided by 12 (no interval: monthly);
--                                  trialing, incomplete, unpaid, paused and
--                                  canceled ones count nothing (Stripe
--                                  Billing's MRR rule).  One row per currency
--                                  with such subscriptions.
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
	SELECT 'subscriptions', t.tier, st.status, count(s.id)::float8
	FROM tiers t CROSS JOIN statuses st
	LEFT JOIN subscriptions s ON s.tier = t.tier AND s.status = st.status
	GROUP BY t.tier, st.status
	UNION ALL
	SELECT 'trials', t.tier, NULL, count(s.id)::float8
	FROM tiers t
	LEFT JOIN subscriptions s ON s.tier = t.tier AND s.status = 'trialing'
	GROUP BY t.tier
	UNION ALL
	SELECT 'mrr', lower(s.currency), NULL,
	       sum(CASE WHEN s.billing_interval = 'yearly' THEN s.unit_amount / 12.0
			ELSE s.unit_amount END)::float8
	FROM subscriptions s
	WHERE s.status IN ('active', 'past_due') AND s.unit_amount IS NOT NULL
	  AND s.currency IS NOT NULL
	GROUP BY lower(s.currency)
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

DROP PROCEDURE pg_temp.ensure_constraint(regclass, text, text);

COMMIT;
