/*
 * The runner: each endpoint is one handler, and the same binary serves it
 *   - as plain CGI (RFC 3875): one request from the environment and stdin,
 *     the answer on stdout, then exit; or
 *   - as a FastCGI responder, when a process manager (mod_fcgid, or
 *     spawn-fcgi behind mod_proxy_fcgi) started it with a listening socket
 *     on fd 0, detected as libfcgi does (FCGX_IsCGI): requests are served
 *     in a loop until the manager stops the process.
 *
 * For every request serve binds the request's variables, reads or drains
 * its body (always before answering: see request_take_body), loads the
 * settings, answers CORS preflights and wrong methods, calls the handler,
 * and makes sure exactly one answer goes out.  Between requests a FastCGI
 * process keeps only what struct serve holds (the settings file, one
 * database connection) and, inside their modules, libcurl's handle and
 * OpenSSL's HMAC; response, log and request state is reset per request.
 * Only this module calls libfcgi.
 */
#ifndef SERVE_H
#define SERVE_H

#include "auth.h"
#include "db.h"
#include "outcome.h"
#include "ratelimit.h"
#include "request.h"

struct serve;

/* A handler answers through response_*; serve answers 500 if it does not. */
typedef void serve_handler(struct serve *srv, struct request *req);

struct serve_endpoint {
	const char *name;	/* in log lines and metrics: "webhook" */
	const char *methods;	/* what handle serves: "POST", "GET, POST"; HEAD follows GET */
	int cors;		/* browsers call it: CORS headers, OPTIONS preflights */
	/*
	 * Answers without a body: what comes is taken off the wire and
	 * discarded unjudged (error.cgi: Apache's error documents keep the
	 * original request's CONTENT_LENGTH, mostly without its body).
	 */
	int ignores_body;
	serve_handler *handle;
	/*
	 * Rate limits, e.g. { "CHECKOUT", "10/60s", "60/60s" }: settings
	 * RATE_LIMIT_CHECKOUT (per caller, default "10/60s") and
	 * RATE_LIMIT_CHECKOUT_IP (per client address, default "60/60s").
	 * serve checks the address before the handler runs; the handler
	 * calls serve_limit_caller once it knows the caller.  Unset: none.
	 */
	struct ratelimit_decl rate_limit;
};

/*
 * Serves ep as CGI or FastCGI (see above) and returns main()'s exit
 * status: 0, or 1 when the FastCGI loop could not start.
 */
int serve_main(const struct serve_endpoint *ep);

/*
 * The database connection for the current request: connected on first
 * use, kept for later requests under FastCGI (checked before use and
 * replaced when broken; a transaction left open is rolled back after the
 * request).  OUT_OK and *db, owned by serve: never close it.  Otherwise
 * OUT_UNAVAILABLE or OUT_MISCONFIGURED and *db NULL.
 */
enum outcome serve_db(struct serve *srv, struct db **db) __attribute__((warn_unused_result));

/*
 * The per-caller rate limit of the endpoint (its rate_limit declaration),
 * for a handler to call as soon as the caller is authenticated and
 * before any other work, outside a transaction.  The caller is its user
 * id (REMOTE_USER or JWT; the same user either way) or, for the API key,
 * the key.  OUT_OK (RateLimit headers queued when the limit is on),
 * OUT_RATE_LIMITED (answer it with response_error: the 429 and its
 * headers are ready; do nothing else), or OUT_MISCONFIGURED for a
 * malformed setting.  The database being down lets the request through.
 */
enum outcome serve_limit_caller(struct serve *srv, const struct auth_caller *caller)
    __attribute__((warn_unused_result));

#endif
