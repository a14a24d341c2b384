#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "request.h"
#include "response.h"

extern char **environ;

/* The current request's variables; NULL means the process environment. */
static char **bound_vars;

void
request_bind(char **vars)
{
	bound_vars = vars;
}

const char *
request_env(const char *name)
{
	char **v;
	size_t n;

	if (bound_vars == NULL)
		return getenv(name);
	n = strlen(name);
	for (v = bound_vars; *v != NULL; v++)
		if (strncmp(*v, name, n) == 0 && (*v)[n] == '=')
			return *v + n + 1;
	return NULL;
}

static const char *
env_or_empty(const char *name)
{
	const char *v = request_env(name);

	return v ? v : "";
}

void
request_init(struct request *r)
{
	r->method = env_or_empty("REQUEST_METHOD");
	r->query = env_or_empty("QUERY_STRING");
	r->body = NULL;
	r->body_len = 0;
	r->body_outcome = OUT_LENGTH_REQUIRED;
}

void
request_free(struct request *r)
{
	if (r == NULL)
		return;
	free(r->body);
	r->body = NULL;
	r->body_len = 0;
}

int
request_method_in(const char *method, const char *list)
{
	const char *p = list, *e;
	size_t mlen = strlen(method);

	while (*p != '\0') {
		while (*p == ' ' || *p == ',')
			p++;
		e = p;
		while (*e != '\0' && *e != ',' && *e != ' ')
			e++;
		if (mlen > 0 && (size_t)(e - p) == mlen && strncmp(p, method, mlen) == 0)
			return 1;
		p = e;
	}
	return 0;
}

enum outcome
request_check_method(const struct request *r, const char *allow)
{
	if (request_method_in(r->method, allow))
		return OUT_OK;
	response_header("Allow", "%s", allow);
	return OUT_METHOD_NOT_ALLOWED;
}

/* Whether CONTENT_TYPE's media type is mt (parameters such as charset allowed). */
static int
content_type_is(const char *mt)
{
	const char *ct = request_env("CONTENT_TYPE");
	size_t n = strlen(mt);

	if (ct == NULL)
		return 0;
	while (*ct == ' ')
		ct++;
	if (strncasecmp(ct, mt, n) != 0)
		return 0;
	ct += n;
	while (*ct == ' ')
		ct++;
	return *ct == '\0' || *ct == ';';
}

enum outcome
request_require_json(const struct request *r)
{
	(void)r;
	return content_type_is("application/json") ? OUT_OK : OUT_UNSUPPORTED_MEDIA;
}

enum outcome
request_body_cap(size_t *max)
{
	long v;
	enum outcome rc;

	rc = config_get_long("BILLING_MAX_BODY", LIMIT_BODY_DEFAULT, 1,
	    LIMIT_BODY_CEILING, &v);
	if (rc == OUT_OK)
		*max = (size_t)v;
	return rc;
}

/* RFC 3875 4.1.2: CONTENT_LENGTH = 1*digit.  No sign, no blanks, no overflow. */
static int
parse_content_length(const char *s, size_t *out)
{
	size_t n = 0, i;

	if (*s == '\0')
		return -1;
	for (i = 0; s[i] != '\0'; i++) {
		if (!isdigit((unsigned char)s[i]) || i >= LIMIT_CONTENT_LENGTH_DIGITS + 9)
			return -1;
		if (n > (size_t)LIMIT_BODY_CEILING * 1024)
			continue;	/* already absurd: keep scanning for non-digits only */
		n = n * 10 + (size_t)(s[i] - '0');
	}
	*out = n;
	return 0;
}

/*
 * Reads up to len bytes into dst (NULL: discard them).  Returns how many
 * arrived before the end of the body, an error or the time budget.
 */
