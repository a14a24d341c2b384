#define _GNU_SOURCE	/* strptime, timegm */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "auth.h"
#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "stripe.h"
#include "subscription.h"
#include "sync.h"


/*
 * Stripe calls outside a transaction (list pages, customers) may wait out
 * a rate limit; those inside one (the refetch of a subscription under its
 * lock, an event in refetch mode) keep to the request budget that
 * DB_IDLE_IN_TRANSACTION_TIMEOUT_MS is sized for.  Both are paced.
 */
static struct stripe_policy patient, brief;

/* One run of subscriptions or events (a sync_runs row this process owns). */
struct run {
	struct db *db;
	const struct sync_options *o;
	const char *command;
	char id[24];		/* sync_runs.id */
	char host[256];
	char owner[300];	/* host:pid */
	char *cursor;		/* id of the last object handled, NULL: none yet */
	long long since;	/* the run's own bound (-1: none) */
	struct json_object *asked;	/* customers fetched this run (a set) */
	struct json_object *reported;	/* customers reported as unlinked (a set) */
	long pages, objects, created, updated, unchanged, refetched, gone, skipped;
	long linked, unlinked, missing, applied, duplicates, ignored;
};

int
sync_parse_since(const char *arg, long long now, long long *out)
{
	struct tm tm, back;
	const char *end;
	char *e;
	long long n;
	size_t len;
	time_t t;

	if (arg == NULL || *arg < '0' || *arg > '9')
		return -1;
	len = strlen(arg);
	errno = 0;
	n = strtoll(arg, &e, 10);
	if (errno == 0 && e[0] != '\0' && e[1] == '\0' && n <= 100L * 365 * 24 * 60) {
		if (*e == 'm')
			n *= 60;
		else if (*e == 'h')
			n *= 3600;
		else if (*e == 'd')
			n *= 86400;
		else
			return -1;
		*out = now - n;
		return 0;
	}
	/* Exactly YYYY-MM-DD[THH:MM:SSZ]: strptime alone accepts "2026-1-5". */
	if ((len != 10 && len != 20) || arg[4] != '-' || arg[7] != '-')
		return -1;
	memset(&tm, 0, sizeof(tm));
	end = strptime(arg, "%Y-%m-%d", &tm);
	if (end != NULL && *end == 'T')
		end = strptime(end, "T%H:%M:%SZ", &tm);
	if (end == NULL || *end != '\0')
		return -1;
	/*
	 * strptime takes any day up to 31 and second up to 61 and timegm
	 * rolls them over ("2026-02-30" would be March 2nd): a date that
	 * does not come back as written is no date.  A time still to come
	 * selects nothing, so it is a mistake too (2027 for 2026).
	 */
	back = tm;
	if ((t = timegm(&tm)) == (time_t)-1 || tm.tm_mday != back.tm_mday ||
	    tm.tm_mon != back.tm_mon || tm.tm_hour != back.tm_hour ||
	    tm.tm_min != back.tm_min || tm.tm_sec != back.tm_sec || (long long)t > now)
		return -1;
	*out = (long long)t;
	return 0;
}

enum outcome
sync_setup(void)
{
	struct stripe_policy p = {
		.tries = LIMIT_SYNC_TRIES,
		.call_ms = LIMIT_SYNC_CALL_MS,
		.try_ms = LIMIT_SYNC_TRY_MS,
		.backoff_cap_ms = LIMIT_SYNC_BACKOFF_MS,
		.retry_after_max_ms = LIMIT_SYNC_RETRY_AFTER_MS,
		.max_response = LIMIT_SYNC_RESPONSE,
	};
	struct stripe_policy q = stripe_request_policy;
	long rps;
	enum outcome rc;

	if ((rc = config_get_long("SYNC_MAX_RPS", LIMIT_SYNC_MAX_RPS_DEFAULT, 1, LIMIT_SYNC_MAX_RPS,
	    &rps)) != OUT_OK)
		return rc;
	p.interval_ms = q.interval_ms = (1000 + rps - 1) / rps;
	patient = p;
	brief = q;
	stripe_set_policy(&patient);
	return OUT_OK;
}

