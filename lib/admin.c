#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "admin.h"
#include "auth.h"
#include "buf.h"
#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "stripe.h"
#include "subscription.h"
#include "usage.h"


/* --- who may enter --------------------------------------------------------- */

enum outcome
admin_operator(int api, char **name)
{
	const char *remote = request_env("REMOTE_USER");
	struct auth_caller caller = {0};
	enum outcome rc;

	*name = NULL;
	if ((remote == NULL || *remote == '\0') && !api) {
		/*
		 * Pages are for browsers, which Apache authenticates; without
		 * REMOTE_USER the server config does not protect /admin/.
		 */
		log_msg("no REMOTE_USER: /admin/ must be protected by Apache authentication"
		    " (apache/billing-cgi.conf)");
		response_header("WWW-Authenticate", "Basic realm=\"billing console\"");
		return OUT_UNAUTHORIZED;
	}
	if ((remote == NULL || *remote == '\0') && !config_get("AUTH_JWT_SECRET") &&
	    !config_get("AUTH_JWT_PUBLIC_KEY_FILE")) {
		response_header("WWW-Authenticate", "Bearer realm=\"billing\"");
		return OUT_UNAUTHORIZED;
	}
	/* REMOTE_USER first, then an operator's JWT; never the usage API key. */
	if ((rc = auth_identify_operator(&caller)) != OUT_OK)
		return rc;
	if (caller.user_id == NULL ||
	    !config_list_contains("ADMIN_USERS", caller.user_id, strlen(caller.user_id), 0)) {
		log_msg(config_get("ADMIN_USERS") ? "operator not in ADMIN_USERS"
						  : "ADMIN_USERS is not set: nobody may enter");
		auth_caller_free(&caller);
		return OUT_FORBIDDEN;
	}
	*name = caller.user_id;
	return OUT_OK;
}

/* --- form posts from our own pages ----------------------------------------- */

/* This site's origin, "scheme://host[:port]", as the browser sees it. */
static int
own_origin(struct buf *out)
{
	const char *set = config_get("ADMIN_ORIGIN"), *host = request_header("Host");
	const char *https = request_env("HTTPS"), *scheme = request_env("REQUEST_SCHEME");

	if (set != NULL)
		return buf_addstr(out, set);
	if (host == NULL || *host == '\0')
		return -1;
	if (https != NULL && strcasecmp(https, "on") == 0)
		scheme = "https";
	else if (scheme == NULL || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
		scheme = "http";
	return buf_printf(out, "%s://%s", scheme, host);
}

enum outcome
admin_same_origin(void)
{
	const char *origin = request_header("Origin"), *referer = request_header("Referer");
	struct buf own = BUF_INIT(1024);
	enum outcome rc = OUT_FORBIDDEN;
	size_t n;

	if (own_origin(&own) == -1) {
		log_msg("form post refused: no Host to compare its origin with");
		goto out;
	}
	n = own.len;
	/* RFC 6454: Origin is scheme://host[:port]; host names compare without case. */
	if (origin != NULL) {
		if (strcasecmp(origin, buf_str(&own)) == 0)
			rc = OUT_OK;
		else
			log_msg("form post refused: Origin is another site");
	} else if (referer != NULL) {
		/* Browsers that send no Origin send the page's URL (Referrer-Policy: same-origin). */
		if (strncasecmp(referer, buf_str(&own), n) == 0 && referer[n] == '/')
			rc = OUT_OK;
		else
			log_msg("form post refused: Referer is another site");
	} else
		log_msg("form post refused: neither Origin nor Referer");
out:
	buf_free(&own);
	return rc;
}

/* --- the analytics API ----------------------------------------------------- */

/* "YYYY-MM" with a month 01..12 into a month count (year * 12 + month - 1); -1 if not. */
static long
month_index(const char *s)
{
	int i;
	long y = 0, m;

	if (s == NULL || strlen(s) != 7 || s[4] != '-')
		return -1;
	for (i = 0; i < 7; i++)
		if (i != 4 && (s[i] < '0' || s[i] > '9'))
			return -1;
	for (i = 0; i < 4; i++)
		y = y * 10 + (s[i] - '0');
	m = (s[5] - '0') * 10 + (s[6] - '0');
	if (y < 1970 || m < 1 || m > 12)
		return -1;
	return y * 12 + m - 1;
}

static void
month_text(long idx, char out[8])
{
	snprintf(out, 8, "%04ld-%02ld", (idx / 12) % 10000, idx % 12 + 1);
}

enum outcome
admin_period_parse(const struct request *req, struct admin_period *p, const char **field,
    const char **why)
{
	char *from = NULL, *to = NULL, *cur = NULL;
	long f, t;
	time_t now = time(NULL);
	struct tm tm;
	enum outcome rc = OUT_INVALID_FIELD;
	int i;

	memset(p, 0, sizeof(*p));
	*why = "is malformed or repeated";
	if (request_query_param(req, (*field = "from"), &from) < 0 ||
	    request_query_param(req, (*field = "to"), &to) < 0 ||
	    request_query_param(req, (*field = "currency"), &cur) < 0)
		goto out;
	gmtime_r(&now, &tm);
	*field = "to";
	*why = "must be a month, YYYY-MM";
	t = to && *to ? month_index(to) : (long)(tm.tm_year + 1900) * 12 + tm.tm_mon;
	if (t < 0)
		goto out;
	*field = "from";
	f = from && *from ? month_index(from) : t - (LIMIT_ADMIN_MONTHS_DEFAULT - 1);
	if (f < 0)
		goto out;
	*why = "must not be after to, and at most 240 months before it";
	if (f > t || t - f >= LIMIT_ADMIN_MONTHS)
		goto out;
	month_text(f, p->from);
	month_text(t, p->to);
	if (cur && *cur) {
		*field = "currency";
		*why = "must be a three-letter currency code";
		if (strlen(cur) != 3)
			goto out;
		for (i = 0; i < 3; i++) {
			if (!((cur[i] >= 'a' && cur[i] <= 'z') || (cur[i] >= 'A' && cur[i] <= 'Z')))
				goto out;
			p->currency[i] = (char)(cur[i] | 0x20);
		}
	}
	*field = *why = NULL;
	rc = OUT_OK;
out:
	free(from);
	free(to);
	free(cur);
	return rc;
}

/* Whether an Accept header lists text/csv with a weight above 0 (RFC 9110 12.4.2, 12.5.1). */
static int
accepts_csv(const char *accept)
{
	const char *p = accept, *e, *semi, *q;
	double weight;
	size_t n;

	for (; p != NULL && *p != '\0'; p = *e ? e + 1 : e) {
		e = p + strcspn(p, ",");
		p += strspn(p, " \t");
		if (p > e)
			p = e;
		semi = memchr(p, ';', (size_t)(e - p));
		n = (size_t)((semi ? semi : e) - p);
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n != 8 || strncasecmp(p, "text/csv", 8) != 0)
			continue;
		weight = 1;
		for (q = semi ? semi + 1 : e; q + 2 <= e; q++)
			if ((q[0] == 'q' || q[0] == 'Q') && q[1] == '=' &&
			    (q[-1] == ';' || q[-1] == ' ' || q[-1] == '\t')) {
				weight = strtod(q + 2, NULL);
				break;
			}
		if (weight > 0)
			return 1;
	}
	return 0;
}

