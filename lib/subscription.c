#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "jsonb.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mail.h"
#include "mem.h"
#include "notify.h"
#include "plan.h"
#include "response.h"
#include "stripe.h"
#include "subscription.h"

/* Where a value of the event comes from, for left-out paths. */
#define IN_EVENT "data.object"
#define IN_REFETCHED "(GET /v1/subscriptions)"

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
	char *user_id;		/* owner resolved while applying, for billing_events */
	struct json_object *left_out;	/* paths of values beyond their column's range */
	int duplicate;
	int ignored;
	/*
	 * In event mode, the event's own subscription: record_event takes its
	 * lock (lock_subscription) and, with early_read, reads its row
	 * (read_row) in the same round trip as the event's INSERT, since none
	 * of the three waits for another's result.  row_read is that row
	 * until read_row takes it.
	 */
	const char *early;
	int early_read;
	struct db_rows *row_read;
	/*
	 * In event mode, when the event's owner will be resolved (a
	 * subscription event whose subscription will be stored, an invoice
	 * event), the INSERT records the owner of the claim
	 * early_claimed and the customer early_customer (both NULL
	 * otherwise) as it sees the links (user_recorded), and, with a
	 * customer, resolve_owner's customers statement for the two goes out
	 * in that round trip too (owner_rows, until resolve_owner takes it).
	 * commit then writes the owner only when it came out different: a
	 * link made by another transaction in between.
	 */
	const char *early_claimed, *early_customer;
	struct db_rows *owner_rows;
	char *user_recorded;	/* billing_events.user_id as inserted */
	/* The customer lock_customer has seen to in this transaction; "" none. */
	char customer_locked[LIMIT_STRIPE_ID_LEN + 1];
	/*
	 * In event mode, the subscriptions upsert is held back (hold_store)
	 * to go out in the same round trip as the transaction's next
	 * statement, its COMMIT at the latest: every statement after it runs
	 * after it on the server, and nothing outside the database depends on
	 * it.  Its failure is the next statement's.
	 */
	int hold_store;
	struct held {
		const char *sql;	/* a literal */
		int nparams;
		char **params;		/* copies */
		const char *applied;	/* the status to log once it has run */
	} held;
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

int
subscription_status_live(const char *status)
{
	return status != NULL && (strcmp(status, "trialing") == 0 ||
	    strcmp(status, "active") == 0 || strcmp(status, "past_due") == 0);
}

int
subscription_status_final(const char *status)
{
	return status_rank(status) == 4;
}

/* The status a subscription object is stored with, or NULL when it cannot be. */
static const char *
status_to_store(const char *status, int deletion)
{
	if (deletion && (status == NULL || !subscription_status_final(status)))
		status = "canceled";
	return status_rank(status) < 0 ? NULL : status;
}

/* The event-mode ordering rule of subscription.h. */
static int
should_apply(const struct sub_row *row, const char *status, long long created, int deletion,
    struct json_object *previous)
{
	struct json_object *was;

	if (!row->exists)
		return 1;
	if (subscription_status_final(row->status) && !subscription_status_final(status))
		return 0;
	if (deletion || !row->has_last || created > row->last)
		return 1;
	if (created < row->last)
		return 0;
	/*
	 * The same second.  An update event's data.previous_attributes says
	 * where it came from: one that moved the status away from the status
	 * we hold is the step after ours (a card fixed a past_due: active);
	 * one that led to the status we hold from another is that step or an
	 * earlier one (our row is as new or newer); one that did not touch the
	 * status came before the state we hold when that differs.  Otherwise
	 * the status may only move forward.
	 */
	if (previous != NULL) {
		if (json_object_object_get_ex(previous, "status", &was) &&
		    json_object_is_type(was, json_type_string)) {
			if (strcmp(json_object_get_string(was), row->status) == 0)
				return 1;
			/* We already hold where this step led: it, or a later one. */
			if (strcmp(status, row->status) == 0)
				return 0;
		} else if (strcmp(status, row->status) != 0)
			return 0;
	}
	return status_rank(status) >= status_rank(row->status);
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
	return stripe_id_valid(s) ? s : NULL;
}

/* A user id from path in obj, validated, or NULL. */
static const char *
claim_at(struct json_object *obj, const char *path)
{
	const char *s = jsonget_path_str(obj, path);

	return s != NULL && auth_user_id_valid(s) ? s : NULL;
}

/* claim_at, and an invalid one is logged. */
static const char *
user_at(struct json_object *obj, const char *path)
{
	const char *s = claim_at(obj, path);

	if (s == NULL && jsonget_path_str(obj, path) != NULL)
		log_msg("ignoring invalid user id at %s", path);
	return s;
}

/* Notes that the value at where.path is left out (logged at the end of the event). */
static void
left_out(struct apply *a, const char *where, const char *path)
{
	char full[256];

	snprintf(full, sizeof(full), "%s.%s", where, path);
	jsonb_note_path(&a->left_out, full);
}

/*
 * The integer at path for a column holding [min, max], as decimal text in
 * buf: NULL when absent or null, and NULL, noted as left out, when the
 * value is no integer in that range (it could not be stored).
 */
static const char *
column_int(struct apply *a, struct json_object *obj, const char *where, const char *path,
    long long min, long long max, char *buf, size_t n)
{
	struct json_object *v = jsonget_path(obj, path);
	long long x;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return NULL;
	if (jsonget_path_int(obj, path, &x) == -1 || x < min || x > max) {
		left_out(a, where, path);
		return NULL;
	}
	snprintf(buf, n, "%lld", x);
	return buf;
}

/* bigint (json-c clamps beyond int64; jsonget_path_int refuses the clamped ends). */
#define BIGINT(a, obj, where, path, buf) \
	column_int((a), (obj), (where), (path), INT64_MIN, INT64_MAX, (buf), sizeof(buf))
#define INTEGER(a, obj, where, path, buf) \
	column_int((a), (obj), (where), (path), INT32_MIN, INT32_MAX, (buf), sizeof(buf))
/* A Unix time for to_timestamp(): within PostgreSQL's range and ours. */
#define UNIXTIME(a, obj, where, path, buf) \
	column_int((a), (obj), (where), (path), 0, LIMIT_TIMESTAMP_MAX, (buf), sizeof(buf))

/*
 * The string at path if it is at most max bytes of clean text: NULL when
 * absent or null, and NULL, noted as left out, when it is not such a string.
 */
static const char *
column_text(struct apply *a, struct json_object *obj, const char *where, const char *path,
    size_t max)
{
	struct json_object *v = jsonget_path(obj, path);
	const char *s;

	if (v == NULL || json_object_is_type(v, json_type_null))
		return NULL;
	s = jsonget_path_str(obj, path);
	if (s == NULL || strlen(s) > max || !jsonget_clean_utf8(s, strlen(s))) {
		left_out(a, where, path);
		return NULL;
	}
	return s;
}

static int
fail(struct apply *a, enum db_result r)
{
	(void)a;
	return r == DB_OK ? 0 : (int)r;
}

static void
held_drop(struct held *h)
{
	int i;

	for (i = 0; i < h->nparams; i++)
		free(h->params[i]);
	free(h->params);
	memset(h, 0, sizeof(*h));
}

/* Holds sql back until the next statement (see struct apply). */
static void
held_keep(struct apply *a, const char *sql, int nparams, const char *const *params)
{
	int i;

	a->held.sql = sql;
	a->held.nparams = nparams;
	a->held.params = mem_calloc((size_t)nparams, sizeof(char *));
	for (i = 0; i < nparams; i++)
		a->held.params[i] = params[i] ? mem_strdup(params[i]) : NULL;
}

