#include <string.h>

#include "jsonget.h"
#include "tap.h"

static int
parses(const char *text)
{
	struct json_object *o = NULL;
	enum outcome rc = jsonget_parse(text, strlen(text), &o);

	json_object_put(o);
	return rc == OUT_OK;
}

static const char *const tiers[] = { "basic", "pro", NULL };

static const struct jsonget_field fields[] = {
	{ "userId", JG_STRING, 1, 1, 128, NULL },
	{ "tier", JG_STRING, 1, 1, 16, tiers },
	{ "amount", JG_INT, 0, 1, 1000, NULL },
	{ "flag", JG_BOOL, 0, 0, 0, NULL },
	{ "metadata", JG_OBJECT, 0, 0, 20, NULL },
};

static const char *
invalid(const char *text)
{
	struct json_object *o = NULL;
	const char *bad = NULL, *why = NULL;

	if (jsonget_parse(text, strlen(text), &o) != OUT_OK)
		return "(parse)";
	if (jsonget_validate(o, fields, sizeof(fields) / sizeof(fields[0]), &bad, &why) == OUT_OK)
		bad = NULL;
	json_object_put(o);
	return bad;
}

int
main(void)
{
	struct json_object *o = NULL;
	long long n;
	int b;

	ok(parses("{\"a\":1}"), "object");
	ok(parses(" {\"a\":1}\n"), "surrounding whitespace");
	ok(!parses("[1]"), "array is not an object");
	ok(!parses("\"x\""), "string is not an object");
	ok(!parses("{\"a\":1} x"), "trailing garbage");
	ok(!parses("{\"a\":1}{}"), "two values");
	ok(!parses("{\"a\":"), "truncated");
	ok(!parses(""), "empty");
	ok(!parses("{'a':1}"), "single quotes");
	ok(!parses("{\"a\":\"\xff\"}"), "invalid UTF-8");
	ok(!parses("{\"a\":\"\xc0\xaf\"}"), "overlong UTF-8");
	ok(parses("{\"a\":\"\xc3\xa9\"}"), "valid UTF-8");
	ok(jsonget_parse("{\"a\":1}\0", 8, &o) == OUT_INVALID_JSON, "NUL byte");
	{
		char deep[300];
		memset(deep, '[', 150);
		strcpy(deep + 150, "");
		char text[400] = "{\"a\":";
		strcat(text, deep);
		ok(!parses(text), "nesting beyond the limit");
	}

	static const char sample[] = "{\"s\":\"v\",\"i\":5,\"b\":true,"
	    "\"o\":{\"x\":[10,{\"y\":\"z\"}]},\"big\":99999999999999999999}";
	ok(jsonget_parse(sample, strlen(sample), &o) == OUT_OK, "parse sample");
	is_str(jsonget_str(o, "s"), "v", "string getter");
	is_str(jsonget_str(o, "i"), NULL, "string getter refuses a number");
	ok(jsonget_int(o, "i", &n) == 0 && n == 5, "int getter");
	ok(jsonget_int(o, "s", &n) == -1, "int getter refuses a string");
	ok(jsonget_int(o, "big", &n) == -1, "int getter refuses an out-of-range number");
	ok(jsonget_bool(o, "b", &b) == 0 && b == 1, "bool getter");
	ok(jsonget_obj(o, "o") != NULL && jsonget_obj(o, "s") == NULL, "object getter");
	ok(jsonget_path_int(o, "o.x.0", &n) == 0 && n == 10, "path into array");
	is_str(jsonget_path_str(o, "o.x.1.y"), "z", "path through array into object");
	is_str(jsonget_path_str(o, "o.x.2.y"), NULL, "path past array end");
	is_str(jsonget_path_str(o, "o..x"), NULL, "empty path part");
	is_str(jsonget_path_str(o, "s.t"), NULL, "path through a string");
	json_object_put(o);

	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\"}"), NULL, "valid request");
	is_str(invalid("{\"tier\":\"pro\"}"), "userId", "missing required");
	is_str(invalid("{\"userId\":null,\"tier\":\"pro\"}"), "userId", "null required");
	is_str(invalid("{\"userId\":\"\",\"tier\":\"pro\"}"), "userId", "empty string");
	is_str(invalid("{\"userId\":42,\"tier\":\"pro\"}"), "userId", "number for string");
	is_str(invalid("{\"userId\":\"a\\u0000b\",\"tier\":\"pro\"}"), "userId", "embedded NUL");
	is_str(invalid("{\"userId\":\"a\\nb\",\"tier\":\"pro\"}"), "userId", "control character");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"gold\"}"), "tier", "not a choice");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"amount\":0}"), "amount", "below min");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"amount\":1.5}"), "amount", "fraction");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"amount\":\"3\"}"), "amount", "string number");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"amount\":1000}"), NULL, "at max");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"flag\":1}"), "flag", "number for bool");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"metadata\":[]}"), "metadata", "array for object");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"metadata\":{\"k\":\"0123456789abcdef\"}}"),
	    "metadata", "object over its size");
	is_str(invalid("{\"userId\":\"42\",\"tier\":\"pro\",\"other\":1}"), NULL, "unknown members ignored");
	ok(jsonget_clean_utf8("\xed\xa0\x80", 3) == 0, "surrogate rejected");
	ok(jsonget_clean_utf8("\xf4\x90\x80\x80", 4) == 0, "beyond U+10FFFF rejected");
	ok(jsonget_clean_utf8("\xf0\x9f\x98\x80", 4) == 1, "emoji accepted");
	return done_testing();
}
