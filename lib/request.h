/*
 * The incoming request as CGI presents it (RFC 3875): meta-variables in
 * the environment, the body on stdin.  Nothing here writes a response:
 * each function returns an outcome and the endpoint answers with it.
 */
#ifndef REQUEST_H
#define REQUEST_H

#include <stddef.h>

#include "outcome.h"

struct request {
	const char *method;	/* REQUEST_METHOD, "" when absent */
	const char *query;	/* QUERY_STRING, "" when absent */
	char *body;		/* exactly body_len bytes + a NUL; NULL before request_read_body */
	size_t body_len;
};

/* Fills r from the environment (RFC 3875 4.1); no allocation. */
void request_init(struct request *r);

/* Frees the body. */
void request_free(struct request *r);

/*
 * OUT_OK when r->method is one of the comma-separated methods in allow
 * (e.g. "GET, POST, OPTIONS"); otherwise sets the Allow response header
 * and returns OUT_METHOD_NOT_ALLOWED (RFC 9110 15.5.6).
 */
enum outcome request_check_method(const struct request *r, const char *allow)
    __attribute__((warn_unused_result));

/*
 * OUT_OK when CONTENT_TYPE's media type is application/json (parameters
 * such as charset are allowed), else OUT_UNSUPPORTED_MEDIA.
 */
enum outcome request_require_json(const struct request *r)
    __attribute__((warn_unused_result));

/*
 * Reads the body: CONTENT_LENGTH must be plain digits (RFC 3875 4.1.2),
 * at most max bytes (checked before reading anything), and exactly that
 * many bytes must arrive on stdin.  Missing length: OUT_LENGTH_REQUIRED;
 * malformed: OUT_BAD_REQUEST; too big: OUT_PAYLOAD_TOO_LARGE; short
 * read: OUT_BAD_REQUEST.  A zero length gives an empty body.
 */
enum outcome request_read_body(struct request *r, size_t max)
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
 * Looks up name in the query string.  Returns 1 and sets *value (a
 * decoded copy the caller frees) when present exactly once, 0 when
 * absent, -1 when malformed, repeated, or containing control bytes.
 */
int request_query_param(const struct request *r, const char *name, char **value)
    __attribute__((warn_unused_result));

#endif
