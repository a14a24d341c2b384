#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "config.h"
#include "digest.h"
#include "hex.h"
#include "limits.h"
#include "log.h"
#include "request.h"
#include "webhook_sig.h"

#define SIG_HEX_LEN 64	/* SHA-256 = 32 bytes = 64 hex digits */

static const char *const result_names[WHSIG__MAX] = {
	[WHSIG_VALID] = "valid",
	[WHSIG_MISSING_HEADER] = "missing_header",
	[WHSIG_MALFORMED_HEADER] = "malformed_header",
	[WHSIG_NO_V1] = "no_v1_signature",
	[WHSIG_MISMATCH] = "signature_mismatch",
	[WHSIG_TOLERANCE] = "timestamp_outside_tolerance",
};

const char *
webhook_sig_result_name(enum webhook_sig_result r)
{
	return (unsigned)r < WHSIG__MAX ? result_names[r] : "unknown";
}

/*
 * One header element: [*p, end) up to the next ',', split on its first
 * '='.  Returns 0 at the end of input; 1 with *has_eq = 0 for an
 * element without '=' (ignored by the verifier).  Advances *p past the
 * element and its comma, never beyond end.
 */
static int
next_element(const char **p, const char *end, const char **key, size_t *klen,
    const char **val, size_t *vlen, int *has_eq)
{
	const char *s = *p, *comma, *eq;

	if (s >= end)
		return 0;
	comma = memchr(s, ',', (size_t)(end - s));
	if (comma == NULL)
		comma = end;
	eq = memchr(s, '=', (size_t)(comma - s));
	*key = s;
	*has_eq = eq != NULL;
	if (eq) {
		*klen = (size_t)(eq - s);
		*val = eq + 1;
		*vlen = (size_t)(comma - eq - 1);
	} else {
		*klen = (size_t)(comma - s);
		*val = comma;
		*vlen = 0;
	}
	*p = comma < end ? comma + 1 : end;
	return 1;
}

static int
is_key(const char *k, size_t klen, const char *want)
{
	size_t n = strlen(want);

	return klen == n && memcmp(k, want, n) == 0;
}

static int
is_hex(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		    (s[i] >= 'A' && s[i] <= 'F')))
			return 0;
	return 1;
}

/* ^[1-9][0-9]{0,18}$; 19 digits are below 2^64, so no overflow. */
static int
parse_timestamp(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || n > LIMIT_SIG_TIMESTAMP_DIGITS || s[0] < '1' || s[0] > '9')
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

enum webhook_sig_result
webhook_sig_parse(const char *header, size_t len, struct webhook_sig_header *out)
{
	const char *p = header, *end, *key, *val;
	size_t klen, vlen, t_seen = 0;
	int has_eq, t_ok = 0;

	memset(out, 0, sizeof(*out));
	if (header == NULL || len == 0)
		return WHSIG_MISSING_HEADER;
	end = header + len;
	out->start = header;
	out->len = len;
	while (next_element(&p, end, &key, &klen, &val, &vlen, &has_eq)) {
		if (!has_eq)
			continue;
		if (is_key(key, klen, "t")) {
			t_seen++;
			out->t = val;
			out->t_len = vlen;
			t_ok = parse_timestamp(val, vlen, &out->timestamp) == 0;
		} else if (is_key(key, klen, "v1")) {
			out->v1_count++;
			if (vlen == SIG_HEX_LEN && is_hex(val, vlen))
				out->v1_hex_count++;
		}
	}
	/* A duplicate t is refused even with equal values (SDKs pick first or last). */
	if (t_seen != 1 || !t_ok)
		return WHSIG_MALFORMED_HEADER;
	if (out->v1_count == 0)
		return WHSIG_NO_V1;
	return WHSIG_VALID;
}

/* Lowercase hex HMAC-SHA256(secret, t "." body) into hex[SIG_HEX_LEN + 1]; -1 for an empty secret. */
static int
sign(const struct webhook_sig_secret *secret, const struct webhook_sig_header *h,
    const char *body, size_t body_len, char *hex)
{
	const struct digest_part message[] = { { h->t, h->t_len }, { ".", 1 }, { body, body_len } };
	unsigned char md[DIGEST_SHA256_LEN];

	if (secret->len == 0)
		return -1;
	digest_hmac_sha256(secret->p, secret->len, message, sizeof(message) / sizeof(message[0]), md);
	hex_encode(hex, md, sizeof(md));
	OPENSSL_cleanse(md, sizeof(md));
	return 0;
}

/* Whether any v1 of h equals expected; every v1 is compared (no early exit on content). */
static int
any_v1_matches(const struct webhook_sig_header *h, const char *expected)
{
	const char *p = h->start, *end = h->start + h->len, *key, *val;
	size_t klen, vlen;
	int has_eq, match = 0;

	while (next_element(&p, end, &key, &klen, &val, &vlen, &has_eq)) {
		if (!has_eq || !is_key(key, klen, "v1") || vlen != SIG_HEX_LEN)
			continue;
		match |= CRYPTO_memcmp(val, expected, SIG_HEX_LEN) == 0;
	}
	return match;
}