/* Begins a transaction during which Stripe calls keep to a request's budget. */
static int
begin(struct run *r)
{
	if (db_begin(r->db) != DB_OK)
		return -1;
	stripe_set_policy(&brief);
	return 0;
}

/* After commit or rollback: Stripe calls may wait again. */
static void
ended(void)
{
	stripe_set_policy(&patient);
}

/* "2026-11-24T12:00:00Z", or "-" for a negative time. */
static const char *
iso_utc(long long t, char *buf, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t < 0 || gmtime_r(&tt, &tm) == NULL ||
	    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, n, "-");
	return buf;
}

/* ---- runs: claim, cursor, end ------------------------------------------- */

/* Whether the process named owner ("host:pid") may still be working on a run. */
static int
owner_alive(const struct run *r, const char *owner, long long silent_s)
{
	const char *colon;
	long pid;

	if (owner == NULL || silent_s > LIMIT_SYNC_LEASE_S)
		return 0;
	colon = strrchr(owner, ':');
	if (colon == NULL || (size_t)(colon - owner) != strlen(r->host) ||
	    strncmp(owner, r->host, strlen(r->host)) != 0)
		return 1;	/* another machine: only its silence tells */
	pid = strtol(colon + 1, NULL, 10);
	return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/*
 * Takes this command's open run over when it covers what we are asked for
 * (same scope, its since not later than ours) and its owner is gone, or
 * starts a new one (abandoning an open run that covers less).  1 claimed,
 * 0 another process is working on it, -1 database failure.
 */
static int
run_claim(struct run *r, const char *scope, long long since)
{
	struct db_rows *rows = NULL;
	const char *old_id, *old_scope, *old_since, *owner, *silent;
	char since_buf[24], *since_arg = NULL;
	int ret = -1, covers;
	enum db_result dr;

	if (gethostname(r->host, sizeof(r->host)) != 0)
		snprintf(r->host, sizeof(r->host), "localhost");
	r->host[sizeof(r->host) - 1] = '\0';
	snprintf(r->owner, sizeof(r->owner), "%s:%ld", r->host, (long)getpid());
	r->since = since;
	if (since >= 0) {
		snprintf(since_buf, sizeof(since_buf), "%lld", since);
		since_arg = since_buf;
	}
	if (db_begin(r->db) != DB_OK ||
	    DB_QUERY(r->db, &rows, "SELECT id, scope, extract(epoch FROM since)::bigint, cursor,"
	    " owner, extract(epoch FROM now() - heartbeat_at)::bigint FROM sync_runs"
	    " WHERE command = $1 AND finished_at IS NULL FOR UPDATE", r->command) != DB_OK)
		goto out;
	if (db_rows_count(rows) == 1) {
		old_id = db_rows_get(rows, 0, 0);
		old_scope = db_rows_get(rows, 0, 1);
		old_since = db_rows_get(rows, 0, 2);
		owner = db_rows_get(rows, 0, 4);
		silent = db_rows_get(rows, 0, 5);
		if (owner_alive(r, owner, strtoll(silent, NULL, 10))) {
			log_msg("%s run %s is in progress (%s, heard from %s s ago): nothing to do",
			    r->command, old_id, owner, silent);
			ret = 0;
			goto out;
		}
		covers = strcmp(old_scope, scope) == 0 && (old_since == NULL ||
		    (since >= 0 && strtoll(old_since, NULL, 10) <= since));
		if (covers) {
			if (DB_QUERY(r->db, NULL, "UPDATE sync_runs SET owner = $2, heartbeat_at = now(),"
			    " resumed = resumed + 1, last_error = NULL WHERE id = $1::bigint", old_id,
			    r->owner) != DB_OK)
				goto out;
			snprintf(r->id, sizeof(r->id), "%s", old_id);
			if (db_rows_get(rows, 0, 3) != NULL)
				r->cursor = mem_strdup(db_rows_get(rows, 0, 3));
			r->since = old_since ? strtoll(old_since, NULL, 10) : -1;
			log_msg("%s run %s continued after %s", r->command, r->id,
			    r->cursor ? r->cursor : "its start");
			ret = db_commit(r->db) == DB_OK ? 1 : -1;
			goto out;
		}
		if (DB_QUERY(r->db, NULL, "UPDATE sync_runs SET finished_at = now(),"
		    " outcome = 'abandoned', owner = NULL WHERE id = $1::bigint", old_id) != DB_OK)
			goto out;
		log_msg("%s run %s abandoned: it did not cover what this run asks for", r->command,
		    old_id);
	}
	db_rows_free(rows);
	rows = NULL;
	dr = DB_QUERY(r->db, &rows, "INSERT INTO sync_runs (command, scope, since, owner)"
	    " VALUES ($1, $2, to_timestamp($3::bigint), $4) RETURNING id", r->command, scope,
	    since_arg, r->owner);
	if (dr == DB_UNIQUE_VIOLATION) {
		log_msg("%s: another process started a run just now: nothing to do", r->command);
		ret = 0;
		goto out;
	}
	if (dr != DB_OK)
		goto out;
	snprintf(r->id, sizeof(r->id), "%s", db_rows_get(rows, 0, 0));
	ret = db_commit(r->db) == DB_OK ? 1 : -1;
out:
	if (ret != 1)
		db_rollback(r->db);
	db_rows_free(rows);
	return ret;
}

/*
 * In the transaction of the object it handled: the cursor moves to id
 * (NULL: stays), the counters too.  -1 when the run is no longer ours
 * (taken over by another process) or the database failed.
 */
static int
run_step(struct run *r, const char *id, int objects, int changes)
{
	struct db_rows *rows = NULL;
	char o[12], c[12];
	int ok;

	snprintf(o, sizeof(o), "%d", objects);
	snprintf(c, sizeof(c), "%d", changes);
	ok = DB_QUERY(r->db, &rows, "UPDATE sync_runs SET cursor = coalesce($3, cursor),"
	    " heartbeat_at = now(), objects = objects + $4::integer, changes = changes + $5::integer"
	    " WHERE id = $1::bigint AND owner = $2 RETURNING id", r->id, r->owner, id, o, c) ==
	    DB_OK && db_rows_count(rows) == 1;
	if (ok && id != NULL) {
		free(r->cursor);
		r->cursor = mem_strdup(id);
	}
	if (!ok)
		log_msg("%s run %s: the run is no longer ours, or the database failed", r->command,
		    r->id);
	db_rows_free(rows);
	return ok ? 0 : -1;
}

/* A page was read: counted, and the run shows it is alive. */
static int
run_page(struct run *r)
{
	r->pages++;
	return DB_QUERY(r->db, NULL, "UPDATE sync_runs SET pages = pages + 1, heartbeat_at = now()"
	    " WHERE id = $1::bigint AND owner = $2", r->id, r->owner) == DB_OK ? 0 : -1;
}

/* The run is done, or (error) left for the next process to continue. */
static void
run_end(struct run *r, const char *error)
{
	if (r->id[0] == '\0')
		return;
	db_rollback(r->db);
	if (error != NULL) {
		if (DB_QUERY(r->db, NULL, "UPDATE sync_runs SET owner = NULL, last_error = $3"
		    " WHERE id = $1::bigint AND owner = $2", r->id, r->owner, error) != DB_OK)
			log_msg("%s run %s: could not record the error", r->command, r->id);
		return;
	}
	if (DB_QUERY(r->db, NULL, "UPDATE sync_runs SET finished_at = now(), outcome = 'done',"
	    " owner = NULL WHERE id = $1::bigint AND owner = $2", r->id, r->owner) != DB_OK ||
	    DB_QUERY(r->db, NULL, "DELETE FROM sync_seen WHERE run_id = $1::bigint", r->id) != DB_OK)
		log_msg("%s run %s: could not record its end", r->command, r->id);
}

static void
run_free(struct run *r)
{
	free(r->cursor);
	json_object_put(r->asked);
	json_object_put(r->reported);
}

/* Whether key is in set; adds it. */
static int
set_seen(struct json_object **set, const char *key)
{
	if (*set == NULL)
		*set = json_object_new_object();
	if (*set == NULL)
		return 0;
	if (json_object_object_get_ex(*set, key, NULL))
		return 1;
	json_object_object_add(*set, key, NULL);
	return 0;
}

/* ---- subscriptions -------------------------------------------------------- */

/* The query of one page of every subscription (status=all), optionally filtered. */
static int
subscriptions_query(struct form *f, const char *customer, long long since, const char *after)
{
	form_init(f);
	if (form_add(f, "status", "all") == -1 || form_add_long(f, "limit", LIMIT_SYNC_PAGE) == -1 ||
	    (customer && form_add(f, "customer", customer) == -1) ||
	    (since >= 0 && form_add_long(f, "created[gte]", since) == -1) ||
	    (after && form_add(f, "starting_after", after) == -1))
		return -1;
	return 0;
}

enum outcome
sync_subscriptions_page(const char *customer, long long since, const char *after,
    struct json_object **page, struct json_object **data, int *has_more, long long *listed_at)
{
	struct form f;
	enum outcome rc = OUT_INTERNAL;

	*listed_at = (long long)time(NULL);
	if (subscriptions_query(&f, customer, since, after) == 0)
		rc = stripe_list("/v1/subscriptions", &f, page, data, has_more);
	form_free(&f);
	return rc;
}

/*
 * The user a customer's own metadata.userId names, when customers links
 * the customer to nobody yet: GET /v1/customers/<id>, once per customer
 * and run.  OUT_OK and *user (caller frees; NULL: none).
 */
static enum outcome
customer_claim(struct run *r, const char *customer, char **user)
{
	struct json_object *obj = NULL;
	char path[300];
	const char *v;
	char *linked = NULL;
	enum outcome rc;

	*user = NULL;
	if (set_seen(&r->asked, customer))
		return OUT_OK;
	if ((rc = subscription_customer_user(r->db, customer, &linked)) != OUT_OK || linked) {
		free(linked);
		return rc;
	}
	snprintf(path, sizeof(path), "/v1/customers/%s", customer);
	rc = stripe_get(path, &obj);
	if (rc == OUT_NOT_FOUND) {
		log_msg("customer %s not found at Stripe", customer);
		return OUT_OK;
	}
	if (rc != OUT_OK)
		return rc;
	v = jsonget_path_str(obj, "metadata.userId");
	if (v != NULL && auth_user_id_valid(v))
		*user = mem_strdup(v);
	json_object_put(obj);
	return OUT_OK;
}

/* A sync_changes row, in the current transaction. */
static int
record_change(struct run *r, const char *kind, const char *sub, const char *customer,
    const char *user, struct json_object *changes, const char *reason)
{
	const char *text = changes ? json_object_to_json_string_ext(changes,
	    JSON_C_TO_STRING_PLAIN) : NULL;

	return DB_QUERY(r->db, NULL, "INSERT INTO sync_changes (run_id, kind,"
	    " stripe_subscription_id, stripe_customer_id, user_id, changes, reason)"
	    " VALUES ($1::bigint, $2, $3, $4, $5, $6::jsonb, $7)", r->id, kind, sub, customer, user,
	    text, reason) == DB_OK ? 0 : -1;
}

/* Stores one listed subscription in its own transaction.  0, or -1: the run stops. */
static int
handle_subscription(struct run *r, struct json_object *sub, long long listed_at)
{
	const char *id = jsonget_str(sub, "id"), *customer = jsonget_str(sub, "customer");
	const char *claimed = jsonget_path_str(sub, "metadata.userId");
	const char *why = "metadata.userId of the subscription", *reason;
	struct subscription_stored st = { 0 };
	char *fetched = NULL, source[320];
	enum outcome rc;
	int ret = -1;

	if (!stripe_id_valid(id)) {
		log_msg("a listed subscription without a valid id: skipped");
		r->skipped++;
		return 0;
	}
	if (!stripe_id_valid(customer))
		customer = NULL;
	if (claimed == NULL && customer != NULL) {
		if ((rc = customer_claim(r, customer, &fetched)) != OUT_OK)
			goto out;
		claimed = fetched;
		why = "metadata.userId of the customer";
	}
	/*
	 * No wait for the commit's flush: a crash can lose only the last few
	 * commits, and with each its cursor step, so they are redone.
	 */
	if (begin(r) != 0 ||
	    db_exec(r->db, NULL, "SET LOCAL synchronous_commit TO off", 0, NULL) != DB_OK)
		goto out;
	/* last_event_id, and the event id of an ownership conflict it records. */
	snprintf(source, sizeof(source), "sync:%s:%s", r->id, id);
	if ((rc = subscription_store_listed(r->db, sub, listed_at, source, claimed, &st)) !=
	    OUT_OK)
		goto out;
	if (st.linked && record_change(r, "customer_linked", id, customer, claimed, NULL, why) != 0)
		goto out;
	if (st.refetched)
		reason = "differed from Stripe (fetched again: a webhook stored a newer state"
		    " after the list was read)";
	else
		reason = st.created ? "in Stripe's list, not in the database" :
		    "differed from Stripe's list";
	if (st.changes && record_change(r, st.created ? "created" : "updated", id, customer, NULL,
	    st.changes, reason) != 0)
		goto out;
	if (DB_QUERY(r->db, NULL, "INSERT INTO sync_seen (run_id, stripe_subscription_id)"
	    " VALUES ($1::bigint, $2) ON CONFLICT DO NOTHING", r->id, id) != DB_OK ||
	    run_step(r, id, 1, (st.changes != NULL) + st.linked) != 0 ||
	    db_commit(r->db) != DB_OK)
		goto out;
	r->objects++;
	if (st.created)
		r->created++;
	else if (st.changes)
		r->updated++;
	else
		r->unchanged++;
	r->refetched += st.refetched;
	r->gone += st.gone;
	r->skipped += st.skipped;
	r->linked += st.linked;
	if (st.unlinked) {
		r->unlinked++;
		if (customer && !set_seen(&r->reported, customer))
			log_msg("customer %s (subscription %s) is linked to no user: give it"
			    " metadata.userId in Stripe, or link it in customers", customer, id);
	}
	if (st.gone)
		log_msg("subscription %s is listed but Stripe answers 404 for it: left as it was",
		    id);
	ret = 0;
out:
	if (ret != 0) {
		db_rollback(r->db);
		log_msg("subscription %s could not be stored: this run stops here", id);
	}
	ended();
	subscription_stored_free(&st);
	free(fetched);
	return ret;
}

/*
 * Logs the rows of the run's scope that Stripe did not list, leaving out
 * rows written since the run started (a webhook's, of a subscription newer
 * than the pages already read).  -1 on failure.
 */
static int
report_missing(struct run *r)
{
	struct db_rows *rows = NULL;
	int i, n;

	if (DB_QUERY(r->db, &rows, "SELECT s.stripe_subscription_id, s.status FROM subscriptions s"
	    " WHERE ($2::text IS NULL OR s.stripe_customer_id = $2)"
	    " AND s.created_at < (SELECT started_at FROM sync_runs WHERE id = $1::bigint)"
	    " AND NOT EXISTS (SELECT 1"
	    " FROM sync_seen w WHERE w.run_id = $1::bigint"
	    " AND w.stripe_subscription_id = s.stripe_subscription_id) ORDER BY s.id", r->id,
	    r->o->customer) != DB_OK)
		return -1;
	n = db_rows_count(rows);
	for (i = 0; i < n && i < LIMIT_SYNC_MISSING_LOGGED; i++)
		log_msg("subscription %s (%s) is in the database but not in Stripe: kept",
		    db_rows_get(rows, i, 0), db_rows_get(rows, i, 1));
	if (n > LIMIT_SYNC_MISSING_LOGGED)
		log_msg("... and %d more in the database but not in Stripe", n - LIMIT_SYNC_MISSING_LOGGED);
	r->missing = n;
	db_rows_free(rows);
	return 0;
}

int
sync_subscriptions(struct db *db, const struct sync_options *o)
{
	struct run r = { .db = db, .o = o, .command = "subscriptions" };
	struct json_object *page = NULL, *data = NULL;
	char scope[300] = "";
	const char *error = "stopped";
	long long listed_at;
	int has_more = 1, claimed, status = SYNC_EXIT_ERROR;
	size_t i, n;

	if (o->customer)
		snprintf(scope, sizeof(scope), "customer=%s", o->customer);
	if ((claimed = run_claim(&r, scope, o->since)) <= 0) {
		status = claimed == 0 ? SYNC_EXIT_OK : SYNC_EXIT_ERROR;
		error = NULL;
		goto out;
	}
	while (has_more) {
		if (sync_subscriptions_page(o->customer, r.since, r.cursor, &page, &data, &has_more,
		    &listed_at) != OUT_OK) {
			error = "Stripe did not answer the list";
			goto out;
		}
		if (run_page(&r) != 0)
			goto out;
		n = json_object_array_length(data);
		for (i = 0; i < n; i++)
			if (handle_subscription(&r, json_object_array_get_idx(data, i), listed_at) != 0)
				goto out;
		json_object_put(page);
		page = NULL;
		if (o->progress)
			fprintf(stderr, "billing-sync: subscriptions: page %ld, %ld seen, %ld created,"
			    " %ld updated\n", r.pages, r.objects, r.created, r.updated);
		if (n == 0)
			break;
	}
	/* Only a listing of everything (of a customer) tells what Stripe does not have. */
	if (r.since < 0 && report_missing(&r) != 0)
		goto out;
	error = NULL;
	/* A listed subscription that could not be stored is one check reports as drift. */
	status = r.unlinked || r.missing || r.skipped ? SYNC_EXIT_ATTENTION : SYNC_EXIT_OK;
out:
	json_object_put(page);
	if (claimed > 0)
		run_end(&r, error);
	log_msg("subscriptions run=%s%s pages=%ld subscriptions=%ld created=%ld updated=%ld"
	    " unchanged=%ld refetched=%ld linked=%ld unlinked=%ld missing_in_stripe=%ld"
	    " skipped=%ld requests=%lu ms=%ld exit=%d%s%s", r.id[0] ? r.id : "-",
	    claimed == 0 ? " busy" : "", r.pages, r.objects, r.created, r.updated, r.unchanged,
	    r.refetched, r.linked, r.unlinked, r.missing, r.skipped + r.gone, stripe_requests_sent(),
	    log_elapsed_ms(), status, error && claimed > 0 ? " error=" : "",
	    error && claimed > 0 ? error : "");
	run_free(&r);
	return status;
}

/* ---- events ------------------------------------------------------------- */

/* A query over the handled event types: cursor and a created bound are optional. */
static enum outcome
events_page(const char *cursor_name, const char *cursor, const char *created_name,
    long long created, int limit, struct json_object **page, struct json_object **data,
    int *has_more)
{
	struct form f;
	enum outcome rc = OUT_INTERNAL;
	int i, bad = 0;

	form_init(&f);
	for (i = 0; subscription_event_types[i] != NULL; i++)
		bad |= form_add(&f, "types[]", subscription_event_types[i]);
	if (!bad && form_add_long(&f, "limit", limit) == 0 &&
	    (cursor == NULL || form_add(&f, cursor_name, cursor) == 0) &&
	    (created_name == NULL || form_add_long(&f, created_name, created) == 0))
		rc = stripe_list("/v1/events", &f, page, data, has_more);
	form_free(&f);
	return rc;
}

/*
 * Applies one listed event as webhook.cgi would, then moves the cursor to
 * it with a sync_changes row when it was new to us.  0, or -1: stop.
 */
static int
handle_event(struct run *r, struct json_object *obj)
{
	const char *raw = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN);
	const char *id = jsonget_str(obj, "id");
	struct subscription_event ev = { 0 };
	struct json_object *reply = NULL;
	struct db_rows *rows = NULL;
	enum outcome rc;
	int dup = 0, ignored = 0, recorded, ret = -1;

	if (raw == NULL || subscription_event_parse(raw, strlen(raw), &ev) != OUT_OK) {
		/*
		 * Whatever it changed stays unapplied: the run needs an operator
		 * (exit 1), as a listed subscription that cannot be stored does.
		 */
		log_msg("listed event %s is not an event we can read: skipped; billing-sync"
		    " subscriptions repairs what it changed", stripe_id_valid(id) ? id : "(no valid id)");
		r->skipped++;
		ret = stripe_id_valid(id) ? run_step(r, id, 1, 0) : 0;
		goto out;
	}
	ev.source = "sync";
	stripe_set_policy(&brief);
	rc = subscription_apply_event(r->db, &ev, &reply);
	ended();
	if (rc != OUT_OK) {
		log_msg("event %s (%s) could not be applied: this run stops here", ev.id, ev.type);
		goto out;
	}
	jsonget_bool(reply, "duplicate", &dup);
	jsonget_bool(reply, "ignored", &ignored);
	if (db_begin(r->db) != DB_OK)
		goto out;
	/*
	 * The change is recorded when billing-sync applied the event and no
	 * run recorded it yet.  That holds for a duplicate too when a process
	 * was killed after the event's transaction and before this one: the
	 * event is a duplicate for every later run, which would otherwise
	 * leave the change out of sync_changes for good.
	 */
	if (DB_QUERY(r->db, &rows, "INSERT INTO sync_changes (run_id, kind,"
	    " stripe_subscription_id, stripe_customer_id, user_id, stripe_event_id, reason)"
	    " SELECT $1::bigint, 'event_applied', b.stripe_subscription_id, b.stripe_customer_id,"
	    " b.user_id, b.stripe_event_id, $3 || b.event_type || $4 FROM billing_events b"
	    " WHERE b.stripe_event_id = $2 AND b.source = 'sync' AND NOT EXISTS (SELECT"
	    " FROM sync_changes c WHERE c.stripe_event_id = b.stripe_event_id"
	    " AND c.kind = 'event_applied') RETURNING id", r->id, ev.id, "missed by the webhook: ",
	    ignored ? " (recorded only)" : "") != DB_OK) {
		db_rollback(r->db);
		goto out;
	}
	recorded = db_rows_count(rows) > 0;
	if (run_step(r, ev.id, 1, recorded) != 0 || db_commit(r->db) != DB_OK) {
		db_rollback(r->db);
		goto out;
	}
	if (dup && recorded)
		log_msg("event %s (%s): applied by a billing-sync process that stopped before"
		    " recording it: recorded now", ev.id, ev.type);
	r->objects++;
	if (dup && !recorded)
		r->duplicates++;
	else if (ignored)
		r->ignored++;
	else
		r->applied++;
	ret = 0;
out:
	db_rows_free(rows);
	json_object_put(reply);
	subscription_event_free(&ev);
	return ret;
}

