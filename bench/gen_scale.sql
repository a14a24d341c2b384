-- bench/gen_scale.sql: fills a billing-cgi database (sql/schema.sql applied)
-- with a synthetic history at scale, for the analytics benchmark
-- (bench/analytics.sh runs it).  Not for a database with real data: it adds
-- rows with ids starting bu / cus_b / sub_b / evt_b.
--
--     psql -v ON_ERROR_STOP=1 -v subs=1000000 -v usage_rows=10000000 \
--          -v events=5000000 -f bench/gen_scale.sql
--
-- Defaults: 1,000,000 subscriptions of 900,000 customers (one in ten has a
-- second subscription), 10,000,000 usage counters over the 24 months up to
-- this one, 5,000,000 billing events, and the MRR ledger those subscriptions
-- would have written: a start (after a trial for 40 %), an upgrade or a
-- downgrade for some, and the end of the 40 % that are no longer paying.
-- usd and eur.  Values come from a fixed hash of the row number, so two runs
-- give the same data (times are relative to now()).
--
-- The ledger is written here in one statement (the triggers are disabled
-- while subscriptions are loaded): a million trigger calls would measure the
-- loader, not the queries.  Billing event payloads are short stand-ins
-- (id, type, created, the subscription): the analytics never read them and
-- the webhook path only inserts and looks up by id.

\set ON_ERROR_STOP 1
\if :{?subs}
\else
\set subs 1000000
\endif
\if :{?usage_rows}
\else
\set usage_rows 10000000
\endif
\if :{?events}
\else
\set events 5000000
\endif

SET synchronous_commit = off;
SET client_min_messages = warning;
\timing on

-- A pseudo-random fraction in [0, 1) for row n and salt s (a fixed hash).
CREATE OR REPLACE FUNCTION pg_temp.h(n bigint, s integer)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
	SELECT ((hashint8(n * 131 + s)::bigint + 2147483648) % 1000003) / 1000003.0
$fn$;

-- The generated subscriptions, with the times of their history.
CREATE TEMP TABLE gen AS
WITH base AS (
	SELECT i,
	       (i - 1) % greatest(:subs * 9 / 10, 1) AS cno,
	       CASE WHEN pg_temp.h(i, 2) < 0.5 THEN 'basic' WHEN pg_temp.h(i, 2) < 0.85 THEN 'pro'
		    ELSE 'enterprise' END AS tier,
	       CASE WHEN pg_temp.h(i, 3) < 0.2 THEN 'yearly' ELSE 'monthly' END AS billing_interval,
	       CASE WHEN pg_temp.h(i, 4) < 0.9 THEN 1 ELSE 2 + (i % 3) END AS quantity,
	       now() - pg_temp.h(i, 5) * interval '730 days' AS t0,
	       pg_temp.h(i, 6) < 0.4 AS trial,
	       pg_temp.h(i, 7) AS fate,
	       pg_temp.h(i, 8) AS when_end,
	       pg_temp.h(i, 9) AS move
	FROM generate_series(1, :subs) i
), priced AS (
	SELECT b.*,
	       CASE WHEN (b.cno * 37) % 10 < 7 THEN 'usd' ELSE 'eur' END AS currency,
	       (CASE b.tier WHEN 'basic' THEN 900 WHEN 'pro' THEN 1900 ELSE 9900 END)
		 * (CASE WHEN b.billing_interval = 'yearly' THEN 10 ELSE 1 END) AS unit_amount,
	       b.t0 + CASE WHEN b.trial THEN interval '14 days' ELSE interval '1 minute' END AS t_paid
	FROM base b
)
SELECT p.*,
       CASE
	 WHEN p.t_paid > now() THEN 'trialing'
	 WHEN p.fate < 0.02 THEN 'incomplete_expired'
	 WHEN p.trial AND p.fate < 0.12 THEN 'trial_canceled'
	 WHEN p.fate < 0.40 THEN 'canceled'
	 WHEN p.fate < 0.43 THEN 'unpaid'
	 WHEN p.fate < 0.44 THEN 'paused'
	 WHEN p.fate < 0.47 THEN 'past_due'
	 ELSE 'active'
       END AS outcome,
       p.t_paid + (now() - p.t_paid) * p.when_end AS t_end,
       p.t_paid + (now() - p.t_paid) * p.when_end * p.move AS t_move,
       subscription_monthly_amount('active', p.unit_amount, p.quantity, p.billing_interval,
				   p.currency) AS amount
FROM priced p;

