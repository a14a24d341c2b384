/*
 * The rules of POST /api/stripe/portal-session: a Stripe Billing Portal
 * session (docs.stripe.com/api/customer_portal/sessions/create) for the
 * user's stored customer, optionally opening one flow
 * (docs.stripe.com/customer-management/portal-deep-links) that sends the
 * browser back to returnUrl when done.
 */
#ifndef PORTAL_H
#define PORTAL_H

#include <json-c/json.h>

#include "db.h"
#include "form.h"
#include "outcome.h"

enum portal_flow {
	PORTAL_FLOW_NONE, /* the portal's home page */
	PORTAL_FLOW_PAYMENT_METHOD_UPDATE,
	PORTAL_FLOW_SUBSCRIPTION_CANCEL,
	PORTAL_FLOW_SUBSCRIPTION_UPDATE,
	PORTAL_FLOW__MAX
};

struct portal_request {
	const char *user_id; /* strings borrowed from the parsed body */
	const char *return_url;
	enum portal_flow flow;
};

/*
 * Validates the body {"userId", "returnUrl", "flow"?} against the field
 * table; returnUrl follows checkout's redirect rules
 * (ALLOWED_REDIRECT_HOSTS).  OUT_OK and *req filled, or OUT_INVALID_FIELD
 * with *field and *why (static).
 */
enum outcome portal_parse(struct json_object *body, struct portal_request *req, const char **field,
			  const char **why) __attribute__((warn_unused_result));

/* Stripe's name of a flow ("subscription_cancel"), NULL for PORTAL_FLOW_NONE. */
const char *portal_flow_name(enum portal_flow flow);

/*
 * The user's Stripe customer (caller frees) and, for a flow that acts on
 * a subscription, the live one (trialing, active or past_due; caller
 * frees; NULL otherwise).  OUT_OK; OUT_NO_CUSTOMER when the user has
 * none; OUT_FLOW_NEEDS_SUBSCRIPTION when the flow needs a live
 * subscription and there is none; a database outcome.
 */
enum outcome portal_customer(struct db *db, const struct portal_request *req, char **customer,
			     char **subscription) __attribute__((warn_unused_result));

/*
 * The parameters of POST /v1/billing_portal/sessions: customer,
 * return_url, configuration (NULL: the account's default) and, with a
 * flow, flow_data (type, the subscription, after_completion redirecting
 * to return_url).  0, or -1 past the form cap.
 */
int portal_session_params(struct form *f, const struct portal_request *req, const char *customer,
			  const char *subscription, const char *configuration)
    __attribute__((warn_unused_result));

/*
 * Creates the session (configuration from STRIPE_PORTAL_CONFIGURATION).
 * OUT_OK with *url (https, caller frees); OUT_MISCONFIGURED for a
 * configuration id that is not one; OUT_IDEMPOTENCY_CONFLICT when the
 * client's Idempotency-Key was first used for another request; the other
 * stripe outcomes.
 */
enum outcome portal_create_session(const struct portal_request *req, const char *customer,
				   const char *subscription, const char *idempotency_key,
				   char **url) __attribute__((warn_unused_result));

#endif
