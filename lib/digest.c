/*
 * OpenSSL 3 marks the SHA256_* functions deprecated in favour of EVP;
 * they remain in libcrypto 3.x.  EVP's first use per process is the
 * cost this module avoids (see digest.h), so they are used here, and
 * only here.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "digest.h"

#define BLOCK 64 /* SHA-256's block size, HMAC's B (RFC 2104 section 2) */

void
digest_sha256(const void *p, size_t len, unsigned char out[DIGEST_SHA256_LEN])
{
	SHA256_CTX ctx;

	SHA256_Init(&ctx);
	SHA256_Update(&ctx, p, len);
	SHA256_Final(out, &ctx);
	OPENSSL_cleanse(&ctx, sizeof(ctx));
}

void
digest_hmac_sha256(const void *key, size_t key_len, const struct digest_part *parts, size_t nparts,
		   unsigned char out[DIGEST_SHA256_LEN])
{
	unsigned char k[BLOCK], pad[BLOCK], inner[DIGEST_SHA256_LEN];
	SHA256_CTX ctx;
	size_t i;

	/* RFC 2104: a key longer than a block is hashed first; K is zero-padded. */
	memset(k, 0, sizeof(k));
	if (key_len > BLOCK)
		digest_sha256(key, key_len, k);
	else if (key_len > 0)
		memcpy(k, key, key_len);

	for (i = 0; i < BLOCK; i++)
		pad[i] = k[i] ^ 0x36;
	SHA256_Init(&ctx);
	SHA256_Update(&ctx, pad, BLOCK);
	for (i = 0; i < nparts; i++)
		if (parts[i].len > 0)
			SHA256_Update(&ctx, parts[i].p, parts[i].len);
	SHA256_Final(inner, &ctx);

	for (i = 0; i < BLOCK; i++)
		pad[i] = k[i] ^ 0x5c;
	SHA256_Init(&ctx);
	SHA256_Update(&ctx, pad, BLOCK);
	SHA256_Update(&ctx, inner, sizeof(inner));
	SHA256_Final(out, &ctx);

	OPENSSL_cleanse(k, sizeof(k));
	OPENSSL_cleanse(pad, sizeof(pad));
	OPENSSL_cleanse(inner, sizeof(inner));
	OPENSSL_cleanse(&ctx, sizeof(ctx));
}
