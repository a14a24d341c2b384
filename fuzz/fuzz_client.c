/*
 * libFuzzer target for the client address of per-address rate limits
 * (ratelimit_client_from): REMOTE_ADDR, the X-Forwarded-For header a
 * client controls, and TRUSTED_PROXIES.  The input is three lines:
 * REMOTE_ADDR, X-Forwarded-For, TRUSTED_PROXIES (a missing line is
 * unset; each is cut at a NUL, as the environment would).  Properties
 * checked, besides memory safety:
 *   - an answer is an IPv4 dotted quad or an IPv6 "/64" prefix, and fits
 *     the 64 bytes serve gives it;
 *   - X-Forwarded-For changes nothing unless REMOTE_ADDR is trusted: the
 *     answer is then the one without the header;
 *   - the answer does not depend on what a client puts to the left of
 *     the first untrusted entry it ended at (entries there are claims),
 *     checked by prepending an entry when the answer is not the leftmost.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next line of [*p, end) as a new string (cut at a NUL), or NULL at the end. */
static char *
next_line(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *nl;
	char *s;

	if (*p == NULL || *p > end)
		return NULL;
	nl = memchr(*p, '\n', (size_t)(end - *p));
	if ((s = strndup((const char *)*p, (size_t)((nl ? nl : end) - *p))) == NULL)
		abort();
	*p = nl ? nl + 1 : NULL;
	return s;
}

static int
well_formed(const char *a)
{
	unsigned char b[16];
	char text[64];
	const char *slash = strchr(a, '/');

	if (slash == NULL)
		return inet_pton(AF_INET, a, b) == 1;
	if (strcmp(slash, "/64") != 0 || (size_t)(slash - a) >= sizeof(text))
		return 0;
	memcpy(text, a, (size_t)(slash - a));
	text[slash - a] = '\0';
	return inet_pton(AF_INET6, text, b) == 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size;
	char *remote = next_line(&p, end), *xff = next_line(&p, end), *trusted = next_line(&p, end);
	char out[64], plain[64], again[64], *longer;
	int rc, rc_plain;

	rc = ratelimit_client_from(remote, xff, trusted, out, sizeof(out));
	rc_plain = ratelimit_client_from(remote, NULL, trusted, plain, sizeof(plain));
	if (rc != rc_plain || (rc != 0 && rc != -1))
		abort();
	if (rc == 0) {
		if (!well_formed(out) || !well_formed(plain))
			abort();
		/* Untrusted REMOTE_ADDR: the header is not believed. */
		if (ratelimit_client_from(remote, xff, NULL, again, sizeof(again)) != 0 ||
		    strcmp(again, plain) != 0)
			abort();
		/*
		 * A claim prepended: when the answer is neither REMOTE_ADDR nor
		 * taken from the leftmost entry, the walk stopped before reaching
		 * it, and it must still.
		 */
		if (xff != NULL && (longer = malloc(strlen(xff) + 32)) != NULL) {
			strcpy(longer, "203.0.113.250, ");
			strcat(longer, xff);
			if (ratelimit_client_from(remote, longer, trusted, again, sizeof(again)) != 0)
				abort();
			if (strcmp(again, out) != 0 && strcmp(again, "203.0.113.250") != 0)
				abort();
			free(longer);
		}
	}
	free(remote);
	free(xff);
	free(trusted);
	return 0;
}
