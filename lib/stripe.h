/*
 * Calls to the Stripe API (docs.stripe.com/api): the base URL
 * (STRIPE_API_BASE), the secret key (STRIPE_SECRET_KEY, never logged),
 * the pinned Stripe-Version (STRIPE_API_VERSION), Idempotency-Key on
 * POSTs, and the retry policy: network errors, timeouts, 409, 429 and
 * 5xx are retried with bounded exponential backoff and jitter, at most
 * LIMIT_HTTP_TRIES tries within LIMIT_HTTP_TOTAL_MS (per call),
 * honouring Stripe-Should-Retry (true: retry even a 4xx; false: never)
 * and a Retry-After of at most 2 s.  Each try lasts at most
 * LIMIT_HTTP_TRY_MS.  (struct stripe_policy below changes these numbers
 * for a longer-running program.)
 */
#ifndef STRIPE_H
#define STRIPE_H

#include <stddef.h>

#include <json-c/json.h>

#include "form.h"
#include "outcome.h"

/*
 * POST form-encoded params to path ("/v1/checkout/sessions") with the
 * given Idempotency-Key (sent identically on every retry).
 * idempotency_key NULL sends none (avoid for creating calls).
 * OUT_OK and *out (a JSON object the caller puts) on 2xx;
 * OUT_STRIPE_ERROR when Stripe refused it (4xx other than 409/429; the
 * error type/code/param are logged, never the key or Stripe's message)
 * or answered 2xx with something that is not a JSON object;
 * OUT_IDEMPOTENCY_CONFLICT when Stripe refused the Idempotency-Key because it was
 * first used with other parameters (idempotency_error);
 * OUT_UNAVAILABLE when no answer after the retries (or a 409/429/5xx
 * Stripe says not to retry); OUT_MISCONFIGURED when the key or base
 * URL is missing or not allowed.  *out is NULL unless OUT_OK.
 */
enum outcome stripe_post(const char *path, const struct form *params,
    const char *idempotency_key, struct json_object **out) __attribute__((warn_unused_result));

/*
 * As stripe_post; *replayed = 1 when Stripe answered from an earlier request
 * under the same key (Idempotent-Replayed: true), so *out is the object as
 * it was then, not as it is now (docs.stripe.com/api/idempotent_requests).
 */
enum outcome stripe_post_replayed(const char *path, const struct form *params,
    const char *idempotency_key, struct json_object **out, int *replayed)
    __attribute__((warn_unused_result));

/* GET path; as stripe_post, plus OUT_NOT_FOUND for 404. */
enum outcome stripe_get(const char *path, struct json_object **out)
    __attribute__((warn_unused_result));

/*
 * DELETE path with params in the query string (Stripe takes no
 * Idempotency-Key on DELETE: deleting twice finds nothing the second
 * time).  As stripe_get, OUT_NOT_FOUND for 404.
 */
enum outcome stripe_delete(const char *path, const struct form *params, struct json_object **out)
    __attribute__((warn_unused_result));

/*
 * One page of a list (docs.stripe.com/api/pagination): GET path?query,
 * where query holds the filters, limit and the cursor (starting_after or
 * ending_before) as the caller chose them.  OUT_OK with *page (the caller
 * puts it), *data its "data" array (owned by *page) and *has_more; an
 * answer that is no list is OUT_STRIPE_ERROR; otherwise as stripe_get.
 */
enum outcome stripe_list(const char *path, const struct form *query, struct json_object **page,
    struct json_object **data, int *has_more) __attribute__((warn_unused_result));

/*
 * How hard a call tries.  By default (and with NULL) the request policy
 * described above, sized for a CGI's answer time; a program that runs
 * longer (billing-sync) sets a patient one with pacing, for the rest of
 * the process.  Retries are requests too, and are paced.
 */
struct stripe_policy {
	int tries;			/* at most this many tries per call... */
	long call_ms;			/* ...all within this long */
	long try_ms;			/* one try at most this long */
	long backoff_cap_ms;		/* our own wait between tries at most this long */
	long retry_after_max_ms;	/* a longer Retry-After gives up at once */
	size_t max_response;		/* the largest answer body accepted */
	long interval_ms;		/* at least this long from an answer to the next
					   request (1000 / requests per second); 0: no pacing */
};
void stripe_set_policy(const struct stripe_policy *p);

/* The request policy (the numbers above, no pacing). */
extern const struct stripe_policy stripe_request_policy;

/* Requests sent by this process so far, retries included. */
unsigned long stripe_requests_sent(void);

/*
 * Derives a stable Idempotency-Key from parts (e.g. "customer", user
 * id): "<prefix>-" + hex SHA-256 of the parts.  Caller frees.
 */
char *stripe_idempotency_key(const char *prefix, const char *const *parts, int nparts)
    __attribute__((returns_nonnull));

/* "<prefix>-" + 32 random hex digits (128 bits from the CSPRNG).  Caller frees. */
char *stripe_random_idempotency_key(const char *prefix) __attribute__((returns_nonnull));

/*
 * The Idempotency-Key for a call made on behalf of a client request:
 * derived from (prefix, user id, the client's Idempotency-Key header)
 * when the client sent one, so that its retry reaches Stripe with the
 * same key; else random.  client_key has passed request_idempotency_key.
 * Caller frees.
 */
char *stripe_client_idempotency_key(const char *prefix, const char *user_id,
				    const char *client_key);

/* Whether s can be a Stripe object id: 1..LIMIT_STRIPE_ID_LEN of [A-Za-z0-9_], fit for a URL path. */
int stripe_id_valid(const char *s);

/*
 * Whether the url of a hosted page in a Stripe answer (Checkout Session,
 * Billing Portal session) may be handed to the browser: https, or http to
 * a loopback host only (the local stack's Stripe simulator serves those
 * pages itself); never with credentials in it.
 */
int stripe_page_url_ok(const char *url);

#endif