/*
 * Runs n statements in one round trip, the held-back one first if there
 * is one; 0 and rows[i] (when rows is not NULL), or the first failure.
 */
static int
query_batch(struct apply *a, int n, const struct db_statement *st, struct db_rows **rows)
{
	struct db_statement all[LIMIT_DB_BATCH] = { { NULL, 0, NULL } };
	struct db_rows *got[LIMIT_DB_BATCH] = { NULL };
	int k = a->held.sql != NULL, i, r;

	if (k + n == 0)
		return 0;
	if (k + n > LIMIT_DB_BATCH)
		return DB_ERROR;
	if (k)
		all[0] = (struct db_statement){ a->held.sql, a->held.nparams,
		    (const char *const *)a->held.params };
	for (i = 0; i < n; i++)
		all[k + i] = st[i];
	r = fail(a, db_exec_batch(a->db, k + n, all, got));
	if (r == 0 && k && a->held.applied != NULL)
		log_note("applied", a->held.applied);
	held_drop(&a->held);
	db_rows_free(k ? got[0] : NULL);
	for (i = 0; i < n; i++)
		if (rows)
			rows[i] = got[k + i];
		else
			db_rows_free(got[k + i]);
	return r;
}

static int
query(struct apply *a, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	const struct db_statement st = { sql, nparams, params };

	return query_batch(a, 1, &st, rows);
}

/* Runs sql with the parameters listed; on failure returns the db_result (non-zero). */
#define Q(a, rows, sql, ...) query((a), (rows), (sql), DB_PARAMS(__VA_ARGS__))

/* Serialises all work on one subscription until the transaction ends. */
#define LOCK_SUBSCRIPTION "SELECT pg_advisory_xact_lock(hashtext($1))"
static const char sql_lock_subscription[] = LOCK_SUBSCRIPTION;
/*
 * The subscriptions row, under that lock: a statement of its own after the
 * lock's, so that its snapshot shows what the lock's last holder wrote.
 */
#define READ_ROW \
    "SELECT status, tier, billing_interval, extract(epoch FROM last_event_created)::bigint" \
    " FROM subscriptions WHERE stripe_subscription_id = $1"
static const char sql_read_row[] = READ_ROW " FOR UPDATE";
/*
 * The same two when this transaction has recorded event $2 (its row's
 * xmin is ours), and nothing otherwise: a duplicate delivery, sent with
 * the INSERT that finds it recorded, waits on no lock another transaction
 * holds (self-service holds it across its calls to Stripe).
 */
#define RECORDED_HERE_AS(n) \
    " EXISTS (SELECT FROM billing_events WHERE stripe_event_id = $" #n \
    " AND xmin = pg_current_xact_id()::xid)"
#define RECORDED_HERE RECORDED_HERE_AS(2)
static const char sql_lock_if_recorded[] = LOCK_SUBSCRIPTION " WHERE" RECORDED_HERE;

/*
 * Serialises everything that decides who owns the subscriptions of a
 * customer linked to no user, until the transaction ends: resolve_owner's
 * links (made, or found missing), and the subscription rows written on
 * that answer.  Without it an unclaimed event for a customer's second
 * subscription could find no link and commit while checkout linked the
 * customer and updated its other subscriptions: that one, not yet
 * committed, stayed unowned.  A linked customer needs no lock (a link
 * never moves, so its user is settled), and takes none but checkout's
 * (below): self-service and refetch mode, which hold a subscription's
 * lock across calls to Stripe, make no other event of a paying customer
 * wait.  Taken after the subscription's lock and before its row's, on
 * every path.  Two int4 keys with a first key of its own (the MRR
 * ledger's is 7294811, usage months' 7294812: schema.sql).
 */
#define LOCK_CUSTOMER_ALWAYS "SELECT pg_advisory_xact_lock(7294813, hashtext($1))"
#define LOCK_CUSTOMER LOCK_CUSTOMER_ALWAYS \
    " WHERE NOT EXISTS (SELECT FROM customers WHERE stripe_customer_id = $1)"
static const char sql_lock_customer[] = LOCK_CUSTOMER;
/*
 * Checkout takes it whatever the links: it updates the customer's other
 * subscriptions, which an unclaimed event may be storing under the lock
 * after create-checkout-session linked the customer (that link is made
 * without it: a new customer has no subscriptions to take over), and two
 * checkouts of one customer would otherwise take those rows' locks in
 * opposite orders.
 */
static const char sql_lock_customer_always[] = LOCK_CUSTOMER_ALWAYS;
static const char sql_lock_customer_if_recorded[] = LOCK_CUSTOMER " AND" RECORDED_HERE;
static const char sql_read_row_if_recorded[] = READ_ROW " AND" RECORDED_HERE " FOR UPDATE";

/*
 * resolve_owner's statement, $1 the customer and $2 the claimed user: the
 * links of both and, when neither exists, the claimed one made now.
 */
#define OWNER_LINKS(guard) \
    "WITH found AS (SELECT user_id, stripe_customer_id" \
    " FROM customers WHERE stripe_customer_id = $1 OR user_id = $2)," \
    " linked AS (INSERT INTO customers (user_id, stripe_customer_id)" \
    " SELECT $2, $1 WHERE $2 IS NOT NULL AND NOT EXISTS (SELECT FROM found)" guard \
    " ON CONFLICT DO NOTHING RETURNING user_id, stripe_customer_id)" \
    " SELECT user_id, stripe_customer_id, false FROM found" \
    " UNION ALL SELECT user_id, stripe_customer_id, true FROM linked"
static const char sql_owner_links[] = OWNER_LINKS("");
/* The same sent with the INSERT of event $3: it links only when that recorded the event. */
static const char sql_owner_links_if_recorded[] = OWNER_LINKS(" AND" RECORDED_HERE_AS(3));
/*
 * The owner those links give, as the event's INSERT sees them ($14 the
 * customer, $13 the claimed user; NULL when both are NULL): the customer's
 * user, else the claimed user when no customer is linked to it.  (The
 * INSERT's transaction then holds a share lock on customers as on
 * billing_events while it waits for the subscription's lock: only DDL
 * on either waits behind it.)
 */
