/*
 * libFuzzer target for the JSON bodies of the browser-facing POSTs: the
 * body (exactly sized) through jsonget_parse, then checkout_parse
 * (create-checkout-session), portal_parse (portal-session) and
 * selfservice_parse (subscription), with ALLOWED_REDIRECT_HOSTS set.
 * Properties checked, besides memory safety:
 *   - every return URL accepted points, as a browser reads it (scheme,
 *     then the authority up to the first "/", "?" or "#", the port after
 *     the last ":" outside brackets), at a host and port the list allows,
 *     with no user information; this is read here independently of
 *     checkout_redirect_problem;
 *   - an accepted email has one "@" and no blank;
 *   - an accepted portal flow and self-service action are in range, and a
 *     change or preview has a tier and an interval.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "checkout.h"
#include "jsonget.h"
#include "portal.h"
#include "selfservice.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The list, and the same as (host, port) pairs; port 0: the scheme's default. */
#define ALLOWED "app.example.com, localhost:8443, [::1]:3000 ,Shop.Example.org:443"
static const struct {
	const char *host;
	long port;
} allowed[] = {
	{ "app.example.com", 0 },
	{ "localhost", 8443 },
	{ "[::1]", 3000 },
	{ "shop.example.org", 443 },
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setenv("ALLOWED_REDIRECT_HOSTS", ALLOWED, 1);
	unsetenv("BILLING_CONFIG");
	unsetenv("STRIPE_PRORATION_CHOICES");
	unsetenv("STRIPE_PRORATION_BEHAVIOR");
	return 0;
}

/* Whether url, read as a browser would, goes to an allowed origin. */
static int
goes_to_allowed(const char *url)
{
	const char *rest, *auth_end, *host_end, *p;
	long port = 0, def;
	size_t i, hn;

	for (p = url; *p != '\0'; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '\\')
			return 0;
	if (strncasecmp(url, "https://", 8) == 0) {
		rest = url + 8;
		def = 443;
	} else if (strncasecmp(url, "http://", 7) == 0) {
		rest = url + 7;
		def = 80;
	} else
		return 0;
	auth_end = rest + strcspn(rest, "/?#");
	for (p = rest; p < auth_end; p++)
		if (*p == '@')
			return 0;
	/* The port: after the last ':' that is not inside brackets. */
	host_end = auth_end;
	for (p = auth_end; p > rest; p--)
		if (p[-1] == ':' || p[-1] == ']')
			break;
	if (p > rest && p[-1] == ':') {
		host_end = p - 1;
		if (p == auth_end)
			return 0;
		for (; p < auth_end; p++) {
			if (*p < '0' || *p > '9' || port > 65535)
				return 0;
			port = port * 10 + (*p - '0');
		}
	}
	if (port == 0)
		port = def;
	hn = (size_t)(host_end - rest);
	for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		if (strlen(allowed[i].host) == hn && strncasecmp(allowed[i].host, rest, hn) == 0 &&
		    (allowed[i].port ? allowed[i].port : def) == port)
			return 1;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *body = NULL;
	struct checkout_order order;
	struct portal_request preq;
	struct selfservice_request sreq;
	const char *field = NULL, *why = NULL;
	char *copy = malloc(size ? size : 1);

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	if (jsonget_parse(copy, size, &body) != OUT_OK)
		goto out;

	if (checkout_parse(body, &order, &field, &why) == OUT_OK) {
		if (order.user_id == NULL || !goes_to_allowed(order.success_url) ||
		    !goes_to_allowed(order.cancel_url))
			abort();
		if (order.email != NULL && (strchr(order.email, '@') == NULL ||
		    strchr(strchr(order.email, '@') + 1, '@') != NULL ||
		    strpbrk(order.email, " \t\r\n") != NULL))
			abort();
	} else if (field == NULL || why == NULL) {
		abort();
	}

	field = why = NULL;
	if (portal_parse(body, &preq, &field, &why) == OUT_OK) {
		if (preq.user_id == NULL || (unsigned)preq.flow >= PORTAL_FLOW__MAX ||
		    !goes_to_allowed(preq.return_url))
			abort();
	} else if (field == NULL || why == NULL) {
		abort();
	}

	field = why = NULL;
	if (selfservice_parse(body, &sreq, &field, &why) == OUT_OK) {
		if (sreq.user_id == NULL || (unsigned)sreq.action >= SS__MAX)
			abort();
		if ((sreq.action == SS_CHANGE || sreq.action == SS_PREVIEW) &&
		    (jsonget_str(body, "tier") == NULL || jsonget_str(body, "interval") == NULL))
			abort();
	}
out:
	json_object_put(body);
	free(copy);
	return 0;
}
