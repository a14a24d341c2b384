#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "db.h"
#include "drift.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "stripe.h"
#include "subscription.h"


struct drift {
	struct db *db;
	struct json_object *seen;	/* ids Stripe listed (a set) */
	struct json_object *differs, *missing_locally, *missing_in_stripe;
	long stripe, database;
	char *listing_started;	/* the database's now() before the first page, as text */
};

static struct json_object *
str_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* Unix seconds as RFC 3339 UTC, or null (negative: none). */
static struct json_object *
time_json(long long t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char buf[32];

	if (t < 0 || gmtime_r(&tt, &tm) == NULL ||
	    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		return NULL;
	return json_object_new_string(buf);
}

/* Adds {"database": a, "stripe": b} under name when they differ (takes both). */
static void
compare(struct json_object *fields, const char *name, struct json_object *a,
    struct json_object *b)
{
	struct json_object *pair;

	if (json_object_equal(a, b)) {
		json_object_put(a);
		json_object_put(b);
		return;
	}
	pair = json_object_new_object();
	json_object_object_add(pair, "database", a);
	json_object_object_add(pair, "stripe", b);
	json_object_object_add(fields, name, pair);
}

static struct json_object *
entry(const char *id, const char *customer, const char *status)
{
	struct json_object *e = json_object_new_object();

	json_object_object_add(e, "id", json_object_new_string(id));
	json_object_object_add(e, "customer", str_or_null(customer));
	if (status != NULL)
		json_object_object_add(e, "status", json_object_new_string(status));
	return e;
}

/* One listed subscription against its row.  -1 on a database failure. */
static int
compare_one(struct drift *d, struct json_object *sub)
{
	const char *id = jsonget_str(sub, "id"), *customer = jsonget_str(sub, "customer");
	struct subscription_columns c;
	struct json_object *fields, *e;
	struct db_rows *rows = NULL;
	const char *pe;

	if (!stripe_id_valid(id))
		return 0;
	if (!stripe_id_valid(customer))
		customer = NULL;
	d->stripe++;
	json_object_object_add(d->seen, id, NULL);
	if (DB_QUERY(d->db, &rows, "SELECT status, tier, billing_interval,"
	    " extract(epoch FROM current_period_end)::bigint, cancel_at_period_end"
	    " FROM subscriptions WHERE stripe_subscription_id = $1", id) != DB_OK)
		return -1;
	if (db_rows_count(rows) == 0) {
		json_object_array_add(d->missing_locally, entry(id, customer,
		    jsonget_str(sub, "status")));
		db_rows_free(rows);
		return 0;
	}
	subscription_columns_of(sub, db_rows_get(rows, 0, 1), db_rows_get(rows, 0, 2), &c);
	fields = json_object_new_object();
	compare(fields, "status", str_or_null(db_rows_get(rows, 0, 0)), str_or_null(c.status));
	compare(fields, "tier", str_or_null(db_rows_get(rows, 0, 1)), str_or_null(c.tier));
	compare(fields, "interval", str_or_null(db_rows_get(rows, 0, 2)), str_or_null(c.interval));
	pe = db_rows_get(rows, 0, 3);
	compare(fields, "current_period_end", time_json(pe ? strtoll(pe, NULL, 10) : -1),
	    time_json(c.period_end));
	compare(fields, "cancel_at_period_end",
	    json_object_new_boolean(strcmp(db_rows_get(rows, 0, 4), "t") == 0),
	    json_object_new_boolean(c.cancel_at_period_end));
	if (json_object_object_length(fields) > 0) {
		e = entry(id, customer, NULL);
		json_object_object_add(e, "fields", fields);
		json_object_array_add(d->differs, e);
	} else {
		json_object_put(fields);
	}
	db_rows_free(rows);
	return 0;
}

/*
 * Rows whose subscription Stripe did not list.  A row written after the
 * listing began (a checkout's webhook meanwhile) may be of a subscription
 * newer than the pages already read: not judged.  -1 on a database failure.
 */
static int
compare_reverse(struct drift *d)
{
	struct db_rows *rows = NULL;
	char after[24] = "0";
	int i, n;

	do {
		if (DB_QUERY(d->db, &rows, "SELECT id, stripe_subscription_id, stripe_customer_id,"
		    " status, created_at < $2::timestamptz FROM subscriptions WHERE id > $1::bigint"
		    " ORDER BY id LIMIT " LIMIT_SYNC_LOCAL_BATCH, after, d->listing_started) != DB_OK)
			return -1;
		n = db_rows_count(rows);
		for (i = 0; i < n; i++) {
			d->database++;
			if (strcmp(db_rows_get(rows, i, 4), "t") == 0 &&
			    !json_object_object_get_ex(d->seen, db_rows_get(rows, i, 1), NULL))
				json_object_array_add(d->missing_in_stripe, entry(db_rows_get(rows, i,
				    1), db_rows_get(rows, i, 2), db_rows_get(rows, i, 3)));
		}
		if (n > 0)
			snprintf(after, sizeof(after), "%s", db_rows_get(rows, n - 1, 0));
		db_rows_free(rows);
		rows = NULL;
	} while (n > 0);
	return 0;
}

/* The member as text for a report line ("null" when absent or null). */
static const char *
text_of(struct json_object *obj, const char *name)
{
	struct json_object *v = NULL;

	return json_object_object_get_ex(obj, name, &v) && v ? json_object_get_string(v) : "null";
}

/* The report for people: one line per subscription. */
static void
print_text(const struct drift *d)
{
	struct json_object *e;
	size_t i, n;

	n = json_object_array_length(d->differs);
	for (i = 0; i < n; i++) {
		e = json_object_array_get_idx(d->differs, i);
		printf("%s (%s):", jsonget_str(e, "id"), text_of(e, "customer"));
		json_object_object_foreach(jsonget_obj(e, "fields"), name, pair)
			printf(" %s database=%s stripe=%s;", name, text_of(pair, "database"),
			    text_of(pair, "stripe"));
		printf("\n");
	}
	n = json_object_array_length(d->missing_locally);
	for (i = 0; i < n; i++) {
		e = json_object_array_get_idx(d->missing_locally, i);
		printf("%s (%s): in Stripe (status %s), not in the database\n",
		    jsonget_str(e, "id"), text_of(e, "customer"), text_of(e, "status"));
	}
	n = json_object_array_length(d->missing_in_stripe);
	for (i = 0; i < n; i++) {
		e = json_object_array_get_idx(d->missing_in_stripe, i);
		printf("%s (%s): in the database (status %s), not in Stripe\n",
		    jsonget_str(e, "id"), text_of(e, "customer"), text_of(e, "status"));
	}
}

static void
print_json(const struct drift *d, int drifted)
{
	struct json_object *root = json_object_new_object();

	json_object_object_add(root, "drift", json_object_new_boolean(drifted));
	json_object_object_add(root, "stripe", json_object_new_int64(d->stripe));
	json_object_object_add(root, "database", json_object_new_int64(d->database));
	json_object_object_add(root, "differs", json_object_get(d->differs));
	json_object_object_add(root, "missing_locally", json_object_get(d->missing_locally));
	json_object_object_add(root, "missing_in_stripe", json_object_get(d->missing_in_stripe));
	printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
	    JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(root);
}

int
drift_check(struct db *db, const struct sync_options *o)
{
	struct drift d = { .db = db };
	struct json_object *page = NULL, *data = NULL;
	struct db_rows *rows = NULL;
	char *after = NULL;
	long long listed_at;
	long pages = 0;
	int has_more = 1, status = SYNC_EXIT_ERROR, drifted = 0;
	size_t i, n;

	d.seen = json_object_new_object();
	d.differs = json_object_new_array();
	d.missing_locally = json_object_new_array();
	d.missing_in_stripe = json_object_new_array();
	if (!d.seen || !d.differs || !d.missing_locally || !d.missing_in_stripe)
		goto out;
	if (db_exec(d.db, &rows, "SELECT now()", 0, NULL) != DB_OK)
		goto out;
	d.listing_started = mem_strdup(db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	rows = NULL;
	while (has_more) {
		if (sync_subscriptions_page(NULL, -1, after, &page, &data, &has_more,
		    &listed_at) != OUT_OK)
			goto out;
		pages++;
		n = json_object_array_length(data);
		for (i = 0; i < n; i++)
			if (compare_one(&d, json_object_array_get_idx(data, i)) != 0)
				goto out;
		if (n == 0 || !stripe_id_valid(jsonget_str(json_object_array_get_idx(data, n - 1),
		    "id")))
			break;
		free(after);
		after = mem_strdup(jsonget_str(json_object_array_get_idx(data, n - 1), "id"));
		json_object_put(page);
		page = NULL;
		if (o->progress)
			fprintf(stderr, "billing-sync: check: page %ld, %ld subscriptions, %zu"
			    " differ\n", pages, d.stripe, json_object_array_length(d.differs));
	}
	if (compare_reverse(&d) != 0)
		goto out;
	drifted = json_object_array_length(d.differs) + json_object_array_length(
	    d.missing_locally) + json_object_array_length(d.missing_in_stripe) > 0;
	if (o->json)
		print_json(&d, drifted);
	else
		print_text(&d);
	fflush(stdout);
	status = drifted ? SYNC_EXIT_ATTENTION : SYNC_EXIT_OK;
out:
	log_msg("check stripe=%ld database=%ld differs=%zu missing_locally=%zu"
	    " missing_in_stripe=%zu pages=%ld requests=%lu ms=%ld exit=%d", d.stripe, d.database,
	    d.differs ? json_object_array_length(d.differs) : 0,
	    d.missing_locally ? json_object_array_length(d.missing_locally) : 0,
	    d.missing_in_stripe ? json_object_array_length(d.missing_in_stripe) : 0, pages,
	    stripe_requests_sent(), log_elapsed_ms(), status);
	json_object_put(page);
	json_object_put(d.seen);
	json_object_put(d.differs);
	json_object_put(d.missing_locally);
	json_object_put(d.missing_in_stripe);
	free(d.listing_started);
	free(after);
	return status;
}
