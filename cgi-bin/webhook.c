/*
 * POST /api/stripe/webhook: Stripe event deliveries
 * (docs.stripe.com/webhooks).  Verify the signature over the raw body,
 * parse the event, apply it in one transaction, answer 2xx only when it
 * is committed so that Stripe redelivers anything we could not store.
 * Counted in the host's metrics file: refusals by reason, events by type
 * and result, and the lag since Stripe created the event.  Not rate
 * limited: Stripe must always get through, and the signature is the gate.
 */
#include <time.h>

#include "db.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "response.h"
#include "serve.h"
#include "subscription.h"
#include "webhook_sig.h"

/* How an event ended, for the metrics: see subscription_apply_event's reply. */
static const char *
result(enum outcome rc, struct json_object *reply)
{
	struct json_object *flag;

	if (rc != OUT_OK)
		return "failed";
	if (json_object_object_get_ex(reply, "duplicate", &flag) && json_object_get_boolean(flag))
		return "duplicate";
	if (json_object_object_get_ex(reply, "ignored", &flag) && json_object_get_boolean(flag))
		return "ignored";
	return "applied";
}

static void
webhook(struct serve *srv, struct request *req)
{
	struct subscription_event ev = { 0 };
	struct json_object *reply = NULL;
	struct db *db = NULL;
	enum outcome rc;

	if ((rc = request_body(req)) != OUT_OK ||
	    (rc = webhook_sig_check(req->body, req->body_len)) != OUT_OK ||
	    (rc = subscription_event_parse(req->body, req->body_len, &ev)) != OUT_OK) {
		metrics_webhook_rejected(outcome_code(rc));
		goto out;
	}
	metrics_webhook_lag((long long)time(NULL) - ev.created);
	if ((rc = serve_db(srv, &db)) == OUT_OK)
		rc = subscription_apply_event(db, &ev, &reply);
	metrics_webhook_event(ev.type, result(rc, reply));
out:
	if (rc == OUT_OK)
		response_json(200, reply);
	else
		response_error(rc, NULL);
	json_object_put(reply);
	subscription_event_free(&ev);
}

/* Server to server: no CORS, no rate limit. */
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
