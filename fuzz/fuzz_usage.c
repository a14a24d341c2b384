/*
 * libFuzzer target for POST /api/usage: usage_parse_record over the raw
 * body, and the Idempotency-Key rule.  The input is split at the first
 * newline: the Idempotency-Key value before it (up to a NUL, as the
 * environment would give it), the body after (exactly sized, so ASan
 * sees any read past the end).  Properties checked, besides memory
 * safety:
 *   - an accepted record names a user and one of the five usage types,
 *     with an amount in 1..LIMIT_USAGE_AMOUNT;
 *   - its metadata, as usage_track sends it to PostgreSQL for the
 *     idempotency hash ($5::jsonb), grades JSONGET_STRICT, fits
 *     LIMIT_USAGE_METADATA, and every number in it has at most
 *     LIMIT_JSONB_NUMBER_LEN characters and an exponent within
 *     LIMIT_JSONB_EXPONENT (read here digit by digit, not through
 *     jsonb_number_storable), so a keyed request cannot fail where the
 *     same request without a key succeeds;
 *   - an accepted Idempotency-Key is 1..LIMIT_IDEMPOTENCY_KEY_LEN visible
 *     ASCII bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonget.h"
#include "limits.h"
#include "request.h"
#include "usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether the number token at s (n bytes) is one numeric takes, judged independently. */
static int
number_ok(const char *s, size_t n)
{
	size_t i = 0;
	long e = 0;

	if (n > LIMIT_JSONB_NUMBER_LEN)
		return 0;
	while (i < n && s[i] != 'e' && s[i] != 'E')
		i++;
	if (i == n)
		return 1;
	i++;
	if (i < n && (s[i] == '+' || s[i] == '-'))
		i++; /* the bound is the same both ways */
	for (; i < n; i++)
		if ((e = e * 10 + (s[i] - '0')) > LIMIT_JSONB_EXPONENT)
			return 0;
	return 1;
}

/* Every number outside strings in the JSON text t passes number_ok. */
static int
numbers_ok(const char *t)
{
	size_t n;

	while (*t != '\0') {
		if (*t == '"') {
			for (t++; *t != '\0' && *t != '"'; t++)
				if (*t == '\\' && t[1] != '\0')
					t++;
			if (*t == '"')
				t++;
			continue;
		}
		if (*t == '-' || (*t >= '0' && *t <= '9')) {
			n = strspn(t, "0123456789+-.eE");
			if (!number_ok(t, n))
				return 0;
			t += n;
			continue;
		}
		t++;
	}
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t klen = nl ? (size_t)(nl - data) : 0, blen = nl ? size - klen - 1 : size;
	char *key = malloc(klen + 1), *body = malloc(blen ? blen : 1);
	const char *bad = NULL, *why = NULL, *m;
	struct usage_record rec;

	if (key == NULL || body == NULL)
		abort();
	memcpy(key, data, klen);
	key[klen] = '\0';
	memcpy(body, nl ? nl + 1 : data, blen);

	if (klen > 0 && request_idempotency_key_valid(key)) {
		size_t i, n = strlen(key);

		if (n < 1 || n > LIMIT_IDEMPOTENCY_KEY_LEN)
			abort();
		for (i = 0; i < n; i++)
			if ((unsigned char)key[i] < 0x20 || (unsigned char)key[i] > 0x7e)
				abort();
	}

	if (usage_parse_record(body, blen, &rec, &bad, &why) == OUT_OK) {
		if (rec.root == NULL || rec.user_id == NULL || *rec.user_id == '\0' ||
		    strlen(rec.user_id) > LIMIT_USER_ID_LEN || rec.usage_type == NULL ||
		    !usage_type_valid(rec.usage_type) || rec.amount < 1 ||
		    rec.amount > LIMIT_USAGE_AMOUNT)
			abort();
		if (rec.metadata != NULL) {
			m = json_object_to_json_string_ext(rec.metadata, JSON_C_TO_STRING_PLAIN);
			if (m == NULL || strlen(m) > LIMIT_USAGE_METADATA ||
			    jsonget_grade(m, strlen(m)) != JSONGET_STRICT || !numbers_ok(m))
				abort();
		}
	} else if (rec.root != NULL) {
		abort();
	}
	usage_record_free(&rec);
	free(key);
	free(body);
	return 0;
}
