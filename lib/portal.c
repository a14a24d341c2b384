#include <stdlib.h>
#include <string.h>

#include "checkout.h"
#include "config.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "portal.h"
#include "stripe.h"

static const char *const flow_names[PORTAL_FLOW__MAX] = {
    [PORTAL_FLOW_NONE] = NULL,
    [PORTAL_FLOW_PAYMENT_METHOD_UPDATE] = "payment_method_update",
    [PORTAL_FLOW_SUBSCRIPTION_CANCEL] = "subscription_cancel",
    [PORTAL_FLOW_SUBSCRIPTION_UPDATE] = "subscription_update",
};

static const char *const flow_choices[] = {
    "payment_method_update",
    "subscription_cancel",
    "subscription_update",
    NULL,
};

/* The request body, declared once. */
static const struct jsonget_field portal_fields[] = {
    {"userId", JG_STRING, 1, 1, LIMIT_USER_ID_LEN, NULL},
    {"returnUrl", JG_STRING, 1, 1, LIMIT_URL_LEN, NULL},
    {"flow", JG_STRING, 0, 1, 32, flow_choices},
};

/*
 * The customer and, when the flow needs it, the live subscription.  The
 * customers row is the user's link; a subscription stored before that
 * link existed (created in the Dashboard, linked by metadata.userId)
 * names its customer itself, and a flow must use that subscription's.
 */
static const char sql_customer[] =
    "SELECT CASE WHEN s.status IN ('trialing', 'active', 'past_due')"
    " THEN coalesce(s.stripe_customer_id, c.stripe_customer_id)"
    " ELSE coalesce(c.stripe_customer_id, s.stripe_customer_id) END,"
    " CASE WHEN s.status IN ('trialing', 'active', 'past_due') THEN s.stripe_subscription_id END"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN customers c ON c.user_id = $1"
    " LEFT JOIN LATERAL user_live_subscription($1) s ON true";

const char *
portal_flow_name(enum portal_flow flow)
{
	return (unsigned)flow < PORTAL_FLOW__MAX ? flow_names[flow] : NULL;
}

enum outcome
portal_parse(struct json_object *body, struct portal_request *req, const char **field,
	     const char **why)
{
	const char *flow;
	enum outcome o;
	int i;

	o = jsonget_validate(body, portal_fields, sizeof(portal_fields) / sizeof(portal_fields[0]),
			     field, why);
	if (o != OUT_OK)
		return o;
	memset(req, 0, sizeof(*req));
	req->user_id = jsonget_str(body, "userId");
	req->return_url = jsonget_str(body, "returnUrl");
	req->flow = PORTAL_FLOW_NONE;
	if ((flow = jsonget_str(body, "flow")) != NULL)
		for (i = PORTAL_FLOW_NONE + 1; i < PORTAL_FLOW__MAX; i++)
			if (strcmp(flow, flow_names[i]) == 0)
				req->flow = (enum portal_flow)i;
	if ((*why = checkout_redirect_problem(req->return_url)) != NULL) {
		*field = "returnUrl";
		return OUT_INVALID_FIELD;
	}
	return OUT_OK;
}

static int
flow_needs_subscription(enum portal_flow flow)
{
	return flow == PORTAL_FLOW_SUBSCRIPTION_CANCEL || flow == PORTAL_FLOW_SUBSCRIPTION_UPDATE;
}

enum outcome
portal_customer(struct db *db, const struct portal_request *req, char **customer,
		char **subscription)
{
	struct db_rows *rows = NULL;
	const char *cus, *sub;
	enum db_result r;
	enum outcome o;

	*customer = *subscription = NULL;
	if ((r = DB_QUERY(db, &rows, sql_customer, req->user_id)) != DB_OK)
		return db_outcome(r);
	cus = db_rows_get(rows, 0, 0);
	sub = db_rows_get(rows, 0, 1);
	if (cus == NULL)
		o = OUT_NO_CUSTOMER;
	else if (flow_needs_subscription(req->flow) && sub == NULL)
		o = OUT_FLOW_NEEDS_SUBSCRIPTION;
	else {
		*customer = mem_strdup(cus);
		if (flow_needs_subscription(req->flow))
			*subscription = mem_strdup(sub);
		o = OUT_OK;
	}
	db_rows_free(rows);
	return o;
}

int
portal_session_params(struct form *f, const struct portal_request *req, const char *customer,
		      const char *subscription, const char *configuration)
{
	const char *flow = portal_flow_name(req->flow);

	if (form_add(f, "customer", customer) == -1 ||
	    form_add(f, "return_url", req->return_url) == -1 ||
	    (configuration && form_add(f, "configuration", configuration) == -1))
		return -1;
	if (flow == NULL)
		return 0;
	/* After the flow Stripe redirects, instead of showing the portal's home page. */
	if (form_add(f, "flow_data[type]", flow) == -1 ||
	    form_add(f, "flow_data[after_completion][type]", "redirect") == -1 ||
	    form_add(f, "flow_data[after_completion][redirect][return_url]", req->return_url) == -1)
		return -1;
	if (req->flow == PORTAL_FLOW_SUBSCRIPTION_CANCEL)
		return form_add(f, "flow_data[subscription_cancel][subscription]", subscription);
	if (req->flow == PORTAL_FLOW_SUBSCRIPTION_UPDATE)
		return form_add(f, "flow_data[subscription_update][subscription]", subscription);
	return 0;
}

enum outcome
portal_create_session(const struct portal_request *req, const char *customer,
		      const char *subscription, const char *idempotency_key, char **url)
{
	struct form f;
	struct json_object *session = NULL;
	const char *configuration = config_get("STRIPE_PORTAL_CONFIGURATION"), *u;
	enum outcome o;

	*url = NULL;
	form_init(&f);
	if (configuration && !stripe_id_valid(configuration)) {
		log_msg("setting STRIPE_PORTAL_CONFIGURATION is not a Stripe id (bpc_...)");
		o = OUT_MISCONFIGURED;
		goto out;
	}
	if (portal_session_params(&f, req, customer, subscription, configuration) == -1) {
		o = OUT_INTERNAL;
		goto out;
	}
	o = stripe_post("/v1/billing_portal/sessions", &f, idempotency_key, &session);
	if (o != OUT_OK)
		goto out;
	if ((u = jsonget_str(session, "url")) == NULL || !stripe_page_url_ok(u)) {
		log_msg("stripe POST /v1/billing_portal/sessions: answer without an https url");
		o = OUT_STRIPE_ERROR;
		goto out;
	}
	*url = mem_strdup(u);
out:
	json_object_put(session);
	form_free(&f);
	return o;
}