int
admin_wants_csv(const struct request *req)
{
	char *format = NULL;
	int csv;

	csv = request_query_param(req, "format", &format) == 1 && strcmp(format, "csv") == 0;
	free(format);
	return csv || accepts_csv(request_header("Accept"));
}

/*
 * The period's SQL arguments: first days of the months, and the currency
 * (the one with the most MRR now when the request named none).
 */
#define SQL_CURRENCY \
	"coalesce(nullif($3, ''), (SELECT r.currency FROM mrr_monthly r GROUP BY r.currency" \
	" ORDER BY sum(r.net) DESC, r.currency LIMIT 1), 'usd')"

static void
period_days(const struct admin_period *p, char from[16], char to[16])
{
	snprintf(from, 16, "%s-01", p->from);
	snprintf(to, 16, "%s-01", p->to);
}

/* analytics_report's JSON text: OUT_OK with *rows holding it at (0, 0). */
static enum outcome
report_text(struct db *db, const struct admin_period *p, struct db_rows **rows)
{
	char from[16], to[16];
	enum db_result r;

	period_days(p, from, to);
	/* One statement, one transaction: analytics_feature_usage may fill usage_closed_months. */
	r = DB_QUERY(db, rows, "SELECT analytics_report($1::date, $2::date, " SQL_CURRENCY ")",
	    from, to, p->currency);
	if (r != DB_OK)
		return db_outcome(r);
	if (db_rows_get(*rows, 0, 0) == NULL) {
		log_msg("analytics_report answered NULL");
		return OUT_INTERNAL;
	}
	return OUT_OK;
}

/*
 * What the dashboard draws, in analytics_report's shape but without the
 * feature usage and the 402 counts (a third of the report's time at a
 * million subscriptions; the API and its CSV have them).  Three statements
 * run at once (db_exec_parallel): the snapshot and this month's quota
 * utilisation each read a large part of a big table.
 */
static const char sql_dashboard_months[] =
    "SELECT jsonb_build_object('currency', c.cur,"
    " 'months', (SELECT jsonb_agg(to_jsonb(a) || jsonb_build_object('month',"
    "  to_char(a.month, 'YYYY-MM')) ORDER BY a.month)"
    "  FROM analytics_monthly($1::date, $2::date, c.cur) a))"
    " FROM (SELECT " SQL_CURRENCY " AS cur) c";
static const char sql_dashboard_quota[] =
    "SELECT jsonb_build_object('quotaUtilisation', jsonb_agg((to_jsonb(q) - 'ordinality')"
    " ORDER BY q.ordinality)) FROM analytics_quota_utilisation() WITH ORDINALITY q";
