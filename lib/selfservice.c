#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "plan_change.h"
#include "response.h"
#include "selfservice.h"
#include "subscription.h"

static const char *const action_names[SS__MAX] = {
    [SS_CHANGE] = "change",
    [SS_PREVIEW] = "preview",
    [SS_CANCEL] = "cancel",
    [SS_RESUME] = "resume",
};

static const char *const action_choices[] = {"change", "preview", "cancel", "resume", NULL};
static const char *const tier_choices[] = {"basic", "pro", NULL};
static const char *const interval_choices[] = {"monthly", "yearly", NULL};
static const char *const proration_choices[] = {
    "create_prorations",
    "always_invoice",
    "none",
    NULL,
};

/* The POST body, declared once; which members an action needs is checked after. */
static const struct jsonget_field request_fields[] = {
    {"userId", JG_STRING, 1, 1, LIMIT_USER_ID_LEN, NULL},
    {"action", JG_STRING, 1, 1, 16, action_choices},
    {"tier", JG_STRING, 0, 1, 16, tier_choices},
    {"interval", JG_STRING, 0, 1, 16, interval_choices},
    {"proration", JG_STRING, 0, 1, 32, proration_choices},
    {"prorationDate", JG_INT, 0, 1, 253402300799LL, NULL}, /* up to year 9999 */
    {"atPeriodEnd", JG_BOOL, 0, 0, 0, NULL},
};

/* The subscriptions columns the rules and the answer use, in this order. */
#define SUB_COLUMNS                                                                                \
	"s.stripe_subscription_id, s.status, s.tier, s.billing_interval,"                          \
	" s.cancel_at_period_end, extract(epoch FROM s.current_period_start)::bigint,"             \
	" s.price_id, s.unit_amount, s.currency, billing_iso_utc(s.trial_start),"                  \
	" billing_iso_utc(s.trial_end), billing_iso_utc(s.current_period_start),"                  \
	" billing_iso_utc(s.current_period_end), billing_iso_utc(s.canceled_at),"                  \
	" billing_iso_utc(s.ended_at)"

static const char sql_live[] = "SELECT " SUB_COLUMNS " FROM user_live_subscription($1) s";
static const char sql_by_id[] =
    "SELECT " SUB_COLUMNS " FROM subscriptions s WHERE s.stripe_subscription_id = $1";

/* The answer's time members and the columns they come from. */
static const struct {
	const char *name;
	int col;
} time_members[] = {
    {"trialStart", 9},	      {"trialEnd", 10},	  {"currentPeriodStart", 11},
    {"currentPeriodEnd", 12}, {"canceledAt", 13}, {"endedAt", 14},
};

enum outcome
selfservice_parse(struct json_object *body, struct selfservice_request *req, const char **field,
		  const char **why)
{
	const char *action;
	enum plan_proration p;
	enum outcome o;
	int i;

	o = jsonget_validate(body, request_fields,
			     sizeof(request_fields) / sizeof(request_fields[0]), field, why);
	if (o != OUT_OK)
		return o;
	memset(req, 0, sizeof(*req));
	req->user_id = jsonget_str(body, "userId");
	action = jsonget_str(body, "action");
	for (i = 0; i < SS__MAX; i++)
		if (strcmp(action, action_names[i]) == 0)
			req->action = (enum selfservice_action)i;
	req->at_period_end = 1;
	jsonget_bool(body, "atPeriodEnd", &req->at_period_end);
	jsonget_int(body, "prorationDate", &req->proration_date);
	req->proration = jsonget_str(body, "proration");
	if (req->action != SS_CHANGE && req->action != SS_PREVIEW)
		return OUT_OK;
	*why = "is required for this action";
	if (plan_tier_parse(jsonget_str(body, "tier"), &req->tier) == -1) {
		*field = "tier";
		return OUT_INVALID_FIELD;
	}
	if (plan_interval_parse(jsonget_str(body, "interval"), &req->interval) == -1) {
		*field = "interval";
		return OUT_INVALID_FIELD;
	}
	/* Checked here (settings, no database) so a refused behaviour costs nothing. */
	*field = "proration";
	return plan_change_proration(req->proration, &p, why);
}

unsigned
selfservice_actions(const struct selfservice_sub *s)
{
	if (!s->exists || !subscription_status_live(s->status))
		return 0;
	if (s->cancel_at_period_end)
		return 1u << SS_CANCEL | 1u << SS_RESUME; /* cancel now is still possible */
	return 1u << SS_CHANGE | 1u << SS_CANCEL;
}

