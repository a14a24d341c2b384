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
 * Queues the CORS headers for an allowed Origin.  Returns 1 when the
 * request was an OPTIONS preflight and has been answered (204), 0 when
 * the endpoint should go on.  methods: what the endpoint allows, e.g.
 * "GET, POST".
 */
int cors_handle(const struct request *r, const char *methods);

#endif
