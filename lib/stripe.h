/*
 * Calls to the Stripe API (docs.stripe.com/api): the base URL
 * (STRIPE_API_BASE), the secret key (STRIPE_SECRET_KEY, never logged),
 * the pinned Stripe-Version (STRIPE_API_VERSION), Idempotency-Key on
 * POSTs, and the retry policy: network errors, timeouts, 409, 429 and
 * 5xx are retried with bounded exponential backoff and jitter, at most
 * LIMIT_HTTP_TRIES tries within LIMIT_HTTP_TOTAL_MS, honouring
 * Stripe-Should-Retry.
 */
#ifndef STRIPE_H
#define STRIPE_H

#include <json-c/json.h>

#include "form.h"
#include "outcome.h"

/*
 * POST form-encoded params to path ("/v1/checkout/sessions") with the
 * given Idempotency-Key (sent identically on every retry).
 * OUT_OK and *out (a JSON object the caller puts) on 2xx;
 * OUT_STRIPE_ERROR when Stripe refused it (4xx other than 409/429; the
 * error type/code are logged, never the key); OUT_UNAVAILABLE when no
 * answer after the retries; OUT_MISCONFIGURED when the key or base URL
 * is missing or not allowed.
 */
enum outcome stripe_post(const char *path, const struct form *params,
    const char *idempotency_key, struct json_object **out) __attribute__((warn_unused_result));

/* GET path; as stripe_post, plus OUT_NOT_FOUND for 404. */
enum outcome stripe_get(const char *path, struct json_object **out)
    __attribute__((warn_unused_result));

/*
 * Derives a stable Idempotency-Key from parts (e.g. "customer", user
 * id): "<prefix>-" + hex SHA-256 of the parts.  Caller frees.
 */
char *stripe_idempotency_key(const char *prefix, const char *const *parts, int nparts);

#endif