enum outcome
selfservice_refusal(const struct selfservice_request *req, const struct selfservice_sub *s)
{
	if (!s->exists)
		return OUT_NO_SUBSCRIPTION;
	if (req->action == SS_RESUME && subscription_status_final(s->status))
		return OUT_NOT_RESUMABLE;
	if (!subscription_status_live(s->status))
		return OUT_NO_SUBSCRIPTION;
	switch (req->action) {
	case SS_CHANGE:
	case SS_PREVIEW:
		if (s->cancel_at_period_end)
			return OUT_CANCEL_PENDING;
		if (strcmp(s->tier, plan_tier_name(req->tier)) == 0 &&
		    strcmp(s->interval, plan_interval_name(req->interval)) == 0)
			return OUT_NO_CHANGE;
		return OUT_OK;
	case SS_CANCEL:
		return req->at_period_end && s->cancel_at_period_end ? OUT_NO_CHANGE : OUT_OK;
	case SS_RESUME:
		return s->cancel_at_period_end ? OUT_OK : OUT_NOT_RESUMABLE;
	default:
		return OUT_INTERNAL;
	}
}

const char *
selfservice_proration_date_problem(long long date, long long now, long long period_start)
{
	if (date > now + LIMIT_PRORATION_CLOCK_SKEW_S)
		return "must not be in the future";
	if (date < now - LIMIT_PRORATION_PREVIEW_MAX_AGE_S)
		return "is from a preview older than an hour: preview again";
	if (period_start > 0 && date < period_start)
		return "is before the current billing period: preview again";
	return NULL;
}

/* Copies row 0 of rows into s (exists = 0 without a row). */
static void
sub_from_rows(const struct db_rows *rows, struct selfservice_sub *s)
{
	const char *v;

	memset(s, 0, sizeof(*s));
	if (db_rows_count(rows) < 1 || db_rows_get(rows, 0, 0) == NULL)
		return;
	s->exists = 1;
	snprintf(s->id, sizeof(s->id), "%s", db_rows_get(rows, 0, 0));
	snprintf(s->status, sizeof(s->status), "%s", db_rows_get(rows, 0, 1));
	snprintf(s->tier, sizeof(s->tier), "%s", db_rows_get(rows, 0, 2));
	if ((v = db_rows_get(rows, 0, 3)) != NULL)
		snprintf(s->interval, sizeof(s->interval), "%s", v);
	v = db_rows_get(rows, 0, 4);
	s->cancel_at_period_end = v != NULL && strcmp(v, "t") == 0;
	if ((v = db_rows_get(rows, 0, 5)) != NULL)
		s->period_start = strtoll(v, NULL, 10);
}

static struct json_object *
text_or_null(const char *v)
{
	return v ? json_object_new_string(v) : NULL;
}

/* The answer for user_id from rows of SUB_COLUMNS (no row: status "none"). */
static struct json_object *
state_json(const char *user_id, const struct db_rows *rows)
{
	struct json_object *o = response_object(), *actions;
	struct selfservice_sub s;
	const char *amount;
	unsigned mask;
	size_t i;
	int a;

	sub_from_rows(rows, &s);
	mask = selfservice_actions(&s);
	response_add(o, "userId", json_object_new_string(user_id));
	response_add(o, "subscriptionId", s.exists ? json_object_new_string(s.id) : NULL);
	response_add(o, "tier", json_object_new_string(s.exists ? s.tier : "free"));
	response_add(o, "interval", s.exists ? text_or_null(db_rows_get(rows, 0, 3)) : NULL);
	response_add(o, "status", json_object_new_string(s.exists ? s.status : "none"));
	response_add(o, "priceId", s.exists ? text_or_null(db_rows_get(rows, 0, 6)) : NULL);
	amount = s.exists ? db_rows_get(rows, 0, 7) : NULL;
	response_add(o, "amount", amount ? json_object_new_int64(strtoll(amount, NULL, 10)) : NULL);
	response_add(o, "currency", s.exists ? text_or_null(db_rows_get(rows, 0, 8)) : NULL);
	for (i = 0; i < sizeof(time_members) / sizeof(time_members[0]); i++)
		response_add(o, time_members[i].name,
			     s.exists ? text_or_null(db_rows_get(rows, 0, time_members[i].col))
				      : NULL);
	response_add(o, "cancelAtPeriodEnd", json_object_new_boolean(s.cancel_at_period_end));
	if ((actions = json_object_new_array()) == NULL)
		response_fatal("out of memory");
	for (a = 0; a < SS__MAX; a++)
		if (mask & (1u << a) &&
		    json_object_array_add(actions, json_object_new_string(action_names[a])) != 0)
			response_fatal("out of memory");
	response_add(o, "actions", actions);
	return o;
}

