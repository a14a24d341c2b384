/*
 * lib/jsonb: what PostgreSQL's jsonb cannot store is left out and named,
 * everything else is copied byte for byte.  That jsonb then accepts the
 * result is proven against a real server in tests/test_webhook_storable.py.
 */
#include <string.h>

#include "jsonb.h"
#include "limits.h"
#include "tap.h"

/* Each case: input, expected output, expected paths ("" = none, "a|b" = two). */
static const struct {
	const char *in, *out, *paths, *name;
} cases[] = {
	{ "{\"a\":\"x\",\"b\":[1,2.5,-3e2],\"c\":true}",
	  "{\"a\":\"x\",\"b\":[1,2.5,-3e2],\"c\":true}", "", "clean JSON is copied as is" },
	{ "{\"a\":\"\\ud83d\\ude00 \\n \\\" \\\\u0000\"}", "{\"a\":\"\\ud83d\\ude00 \\n \\\" \\\\u0000\"}", "",
	  "surrogate pairs, escaped quotes and an escaped backslash before u0000 are fine" },
	{ "{\"data\":{\"object\":{\"metadata\":{\"userId\":\"42\\u0000x\"}}}}",
	  "{\"data\":{\"object\":{\"metadata\":{\"userId\":null}}}}", "data.object.metadata.userId",
	  "a string with \\u0000 becomes null, named by its path" },
	{ "{\"a\":[\"ok\",\"x\\ud800y\",\"z\\udc00\"]}", "{\"a\":[\"ok\",null,null]}", "a.1|a.2",
	  "lone high and low surrogates in array elements" },
	{ "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":null}", "a", "a high surrogate followed by a non-surrogate escape" },
	{ "{\"a\":\"\\uDBFF\\uDFFF\"}", "{\"a\":\"\\uDBFF\\uDFFF\"}", "", "an upper-case surrogate pair is fine" },
	{ "{\"k\\u0000ey\":1,\"n\":2}", "{\"k\\ufffdey\":1,\"n\":2}", "k\\u0000ey",
	  "a member name keeps its place with U+FFFD" },
	{ "{\"a\":1e400,\"b\":-1e-400,\"c\":1e308}", "{\"a\":null,\"b\":null,\"c\":1e308}", "a|b",
	  "numbers beyond a double's range become null" },
	{ "{\"a\":0E99999999999999999999,\"b\":0e-1000,\"c\":0E+999,\"d\":-0.0e-999}",
	  "{\"a\":null,\"b\":null,\"c\":0E+999,\"d\":-0.0e-999}", "a|b",
	  "a zero with an exponent beyond 999 becomes null (numeric cannot read 0E99999999999999999999)" },
	{ "{\"a\":99999999999999999999}", "{\"a\":99999999999999999999}", "",
	  "a long integer within a double's range is kept (jsonb stores it)" },
	{ "{\"a\":1000000000000000000000000000000000000000000000000000000000000000000}",
	  "{\"a\":null}", "a", "a number token over 64 characters becomes null" },
	{ "{\"a\":{\"b\":[{\"c\":[0,{\"d\":\"\\u0000\"}]}]}}", "{\"a\":{\"b\":[{\"c\":[0,{\"d\":null}]}]}}",
	  "a.b.0.c.1.d", "deep paths count array indexes" },
	{ "{\"a.b\":\"\\u0000\"}", "{\"a.b\":null}", "a?b", "a dot inside a member name is shown as ?" },
	{ "{\"a\":\"x\\\"y\\u0000\"}", "{\"a\":null}", "a",
	  "a bad escape after an escaped quote in the same string" },
	{ "{\"a\":\"x\\\\\\\\\",\"b\":\"\\u0000\"}", "{\"a\":\"x\\\\\\\\\",\"b\":null}", "b",
	  "an even run of backslashes does not escape the closing quote" },
	{ "{\"a\":1000000000000000000000000000000000000000000000000000000000000000}",
	  "{\"a\":1000000000000000000000000000000000000000000000000000000000000000}", "",
	  "a number token of exactly 64 characters is kept" },
	{ "{\"a\":1e5,\"b\":\"\\u0000\"}", "{\"a\":1e5,\"b\":null}", "b",
	  "an exponent within range is kept beside a value left out" },
	{ "{\"a\":\"unterminated", "{\"a\":\"unterminated", "", "unterminated input is copied for the parser" },
	{ "{\"a\":\"\\", "{\"a\":\"\\", "", "a trailing backslash is copied" },
};

static void
check(size_t i)
{
	struct jsonb_fit fit;
	char want_paths[256] = "", got[256] = "";
	size_t j;

	if (!ok(jsonb_fit(cases[i].in, strlen(cases[i].in), &fit) == 0, "%s: accepted", cases[i].name))
		return;
	is_str(fit.text, cases[i].out, "%s: output", cases[i].name);
	is_int(fit.len, strlen(cases[i].out), "%s: length", cases[i].name);
	ok(fit.len <= strlen(cases[i].in), "%s: never longer than the input", cases[i].name);
	for (j = 0; fit.paths && j < json_object_array_length(fit.paths); j++) {
		if (j)
			strcat(got, "|");
		strncat(got, json_object_get_string(json_object_array_get_idx(fit.paths, j)), 100);
	}
	strncat(want_paths, cases[i].paths, sizeof(want_paths) - 1);
	is_str(got, want_paths, "%s: paths", cases[i].name);
	is_int(fit.left_out, fit.paths ? (long long)json_object_array_length(fit.paths) : 0,
	    "%s: count", cases[i].name);
	jsonb_fit_free(&fit);
}

int
main(void)
{
	struct jsonb_fit fit;
	char deep[200], many[2048];
	size_t i, n;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check(i);

	/* Deeper than LIMIT_JSON_DEPTH (64): refused. */
	memset(deep, '[', 70);
	memset(deep + 70, ']', 70);
	ok(jsonb_fit(deep, 140, &fit) == -1 && fit.text == NULL, "nesting deeper than 64 is refused");
	ok(jsonb_fit(deep + 6, 128, &fit) == 0, "nesting of 64 is fine");
	jsonb_fit_free(&fit);

	/* Twenty bad values: all left out, sixteen named. */
	strcpy(many, "[");
	for (i = 0; i < 20; i++)
		strcat(many, i ? ",\"\\u0000\"" : "\"\\u0000\"");
	strcat(many, "]");
	n = strlen(many);
	ok(jsonb_fit(many, n, &fit) == 0 && fit.left_out == 20 &&
	    json_object_array_length(fit.paths) == LIMIT_JSONB_PATHS,
	    "twenty left out, LIMIT_JSONB_PATHS named");
	jsonb_fit_free(&fit);

	/* Embedded NUL bytes are copied (the parser refuses them), never read past. */
	ok(jsonb_fit("{\"a\":\"x\0y\"}", 11, &fit) == 0 && fit.len == 11 &&
	    memcmp(fit.text, "{\"a\":\"x\0y\"}", 11) == 0, "raw NUL bytes are copied as they are");
	jsonb_fit_free(&fit);
	jsonb_fit_free(NULL);
	return done_testing();
}
