#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "buf.h"
#include "limits.h"
#include "log.h"
#include "response.h"

/*
 * The answer being built.  A FastCGI process serves many requests, so
 * response_begin resets all of it at the start of each one.
 */
static struct buf headers = BUF_INIT(LIMIT_RESPONSE_HEADERS);
static int sent;
static int sent_status;
static int omit_body;
static const struct response_sink *out;

/* Plain CGI: stdout (RFC 3875 6); the sink until serve sets another. */
static int
stdout_write(void *ctx, const char *p, size_t n)
{
	ssize_t w;

	(void)ctx;
	while (n > 0) {
		w = write(STDOUT_FILENO, p, n);
		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static const struct response_sink stdout_sink = { stdout_write, NULL, NULL };

void
response_begin(const struct response_sink *sink, int head)
{
	buf_free(&headers);
	sent = 0;
	sent_status = 0;
	omit_body = head;
	out = sink ? sink : &stdout_sink;
}

int
response_sent(void)
{
	return sent;
}

int
response_status(void)
{
	return sent_status;
}

static int
has_header(const char *name)
{
	const char *h = buf_str(&headers), *nl;
	size_t n = strlen(name);

	while (*h != '\0') {
		if (strncasecmp(h, name, n) == 0 && h[n] == ':')
			return 1;
		if ((nl = strchr(h, '\n')) == NULL)
			break;
		h = nl + 1;
	}
	return 0;
}

void
response_header(const char *name, const char *fmt, ...)
{
	struct buf value = BUF_INIT(LIMIT_HEADER_VALUE);
	va_list ap;
	int rc;
	char *p;

	va_start(ap, fmt);
	rc = buf_vprintf(&value, fmt, ap);
	va_end(ap);
	if (rc == 0) {
		/* Header values never carry CR/LF: no response splitting. */
		for (p = value.data; p && *p; p++)
			if (*p == '\r' || *p == '\n')
				*p = ' ';
		if (buf_printf(&headers, "%s: %s\n", name, buf_str(&value)) == -1)
			log_msg("response header %s dropped: header block full", name);
	}
	buf_free(&value);
}

/* A client that is gone cannot be told anything: errors are dropped here. */
static void
write_all(const char *p, size_t n)
{
	if (out == NULL)
		out = &stdout_sink;
	(void)out->write(out->ctx, p, n);
}

static void
send_response(int status, const char *content_type, const char *body, size_t len)
{
	struct buf head = BUF_INIT(32 * 1024);

	if (sent)
		return;
	sent = 1;
	sent_status = status;
	if (buf_printf(&head, "Status: %d %s\n", status, outcome_reason(status)) == -1 ||
	    buf_printf(&head, "X-Request-Id: %s\n", log_request_id()) == -1 ||
	    buf_addstr(&head, "Cache-Control: no-store\n") == -1 ||
	    buf_addstr(&head, "X-Content-Type-Options: nosniff\n") == -1 ||
	    (content_type && buf_printf(&head, "Content-Type: %s\n", content_type) == -1) ||
	    buf_add(&head, buf_str(&headers), headers.len) == -1 ||
	    buf_addstr(&head, "\n") == -1) {
		static const char fallback[] = "Status: 500 Internal Server Error\n\n";

		write_all(fallback, sizeof(fallback) - 1);
		sent_status = 500;
		buf_free(&head);
		log_finish(500);
		return;
	}
	write_all(buf_str(&head), head.len);
	/* HEAD: the same status and headers as GET, no body (RFC 9110 9.3.2). */
	if (body && len && !omit_body)
		write_all(body, len);
	buf_free(&head);
	log_finish(status);
}

void
response_json(int status, struct json_object *body)
{
	const char *text;
	size_t len;

	text = json_object_to_json_string_length(body,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (text == NULL)
		response_fatal("cannot serialise response");
	send_response(status, "application/json", text, len);
}

void
response_empty(int status)
{
	send_response(status, NULL, NULL, 0);
}

void
response_body(int status, const char *content_type, const char *body, size_t len)
{
	send_response(status, content_type, body, len);
}

struct json_object *
response_object(void)
{
	struct json_object *o = json_object_new_object();

	if (o == NULL)
		response_fatal("out of memory");
	return o;
}

void
response_add(struct json_object *o, const char *key, struct json_object *v)
{
	if (json_object_object_add(o, key, v) != 0)
		response_fatal("out of memory");
}

static struct json_object *
error_body(enum outcome o, const char *field, const char *message)
{
	struct json_object *root = response_object(), *err = response_object();

	response_add(err, "code", json_object_new_string(outcome_code(o)));
	response_add(err, "message",
	    json_object_new_string(message ? message : outcome_message(o)));
	if (field)
		response_add(err, "field", json_object_new_string(field));
	response_add(root, "error", err);
	return root;
}

static void
error_headers(enum outcome o)
{
	if (o == OUT_UNAUTHORIZED && !has_header("WWW-Authenticate"))
		response_header("WWW-Authenticate", "Bearer realm=\"billing\"");
	if (o == OUT_UNAVAILABLE && !has_header("Retry-After"))
		response_header("Retry-After", "5");
}

void
response_error_extra(enum outcome o, struct json_object *extra)
{
	struct json_object *root = error_body(o, NULL, NULL);

	if (extra) {
		json_object_object_foreach(extra, key, val)
			response_add(root, key, json_object_get(val));
	}
	error_headers(o);
	response_json(outcome_status(o), root);
	json_object_put(root);
}

static void
send_error(enum outcome o, const char *field, const char *message)
{
	struct json_object *root = error_body(o, field, message);

	error_headers(o);
	response_json(outcome_status(o), root);
	json_object_put(root);
}

void
response_error_field(enum outcome o, const char *field, const char *why)
{
	struct buf message = BUF_INIT(LIMIT_HEADER_VALUE);

	/* One sentence shape for every endpoint: "<field> <why>." */
	if (field != NULL && why != NULL && buf_printf(&message, "%s %s.", field, why) == 0)
		send_error(o, field, buf_str(&message));
	else
		send_error(o, field, why);
	buf_free(&message);
}

void
response_error(enum outcome o, const char *message)
{
	send_error(o, NULL, message);
}

void
response_fatal(const char *why)
{
	static const char msg[] = "Status: 500 Internal Server Error\n"
	    "Content-Type: application/json\n\n"
	    "{\"error\":{\"code\":\"internal_error\",\"message\":\"Internal error.\"}}";

	if (!sent) {
		sent = 1;
		sent_status = 500;
		write_all(msg, sizeof(msg) - 1);
	}
	log_msg("fatal: %s", why);
	log_finish(500);
	/* Under FastCGI the answer is still buffered: hand it over first. */
	if (out != NULL && out->finish != NULL)
		out->finish(out->ctx);
	exit(1);
}