enum outcome
selfservice_read(struct db *db, const char *user_id, struct json_object **body)
{
	struct db_rows *rows = NULL;
	enum db_result r;

	*body = NULL;
	if ((r = DB_QUERY(db, &rows, sql_live, user_id)) != DB_OK)
		return db_outcome(r);
	*body = state_json(user_id, rows);
	db_rows_free(rows);
	return OUT_OK;
}

/* --- actions ------------------------------------------------------------------------ */

/* One action in progress: the transaction is open from find_and_lock to the end. */
struct act {
	struct db *db;
	const struct selfservice_request *req;
	const char *key;	     /* the Idempotency-Key of the changing POST */
	struct selfservice_sub row;  /* as read under the lock */
	struct json_object *current; /* GET /v1/subscriptions/{id}: change, preview */
	const char **why;
};

static enum outcome
read_row(struct act *a)
{
	struct db_rows *rows = NULL;
	char id[sizeof(a->row.id)];
	enum db_result r;

	snprintf(id, sizeof(id), "%s", a->row.id);
	if ((r = DB_QUERY(a->db, &rows, sql_by_id, id)) != DB_OK)
		return db_outcome(r);
	sub_from_rows(rows, &a->row);
	db_rows_free(rows);
	return OUT_OK;
}

/* BEGIN, the user's subscription, its lock, and the row as it is under the lock. */
static enum outcome
find_and_lock(struct act *a)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	enum outcome o;

	if ((r = db_begin(a->db)) != DB_OK ||
	    (r = DB_QUERY(a->db, &rows, sql_live, a->req->user_id)) != DB_OK)
		return db_outcome(r);
	sub_from_rows(rows, &a->row);
	db_rows_free(rows);
	if (!a->row.exists)
		return OUT_NO_SUBSCRIPTION;
	if ((o = subscription_lock(a->db, a->row.id)) != OUT_OK)
		return o;
	return read_row(a);
}

/* Stores what Stripe answered, then reads the row back into a->row. */
static enum outcome
store(struct act *a, struct json_object *sub, const char *source)
{
	enum outcome o;

	o = subscription_store_object(a->db, sub, (long long)time(NULL), source, a->req->user_id);
	return o != OUT_OK ? o : read_row(a);
}

static void
subscription_path(const struct act *a, char *path, size_t n)
{
	snprintf(path, n, "/v1/subscriptions/%s", a->row.id);
}

/* Change and preview need the item id, which only Stripe has: GET, store, look again. */
static enum outcome
refresh(struct act *a)
{
	char path[32 + LIMIT_STRIPE_ID_LEN];
	enum outcome o;

	subscription_path(a, path, sizeof(path));
	if ((o = stripe_get(path, &a->current)) == OUT_NOT_FOUND) {
		log_msg("stripe has no subscription for a live row");
		return OUT_STRIPE_ERROR;
	}
	if (o != OUT_OK || (o = store(a, a->current, "api:retrieve")) != OUT_OK)
		return o;
	return selfservice_refusal(a->req, &a->row);
}

/* The change a->req asks for, on the item of a->current. */
static enum outcome
describe_change(struct act *a, struct plan_change *c, int *interval_changes)
{
	enum plan_interval now_interval;
	const char *item = jsonget_path_str(a->current, "items.data.0.id");

	memset(c, 0, sizeof(*c));
	c->subscription = a->row.id;
	if ((c->price = plan_price_id(a->req->tier, a->req->interval)) == NULL) {
		log_msg("setting STRIPE_PRICE_%s_%s is not set",
			a->req->tier == TIER_PRO ? "PRO" : "BASIC",
			a->req->interval == INTERVAL_YEARLY ? "YEARLY" : "MONTHLY");
		return OUT_MISCONFIGURED;
	}
	if (!stripe_id_valid(item)) {
		log_msg("stripe subscription without an item id");
		return OUT_STRIPE_ERROR;
	}
	c->item = item;
	if (plan_change_proration(a->req->proration, &c->proration, a->why) != OUT_OK)
		return OUT_MISCONFIGURED; /* the request's own was checked by selfservice_parse */
	*interval_changes =
	    plan_interval_parse(
		jsonget_path_str(a->current, "items.data.0.price.recurring.interval"),
		&now_interval) == 0 &&
	    now_interval != a->req->interval;
	if (a->req->proration_date != 0 &&
	    (*a->why = selfservice_proration_date_problem(
		 a->req->proration_date, (long long)time(NULL), a->row.period_start)) != NULL)
		return OUT_INVALID_FIELD;
	c->proration_date = a->req->proration_date;
	return OUT_OK;
}

