/*
 * digest: SHA-256 against FIPS 180-4's examples, HMAC-SHA256 against
 * RFC 4231's test cases, and both against OpenSSL's HMAC() and EVP for
 * every key length up to twice the block size and messages in parts.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "digest.h"
#include "tap.h"

static void
hex(const unsigned char *p, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static void
check_sha256(const char *msg, size_t len, const char *want, const char *name)
{
	unsigned char md[DIGEST_SHA256_LEN];
	char got[2 * DIGEST_SHA256_LEN + 1];

	digest_sha256(msg, len, md);
	hex(md, sizeof(md), got);
	is_str(got, want, "SHA-256 %s", name);
}

static void
check_hmac(const unsigned char *key, size_t key_len, const char *msg, size_t len,
    const char *want, const char *name)
{
	const struct digest_part part = { msg, len };
	unsigned char md[DIGEST_SHA256_LEN];
	char got[2 * DIGEST_SHA256_LEN + 1];

	digest_hmac_sha256(key, key_len, &part, 1, md);
	hex(md, sizeof(md), got);
	is_str(got, want, "HMAC-SHA256 RFC 4231 %s", name);
}

int
main(void)
{
	unsigned char key[200], md[DIGEST_SHA256_LEN], ref[EVP_MAX_MD_SIZE];
	char msg[300], as[1000];
	struct digest_part parts[3];
	unsigned int ref_len;
	size_t k, cut, bad = 0, i;

	/* FIPS 180-4 examples (csrc.nist.gov, SHA256.pdf and SHA2_Additional). */
	check_sha256("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "of nothing");
	check_sha256("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "of abc");
	check_sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
	    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", "of the 448-bit message");

	/* RFC 4231 section 4: cases 1-4, 6 and 7 (5 truncates the output). */
	memset(key, 0x0b, 20);
	check_hmac(key, 20, "Hi There", 8,
	    "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", "case 1");
	check_hmac((const unsigned char *)"Jefe", 4, "what do ya want for nothing?", 28,
	    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "case 2");
	memset(key, 0xaa, 20);
	memset(msg, 0xdd, 50);
	check_hmac(key, 20, msg, 50,
	    "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", "case 3");
	for (i = 0; i < 25; i++)
		key[i] = (unsigned char)(i + 1);
	memset(msg, 0xcd, 50);
	check_hmac(key, 25, msg, 50,
	    "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b", "case 4");
	memset(key, 0xaa, 131);
	check_hmac(key, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
	    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
	    "case 6 (key longer than a block)");
	check_hmac(key, 131,
	    "This is a test using a larger than block-size key and a larger than block-size data."
	    " The key needs to be hashed before being used by the HMAC algorithm.", 152,
	    "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", "case 7");

	/* Against HMAC(): every key length from 0 to 130; a 150-byte message cut in three. */
	for (i = 0; i < sizeof(key); i++)
		key[i] = (unsigned char)(i * 7 + 3);
	for (i = 0; i < sizeof(msg); i++)
		msg[i] = (char)(i * 13 + 1);
	for (k = 0; k <= 130; k++) {
		parts[0].p = msg;
		parts[0].len = 150;
		digest_hmac_sha256(key, k, parts, 1, md);
		HMAC(EVP_sha256(), key, (int)k, (const unsigned char *)msg, 150, ref, &ref_len);
		bad += ref_len != sizeof(md) || memcmp(md, ref, sizeof(md)) != 0;
	}
	is_int(bad, 0, "HMAC equals OpenSSL's HMAC() for key lengths 0 to 130");
	bad = 0;
	for (cut = 0; cut <= 150; cut++) {
		parts[0].p = msg;
		parts[0].len = cut / 2;
		parts[1].p = msg + cut / 2;
		parts[1].len = cut - cut / 2;
		parts[2].p = msg + cut;
		parts[2].len = 150 - cut;
		digest_hmac_sha256(key, 32, parts, 3, md);
		HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, 150, ref, &ref_len);
		bad += memcmp(md, ref, sizeof(md)) != 0;
	}
	is_int(bad, 0, "a message in three parts, cut at 151 places, gives the HMAC of the whole");
	parts[0].p = msg;
	parts[0].len = 70;
	parts[1].p = NULL;
	parts[1].len = 0;
	parts[2].p = msg + 70;
	parts[2].len = 80;
	digest_hmac_sha256(key, 32, parts, 3, md);
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, 150, ref, &ref_len);
	ok(memcmp(md, ref, sizeof(md)) == 0, "an empty NULL part in the middle adds nothing");
	digest_hmac_sha256(key, 32, NULL, 0, md);
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)"", 0, ref, &ref_len);
	ok(memcmp(md, ref, sizeof(md)) == 0, "no parts: the HMAC of the empty message");
	bad = 0;
	memset(as, 'a', sizeof(as));
	for (k = 0; k <= sizeof(as); k += 37) {
		digest_sha256(as, k, md);
		EVP_Digest(as, k, ref, &ref_len, EVP_sha256(), NULL);
		bad += memcmp(md, ref, sizeof(md)) != 0;
	}
	is_int(bad, 0, "SHA-256 equals EVP's for lengths 0 to 999");
	return done_testing();
}