enum webhook_sig_result
webhook_sig_verify(const char *header, size_t header_len, const char *body, size_t body_len,
    const struct webhook_sig_secret *secrets, size_t nsecrets, time_t now, long tolerance,
    struct webhook_sig_header *parsed)
{
	struct webhook_sig_header h;
	enum webhook_sig_result r;
	char expected[SIG_HEX_LEN + 1];
	uint64_t unow, skew;
	size_t i;
	int match = 0;

	r = webhook_sig_parse(header, header_len, &h);
	if (parsed)
		*parsed = h;
	if (r != WHSIG_VALID)
		return r;
	r = WHSIG_MISMATCH;
	for (i = 0; i < nsecrets && !match; i++) {
		if (sign(&secrets[i], &h, body, body_len, expected) == 0)
			match = any_v1_matches(&h, expected);
	}
	if (!match)
		goto out;
	r = WHSIG_VALID;
	if (tolerance > 0) {
		unow = now < 0 ? 0 : (uint64_t)now;
		skew = unow > h.timestamp ? unow - h.timestamp : h.timestamp - unow;
		if (skew > (uint64_t)tolerance)
			r = WHSIG_TOLERANCE;
	}
out:
	OPENSSL_cleanse(expected, sizeof(expected));
	return r;
}

static int
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int
webhook_sig_secrets(const char *list, struct webhook_sig_secret *out, size_t max)
{
	const char *p = list, *s, *e;
	size_t n = 0;

	if (list == NULL)
		return 0;
	while (*p != '\0') {
		s = p;
		while (*p != '\0' && *p != ',')
			p++;
		e = p;
		if (*p == ',')
			p++;
		while (s < e && is_blank(*s))
			s++;
		while (e > s && is_blank(e[-1]))
			e--;
		if (s == e)
			continue;
		if (n == max)
			return -1;
		out[n].p = s;
		out[n].len = (size_t)(e - s);
		n++;
	}
	return (int)n;
}

enum outcome
webhook_sig_outcome(enum webhook_sig_result r, const struct webhook_sig_header *h)
{
	switch (r) {
	case WHSIG_VALID:
		return OUT_OK;
	case WHSIG_MISSING_HEADER:
		return OUT_SIGNATURE_MISSING;
	case WHSIG_MALFORMED_HEADER:
	case WHSIG_NO_V1:
		return OUT_SIGNATURE_MALFORMED;
	case WHSIG_MISMATCH:
		return h && h->v1_hex_count == 0 ? OUT_SIGNATURE_MALFORMED : OUT_SIGNATURE_MISMATCH;
	case WHSIG_TOLERANCE:
		return OUT_TIMESTAMP_TOLERANCE;
	default:
		return OUT_SIGNATURE_MALFORMED;
	}
}

enum outcome
webhook_sig_check(const char *body, size_t len)
{
	struct webhook_sig_secret secrets[LIMIT_WEBHOOK_SECRETS];
	struct webhook_sig_header h;
	enum webhook_sig_result r;
	const char *header;
	size_t hlen = 0;
	long tolerance;
	int n;
	enum outcome rc;

	n = webhook_sig_secrets(config_get("STRIPE_WEBHOOK_SECRET"), secrets,
	    LIMIT_WEBHOOK_SECRETS);
	if (n <= 0) {
		log_msg("STRIPE_WEBHOOK_SECRET %s", n == 0 ? "is not set" : "has too many entries");
		return OUT_MISCONFIGURED;
	}
	rc = config_get_long("STRIPE_WEBHOOK_TOLERANCE", LIMIT_WEBHOOK_TOLERANCE_DEFAULT_S, 1,
	    LIMIT_WEBHOOK_TOLERANCE_MAX_S, &tolerance);
	if (rc != OUT_OK)
		return rc;
	header = request_header("Stripe-Signature");
	if (header != NULL && (hlen = strnlen(header, LIMIT_HEADER_VALUE + 1)) > LIMIT_HEADER_VALUE) {
		log_msg("signature refused: header over %d bytes", LIMIT_HEADER_VALUE);
		return OUT_SIGNATURE_MALFORMED;
	}
	r = webhook_sig_verify(header, hlen, body, len, secrets, (size_t)n, time(NULL), tolerance,
	    &h);
	rc = webhook_sig_outcome(r, &h);
	if (r != WHSIG_VALID) {
		log_msg("signature refused: %s (%s)", outcome_code(rc), webhook_sig_result_name(r));
		log_note("sig", webhook_sig_result_name(r));
	}
	return rc;
}