/*
 * POST f to the subscription.  A replay under the client's key answers the
 * object as it was at the first request, which may have changed since (the
 * retry of a change that came after another one): storing that would undo
 * the later change in our row, so Stripe's current state is fetched instead.
 */
static enum outcome
post_subscription(struct act *a, const struct form *f, struct json_object **sub)
{
	char path[32 + LIMIT_STRIPE_ID_LEN];
	enum outcome o;
	int replayed = 0;

	subscription_path(a, path, sizeof(path));
	o = stripe_post_replayed(path, f, a->key, sub, &replayed);
	if (o != OUT_OK || !replayed)
		return o;
	log_note("replayed", "yes");
	json_object_put(*sub);
	*sub = NULL;
	o = stripe_get(path, sub);
	return o == OUT_NOT_FOUND ? OUT_STRIPE_ERROR : o;
}

static enum outcome
change(struct act *a, struct json_object **sub)
{
	struct plan_change c;
	struct form f;
	enum outcome o;
	int interval_changes;

	form_init(&f);
	if ((o = describe_change(a, &c, &interval_changes)) == OUT_OK) {
		if (plan_change_update_params(&f, &c) == -1)
			o = OUT_INTERNAL;
		else
			o = post_subscription(a, &f, sub);
	}
	form_free(&f);
	return o;
}

/* One create_preview call for c under behaviour; a random key: a preview changes nothing. */
static enum outcome
preview_invoice(const struct plan_change *c, enum plan_proration behaviour,
		struct json_object **inv)
{
	struct form f;
	char *key = stripe_random_idempotency_key("preview");
	enum outcome o = OUT_INTERNAL;

	form_init(&f);
	if (plan_change_preview_params(&f, c, behaviour) == 0)
		o = stripe_post("/v1/invoices/create_preview", &f, key, inv);
	form_free(&f);
	free(key);
	return o;
}

static enum outcome
preview(struct act *a, struct json_object **answer)
{
	struct json_object *inv = NULL, *renewal = NULL;
	struct plan_change c;
	enum plan_proration first;
	enum outcome o;
	int interval_changes, now, trialing = strcmp(a->row.status, "trialing") == 0;

	if ((o = describe_change(a, &c, &interval_changes)) != OUT_OK)
		return o;
	if (c.proration_date == 0)
		c.proration_date = (long long)time(NULL);
	now = plan_change_invoiced_now(c.proration, interval_changes, trialing);
	/* always_invoice in a trial prorates nothing: the next invoice is what it changes. */
	first = !now && c.proration == PRORATION_ALWAYS_INVOICE ? PRORATION_CREATE : c.proration;
	if ((o = preview_invoice(&c, first, &inv)) == OUT_OK && now && !interval_changes)
		o = preview_invoice(&c, PRORATION_NONE, &renewal);
	if (o == OUT_OK)
		o = plan_change_preview_answer(inv, renewal, now, c.proration, c.proration_date,
					       answer);
	json_object_put(inv);
	json_object_put(renewal);
	return o;
}

static enum outcome
cancel_now(struct act *a, struct json_object **sub)
{
	char path[32 + LIMIT_STRIPE_ID_LEN];
	struct form f;
	int prorate = 0, invoice_now = 0;
	enum outcome o;

	form_init(&f);
	if (config_get_bool("STRIPE_CANCEL_NOW_PRORATE", 0, &prorate) != OUT_OK ||
	    config_get_bool("STRIPE_CANCEL_NOW_INVOICE_NOW", 0, &invoice_now) != OUT_OK) {
		o = OUT_MISCONFIGURED;
		goto out;
	}
	if (form_add(&f, "prorate", prorate ? "true" : "false") == -1 ||
	    form_add(&f, "invoice_now", invoice_now ? "true" : "false") == -1) {
		o = OUT_INTERNAL;
		goto out;
	}
	subscription_path(a, path, sizeof(path));
	o = stripe_delete(path, &f, sub);
	if (o == OUT_NOT_FOUND) {
		/*
		 * Stripe answers a canceled subscription like an unknown one: a
		 * retried DELETE whose first answer was lost, or a cancellation
		 * we had not heard of.  Either way its current state says.
		 */
		o = stripe_get(path, sub);
		if (o == OUT_OK && !subscription_status_final(jsonget_str(*sub, "status"))) {
			log_msg(
			    "stripe DELETE answered 404 for a subscription that is not canceled");
			o = OUT_STRIPE_ERROR;
		} else if (o == OUT_NOT_FOUND)
			o = OUT_STRIPE_ERROR;
	}
out:
	form_free(&f);
	return o;
}