/*
 * Where an oldest-first walk starts (Stripe lists newest first; a walk
 * with ending_before needs an event to start after): the newest event
 * before since, when there is one.  Otherwise every event is at or after
 * since, and the oldest is found at the end of the list and applied.
 * 0, or -1: stop.
 */
static int
events_start(struct run *r)
{
	struct json_object *page = NULL, *data = NULL, *oldest = NULL, *e;
	char *after = NULL;
	int has_more = 1, ret = -1;
	size_t n;

	if (events_page(NULL, NULL, "created[lt]", r->since, 1, &page, &data, &has_more) !=
	    OUT_OK || run_page(r) != 0)
		goto out;
	e = json_object_array_get_idx(data, 0);
	if (e != NULL && stripe_id_valid(jsonget_str(e, "id"))) {
		ret = db_begin(r->db) == DB_OK && run_step(r, jsonget_str(e, "id"), 0, 0) == 0 &&
		    db_commit(r->db) == DB_OK ? 0 : -1;
		if (ret != 0)
			db_rollback(r->db);
		goto out;
	}
	for (has_more = 1; has_more;) {
		json_object_put(page);
		page = NULL;
		if (events_page("starting_after", after, "created[gte]", r->since, LIMIT_SYNC_PAGE, &page,
		    &data, &has_more) != OUT_OK || run_page(r) != 0)
			goto out;
		if ((n = json_object_array_length(data)) == 0)
			break;
		json_object_put(oldest);
		oldest = json_object_get(json_object_array_get_idx(data, n - 1));
		free(after);
		after = stripe_id_valid(jsonget_str(oldest, "id")) ?
		    mem_strdup(jsonget_str(oldest, "id")) : NULL;
		if (after == NULL)
			break;
	}
	ret = oldest != NULL && after != NULL ? handle_event(r, oldest) : 0;
out:
	json_object_put(page);
	json_object_put(oldest);
	free(after);
	return ret;
}

