/*
 * POST /api/stripe/webhook: Stripe event deliveries
 * (docs.stripe.com/webhooks).  Verify the signature over the raw body,
 * parse the event, apply it in one transaction, answer 2xx only when it
 * is committed so that Stripe redelivers anything we could not store.
 */
#include <stdlib.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "subscription.h"
#include "webhook_sig.h"

int
main(void)
{
	struct request req;
	struct subscription_event ev = { 0 };
	struct json_object *reply = NULL;
	struct db *db = NULL;
	size_t cap;
	enum outcome rc;

	log_begin("webhook");
	request_init(&req);
	if ((rc = config_load()) != OUT_OK ||
	    (rc = request_check_method(&req, "POST")) != OUT_OK ||
	    (rc = request_body_cap(&cap)) != OUT_OK ||
	    (rc = request_read_body(&req, cap)) != OUT_OK ||
	    (rc = webhook_sig_check(req.body, req.body_len)) != OUT_OK ||
	    (rc = subscription_event_parse(req.body, req.body_len, &ev)) != OUT_OK ||
	    (rc = db_connect(&db)) != OUT_OK)
		goto out;
	rc = subscription_apply_event(db, &ev, &reply);
out:
	if (rc == OUT_OK)
		response_json(200, reply);
	else
		response_error(rc, NULL);
	json_object_put(reply);
	db_close(db);
	subscription_event_free(&ev);
	request_free(&req);
	return 0;
}