INSERT INTO customers (user_id, stripe_customer_id, email, created_at)
SELECT 'bu' || cno, 'cus_b' || cno, 'bu' || cno || '@example.test', min(t0)
FROM gen GROUP BY cno
ON CONFLICT DO NOTHING;

ALTER TABLE subscriptions DISABLE TRIGGER USER;
INSERT INTO subscriptions (user_id, stripe_customer_id, stripe_subscription_id, tier, status,
	billing_interval, price_id, unit_amount, currency, quantity, trial_start, trial_end,
	current_period_start, current_period_end, canceled_at, ended_at, last_event_created,
	last_event_id, created_at, updated_at)
SELECT 'bu' || g.cno, 'cus_b' || g.cno, 'sub_b' || g.i, g.tier,
       CASE g.outcome WHEN 'trial_canceled' THEN 'canceled' ELSE g.outcome END,
       g.billing_interval, 'price_b_' || g.tier || '_' || g.billing_interval, g.unit_amount,
       g.currency, g.quantity,
       CASE WHEN g.trial THEN g.t0 END, CASE WHEN g.trial THEN g.t0 + interval '14 days' END,
       now() - interval '10 days', now() + interval '20 days',
       CASE WHEN g.outcome IN ('canceled', 'trial_canceled') THEN g.t_end END,
       CASE WHEN g.outcome IN ('canceled', 'trial_canceled') THEN g.t_end END,
       CASE WHEN g.outcome IN ('active', 'trialing') THEN g.t_move ELSE g.t_end END,
       'evt_b' || g.i, g.t0, now()
FROM gen g;
ALTER TABLE subscriptions ENABLE TRIGGER USER;

-- The ledger those lives wrote (classified per subscription: the second
-- subscription of a customer counts as new here, which does not matter for
-- timing), and its monthly sums computed once at the end.
ALTER TABLE mrr_movements DISABLE TRIGGER USER;
INSERT INTO mrr_movements (stripe_subscription_id, customer, currency, kind, delta, amount,
	customer_amount, status_before, status, effective_at)
SELECT 'sub_b' || g.i, 'cus_b' || g.cno, g.currency, x.kind, x.delta, x.amount,
       CASE WHEN x.kind IS NULL THEN NULL ELSE x.amount END, x.sb, x.sa, x.at
FROM gen g
CROSS JOIN LATERAL (
	-- trial start
	SELECT NULL::text AS kind, 0::bigint AS delta, 0::bigint AS amount, NULL::text AS sb,
	       'trialing'::text AS sa, g.t0 AS at
	WHERE g.trial
	UNION ALL
	-- incomplete start
	SELECT NULL, 0, 0, NULL, 'incomplete', g.t0 WHERE NOT g.trial
	UNION ALL
	-- never paid
	SELECT NULL, 0, 0, CASE WHEN g.trial THEN 'trialing' ELSE 'incomplete' END,
	       CASE WHEN g.outcome = 'trial_canceled' THEN 'canceled' ELSE 'incomplete_expired' END,
	       g.t0 + interval '12 days'
	WHERE g.outcome IN ('trial_canceled', 'incomplete_expired')
	UNION ALL
	-- first payment: the amount before any later move
	SELECT 'new', s.first, s.first, CASE WHEN g.trial THEN 'trialing' ELSE 'incomplete' END,
	       'active', g.t_paid
	FROM (SELECT CASE WHEN g.move < 0.15 THEN g.amount * 6 / 10
			  WHEN g.move < 0.23 THEN g.amount * 3 / 2 ELSE g.amount END AS first) s
	WHERE g.outcome NOT IN ('trial_canceled', 'incomplete_expired', 'trialing')
	UNION ALL
	-- an upgrade or a downgrade to today's amount
	SELECT CASE WHEN g.move < 0.15 THEN 'expansion' ELSE 'contraction' END,
	       g.amount - CASE WHEN g.move < 0.15 THEN g.amount * 6 / 10 ELSE g.amount * 3 / 2 END,
	       g.amount, 'active', 'active', g.t_move
	WHERE g.move < 0.23 AND g.outcome NOT IN ('trial_canceled', 'incomplete_expired', 'trialing')
	UNION ALL
	-- a failed renewal
	SELECT NULL, 0, g.amount, 'active', 'past_due',
	       CASE WHEN g.outcome = 'past_due' THEN g.t_end ELSE g.t_end - interval '10 days' END
	WHERE g.outcome IN ('past_due', 'unpaid')
	UNION ALL
	-- the end
	SELECT 'churn', -g.amount, 0, CASE WHEN g.outcome = 'unpaid' THEN 'past_due' ELSE 'active' END,
	       g.outcome, g.t_end
	WHERE g.outcome IN ('canceled', 'unpaid', 'paused')
) x;
ALTER TABLE mrr_movements ENABLE TRIGGER USER;
SELECT mrr_monthly_refresh() AS mrr_monthly_rows;

