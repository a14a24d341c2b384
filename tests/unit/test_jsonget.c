#include <stdio.h>
#include <string.h>

#include "jsonget.h"
#include "limits.h"
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

/* Each must be refused by jsonget_parse (RFC 8259, issue 15). */
static const char *const not_json[] = {
	"{\"a\":NaN}", "{\"a\":Infinity}", "{\"a\":-Infinity}", "{\"a\":1.}",
	"{\"a\":01}", "{\"a\":-01}", "{\"a\":00}", "{\"a\":+1}", "{\"a\":.5}",
	"{\"a\":1.e5}", "{\"a\":1e}", "{\"a\":1e+}", "{\"a\":-}", "{\"a\":0x10}",
	"{\"a\":True}", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":undefined}",
	"{\"a\":\"x\x01y\"}", "{\"a\":\"x\ty\"}", "{\"a\":\"x\ny\"}", "{\"a\x1f\":1}",
	"{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xf8\x88\x80\x80\x80\"}",
	"{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
	"{\"a\":\"\\udc00\\ud800\"}", "{\"a\":\"\\ud800\\ud800\"}", "{\"a\":\"x\\ud800\"}",
	"{\"a\":\"\\u0000\"}", "{\"a\":\"user_a\\u0000x\"}", "{\"a\\u0000b\":1}",
	"{\"a\":\"\\x41\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u12g4\"}", "{\"a\":\"\\\"}",
	"{\"a\":1,}", "{\"a\":[1,]}", "{,}", "{\"a\" 1}", "{\"a\":1\"b\":2}", "{a:1}",
	"{\"a\":1}\f", "{\"a\":'x'}", "{\"a\":\"x}", "{\"a\":[}", "{\"a\":1]",
};

static const char *const json_ok[] = {
	"{}", "{\"\":0}", "{\"a\":-0}", "{\"a\":0.5}", "{\"a\":-1.25e-3}", "{\"a\":1E+2}",
	"{\"a\":10e2}", "{\"a\":[]}", "{\"a\":[true,false,null,{},\"s\"]}",
	"{\"a\":\"\\ud83d\\ude00\"}", "{\"a\":\"\\uD83D\\uDE00\"}", "{\"a\":\"\\u00e9\\uffff\"}",
	"{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}", "{\"a\":\"\xc2\x85\x7f\"}",
	"\t{ \"a\" : 1 , \"b\" : [ 1 , 2 ] }\r\n",
};

/* text with bytes outside printable ASCII as \xNN, for test names. */
static const char *
label(const char *text)
{
	static char out[512];
	size_t k = 0;

	for (; *text && k < sizeof(out) - 5; text++) {
		if ((unsigned char)*text >= 0x20 && (unsigned char)*text < 0x7f)
			out[k++] = *text;
		else
			k += (size_t)snprintf(out + k, 5, "\\x%02x", (unsigned char)*text);
	}
	out[k] = '\0';
	return out;
}

static int
grade(const char *text)
{
	return (int)jsonget_grade(text, strlen(text));
}

/* text nested n containers deep: {"a":[[...[1]...]]} */
static int
nested(int n)
{
	char text[2 * LIMIT_JSON_DEPTH + 64];
	size_t i, k = 0;

	text[k++] = '{';
	memcpy(text + k, "\"a\":", 4);
	k += 4;
	for (i = 1; i < (size_t)n; i++)
		text[k++] = '[';
	text[k++] = '1';
	for (i = 1; i < (size_t)n; i++)
		text[k++] = ']';
	text[k++] = '}';
	text[k] = '\0';
	return parses(text);
}

static void
strict_grammar(void)
{
	struct json_object *o = NULL;
	size_t i;

	for (i = 0; i < sizeof(not_json) / sizeof(not_json[0]); i++)
		ok(!parses(not_json[i]), "refused: %s", label(not_json[i]));
	for (i = 0; i < sizeof(json_ok) / sizeof(json_ok[0]); i++)
		ok(parses(json_ok[i]), "accepted: %s", label(json_ok[i]));

	ok(nested(LIMIT_JSON_DEPTH), "%d containers deep accepted", LIMIT_JSON_DEPTH);
	ok(!nested(LIMIT_JSON_DEPTH + 1), "%d containers deep refused", LIMIT_JSON_DEPTH + 1);

	/* Grades: what the webhook needs to tell "store as is" from "store what fits". */
	is_int(grade("{\"a\":\"\\ud83d\\ude00\"}"), JSONGET_STRICT, "pair is strict");
	is_int(grade("[1]"), JSONGET_STRICT, "any value grades");
	is_int(grade("{\"a\":\"\\ud800\"}"), JSONGET_LOOSE, "lone surrogate is loose");
	is_int(grade("{\"\\udc00\":1}"), JSONGET_LOOSE, "lone surrogate in a name is loose");
	is_int(grade("{\"a\":\"x\\u0000\"}"), JSONGET_LOOSE, "\\u0000 in a value is loose");
	is_int(grade("{\"a\\u0000\":1}"), JSONGET_INVALID, "\\u0000 in a name is invalid");
	is_int(grade("{\"a\":NaN}"), JSONGET_INVALID, "NaN is invalid");
	is_int(grade(""), JSONGET_INVALID, "empty is invalid");
	ok(jsonget_grade("{}x", 2) == JSONGET_STRICT, "length is authoritative");

	{
		static const char loose[] = "{\"a\":\"\\ud800\",\"b\":\"x\\u0000y\",\"c\":\"z\"}";

		ok(jsonget_parse_loose(loose, strlen(loose), &o) == OUT_OK,
		   "loose parse takes a lone surrogate and \\u0000");
	}
	is_str(jsonget_str(o, "a"), "\xef\xbf\xbd", "lone surrogate read as U+FFFD");
	is_str(jsonget_str(o, "b"), NULL, "string with \\u0000 reads as absent");
	is_str(jsonget_path_str(o, "b"), NULL, "also through a path");
	is_str(jsonget_str(o, "c"), "z", "other members intact");
	json_object_put(o);
	o = NULL;
	ok(jsonget_parse_loose("{\"a\":NaN}", 9, &o) == OUT_INVALID_JSON && o == NULL,
	   "loose parse still refuses non-JSON");
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
	ok(jsonget_clean_utf8("a\xc2\x85", 3) == 0, "C1 control rejected");
	ok(jsonget_clean_utf8("\xf4\x90\x80\x80", 4) == 0, "beyond U+10FFFF rejected");
	ok(jsonget_clean_utf8("\xf0\x9f\x98\x80", 4) == 1, "emoji accepted");
	strict_grammar();
	return done_testing();
}
