#include "outcome.h"

static const struct {
	int status;
	const char *code;
	const char *message;
} table[OUT__MAX] = {
	[OUT_OK] = { 200, "ok", "OK" },
	[OUT_BAD_REQUEST] = { 400, "bad_request", "The request is malformed." },
	[OUT_INVALID_JSON] = { 400, "invalid_json", "The request body is not a JSON object." },
	[OUT_INVALID_FIELD] = { 400, "invalid_field", "A field is missing or invalid." },
	[OUT_INVALID_PAYLOAD] = { 400, "invalid_payload", "The payload is not a Stripe event." },
	[OUT_SIGNATURE_MISSING] = { 400, "signature_missing", "The Stripe-Signature header is missing." },
	[OUT_SIGNATURE_MALFORMED] = { 400, "signature_malformed", "The Stripe-Signature header is malformed." },
	[OUT_SIGNATURE_MISMATCH] = { 400, "signature_mismatch", "No signature matches the payload." },
	[OUT_TIMESTAMP_TOLERANCE] = { 400, "timestamp_out_of_tolerance", "The signature timestamp is outside the tolerance." },
	[OUT_UNAUTHORIZED] = { 401, "unauthorized", "Authentication is required." },
	[OUT_QUOTA_EXCEEDED] = { 402, "quota_exceeded", "Monthly quota exceeded for this usage type." },
	[OUT_PAYMENT_FAILED] = { 402, "payment_failed", "The payment for this change did not go through; the current plan stays in force until it is paid." },
	[OUT_FORBIDDEN] = { 403, "forbidden", "You may not act for this user." },
	[OUT_NOT_FOUND] = { 404, "not_found", "Not found." },
	[OUT_NO_CUSTOMER] = { 404, "no_customer", "This user has no Stripe customer yet; check out first." },
	[OUT_NO_SUBSCRIPTION] = { 404, "no_subscription", "This user has no live subscription." },
	[OUT_METHOD_NOT_ALLOWED] = { 405, "method_not_allowed", "Method not allowed." },
	[OUT_IDEMPOTENCY_CONFLICT] = { 409, "conflict", "This Idempotency-Key was already used with a different request." },
	[OUT_ALREADY_SUBSCRIBED] = { 409, "already_subscribed", "This user already has an active subscription." },
	[OUT_NO_CHANGE] = { 409, "no_change", "Nothing to change: the subscription is already in that state." },
	[OUT_CUSTOMER_CONFLICT] = { 409, "customer_conflict", "This user's payment account is linked to another user; contact support." },
	[OUT_CHECKOUT_SUPERSEDED] = { 409, "checkout_superseded", "A newer checkout for this user replaced this one." },
	[OUT_FLOW_NEEDS_SUBSCRIPTION] = { 409, "no_subscription", "This portal flow needs a live subscription." },
	[OUT_CANCEL_PENDING] = { 409, "cancel_pending", "The subscription is scheduled to cancel; resume it before changing the plan." },
	[OUT_NOT_RESUMABLE] = { 409, "not_resumable", "Only a subscription scheduled to cancel at the period end can be resumed; a canceled one needs a new checkout." },
	[OUT_LENGTH_REQUIRED] = { 411, "length_required", "Content-Length is required." },
	[OUT_PAYLOAD_TOO_LARGE] = { 413, "payload_too_large", "The request body is too large." },
	[OUT_UNSUPPORTED_MEDIA] = { 415, "unsupported_media_type", "The request body must be application/json." },
	[OUT_RATE_LIMITED] = { 429, "rate_limited", "Too many requests; retry after the time in Retry-After." },
	[OUT_INTERNAL] = { 500, "internal_error", "Internal error." },
	[OUT_MISCONFIGURED] = { 500, "misconfigured", "The service is not configured correctly." },
	[OUT_STRIPE_ERROR] = { 502, "stripe_error", "The payment provider rejected the request." },
	[OUT_UNAVAILABLE] = { 503, "unavailable", "The service is temporarily unavailable; retry later." },
	[OUT_BAD_GATEWAY] = { 502, "bad_gateway", "The service gave no valid answer; retry later." },
	[OUT_GATEWAY_TIMEOUT] = { 504, "timeout", "The service did not answer in time; the request may still complete: retry later, with the same Idempotency-Key where the endpoint takes one." },
};

int
outcome_status(enum outcome o)
{
	if ((unsigned)o >= OUT__MAX)
		return 500;
	return table[o].status;
}

const char *
outcome_code(enum outcome o)
{
	if ((unsigned)o >= OUT__MAX)
		return table[OUT_INTERNAL].code;
	return table[o].code;
}

const char *
outcome_message(enum outcome o)
{
	if ((unsigned)o >= OUT__MAX)
		return table[OUT_INTERNAL].message;
	return table[o].message;
}

const char *
outcome_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 303: return "See Other";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}
