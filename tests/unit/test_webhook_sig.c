/*
 * webhook_sig against every vector of tests/data/signature-vectors.json
 * (a copy of ../shared/stripe/signature-vectors.json), read at test
 * time from $SRCDIR so that VPATH builds and make distcheck work, plus
 * the endpoint-level mapping, the secret list parser and edge cases.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "config.h"
#include "outcome.h"
#include "tap.h"
#include "webhook_sig.h"

static struct json_object *
load_vectors(void)
{
	const char *srcdir = getenv("SRCDIR");
	char path[4096];

	snprintf(path, sizeof(path), "%s/tests/data/signature-vectors.json",
	    srcdir ? srcdir : ".");
	return json_object_from_file(path);
}

/* Decodes payload_base64 (exact bytes); *len set.  Caller frees. */
static unsigned char *
decode_b64(const char *b64, size_t *len)
{
	size_t n = strlen(b64), pad = 0;
	unsigned char *out = malloc(n / 4 * 3 + 4);
	int got;

	if (n >= 1 && b64[n - 1] == '=')
		pad++;
	if (n >= 2 && b64[n - 2] == '=')
		pad++;
	got = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
	*len = got < 0 ? 0 : (size_t)got - pad;
	return out;
}

static void
run_vector(struct json_object *v)
{
	struct webhook_sig_secret secrets[8];
	struct webhook_sig_header h;
	struct json_object *o, *exp;
	const char *id, *header, *want, *reason;
	unsigned char *body;
	size_t body_len, nsec = 0, i;
	long long now, tol;
	enum webhook_sig_result r;

	id = json_object_get_string(json_object_object_get(v, "id"));
	o = json_object_object_get(v, "header");
	header = o ? json_object_get_string(o) : NULL;
	body = decode_b64(json_object_get_string(json_object_object_get(v, "payload_base64")),
	    &body_len);
	ok(body_len == (size_t)json_object_get_int64(json_object_object_get(v,
	    "payload_utf8_bytes")), "%s: payload decodes to its byte count", id);
	if ((o = json_object_object_get(v, "secret")) && json_object_is_type(o, json_type_string)) {
		secrets[0].p = json_object_get_string(o);
		secrets[0].len = (size_t)json_object_get_string_len(o);
		nsec = 1;
	}
	if ((o = json_object_object_get(v, "secrets")) && json_object_is_type(o, json_type_array))
		for (i = 0; i < json_object_array_length(o) && nsec < 8; i++) {
			struct json_object *s = json_object_array_get_idx(o, i);

			secrets[nsec].p = json_object_get_string(s);
			secrets[nsec].len = (size_t)json_object_get_string_len(s);
			nsec++;
		}
	now = json_object_get_int64(json_object_object_get(v, "now"));
	tol = json_object_get_int64(json_object_object_get(v, "tolerance"));
	exp = json_object_object_get(v, "expected");
	want = json_object_get_string(json_object_object_get(exp, "result"));
	reason = strcmp(want, "valid") == 0 ? "valid" :
	    json_object_get_string(json_object_object_get(exp, "reason"));

	/* The raw verifier, secrets used exactly as given (no trimming). */
	r = webhook_sig_verify(header, header ? strlen(header) : 0, (const char *)body, body_len,
	    secrets, nsec, (time_t)now, (long)tol, &h);
	is_str(webhook_sig_result_name(r), reason, "vector %s", id);
	free(body);
}

/* The endpoint vocabulary over a few vectors-like headers. */
static enum outcome
outcome_of(const char *header, const char *body, const char *secret, time_t now)
{
	struct webhook_sig_secret s = { secret, strlen(secret) };
	struct webhook_sig_header h;
	enum webhook_sig_result r;

	r = webhook_sig_verify(header, header ? strlen(header) : 0, body, strlen(body), &s, 1, now,
	    300, &h);
	return webhook_sig_outcome(r, &h);
}

