/*
 * POST /api/stripe/create-checkout-session
 *
 * {"userId","tier","interval","successUrl","cancelUrl","email"?}
 *   -> 200 {"sessionId":"cs_...","url":"https://checkout.stripe.com/..."}
 *
 * The story (after serve has read the body, answered CORS preflights and
 * refused other methods): who is calling -> read and validate the order
 * -> may the caller buy for that user -> not already subscribed -> the
 * user's Stripe customer -> the Checkout Session.
 */
#include <stdlib.h>

#include <json-c/json.h>

#include "auth.h"
#include "checkout.h"
#include "db.h"
#include "jsonget.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "serve.h"

static void
create_checkout_session(struct serve *srv, struct request *req)
{
	struct auth_caller caller = {AUTH__MAX, NULL};
	struct checkout_order order;
	struct json_object *body = NULL, *answer = NULL;
	struct db *db = NULL;
	const char *field = NULL, *why = NULL, *client_key;
	char *customer_id = NULL, *idem = NULL, *session_id = NULL, *url = NULL;
	enum outcome o;

	if ((o = auth_identify(0, &caller)) != OUT_OK ||
	    (o = serve_limit_caller(srv, &caller)) != OUT_OK ||
	    (o = request_require_json(req)) != OUT_OK || (o = request_body(req)) != OUT_OK ||
	    (o = jsonget_parse(req->body, req->body_len, &body)) != OUT_OK)
		goto fail;
	if ((o = checkout_parse(body, &order, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	if ((o = auth_authorize(&caller, order.user_id)) != OUT_OK)
		goto fail;
	log_note("user", order.user_id);
	log_note("tier", plan_tier_name(order.tier));

	if ((o = request_idempotency_key(&client_key, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	idem = checkout_idempotency_key(order.user_id, client_key);
	if ((o = serve_db(srv, &db)) != OUT_OK ||
	    (o = checkout_not_subscribed(db, order.user_id)) != OUT_OK ||
	    (o = checkout_customer(db, order.user_id, order.email, &customer_id)) != OUT_OK ||
	    (o = checkout_create_session(db, &order, customer_id, idem, &session_id, &url)) !=
		OUT_OK)
		goto fail;

	answer = response_object();
	response_add(answer, "sessionId", json_object_new_string(session_id));
	response_add(answer, "url", json_object_new_string(url));
	response_json(200, answer);
	goto out;
fail:
	response_error(o, NULL);
out:
	json_object_put(answer);
	json_object_put(body);
	auth_caller_free(&caller);
	free(customer_id);
	free(idem);
	free(session_id);
	free(url);
}

static const struct serve_endpoint endpoint = {
	.name = "create-checkout-session",
	.methods = "POST",
	.cors = 1,
	.handle = create_checkout_session,
	.rate_limit = { "CHECKOUT", "10/60s", "60/60s" },
};

int
main(void)
{
	return serve_main(&endpoint);
}
