#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "request.h"
#include "tap.h"

/* A body in memory, handed out at most `step` bytes per read; counts what was taken. */
struct source {
	const char *data;
	size_t len, pos, step;
};

static ssize_t
source_read(void *ctx, char *p, size_t n)
{
	struct source *s = ctx;

	if (n > s->step)
		n = s->step;
	if (n > s->len - s->pos)
		n = s->len - s->pos;
	memcpy(p, s->data + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static struct source src;

static enum outcome
read_body(const char *cl, const char *data, size_t len, size_t max, struct request *r)
{
	if (cl)
		setenv("CONTENT_LENGTH", cl, 1);
	else
		unsetenv("CONTENT_LENGTH");
	src.data = data;
	src.len = len;
	src.pos = 0;
	src.step = 3;	/* several reads per body */
	request_init(r);
	request_take_body(r, max, source_read, &src);
	return request_body(r);
}

int
main(void)
{
	struct request r;
	char *v;
	size_t cap;

	log_begin("test");
	unsetenv("BILLING_CONFIG");
	ok(config_load() == OUT_OK, "config");

	is_int(read_body("5", "hello", 5, 10, &r), OUT_OK, "exact body");
	ok(r.body_len == 5 && memcmp(r.body, "hello", 5) == 0 && r.body[5] == '\0', "body bytes");
	request_free(&r);
	is_int(read_body("3", "hello", 5, 10, &r), OUT_OK, "reads only CONTENT_LENGTH bytes");
	ok(r.body_len == 3 && strcmp(r.body, "hel") == 0, "extra bytes left unread");
	request_free(&r);
	is_int(read_body("4", "a\0bc", 4, 10, &r), OUT_OK, "NUL bytes kept");
	ok(r.body_len == 4 && r.body[1] == '\0' && r.body[3] == 'c', "raw bytes");
	request_free(&r);
	is_int(read_body("0", "", 0, 10, &r), OUT_OK, "zero length");
	ok(r.body_len == 0 && r.body != NULL, "empty body");
	request_free(&r);
	is_int(read_body(NULL, "x", 1, 10, &r), OUT_LENGTH_REQUIRED, "missing length");
	is_int(read_body("", "x", 1, 10, &r), OUT_BAD_REQUEST, "empty length");
	is_int(read_body("-1", "x", 1, 10, &r), OUT_BAD_REQUEST, "negative length");
	is_int(read_body("+1", "x", 1, 10, &r), OUT_BAD_REQUEST, "signed length");
	is_int(read_body(" 1", "x", 1, 10, &r), OUT_BAD_REQUEST, "blank in length");
	is_int(read_body("1x", "x", 1, 10, &r), OUT_BAD_REQUEST, "junk after digits");
	is_int(read_body("0x10", "x", 1, 10, &r), OUT_BAD_REQUEST, "hex length");
	is_int(read_body("99999999999999999999999999", "x", 1, 10, &r), OUT_BAD_REQUEST,
	    "overflowing length");
	is_int(read_body("11", "x", 1, 10, &r), OUT_PAYLOAD_TOO_LARGE, "over the cap");
	is_int(read_body("12", "0123456789ab", 12, 10, &r), OUT_PAYLOAD_TOO_LARGE,
	    "over the cap, body present");
	ok(src.pos == 12 && r.body == NULL, "an over-cap body is drained, not kept");
	is_int(read_body(NULL, "x", 1, 10, &r), OUT_LENGTH_REQUIRED, "no length, no chunking");
	ok(src.pos == 0, "without length or chunking nothing is read");
	setenv("HTTP_TRANSFER_ENCODING", "chunked", 1);
	is_int(read_body(NULL, "chunky", 6, 10, &r), OUT_OK, "chunked body within the cap");
	ok(r.body_len == 6 && strcmp(r.body, "chunky") == 0, "chunked body bytes");
	request_free(&r);
	is_int(read_body(NULL, "0123456789abcdef", 16, 10, &r), OUT_PAYLOAD_TOO_LARGE,
	    "chunked body over the cap");
	ok(src.pos == 16 && r.body == NULL, "an over-cap chunked body is drained");
	unsetenv("HTTP_TRANSFER_ENCODING");
	is_int(read_body("10", "0123456789", 10, 10, &r), OUT_OK, "exactly at the cap");
	request_free(&r);
	is_int(read_body("8", "abc", 3, 10, &r), OUT_BAD_REQUEST, "short read");
	ok(r.body == NULL, "no body kept after a short read");

	/* request_drain_body: what comes is taken, nothing judged or kept. */
	src = (struct source){ "hello, more", 11, 0, 3 };
	setenv("CONTENT_LENGTH", "5", 1);
	request_drain_body(source_read, &src);
	ok(src.pos == 5, "drain: CONTENT_LENGTH bytes taken off the wire");
	src = (struct source){ "abc", 3, 0, 3 };
	setenv("CONTENT_LENGTH", "8", 1);
	request_drain_body(source_read, &src);
	ok(src.pos == 3, "drain: a short body is taken to its end");
	src = (struct source){ "abc", 3, 0, 3 };
	unsetenv("CONTENT_LENGTH");
	request_drain_body(source_read, &src);
	ok(src.pos == 0, "drain: without length or chunking nothing is read");
	setenv("HTTP_TRANSFER_ENCODING", "chunked", 1);
	request_drain_body(source_read, &src);
	ok(src.pos == 3, "drain: a chunked body is read to its end");
	unsetenv("HTTP_TRANSFER_ENCODING");

	setenv("BILLING_MAX_BODY", "2048", 1);
	ok(request_body_cap(&cap) == OUT_OK && cap == 2048, "cap from BILLING_MAX_BODY");
	setenv("BILLING_MAX_BODY", "lots", 1);
	ok(request_body_cap(&cap) == OUT_MISCONFIGURED, "malformed cap");
	unsetenv("BILLING_MAX_BODY");
	ok(request_body_cap(&cap) == OUT_OK && cap == 1024 * 1024, "default cap 1 MiB");

	setenv("REQUEST_METHOD", "POST", 1);
	request_init(&r);
	is_int(request_check_method(&r, "GET, POST"), OUT_OK, "allowed method");
	is_int(request_check_method(&r, "GET, OPTIONS"), OUT_METHOD_NOT_ALLOWED, "other method");
	is_int(request_check_method(&r, "POSTX"), OUT_METHOD_NOT_ALLOWED, "no prefix match");
	setenv("REQUEST_METHOD", "", 1);
	request_init(&r);
	is_int(request_check_method(&r, "GET"), OUT_METHOD_NOT_ALLOWED, "empty method");

	setenv("CONTENT_TYPE", "application/json", 1);
	is_int(request_require_json(&r), OUT_OK, "json");
	setenv("CONTENT_TYPE", "Application/JSON; charset=utf-8", 1);
	is_int(request_require_json(&r), OUT_OK, "json with parameters, any case");
	setenv("CONTENT_TYPE", "application/jsonp", 1);
	is_int(request_require_json(&r), OUT_UNSUPPORTED_MEDIA, "jsonp");
	setenv("CONTENT_TYPE", "text/plain", 1);
	is_int(request_require_json(&r), OUT_UNSUPPORTED_MEDIA, "text/plain");
	unsetenv("CONTENT_TYPE");
	is_int(request_require_json(&r), OUT_UNSUPPORTED_MEDIA, "no content type");

	setenv("HTTP_STRIPE_SIGNATURE", "t=1,v1=ab", 1);
	is_str(request_header("Stripe-Signature"), "t=1,v1=ab", "header by HTTP name");
	is_str(request_header("X-Absent"), NULL, "absent header");

	setenv("QUERY_STRING", "userId=42&x=a%20b+c&empty=&flag", 1);
	request_init(&r);
	ok(request_query_param(&r, "userId", &v) == 1 && strcmp(v, "42") == 0, "query param");
	free(v);
	ok(request_query_param(&r, "x", &v) == 1 && strcmp(v, "a b c") == 0, "decoded query param");
	free(v);
	ok(request_query_param(&r, "empty", &v) == 1 && strcmp(v, "") == 0, "empty query param");
	free(v);
	ok(request_query_param(&r, "flag", &v) == 1 && strcmp(v, "") == 0, "name without value");
	free(v);
	setenv("QUERY_STRING", "userId=42&bad=%zz", 1);
	request_init(&r);
	ok(request_query_param(&r, "userId", &v) == -1 && v == NULL,
	    "a malformed pair anywhere makes the query malformed");
	setenv("QUERY_STRING", "userId=42&dup=1&dup=2", 1);
	request_init(&r);
	ok(request_query_param(&r, "dup", &v) == -1 && v == NULL, "repeated param refused");
	ok(request_query_param(&r, "absent", &v) == 0 && v == NULL, "absent param");
	setenv("QUERY_STRING", "userId=%0a", 1);
	request_init(&r);
	ok(request_query_param(&r, "userId", &v) == -1, "control byte refused");

	/* FastCGI: the request's own params, never the process environment. */
	{
		char *params[] = { "REQUEST_METHOD=PUT", "QUERY_STRING=userId=7",
			"HTTP_ORIGIN=https://a.example", "CONTENT_LENGTH=2", NULL };

		request_bind(params);
		request_init(&r);
		is_str(r.method, "PUT", "bound method");
		ok(request_query_param(&r, "userId", &v) == 1 && strcmp(v, "7") == 0,
		    "bound query string");
		free(v);
		is_str(request_header("Origin"), "https://a.example", "bound header");
		is_str(request_header("Stripe-Signature"), NULL,
		    "process environment not seen through bound params");
		is_str(request_env("CONTENT_TYPE"), NULL, "absent bound variable");
		is_str(request_env("CONTENT_LENGT"), NULL, "no prefix match");
		request_bind(NULL);
		is_str(request_header("Stripe-Signature"), "t=1,v1=ab", "unbound: environment again");
	}
	ok(request_method_in("HEAD", "GET, HEAD, POST") && !request_method_in("HEA", "GET, HEAD"),
	    "method lists");
	return done_testing();
}
