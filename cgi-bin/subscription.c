/*
 * GET|POST /api/subscription: a user's subscription, and changing it
 * themselves (lib/selfservice.h has the rules).
 *
 *   GET  /api/subscription?userId=U
 *        200 {"userId","subscriptionId","tier","interval","status","priceId",
 *             "amount","currency","trialStart","trialEnd","currentPeriodStart",
 *             "currentPeriodEnd","canceledAt","endedAt","cancelAtPeriodEnd",
 *             "actions":["change"|"cancel"|"resume",...]}
 *   POST /api/subscription
 *        {"userId","action":"change","tier","interval","proration"?,"prorationDate"?}
 *        {"userId","action":"preview","tier","interval","proration"?}
 *        {"userId","action":"cancel","atPeriodEnd"?:true}
 *        {"userId","action":"resume"}
 *        200 the new state (as GET); preview: {"proration","prorationDate",
 *        "currency","dueNow":{...},"nextInvoice":{...}}
 *        Idempotency-Key: as for checkout (optional)
 *
 * The story (after serve has read the body, answered CORS preflights and
 * refused other methods): who is calling -> what they ask -> may the
 * caller act for that user -> read, or act in one transaction.
 */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "auth.h"
#include "jsonget.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "selfservice.h"
#include "serve.h"
#include "stripe.h"

/* GET: the userId query parameter (*why static on OUT_INVALID_FIELD). */
static enum outcome
query_user(const struct request *req, char **user_id, const char **why)
{
	switch (request_query_param(req, "userId", user_id)) {
	case 0:
		*why = "is required";
		return OUT_INVALID_FIELD;
	case 1:
		if (auth_user_id_valid(*user_id))
			return OUT_OK;
		*why = "must be 1 to 128 characters of text";
		return OUT_INVALID_FIELD;
	default:
		*why = "is malformed or repeated";
		return OUT_INVALID_FIELD;
	}
}

static void
read_subscription(struct serve *srv, struct request *req, const struct auth_caller *caller)
{
	struct json_object *answer = NULL;
	struct db *db = NULL;
	const char *why = NULL;
	char *user_id = NULL;
	enum outcome o;

	if ((o = query_user(req, &user_id, &why)) != OUT_OK) {
		response_error_field(o, "userId", why);
		goto out;
	}
	if ((o = auth_authorize(caller, user_id)) != OUT_OK || (o = serve_db(srv, &db)) != OUT_OK ||
	    (o = selfservice_read(db, user_id, &answer)) != OUT_OK) {
		response_error(o, NULL);
		goto out;
	}
	response_json(200, answer);
out:
	json_object_put(answer);
	free(user_id);
}

static void
act_on_subscription(struct serve *srv, struct request *req, const struct auth_caller *caller)
{
	struct selfservice_request sreq;
	struct json_object *body = NULL, *answer = NULL;
	struct db *db = NULL;
	const char *field = NULL, *why = NULL, *client_key;
	char *idem = NULL;
	enum outcome o;

	if ((o = request_require_json(req)) != OUT_OK || (o = request_body(req)) != OUT_OK ||
	    (o = jsonget_parse(req->body, req->body_len, &body)) != OUT_OK)
		goto fail;
	if ((o = selfservice_parse(body, &sreq, &field, &why)) != OUT_OK) {
		if (o == OUT_INVALID_FIELD)
			response_error_field(o, field, why);
		else
			response_error(o, NULL);
		goto out;
	}
	if ((o = auth_authorize(caller, sreq.user_id)) != OUT_OK)
		goto fail;
	log_note("user", sreq.user_id);

	if ((o = request_idempotency_key(&client_key, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	idem = stripe_client_idempotency_key("subscription", sreq.user_id, client_key);
	if ((o = serve_db(srv, &db)) != OUT_OK)
		goto fail;
	o = selfservice_act(db, &sreq, idem, &answer, &why);
	if (o == OUT_OK)
		response_json(200, answer);
	else if (o == OUT_PAYMENT_FAILED)
		response_error_extra(o, answer); /* the state, old plan in force */
	else if (o == OUT_INVALID_FIELD)
		response_error_field(o, "prorationDate", why);
	else
		goto fail;
	goto out;
fail:
	response_error(o, NULL);
out:
	json_object_put(answer);
	json_object_put(body);
	free(idem);
}

static void
subscription(struct serve *srv, struct request *req)
{
	struct auth_caller caller = {AUTH__MAX, NULL};
	enum outcome o;

	if ((o = auth_identify(0, &caller)) != OUT_OK ||
	    (o = serve_limit_caller(srv, &caller)) != OUT_OK)
		response_error(o, NULL);
	else if (strcmp(req->method, "GET") == 0)
		read_subscription(srv, req, &caller);
	else
		act_on_subscription(srv, req, &caller);
	auth_caller_free(&caller);
}

static const struct serve_endpoint endpoint = {
    .name = "subscription",
    .methods = "GET, POST",
    .cors = 1,
    .rate_limit = { "SUBSCRIPTION", "30/60s", "120/60s" },
    .handle = subscription,
};

int
main(void)
{
	return serve_main(&endpoint);
}
