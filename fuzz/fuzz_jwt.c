/*
 * libFuzzer target for the JWT parser and verifier (auth_verify_jwt)
 * with a fixed HS256 secret and a fixed clock.  The first byte picks
 * what the rest is:
 *   even  the token as a client sends it (segments, base64url, the
 *         signature check; almost nothing gets past the MAC);
 *   odd   "<header JSON>\n<payload JSON>", which the target encodes and
 *         signs with the secret, so the header rules and every claim
 *         check behind the signature are reached.
 * Bit 1 of the first byte configures AUTH_JWT_ISSUER and
 * AUTH_JWT_AUDIENCE, so both aud rules (unset: any aud refused; set: it
 * must be listed) are reached.  A verified token must name a usable
 * user id and have a strictly valid payload; anything else aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "jsonget.h"

#define SECRET "fuzz-jwt-secret-0123456789abcdef0123456789"
#define NOW 1800000000

/* putenv() with static strings: setenv() in a loop would leak (glibc). */
static char issuer_var[] = "AUTH_JWT_ISSUER=https://auth.example.test";
static char audience_var[] = "AUTH_JWT_AUDIENCE=billing";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setenv("AUTH_JWT_SECRET", SECRET, 1);
	unsetenv("AUTH_JWT_PUBLIC_KEY_FILE");
	unsetenv("AUTH_JWT_ISSUER");
	unsetenv("AUTH_JWT_AUDIENCE");
	unsetenv("AUTH_JWT_LEEWAY");
	unsetenv("BILLING_CONFIG");
	return 0;
}

/* Unpadded base64url of in into out (room for n * 4 / 3 + 4); returns the length. */
static size_t
b64url(const uint8_t *in, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t i, k = 0;
	uint32_t v;

	for (i = 0; i + 2 < n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[k++] = a[v >> 18];
		out[k++] = a[(v >> 12) & 63];
		out[k++] = a[(v >> 6) & 63];
		out[k++] = a[v & 63];
	}
	if (n - i == 1) {
		v = (uint32_t)in[i] << 16;
		out[k++] = a[v >> 18];
		out[k++] = a[(v >> 12) & 63];
	} else if (n - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[k++] = a[v >> 18];
		out[k++] = a[(v >> 12) & 63];
		out[k++] = a[(v >> 6) & 63];
	}
	return k;
}

/* header.payload.signature for the two JSON texts, signed with SECRET (caller frees). */
static char *
signed_token(const uint8_t *h, size_t hn, const uint8_t *p, size_t pn, size_t *len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	char *t = malloc((hn + pn) * 4 / 3 + 128);
	size_t k;

	if (t == NULL)
		abort();
	k = b64url(h, hn, t);
	t[k++] = '.';
	k += b64url(p, pn, t + k);
	if (HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)t, k, mac,
		 &mac_len) == NULL)
		abort();
	t[k++] = '.';
	k += b64url(mac, mac_len, t + k);
	*len = k;
	return t;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = NULL, *payload = NULL;
	char *token, *subject = NULL;
	size_t len = 0, payload_len = 0;
	enum outcome o;

	if (size == 0)
		return 0;
	if (data[0] & 2) {
		putenv(issuer_var);
		putenv(audience_var);
	} else {
		unsetenv("AUTH_JWT_ISSUER");
		unsetenv("AUTH_JWT_AUDIENCE");
	}
	if (data[0] & 1) {
		if ((nl = memchr(data + 1, '\n', size - 1)) == NULL)
			return 0;
		payload = nl + 1;
		payload_len = size - (size_t)(payload - data);
		token = signed_token(data + 1, (size_t)(nl - data - 1), payload, payload_len, &len);
	} else {
		/* Exactly sized: ASan sees any read past the end. */
		len = size - 1;
		if ((token = malloc(len ? len : 1)) == NULL)
			abort();
		memcpy(token, data + 1, len);
	}
	o = auth_verify_jwt(token, len, NOW, AUTH_FOR_USERS, &subject);
	if (o == OUT_OK) {
		if (subject == NULL || !auth_user_id_valid(subject))
			abort();
		if (payload != NULL &&
		    jsonget_grade((const char *)payload, payload_len) != JSONGET_STRICT)
			abort();
	} else if (subject != NULL || (o != OUT_UNAUTHORIZED && o != OUT_MISCONFIGURED)) {
		abort();
	}
	free(subject);
	free(token);
	return 0;
}
