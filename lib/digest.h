/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the signatures
 * and secret comparisons of a request: Stripe-Signature, HS256 tokens,
 * API keys, form tokens.
 *
 * Built on OpenSSL's SHA-256 block functions rather than EVP: the first
 * EVP digest or MAC of a process loads openssl.cnf and fetches the
 * default provider, about 1 ms, more than the rest of a plain-CGI
 * webhook's own work.  These functions need no initialisation, cannot
 * fail, and use the same assembly (SHA-NI, AVX2) as EVP.  Asymmetric
 * signatures (RS256, ES256) still go through EVP in auth.
 *
 * Being below EVP, these MACs are not subject to openssl.cnf's
 * algorithm policy or to the FIPS provider: a deployment that must use
 * FIPS-validated HMAC cannot use this module as it is.
 *
 * Callers own every buffer; key material is used in place and the
 * copies these functions make are wiped with OPENSSL_cleanse.  out may
 * be the key's or a part's buffer.
 */
#ifndef DIGEST_H
#define DIGEST_H

#include <stddef.h>

#define DIGEST_SHA256_LEN 32

/* One piece of a message given in parts (HMAC of t "." body, say). */
struct digest_part {
	const void *p;
	size_t len;
};

/* out = SHA-256(p[0..len)); p may be NULL when len is 0. */
void digest_sha256(const void *p, size_t len, unsigned char out[DIGEST_SHA256_LEN]);

/*
 * out = HMAC-SHA256(key, parts[0] || ... || parts[nparts - 1]), for a
 * key of any length.  An empty key gives a MAC anyone can compute: the
 * caller refuses empty and short secrets.  parts may be NULL when
 * nparts is 0, a part's p NULL when its len is 0, key NULL when key_len
 * is 0.
 */
void digest_hmac_sha256(const void *key, size_t key_len, const struct digest_part *parts,
			size_t nparts, unsigned char out[DIGEST_SHA256_LEN]);

#endif
