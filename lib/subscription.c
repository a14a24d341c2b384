#define _GNU_SOURCE	/* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "jsonget.h"
#include "log.h"
#include "mem.h"
#include "plan.h"
#include "response.h"
#include "stripe.h"
#include "subscription.h"

/* Whole transactions retried on serialization failure / deadlock. */
#define APPLY_TRIES 3
/* Stripe ids are short; anything longer is not one of theirs. */
#define STRIPE_ID_MAX 255

enum sync_mode {
	SYNC_EVENT,
	SYNC_REFETCH,
};

/* One application attempt. */
struct apply {
	struct db *db;
	const struct subscription_event *ev;
	enum sync_mode mode;
	char *event_row;	/* billing_events.id of this event */
	char *user_id;		/* user resolved while applying, for billing_events */
	int duplicate;
	int ignored;
};

/* The subscriptions row as read under the lock. */
struct sub_row {
	int exists;
	char status[32];
	char tier[32];
	char interval[16];
	int has_last;
	long long last;	/* last_event_created, unix seconds */
};

/* Lifecycle rank for the same-second rule (see subscription.h). */
static const struct {
	const char *status;
	int rank;
} status_ranks[] = {
	{ "incomplete", 0 },
	{ "trialing", 1 },
	{ "active", 2 },
	{ "past_due", 3 },
	{ "unpaid", 3 },
	{ "paused", 3 },
	{ "canceled", 4 },
	{ "incomplete_expired", 4 },
};

/* -1 for a status we do not know (not storable: the schema CHECKs the list). */
static int
status_rank(const char *status)
{
	size_t i;

	for (i = 0; status && i < sizeof(status_ranks) / sizeof(status_ranks[0]); i++)
		if (strcmp(status, status_ranks[i].status) == 0)
			return status_ranks[i].rank;
	return -1;
}

/* Stripe never brings a canceled or incomplete_expired subscription back. */
static int
status_final(const char *status)
{
	return status_rank(status) == 4;
}

/* The event-mode ordering rule of subscription.h. */
static int
should_apply(const struct sub_row *row, const char *status, long long created, int deletion)
{
	if (!row->exists)
		return 1;
	if (status_final(row->status) && !status_final(status))
		return 0;
	if (deletion || !row->has_last || created > row->last)
		return 1;
	if (created < row->last)
		return 0;
	return status_rank(status) >= status_rank(row->status);
}

