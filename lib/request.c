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

static const char *
env_or_empty(const char *name)
{
	const char *v = getenv(name);

	return v ? v : "";
}

void
request_init(struct request *r)
{
	r->method = env_or_empty("REQUEST_METHOD");
	r->query = env_or_empty("QUERY_STRING");
	r->body = NULL;
	r->body_len = 0;
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

enum outcome
request_check_method(const struct request *r, const char *allow)
{
	const char *p = allow, *e;
	size_t mlen = strlen(r->method);

	while (*p != '\0') {
		while (*p == ' ' || *p == ',')
			p++;
		e = p;
		while (*e != '\0' && *e != ',' && *e != ' ')
			e++;
		if (mlen > 0 && (size_t)(e - p) == mlen && strncmp(p, r->method, mlen) == 0)
			return OUT_OK;
		p = e;
	}
	response_header("Allow", "%s", allow);
	return OUT_METHOD_NOT_ALLOWED;
}

enum outcome
request_require_json(const struct request *r)
{
	const char *ct = getenv("CONTENT_TYPE");
	static const char json[] = "application/json";
	size_t n = sizeof(json) - 1;

	(void)r;
	if (ct == NULL)
		return OUT_UNSUPPORTED_MEDIA;
	while (*ct == ' ')
		ct++;
	if (strncasecmp(ct, json, n) != 0)
		return OUT_UNSUPPORTED_MEDIA;
	ct += n;
	while (*ct == ' ')
		ct++;
	if (*ct != '\0' && *ct != ';')
		return OUT_UNSUPPORTED_MEDIA;
	return OUT_OK;
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

enum outcome
request_read_body(struct request *r, size_t max)
{
	const char *cl = getenv("CONTENT_LENGTH");
	size_t len, got = 0;
	ssize_t n;
	char *body;

	if (cl == NULL)
		return OUT_LENGTH_REQUIRED;
	if (parse_content_length(cl, &len) == -1) {
		log_msg("malformed CONTENT_LENGTH");
		return OUT_BAD_REQUEST;
	}
	if (len > max) {
		log_msg("body of %zu bytes over the %zu-byte cap", len, max);
		return OUT_PAYLOAD_TOO_LARGE;
	}
	body = mem_alloc(len + 1);
	while (got < len) {
		n = read(STDIN_FILENO, body + got, len - got);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got < len) {
		log_msg("short body: %zu of %zu bytes", got, len);
		free(body);
		return OUT_BAD_REQUEST;
	}
	body[len] = '\0';
	r->body = body;
	r->body_len = len;
	return OUT_OK;
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
	return getenv(var);
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

int
request_query_param(const struct request *r, const char *name, char **value)
{
	const char *p = r->query, *amp, *eq, *end;
	char *key = NULL, *val = NULL, *found = NULL;
	int rc = -1;

	*value = NULL;
	if (strlen(p) > LIMIT_QUERY_STRING)
		goto out;
	while (*p != '\0') {
		amp = strchr(p, '&');
		end = amp ? amp : p + strlen(p);
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