int
main(void)
{
	struct json_object *root, *vectors;
	struct webhook_sig_secret secrets[8];
	struct webhook_sig_header h;
	size_t i, n;
	static const char good[] =
	    "t=1795510800,v1=1bdc7af857f57702ac5d019933e0de309bd94314713005f3dd6545431fae2521";
	static const char body[] = "{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";
	const time_t now = 1795510805;

	root = load_vectors();
	ok(root != NULL, "signature-vectors.json loads (SRCDIR=%s)", getenv("SRCDIR"));
	vectors = root ? json_object_object_get(root, "vectors") : NULL;
	n = vectors ? json_object_array_length(vectors) : 0;
	ok(n >= 42, "%zu vectors", n);
	for (i = 0; i < n; i++)
		run_vector(json_object_array_get_idx(vectors, i));
	json_object_put(root);

	/* Endpoint outcomes (issue 3: non-hex v1 is "malformed"). */
	is_int(outcome_of(good, body, "whsec_test_secret", now), OUT_OK, "valid -> OK");
	is_int(outcome_of(NULL, body, "whsec_test_secret", now), OUT_SIGNATURE_MISSING, "absent");
	is_int(outcome_of("", body, "whsec_test_secret", now), OUT_SIGNATURE_MISSING, "empty");
	is_int(outcome_of("t=abc,v1=00", body, "whsec_test_secret", now), OUT_SIGNATURE_MALFORMED,
	    "non-numeric t");
	is_int(outcome_of("t=1795510800", body, "whsec_test_secret", now), OUT_SIGNATURE_MALFORMED,
	    "no v1");
	is_int(outcome_of("t=1795510800,v1=bad_signature", body, "whsec_test_secret", now),
	    OUT_SIGNATURE_MALFORMED, "only non-hex v1 -> malformed");
	is_int(outcome_of("t=1795510800,v1=", body, "whsec_test_secret", now),
	    OUT_SIGNATURE_MALFORMED, "empty v1 -> malformed");
	is_int(outcome_of(good, body, "whsec_other", now), OUT_SIGNATURE_MISMATCH, "wrong secret");
	is_int(outcome_of(good, body, "whsec_test_secret", now + 301), OUT_TIMESTAMP_TOLERANCE,
	    "too old");
	is_int(outcome_of(good, body, "whsec_test_secret", now - 306), OUT_TIMESTAMP_TOLERANCE,
	    "too far in the future");
	is_int(outcome_of(good, body, "whsec_test_secret", 1795510800 - 300), OUT_OK,
	    "future by exactly the tolerance is accepted");
	is_int(outcome_of("t=99999999999999999999,v1=00", body, "whsec_test_secret", now),
	    OUT_SIGNATURE_MALFORMED, "20-digit t (absurd) is malformed");
	is_int(outcome_of("t=9999999999999999999,v1=1bdc7af857f57702ac5d019933e0de309bd94314713005f3dd6545431fae2521",
	    body, "whsec_test_secret", now), OUT_SIGNATURE_MISMATCH, "19-digit t parses, no overflow");
	is_int(outcome_of("t=0123,v1=00", body, "whsec_test_secret", now),
	    OUT_SIGNATURE_MALFORMED, "leading zero in t");
	is_int(outcome_of("t=-5,v1=00", body, "whsec_test_secret", now), OUT_SIGNATURE_MALFORMED,
	    "negative t");

	/* Secrets around HMAC's block size (64 bytes; longer keys are hashed first). */
	{
		static const size_t lens[] = { 1, 63, 64, 65, 100, 300 };
		char secret[301], msg[256], header[128], *p;
		unsigned char mac[EVP_MAX_MD_SIZE];
		unsigned int mac_len, k;
		size_t j;

		for (j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
			for (k = 0; k < lens[j]; k++)
				secret[k] = (char)('a' + (k * 7 + j) % 26);
			secret[lens[j]] = '\0';
			snprintf(msg, sizeof(msg), "1795510800.%s", body);
			HMAC(EVP_sha256(), secret, (int)lens[j], (unsigned char *)msg, strlen(msg), mac,
			    &mac_len);
			p = header + snprintf(header, sizeof(header), "t=1795510800,v1=");
			for (k = 0; k < mac_len; k++)
				p += sprintf(p, "%02x", mac[k]);
			is_int(outcome_of(header, body, secret, now), OUT_OK,
			    "a %zu-byte secret verifies as OpenSSL's HMAC() signs", lens[j]);
			secret[lens[j] - 1] ^= 1;
			is_int(outcome_of(header, body, secret, now), OUT_SIGNATURE_MISMATCH,
			    "a %zu-byte secret with its last byte changed does not", lens[j]);
		}
	}

	/* The parser never reads past len: a header cut inside the v1 value. */
	ok(webhook_sig_parse(good, 20, &h) == WHSIG_VALID && h.v1_count == 1 &&
	    h.v1_hex_count == 0, "parse stops at len");
	ok(webhook_sig_parse(good, 12, &h) == WHSIG_NO_V1 && h.timestamp == 1795510800,
	    "parse of the t element alone");
	ok(webhook_sig_parse("t=1\0,v1=aa", 10, &h) == WHSIG_MALFORMED_HEADER,
	    "NUL inside the t value is malformed");

	/* Secret lists from STRIPE_WEBHOOK_SECRET: comma-separated, trimmed. */
	is_int(webhook_sig_secrets(" whsec_a ,\twhsec_b\n,,", secrets, 8), 2, "two secrets");
	ok(secrets[0].len == 7 && memcmp(secrets[0].p, "whsec_a", 7) == 0, "first trimmed");
	ok(secrets[1].len == 7 && memcmp(secrets[1].p, "whsec_b", 7) == 0, "second trimmed");
	is_int(webhook_sig_secrets(" , ", secrets, 8), 0, "blank list has none");
	is_int(webhook_sig_secrets(NULL, secrets, 8), 0, "unset list has none");
	is_int(webhook_sig_secrets("a,b,c", secrets, 2), -1, "too many secrets");
	/* The vector's secret with a trailing newline is trimmed by the list parser: valid. */
	n = (size_t)webhook_sig_secrets("whsec_q8VJ2kPz7TnYc4LmR1sXw9GhB3dFa6Ue\n", secrets, 8);
	ok(n == 1 && webhook_sig_verify("t=1795510800,v1=bf7b742108649d815878356d5f23f37dcf75107363c7474fd6247be647583a05",
	    80, body, strlen(body), secrets, n, now, 300, &h) == WHSIG_VALID,
	    "configured secret with trailing newline works after trimming");

	/* webhook_sig_check: the endpoint's configuration handling. */
	unsetenv("BILLING_CONFIG");
	unsetenv("STRIPE_WEBHOOK_SECRET");
	unsetenv("HTTP_STRIPE_SIGNATURE");
	config_reset();
	ok(config_load() == OUT_OK, "config loads");
	is_int(webhook_sig_check(body, strlen(body)), OUT_MISCONFIGURED, "no secret: misconfigured");
	setenv("STRIPE_WEBHOOK_SECRET", " , ", 1);
	is_int(webhook_sig_check(body, strlen(body)), OUT_MISCONFIGURED, "blank secret list");
	setenv("STRIPE_WEBHOOK_SECRET", "whsec_x", 1);
	is_int(webhook_sig_check(body, strlen(body)), OUT_SIGNATURE_MISSING, "no header: missing");
	setenv("HTTP_STRIPE_SIGNATURE", good, 1);
	is_int(webhook_sig_check(body, strlen(body)), OUT_SIGNATURE_MISMATCH, "wrong secret");
	setenv("STRIPE_WEBHOOK_SECRET", "whsec_x,whsec_test_secret", 1);
	is_int(webhook_sig_check(body, strlen(body)), OUT_TIMESTAMP_TOLERANCE,
	    "rotated secret matches, but the vector's t is not now");
	setenv("STRIPE_WEBHOOK_TOLERANCE", "0", 1);
	is_int(webhook_sig_check(body, strlen(body)), OUT_MISCONFIGURED,
	    "tolerance 0 (disabling the check) is refused");
	unsetenv("STRIPE_WEBHOOK_TOLERANCE");
	{
		char *big = malloc(9000);

		memset(big, 'a', 8999);
		memcpy(big, "t=1,", 4);
		big[8999] = '\0';
		setenv("HTTP_STRIPE_SIGNATURE", big, 1);
		is_int(webhook_sig_check(body, strlen(body)), OUT_SIGNATURE_MALFORMED,
		    "header over LIMIT_HEADER_VALUE is malformed");
		free(big);
	}
	return done_testing();
}