#define OWNER_SEEN \
    "CASE WHEN $14::text IS NULL THEN $13::text ELSE coalesce(" \
    "(SELECT user_id FROM customers WHERE stripe_customer_id = $14)," \
    " (SELECT $13 WHERE NOT EXISTS (SELECT FROM customers WHERE user_id = $13))) END"

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
		{ "id", JG_STRING, 1, 1, LIMIT_STRIPE_ID_LEN, NULL },
		{ "type", JG_STRING, 1, 1, LIMIT_STRIPE_EVENT_TYPE_LEN, NULL },
		{ "created", JG_INT, 1, 0, LIMIT_TIMESTAMP_MAX, NULL },
		{ "data", JG_OBJECT, 1, 0, 0, NULL },
	};
	const char *bad, *why;
	long long created;

	memset(ev, 0, sizeof(*ev));
	if (jsonb_fit(raw, len, &ev->fit) == -1 ||
	    jsonget_parse(ev->fit.text, ev->fit.len, &ev->root) != OUT_OK) {
		log_msg("payload is not a JSON object");
		subscription_event_free(ev);
		return OUT_INVALID_PAYLOAD;
	}
	if (jsonget_validate(ev->root, fields, sizeof(fields) / sizeof(fields[0]), &bad,
	    &why) != OUT_OK || !stripe_id_valid(jsonget_str(ev->root, "id")) ||
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
	ev->raw = ev->fit.text;
	ev->raw_len = ev->fit.len;
	log_note("event", ev->type);
	if (ev->fit.left_out > 0)
		log_msg("event %s: %d value(s) jsonb cannot store left out: %s", ev->id,
		    ev->fit.left_out, json_object_to_json_string_ext(ev->fit.paths,
		    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	return OUT_OK;
}

void
subscription_event_free(struct subscription_event *ev)
{
	if (ev == NULL)
		return;
	json_object_put(ev->root);
	jsonb_fit_free(&ev->fit);
	memset(ev, 0, sizeof(*ev));
}

static int
is_type(const struct subscription_event *ev, const char *type)
{
	return strcmp(ev->type, type) == 0;
}

/* Keep in step with apply_once. */
const char *const subscription_event_types[] = {
	"checkout.session.completed",
	"customer.subscription.created",
	"customer.subscription.updated",
	"customer.subscription.deleted",
	"customer.subscription.trial_will_end",
	"checkout.session.expired",
	"customer.updated",
	"invoice.paid",
	"invoice.payment_failed",
	"invoice.payment_action_required",
	NULL,
};

static int
is_subscription_event(const struct subscription_event *ev)
{
	return is_type(ev, "customer.subscription.created") ||
	    is_type(ev, "customer.subscription.updated") ||
	    is_type(ev, "customer.subscription.deleted") ||
	    is_type(ev, "customer.subscription.trial_will_end");
}

static int
is_invoice_event(const struct subscription_event *ev)
{
	return is_type(ev, "invoice.paid") || is_type(ev, "invoice.payment_failed") ||
	    is_type(ev, "invoice.payment_action_required");
}

/*
 * The user an invoice claims (the subscription's metadata as basil's
 * parent copies it, else the invoice's own), through get: claim_at, or
 * user_at to log an invalid one.  One place, so the claim the INSERT's
 * links were sent for is the one apply_invoice resolves.
 */
static const char *
invoice_claim(struct json_object *inv, const char *(*get)(struct json_object *, const char *))
{
	const char *s = get(inv, "parent.subscription_details.metadata.userId");

	return s ? s : get(inv, "metadata.userId");
}

/* The subscription an invoice belongs to: basil's parent, else the pre-2025 field. */
static const char *
invoice_subscription(struct json_object *inv)
{
	const char *s = id_of(inv, "parent.subscription_details.subscription");

	return s ? s : id_of(inv, "subscription");
}

/* A JSON array of paths as text for SQL, or NULL for none. */
static const char *
paths_json(struct json_object *paths)
{
	return paths ? json_object_to_json_string_ext(paths, JSON_C_TO_STRING_PLAIN) : NULL;
}

/*
 * The event's INSERT with its 14 parameters (the last two: the owner's
 * claim and customer, see OWNER_SEEN), and in event mode, in the same
 * round trip, when the INSERT recorded the event, in this order: the
 * lock of its subscription (a->early), the lock of its customer and the
 * links that decide its owner (a->early_customer), the read of its row
 * (a->early_read).  0 and the INSERT's *rows, or a db_result.
 */
static int
insert_event(struct apply *a, const char *const *params, struct db_rows **rows)
{
	const char *early[] = { a->early, params[0] };
	const char *customer[] = { a->early_customer, params[0] };
	const char *links[] = { a->early_customer, a->early_claimed, params[0] };
	struct db_statement st[5] = {
		{ "INSERT INTO billing_events (stripe_event_id, event_type, stripe_subscription_id,"
		  " stripe_customer_id, amount, currency, status, attempt_count, occurred_at,"
		  " processed_at, payload, left_out, source, user_id)"
		  " VALUES ($1, $2, $3, $4, $5::bigint, $6, $7, $8::integer,"
		  " to_timestamp($9::bigint), now(), $10::jsonb,"
		  " CASE WHEN $11::jsonb IS NOT NULL"
		  " THEN ARRAY(SELECT jsonb_array_elements_text($11::jsonb)) END,"
		  " coalesce($12, 'webhook'), " OWNER_SEEN ")"
		  " ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id, user_id", 14, params },
	};
	struct db_rows *got[5] = { NULL, NULL, NULL, NULL, NULL };
	int n = 1, at_links = 0, at_read = 0, i, r;

	if (a->early)
		st[n++] = (struct db_statement){ sql_lock_if_recorded, 2, early };
	/*
	 * After the lock, the order of every path that takes both (lock,
	 * then links), and before the row lock of the read: checkout's
	 * UPDATE of its customer's other subscriptions takes row locks
	 * without their advisory locks while its new link is uncommitted.
	 */
	if (a->early_customer != NULL) {
		st[n++] = (struct db_statement){ sql_lock_customer_if_recorded, 2, customer };
		at_links = n;
		st[n++] = (struct db_statement){ sql_owner_links_if_recorded, 3, links };
	}
	if (a->early && a->early_read) {
		at_read = n;
		st[n++] = (struct db_statement){ sql_read_row_if_recorded, 2, early };
	}
	r = fail(a, db_exec_batch(a->db, n, st, got));
	*rows = got[0];
	a->owner_rows = at_links ? got[at_links] : NULL;
	a->row_read = at_read ? got[at_read] : NULL;
	for (i = 1; i < n; i++)
		if (i != at_links && i != at_read)
			db_rows_free(got[i]);
	return r;
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
	const char *sub = NULL, *customer = id_of(o, "customer");
	const char *amount = NULL, *currency = column_text(a, o, IN_EVENT, "currency", LIMIT_STRIPE_CURRENCY_LEN);
	const char *status = NULL, *attempts = NULL;
	char amount_buf[24], attempts_buf[24], created[24];
	struct db_rows *rows = NULL;
	int r;

	/*
	 * user_id is the owner (customers decides): recorded by the INSERT
	 * in event mode when the owner will be resolved (see struct apply),
	 * else set when the event has been applied.
	 */
	if (is_subscription_event(ev)) {
		sub = id_of(o, "id");
		status = column_text(a, o, IN_EVENT, "status", LIMIT_STRIPE_SHORT_TEXT);
	} else if (is_type(ev, "checkout.session.completed")) {
		sub = id_of(o, "subscription");
		status = column_text(a, o, IN_EVENT, "status", LIMIT_STRIPE_SHORT_TEXT);
		amount = BIGINT(a, o, IN_EVENT, "amount_total", amount_buf);
	} else if (is_invoice_event(ev)) {
		int paid = is_type(ev, "invoice.paid");

		sub = invoice_subscription(o);
		status = paid ? "paid" : is_type(ev, "invoice.payment_failed") ? "failed" :
		    "action_required";
		amount = BIGINT(a, o, IN_EVENT, paid ? "amount_paid" : "amount_due", amount_buf);
		attempts = INTEGER(a, o, IN_EVENT, "attempt_count", attempts_buf);
	} else if (is_type(ev, "customer.updated")) {
		customer = id_of(o, "id");
	}
	snprintf(created, sizeof(created), "%lld", ev->created);
	r = insert_event(a, (const char *[]){ ev->id, ev->type, sub, customer, amount, currency,
	    status, attempts, created, ev->raw, paths_json(ev->fit.paths), ev->source,
	    a->early_claimed, a->early_customer }, &rows);
	if (r == 0) {
		if (db_rows_count(rows) == 0)
			a->duplicate = 1;
		else {
			a->event_row = mem_strdup(db_rows_get(rows, 0, 0));
			if (db_rows_get(rows, 0, 1) != NULL)
				a->user_recorded = mem_strdup(db_rows_get(rows, 0, 1));
			if (a->early_customer != NULL)
				snprintf(a->customer_locked, sizeof(a->customer_locked), "%s",
				    a->early_customer);
		}
	}
	db_rows_free(rows);
	return r;
}

static int
lock_subscription(struct apply *a, const char *sub)
{
	return Q(a, NULL, sql_lock_subscription, sub);
}

/*
 * LOCK_CUSTOMER (or, for checkout, LOCK_CUSTOMER_ALWAYS), once per
 * transaction (locked, or linked); nothing for no customer.
 */
static int
lock_customer(struct apply *a, const char *customer, int even_linked)
{
	int r;

	if (customer == NULL || strcmp(customer, a->customer_locked) == 0)
		return 0;
	if ((r = Q(a, NULL, even_linked ? sql_lock_customer_always : sql_lock_customer,
	    customer)) == 0)
		snprintf(a->customer_locked, sizeof(a->customer_locked), "%s", customer);
	return r;
}

static int
read_row(struct apply *a, const char *sub, struct sub_row *row)
{
	struct db_rows *rows = NULL;
	const char *v;
	int r = 0;

	memset(row, 0, sizeof(*row));
	if (a->row_read != NULL && strcmp(a->early, sub) == 0) {
		rows = a->row_read;	/* read by record_event, under the lock */
		a->row_read = NULL;
	} else
		r = Q(a, &rows, sql_read_row, sub);
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

/* Two strings, or two NULLs, alike. */
static int
same(const char *x, const char *y)
{
	return x == NULL || y == NULL ? x == y : strcmp(x, y) == 0;
}

static void
remember_user(struct apply *a, const char *user)
{
	if (user && a->user_id == NULL)
		a->user_id = mem_strdup(user);
}

/* An ownership_conflicts row (once per event and kind) and a log line. */
static int
record_conflict(struct apply *a, const char *kind, const char *claimed, const char *customer,
    const char *owner_user, const char *owner_customer, const char *sub, const char *other_sub)
{
	log_msg("ownership conflict %s: event %s names user %s, customer %s; customers links"
	    " user %s, customer %s; subscriptions %s %s: no ownership changed", kind, a->ev->id,
	    claimed ? claimed : "-", customer ? customer : "-", owner_user ? owner_user : "-",
	    owner_customer ? owner_customer : "-", sub ? sub : "-", other_sub ? other_sub : "-");
	return Q(a, NULL,
	    "INSERT INTO ownership_conflicts (stripe_event_id, event_type, kind, claimed_user_id,"
	    " stripe_customer_id, owner_user_id, owner_customer_id, stripe_subscription_id,"
	    " other_subscription_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
	    " ON CONFLICT (stripe_event_id, kind) DO NOTHING",
	    a->ev->id, a->ev->type, kind, claimed, customer, owner_user, owner_customer, sub,
	    other_sub);
}

/*
 * Who owns what an event names; customers is the authority.  claimed is
 * the user the event names (client_reference_id, metadata.userId; may be
 * NULL), customer its Stripe customer (may be NULL).  *owner (caller
 * frees, may be NULL):
 *   - the customer is linked: its user, whatever the event claims (a
 *     different claim is recorded as customer_of_other_user);
 *   - else the claimed user, when it is not linked to another customer:
 *     the link is made now (neither side was linked); a user linked to
 *     another customer is recorded as user_has_other_customer and owns
 *     nothing here;
 *   - no customer: the claimed user (nothing to check it against).
 * A session with a chosen client_reference_id can come from outside this
 * app (Payment Links, Pricing Tables, another integration of the same
 * Stripe account), so a claim never moves a link.
 */
static int
resolve_owner(struct apply *a, const char *claimed, const char *customer, char **owner)
{
	struct db_rows *rows = NULL;
	const char *cus_user = NULL, *user_cus = NULL;
	int r = 0, tries, i;

	*owner = NULL;
	if (customer == NULL) {
		*owner = claimed ? mem_strdup(claimed) : NULL;
		return 0;
	}
	if ((r = lock_customer(a, customer, 0)) != 0)
		return r;
	/*
	 * One statement (OWNER_LINKS) reads the links of the customer and of
	 * the claimed user and, when neither exists, makes the claimed one;
	 * its first answer may have come with the event's INSERT.  Twice at
	 * most: a concurrent link makes our INSERT do nothing, then we read it.
	 */
	for (tries = 0; tries < 2; tries++) {
		db_rows_free(rows);
		rows = NULL;
		cus_user = user_cus = NULL;
		if (tries == 0 && a->owner_rows != NULL && same(claimed, a->early_claimed) &&
		    same(customer, a->early_customer)) {
			rows = a->owner_rows;
			a->owner_rows = NULL;
		} else if ((r = Q(a, &rows, sql_owner_links, customer, claimed)) != 0)
			break;
		if (db_rows_count(rows) == 1 && strcmp(db_rows_get(rows, 0, 2), "t") == 0) {
			log_msg("customer %s linked to user %s", customer, claimed);
			*owner = mem_strdup(claimed);
			break;
		}
		for (i = 0; i < db_rows_count(rows); i++) {
			if (strcmp(db_rows_get(rows, i, 1), customer) == 0)
				cus_user = db_rows_get(rows, i, 0);
			else
				user_cus = db_rows_get(rows, i, 1);
		}
		if (cus_user != NULL) {
			if (claimed != NULL && strcmp(claimed, cus_user) != 0)
				r = record_conflict(a, "customer_of_other_user", claimed, customer,
				    cus_user, user_cus, NULL, NULL);
			*owner = mem_strdup(cus_user);
			break;
		}
		if (claimed == NULL)
			break;
		if (user_cus != NULL) {
			r = record_conflict(a, "user_has_other_customer", claimed, customer, NULL,
			    user_cus, NULL, NULL);
			break;
		}
	}
	db_rows_free(rows);
	return r;
}

/*
 * After storing a live subscription of user: another live one of the
 * same user is recorded (second_subscription).  Both stay the user's;
 * user_live_subscription picks the higher tier.
 */
static int
check_second_subscription(struct apply *a, const char *user, const char *sub,
    const char *customer)
{
	struct db_rows *rows = NULL;
	int r;

	r = Q(a, &rows, "SELECT stripe_subscription_id FROM subscriptions WHERE user_id = $1"
	    " AND stripe_subscription_id <> $2 AND status IN ('trialing', 'active', 'past_due')"
	    " ORDER BY id LIMIT 1", user, sub);
	if (r == 0 && db_rows_count(rows) == 1)
		r = record_conflict(a, "second_subscription", NULL, customer, user, NULL, sub,
		    db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	return r;
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

/* The subscriptions upsert of store_subscription: 20 parameters. */
static const char sql_store[] =
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
    " user_id = coalesce(EXCLUDED.user_id, s.user_id),"
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
    " quantity = coalesce(EXCLUDED.quantity, s.quantity)";

/* Runs sql_store, or holds it back for the next statement (a->hold_store). */
static int
store_write(struct apply *a, const char *const *params)
{
	if (!a->hold_store)
		return query(a, NULL, sql_store, 20, params);
	held_keep(a, sql_store, 20, params);
	return 0;
}

/*
 * Writes a subscription object.  force: the object is Stripe's current
 * state (refetch), applied whatever the order; otherwise the event-mode
 * rule decides.  known_user: the user the checkout session names, or
 * NULL.  The owner is its customer's user (resolve_owner, claimed by
 * metadata.userId, else known_user).
 */
static int
store_subscription(struct apply *a, struct json_object *sub, int force, int deletion,
    const char *known_user)
{
	const struct subscription_event *ev = a->ev;
	const char *where = force ? IN_REFETCHED : IN_EVENT;
	struct sub_row row;
	const char *id = id_of(sub, "id"), *status = jsonget_str(sub, "status");
	const char *customer = id_of(sub, "customer"), *claimed = user_at(sub, "metadata.userId");
	const char *tier, *interval, *price, *currency, *reason, *ended;
	char *user = NULL;
	char amount[24], ts[24], te[24], ps[24], pe[24], ca[24], ea[24], created[24], qty[24];
	const char *pps, *ppe;
	struct json_object *previous = NULL;
	int cape = 0, r;

	if (id == NULL) {
		log_msg("subscription object without a valid id: recorded only");
		a->ignored = 1;
		return 0;
	}
	if ((status = status_to_store(status, deletion)) == NULL) {
		log_msg("unknown subscription status: recorded only");
		a->ignored = 1;
		return 0;
	}
	/* The customer's lock before the row's: checkout updates rows under it. */
	if ((r = lock_customer(a, customer, 0)) != 0 || (r = read_row(a, id, &row)) != 0 ||
	    (r = resolve_owner(a, claimed ? claimed : known_user, customer, &user)) != 0)
		return r;
	remember_user(a, user);
	/* What the event says changed, when the object stored is the event's own. */
	if (sub == ev->object && is_type(ev, "customer.subscription.updated"))
		previous = jsonget_path(ev->root, "data.previous_attributes");
	if (previous != NULL && !json_object_is_type(previous, json_type_object))
		previous = NULL;
	if (!force && !should_apply(&row, status, ev->created, deletion, previous)) {
		log_note("applied", "no (older or would resurrect)");
		free(user);
		return 0;
	}
	resolve_plan(sub, &row, &tier, &interval);
	price = jsonget_path_str(sub, "items.data.0.price.id");
	if (price && !stripe_id_valid(price)) {
		left_out(a, where, "items.data.0.price.id");
		price = NULL;
	}
	currency = column_text(a, sub, where, "currency", LIMIT_STRIPE_CURRENCY_LEN);
	if (currency == NULL)
		currency = column_text(a, sub, where, "items.data.0.price.currency", LIMIT_STRIPE_CURRENCY_LEN);
	reason = column_text(a, sub, where, "cancellation_details.reason", LIMIT_STRIPE_SHORT_TEXT);
	pps = UNIXTIME(a, sub, where, "items.data.0.current_period_start", ps);
	if (pps == NULL)
		pps = UNIXTIME(a, sub, where, "current_period_start", ps);
	ppe = UNIXTIME(a, sub, where, "items.data.0.current_period_end", pe);
	if (ppe == NULL)
		ppe = UNIXTIME(a, sub, where, "current_period_end", pe);
	jsonget_bool(sub, "cancel_at_period_end", &cape);
	snprintf(created, sizeof(created), "%lld", ev->created);
	ended = UNIXTIME(a, sub, where, "ended_at", ea);
	if (ended == NULL && deletion)
		ended = created;
	r = store_write(a, (const char *[]){ user, customer, id, tier, status, interval, price,
	    BIGINT(a, sub, where, "items.data.0.price.unit_amount", amount), currency,
	    UNIXTIME(a, sub, where, "trial_start", ts), UNIXTIME(a, sub, where, "trial_end", te),
	    pps, ppe, cape ? "true" : "false", UNIXTIME(a, sub, where, "canceled_at", ca), ended,
	    reason, created, ev->id,
	    column_int(a, sub, where, "items.data.0.quantity", 0, INT64_MAX, qty, sizeof(qty)) });
	if (r == 0 && a->held.sql != NULL)
		a->held.applied = status;	/* logged when it has run */
	else if (r == 0)
		log_note("applied", status);
	if (r == 0 && user != NULL && subscription_status_live(status))
		r = check_second_subscription(a, user, id, customer);
	free(user);
	return r;
}

/*
 * Whether Stripe's answer to GET /v1/subscriptions/<sub> is that
 * subscription: its object and id, and the customer the event names.  A
 * subscription's customer is set when it is created and never changes
 * (docs.stripe.com/api/subscriptions/object), so an answer naming another
 * than the signed event is not about this subscription, and storing it
 * would move the row, and the tier it grants, to another customer's user.
 * The row's own customer is not a test: where it differs from Stripe's,
 * the row is what is wrong, and Stripe's answer repairs it as billing-sync
 * would (refusing would answer 502 to every event of it, for good).
 */
static int
fetched_is(struct apply *a, struct json_object *obj, const char *sub)
{
	const char *object = jsonget_str(obj, "object"), *id = id_of(obj, "id");
	const char *customer = id_of(obj, "customer");
	const char *named = id_of(a->ev->object, "customer");

	if (object != NULL && strcmp(object, "subscription") == 0 && same(id, sub) &&
	    customer != NULL && (named == NULL || strcmp(named, customer) == 0))
		return 1;
	log_msg("refetch: Stripe's answer is not subscription %s of customer %s (object %.32s,"
	    " id %s, customer %s): the event is not recorded, Stripe will redeliver it", sub,
	    named ? named : "-", object ? object : "-", id ? id : "-", customer ? customer : "-");
	return 0;
}

/*
 * Refetch mode: GET the subscription and store it (*stored = 1).  A 404
 * leaves *stored = 0 and the caller falls back to the event's own data;
 * so does an answer older than what is known for certain: a live status
 * for a subscription that the event deletes or the row holds ended
 * (canceled and incomplete_expired are final at Stripe, so such an
 * answer was read before the end; the event-mode rule keeps the end).
 * An answer that is not this subscription (fetched_is), or any other
 * Stripe failure, sets *fatal (the transaction is rolled back).  Returns
 * 0 or a db_result.
 */
static int
refetch(struct apply *a, const char *sub, const char *known_user, int *stored,
    enum outcome *fatal)
{
	struct json_object *obj = NULL;
	struct db_rows *rows = NULL;
	char path[32 + LIMIT_STRIPE_ID_LEN];
	const char *status, *row_status = NULL;
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
	if (!fetched_is(a, obj, sub)) {
		*fatal = OUT_BAD_GATEWAY;
		r = 0;
		goto out;
	}
	/*
	 * Under the subscription's lock: the row cannot change before the
	 * store.  Not read_row: its FOR UPDATE would take the row's lock
	 * before store_subscription takes the customer's.
	 */
	if ((r = Q(a, &rows, "SELECT status FROM subscriptions"
	    " WHERE stripe_subscription_id = $1", sub)) != 0)
		goto out;
	status = jsonget_str(obj, "status");
	if (db_rows_count(rows) == 1)
		row_status = db_rows_get(rows, 0, 0);
	if ((status == NULL || !subscription_status_final(status)) &&
	    (is_type(a->ev, "customer.subscription.deleted") ||
	    (row_status != NULL && subscription_status_final(row_status)))) {
		log_msg("refetch: Stripe's answer (status %.32s) predates the subscription's end:"
		    " using the event's object", status ? status : "-");
		goto out;
	}
	r = store_subscription(a, obj, 1, 0, known_user);
	*stored = r == 0;
out:
	db_rows_free(rows);
	json_object_put(obj);
	return r;
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
	/* In event mode record_event took the lock with the event's INSERT. */
	if (a->early == NULL && (r = lock_subscription(a, sub)) != 0)
		return r;
	if (a->mode == SYNC_REFETCH &&
	    ((r = refetch(a, sub, NULL, &stored, fatal)) != 0 || *fatal != OUT_OK))
		return r;
	/* In event mode the upsert goes out with the next statement. */
	a->hold_store = a->mode == SYNC_EVENT;
	r = stored ? 0 : store_subscription(a, a->ev->object, 0, deletion, NULL);
	a->hold_store = 0;
	if (r != 0)
		return r;
	/* The mailer's trial notice needs the owner even when the row has none yet. */
	if (is_type(a->ev, "customer.subscription.trial_will_end") && a->user_id == NULL) {
		char *u = NULL;

		if ((r = resolve_owner(a, user_at(a->ev->object, "metadata.userId"),
		    id_of(a->ev->object, "customer"), &u)) != 0)
			return r;
		a->user_id = u;
	}
	return 0;
}

/*
 * checkout.session.completed: the session's user (client_reference_id,
 * else metadata.userId) is only a claim; the owner comes from customers
 * (resolve_owner).  Our checkout_sessions row becomes complete.
 */
static int
apply_checkout(struct apply *a, enum outcome *fatal)
{
	struct json_object *o = a->ev->object;
	const char *claimed = user_at(o, "client_reference_id"), *mode = jsonget_str(o, "mode");
	const char *customer = id_of(o, "customer"), *sub = id_of(o, "subscription");
	const char *session = id_of(o, "id");
	const char *tier = NULL, *interval = NULL;
	char *owner = NULL;
	struct sub_row row;
	enum plan_tier t;
	enum plan_interval i;
	int stored = 0, r;

	if (claimed == NULL)
		claimed = user_at(o, "metadata.userId");
	if (mode == NULL || strcmp(mode, "subscription") != 0) {
		a->ignored = 1;
		return 0;
	}
	if (session && (r = Q(a, NULL, "UPDATE checkout_sessions SET status = 'complete'"
	    " WHERE stripe_session_id = $1 AND status <> 'complete'", session)) != 0)
		return r;
	/* The subscription's lock first, then customers: the order every event takes. */
	if ((sub && (r = lock_subscription(a, sub)) != 0) ||
	    (r = lock_customer(a, customer, 1)) != 0 ||
	    (r = resolve_owner(a, claimed, customer, &owner)) != 0)
		goto out;
	remember_user(a, owner);
	if (sub) {
		if (a->mode == SYNC_REFETCH &&
		    ((r = refetch(a, sub, owner, &stored, fatal)) != 0 || *fatal != OUT_OK))
			goto out;
		if ((r = read_row(a, sub, &row)) != 0)
			goto out;
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
			    owner, customer, sub, tier, interval);
			if (r != 0)
				goto out;
		}
	}
	if (owner == NULL)
		goto out;
	/*
	 * Link what arrived before the owner was known; a subscription follows
	 * its customer's owner, whoever an earlier event said.
	 */
	r = Q(a, NULL,
	    "UPDATE subscriptions SET user_id = $1,"
	    " stripe_customer_id = coalesce(stripe_customer_id, $2)"
	    " WHERE (stripe_customer_id = $2 AND user_id IS DISTINCT FROM $1)"
	    " OR (stripe_subscription_id = $3 AND user_id IS NULL)",
	    owner, customer, sub);
	if (r == 0)
		r = Q(a, NULL,
		    "UPDATE billing_events SET user_id = $1 WHERE user_id IS NULL"
		    " AND (stripe_subscription_id = $3 OR stripe_customer_id = $2)",
		    owner, customer, sub);
	if (r == 0)
		r = Q(a, NULL,
		    "UPDATE notifications SET user_id = $1 WHERE user_id IS NULL"
		    " AND payload->>'stripe_subscription_id' = $2", owner, sub);
out:
	free(owner);
	return r;
}

static int
apply_invoice(struct apply *a, enum outcome *fatal)
{
	struct json_object *o = a->ev->object;
	const char *sub = invoice_subscription(o);
	const char *claimed = invoice_claim(o, user_at);
	char created[24], *owner = NULL;
	struct sub_row row;
	int stored = 0, r;

	/* In event mode record_event took the lock with the event's INSERT. */
	if ((sub && a->early == NULL && (r = lock_subscription(a, sub)) != 0) ||
	    (r = resolve_owner(a, claimed, id_of(o, "customer"), &owner)) != 0)
		return r;
	remember_user(a, owner);
	free(owner);
	if (sub == NULL)
		return 0;	/* a one-off invoice: recorded only */
	if (a->mode == SYNC_REFETCH &&
	    ((r = refetch(a, sub, NULL, &stored, fatal)) != 0 || *fatal != OUT_OK || stored))
		return r;
	if (!is_type(a->ev, "invoice.payment_failed"))
		return 0;
	if ((r = read_row(a, sub, &row)) != 0 || !row.exists)
		return r;
	/* Only a renewal failure makes it past_due; incomplete stays incomplete. */
	if ((strcmp(row.status, "active") != 0 && strcmp(row.status, "trialing") != 0) ||
	    !should_apply(&row, "past_due", a->ev->created, 0, NULL))
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

/*
 * customers.email from checkout.session.completed (customer_details.email)
 * and customer.updated (email; null clears it), unless an event created
 * later set it already.  An address the mailer could not use is stored
 * as none: the row's notifications are then marked no_email, not sent.
 */
static int
keep_email(struct apply *a)
{
	struct json_object *o = a->ev->object;
	const char *customer, *email;
	char created[24];

	if (is_type(a->ev, "checkout.session.completed")) {
		customer = id_of(o, "customer");
		if ((email = jsonget_path_str(o, "customer_details.email")) == NULL)
			return 0;
	} else if (is_type(a->ev, "customer.updated")) {
		customer = id_of(o, "id");
		email = jsonget_str(o, "email");
	} else
		return 0;
	if (customer == NULL)
		return 0;
	if (email && !mail_address_valid(email)) {
		log_msg("customer email is not an address we can send to: stored as none");
		email = NULL;
	}
	snprintf(created, sizeof(created), "%lld", a->ev->created);
	return Q(a, NULL,
	    "UPDATE customers SET email = $2, email_event_created = to_timestamp($3::bigint)"
	    " WHERE stripe_customer_id = $1 AND (email_event_created IS NULL"
	    " OR email_event_created <= to_timestamp($3::bigint))", customer, email, created);
}

/* The lifecycle notification an applied event queues for billing-mailer (notify.h). */
static int
queue_notice(struct apply *a)
{
	static const struct {
		const char *type;
		enum notify_kind kind;
	} kinds[] = {
		{ "customer.subscription.trial_will_end", NOTIFY_TRIAL_WILL_END },
		{ "customer.subscription.deleted", NOTIFY_SUBSCRIPTION_CANCELED },
		{ "invoice.payment_failed", NOTIFY_PAYMENT_FAILED },
		{ "invoice.payment_action_required", NOTIFY_PAYMENT_ACTION_REQUIRED },
		{ "checkout.session.completed", NOTIFY_WELCOME },
	};
	struct json_object *o = a->ev->object;
	struct notify_event n = { a->ev->id, a->ev->created, o, a->user_id,
		id_of(o, "customer"), NULL };
	size_t i;
	int r;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (is_type(a->ev, kinds[i].type))
			break;
	if (i == sizeof(kinds) / sizeof(kinds[0]))
		return 0;
	if (is_subscription_event(a->ev))
		n.subscription_id = id_of(o, "id");
	else if (is_invoice_event(a->ev))
		n.subscription_id = invoice_subscription(o);
	else
		n.subscription_id = id_of(o, "subscription");
	/* Every mail is about a subscription; a one-off invoice has none to tell of. */
	if (n.subscription_id == NULL)
		return 0;
	if ((r = query_batch(a, 0, NULL, NULL)) != 0)	/* the held upsert first */
		return r;
	return fail(a, notify_queue(a->db, kinds[i].kind, &n));
}

/* The owner of customer per customers (never a claim), for the event's row. */
static int
customer_owner(struct apply *a, const char *customer)
{
	struct db_rows *rows = NULL;
	int r;

	if (customer == NULL || a->user_id != NULL)
		return 0;
	r = Q(a, &rows, "SELECT user_id FROM customers WHERE stripe_customer_id = $1", customer);
	if (r == 0 && db_rows_get(rows, 0, 0) != NULL)
		a->user_id = mem_strdup(db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	return r;
}

/*
 * Commits, in one round trip with what is still to write: the held-back
 * upsert, and the event row's owner (when the INSERT did not record it)
 * and left-out paths learnt while applying.  0 or a db_result.
 */
static int
commit(struct apply *a)
{
	/* $4: the INSERT recorded an owner, and resolve_owner found another (or none). */
	const char *params[] = { a->event_row, a->user_id, paths_json(a->left_out),
		a->user_recorded ? "true" : "false" };
	struct db_statement st[2];
	int n = 0;

	/* (A duplicate has no event_row: nothing of it to complete.) */
	if (a->event_row != NULL && (!same(a->user_id, a->user_recorded) || a->left_out))
		st[n++] = (struct db_statement){
		    "UPDATE billing_events SET"
		    " user_id = CASE WHEN $4::boolean THEN $2 ELSE coalesce(user_id, $2) END,"
		    " left_out = CASE WHEN $3::jsonb IS NULL THEN left_out ELSE coalesce(left_out,"
		    " '{}') || ARRAY(SELECT jsonb_array_elements_text($3::jsonb)) END"
		    " WHERE id = $1::bigint", 4, params };
	st[n++] = (struct db_statement){ "COMMIT", 0, NULL };
	return query_batch(a, n, st, NULL);
}

/* One transaction; 0 or a db_result, with *fatal set for non-database failures. */
static int
apply_once(struct apply *a, enum outcome *fatal)
{
	const struct subscription_event *ev = a->ev;
	int r;

	if ((r = fail(a, db_begin(a->db))) != 0)
		return r;
	/* Stripe is asked under the lock in refetch mode: that one is taken later. */
	if (a->mode == SYNC_EVENT && is_subscription_event(ev)) {
		a->early = id_of(ev->object, "id");
		a->early_read = 1;
		/* The owner store_subscription will resolve: see struct apply. */
		if (a->early != NULL && status_to_store(jsonget_str(ev->object, "status"),
		    is_type(ev, "customer.subscription.deleted")) != NULL) {
			a->early_claimed = claim_at(ev->object, "metadata.userId");
			a->early_customer = id_of(ev->object, "customer");
		}
	} else if (a->mode == SYNC_EVENT && is_invoice_event(ev)) {
		/* apply_invoice's lock, its row (a failed payment's only), its owner. */
		a->early = invoice_subscription(ev->object);
		a->early_read = is_type(ev, "invoice.payment_failed");
		a->early_claimed = invoice_claim(ev->object, claim_at);
		a->early_customer = id_of(ev->object, "customer");
	}
	if ((r = record_event(a)) != 0 || a->duplicate)
		goto out;
	if (is_subscription_event(ev))
		r = apply_subscription_event(a, fatal);
	else if (is_type(ev, "checkout.session.completed"))
		r = apply_checkout(a, fatal);
	else if (is_invoice_event(ev))
		r = apply_invoice(a, fatal);
	else if (is_type(ev, "checkout.session.expired"))
		r = id_of(ev->object, "id") == NULL ? 0 : Q(a, NULL,
		    "UPDATE checkout_sessions SET status = 'expired' WHERE stripe_session_id = $1"
		    " AND status IN ('creating', 'open')", id_of(ev->object, "id"));
	else if (is_type(ev, "customer.updated"))	/* its email is all we keep */
		r = customer_owner(a, id_of(ev->object, "id"));
	else
		a->ignored = 1;
	if (r == 0 && *fatal == OUT_OK && !a->ignored)
		r = keep_email(a);
	if (r == 0 && *fatal == OUT_OK && !a->ignored)
		r = queue_notice(a);
	if (r == 0 && a->left_out)
		log_msg("event %s: value(s) beyond their column's range left out: %s", ev->id,
		    json_object_to_json_string_ext(a->left_out,
		    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	/*
	 * The links sent with the INSERT were for the resolve_owner of
	 * store_subscription or apply_invoice.  Left unused, they may have
	 * linked a customer for an event that should link nobody: the
	 * forecast above (what will be stored, which claim) has gone wrong.
	 * Never commit that.
	 */
	if (r == 0 && a->owner_rows != NULL) {
		log_msg("event %s: internal error: the owner links sent with its INSERT went unused",
		    ev->id);
		r = DB_ERROR;
	}
out:
	if (r == 0 && *fatal == OUT_OK)
		r = commit(a);
	if (r != 0 || *fatal != OUT_OK)
		db_rollback(a->db);
	held_drop(&a->held);
	return r;
}

/*
 * The database refused the event's data in a way no redelivery changes
 * (SQLSTATE class 22 or 23): record it unapplied (processed_at NULL),
 * with its payload if that fits, so that Stripe stops redelivering and an
 * operator finds it.  0 or a db_result.
 */
static int
record_unapplied(struct db *db, const struct subscription_event *ev)
{
	char created[24];
	int r, with_payload;

	log_msg("event %s: the database refuses its data: recorded without being applied",
	    ev->id);
	snprintf(created, sizeof(created), "%lld", ev->created);
	for (with_payload = 1; with_payload >= 0; with_payload--) {
		r = (int)DB_QUERY(db, NULL,
		    "INSERT INTO billing_events (stripe_event_id, event_type, occurred_at, payload,"
		    " left_out) VALUES ($1, $2, to_timestamp($3::bigint), $4::jsonb,"
		    " ARRAY['(not applied)']) ON CONFLICT (stripe_event_id) DO NOTHING",
		    ev->id, ev->type, created, with_payload ? ev->raw : NULL);
		if (r != DB_CHECK_VIOLATION)
			break;
	}
	return r;
}

enum outcome
subscription_apply_event(struct db *db, const struct subscription_event *ev,
    struct json_object **reply)
{
	struct apply a;
	enum sync_mode mode;
	enum outcome rc, fatal;
	unsigned kinds;
	int r = DB_ERROR, tries;

	*reply = NULL;
	if ((rc = sync_mode(&mode)) != OUT_OK || (rc = notify_kinds(&kinds)) != OUT_OK)
		return rc;
	for (tries = 0; tries < LIMIT_DB_TRIES; tries++) {
		memset(&a, 0, sizeof(a));
		a.db = db;
		a.ev = ev;
		a.mode = mode;
		fatal = OUT_OK;
		r = apply_once(&a, &fatal);
		db_rows_free(a.row_read);
		db_rows_free(a.owner_rows);
		free(a.event_row);
		free(a.user_recorded);
		free(a.user_id);
		json_object_put(a.left_out);
		if (fatal != OUT_OK)
			return fatal;
		if (r == DB_CHECK_VIOLATION && (r = record_unapplied(db, ev)) == 0) {
			a.ignored = 1;
			break;
		}
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

/*
 * A listing taken at listed_at is older than the row when the row's last
 * event is newer, give or take this much difference between Stripe's
 * clock and ours.  billing-sync stores listed_at minus this margin as the
 * row's last_event_created: an event created before the listing is then
 * older than what is stored (event mode ignores it), and the next sync's
 * listing is not taken for older than the previous one.
 */

/* Columns that are bookkeeping, not Stripe's state: left out of the change record. */
#define NOT_STATE "'id', 'created_at', 'updated_at', 'last_event_created', 'last_event_id'"

enum outcome
subscription_store_listed(struct db *db, struct json_object *sub, long long listed_at,
    const char *source, const char *claimed_user, struct subscription_stored *out)
{
	const char *id = id_of(sub, "id"), *customer = id_of(sub, "customer");
	struct subscription_event ev = { .id = source, .type = "billing-sync",
	    .created = listed_at - LIMIT_SYNC_CLOCK_MARGIN_S, .object = sub };
	struct apply a = { .db = db, .ev = &ev, .mode = SYNC_REFETCH };
	struct sub_row row;
	struct db_rows *rows = NULL;
	char *before = NULL;
	enum outcome fatal = OUT_OK;
	int stored = 0, was_linked, r;

	memset(out, 0, sizeof(*out));
	if (id == NULL) {
		log_msg("listed subscription without a valid id: skipped");
		out->skipped = 1;
		return OUT_OK;
	}
	if ((r = lock_subscription(&a, id)) != 0 || (r = lock_customer(&a, customer, 0)) != 0 ||
	    (r = Q(&a, &rows, "SELECT to_jsonb(s) FROM subscriptions s"
	    " WHERE stripe_subscription_id = $1", id)) != 0)
		goto out;
	if (db_rows_get(rows, 0, 0) != NULL)
		before = mem_strdup(db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	rows = NULL;
	if ((r = customer_owner(&a, customer)) != 0 || (r = read_row(&a, id, &row)) != 0)
		goto out;
	was_linked = a.user_id != NULL;
	free(a.user_id);
	a.user_id = NULL;
	/* claimed_user is the customer's metadata.userId; the subscription's own comes first. */
	if (row.exists && row.has_last && row.last > ev.created) {
		/* A webhook stored a newer state after the listing: refetch mode's own step. */
		out->refetched = 1;
		if ((r = refetch(&a, id, claimed_user, &stored, &fatal)) != 0 || fatal != OUT_OK)
			goto out;
		out->gone = !stored;
	} else if ((r = store_subscription(&a, sub, 1, 0, claimed_user)) != 0) {
		goto out;
	}
	out->skipped = a.ignored;
	if (a.left_out != NULL)
		log_msg("subscription %s: value(s) beyond their column left out: %s", id,
		    paths_json(a.left_out));
	r = Q(&a, &rows,
	    "SELECT (SELECT jsonb_object_agg(k, jsonb_build_array($2::jsonb -> k, x.now -> k))"
	    "  FROM jsonb_object_keys(x.now) AS k WHERE k NOT IN (" NOT_STATE ")"
	    "  AND coalesce($2::jsonb -> k, 'null') IS DISTINCT FROM (x.now -> k)),"
	    " NOT EXISTS (SELECT 1 FROM customers c WHERE c.stripe_customer_id = x.customer)"
	    " FROM (SELECT to_jsonb(s) AS now, s.stripe_customer_id AS customer"
	    "  FROM subscriptions s WHERE stripe_subscription_id = $1) AS x", id, before);
	if (r == 0 && db_rows_count(rows) == 1) {
		out->created = before == NULL;
		out->unlinked = strcmp(db_rows_get(rows, 0, 1), "t") == 0;
		out->linked = customer != NULL && !was_linked && !out->unlinked;
		if (db_rows_get(rows, 0, 0) != NULL &&
		    jsonget_parse(db_rows_get(rows, 0, 0), strlen(db_rows_get(rows, 0, 0)),
		    &out->changes) != OUT_OK)
			r = DB_ERROR;
	}
out:
	free(before);
	free(a.user_id);
	free(a.event_row);
	json_object_put(a.left_out);
	db_rows_free(rows);
	if (fatal != OUT_OK)
		return fatal;
	return r == 0 ? OUT_OK : db_outcome((enum db_result)r);
}

void
subscription_stored_free(struct subscription_stored *out)
{
	if (out == NULL)
		return;
	json_object_put(out->changes);
	out->changes = NULL;
}

void
subscription_columns_of(struct json_object *sub, const char *row_tier, const char *row_interval,
    struct subscription_columns *c)
{
	struct sub_row row;

	memset(&row, 0, sizeof(row));
	if (row_tier != NULL) {
		row.exists = 1;
		snprintf(row.tier, sizeof(row.tier), "%s", row_tier);
		snprintf(row.interval, sizeof(row.interval), "%s", row_interval ? row_interval : "");
	}
	memset(c, 0, sizeof(*c));
	c->status = jsonget_str(sub, "status");
	if (status_rank(c->status) < 0)
		c->status = NULL;
	resolve_plan(sub, &row, &c->tier, &c->interval);
	/* The row's own values, not our copies of them. */
	if (c->tier == row.tier)
		c->tier = row_tier;
	if (c->interval == row.interval)
		c->interval = row_interval;
	/* Periods: the item's (API 2025-03-31 and later), else the subscription's. */
	if (jsonget_path_int(sub, "items.data.0.current_period_end", &c->period_end) == -1 &&
	    jsonget_path_int(sub, "current_period_end", &c->period_end) == -1)
		c->period_end = -1;
	jsonget_bool(sub, "cancel_at_period_end", &c->cancel_at_period_end);
}

enum outcome
subscription_customer_user(struct db *db, const char *customer, char **user)
{
	struct apply a = { .db = db };
	int r;

	r = customer_owner(&a, customer);
	*user = a.user_id;
	return r == 0 ? OUT_OK : db_outcome((enum db_result)r);
}

enum outcome
subscription_lock(struct db *db, const char *stripe_subscription_id)
{
	struct apply a = { .db = db };
	int r;

	if (!stripe_id_valid(stripe_subscription_id))
		return OUT_INTERNAL;
	r = lock_subscription(&a, stripe_subscription_id);
	return r == 0 ? OUT_OK : db_outcome((enum db_result)r);
}

enum outcome
subscription_store_object(struct db *db, struct json_object *sub, long long seen,
    const char *source, const char *user_id)
{
	/*
	 * Stripe's answer to a call made under the lock is its current
	 * state, stored as refetch stores a fetched subscription; `seen`
	 * becomes last_event_created, which events must then be newer than.
	 */
	struct subscription_event ev = { .id = source, .type = "api", .created = seen,
	    .object = sub };
	struct apply a = { .db = db, .ev = &ev, .mode = SYNC_REFETCH };
	const char *id = id_of(sub, "id");
	int r;

	if (id == NULL) {
		log_msg("stripe answered a subscription without a valid id");
		return OUT_STRIPE_ERROR;
	}
	r = lock_subscription(&a, id);
	if (r == 0)
		r = store_subscription(&a, sub, 1, 0, user_id);
	free(a.user_id);
	json_object_put(a.left_out);
	if (r != 0)
		return db_outcome((enum db_result)r);
	return a.ignored ? OUT_STRIPE_ERROR : OUT_OK;
}
