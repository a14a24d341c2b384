/*
 * POST /api/stripe/webhook: Stripe event deliveries
 * (docs.stripe.com/webhooks).  Verify the signature over the raw body,
 * parse the event, apply it in one transaction, answer 2xx only when it
 * is committed so that Stripe redelivers anything we could not store.
 */
#include <stdlib.h>

#include "db.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "serve.h"
#include "subscription.h"
#include "webhook_sig.h"

static void
webhook(struct serve *srv, struct request *req)
{
	struct subscription_event ev = { 0 };
	struct json_object *reply = NULL;
	struct db *db = NULL;
	enum outcome rc;

	if ((rc = request_body(req)) != OUT_OK ||
	    (rc = webhook_sig_check(req->body, req->body_len)) != OUT_OK ||
	    (rc = subscription_event_parse(req->body, req->body_len, &ev)) != OUT_OK ||
	    (rc = serve_db(srv, &db)) != OUT_OK)
		goto out;
	rc = subscription_apply_event(db, &ev, &reply);
out:
	if (rc == OUT_OK)
		response_json(200, reply);
	else
		response_error(rc, NULL);
	json_object_put(reply);
	subscription_event_free(&ev);
}

/* Server to server: no CORS. */
static const struct serve_endpoint endpoint = {
	.name = "webhook",
	.methods = "POST",
	.cors = 0,
	.handle = webhook,
};

int
main(void)
{
	return serve_main(&endpoint);
}
