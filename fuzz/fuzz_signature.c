/*
 * libFuzzer target for the Stripe-Signature parser and verifier
 * (./configure --enable-fuzzing CC=clang).  The input is split at the
 * first newline: header bytes before it (not NUL-terminated: the copy
 * is exactly sized so ASan catches any read past the end), body after.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "webhook_sig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct webhook_sig_secret secrets[2] = {
		{ "whsec_test_secret", 17 },
		{ "whsec_other", 11 },
	};
	struct webhook_sig_header h;
	const uint8_t *nl = memchr(data, '\n', size);
	size_t hlen = nl ? (size_t)(nl - data) : size;
	char *header = malloc(hlen ? hlen : 1);
	enum webhook_sig_result r;

	if (header == NULL)
		return 0;
	memcpy(header, data, hlen);
	r = webhook_sig_parse(header, hlen, &h);
	if (r == WHSIG_VALID && (h.t < header || h.t + h.t_len > header + hlen ||
	    h.v1_hex_count > h.v1_count))
		abort();
	r = webhook_sig_verify(header, hlen, nl ? (const char *)nl + 1 : "",
	    nl ? size - hlen - 1 : 0, secrets, 2, 1795510805, 300, &h);
	(void)webhook_sig_outcome(r, &h);
	free(header);
	return 0;
}
