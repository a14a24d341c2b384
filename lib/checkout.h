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
 * at most LIMIT_URL_LEN visible ASCII bytes (no backslash), no
 * userinfo, and its host and port listed in ALLOWED_REDIRECT_HOSTS: the
 * host compared case-insensitively; an entry "host:port" matches that
 * port, an entry "host" only the scheme's default port (80 for http,
 * 443 for https), whether the URL writes it or not.  NULL when fine,
 * else a static reason.
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
 * The user's Stripe customer id (caller frees).  customers is read
 * first; when the user has none, the customer Stripe already has for the
 * user (GET /v1/customers/search on metadata['userId'], e.g. created by
 * a checkout whose database write failed) is used, else one is created
 * (POST /v1/customers with email and metadata[userId], Idempotency-Key
 * derived from exactly that body).  The link is stored unless the user
 * was linked meanwhile (then that customer is used) or the customer is
 * another user's (OUT_CUSTOMER_CONFLICT, logged).  No transaction or
 * lock is held during the Stripe calls.  OUT_OK, or the stripe/db
 * outcome.
 */
enum outcome checkout_customer(struct db *db, const char *user_id, const char *email,
			       char **customer_id) __attribute__((warn_unused_result));

/*
 * The Idempotency-Key for this checkout: derived from (user id, the
 * client's Idempotency-Key header) when the client sent one, else
 * random (client_key has passed request_idempotency_key).  Caller frees.
 */
char *checkout_idempotency_key(const char *user_id, const char *client_key);

/*
 * The Checkout Session for order and customer_id, under the rule that a
 * user has at most one open session from this API (paying two would
 * make two subscriptions; checkout_sessions in the schema):
 *   - the same order (the same Stripe request body) while the user's
 *     session is open for at least LIMIT_CHECKOUT_REUSE_MIN_S more: that
 *     session again, without calling Stripe;
 *   - another order: the open session is expired at Stripe first (one
 *     already paid: OUT_ALREADY_SUBSCRIBED), then a new one is created;
 *   - a creation still under way (or whose answer was lost) is repeated
 *     with its own body and Idempotency-Key, so concurrent identical
 *     checkouts get one session and the newest order wins
 *     (OUT_CHECKOUT_SUPERSEDED for one replaced while being created);
 *   - idempotency_key (checkout_idempotency_key) used in the last 24
 *     hours for the same order: its session; for another order:
 *     OUT_IDEMPOTENCY_CONFLICT.
 * No transaction is held during Stripe calls.  OUT_OK with *session_id
 * and *url (caller frees both); OUT_MISCONFIGURED when the price setting
 * is missing or trial days are invalid; the stripe/db outcomes.
 */
enum outcome checkout_create_session(struct db *db, const struct checkout_order *order,
				     const char *customer_id, const char *idempotency_key,
				     char **session_id, char **url)
    __attribute__((warn_unused_result));

#endif