/* cancel_at_period_end on (cancel) or off (resume). */
static enum outcome
set_cancel_at_period_end(struct act *a, int on, struct json_object **sub)
{
	struct form f;
	enum outcome o = OUT_INTERNAL;

	form_init(&f);
	if (form_add(&f, "cancel_at_period_end", on ? "true" : "false") == 0)
		o = post_subscription(a, &f, sub);
	form_free(&f);
	return o;
}

/* The Stripe call of the action and the source name for last_event_id. */
static enum outcome
perform(struct act *a, struct json_object **sub, const char **source)
{
	switch (a->req->action) {
	case SS_CHANGE:
		*source = "api:change";
		return change(a, sub);
	case SS_CANCEL:
		*source = a->req->at_period_end ? "api:cancel" : "api:cancel_now";
		return a->req->at_period_end ? set_cancel_at_period_end(a, 1, sub)
					     : cancel_now(a, sub);
	case SS_RESUME:
		*source = "api:resume";
		return set_cancel_at_period_end(a, 0, sub);
	default:
		return OUT_INTERNAL;
	}
}

/* The answer: the row acted on, as it is about to be committed. */
static enum outcome
state_answer(struct act *a, struct json_object **body)
{
	struct db_rows *rows = NULL;
	enum db_result r;

	if ((r = DB_QUERY(a->db, &rows, sql_by_id, a->row.id)) != DB_OK)
		return db_outcome(r);
	*body = state_json(a->req->user_id, rows);
	db_rows_free(rows);
	return OUT_OK;
}

/* A refusal by the rules, as opposed to a failure. */
static int
is_refusal(enum outcome o)
{
	return o == OUT_NO_SUBSCRIPTION || o == OUT_CANCEL_PENDING || o == OUT_NO_CHANGE ||
	       o == OUT_NOT_RESUMABLE;
}

enum outcome
selfservice_act(struct db *db, const struct selfservice_request *req, const char *idempotency_key,
		struct json_object **body, const char **why)
{
	struct act a = {.db = db, .req = req, .key = idempotency_key, .why = why};
	struct json_object *sub = NULL;
	const char *source = NULL;
	enum outcome o, answer = OUT_OK;
	enum db_result r;

	*body = NULL;
	log_note("action", action_names[req->action]);
	if ((o = find_and_lock(&a)) != OUT_OK || (o = selfservice_refusal(req, &a.row)) != OUT_OK)
		goto out;
	log_note("subscription", a.row.id);
	if (req->action == SS_CHANGE || req->action == SS_PREVIEW) {
		o = refresh(&a);
		if (is_refusal(o)) {
			/* Stripe's current state refuses it: keep what we learnt, answer that. */
			answer = o;
			goto commit;
		}
		if (o != OUT_OK)
			goto out;
	}
	if (req->action == SS_PREVIEW) {
		if ((o = preview(&a, body)) != OUT_OK)
			goto out;
		goto commit;
	}
	if ((o = perform(&a, &sub, &source)) == OUT_STRIPE_ERROR && a.current == NULL &&
	    is_refusal(answer = refresh(&a))) {
		/*
		 * Stripe refused a cancel or resume that our row allowed: the row
		 * was behind (ended at Stripe, its event missed).  The state just
		 * stored says what to answer.
		 */
		goto commit;
	}
	answer = OUT_OK;
	if (o != OUT_OK || (o = store(&a, sub, source)) != OUT_OK ||
	    (o = state_answer(&a, body)) != OUT_OK)
		goto out;
	/* pending_if_incomplete: the payment failed and Stripe kept the old items. */
	if (jsonget_obj(sub, "pending_update") != NULL) {
		log_note("pending_update", "yes");
		answer = OUT_PAYMENT_FAILED;
	}
commit:
	if ((r = db_commit(db)) != DB_OK) {
		o = db_outcome(r);
		goto out;
	}
	o = answer;
out:
	if (o != OUT_OK && o != OUT_PAYMENT_FAILED) {
		db_rollback(db);
		json_object_put(*body);
		*body = NULL;
	}
	json_object_put(sub);
	json_object_put(a.current);
	return o;
}
