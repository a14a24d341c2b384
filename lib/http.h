/*
 * The only user of libcurl for HTTPS (smtp.c owns SMTP): one exchange
 * with TLS verification always on, connect and total timeouts, and a cap
 * on the response size.  Plain http:// is allowed only to loopback hosts
 * (the local fake Stripe).  Retries are the caller's policy (stripe module).
 */
#ifndef HTTP_H
#define HTTP_H

#include <stddef.h>

#include "buf.h"

enum http_method {
	HTTP_GET,
	HTTP_POST,
	HTTP_DELETE,
	HTTP__MAX
};

struct http_response {
	long status;		/* 0 when no response arrived */
	struct buf body;	/* capped at the caller's max_body */
	char *should_retry;	/* Stripe-Should-Retry value or NULL (owned) */
	char *retry_after;	/* Retry-After value or NULL (owned) */
	char *replayed;		/* Idempotent-Replayed value or NULL (owned) */
};

/* Whether url may be used: https://, or http:// to 127.0.0.1, ::1 or localhost. */
int http_url_allowed(const char *url);

/*
 * Whether a URL's host is loopback (127.0.0.1, ::1, localhost): the only
 * hosts any protocol, HTTP or SMTP, may speak to without TLS.
 */
int http_loopback_host(const char *host);

/*
 * libcurl's process-wide initialisation, once (smtp.c shares it): loads
 * libcurl if it is not loaded yet (see http.c).  0 or -1.
 */
int http_curl_init(void) __attribute__((warn_unused_result));

/*
 * Sends one request.  headers: NULL-terminated "Name: value" strings
 * (never logged).  Returns 0 when a complete response arrived (any
 * status), -1 on connect failure, timeout, reset or a response body
 * over max_body bytes (logged without URL query, headers or body).
 * *resp must be released with http_response_free in both cases.
 */
int http_request(enum http_method method, const char *url, const char *const *headers,
    const char *body, size_t len, long timeout_ms, size_t max_body, struct http_response *resp)
    __attribute__((warn_unused_result));

void http_response_free(struct http_response *resp);

#endif
