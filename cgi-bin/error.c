/*
 * The errors Apache answers by itself under /api/ (ErrorDocument): 404 for
 * a URL no program serves, 413 from LimitRequestBody, 403 from a Require,
 * 401 from Apache's own authentication, 500/503 when it cannot run a
 * program, and behind mod_proxy_fcgi 502/504 when a program's process
 * gave no valid answer or none within Apache's Timeout.  Without this
 * they are Apache's HTML pages without CORS headers, which a browser
 * client cannot even read.  Here they get the programs' own shape,
 * {"error":{"code","message"}}, with the same status and CORS headers.
 *
 * Apache runs this after an internal redirect: REDIRECT_STATUS is the
 * status it decided on (the method is then GET, the body mostly gone
 * though CONTENT_LENGTH stays: whatever comes is drained unjudged).
 * Asked directly, with no REDIRECT_STATUS, it answers 404.
 */
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "response.h"
#include "serve.h"

static const struct {
	const char *status;
	enum outcome outcome;
} apache_errors[] = {
	{ "400", OUT_BAD_REQUEST },
	{ "401", OUT_UNAUTHORIZED },
	{ "403", OUT_FORBIDDEN },
	{ "404", OUT_NOT_FOUND },
	{ "405", OUT_METHOD_NOT_ALLOWED },
	{ "411", OUT_LENGTH_REQUIRED },
	{ "413", OUT_PAYLOAD_TOO_LARGE },
	{ "500", OUT_INTERNAL },
	{ "502", OUT_BAD_GATEWAY },
	{ "503", OUT_UNAVAILABLE },
	{ "504", OUT_GATEWAY_TIMEOUT },
};

static void
apache_error(struct serve *srv, struct request *req)
{
	const char *status = request_env("REDIRECT_STATUS");
	size_t i;

	(void)srv;
	(void)req;
	for (i = 0; status != NULL && i < sizeof(apache_errors) / sizeof(apache_errors[0]); i++) {
		if (strcmp(status, apache_errors[i].status) == 0) {
			response_error(apache_errors[i].outcome, NULL);
			return;
		}
	}
	response_error(status != NULL ? OUT_INTERNAL : OUT_NOT_FOUND, NULL);
}

static const struct serve_endpoint endpoint = {
	.name = "error",
	.methods = "GET",
	.cors = 1,
	.ignores_body = 1,
	.handle = apache_error,
};

int
main(void)
{
	return serve_main(&endpoint);
}
