/*
 * The business rules of POST /api/stripe/create-checkout-session:
 * what a valid order is, where Stripe may send the browser back to,
 * who may not buy twice, one Stripe customer per user, and the Checkout
 * Session itself (docs.stripe.com/api/checkout/sessions/create).
 */
#ifndef CHECKOUT_H
#define CHECKOUT_H

#include <json-c/json.h>

#include "db.h"
#include "outcome.h"
#include "plan.h"

/* Longest successUrl/cancelUrl accepted (bytes). */
#define CHECKOUT_URL_MAX 2048
/* Longest email accepted (RFC 5321 path limit less the brackets). */
#define CHECKOUT_EMAIL_MAX 254

struct checkout_order {
	const char *user_id; /* all strings borrowed from the parsed body */
	enum plan_tier tier;
	enum plan_interval interval;
	const char *success_url;
	const char *cancel_url;
	const char *email; /* NULL when not given */
};

/*
 * Validates the request body against the endpoint's field table and
 * the URL and email rules.  OUT_OK and *order filled (borrowing from
 * body), or OUT_INVALID_FIELD with *field (the JSON member name) and
 * *why (a client-safe static sentence).
 */
enum outcome checkout_parse(struct json_object *body, struct checkout_order *order,
			    const char **field, const char **why)
    __attribute__((warn_unused_result));

/*
 * Whether url may be a Checkout return URL: absolute http:// or https://,
 * at most CHECKOUT_URL_MAX visible ASCII bytes (no backslash), no
 * userinfo, host (compared case-insensitively, any port) listed in
 * ALLOWED_REDIRECT_HOSTS.  NULL when fine, else a static reason.
 */
const char *checkout_redirect_problem(const char *url);

/* Whether email is a plausible address (one @, dotted domain, no blanks). */
int checkout_email_ok(const char *email);

/*
 * OUT_OK when user_id has no subscription in status active, trialing
 * or past_due; OUT_ALREADY_SUBSCRIBED when it has; a db outcome on
 * failure.
 */
enum outcome checkout_not_subscribed(struct db *db, const char *user_id)
    __attribute__((warn_unused_result));

/*
 * The user's Stripe customer id (caller frees).  Under a transaction
 * lock on the user, reads customers; when absent, creates the customer
 * (POST /v1/customers with email and metadata[userId], Idempotency-Key
 * derived from the user id) and stores it.  OUT_OK, or the stripe/db
 * outcome.
 */
enum outcome checkout_customer(struct db *db, const char *user_id, const char *email,
			       char **customer_id) __attribute__((warn_unused_result));

/*
 * The Idempotency-Key for this checkout: derived from (user id, the
 * client's Idempotency-Key header) when the client sent one, else
 * random.  Caller frees.  NULL when the client's key is unusable
 * (see stripe_client_idempotency_key).
 */
char *checkout_idempotency_key(const char *user_id, const char *client_key);

/*
 * Creates the Checkout Session for order and customer_id.  OUT_OK with
 * *session_id and *url (caller frees both); OUT_MISCONFIGURED when the
 * price setting is missing or trial days are invalid;
 * OUT_IDEMPOTENCY_CONFLICT when the client's Idempotency-Key was first
 * used for another order; the other stripe outcomes.
 */
enum outcome checkout_create_session(const struct checkout_order *order, const char *customer_id,
				     const char *idempotency_key, char **session_id, char **url)
    __attribute__((warn_unused_result));

#endif
