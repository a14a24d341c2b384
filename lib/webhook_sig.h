/*
 * Stripe webhook signatures (docs.stripe.com/webhooks#verify-manually):
 *
 *   Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]
 *   v1 = lowercase hex of HMAC-SHA256(key = whole endpoint secret,
 *                                     message = t as sent + "." + raw body)
 *
 * The verifier is the "recommended_verifier" of tests/data/
 * signature-vectors.json, where the official SDKs disagree it takes the
 * strict answer: elements are split on ',' and then on the first '=';
 * elements without '=' and keys other than t and v1 (v0, unknown) are
 * ignored; keys are compared exactly (no trimming, so "t=1, v1=..." has
 * no v1); exactly one t matching ^[1-9][0-9]{0,18}$; every v1 is
 * compared (constant time, CRYPTO_memcmp after a length check) with the
 * lowercase hex MAC of every secret; the timestamp is checked after the
 * signature, in both directions: |now - t| > tolerance is refused,
 * |now - t| == tolerance is accepted.
 *
 * The MAC comes from the digest module (OpenSSL's SHA-256 without the
 * cost of EVP's first use: see digest.h).  Secrets are used in place
 * (pointer + length views into the setting, never copied); MAC outputs
 * derived from them are wiped with OPENSSL_cleanse.
 */
#ifndef WEBHOOK_SIG_H
#define WEBHOOK_SIG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "outcome.h"

/* The recommended verifier's answers (the vector file's "reason" values). */
enum webhook_sig_result {
	WHSIG_VALID,
	WHSIG_MISSING_HEADER,	/* absent or empty */
	WHSIG_MALFORMED_HEADER,	/* no t, several t, t not ^[1-9][0-9]{0,18}$ */
	WHSIG_NO_V1,		/* t is fine but no v1 element */
	WHSIG_MISMATCH,		/* no v1 matches any secret */
	WHSIG_TOLERANCE,	/* signature fine, |now - t| > tolerance */
	WHSIG__MAX
};

/* The parsed header: views into the caller's bytes, valid while they are. */
struct webhook_sig_header {
	const char *start;	/* the header bytes, for walking the v1 values */
	size_t len;
	const char *t;		/* the timestamp digits exactly as sent */
	size_t t_len;
	uint64_t timestamp;	/* their value (at most 19 digits: fits) */
	size_t v1_count;	/* v1 elements */
	size_t v1_hex_count;	/* v1 values that are 64 hex digits (any case) */
};

/* A secret as a view: len bytes at p, used exactly (no trimming here). */
struct webhook_sig_secret {
	const char *p;
	size_t len;
};

/*
 * Parses len bytes at header (no NUL needed; header NULL = absent) by
 * advancing a pointer that never passes header + len.  Returns
 * WHSIG_VALID when a single well-formed t and at least one v1 were
 * found (*out filled), else MISSING_HEADER / MALFORMED_HEADER / NO_V1.
 */
enum webhook_sig_result webhook_sig_parse(const char *header, size_t len,
    struct webhook_sig_header *out) __attribute__((warn_unused_result));

/*
 * The whole recommended verifier over the raw body bytes: parse, MAC
 * with each of the nsecrets secrets, compare with each v1, then the
 * tolerance (tolerance 0 = no timestamp check; the endpoint never
 * passes 0).  *parsed (may be NULL) receives the parsed header.
 */
enum webhook_sig_result webhook_sig_verify(const char *header, size_t header_len,
    const char *body, size_t body_len, const struct webhook_sig_secret *secrets,
    size_t nsecrets, time_t now, long tolerance, struct webhook_sig_header *parsed)
    __attribute__((warn_unused_result));

/*
 * Splits a comma-separated secret list into views, each trimmed of
 * blanks (space, tab, CR, LF), empty entries skipped.  Returns the
 * number found (0 = none), at most max; more than max is -1.
 */
int webhook_sig_secrets(const char *list, struct webhook_sig_secret *out, size_t max)
    __attribute__((warn_unused_result));

/*
 * The endpoint's answer for a verifier result.  The vocabulary
 * is coarser than the vectors' and names "non-hex v1" malformed, so a
 * mismatch where not one v1 was 64 hex digits ("v1=bad_signature",
 * "v1=") is OUT_SIGNATURE_MALFORMED; NO_V1 is malformed too.
 */
enum outcome webhook_sig_outcome(enum webhook_sig_result r, const struct webhook_sig_header *h);

/*
 * The endpoint's check: STRIPE_WEBHOOK_SECRET (none configured: 500
 * misconfigured, never "accept unsigned"), STRIPE_WEBHOOK_TOLERANCE
 * (default 300, 1..86400), the Stripe-Signature request header (longer
 * than LIMIT_HEADER_VALUE = malformed), the clock.  Logs the reason,
 * never the header or a secret.
 */
enum outcome webhook_sig_check(const char *body, size_t len) __attribute__((warn_unused_result));

/* "valid", "missing_header", ... as in the vector file. */
const char *webhook_sig_result_name(enum webhook_sig_result r);

#endif