static const char sql_dashboard_snapshot[] =
    "SELECT jsonb_build_object('snapshot', analytics_snapshot())";

enum outcome
admin_report(struct db *db, const struct admin_period *p, struct json_object **report)
{
	char from[16], to[16];
	const char *params[3] = { from, to, p->currency }, *text;
	const struct db_statement st[3] = { { sql_dashboard_months, 3, params },
	    { sql_dashboard_quota, 0, NULL }, { sql_dashboard_snapshot, 0, NULL } };
	struct db_rows *rows[3] = { NULL, NULL, NULL };
	struct json_object *part = NULL;
	enum db_result r;
	enum outcome rc = OUT_INTERNAL;
	int i;

	*report = NULL;
	period_days(p, from, to);
	if ((r = db_exec_parallel(db, 3, st, rows)) != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	for (i = 0; i < 3; i++) {
		text = db_rows_get(rows[i], 0, 0);
		if (text == NULL ||
		    jsonget_parse(text, strlen(text), i == 0 ? report : &part) != OUT_OK) {
			log_msg("the dashboard's figures are no JSON object");
			goto out;
		}
		if (i > 0) {
			json_object_object_foreach(part, key, val)
				response_add(*report, key, json_object_get(val));
			json_object_put(part);
			part = NULL;
		}
	}
	rc = OUT_OK;
out:
	if (rc != OUT_OK) {
		json_object_put(*report);
		*report = NULL;
	}
	for (i = 0; i < 3; i++)
		db_rows_free(rows[i]);
	return rc;
}

/* One CSV field (RFC 4180 2.6-2.7): quoted when it holds a comma, quote, CR or LF. */
static int
csv_field(struct buf *out, const char *v)
{
	const char *q;

	if (v == NULL)
		return 0;	/* SQL NULL: an empty field */
	if (strpbrk(v, ",\"\r\n") == NULL)
		return buf_addstr(out, v);
	if (buf_addch(out, '"') == -1)
		return -1;
	for (q = v; *q; q++)
		if ((*q == '"' && buf_addch(out, '"') == -1) || buf_addch(out, *q) == -1)
			return -1;
	return buf_addch(out, '"');
}

static enum outcome
answer_csv(struct db *db, const char *from, const char *to, const struct admin_period *p)
{
	struct db_rows *rows = NULL;
	struct buf out = BUF_INIT(LIMIT_PAGE);
	const char *name, *v, *cur;
	enum db_result r;
	enum outcome rc = OUT_INTERNAL;
	int i, j, cols;

	r = DB_QUERY(db, &rows, "SELECT a.* FROM analytics_monthly($1::date, $2::date, "
	    SQL_CURRENCY ") a ORDER BY a.month", from, to, p->currency);
	if (r != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	cols = db_rows_fields(rows);
	for (j = 0; j < cols; j++)
		if ((j > 0 && buf_addch(&out, ',') == -1) ||
		    csv_field(&out, db_rows_field_name(rows, j)) == -1)
			goto out;
	if (buf_addstr(&out, "\r\n") == -1)
		goto out;
	for (i = 0; i < db_rows_count(rows); i++) {
		for (j = 0; j < cols; j++) {
			name = db_rows_field_name(rows, j);
			v = db_rows_get(rows, i, j);
			if (j > 0 && buf_addch(&out, ',') == -1)
				goto out;
			/* Months as the JSON has them: YYYY-MM. */
			if (strcmp(name, "month") == 0 && v != NULL && strlen(v) == 10) {
				if (buf_add(&out, v, 7) == -1)
					goto out;
			} else if (csv_field(&out, v) == -1)
				goto out;
		}
		if (buf_addstr(&out, "\r\n") == -1)
			goto out;
	}
	cur = db_rows_count(rows) > 0 ? db_rows_get(rows, 0, 1) : p->currency;
	/* RFC 7111: text/csv with header=present; a file name for a browser's download. */
	response_header("Content-Disposition", "attachment; filename=\"analytics-%s-%s-%s.csv\"",
	    cur && strlen(cur) == 3 && strspn(cur, "abcdefghijklmnopqrstuvwxyz") == 3 ? cur : "x",
	    p->from, p->to);
	response_header("Vary", "Accept");
	response_body(200, "text/csv; charset=utf-8; header=present", buf_str(&out), out.len);
	rc = OUT_OK;
out:
	buf_free(&out);
	db_rows_free(rows);
	return rc;
}

enum outcome
admin_analytics_answer(struct db *db, const struct admin_period *p, int csv)
{
	struct db_rows *rows = NULL;
	char from[16], to[16];
	const char *text;
	enum outcome rc;

	if (csv) {
		period_days(p, from, to);
		return answer_csv(db, from, to, p);
	}
	if ((rc = report_text(db, p, &rows)) == OUT_OK) {
		/* PostgreSQL's jsonb output is JSON already: sent as it is, not re-printed. */
		text = db_rows_get(rows, 0, 0);
		response_header("Vary", "Accept");
		response_body(200, "application/json", text, strlen(text));
	}
	db_rows_free(rows);
	return rc;
}

/* --- actions ---------------------------------------------------------------- */

static const struct admin_action_info actions[ADMIN_ACTION__MAX] = {
	[ADMIN_CANCEL_AT_PERIOD_END] = { "cancel_at_period_end", "Cancel at period end",
	    "Stripe cancels the subscription when its current period ends; until then the"
	    " customer keeps the plan.  It can be resumed before that.",
	    ADMIN_TARGET_SUBSCRIPTION },
	[ADMIN_CANCEL_NOW] = { "cancel_now", "Cancel now",
	    "Stripe cancels the subscription immediately (no proration, no final invoice);"
	    " the customer is on the free tier from now on.  This cannot be undone.",
	    ADMIN_TARGET_SUBSCRIPTION },
	[ADMIN_RESUME] = { "resume", "Resume",
	    "The scheduled cancellation is withdrawn: the subscription renews at the end of"
	    " its period as before.",
	    ADMIN_TARGET_SUBSCRIPTION },
	[ADMIN_RESYNC] = { "resync", "Re-sync from Stripe",
	    "The customer's subscriptions are read from Stripe and stored as the webhook"
	    " stores them, replacing what the database holds.",
	    ADMIN_TARGET_NONE },
	[ADMIN_RESET_USAGE] = { "reset_usage", "Reset",
	    "This month's counter of the usage type is set to 0, so the customer can use the"
	    " whole quota again this month.",
	    ADMIN_TARGET_USAGE_TYPE },
};

const struct admin_action_info *
admin_action_info(enum admin_action a)
{
	return (unsigned)a < ADMIN_ACTION__MAX ? &actions[a] : NULL;
}

int
admin_action_parse(const char *name, enum admin_action *a)
{
	int i;

	for (i = 0; name != NULL && i < ADMIN_ACTION__MAX; i++)
		if (strcmp(name, actions[i].name) == 0) {
			*a = (enum admin_action)i;
			return 0;
		}
	return -1;
}

int
admin_target_valid(enum admin_action a, const char *target)
{
	switch (actions[a].target) {
	case ADMIN_TARGET_SUBSCRIPTION:
		return stripe_id_valid(target);
	case ADMIN_TARGET_USAGE_TYPE:
		return usage_type_valid(target);
	default:
		return target == NULL || *target == '\0';
	}
}

char *
admin_form_binding(enum admin_action a, const char *user_id, const char *target)
{
	struct buf b = BUF_INIT(1024);

	/* User ids hold no control characters, so LF separates unambiguously. */
	if (buf_printf(&b, "%s\n%s\n%s", actions[a].name, user_id, target ? target : "") == -1)
		response_fatal("form binding too long");
	return buf_detach(&b, NULL);
}

int
admin_reason_valid(const char *reason)
{
	size_t n = reason ? strlen(reason) : 0;

	return n >= 1 && n <= LIMIT_ADMIN_REASON && jsonget_clean_utf8(reason, n) &&
	    strspn(reason, " ") < n;
}

void
admin_done_free(struct admin_done *done)
{
	if (done == NULL)
		return;
	free(done->summary);
	done->summary = NULL;
}

/* The work of one action, between the audit row's start and its end. */
struct act {
	struct db *db;
	const char *operator, *user, *target, *nonce;
	enum admin_action action;
	char audit[24];		/* admin_audit.id */
	struct buf summary;	/* what happened, for the page and detail.summary */
	struct json_object *detail;	/* admin_audit.detail when done */
};

static void
say(struct act *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
say(struct act *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	buf_reset(&w->summary);
	if (buf_vprintf(&w->summary, fmt, ap) == -1)
		buf_reset(&w->summary);
	va_end(ap);
}

static void
detail_add(struct act *w, const char *key, struct json_object *v)
{
	if (w->detail == NULL)
		w->detail = response_object();
	response_add(w->detail, key, v);
}

static const char *
detail_text(struct act *w)
{
	detail_add(w, "summary", json_object_new_string(buf_str(&w->summary)));
	return json_object_to_json_string_ext(w->detail, JSON_C_TO_STRING_PLAIN);
}

/*
 * The audit row, in its own transaction before anything is tried: 1 when
 * written, 0 when this form's nonce is already there (a second submission),
 * -1 on a database failure (*rc).
 */
static int
audit_start(struct act *w, const char *reason, const char *sub, const char *type,
    enum outcome *rc)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	int got;

	r = DB_QUERY(w->db, &rows,
	    "INSERT INTO admin_audit (operator, action, user_id, stripe_subscription_id,"
	    " usage_type, reason, form_nonce) VALUES ($1, $2, $3, $4, $5, $6, $7)"
	    " ON CONFLICT (form_nonce) DO NOTHING RETURNING id",
	    w->operator, actions[w->action].name, w->user, sub, type, reason, w->nonce);
	if (r != DB_OK) {
		*rc = db_outcome(r);
		return -1;
	}
	got = db_rows_count(rows) == 1;
	if (got)
		snprintf(w->audit, sizeof(w->audit), "%s", db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	return got;
}

/* The outcome whose code is code (admin_audit.detail's error); OUT_INTERNAL if none. */
static enum outcome
outcome_of_code(const char *code)
{
	int o;

	for (o = OUT_OK + 1; code != NULL && o < OUT__MAX; o++)
		if (strcmp(outcome_code((enum outcome)o), code) == 0)
			return (enum outcome)o;
	return OUT_INTERNAL;
}

/*
 * A second submission of the same form: what the first one did, answered
 * as it was then (a retried post of a failed form is not a success), or
 * 409 while the first is still being carried out.
 */
static enum outcome
audit_replay(struct act *w, struct admin_done *done)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	enum outcome rc;
	const char *summary, *result;

	r = DB_QUERY(w->db, &rows, "SELECT id, result, detail->>'summary', detail->>'error'"
	    " FROM admin_audit WHERE form_nonce = $1", w->nonce);
	if (r != DB_OK || db_rows_count(rows) != 1) {
		db_rows_free(rows);
		return r != DB_OK ? db_outcome(r) : OUT_INTERNAL;
	}
	done->audit_id = strtoll(db_rows_get(rows, 0, 0), NULL, 10);
	done->replayed = 1;
	result = db_rows_get(rows, 0, 1);
	summary = db_rows_get(rows, 0, 2);
	if (strcmp(result, "started") == 0) {
		say(w, "This form was already submitted and is still being carried out (audit"
		    " #%s): look at the customer once it is done.", db_rows_get(rows, 0, 0));
		rc = OUT_IDEMPOTENCY_CONFLICT;
	} else {
		say(w, "This form was already submitted (audit #%s, %s)%s%s%s",
		    db_rows_get(rows, 0, 0), result, summary ? ": " : ".", summary ? summary : "",
		    strcmp(result, "done") == 0 ? "" :
		    "  To try again, open the confirmation again.");
		rc = strcmp(result, "done") == 0 ? OUT_OK : outcome_of_code(db_rows_get(rows, 0, 3));
	}
	db_rows_free(rows);
	return rc;
}

/* Completes the audit row in the action's transaction. */
static enum outcome
audit_done(struct act *w)
{
	enum db_result r = DB_QUERY(w->db, NULL,
	    "UPDATE admin_audit SET result = 'done', detail = $2::jsonb, finished_at = now()"
	    " WHERE id = $1::bigint", w->audit, detail_text(w));

	return r == DB_OK ? OUT_OK : db_outcome(r);
}

/*
 * After a failure: on its own once the action's transaction is rolled back, or
 * in it when the action keeps the state it fetched from Stripe.
 */
static void
audit_failed(struct act *w, enum outcome rc)
{
	enum db_result r;

	/* With what was learnt on the way (the state before, Stripe's state found). */
	detail_add(w, "error", json_object_new_string(outcome_code(rc)));
	r = DB_QUERY(w->db, NULL, "UPDATE admin_audit SET result = 'failed', detail = $2::jsonb,"
	    " finished_at = now() WHERE id = $1::bigint AND result = 'started'", w->audit,
	    detail_text(w));
	if (r != DB_OK)
		log_msg("admin_audit %s could not be marked failed", w->audit);
}

/* "admin:<audit id>": what last_event_id says about a change made here. */
static void
source_of(const struct act *w, char out[48])
{
	snprintf(out, 48, "admin:%s", w->audit);
}

static const char *
sub_status(struct json_object *sub)
{
	const char *s = jsonget_str(sub, "status");

	return s ? s : "unknown";
}

/*
 * Whether w's action has nothing to do on a subscription in this state
 * (where: "" for our row, " at Stripe" for Stripe's); says why.
 */
static int
nothing_to_do(struct act *w, const char *status, int cape, const char *where)
{
	int on = subscription_status_live(status);

	if (w->action == ADMIN_CANCEL_AT_PERIOD_END && (!on || cape)) {
		say(w, "Nothing to do: subscription %s is %s%s%s.", w->target, status,
		    cape ? " and already cancels at the period end" : "", where);
		return 1;
	}
	if (w->action == ADMIN_RESUME && (!on || !cape)) {
		say(w, "Nothing to resume: subscription %s is %s and not scheduled to cancel%s.",
		    w->target, status, where);
		return 1;
	}
	if (w->action == ADMIN_CANCEL_NOW && subscription_status_final(status)) {
		say(w, "Nothing to do: subscription %s has ended (%s)%s.", w->target, status, where);
		return 1;
	}
	return 0;
}

/* Whether a subscription in this state is what w's action makes of it. */
static int
reached(const struct act *w, const char *status, int cape)
{
	switch (w->action) {
	case ADMIN_CANCEL_AT_PERIOD_END:
		return subscription_status_live(status) && cape;
	case ADMIN_RESUME:
		return subscription_status_live(status) && !cape;
	default:
		return subscription_status_final(status);
	}
}

/*
 * The action's Stripe call.  DELETE takes no Idempotency-Key: a retry
 * after a lost answer finds nothing (404), and the caller's fetch of the
 * subscription then says what happened.
 */
static enum outcome
call_stripe(struct act *w, const char *path, struct json_object **obj)
{
	struct form f;
	char key[64];
	enum outcome rc = OUT_INTERNAL;

	if (w->action == ADMIN_CANCEL_NOW)
		return stripe_delete(path, NULL, obj);
	form_init(&f);
	/* The form's nonce makes the key: a retry of this call is the same call. */
	snprintf(key, sizeof(key), "admin-%s", w->nonce);
	if (form_add(&f, "cancel_at_period_end",
	    w->action == ADMIN_CANCEL_AT_PERIOD_END ? "true" : "false") == 0)
		rc = stripe_post(path, &f, key, obj);
	form_free(&f);
	return rc;
}

/* Cancel at period end, cancel now, resume: under the subscription's lock. */
static enum outcome
act_subscription(struct act *w)
{
	struct db_rows *rows = NULL;
	struct json_object *obj = NULL;
	char path[64 + 256], source[48];
	const char *status, *verb = w->action == ADMIN_RESUME ? "resume" : "cancel";
	const char *lost_note = "  Stripe's answer to the call was lost; this is the"
	    " subscription as Stripe has it now.";
	int cape = 0, lost = 0;
	enum db_result r;
	enum outcome rc = OUT_UNAVAILABLE, failed = OUT_OK;

	if (db_begin(w->db) != DB_OK || (rc = subscription_lock(w->db, w->target)) != OUT_OK)
		goto out;
	r = DB_QUERY(w->db, &rows, "SELECT status, cancel_at_period_end FROM subscriptions"
	    " WHERE stripe_subscription_id = $1 AND user_id = $2", w->target, w->user);
	if (r != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	if (db_rows_count(rows) != 1) {
		say(w, "Subscription %s is not one of this user's.", w->target);
		rc = OUT_NOT_FOUND;
		goto out;
	}
	status = db_rows_get(rows, 0, 0);
	cape = strcmp(db_rows_get(rows, 0, 1), "t") == 0;
	rc = OUT_NO_CHANGE;
	if (nothing_to_do(w, status, cape, ""))
		goto out;
	detail_add(w, "before", json_object_new_string(status));
	detail_add(w, "cancel_at_period_end_before", json_object_new_boolean(cape));

	snprintf(path, sizeof(path), "/v1/subscriptions/%s", w->target);
	if ((rc = call_stripe(w, path, &obj)) == OUT_MISCONFIGURED || rc == OUT_INTERNAL) {
		say(w, "Stripe was not called (%s); nothing changed.", outcome_code(rc));
		goto out;
	}
	if (rc != OUT_OK) {
		/*
		 * A failure is not proof that nothing happened: the answer of a
		 * try Stripe carried out can be lost (the DELETE retried then
		 * finds nothing), and a refusal may mean the subscription changed
		 * at Stripe behind our row.  What Stripe has now says which.
		 */
		failed = rc;
		json_object_put(obj);
		obj = NULL;
		if ((rc = stripe_get(path, &obj)) != OUT_OK) {
			if (rc == OUT_NOT_FOUND)
				say(w, "Stripe does not know subscription %s (%s); nothing changed.",
				    w->target, outcome_code(failed));
			else if (failed == OUT_STRIPE_ERROR || failed == OUT_IDEMPOTENCY_CONFLICT)
				say(w, "Stripe refused to %s subscription %s (%s); nothing changed.",
				    verb, w->target, outcome_code(failed));
			else
				say(w, "Stripe gave no answer (%s), and the subscription could not be"
				    " read back: whether subscription %s was changed is not known."
				    "  Re-sync the customer before trying again.",
				    outcome_code(failed), w->target);
			rc = failed;
			goto out;
		}
		lost = 1;
		log_note("refetched", outcome_code(failed));
		detail_add(w, "call_failed", json_object_new_string(outcome_code(failed)));
	}
	source_of(w, source);
	if ((rc = subscription_store_object(w->db, obj, (long long)time(NULL), source,
	    w->user)) != OUT_OK) {
		say(w, "Stripe answered, but its answer could not be stored (%s); re-sync the"
		    " customer.", outcome_code(rc));
		goto out;
	}
	cape = 0;
	jsonget_bool(obj, "cancel_at_period_end", &cape);
	detail_add(w, "status", json_object_new_string(sub_status(obj)));
	detail_add(w, "cancel_at_period_end", json_object_new_boolean(cape));
	if (lost && !reached(w, sub_status(obj), cape)) {
		/* Stripe's state, now stored, is kept; the audit row says the action failed. */
		if (nothing_to_do(w, sub_status(obj), cape, " at Stripe (our record was behind;"
		    " Stripe's state is now stored)"))
			rc = OUT_NO_CHANGE;
		else if (failed == OUT_UNAVAILABLE) {
			/* A try that timed out may still be running at Stripe. */
			say(w, "Stripe gave no answer (%s); as Stripe has subscription %s now it is"
			    " unchanged (status %s, cancel_at_period_end %s), but a try still under"
			    " way at Stripe could yet apply: look at the customer again before"
			    " trying again.", outcome_code(failed), w->target, sub_status(obj),
			    cape ? "true" : "false");
			rc = failed;
		} else {
			say(w, "Stripe refused to %s subscription %s (%s); as Stripe has it now it is"
			    " unchanged (status %s, cancel_at_period_end %s): nothing changed.",
			    verb, w->target, outcome_code(failed), sub_status(obj),
			    cape ? "true" : "false");
			rc = failed;
		}
		audit_failed(w, rc);
		if (db_commit(w->db) != DB_OK) {
			db_rollback(w->db);
			say(w, "Stripe did not %s subscription %s (%s), and its state could not be"
			    " stored; re-sync the customer.", verb, w->target, outcome_code(failed));
		}
		goto out;
	}
	if (w->action == ADMIN_CANCEL_AT_PERIOD_END)
		say(w, "Subscription %s cancels at the end of its period (Stripe: status %s,"
		    " cancel_at_period_end %s).%s", w->target, sub_status(obj),
		    cape ? "true" : "false", lost ? lost_note : "");
	else if (w->action == ADMIN_RESUME)
		say(w, "Subscription %s resumed: it renews at the end of its period (Stripe: status"
		    " %s, cancel_at_period_end %s).%s", w->target, sub_status(obj),
		    cape ? "true" : "false", lost ? lost_note : "");
	else
		say(w, "Subscription %s canceled now (Stripe: status %s).%s", w->target,
		    sub_status(obj), lost ? lost_note : "");
	if ((rc = audit_done(w)) == OUT_OK && db_commit(w->db) != DB_OK)
		rc = OUT_UNAVAILABLE;
out:
	if (rc != OUT_OK)
		db_rollback(w->db);
	json_object_put(obj);
	db_rows_free(rows);
	return rc;
}

/*
 * Re-sync: the customer's subscriptions as Stripe has them now, each
 * stored as the webhook stores a fetched one.  The ones we know are
 * locked before asking, so no event for them is applied in between; one
 * new to us that an event stored meanwhile is left to that event when it
 * is newer than our answer.
 */
static enum outcome
act_resync(struct act *w)
{
	struct db_rows *rows = NULL, *known = NULL;
	struct json_object *list = NULL, *data, *sub;
	struct buf path = BUF_INIT(512), ids = BUF_INIT(8192);
	struct json_object *stored = json_object_new_array();
	char source[48], seen[24], *customer = NULL;
	const char *id;
	size_t i, n, k;
	int was_known, skipped = 0, more = 0;
	long long fetched;
	enum db_result r;
	enum outcome rc;

	r = DB_QUERY(w->db, &rows, "SELECT stripe_customer_id FROM customers WHERE user_id = $1",
	    w->user);
	if (r != DB_OK || db_rows_count(rows) != 1) {
		rc = r != DB_OK ? db_outcome(r) : OUT_NOT_FOUND;
		if (r == DB_OK)
			say(w, "This user has no Stripe customer: nothing to re-sync.");
		goto out;
	}
	customer = mem_strdup(db_rows_get(rows, 0, 0));
	if (!stripe_id_valid(customer) ||
	    buf_printf(&path, "/v1/subscriptions?customer=%s&status=all&limit=%d", customer,
		LIMIT_ADMIN_SYNC_SUBSCRIPTIONS) == -1) {
		rc = OUT_INTERNAL;
		goto out;
	}
	if (db_begin(w->db) != DB_OK) {
		rc = OUT_UNAVAILABLE;
		goto out;
	}
	r = DB_QUERY(w->db, &known, "SELECT stripe_subscription_id FROM subscriptions"
	    " WHERE stripe_customer_id = $1 OR user_id = $2 ORDER BY 1", customer, w->user);
	if (r != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	for (k = 0; k < (size_t)db_rows_count(known); k++)
		if ((rc = subscription_lock(w->db, db_rows_get(known, (int)k, 0))) != OUT_OK)
			goto out;
	fetched = (long long)time(NULL);
	if ((rc = stripe_get(buf_str(&path), &list)) != OUT_OK) {
		say(w, "Stripe did not list the subscriptions of %s (%s); nothing changed.",
		    customer, outcome_code(rc));
		goto out;
	}
	if ((data = jsonget_array(list, "data")) == NULL) {
		rc = OUT_STRIPE_ERROR;
		goto out;
	}
	jsonget_bool(list, "has_more", &more);
	snprintf(seen, sizeof(seen), "%lld", fetched);
	source_of(w, source);
	n = json_object_array_length(data);
	for (i = 0; i < n; i++) {
		sub = json_object_array_get_idx(data, i);
		if ((id = jsonget_str(sub, "id")) == NULL || !stripe_id_valid(id)) {
			rc = OUT_STRIPE_ERROR;
			goto out;
		}
		for (was_known = 0, k = 0; k < (size_t)db_rows_count(known); k++)
			was_known |= strcmp(db_rows_get(known, (int)k, 0), id) == 0;
		if (!was_known) {
			db_rows_free(rows);
			rows = NULL;
			if ((rc = subscription_lock(w->db, id)) != OUT_OK)
				goto out;
			r = DB_QUERY(w->db, &rows, "SELECT 1 FROM subscriptions"
			    " WHERE stripe_subscription_id = $1"
			    " AND last_event_created > to_timestamp($2::bigint)", id, seen);
			if (r != DB_OK) {
				rc = db_outcome(r);
				goto out;
			}
			if (db_rows_count(rows) > 0) {
				skipped++;
				continue;
			}
		}
		if ((rc = subscription_store_object(w->db, sub, fetched, source, w->user)) != OUT_OK)
			goto out;
		json_object_array_add(stored, json_object_new_string(id));
		/* The summary lists what fits. */
		if (buf_printf(&ids, "%s%s %s", ids.len ? ", " : "", id, sub_status(sub)) == -1)
			continue;
	}
	detail_add(w, "customer", json_object_new_string(customer));
	detail_add(w, "stored", json_object_get(stored));
	say(w, "Re-synced %zu subscription(s) of %s from Stripe%s%s%s%s", n - (size_t)skipped,
	    customer, n ? ": " : ".", buf_str(&ids),
	    skipped ? " (a newer event had already stored one)" : "",
	    more ? " (Stripe has more than one page: the first was stored)" : "");
	if ((rc = audit_done(w)) == OUT_OK && db_commit(w->db) != DB_OK)
		rc = OUT_UNAVAILABLE;
out:
	if (rc != OUT_OK)
		db_rollback(w->db);
	json_object_put(list);
	json_object_put(stored);
	free(customer);
	db_rows_free(rows);
	db_rows_free(known);
	buf_free(&path);
	buf_free(&ids);
	return rc;
}

/* This month's counter of one usage type back to 0, with the audit row, in one transaction. */
static enum outcome
act_reset_usage(struct act *w)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	enum outcome rc;

	if (db_begin(w->db) != DB_OK)
		return OUT_UNAVAILABLE;
	r = DB_QUERY(w->db, &rows,
	    "WITH old AS (SELECT id, amount FROM usage_tracking WHERE user_id = $1"
	    " AND usage_type = $2 AND period_start = usage_period_start() FOR UPDATE)"
	    " UPDATE usage_tracking u SET amount = 0 FROM old WHERE u.id = old.id"
	    " RETURNING old.amount, to_char(u.period_start, 'YYYY-MM')", w->user, w->target);
	if (r != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	if (db_rows_count(rows) != 1) {
		say(w, "Nothing to reset: no %s counted this month.", w->target);
		rc = OUT_NO_CHANGE;
		goto out;
	}
	detail_add(w, "usage_type", json_object_new_string(w->target));
	detail_add(w, "month", json_object_new_string(db_rows_get(rows, 0, 1)));
	detail_add(w, "before", json_object_new_int64(strtoll(db_rows_get(rows, 0, 0), NULL, 10)));
	say(w, "The %s counter for %s was reset from %s to 0.", w->target, db_rows_get(rows, 0, 1),
	    db_rows_get(rows, 0, 0));
	if ((rc = audit_done(w)) == OUT_OK && db_commit(w->db) != DB_OK)
		rc = OUT_UNAVAILABLE;
out:
	if (rc != OUT_OK)
		db_rollback(w->db);
	db_rows_free(rows);
	return rc;
}

enum outcome
admin_perform(struct db *db, const char *operator, enum admin_action a, const char *user_id,
    const char *target, const char *reason, const char *nonce, struct admin_done *done)
{
	struct act w = { .db = db, .operator = operator, .user = user_id, .target = target,
	    .nonce = nonce, .action = a, .summary = BUF_INIT(4096) };
	enum admin_target t = actions[a].target;
	enum outcome rc = OUT_INTERNAL;
	int got;

	memset(done, 0, sizeof(*done));
	got = audit_start(&w, reason, t == ADMIN_TARGET_SUBSCRIPTION ? target : NULL,
	    t == ADMIN_TARGET_USAGE_TYPE ? target : NULL, &rc);
	if (got == 0)
		rc = audit_replay(&w, done);
	if (got != 1)
		goto out;	/* a replay's outcome is the first submission's: not failed again */
	done->audit_id = strtoll(w.audit, NULL, 10);
	log_note("audit", w.audit);
	switch (a) {
	case ADMIN_RESYNC:
		rc = act_resync(&w);
		break;
	case ADMIN_RESET_USAGE:
		rc = act_reset_usage(&w);
		break;
	default:
		rc = act_subscription(&w);
		break;
	}
	if (rc != OUT_OK) {
		if (w.summary.len == 0)
			say(&w, "The action failed (%s); nothing changed.", outcome_code(rc));
		audit_failed(&w, rc);
	}
out:
	if (w.summary.len > 0)
		done->summary = buf_detach(&w.summary, NULL);
	buf_free(&w.summary);
	json_object_put(w.detail);
	return rc;
}
