/*
 * Calls to the Stripe API (docs.stripe.com/api): the base URL
 * (STRIPE_API_BASE), the secret key (STRIPE_SECRET_KEY, never logged),
 * the pinned Stripe-Version (STRIPE_API_VERSION), Idempotency-Key on
 * POSTs, and the retry policy: network errors, timeouts, 409, 429 and
 * 5xx are retried with bounded exponential backoff and jitter, at most
 * LIMIT_HTTP_TRIES tries within LIMIT_HTTP_TOTAL_MS (per call),
 * honouring Stripe-Should-Retry (true: retry even a 4xx; false: never)
 * and a Retry-After of at most 2 s.  Each try lasts at most
 * LIMIT_HTTP_TRY_MS.
 */
#ifndef STRIPE_H
#define STRIPE_H

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
 * Whether s looks like a Stripe object id we may put into a URL path or a
 * column: 1..255 characters of [A-Za-z0-9_].
 */
int stripe_id_valid(const char *s);

/*
 * Derives a stable Idempotency-Key from parts (e.g. "customer", user
 * id): "<prefix>-" + hex SHA-256 of the parts.  Caller frees.
 */
char *stripe_idempotency_key(const char *prefix, const char *const *parts, int nparts)
    __attribute__((returns_nonnull));

/* "<prefix>-" + 32 random hex digits (128 bits from the CSPRNG).  Caller frees. */
char *stripe_random_idempotency_key(const char *prefix) __attribute__((returns_nonnull));

#endif
