/*
 * lib/usage without a database: the POST body's field table and the
 * Idempotency-Key rule.  Counting against quotas is SQL (track_usage)
 * and is tested against a real server in tests/test_usage*.py.
 */
#include <string.h>

#include "request.h"
#include "usage.h"
#include "limits.h"
#include "tap.h"

/* Parses body; the outcome, and on OUT_INVALID_FIELD the field named. */
static enum outcome
parse(const char *body, const char **field, struct usage_record *rec)
{
	const char *why = NULL;
	enum outcome o;

	*field = NULL;
	o = usage_parse_record(body, strlen(body), rec, field, &why);
	if (o == OUT_INVALID_FIELD && (why == NULL || *why == '\0'))
		return OUT_INTERNAL; /* every refusal must say why */
	return o;
}

/* 1 if body is refused as OUT_INVALID_FIELD naming want. */
static int
refused(const char *body, const char *want)
{
	struct usage_record rec;
	const char *field;
	enum outcome o = parse(body, &field, &rec);

	if (o == OUT_OK)
		usage_record_free(&rec);
	return o == OUT_INVALID_FIELD && field != NULL && strcmp(field, want) == 0;
}

/* Bodies refused with OUT_INVALID_FIELD, and the field they must name. */
static const struct {
	const char *body, *field, *name;
} refusals[] = {
	{"{\"usageType\":\"export\"}", "userId", "userId required"},
	{"{\"userId\":\"\",\"usageType\":\"export\"}", "userId", "empty userId"},
	{"{\"userId\":7,\"usageType\":\"export\"}", "userId", "numeric userId"},
	{"{\"userId\":\"u1\"}", "usageType", "usageType required"},
	{"{\"userId\":\"u1\",\"usageType\":\"exports\"}", "usageType", "unknown usageType"},
	{"{\"userId\":\"u1\",\"usageType\":\"Export\"}", "usageType", "usage types are exact"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"amount\":0}", "amount", "amount 0"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"amount\":-1}", "amount",
	    "negative amount"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"amount\":1073741825}", "amount",
	    "amount over the maximum"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"amount\":1.5}", "amount",
	    "fractional amount"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"amount\":\"2\"}", "amount",
	    "amount as a string"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":[1]}", "metadata",
	    "metadata must be an object"},
	/* jsonb (the idempotency hash) refuses what numeric cannot hold. */
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"x\":1E200000}}",
	    "metadata", "a number beyond numeric's range in metadata"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"a\":[{\"x\":-1E1000}]}}",
	    "metadata", "an exponent beyond 999, deep in metadata"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"x\":1.00000000000000000000000000000000000000000000000000000000000000001}}",
	    "metadata", "a number over 64 characters in metadata"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"x\":1E-200000}}",
	    "metadata", "an exponent below -999 in metadata"},
	{"{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"x\":0E99999999999999999999}}",
	    "metadata", "an exponent numeric cannot read in metadata"},
};

int
main(void)
{
	struct usage_record rec;
	const char *field;
	char big[LIMIT_USAGE_METADATA + 64];
	char key[LIMIT_IDEMPOTENCY_KEY_LEN + 2];
	size_t n, i;

	ok(parse("{\"userId\":\"u1\",\"usageType\":\"export\"}", &field, &rec) == OUT_OK &&
	    strcmp(rec.user_id, "u1") == 0 && strcmp(rec.usage_type, "export") == 0 &&
	    rec.amount == 1 && rec.metadata == NULL,
	    "minimal body: amount defaults to 1, no metadata");
	usage_record_free(&rec);
	ok(rec.root == NULL, "usage_record_free clears the record");
	usage_record_free(NULL);

	ok(parse("{\"userId\":\"u1\",\"usageType\":\"storage\",\"amount\":1073741824,"
		 "\"metadata\":{\"file\":\"a.pdf\",\"tags\":[1,{\"x\":null}]}}",
		 &field, &rec) == OUT_OK &&
	    rec.amount == LIMIT_USAGE_AMOUNT && rec.metadata != NULL,
	    "largest amount and nested metadata accepted");
	usage_record_free(&rec);
	ok(parse("{\"userId\":\"u1\",\"usageType\":\"export\","
		 "\"metadata\":{\"big\":1.7976931348623157E308,\"small\":-2.5e-300,\"n\":12345678901234567890,"
		 "\"sub\":1e-310,\"huge\":[-1E400,1E999,0e-999]}}",
		 &field, &rec) == OUT_OK,
	    "metadata numbers numeric stores accepted, beyond a double's range too");
	usage_record_free(&rec);

	ok(parse("{\"userId\":", &field, &rec) == OUT_INVALID_JSON, "truncated JSON");
	ok(parse("[1]", &field, &rec) != OUT_OK, "an array is not a record");
	/* \u0000 anywhere is not JSON we take (jsonget_parse), so metadata cannot hide one. */
	ok(parse("{\"userId\":\"u1\",\"usageType\":\"export\",\"metadata\":{\"a\":\"x\\u0000y\"}}",
		 &field, &rec) == OUT_INVALID_JSON, "metadata with a NUL character");
	ok(parse("{\"userId\":\"u1\",\"usageType\":\"export\","
		 "\"metadata\":{\"a\":[{\"b\":\"\\u0000\"}]}}",
		 &field, &rec) == OUT_INVALID_JSON, "a NUL character deep inside metadata");
	for (i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
		ok(refused(refusals[i].body, refusals[i].field), "%s", refusals[i].name);
	n = (size_t)snprintf(big, sizeof(big), "{\"userId\":\"u1\",\"usageType\":\"export\","
					       "\"metadata\":{\"a\":\"");
	memset(big + n, 'x', LIMIT_USAGE_METADATA);
	strcpy(big + n + LIMIT_USAGE_METADATA - 40, "\"}}");
	ok(parse(big, &field, &rec) == OUT_OK, "metadata just under 4 KiB accepted");
	usage_record_free(&rec);
	memset(big + n, 'x', LIMIT_USAGE_METADATA);
	strcpy(big + n + LIMIT_USAGE_METADATA, "\"}}");
	ok(refused(big, "metadata"), "metadata over 4 KiB");

	ok(request_idempotency_key_valid(NULL), "no Idempotency-Key is fine");
	ok(request_idempotency_key_valid("entry-8f14e45f"), "ordinary key");
	ok(!request_idempotency_key_valid(""), "empty key");
	ok(!request_idempotency_key_valid("a\tb"), "control character");
	ok(!request_idempotency_key_valid("caf\xc3\xa9"), "non-ASCII");
	memset(key, 'k', sizeof(key) - 1);
	key[sizeof(key) - 1] = '\0';
	ok(!request_idempotency_key_valid(key), "256 characters");
	key[LIMIT_IDEMPOTENCY_KEY_LEN] = '\0';
	ok(request_idempotency_key_valid(key), "255 characters");
	return done_testing();
}
