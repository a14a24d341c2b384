/*
 * The project's one error vocabulary: every way a request can end,
 * mapped to an HTTP status and a stable JSON error code in exactly one
 * table (outcome.c).  Clients switch on the code, never on the message.
 */
#ifndef OUTCOME_H
#define OUTCOME_H

enum outcome {
	OUT_OK = 0,
	OUT_BAD_REQUEST,
	OUT_INVALID_JSON,
	OUT_INVALID_FIELD,
	OUT_INVALID_PAYLOAD,
	OUT_SIGNATURE_MISSING,
	OUT_SIGNATURE_MALFORMED,
	OUT_SIGNATURE_MISMATCH,
	OUT_TIMESTAMP_TOLERANCE,
	OUT_UNAUTHORIZED,
	OUT_QUOTA_EXCEEDED,
	OUT_PAYMENT_FAILED,
	OUT_FORBIDDEN,
	OUT_NOT_FOUND,
	OUT_NO_CUSTOMER,
	OUT_NO_SUBSCRIPTION,
	OUT_METHOD_NOT_ALLOWED,
	OUT_IDEMPOTENCY_CONFLICT,
	OUT_ALREADY_SUBSCRIBED,
	OUT_NO_CHANGE,
	OUT_CUSTOMER_CONFLICT,
	OUT_CHECKOUT_SUPERSEDED,
	OUT_FLOW_NEEDS_SUBSCRIPTION,
	OUT_CANCEL_PENDING,
	OUT_NOT_RESUMABLE,
	OUT_LENGTH_REQUIRED,
	OUT_PAYLOAD_TOO_LARGE,
	OUT_UNSUPPORTED_MEDIA,
	OUT_RATE_LIMITED,
	OUT_INTERNAL,
	OUT_MISCONFIGURED,
	OUT_STRIPE_ERROR,
	OUT_UNAVAILABLE,
	OUT_BAD_GATEWAY,	/* Apache's own 502/504 (error.cgi): a program gave */
	OUT_GATEWAY_TIMEOUT,	/* no valid answer, or none in time */
	OUT__MAX
};

/* HTTP status for an outcome (200 for OUT_OK, 500 for anything out of range). */
int outcome_status(enum outcome o);

/* Stable machine-readable code, e.g. "signature_mismatch"; "ok" for OUT_OK. */
const char *outcome_code(enum outcome o);

/* A safe, generic human message for the outcome, used when the caller gives none. */
const char *outcome_message(enum outcome o);

/* Reason phrase for an HTTP status ("Bad Request"), "Unknown" if we never send it. */
const char *outcome_reason(int status);

#endif
