/*
 * The only writer of status lines, headers and bodies.  A CGI answers
 * once (RFC 3875 6.2): headers are collected with response_header and
 * go out together with the body.  Every response carries X-Request-Id
 * and ends the request's log line.  JSON bodies are built with json-c,
 * never printed by hand; pages are built by the html module.
 */
#ifndef RESPONSE_H
#define RESPONSE_H

#include <stddef.h>

#include <json-c/json.h>

#include "outcome.h"

/* Where an answer goes: stdout for plain CGI, FCGI_STDOUT under FastCGI. */
struct response_sink {
	/* Writes all n bytes: 0, or -1 when the client is gone. */
	int (*write)(void *ctx, const char *p, size_t n);
	/* Hands over what was written before the process exits (response_fatal); may be NULL. */
	void (*finish)(void *ctx);
	void *ctx;
};

/*
 * Starts a new answer (serve calls it for every request): forgets queued
 * headers and the sent flag.  sink NULL means stdout; borrowed until the
 * next call.  head: send status and headers only (RFC 9110 9.3.2).
 */
void response_begin(const struct response_sink *sink, int head);

/* Queues a header for the response (name must be a literal/trusted token). */
void response_header(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Building bodies: an empty object, and adding a member (v is owned by o
 * afterwards; NULL adds JSON null).  Allocation failure ends the request
 * with a 500 (response_fatal), so neither returns an error.
 */
struct json_object *response_object(void) __attribute__((returns_nonnull));
void response_add(struct json_object *o, const char *key, struct json_object *v);

/* Writes status, queued headers and body as JSON; body is borrowed. */
void response_json(int status, struct json_object *body);

/* Writes a response with no body (e.g. 204 for a CORS preflight). */
void response_empty(int status);

/*
 * Writes a body that is not built with json-c: an HTML page, CSV, the
 * Prometheus text format, or JSON text the database produced (borrowed).  content_type is a literal, e.g.
 * "text/html; charset=utf-8".
 */
void response_body(int status, const char *content_type, const char *body, size_t len);

/*
 * {"error":{"code":...,"message":...}} with the outcome's status.
 * message NULL means the outcome's generic message.  Only pass messages
 * that are safe for clients (no SQL, secrets, paths).
 */
void response_error(enum outcome o, const char *message);

/*
 * A 400 that names what is wrong: "field":<field> inside "error" and the
 * message "<field> <why>." (why: a client-safe phrase such as "is
 * required").  field NULL is response_error(o, why).
 */
void response_error_field(enum outcome o, const char *field, const char *why);

/*
 * As response_error with the outcome's own message, merging the members
 * of extra (borrowed) beside "error".
 */
void response_error_extra(enum outcome o, struct json_object *extra);

/* Whether a response has been written. */
int response_sent(void);

/* The status of the response written (0 before one is): serve counts it. */
int response_status(void);

/* Emergency exit (out of memory): a fixed 500 if nothing was sent, then exit(1). */
void response_fatal(const char *why) __attribute__((noreturn));

#endif