static size_t
read_up_to(request_reader *read, void *ctx, char *dst, size_t len)
{
	char sink[16384];
	size_t got = 0, want;
	ssize_t n;

	while (got < len) {
		want = len - got;
		if (dst == NULL && want > sizeof(sink))
			want = sizeof(sink);
		n = read(ctx, dst ? dst + got : sink, want);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/* Takes over body (len bytes read, room for a NUL) as the request's. */
static void
keep_body(struct request *r, char *body, size_t len)
{
	body[len] = '\0';
	r->body = body;
	r->body_len = len;
	r->body_outcome = OUT_OK;
}

/* A chunked body (RFC 9112 7.1, de-chunked by the server): read to its end. */
static void
take_chunked(struct request *r, size_t max, request_reader *read, void *ctx)
{
	char *body = mem_alloc(max + 1);
	size_t got = read_up_to(read, ctx, body, max + 1);

	if (got > max) {
		got += read_up_to(read, ctx, NULL, LIMIT_DRAIN_BYTES);
		log_msg("chunked body over the %zu-byte cap", max);
		free(body);
		r->body_outcome = OUT_PAYLOAD_TOO_LARGE;
		return;
	}
	keep_body(r, body, got);
}

void
request_take_body(struct request *r, size_t max, request_reader *read, void *ctx)
{
	const char *cl = request_env("CONTENT_LENGTH");
	size_t len, got;
	char *body;

	if (cl == NULL) {
		r->body_outcome = OUT_LENGTH_REQUIRED;
		if (request_header("Transfer-Encoding") != NULL)
			take_chunked(r, max, read, ctx);
		return;
	}
	if (parse_content_length(cl, &len) == -1) {
		/* The server checked it; we cannot know how much follows. */
		log_msg("malformed CONTENT_LENGTH");
		r->body_outcome = OUT_BAD_REQUEST;
		return;
	}
	if (len > max) {
		/* Refuse, but only after taking the body off the wire (see request.h). */
		got = read_up_to(read, ctx, NULL, len < LIMIT_DRAIN_BYTES ? len : LIMIT_DRAIN_BYTES);
		log_msg("body of %zu bytes over the %zu-byte cap%s", len, max,
		    got < len ? "; not all of it could be drained" : "");
		r->body_outcome = OUT_PAYLOAD_TOO_LARGE;
		return;
	}
	body = mem_alloc(len + 1);
	got = read_up_to(read, ctx, body, len);
	if (got < len) {
		log_msg("short body: %zu of %zu bytes", got, len);
		free(body);
		r->body_outcome = OUT_BAD_REQUEST;
		return;
	}
	keep_body(r, body, len);
}

void
request_drain_body(request_reader *read, void *ctx)
{
	const char *cl = request_env("CONTENT_LENGTH");
	size_t len = LIMIT_DRAIN_BYTES;

	if (cl == NULL && request_header("Transfer-Encoding") == NULL)
		return;	/* no body: nothing to wait for */
	if (cl != NULL && parse_content_length(cl, &len) == 0 && len > LIMIT_DRAIN_BYTES)
		len = LIMIT_DRAIN_BYTES;
	read_up_to(read, ctx, NULL, len);
}

enum outcome
request_body(const struct request *r)
{
	return r->body_outcome;
}

const char *
request_header(const char *name)
{
	char var[128];
	size_t i, n = strlen(name);

	if (n + 6 >= sizeof(var))
		return NULL;
	memcpy(var, "HTTP_", 5);
	for (i = 0; i < n; i++)
		var[5 + i] = name[i] == '-' ? '_' : (char)toupper((unsigned char)name[i]);
	var[5 + n] = '\0';
	return request_env(var);
}

int
request_idempotency_key_valid(const char *key)
{
	size_t n;

	if (key == NULL)
		return 1;
	n = strlen(key);
	if (n < 1 || n > LIMIT_IDEMPOTENCY_KEY_LEN)
		return 0;
	for (; *key != '\0'; key++)
		if ((unsigned char)*key < 0x20 || (unsigned char)*key > 0x7e)
			return 0;
	return 1;
}

enum outcome
request_idempotency_key(const char **key, const char **field, const char **why)
{
	*key = request_header("Idempotency-Key");
	if (request_idempotency_key_valid(*key))
		return OUT_OK;
	*field = "Idempotency-Key";
	*why = "must be 1 to 255 visible ASCII characters";
	return OUT_INVALID_FIELD;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes application/x-www-form-urlencoded [s, e) into a new string; NULL if malformed. */
static char *
url_decode(const char *s, const char *e)
{
	char *out = mem_alloc((size_t)(e - s) + 1), *o = out;
	int hi, lo;

	while (s < e) {
		if (*s == '%') {
			if (e - s < 3 || (hi = hexval(s[1])) < 0 || (lo = hexval(s[2])) < 0)
				goto bad;
			*o = (char)(hi * 16 + lo);
			s += 3;
		} else {
			*o = *s == '+' ? ' ' : *s;
			s++;
		}
		if ((unsigned char)*o < 0x20 || *o == 0x7f)
			goto bad;
		o++;
	}
	*o = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

/*
 * The value of name in an application/x-www-form-urlencoded string of len
 * bytes (a query string or a form body): see request_query_param.
 */
static int
pairs_param(const char *p, size_t len, const char *name, char **value)
{
	const char *end_all = p + len, *amp, *eq, *end;
	char *key = NULL, *val = NULL, *found = NULL;
	int rc = -1;

	*value = NULL;
	if (memchr(p, '\0', len) != NULL)
		goto out;
	while (p < end_all) {
		amp = memchr(p, '&', (size_t)(end_all - p));
		end = amp ? amp : end_all;
		eq = memchr(p, '=', (size_t)(end - p));
		if ((key = url_decode(p, eq ? eq : end)) == NULL ||
		    (val = eq ? url_decode(eq + 1, end) : mem_strdup("")) == NULL)
			goto out;	/* any malformed pair makes the whole string malformed */
		if (strcmp(key, name) == 0) {
			if (found != NULL)
				goto out;	/* repeated: ambiguous, refuse */
			found = val;
			val = NULL;
		}
		free(key);
		free(val);
		key = val = NULL;
		p = amp ? amp + 1 : end;
	}
	*value = found;
	found = NULL;
	rc = *value != NULL;
out:
	free(key);
	free(val);
	free(found);
	return rc;
}

int
request_query_param(const struct request *r, const char *name, char **value)
{
	size_t n = strlen(r->query);

	*value = NULL;
	if (n > LIMIT_QUERY_STRING)
		return -1;
	return pairs_param(r->query, n, name, value);
}

int
request_form_param(const struct request *r, const char *name, char **value)
{
	*value = NULL;
	if (r->body_outcome != OUT_OK || r->body_len > LIMIT_FORM_BODY_IN ||
	    !content_type_is("application/x-www-form-urlencoded"))
		return -1;
	return pairs_param(r->body, r->body_len, name, value);
}
