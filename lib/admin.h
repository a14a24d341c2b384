/*
 * The operator console's rules (admin.cgi; the pages are console.h's):
 *   - who may enter: Apache authenticates operators (REMOTE_USER, e.g.
 *     Basic auth against an htpasswd file), or, for the JSON API only, a
 *     bearer JWT meant for operators (aud ADMIN_JWT_AUDIENCE, auth.h);
 *     either name must be listed in ADMIN_USERS;
 *   - whether a form post comes from the console's own pages (Origin, else
 *     Referer; the per-form token is auth.h's);
 *   - the analytics API: analytics_report() as JSON, analytics_monthly()
 *     as CSV (RFC 4180);
 *   - the actions on a customer, each written to admin_audit with who,
 *     when, what and why (sql/schema.sql says how).
 */
#ifndef ADMIN_H
#define ADMIN_H

#include <json-c/json.h>

#include "db.h"
#include "outcome.h"
#include "request.h"

/*
 * The operator of this request.  api: an operator's bearer JWT is accepted
 * too (the JSON API; pages need REMOTE_USER).  OUT_OK and *name (caller frees);
 * OUT_UNAUTHORIZED when nobody authenticated (the WWW-Authenticate
 * challenge is queued); OUT_FORBIDDEN when the name is not in ADMIN_USERS
 * (or ADMIN_USERS is unset: nobody may enter); OUT_MISCONFIGURED from a
 * broken JWT setting.
 */
enum outcome admin_operator(int api, char **name) __attribute__((warn_unused_result));

/*
 * Whether a POST comes from a page of this site (the OWASP origin check):
 * Origin, or without it Referer, must be ADMIN_ORIGIN when set (behind a
 * proxy that changes the Host), else this request's own scheme and Host.
 * OUT_OK or OUT_FORBIDDEN (logged).
 */
enum outcome admin_same_origin(void) __attribute__((warn_unused_result));

/* A range of months for the figures, as the API and the dashboard take it. */
struct admin_period {
	char from[8];	/* "YYYY-MM" */
	char to[8];
	char currency[4];	/* lower case; "" = the currency with the most MRR */
};

/*
 * Reads from, to and currency from the query string.  Defaults: to = this
 * UTC month, from = 11 months before to.  from <= to, at most 240 months,
 * currency three letters.  OUT_OK, or OUT_INVALID_FIELD with *field and
 * *why (static).
 */
enum outcome admin_period_parse(const struct request *req, struct admin_period *p,
    const char **field, const char **why) __attribute__((warn_unused_result));

/* Whether the client asked for CSV: Accept: text/csv, or format=csv. */
int admin_wants_csv(const struct request *req);

/*
 * The dashboard's figures as parsed JSON in analytics_report's shape
 * (currency, months, quotaUtilisation, snapshot; not featureUsage and
 * quotaBreaches): *report, caller puts it.  OUT_OK, or the database
 * outcome.
 */
enum outcome admin_report(struct db *db, const struct admin_period *p,
    struct json_object **report) __attribute__((warn_unused_result));

/*
 * Answers GET /api/admin/analytics: the report as JSON, or the monthly
 * series as CSV (one header line of column names, CRLF line ends, RFC
 * 4180 quoting; month as YYYY-MM).  OUT_OK once answered; otherwise
 * nothing was sent.
 */
enum outcome admin_analytics_answer(struct db *db, const struct admin_period *p, int csv)
    __attribute__((warn_unused_result));

/* --- actions ------------------------------------------------------------------- */

enum admin_action {
	ADMIN_CANCEL_AT_PERIOD_END,
	ADMIN_CANCEL_NOW,
	ADMIN_RESUME,
	ADMIN_RESYNC,
	ADMIN_RESET_USAGE,
	ADMIN_ACTION__MAX
};

enum admin_target {
	ADMIN_TARGET_SUBSCRIPTION,	/* target: a Stripe subscription id of the user */
	ADMIN_TARGET_USAGE_TYPE,	/* target: a usage type */
	ADMIN_TARGET_NONE,		/* the whole customer */
};

struct admin_action_info {
	const char *name;	/* "cancel_now": form value, admin_audit.action */
	const char *label;	/* button text: "Cancel now" */
	const char *effect;	/* what it does, one sentence for the confirmation page */
	enum admin_target target;
};

/* The action's description; NULL out of range. */
const struct admin_action_info *admin_action_info(enum admin_action a);

/* 0 and *a for a known action name, else -1. */
int admin_action_parse(const char *name, enum admin_action *a);

/* Whether target is acceptable for a (a Stripe id, a usage type, or NULL). */
int admin_target_valid(enum admin_action a, const char *target);

/* What a form token for this action is bound to (auth_form_token); caller frees. */
char *admin_form_binding(enum admin_action a, const char *user_id, const char *target);

/* Whether reason is acceptable: 1..LIMIT_ADMIN_REASON bytes of clean UTF-8, not all blank. */
int admin_reason_valid(const char *reason);

struct admin_done {
	long long audit_id;	/* the admin_audit row; 0 when none was written */
	int replayed;		/* the form had been submitted before: what it did then */
	char *summary;		/* what happened, plain text (owned); may be NULL */
};

/*
 * Performs action a of operator on user_id (target: admin_target) for
 * reason, as the form with this nonce asked (auth_form_check), and records
 * it in admin_audit.  The Stripe calls go through lib/stripe (POST
 * /v1/subscriptions/{id} cancel_at_period_end, DELETE, GET
 * /v1/subscriptions?customer=) under the webhook's lock on the
 * subscription, and Stripe's answer is stored as the webhook stores a
 * fetched subscription (subscription_store_object); a failed call fetches
 * the subscription and stores what Stripe has, so a lost answer counts as
 * done and a refusal of a changed subscription as OUT_NO_CHANGE.  OUT_OK
 * with done->summary.  A form already submitted: done->replayed, and the
 * outcome of that first submission (OUT_OK only if it was done), or
 * OUT_IDEMPOTENCY_CONFLICT while it is still being carried out.
 * Otherwise OUT_NOT_FOUND (no such subscription of the user, no Stripe
 * customer), OUT_NO_CHANGE (nothing to do in the current state),
 * OUT_STRIPE_ERROR / OUT_UNAVAILABLE / OUT_MISCONFIGURED (Stripe), or a
 * database outcome; done->summary may say more.  Free done with
 * admin_done_free.
 */
enum outcome admin_perform(struct db *db, const char *operator, enum admin_action a,
    const char *user_id, const char *target, const char *reason, const char *nonce,
    struct admin_done *done) __attribute__((warn_unused_result));

void admin_done_free(struct admin_done *done);

#endif
