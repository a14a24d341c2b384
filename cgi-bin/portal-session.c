/*
 * POST /api/stripe/portal-session
 *
 * {"userId","returnUrl","flow"?} -> 200 {"url":"https://billing.stripe.com/p/session/..."}
 *
 * The story (after serve has read the body, answered CORS preflights and
 * refused other methods): who is calling -> read and validate the request
 * -> may the caller act for that user -> the user's Stripe customer (and
 * live subscription, for a subscription flow) -> the portal session.
 */
#include <stdlib.h>

#include <json-c/json.h>

#include "auth.h"
#include "jsonget.h"
#include "log.h"
#include "portal.h"
#include "request.h"
#include "response.h"
#include "serve.h"
#include "stripe.h"

static void
portal_session(struct serve *srv, struct request *req)
{
	struct auth_caller caller = {AUTH__MAX, NULL};
	struct portal_request preq;
	struct json_object *body = NULL, *answer = NULL;
	struct db *db = NULL;
	const char *field = NULL, *why = NULL, *client_key;
	char *customer = NULL, *subscription = NULL, *idem = NULL, *url = NULL;
	enum outcome o;

	if ((o = auth_identify(0, &caller)) != OUT_OK ||
	    (o = serve_limit_caller(srv, &caller)) != OUT_OK ||
	    (o = request_require_json(req)) != OUT_OK || (o = request_body(req)) != OUT_OK ||
	    (o = jsonget_parse(req->body, req->body_len, &body)) != OUT_OK)
		goto fail;
	if ((o = portal_parse(body, &preq, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	if ((o = auth_authorize(&caller, preq.user_id)) != OUT_OK)
		goto fail;
	log_note("user", preq.user_id);
	log_note("flow", portal_flow_name(preq.flow));

	if ((o = request_idempotency_key(&client_key, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	idem = stripe_client_idempotency_key("portal", preq.user_id, client_key);
	if ((o = serve_db(srv, &db)) != OUT_OK ||
	    (o = portal_customer(db, &preq, &customer, &subscription)) != OUT_OK ||
	    (o = portal_create_session(&preq, customer, subscription, idem, &url)) != OUT_OK)
		goto fail;

	answer = response_object();
	response_add(answer, "url", json_object_new_string(url));
	response_json(200, answer);
	goto out;
fail:
	response_error(o, NULL);
out:
	json_object_put(answer);
	json_object_put(body);
	auth_caller_free(&caller);
	free(customer);
	free(subscription);
	free(idem);
	free(url);
}

static const struct serve_endpoint endpoint = {
    .name = "portal-session",
    .methods = "POST",
    .cors = 1,
    .rate_limit = { "PORTAL", "10/60s", "60/60s" },
    .handle = portal_session,
};

int
main(void)
{
	return serve_main(&endpoint);
}
