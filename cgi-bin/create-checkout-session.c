/*
 * POST /api/stripe/create-checkout-session
 *
 * {"userId","tier","interval","successUrl","cancelUrl","email"?}
 *   -> 200 {"sessionId":"cs_...","url":"https://checkout.stripe.com/..."}
 *
 * The story: CORS preflight -> method -> who is calling -> read and
 * validate the order -> may the caller buy for that user -> not already
 * subscribed -> the user's Stripe customer -> the Checkout Session.
 */
#include <stdlib.h>

#include <json-c/json.h>

#include "auth.h"
#include "checkout.h"
#include "config.h"
#include "cors.h"
#include "db.h"
#include "jsonget.h"
#include "log.h"
#include "request.h"
#include "response.h"

int
main(void)
{
	struct request req;
	struct auth_caller caller = {AUTH__MAX, NULL};
	struct checkout_order order;
	struct json_object *body = NULL, *answer = NULL;
	struct db *db = NULL;
	const char *field = NULL, *why = NULL;
	char *customer_id = NULL, *idem = NULL, *session_id = NULL, *url = NULL;
	size_t cap;
	enum outcome o;

	log_begin("create-checkout-session");
	request_init(&req);
	if ((o = config_load()) != OUT_OK)
		goto fail;
	if (cors_handle(&req, "POST"))
		goto out;
	if ((o = request_check_method(&req, "POST, OPTIONS")) != OUT_OK ||
	    (o = auth_identify(0, &caller)) != OUT_OK ||
	    (o = request_require_json(&req)) != OUT_OK || (o = request_body_cap(&cap)) != OUT_OK ||
	    (o = request_read_body(&req, cap)) != OUT_OK ||
	    (o = jsonget_parse(req.body, req.body_len, &body)) != OUT_OK)
		goto fail;
	if ((o = checkout_parse(body, &order, &field, &why)) != OUT_OK) {
		response_error_field(o, field, why);
		goto out;
	}
	if ((o = auth_authorize(&caller, order.user_id)) != OUT_OK)
		goto fail;
	log_note("user", order.user_id);
	log_note("tier", plan_tier_name(order.tier));

	idem = checkout_idempotency_key(order.user_id, request_header("Idempotency-Key"));
	if (idem == NULL) {
		response_error(
		    OUT_BAD_REQUEST,
		    "The Idempotency-Key header must be 1 to 255 visible ASCII characters.");
		goto out;
	}
	if ((o = db_connect(&db)) != OUT_OK ||
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
	db_close(db);
	auth_caller_free(&caller);
	request_free(&req);
	free(customer_id);
	free(idem);
	free(session_id);
	free(url);
	return 0;
}
