/*
 * The incoming request as CGI presents it (RFC 3875): meta-variables and
 * a body.  In plain CGI the variables are the process environment and the
 * body is stdin; under FastCGI they are the request's params and FCGI_STDIN
 * stream.  The runner (serve) binds them at the start of each request and
 * reads the body before any handler runs, so nothing here knows which.
 * Nothing here writes a response: each function returns an outcome and
 * the endpoint answers with it.
 */
#ifndef REQUEST_H
#define REQUEST_H

#include <stddef.h>
#include <sys/types.h>

#include "outcome.h"

struct request {
	const char *method;	/* REQUEST_METHOD ("GET" for HEAD), "" when absent */
	const char *query;	/* QUERY_STRING, "" when absent */
	char *body;		/* body_len bytes + a NUL; NULL unless body_outcome is OUT_OK */
	size_t body_len;
	enum outcome body_outcome; /* how reading the body went: see request_body() */
};

/*
 * Reads at most n bytes of the request body into p: the count, 0 at its
 * end, -1 on error or when the reader's time budget ran out.
 */
typedef ssize_t request_reader(void *ctx, char *p, size_t n);

/*
 * Binds the meta-variables of the request about to be served: vars is a
 * NULL-terminated array of NAME=VALUE strings (FastCGI params), or NULL
 * for the process environment (plain CGI).  Borrowed until the next call;
 * serve calls request_bind(NULL) once a request is over.
 */
void request_bind(char **vars);

/* A meta-variable of the current request (RFC 3875 4.1), or NULL. */
const char *request_env(const char *name);

/* Fills r from the bound variables; no allocation. */
void request_init(struct request *r);

/* Frees the body. */
void request_free(struct request *r);

/*
 * Consumes the request body from read, whatever comes next (serve calls it
 * before the handler: an early answer must not leave a body unread, or
 * mod_cgid loses the answer while writing the rest into the program).
 * CONTENT_LENGTH must be plain digits (RFC 3875 4.1.2) and at most max
 * for the body to be kept; a larger one is read and discarded, within
 * LIMIT_DRAIN_BYTES and the reader's time budget.  A chunked body (no
 * CONTENT_LENGTH, Transfer-Encoding present) is read to its end.  Sets
 * r->body_outcome; see request_body().
 */
void request_take_body(struct request *r, size_t max, request_reader *read, void *ctx);

/*
 * Takes whatever body comes off the wire (as request_take_body would, up
 * to LIMIT_DRAIN_BYTES) and discards it without a word: for a program
 * whose answer never depends on a body.  r->body_outcome stays
 * OUT_LENGTH_REQUIRED.
 */
void request_drain_body(request_reader *read, void *ctx);

/*
 * What a handler that needs a body gets: OUT_OK with r->body and
 * r->body_len; OUT_LENGTH_REQUIRED without CONTENT_LENGTH;
 * OUT_PAYLOAD_TOO_LARGE over the cap; OUT_BAD_REQUEST for a malformed
 * CONTENT_LENGTH or a body shorter than announced.
 */
enum outcome request_body(const struct request *r) __attribute__((warn_unused_result));

/*
 * OUT_OK when r->method is one of the comma-separated methods in allow
 * (e.g. "GET, POST, OPTIONS"); otherwise sets the Allow response header
 * and returns OUT_METHOD_NOT_ALLOWED (RFC 9110 15.5.6).
 */
enum outcome request_check_method(const struct request *r, const char *allow)
    __attribute__((warn_unused_result));

/* Whether method is one of the comma-separated methods in list. */
int request_method_in(const char *method, const char *list);

/*
 * OUT_OK when CONTENT_TYPE's media type is application/json (parameters
 * such as charset are allowed), else OUT_UNSUPPORTED_MEDIA.
 */
enum outcome request_require_json(const struct request *r)
    __attribute__((warn_unused_result));

/* The body cap in force: BILLING_MAX_BODY or LIMIT_BODY_DEFAULT (OUT_MISCONFIGURED if invalid). */
enum outcome request_body_cap(size_t *max) __attribute__((warn_unused_result));

/*
 * A request header by its HTTP name ("Stripe-Signature" reads
 * HTTP_STRIPE_SIGNATURE), or NULL.  Values longer than
 * LIMIT_HEADER_VALUE are treated as absent by callers that check.
 */
const char *request_header(const char *name);

/*
 * The client's Idempotency-Key header, one rule for every endpoint that
 * takes it: absent (*key NULL) is fine; else 1..LIMIT_IDEMPOTENCY_KEY_LEN
 * characters in 0x20..0x7e.  OUT_OK and *key (the environment's, not a
 * copy), or OUT_INVALID_FIELD with *field and *why for the answer.
 */
enum outcome request_idempotency_key(const char **key, const char **field, const char **why)
    __attribute__((warn_unused_result));

/* The rule above on one value (for tests). */
int request_idempotency_key_valid(const char *key);

/*
 * Looks up name in the query string.  Returns 1 and sets *value (a
 * decoded copy the caller frees) when present exactly once, 0 when
 * absent, -1 when malformed, repeated, or containing control bytes.
 */
int request_query_param(const struct request *r, const char *name, char **value)
    __attribute__((warn_unused_result));

/*
 * As request_query_param, for a form POSTed as
 * application/x-www-form-urlencoded (HTML 4.01 17.13.4): -1 also when the
 * body is missing, is of another type or exceeds LIMIT_FORM_BODY_IN.
 */
int request_form_param(const struct request *r, const char *name, char **value)
    __attribute__((warn_unused_result));

#endif