/* A Stripe id fit for a URL path and our columns: [A-Za-z0-9_], 1..255. */
static int
valid_stripe_id(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	for (n = 0; s[n] != '\0'; n++)
		if (n >= STRIPE_ID_MAX || !((s[n] >= 'a' && s[n] <= 'z') ||
		    (s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
			return 0;
	return n > 0;
}

/* Member name as an id: a string, or an expanded object's "id".  NULL if not a valid id. */
static const char *
id_of(struct json_object *obj, const char *name)
{
	struct json_object *v = jsonget_path(obj, name);
	const char *s = NULL;

	if (v && json_object_is_type(v, json_type_string))
		s = json_object_get_string(v);
	else if (v && json_object_is_type(v, json_type_object))
		s = jsonget_str(v, "id");
	return valid_stripe_id(s) ? s : NULL;
}

/* A user id from path in obj, validated; invalid ones are logged and ignored. */
static const char *
user_at(struct json_object *obj, const char *path)
{
	const char *s = jsonget_path_str(obj, path);

	if (s == NULL)
		return NULL;
	if (!auth_user_id_valid(s)) {
		log_msg("ignoring invalid user id at %s", path);
		return NULL;
	}
	return s;
}

/* The integer at path as decimal text in buf, or NULL (absent, null, not an integer). */
static const char *
int_at(struct json_object *obj, const char *path, char *buf, size_t n)
{
	long long v;

	if (jsonget_path_int(obj, path, &v) == -1)
		return NULL;
	snprintf(buf, n, "%lld", v);
	return buf;
}

static int
fail(struct apply *a, enum db_result r)
{
	(void)a;
	return r == DB_OK ? 0 : (int)r;
}

/* Runs sql; on failure returns the db_result (non-zero). */
#define Q(a, rows, sql, ...) fail((a), DB_QUERY((a)->db, (rows), (sql), __VA_ARGS__))

static enum sync_mode
default_mode(void)
{
	return config_get("STRIPE_SECRET_KEY") ? SYNC_REFETCH : SYNC_EVENT;
}

static enum outcome
sync_mode(enum sync_mode *m)
{
	const char *v = config_get("STRIPE_SYNC_MODE");

	if (v == NULL)
		*m = default_mode();
	else if (strcmp(v, "refetch") == 0)
		*m = SYNC_REFETCH;
	else if (strcmp(v, "event") == 0)
		*m = SYNC_EVENT;
	else {
		log_msg("STRIPE_SYNC_MODE must be refetch or event");
		return OUT_MISCONFIGURED;
	}
	return OUT_OK;
}

enum outcome
subscription_event_parse(const char *raw, size_t len, struct subscription_event *ev)
{
	static const struct jsonget_field fields[] = {
		{ "id", JG_STRING, 1, 1, STRIPE_ID_MAX, NULL },
		{ "type", JG_STRING, 1, 1, 128, NULL },
		{ "created", JG_INT, 1, 0, 253402300799LL, NULL },	/* up to year 9999 */
		{ "data", JG_OBJECT, 1, 0, 0, NULL },
	};
	const char *bad, *why;
	long long created;

	memset(ev, 0, sizeof(*ev));
	if (jsonget_parse(raw, len, &ev->root) != OUT_OK) {
		log_msg("payload is not a JSON object");
		return OUT_INVALID_PAYLOAD;
	}
	if (jsonget_validate(ev->root, fields, sizeof(fields) / sizeof(fields[0]), &bad,
	    &why) != OUT_OK || !valid_stripe_id(jsonget_str(ev->root, "id")) ||
	    (ev->object = jsonget_path(ev->root, "data.object")) == NULL ||
	    !json_object_is_type(ev->object, json_type_object)) {
		log_msg("payload is not a Stripe event");
		subscription_event_free(ev);
		return OUT_INVALID_PAYLOAD;
	}
	jsonget_int(ev->root, "created", &created);
	ev->id = jsonget_str(ev->root, "id");
	ev->type = jsonget_str(ev->root, "type");
	ev->created = created;
	ev->raw = raw;
	ev->raw_len = len;
	log_note("event", ev->type);
	return OUT_OK;
}

void
subscription_event_free(struct subscription_event *ev)
{
	if (ev == NULL)
		return;
	json_object_put(ev->root);
	memset(ev, 0, sizeof(*ev));
}

static int
is_type(const struct subscription_event *ev, const char *type)
{
	return strcmp(ev->type, type) == 0;
}

static int
is_subscription_event(const struct subscription_event *ev)
{
	return is_type(ev, "customer.subscription.created") ||
	    is_type(ev, "customer.subscription.updated") ||
	    is_type(ev, "customer.subscription.deleted") ||
	    is_type(ev, "customer.subscription.trial_will_end");
}

/* The subscription an invoice belongs to: basil's parent, else the pre-2025 field. */
static const char *
invoice_subscription(struct json_object *inv)
{
	const char *s = id_of(inv, "parent.subscription_details.subscription");

	return s ? s : id_of(inv, "subscription");
}

/*
 * The billing_events row, first thing in the transaction.  Sets
 * a->duplicate when the event was already recorded.
 */
static int
record_event(struct apply *a)
{
	const struct subscription_event *ev = a->ev;
	struct json_object *o = ev->object;
	const char *sub = NULL, *customer = id_of(o, "customer"), *user = NULL;
	const char *amount = NULL, *currency = jsonget_str(o, "currency"), *status = NULL;
	const char *attempts = NULL, *payload;
	char amount_buf[24], attempts_buf[24], created[24];
	struct db_rows *rows = NULL;
	int r;

	if (is_subscription_event(ev)) {
		sub = id_of(o, "id");
		status = jsonget_str(o, "status");
		user = user_at(o, "metadata.userId");
	} else if (is_type(ev, "checkout.session.completed")) {
		sub = id_of(o, "subscription");
		status = jsonget_str(o, "status");
		amount = int_at(o, "amount_total", amount_buf, sizeof(amount_buf));
		user = user_at(o, "client_reference_id");
		if (user == NULL)
			user = user_at(o, "metadata.userId");
	} else if (is_type(ev, "invoice.paid") || is_type(ev, "invoice.payment_failed")) {
		int paid = is_type(ev, "invoice.paid");

		sub = invoice_subscription(o);
		status = paid ? "paid" : "failed";
		amount = int_at(o, paid ? "amount_paid" : "amount_due", amount_buf,
		    sizeof(amount_buf));
		attempts = int_at(o, "attempt_count", attempts_buf, sizeof(attempts_buf));
		user = user_at(o, "parent.subscription_details.metadata.userId");
		if (user == NULL)
			user = user_at(o, "metadata.userId");
	}
	if (currency && strlen(currency) > 16)
		currency = NULL;
	if (status && strlen(status) > 64)
		status = NULL;
	snprintf(created, sizeof(created), "%lld", ev->created);
	/*
	 * jsonb refuses \u0000 (SQLSTATE 22P05); such an event is still
	 * recorded and applied, without its payload copy.
	 */
	payload = memmem(ev->raw, ev->raw_len, "\\u0000", 6) ? NULL : ev->raw;
	r = Q(a, &rows,
	    "INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id,"
	    " stripe_customer_id, user_id, amount, currency, status, attempt_count, occurred_at,"
	    " processed_at, payload)"
	    " VALUES ($1, $2, $3, $4, $5, $6::bigint, $7, $8, $9::integer,"
	    " to_timestamp($10::bigint), now(), $11::jsonb)"
	    " ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id",
	    ev->id, ev->type, sub, customer, user, amount, currency, status, attempts, created,
	    payload);
	if (r == 0) {
		if (db_rows_count(rows) == 0)
			a->duplicate = 1;
		else
			a->event_row = mem_strdup(db_rows_get(rows, 0, 0));
	}
	db_rows_free(rows);
	return r;
}

/* Serialises all work on one subscription until the transaction ends. */
static int
lock_subscription(struct apply *a, const char *sub)
{
	return Q(a, NULL, "SELECT pg_advisory_xact_lock(hashtext($1))", sub);
}

static int
read_row(struct apply *a, const char *sub, struct sub_row *row)
{
	struct db_rows *rows = NULL;
	const char *v;
	int r;

	memset(row, 0, sizeof(*row));
	r = Q(a, &rows,
	    "SELECT status, tier, billing_interval, extract(epoch FROM last_event_created)::bigint"
	    " FROM subscriptions WHERE stripe_subscription_id = $1 FOR UPDATE", sub);
	if (r == 0 && db_rows_count(rows) == 1) {
		row->exists = 1;
		snprintf(row->status, sizeof(row->status), "%s", db_rows_get(rows, 0, 0));
		snprintf(row->tier, sizeof(row->tier), "%s", db_rows_get(rows, 0, 1));
		if ((v = db_rows_get(rows, 0, 2)) != NULL)
			snprintf(row->interval, sizeof(row->interval), "%s", v);
		if ((v = db_rows_get(rows, 0, 3)) != NULL) {
			row->has_last = 1;
			row->last = strtoll(v, NULL, 10);
		}
	}
	db_rows_free(rows);
	return r;
}

/* The user of a customer from customers, or NULL.  Caller frees. */
static int
customer_user(struct apply *a, const char *customer, char **user)
{
	struct db_rows *rows = NULL;
	int r;

	*user = NULL;
	if (customer == NULL)
		return 0;
	r = Q(a, &rows, "SELECT user_id FROM customers WHERE stripe_customer_id = $1", customer);
	if (r == 0 && db_rows_get(rows, 0, 0))
		*user = mem_strdup(db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	return r;
}

static void
remember_user(struct apply *a, const char *user)
{
	if (user && a->user_id == NULL)
		a->user_id = mem_strdup(user);
}

/* Tier and interval of a subscription object (rules in subscription.h). */
static void
resolve_plan(struct json_object *sub, const struct sub_row *row, const char **tier,
    const char **interval)
{
	const char *price = jsonget_path_str(sub, "items.data.0.price.id"), *s;
	enum plan_tier t;
	enum plan_interval i;
	int have_t = 0, have_i = 0;

	if (plan_from_price(price, &t, &i) == 0)
		have_t = have_i = 1;
	if (!have_t && plan_tier_parse(jsonget_path_str(sub, "metadata.tier"), &t) == 0)
		have_t = 1;
	if (!have_i && plan_interval_parse(jsonget_path_str(sub, "metadata.interval"), &i) == 0)
		have_i = 1;
	if (!have_i && plan_interval_parse(jsonget_path_str(sub,
	    "items.data.0.price.recurring.interval"), &i) == 0)
		have_i = 1;
	*tier = have_t ? plan_tier_name(t) : NULL;
	*interval = have_i ? plan_interval_name(i) : NULL;
	if (*tier == NULL && row->exists)
		*tier = row->tier;
	if (*interval == NULL && row->exists && row->interval[0] != '\0')
		*interval = row->interval;
	if (*tier == NULL) {
		s = id_of(sub, "id");
		log_msg("warning: unknown tier for subscription %s (price not configured, no"
		    " metadata.tier): stored as free", s ? s : "-");
		*tier = "free";
	}
}

/*
 * Writes a subscription object.  force: the object is Stripe's current
 * state (refetch), applied whatever the order; otherwise the event-mode
 * rule decides.  user: a user known from elsewhere (checkout), or NULL.
 */
static int
store_subscription(struct apply *a, struct json_object *sub, int force, int deletion,
    const char *known_user)
{
	const struct subscription_event *ev = a->ev;
	struct sub_row row;
	const char *id = id_of(sub, "id"), *status = jsonget_str(sub, "status");
	const char *customer = id_of(sub, "customer"), *user = user_at(sub, "metadata.userId");
	const char *tier, *interval, *price, *currency, *reason, *ended;
	char *lookup = NULL;
	char amount[24], ts[24], te[24], ps[24], pe[24], ca[24], ea[24], created[24], qty[24];
	const char *pps, *ppe;
	int cape = 0, r;

	if (id == NULL) {
		log_msg("subscription object without a valid id: recorded only");
		a->ignored = 1;
		return 0;
	}
	if (deletion && (status == NULL || !status_final(status)))
		status = "canceled";
	if (status_rank(status) < 0) {
		log_msg("unknown subscription status: recorded only");
		a->ignored = 1;
		return 0;
	}
	if ((r = read_row(a, id, &row)) != 0)
		return r;
	if (!force && !should_apply(&row, status, ev->created, deletion)) {
		log_note("applied", "no (older or would resurrect)");
		return 0;
	}
	if (user == NULL)
		user = known_user;
	if (user == NULL) {
		if ((r = customer_user(a, customer, &lookup)) != 0)
			return r;
		user = lookup;
	}
	remember_user(a, user);
	resolve_plan(sub, &row, &tier, &interval);
	price = jsonget_path_str(sub, "items.data.0.price.id");
	currency = jsonget_str(sub, "currency");
	if (currency == NULL)
		currency = jsonget_path_str(sub, "items.data.0.price.currency");
	if (currency && strlen(currency) > 16)
		currency = NULL;
	if (price && !valid_stripe_id(price))
		price = NULL;
	reason = jsonget_path_str(sub, "cancellation_details.reason");
	if (reason && (strlen(reason) > 64 || !jsonget_clean_utf8(reason, strlen(reason))))
		reason = NULL;
	pps = int_at(sub, "items.data.0.current_period_start", ps, sizeof(ps));
	if (pps == NULL)
		pps = int_at(sub, "current_period_start", ps, sizeof(ps));
	ppe = int_at(sub, "items.data.0.current_period_end", pe, sizeof(pe));
	if (ppe == NULL)
		ppe = int_at(sub, "current_period_end", pe, sizeof(pe));
	jsonget_bool(sub, "cancel_at_period_end", &cape);
	snprintf(created, sizeof(created), "%lld", ev->created);
	ended = int_at(sub, "ended_at", ea, sizeof(ea));
	if (ended == NULL && deletion)
		ended = created;
	r = Q(a, NULL,
	    "INSERT INTO subscriptions AS s (user_id, stripe_customer_id, stripe_subscription_id,"
	    " tier, status, billing_interval, price_id, unit_amount, currency, trial_start,"
	    " trial_end, current_period_start, current_period_end, cancel_at_period_end,"
	    " canceled_at, ended_at, cancellation_reason, last_event_created, last_event_id,"
	    " quantity)"
	    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, $9, to_timestamp($10::bigint),"
	    " to_timestamp($11::bigint), to_timestamp($12::bigint), to_timestamp($13::bigint),"
	    " $14::boolean, to_timestamp($15::bigint), to_timestamp($16::bigint), $17,"
	    " to_timestamp($18::bigint), $19, $20::bigint)"
	    " ON CONFLICT (stripe_subscription_id) DO UPDATE SET"
	    " user_id = coalesce(s.user_id, EXCLUDED.user_id),"
	    " stripe_customer_id = coalesce(EXCLUDED.stripe_customer_id, s.stripe_customer_id),"
	    " tier = EXCLUDED.tier, status = EXCLUDED.status,"
	    " billing_interval = EXCLUDED.billing_interval,"
	    " price_id = coalesce(EXCLUDED.price_id, s.price_id),"
	    " unit_amount = coalesce(EXCLUDED.unit_amount, s.unit_amount),"
	    " currency = coalesce(EXCLUDED.currency, s.currency),"
	    " trial_start = EXCLUDED.trial_start, trial_end = EXCLUDED.trial_end,"
	    " current_period_start = coalesce(EXCLUDED.current_period_start, s.current_period_start),"
	    " current_period_end = coalesce(EXCLUDED.current_period_end, s.current_period_end),"
	    " cancel_at_period_end = EXCLUDED.cancel_at_period_end,"
	    " canceled_at = EXCLUDED.canceled_at, ended_at = EXCLUDED.ended_at,"
	    " cancellation_reason = coalesce(EXCLUDED.cancellation_reason, s.cancellation_reason),"
	    " last_event_created = greatest(s.last_event_created, EXCLUDED.last_event_created),"
	    " last_event_id = EXCLUDED.last_event_id,"
	    " quantity = coalesce(EXCLUDED.quantity, s.quantity)",
	    user, customer, id, tier, status, interval, price,
	    int_at(sub, "items.data.0.price.unit_amount", amount, sizeof(amount)), currency,
	    int_at(sub, "trial_start", ts, sizeof(ts)), int_at(sub, "trial_end", te, sizeof(te)),
	    pps, ppe, cape ? "true" : "false", int_at(sub, "canceled_at", ca, sizeof(ca)), ended,
	    reason, created, ev->id, int_at(sub, "items.data.0.quantity", qty, sizeof(qty)));
	if (r == 0)
		log_note("applied", status);
	free(lookup);
	return r;
}

/*
 * Refetch mode: GET the subscription and store it (*stored = 1).  A 404
 * leaves *stored = 0 and the caller falls back to the event's own data;
 * any other Stripe failure sets *fatal (the transaction is rolled back).
 * Returns 0 or a db_result.
 */
static int
refetch(struct apply *a, const char *sub, const char *known_user, int *stored,
    enum outcome *fatal)
{
	struct json_object *obj = NULL;
	char path[32 + STRIPE_ID_MAX];
	enum outcome rc;
	int r;

	*stored = 0;
	snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
	rc = stripe_get(path, &obj);
	if (rc == OUT_NOT_FOUND) {
		log_msg("refetch: subscription not found at Stripe, using the event's object");
		return 0;
	}
	if (rc != OUT_OK) {
		log_msg("refetch failed: the event is not recorded, Stripe will redeliver it");
		*fatal = rc;
		return 0;
	}
	r = store_subscription(a, obj, 1, 0, known_user);
	json_object_put(obj);
	*stored = r == 0;
	return r;
}

/* trial_will_end: a message for the mailer, once per event. */
static int
queue_trial_notice(struct apply *a, const char *sub)
{
	char te[24];

	return Q(a, NULL,
	    "INSERT INTO notifications (user_id, kind, payload, dedupe_key)"
	    " VALUES ($1, 'trial_will_end', jsonb_build_object('stripe_subscription_id', $2::text,"
	    " 'trial_end', billing_iso_utc(to_timestamp($3::bigint)), 'stripe_event_id', $4::text),"
	    " $4 || ':trial_will_end') ON CONFLICT (dedupe_key) DO NOTHING",
	    a->user_id, sub, int_at(a->ev->object, "trial_end", te, sizeof(te)), a->ev->id);
}

static int
apply_subscription_event(struct apply *a, enum outcome *fatal)
{
	const char *sub = id_of(a->ev->object, "id");
	int deletion = is_type(a->ev, "customer.subscription.deleted"), stored = 0, r;

	if (sub == NULL) {
		log_msg("subscription event without a valid object id: recorded only");
		a->ignored = 1;
		return 0;
	}
	if ((r = lock_subscription(a, sub)) != 0)
		return r;
	if (a->mode == SYNC_REFETCH &&
	    ((r = refetch(a, sub, NULL, &stored, fatal)) != 0 || *fatal != OUT_OK))
		return r;
	if (!stored && (r = store_subscription(a, a->ev->object, 0, deletion, NULL)) != 0)
		return r;
	if (is_type(a->ev, "customer.subscription.trial_will_end")) {
		if (a->user_id == NULL) {
			char *u = NULL;

			if ((r = customer_user(a, id_of(a->ev->object, "customer"), &u)) != 0)
				return r;
			a->user_id = u;
		}
		return queue_trial_notice(a, sub);
	}
	return 0;
}

static int
apply_checkout(struct apply *a, enum outcome *fatal)
{
	struct json_object *o = a->ev->object;
	const char *user = user_at(o, "client_reference_id"), *mode = jsonget_str(o, "mode");
	const char *customer = id_of(o, "customer"), *sub = id_of(o, "subscription");
	const char *tier = NULL, *interval = NULL;
	struct db_rows *rows = NULL;
	struct sub_row row;
	enum plan_tier t;
	enum plan_interval i;
	int stored = 0, r;

	if (user == NULL)
		user = user_at(o, "metadata.userId");
	if (mode == NULL || strcmp(mode, "subscription") != 0) {
		a->ignored = 1;
		return 0;
	}
	remember_user(a, user);
	if (user && customer) {
		r = Q(a, &rows, "INSERT INTO customers (user_id, stripe_customer_id) VALUES ($1, $2)"
		    " ON CONFLICT DO NOTHING RETURNING user_id", user, customer);
		if (r != 0)
			return r;
		if (db_rows_count(rows) == 0)
			log_msg("customer link exists already (user or customer): kept as it was");
		db_rows_free(rows);
		rows = NULL;
	}
	if (sub) {
		if ((r = lock_subscription(a, sub)) != 0)
			return r;
		if (a->mode == SYNC_REFETCH &&
		    ((r = refetch(a, sub, user, &stored, fatal)) != 0 || *fatal != OUT_OK))
			return r;
		if ((r = read_row(a, sub, &row)) != 0)
			return r;
		if (!row.exists) {
			/* Until the subscription itself is known: session metadata, status incomplete. */
			if (plan_tier_parse(jsonget_path_str(o, "metadata.tier"), &t) == 0)
				tier = plan_tier_name(t);
			if (plan_interval_parse(jsonget_path_str(o, "metadata.interval"), &i) == 0)
				interval = plan_interval_name(i);
			if (tier == NULL) {
				log_msg("warning: checkout session without a known tier: stored as free");
				tier = "free";
			}
			r = Q(a, NULL,
			    "INSERT INTO subscriptions (user_id, stripe_customer_id,"
			    " stripe_subscription_id, tier, status, billing_interval)"
			    " VALUES ($1, $2, $3, $4, 'incomplete', $5)"
			    " ON CONFLICT (stripe_subscription_id) DO NOTHING",
			    user, customer, sub, tier, interval);
			if (r != 0)
				return r;
		}
	}
	if (user == NULL)
		return 0;
	/* Link what arrived before the user was known. */
	r = Q(a, NULL,
	    "UPDATE subscriptions SET user_id = $1,"
	    " stripe_customer_id = coalesce(stripe_customer_id, $2)"
	    " WHERE user_id IS NULL AND (stripe_subscription_id = $3 OR stripe_customer_id = $2)",
	    user, customer, sub);
	if (r == 0)
		r = Q(a, NULL,
		    "UPDATE billing_events SET user_id = $1 WHERE user_id IS NULL"
		    " AND (stripe_subscription_id = $3 OR stripe_customer_id = $2)",
		    user, customer, sub);
	if (r == 0)
		r = Q(a, NULL,
		    "UPDATE notifications SET user_id = $1 WHERE user_id IS NULL"
		    " AND payload->>'stripe_subscription_id' = $2", user, sub);
	return r;
}

static int
apply_invoice(struct apply *a, enum outcome *fatal)
{
	const char *sub = invoice_subscription(a->ev->object);
	char created[24];
	struct sub_row row;
	int stored = 0, r;

	if (sub == NULL)
		return 0;	/* a one-off invoice: recorded only */
	if ((r = lock_subscription(a, sub)) != 0)
		return r;
	if (a->mode == SYNC_REFETCH &&
	    ((r = refetch(a, sub, NULL, &stored, fatal)) != 0 || *fatal != OUT_OK || stored))
		return r;
	if (!is_type(a->ev, "invoice.payment_failed"))
		return 0;
	if ((r = read_row(a, sub, &row)) != 0 || !row.exists)
		return r;
	/* Only a renewal failure makes it past_due; incomplete stays incomplete. */
	if ((strcmp(row.status, "active") != 0 && strcmp(row.status, "trialing") != 0) ||
	    !should_apply(&row, "past_due", a->ev->created, 0))
		return 0;
	snprintf(created, sizeof(created), "%lld", a->ev->created);
	r = Q(a, NULL,
	    "UPDATE subscriptions SET status = 'past_due',"
	    " last_event_created = greatest(last_event_created, to_timestamp($2::bigint)),"
	    " last_event_id = $3 WHERE stripe_subscription_id = $1", sub, created, a->ev->id);
	if (r == 0)
		log_note("applied", "past_due");
	return r;
}

/* One transaction; 0 or a db_result, with *fatal set for non-database failures. */
static int
apply_once(struct apply *a, enum outcome *fatal)
{
	const struct subscription_event *ev = a->ev;
	int r;

	if ((r = fail(a, db_begin(a->db))) != 0)
		return r;
	if ((r = record_event(a)) != 0 || a->duplicate)
		goto out;
	if (is_subscription_event(ev))
		r = apply_subscription_event(a, fatal);
	else if (is_type(ev, "checkout.session.completed"))
		r = apply_checkout(a, fatal);
	else if (is_type(ev, "invoice.paid") || is_type(ev, "invoice.payment_failed"))
		r = apply_invoice(a, fatal);
	else
		a->ignored = 1;
	if (r == 0 && a->user_id)
		r = Q(a, NULL, "UPDATE billing_events SET user_id = $2 WHERE id = $1::bigint"
		    " AND user_id IS NULL", a->event_row, a->user_id);
out:
	if (r == 0 && *fatal == OUT_OK)
		r = fail(a, db_commit(a->db));
	else
		db_rollback(a->db);
	return r;
}

enum outcome
subscription_apply_event(struct db *db, const struct subscription_event *ev,
    struct json_object **reply)
{
	struct apply a;
	enum sync_mode mode;
	enum outcome rc, fatal;
	int r = DB_ERROR, tries;

	*reply = NULL;
	if ((rc = sync_mode(&mode)) != OUT_OK)
		return rc;
	for (tries = 0; tries < APPLY_TRIES; tries++) {
		memset(&a, 0, sizeof(a));
		a.db = db;
		a.ev = ev;
		a.mode = mode;
		fatal = OUT_OK;
		r = apply_once(&a, &fatal);
		free(a.event_row);
		free(a.user_id);
		if (fatal != OUT_OK)
			return fatal;
		if (r == 0 || !db_retryable((enum db_result)r))
			break;
		log_msg("transaction retried (serialization failure or deadlock)");
	}
	if (r != 0)
		return db_outcome((enum db_result)r);
	*reply = response_object();
	response_add(*reply, "received", json_object_new_boolean(1));
	if (a.duplicate) {
		response_add(*reply, "duplicate", json_object_new_boolean(1));
		log_note("duplicate", "yes");
	} else if (a.ignored)
		response_add(*reply, "ignored", json_object_new_boolean(1));
	return OUT_OK;
}
