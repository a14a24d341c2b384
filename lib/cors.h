/*
 * CORS (Fetch standard): an Origin listed in CORS_ALLOWED_ORIGINS gets
 * the Access-Control-* response headers; others get none (the browser
 * then blocks the response).  Preflights never touch Stripe or the
 * database.
 */
#ifndef CORS_H
#define CORS_H

#include "request.h"

/*
 * Queues the CORS headers for an allowed Origin (exact match against
 * the CORS_ALLOWED_ORIGINS list; "Vary: Origin" whenever the list is
 * set).  Returns 1 when the request was an OPTIONS request and has been
 * answered (204 with Allow; for a preflight from an allowed Origin also
 * Access-Control-Allow-Methods/-Headers/-Max-Age), 0 when the endpoint
 * should go on.  methods: what the endpoint allows besides OPTIONS,
 * e.g. "GET, POST".  Call it before reading the body or authenticating.
 */
int cors_handle(const struct request *r, const char *methods);

#endif
