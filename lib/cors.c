#include <string.h>

#include "config.h"
#include "cors.h"
#include "limits.h"
#include "response.h"

/* What a browser may send us cross-origin besides the CORS-safelisted headers. */
#define CORS_ALLOW_HEADERS "Authorization, Content-Type, Idempotency-Key"

/* Whether origin is listed exactly (scheme, host and port, as the browser sends it). */
static int
origin_allowed(const char *origin)
{
	size_t n;

	if (origin == NULL || *origin == '\0' || strcmp(origin, "null") == 0)
		return 0;
	n = strlen(origin);
	if (n > LIMIT_HEADER_VALUE)
		return 0;
	return config_list_contains("CORS_ALLOWED_ORIGINS", origin, n, 0);
}

int
cors_handle(const struct request *r, const char *methods)
{
	const char *origin = request_header("Origin");
	int allowed = origin_allowed(origin);
	int preflight = strcmp(r->method, "OPTIONS") == 0;

	/*
	 * The answer depends on Origin whenever CORS is configured, so caches
	 * must key on it (Fetch standard, "CORS protocol and HTTP caches").
	 */
	if (config_get("CORS_ALLOWED_ORIGINS") != NULL)
		response_header("Vary", "Origin");
	if (allowed) {
		response_header("Access-Control-Allow-Origin", "%s", origin);
		if (!preflight)
			response_header("Access-Control-Expose-Headers", "X-Request-Id");
	}
	if (!preflight)
		return 0;
	/*
	 * Any OPTIONS is answered here, preflight or not (RFC 9110 9.3.7):
	 * no database, no Stripe, no body read.
	 */
	response_header("Allow", "%s, OPTIONS", methods);
	if (allowed && request_header("Access-Control-Request-Method") != NULL) {
		response_header("Access-Control-Allow-Methods", "%s, OPTIONS", methods);
		response_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
		response_header("Access-Control-Max-Age", "%d", LIMIT_CORS_MAX_AGE_S);
	}
	response_empty(204);
	return 1;
}
