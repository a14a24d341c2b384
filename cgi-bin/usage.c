/*
 * GET|POST /api/usage: a user's usage this month, and recording usage
 * against the quota of their plan.
 *
 *   GET  /api/usage?userId=U
 *        200 {"userId","tier","status","period":{"start","end"},
 *             "subscription":{"interval","status","trialEnd","currentPeriodEnd",
 *                             "cancelAtPeriodEnd"} | null,
 *             "usage":[{"usageType","used","limit","remaining"} x5]}
 *        status is the subscription's ("none" without one); subscription is
 *        null only when the user never had one (a canceled one is shown).
 *   POST /api/usage  {"userId","usageType","amount"?:1,"metadata"?:{...}}
 *        Idempotency-Key: <1..255 characters 0x20-0x7e> (optional)
 *        200 {"userId","usageType","amount","used","limit","remaining","period"}
 *        402 {"error":{"code":"quota_exceeded",...}, the same members}, nothing counted
 *        409 conflict: the Idempotency-Key was used with a different request
 *            (same user, usageType, amount and metadata = same request)
 *
 * Callers: the user themselves (REMOTE_USER or a JWT), or an app backend
 * with `Authorization: Bearer <USAGE_API_KEY>` acting for any user.  userId
 * is required in both cases.  Checks run in this order: 405, 401, 400/411/
 * 413/415 (the body), 403 (userId is not the caller), then the database
 * (503 when it is down).  serve answers OPTIONS and 405 and has read the
 * body before any of them; HEAD is answered as GET without the body.
 *
 * Idempotency (the IETF Idempotency-Key draft, Stripe's semantics): keys
 * are per user; a 200 is stored with the counting, in one transaction,
 * and a retry gets it back byte for byte with `Idempotent-Replayed: true`.
 * A 402 and errors (4xx, 5xx) counted nothing and store nothing, so the
 * retry is a new attempt.  Keys live 24 hours (one POST in 100 calls
 * prune_usage_idempotency(); a cron job running `SELECT
 * prune_usage_idempotency()` does the same for quiet sites), at most
 * USAGE_IDEMPOTENCY_MAX_KEYS (1000) per user, the oldest going first.
 * metadata is validated (an object, at most 4 KiB, no NUL) and is part of
 * the idempotency comparison, but is not stored: usage is kept as monthly
 * counters, not as an event log.
 */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "response.h"
#include "serve.h"
#include "usage.h"

/* Where a 400 points: the offending field and why (static strings). */
struct problem {
	const char *field;
	const char *why;
};

/* GET: the userId query parameter. */
static enum outcome
read_query(const struct request *req, char **user_id, struct problem *p)
{
	p->field = "userId";
	switch (request_query_param(req, "userId", user_id)) {
	case 0:
		p->why = "is required";
		return OUT_INVALID_FIELD;
	case 1:
		if (auth_user_id_valid(*user_id))
			return OUT_OK;
		p->why = "must be 1 to 128 characters of text";
		return OUT_INVALID_FIELD;
	default:
		p->why = "is malformed or repeated";
		return OUT_INVALID_FIELD;
	}
}

/* POST: a JSON body validated by the usage field table, and the Idempotency-Key header. */
static enum outcome
read_record(struct request *req, struct usage_record *rec, const char **key, struct problem *p)
{
	enum outcome rc;

	if ((rc = request_require_json(req)) != OUT_OK || (rc = request_body(req)) != OUT_OK ||
	    (rc = usage_parse_record(req->body, req->body_len, rec, &p->field, &p->why)) != OUT_OK)
		return rc;
	return request_idempotency_key(key, &p->field, &p->why);
}

static void
respond(const struct usage_answer *a)
{
	/* As Stripe does, say when an answer is the stored first one. */
	if (a->replayed)
		response_header("Idempotent-Replayed", "true");
	if (a->outcome == OUT_QUOTA_EXCEEDED && !a->replayed)
		metrics_usage_breach(a->tier, a->usage_type);
	if (a->outcome == OUT_OK)
		response_json(200, a->body);
	else
		response_error_extra(a->outcome, a->body);
}

static void
respond_problem(enum outcome rc, const struct problem *p)
{
	if (rc == OUT_INVALID_FIELD && p->field)
		response_error_field(rc, p->field, p->why);
	else
		response_error(rc, NULL);
}

static void
usage(struct serve *srv, struct request *req)
{
	struct auth_caller caller = {0};
	struct usage_record rec = {0};
	struct usage_answer answer = {0};
	struct problem problem = {0};
	struct db *db = NULL;
	char *query_user = NULL;
	const char *user_id, *key = NULL;
	int is_get;
	enum outcome rc;

	if ((rc = auth_identify(1, &caller)) != OUT_OK ||
	    (rc = serve_limit_caller(srv, &caller)) != OUT_OK)
		goto out;

	is_get = strcmp(req->method, "GET") == 0;
	rc = is_get ? read_query(req, &query_user, &problem)
		    : read_record(req, &rec, &key, &problem);
	if (rc != OUT_OK)
		goto out;
	user_id = is_get ? query_user : rec.user_id;
	if ((rc = auth_authorize(&caller, user_id)) != OUT_OK)
		goto out;

	if ((rc = serve_db(srv, &db)) != OUT_OK)
		goto out;
	rc = is_get ? usage_read(db, user_id, &answer) : usage_track(db, &rec, key, &answer);
	if (rc == OUT_OK) {
		respond(&answer);
		if (!is_get)
			usage_maybe_prune(db); /* 1 POST in 100; an index range delete */
	}
out:
	if (!response_sent())
		respond_problem(rc, &problem);
	usage_answer_free(&answer);
	usage_record_free(&rec);
	free(query_user);
	auth_caller_free(&caller);
}

static const struct serve_endpoint endpoint = {
	.name = "usage",
	.methods = "GET, POST",
	.cors = 1,
	.handle = usage,
	/* An app backend recording for all its users through USAGE_API_KEY is one caller. */
	.rate_limit = { "USAGE", "600/60s", "1200/60s" },
};

int
main(void)
{
	return serve_main(&endpoint);
}