/*
 * Whether Stripe still has the event a continued run stopped at.  Stripe
 * keeps events 30 days: a run stopped near the start of that window and
 * continued later holds a cursor that ending_before refuses for good
 * (400 resource_missing), and every later run, continuing it, would stop
 * there too.  1 kept, 0 gone, -1 Stripe did not answer.
 */
static int
cursor_kept(const char *cursor)
{
	struct json_object *obj = NULL;
	char path[32 + LIMIT_STRIPE_ID_LEN];
	enum outcome rc;

	if (!stripe_id_valid(cursor))
		return 0;
	snprintf(path, sizeof(path), "/v1/events/%s", cursor);
	rc = stripe_get(path, &obj);
	json_object_put(obj);
	return rc == OUT_OK ? 1 : rc == OUT_NOT_FOUND ? 0 : -1;
}

int
sync_events(struct db *db, const struct sync_options *o)
{
	struct run r = { .db = db, .o = o, .command = "events" };
	struct json_object *page = NULL, *data = NULL;
	long long now = (long long)time(NULL);
	long long since = o->since >= 0 ? o->since : now - LIMIT_SYNC_EVENTS_SINCE_S;
	const char *error = "stopped";
	char when[32];
	int has_more = 1, claimed = -1, status = SYNC_EXIT_ERROR, kept = 1;
	size_t n;

	if (since < now - LIMIT_EVENTS_DAYS * 86400LL) {
		log_msg("--since %s is more than %d days ago: Stripe keeps events for %d days;"
		    " use billing-sync subscriptions for what is older", iso_utc(since, when,
		    sizeof(when)), LIMIT_EVENTS_DAYS, LIMIT_EVENTS_DAYS);
		error = NULL;
		goto out;
	}
	if ((claimed = run_claim(&r, "", since)) <= 0) {
		status = claimed == 0 ? SYNC_EXIT_OK : SYNC_EXIT_ERROR;
		error = NULL;
		goto out;
	}
	if (r.cursor != NULL && (kept = cursor_kept(r.cursor)) <= 0) {
		if (kept < 0) {
			error = "Stripe did not answer for the run's cursor";
			goto out;
		}
		/*
		 * What followed it may be gone too: nothing tells which events
		 * were.  The run goes on from where a new one would start;
		 * subscriptions repairs what the lost events changed.
		 */
		log_msg("event %s, where run %s stopped, is no longer at Stripe (events are kept"
		    " %d days): events after it may be gone too; going on from the oldest one"
		    " kept; run billing-sync subscriptions to repair what they changed", r.cursor,
		    r.id, LIMIT_EVENTS_DAYS);
		free(r.cursor);
		r.cursor = NULL;
	}
	if (r.cursor == NULL && events_start(&r) != 0)
		goto out;
	/* ending_before gives the events just after the cursor, newest first. */
	while (has_more && r.cursor != NULL) {
		if (events_page("ending_before", r.cursor, NULL, 0, LIMIT_SYNC_PAGE, &page, &data,
		    &has_more) != OUT_OK) {
			error = "Stripe did not answer the list";
			goto out;
		}
		if (run_page(&r) != 0)
			goto out;
		for (n = json_object_array_length(data); n > 0; n--)
			if (handle_event(&r, json_object_array_get_idx(data, n - 1)) != 0)
				goto out;
		if (json_object_array_length(data) == 0)
			break;
		json_object_put(page);
		page = NULL;
		if (o->progress)
			fprintf(stderr, "billing-sync: events: page %ld, %ld seen, %ld applied,"
			    " %ld duplicates\n", r.pages, r.objects, r.applied, r.duplicates);
	}
	error = NULL;
	status = kept && r.skipped == 0 ? SYNC_EXIT_OK : SYNC_EXIT_ATTENTION;
out:
	json_object_put(page);
	if (claimed > 0)
		run_end(&r, error);
	log_msg("events run=%s%s since=%s pages=%ld events=%ld applied=%ld duplicates=%ld"
	    " ignored=%ld skipped=%ld requests=%lu ms=%ld exit=%d%s%s", r.id[0] ? r.id : "-",
	    claimed == 0 ? " busy" : "", iso_utc(r.id[0] ? r.since : since, when, sizeof(when)),
	    r.pages, r.objects, r.applied, r.duplicates, r.ignored, r.skipped,
	    stripe_requests_sent(), log_elapsed_ms(), status, error && claimed > 0 ? " error=" : "",
	    error && claimed > 0 ? error : "");
	run_free(&r);
	return status;
}