-- Billing events: events / subs per subscription, spread over its life.
INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id,
	stripe_customer_id, user_id, amount, currency, status, attempt_count, occurred_at,
	received_at, processed_at, payload)
SELECT 'evt_b' || n || '_' || e.j, e.typ, 'sub_b' || g.i, 'cus_b' || g.cno, 'bu' || g.cno,
       CASE WHEN e.typ LIKE 'invoice.%' THEN g.unit_amount END, g.currency,
       CASE e.typ WHEN 'invoice.paid' THEN 'paid' WHEN 'invoice.payment_failed' THEN 'failed'
		  ELSE 'active' END,
       CASE WHEN e.typ LIKE 'invoice.%' THEN 1 END, e.at, e.at, e.at,
       jsonb_build_object('id', 'evt_b' || n || '_' || e.j, 'type', e.typ,
			  'created', extract(epoch FROM e.at)::bigint,
			  'data', jsonb_build_object('object', jsonb_build_object(
				'id', 'sub_b' || g.i, 'customer', 'cus_b' || g.cno)))
FROM generate_series(1, :events) n
JOIN gen g ON g.i = (n - 1) % :subs + 1
CROSS JOIN LATERAL (
	SELECT (n - 1) / :subs AS j,
	       (ARRAY['customer.subscription.created', 'checkout.session.completed', 'invoice.paid',
		      'customer.subscription.updated', 'invoice.paid', 'invoice.payment_failed',
		      'customer.subscription.updated', 'invoice.paid'])[1 + ((n - 1) / :subs) % 8] AS typ,
	       g.t0 + ((n - 1) / :subs) * interval '29 days' AS at
) e;

-- Usage counters: per month (the 24 up to this one) and usage type, the same
-- share of users; amounts up to about the basic limits, some refusals.
\set per_month_type (:usage_rows / 120)
ALTER TABLE usage_tracking DISABLE TRIGGER USER;
INSERT INTO usage_tracking (user_id, usage_type, period_start, period_end, amount, updated_at, tier)
SELECT 'bu' || u.cno, t.usage_type, m.ps, (m.ps + interval '1 month')::date,
       CASE t.usage_type
	 WHEN 'storage' THEN (pg_temp.h(u.cno + k, m.n) * 1073741824)::bigint
	 WHEN 'export' THEN (pg_temp.h(u.cno + k, m.n) * 24)::bigint
	 ELSE (pg_temp.h(u.cno + k, m.n) * 1100)::bigint
       END,
       m.ps + interval '20 days',
       CASE WHEN pg_temp.h(u.cno + 1, 2) < 0.5 THEN 'basic' WHEN pg_temp.h(u.cno + 1, 2) < 0.85
	    THEN 'pro' ELSE 'enterprise' END
FROM (SELECT n, (date_trunc('month', now() AT TIME ZONE 'UTC') - n * interval '1 month')::date AS ps
      FROM generate_series(0, 23) n) m
CROSS JOIN generate_series(1, :per_month_type) k
CROSS JOIN LATERAL (SELECT (k * 7919 + m.n * 104729) % greatest(:subs * 9 / 10, 1) AS cno) u
CROSS JOIN unnest(billing_usage_types()) t(usage_type)
ON CONFLICT DO NOTHING;
ALTER TABLE usage_tracking ENABLE TRIGGER USER;
TRUNCATE usage_closed_months;

ALTER TABLE quota_refusals DISABLE TRIGGER USER;
INSERT INTO quota_refusals (user_id, usage_type, period_start, tier, refusals, last_refused_at)
SELECT user_id, usage_type, period_start, tier, 1 + (amount % 5), period_start + interval '21 days'
FROM usage_tracking
WHERE user_id LIKE 'bu%' AND ((usage_type = 'export' AND amount >= 20)
	OR (usage_type IN ('pain_entry', 'mood_entry', 'activity_log') AND amount >= 1000))
  AND tier = 'basic'
ON CONFLICT DO NOTHING;
ALTER TABLE quota_refusals ENABLE TRIGGER USER;

SELECT (SELECT count(*) FROM subscriptions) AS subscriptions,
       (SELECT count(*) FROM mrr_movements) AS ledger_rows,
       (SELECT count(*) FROM billing_events) AS billing_events,
       (SELECT count(*) FROM usage_tracking) AS usage_rows,
       (SELECT count(*) FROM quota_refusals) AS refusal_rows;
