/*
 * auth: JWT verification (HS256, RS256, ES256) and caller identification.
 * Keys are generated at run time; tokens are signed here with OpenSSL.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth.h"
#include "limits.h"
#include "tap.h"

#define SECRET "jwt-test-secret-0123456789abcdef0123456789"
#define NOW 1800000000L

static char rsa_file[] = "/tmp/test-auth-rsa-XXXXXX";
static char ec_file[] = "/tmp/test-auth-ec-XXXXXX";
static char small_rsa_file[] = "/tmp/test-auth-rsa1024-XXXXXX";
static char ed_file[] = "/tmp/test-auth-ed-XXXXXX";
static char junk_file[] = "/tmp/test-auth-junk-XXXXXX";
static EVP_PKEY *rsa, *ec;
static char rsa_pem[4096];

static void
b64url(const unsigned char *in, size_t n, char *out)
{
	size_t i, len;

	len = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	while (len > 0 && out[len - 1] == '=')
		len--;
	out[len] = '\0';
	for (i = 0; i < len; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

/* "<b64url(header)>.<b64url(payload)>" into out. */
static void
signing_input(const char *header, const char *payload, char *out)
{
	char h[2048], p[4096];

	b64url((const unsigned char *)header, strlen(header), h);
	b64url((const unsigned char *)payload, strlen(payload), p);
	sprintf(out, "%s.%s", h, p);
}

static void
append_sig(char *token, const unsigned char *sig, size_t n)
{
	char s[1024];

	b64url(sig, n, s);
	strcat(token, ".");
	strcat(token, s);
}

static char *
hs256(const char *header, const char *payload, const char *key, size_t keylen)
{
	static char token[8192];
	unsigned char mac[32];
	unsigned int n = 0;

	signing_input(header, payload, token);
	HMAC(EVP_sha256(), key, (int)keylen, (unsigned char *)token, strlen(token), mac, &n);
	append_sig(token, mac, n);
	return token;
}

/* RS256 or ES256 (raw r||s unless der is set). */
static char *
asym(EVP_PKEY *key, const char *header, const char *payload, int der)
{
	static char token[8192];
	unsigned char sig[1024], raw[64];
	size_t n = sizeof(sig);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	signing_input(header, payload, token);
	EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key);
	EVP_DigestSign(ctx, sig, &n, (unsigned char *)token, strlen(token));
	EVP_MD_CTX_free(ctx);
	if (EVP_PKEY_is_a(key, "EC") && !der) {
		const unsigned char *p = sig;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);

		BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
		BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
		ECDSA_SIG_free(es);
		append_sig(token, raw, 64);
	} else {
		append_sig(token, sig, n);
	}
	return token;
}

static void
write_pub(EVP_PKEY *key, char *path)
{
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");

	PEM_write_PUBKEY(f, key);
	fclose(f);
}

/* Whom verify() checks tokens for; the operator tests switch it. */
static enum auth_audience meant_for = AUTH_FOR_USERS;

static enum outcome
verify(const char *token, char **sub)
{
	*sub = NULL;
	return auth_verify_jwt(token, strlen(token), NOW, meant_for, sub);
}

/* Verifies and checks the outcome (and the subject when OUT_OK). */
static void
expect(const char *token, enum outcome want, const char *want_sub, const char *name)
{
	char *sub = NULL;
	enum outcome got = verify(token, &sub);

	if (want == OUT_OK)
		ok(got == OUT_OK && sub && strcmp(sub, want_sub) == 0, "%s", name);
	else
		ok(got == want && sub == NULL, "%s", name);
	if (got != want)
		printf("#   got outcome %d, want %d\n", got, want);
	free(sub);
}

static void
reject(const char *token, enum outcome want, const char *name)
{
	expect(token, want, NULL, name);
}

static const char *
claims(const char *extra)
{
	static char buf[4096];

	snprintf(buf, sizeof(buf), "{\"sub\":\"user-42\",\"exp\":%ld%s}", NOW + 600, extra);
	return buf;
}

static void
only_secret(void)
{
	setenv("AUTH_JWT_SECRET", SECRET, 1);
	unsetenv("AUTH_JWT_PUBLIC_KEY_FILE");
}

static void
only_key(const char *file)
{
	unsetenv("AUTH_JWT_SECRET");
	setenv("AUTH_JWT_PUBLIC_KEY_FILE", file, 1);
}

static const char *HS = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
static const char *RS = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
static const char *ES = "{\"alg\":\"ES256\",\"typ\":\"JWT\"}";

/* exp/nbf/iat: JSON integers from 0 to the end of year 9999, nothing else. */
static void
time_claims(void)
{
	static const char *const bad_exp[] = {
	    "1e300", "1e10", "1800000600.0", "99999999999999999999", "9223372036854775807",
	    "18446744073709551615", "253402300800", "-1", "\"1800000600\"", "true", "[1800000600]",
	};
	char payload[256], name[64];
	size_t i;

	for (i = 0; i < sizeof(bad_exp) / sizeof(bad_exp[0]); i++) {
		snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%s}", bad_exp[i]);
		snprintf(name, sizeof(name), "exp %s refused", bad_exp[i]);
		reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, name);
		snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld,\"nbf\":%s}",
			 NOW + 600, bad_exp[i]);
		snprintf(name, sizeof(name), "nbf %s refused", bad_exp[i]);
		reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, name);
		snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld,\"iat\":%s}",
			 NOW + 600, bad_exp[i]);
		snprintf(name, sizeof(name), "iat %s refused", bad_exp[i]);
		reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, name);
	}
	expect(hs256(HS, "{\"sub\":\"u\",\"exp\":253402300799}", SECRET, strlen(SECRET)), OUT_OK,
	       "u", "exp at the end of year 9999 accepted");
	expect(hs256(HS, claims(",\"nbf\":0,\"iat\":0"), SECRET, strlen(SECRET)), OUT_OK, "user-42",
	       "nbf and iat of 0 accepted");
}

/* Payloads (exp is NOW + 60) whose sub must be refused. */
static const struct {
	const char *payload, *name;
} bad_subs[] = {
    {"{\"sub\":42,\"exp\":1800000060}", "numeric sub refused"},
    {"{\"exp\":1800000060}", "no sub"},
    {"{\"sub\":\"\",\"exp\":1800000060}", "empty sub"},
    {"{\"sub\":\"user_a\\u0000x\",\"exp\":1800000060}", "sub with an embedded NUL refused (not user_a)"},
    {"{\"sub\":\"user_a\\ud800\",\"exp\":1800000060}", "sub with a lone surrogate refused"},
    {"{\"sub\":\"u\",\"exp\":1800000060,\"x\":NaN}", "payload with NaN is not JSON"},
    {"{\"sub\":\"a\\nb\",\"exp\":1800000060}", "sub with a control character"},
};

static void
test_hs256(void)
{
	char tok[8192], *p;
	char payload[512];
	size_t i;

	only_secret();
	expect(hs256(HS, claims(""), SECRET, strlen(SECRET)), OUT_OK, "user-42", "HS256 valid");
	reject(hs256(HS, claims(""), "another-secret-0123456789abcdef0123456789", 41),
	       OUT_UNAUTHORIZED, "HS256 wrong secret");
	expect(hs256("{\"alg\":\"HS256\"}", claims(""), SECRET, strlen(SECRET)), OUT_OK, "user-42",
	       "no typ is fine");

	/* Tamper with the payload after signing. */
	strcpy(tok, hs256(HS, claims(""), SECRET, strlen(SECRET)));
	p = strchr(tok, '.') + 1;
	*p = *p == 'e' ? 'f' : 'e';
	reject(tok, OUT_UNAUTHORIZED, "tampered payload");

	/* alg none: no signature, or the HS256 signature kept. */
	signing_input("{\"alg\":\"none\"}", claims(""), tok);
	strcat(tok, ".");
	reject(tok, OUT_UNAUTHORIZED, "alg none, empty signature");
	strcpy(tok, hs256("{\"alg\":\"none\"}", claims(""), SECRET, strlen(SECRET)));
	reject(tok, OUT_UNAUTHORIZED, "alg none with a signature");
	reject(hs256("{\"alg\":\"hs256\"}", claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "alg is case-sensitive");
	reject(hs256("{\"alg\":\"HS512\"}", claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "HS512 not accepted");
	reject(hs256("{\"typ\":\"JWT\"}", claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "no alg");
	reject(hs256("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", claims(""), SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "crit header refused");
	reject(hs256("[\"HS256\"]", claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "header not an object");
	reject(hs256(HS, "[1]", SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, "payload not an object");
	reject(hs256(HS, "not json", SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, "payload not JSON");

	/* An RS256 token while only an HMAC secret is configured. */
	reject(asym(rsa, RS, claims(""), 0), OUT_UNAUTHORIZED, "RS256 token, HS256 key");

	/* Time claims. */
	snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld}", NOW - 61);
	reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "expired beyond leeway");
	snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld}", NOW - 30);
	expect(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_OK, "u", "expired within leeway");
	setenv("AUTH_JWT_LEEWAY", "0", 1);
	snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld}", NOW);
	reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "exp == now rejected with no leeway");
	snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"exp\":%ld.5}", NOW + 600);
	reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "fractional exp refused (integers only)");
	setenv("AUTH_JWT_LEEWAY", "abc", 1);
	reject(hs256(HS, claims(""), SECRET, strlen(SECRET)), OUT_MISCONFIGURED,
	       "bad AUTH_JWT_LEEWAY is misconfigured");
	unsetenv("AUTH_JWT_LEEWAY");
	reject(hs256(HS, "{\"sub\":\"u\"}", SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "exp required");
	reject(hs256(HS, "{\"sub\":\"u\",\"exp\":\"1900000000\"}", SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "exp as a string refused");
	reject(hs256(HS, claims(",\"nbf\":1800000100"), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "nbf in the future beyond leeway");
	expect(hs256(HS, claims(",\"nbf\":1800000030"), SECRET, strlen(SECRET)), OUT_OK, "user-42",
	       "nbf within leeway");
	reject(hs256(HS, claims(",\"nbf\":null"), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "nbf null refused");
	time_claims();
	reject(hs256(HS, claims(",\"iat\":1800000500"), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "iat in the future");
	expect(hs256(HS, claims(",\"iat\":1799999000"), SECRET, strlen(SECRET)), OUT_OK, "user-42",
	       "iat in the past");

	/* sub: a JSON string that is a usable user id, nothing less. */
	for (i = 0; i < sizeof(bad_subs) / sizeof(bad_subs[0]); i++)
		reject(hs256(HS, bad_subs[i].payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
		       bad_subs[i].name);
	snprintf(payload, sizeof(payload), "{\"sub\":\"%0128d\",\"exp\":%ld}", 7, NOW + 60);
	{
		char want[129];

		snprintf(want, sizeof(want), "%0128d", 7);
		expect(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_OK, want, "128-char sub");
	}
	snprintf(payload, sizeof(payload), "{\"sub\":\"%0129d\",\"exp\":%ld}", 7, NOW + 60);
	reject(hs256(HS, payload, SECRET, strlen(SECRET)), OUT_UNAUTHORIZED, "129-char sub");

	/* Issuer and audience. */
	setenv("AUTH_JWT_ISSUER", "https://auth.example.test", 1);
	setenv("AUTH_JWT_AUDIENCE", "billing", 1);
	reject(hs256(HS, claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "iss/aud required when configured");
	expect(hs256(HS, claims(",\"iss\":\"https://auth.example.test\",\"aud\":\"billing\""),
		     SECRET, strlen(SECRET)),
	       OUT_OK, "user-42", "iss and aud match");
	expect(hs256(HS,
		     claims(",\"iss\":\"https://auth.example.test\",\"aud\":[\"x\",\"billing\"]"),
		     SECRET, strlen(SECRET)),
	       OUT_OK, "user-42", "aud array containing ours");
	reject(hs256(HS, claims(",\"iss\":\"https://evil.test\",\"aud\":\"billing\""), SECRET,
		     strlen(SECRET)),
	       OUT_UNAUTHORIZED, "wrong issuer");
	reject(hs256(HS, claims(",\"iss\":\"https://auth.example.test\",\"aud\":\"other\""), SECRET,
		     strlen(SECRET)),
	       OUT_UNAUTHORIZED, "wrong audience");
	reject(hs256(HS, claims(",\"iss\":\"https://auth.example.test\\u0000x\",\"aud\":\"billing\""),
		     SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "iss with a NUL suffix refused");
	reject(hs256(HS, claims(",\"iss\":\"https://auth.example.test\",\"aud\":\"billing\\u0000x\""),
		     SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "aud with a NUL suffix refused");
	reject(hs256(HS, claims(",\"iss\":\"https://auth.example.test\",\"aud\":[\"billing\\u0000\"]"),
		     SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "aud array item with a NUL suffix refused");
	unsetenv("AUTH_JWT_ISSUER");
	unsetenv("AUTH_JWT_AUDIENCE");

	/* RFC 7519 4.1.3: without AUTH_JWT_AUDIENCE, any aud names someone else. */
	reject(hs256(HS, claims(",\"aud\":\"billing\""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "aud present while AUTH_JWT_AUDIENCE is unset");
	reject(hs256(HS, claims(",\"aud\":[\"billing\"]"), SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "aud array present while AUTH_JWT_AUDIENCE is unset");
	reject(hs256(HS, claims(",\"aud\":[]"), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "empty aud array present while AUTH_JWT_AUDIENCE is unset");

	/*
	 * Operators' tokens (the console's API) must name the operators'
	 * audience, so that a user whose id is an operator's name is not
	 * that operator; and users' endpoints refuse them.
	 */
	meant_for = AUTH_FOR_OPERATORS;
	reject(hs256(HS, claims(""), SECRET, strlen(SECRET)), OUT_UNAUTHORIZED,
	       "operators: a user's token (no aud) refused");
	expect(hs256(HS, claims(",\"aud\":\"billing-admin\""), SECRET, strlen(SECRET)), OUT_OK,
	       "user-42", "operators: aud billing-admin by default");
	expect(hs256(HS, claims(",\"aud\":[\"x\",\"billing-admin\"]"), SECRET, strlen(SECRET)),
	       OUT_OK, "user-42", "operators: aud array containing billing-admin");
	setenv("AUTH_JWT_AUDIENCE", "billing", 1);
	reject(hs256(HS, claims(",\"aud\":\"billing\""), SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "operators: a token for users' AUTH_JWT_AUDIENCE refused");
	unsetenv("AUTH_JWT_AUDIENCE");
	/* One audience for both would make every user's token an operator's. */
	setenv("AUTH_JWT_AUDIENCE", "billing-admin", 1);
	reject(hs256(HS, claims(",\"aud\":\"billing-admin\""), SECRET, strlen(SECRET)),
	       OUT_MISCONFIGURED, "operators: AUTH_JWT_AUDIENCE equal to the operators' is misconfigured");
	meant_for = AUTH_FOR_USERS;
	expect(hs256(HS, claims(",\"aud\":\"billing-admin\""), SECRET, strlen(SECRET)), OUT_OK,
	       "user-42", "...while the users' endpoints go on");
	meant_for = AUTH_FOR_OPERATORS;
	unsetenv("AUTH_JWT_AUDIENCE");
	setenv("ADMIN_JWT_AUDIENCE", "ops", 1);
	expect(hs256(HS, claims(",\"aud\":\"ops\""), SECRET, strlen(SECRET)), OUT_OK, "user-42",
	       "operators: ADMIN_JWT_AUDIENCE names the audience");
	reject(hs256(HS, claims(",\"aud\":\"billing-admin\""), SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "operators: the default refused once ADMIN_JWT_AUDIENCE is set");
	unsetenv("ADMIN_JWT_AUDIENCE");
	meant_for = AUTH_FOR_USERS;
	reject(hs256(HS, claims(",\"aud\":\"billing-admin\""), SECRET, strlen(SECRET)),
	       OUT_UNAUTHORIZED, "users: an operator's token refused");

	/* Short secrets are a configuration error (RFC 7518 3.2). */
	setenv("AUTH_JWT_SECRET", "short", 1);
	reject(hs256(HS, claims(""), "short", 5), OUT_MISCONFIGURED, "short secret");
	only_secret();
}

static void
test_encoding(void)
{
	char tok[8192], *sig;
	size_t n;

	only_secret();
	strcpy(tok, hs256(HS, claims(""), SECRET, strlen(SECRET)));
	n = strlen(tok);
	reject("", OUT_UNAUTHORIZED, "empty token");
	reject("abc", OUT_UNAUTHORIZED, "one segment");
	reject("a.b", OUT_UNAUTHORIZED, "two segments");
	{
		char four[8300];

		snprintf(four, sizeof(four), "%s.x", tok);
		reject(four, OUT_UNAUTHORIZED, "four segments");
	}
	{
		char padded[8300];

		snprintf(padded, sizeof(padded), "%s=", tok);
		reject(padded, OUT_UNAUTHORIZED, "padding refused");
	}
	{
		char plus[8300];

		strcpy(plus, tok);
		sig = strrchr(plus, '.') + 1;
		sig[0] = '+';
		reject(plus, OUT_UNAUTHORIZED, "standard base64 alphabet refused");
	}
	{
		/* 32-byte MAC = 43 chars whose last char carries 2 unused bits. */
		char alt[8300];
		const char *alphabet =
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const char *pos;

		strcpy(alt, tok);
		pos = strchr(alphabet, alt[n - 1]);
		alt[n - 1] = alphabet[(pos - alphabet) ^ 1];
		reject(alt, OUT_UNAUTHORIZED, "non-canonical trailing bits refused");
	}
	{
		char sp[8300];

		snprintf(sp, sizeof(sp), " %s", tok);
		reject(sp, OUT_UNAUTHORIZED, "leading space refused");
	}
	{
		char nul[8300];
		char *sub = NULL;

		memcpy(nul, tok, n);
		nul[n] = '\0';
		nul[5] = '\0';
		ok(auth_verify_jwt(nul, n, NOW, AUTH_FOR_USERS, &sub) == OUT_UNAUTHORIZED && sub == NULL,
		   "NUL inside the token refused");
	}
	{
		char *sub = NULL;

		ok(auth_verify_jwt(tok, n - 1, NOW, AUTH_FOR_USERS, &sub) == OUT_UNAUTHORIZED,
		   "length is authoritative (truncated)");
	}
}

static void
test_asymmetric(void)
{
	char tok[8192];

	only_key(rsa_file);
	expect(asym(rsa, RS, claims(""), 0), OUT_OK, "user-42", "RS256 valid");
	reject(asym(rsa, ES, claims(""), 0), OUT_UNAUTHORIZED, "ES256 header, RSA key");
	/* HS/RS confusion: HMAC keyed with the public key PEM. */
	reject(hs256(HS, claims(""), rsa_pem, strlen(rsa_pem)), OUT_UNAUTHORIZED,
	       "HS256 signed with the RSA public key (confusion)");
	strcpy(tok, asym(rsa, RS, claims(""), 0));
	tok[strlen(tok) - 3] ^= 1;
	reject(tok, OUT_UNAUTHORIZED, "RS256 signature altered");
	{
		/* Both configured: each algorithm with its own key. */
		setenv("AUTH_JWT_SECRET", SECRET, 1);
		expect(hs256(HS, claims(""), SECRET, strlen(SECRET)), OUT_OK, "user-42",
		       "HS256 with secret and key file both set");
		reject(hs256(HS, claims(""), rsa_pem, strlen(rsa_pem)), OUT_UNAUTHORIZED,
		       "confusion still refused with both set");
		unsetenv("AUTH_JWT_SECRET");
	}

	only_key(ec_file);
	expect(asym(ec, ES, claims(""), 0), OUT_OK, "user-42", "ES256 valid");
	reject(asym(ec, ES, claims(""), 1), OUT_UNAUTHORIZED, "ES256 DER signature refused");
	reject(asym(ec, RS, claims(""), 0), OUT_UNAUTHORIZED, "RS256 header, EC key");
	reject(asym(rsa, RS, claims(""), 0), OUT_UNAUTHORIZED, "RS256 token, EC key");
	strcpy(tok, asym(ec, ES, claims(""), 0));
	tok[strlen(tok) - 5] ^= 1;
	reject(tok, OUT_UNAUTHORIZED, "ES256 signature altered");

	only_key(small_rsa_file);
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "RSA key < 2048 bits");
	only_key(ed_file);
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "Ed25519 key file");
	only_key(junk_file);
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "key file without PEM");
	only_key("/nonexistent/key.pem");
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "missing key file");
	unsetenv("AUTH_JWT_PUBLIC_KEY_FILE");
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "no key at all");
}

/* Replaces path's content in place (same inode), optionally keeping its mtime. */
static void
rewrite(const char *path, const char *text, size_t n, int keep_mtime)
{
	struct stat st;
	struct timespec times[2];
	int fd;

	stat(path, &st);
	fd = open(path, O_WRONLY | O_TRUNC);
	if (fd == -1 || write(fd, text, n) != (ssize_t)n)
		printf("# cannot rewrite %s\n", path);
	if (keep_mtime) {
		times[0] = st.st_atim;
		times[1] = st.st_mtim;
		futimens(fd, times);
	}
	close(fd);
}

/*
 * AUTH_JWT_PUBLIC_KEY_FILE is read with a size cap, once per process, and
 * again only when path, inode, size or mtime change.
 */
static void
test_key_file(void)
{
	static char key_file[] = "/tmp/test-auth-keyfile-XXXXXX";
	char ec_pem[1024], junk[4096], *big;
	size_t n, ec_len;
	int fd = mkstemp(key_file);
	FILE *f;
	BIO *mem;

	close(fd);
	mem = BIO_new(BIO_s_mem());
	PEM_write_bio_PUBKEY(mem, ec);
	ec_len = (size_t)BIO_read(mem, ec_pem, sizeof(ec_pem) - 1);
	ec_pem[ec_len] = '\0';
	BIO_free(mem);

	/* A valid key followed by padding: the PEM parser alone would take it. */
	n = LIMIT_JWT_KEY_FILE + 1;
	big = malloc(n);
	memset(big, '\n', n);
	memcpy(big, rsa_pem, strlen(rsa_pem));
	rewrite(key_file, big, n, 0);
	free(big);
	only_key(key_file);
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED,
	       "key file over LIMIT_JWT_KEY_FILE refused, even with a good key in front");

	f = fopen(key_file, "w");
	fputs(rsa_pem, f);
	fclose(f);
	expect(asym(rsa, RS, claims(""), 0), OUT_OK, "user-42", "key file loaded");

	/* Same inode, size and mtime: the key parsed earlier is reused, the file not read. */
	memset(junk, 'x', sizeof(junk));
	rewrite(key_file, junk, strlen(rsa_pem), 1);
	expect(asym(rsa, RS, claims(""), 0), OUT_OK, "user-42",
	       "unchanged path, size and mtime: the loaded key is reused");

	/* Another mtime: read again (and the junk refused). */
	rewrite(key_file, junk, strlen(rsa_pem), 0);
	utimensat(AT_FDCWD, key_file, (struct timespec[2]){{0, UTIME_OMIT}, {12345, 0}}, 0);
	reject(asym(rsa, RS, claims(""), 0), OUT_MISCONFIGURED, "changed mtime: the file is read again");

	/* A new key in the file is used from the next token on. */
	rewrite(key_file, ec_pem, ec_len, 0);
	expect(asym(ec, ES, claims(""), 0), OUT_OK, "user-42", "replaced key used");
	reject(asym(rsa, RS, claims(""), 0), OUT_UNAUTHORIZED, "old key no longer used");

	/* Another path: that file's key. */
	only_key(rsa_file);
	expect(asym(rsa, RS, claims(""), 0), OUT_OK, "user-42", "another path: its own key");
	only_key(key_file);
	expect(asym(ec, ES, claims(""), 0), OUT_OK, "user-42", "and back");

	unlink(key_file);
	reject(asym(ec, ES, claims(""), 0), OUT_MISCONFIGURED, "deleted key file: misconfigured");
	only_key("/dev/zero");
	reject(asym(ec, ES, claims(""), 0), OUT_MISCONFIGURED, "not a regular file: misconfigured");
	unsetenv("AUTH_JWT_PUBLIC_KEY_FILE");
}

static enum outcome
identify(int allow, const char *authorization, struct auth_caller *c)
{
	if (authorization)
		setenv("HTTP_AUTHORIZATION", authorization, 1);
	else
		unsetenv("HTTP_AUTHORIZATION");
	return auth_identify(allow, c);
}

static void
test_identify(void)
{
	struct auth_caller c = {AUTH__MAX, NULL};
	char hdr[8300];
	long now = (long)time(NULL);
	char payload[256];

	unsetenv("REMOTE_USER");
	unsetenv("USAGE_API_KEY");
	unsetenv("AUTH_JWT_SECRET");
	unsetenv("AUTH_JWT_PUBLIC_KEY_FILE");
	ok(identify(1, "Bearer x", &c) == OUT_MISCONFIGURED, "nothing configured: misconfigured");

	setenv("REMOTE_USER", "alice", 1);
	ok(identify(0, NULL, &c) == OUT_OK && c.kind == AUTH_REMOTE_USER &&
	       strcmp(c.user_id, "alice") == 0,
	   "REMOTE_USER wins, even unconfigured");
	ok(auth_authorize(&c, "alice") == OUT_OK, "REMOTE_USER may act for itself");
	ok(auth_authorize(&c, "bob") == OUT_FORBIDDEN, "but not for another user");
	auth_caller_free(&c);
	unsetenv("REMOTE_USER");

	only_secret();
	ok(identify(0, NULL, &c) == OUT_UNAUTHORIZED, "no Authorization: 401");
	ok(identify(0, "Basic dXNlcjpwYXNz", &c) == OUT_UNAUTHORIZED, "Basic: 401");
	ok(identify(0, "Bearer", &c) == OUT_UNAUTHORIZED, "Bearer without token: 401");
	snprintf(payload, sizeof(payload), "{\"sub\":\"user-7\",\"exp\":%ld}", now + 300);
	snprintf(hdr, sizeof(hdr), "bearer  %s ", hs256(HS, payload, SECRET, strlen(SECRET)));
	ok(identify(0, hdr, &c) == OUT_OK && c.kind == AUTH_JWT && strcmp(c.user_id, "user-7") == 0,
	   "Bearer JWT (scheme case-insensitive, extra blanks)");
	ok(auth_authorize(&c, "user-7") == OUT_OK, "JWT caller acts for sub");
	ok(auth_authorize(&c, "user-8") == OUT_FORBIDDEN, "JWT caller not for others");
	auth_caller_free(&c);
	snprintf(payload, sizeof(payload), "{\"sub\":\"user-7\",\"exp\":%ld}", now - 3600);
	snprintf(hdr, sizeof(hdr), "Bearer %s", hs256(HS, payload, SECRET, strlen(SECRET)));
	ok(identify(0, hdr, &c) == OUT_UNAUTHORIZED && c.user_id == NULL, "expired JWT: 401");

	setenv("USAGE_API_KEY", "usage-api-key-0123456789", 1);
	ok(identify(1, "Bearer usage-api-key-0123456789", &c) == OUT_OK && c.kind == AUTH_API_KEY &&
	       c.user_id == NULL,
	   "API key where allowed");
	ok(auth_authorize(&c, "anyone") == OUT_OK, "API key acts for any user");
	auth_caller_free(&c);
	ok(identify(0, "Bearer usage-api-key-0123456789", &c) == OUT_UNAUTHORIZED,
	   "API key refused where not allowed");
	ok(identify(1, "Bearer usage-api-key-012345678", &c) == OUT_UNAUTHORIZED,
	   "API key prefix refused");
	unsetenv("AUTH_JWT_SECRET");
	ok(identify(1, "Bearer usage-api-key-0123456789", &c) == OUT_OK,
	   "API key alone is a configured method");
	auth_caller_free(&c);
	ok(identify(0, "Bearer usage-api-key-0123456789", &c) == OUT_MISCONFIGURED,
	   "API key alone, not allowed here: misconfigured");
	unsetenv("USAGE_API_KEY");
	auth_caller_free(NULL);
	ok(auth_authorize(NULL, "x") == OUT_FORBIDDEN, "no caller: forbidden");
}

int
main(void)
{
	EVP_PKEY *small, *ed;
	BIO *mem;
	int fd;

	rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	if (!rsa || !ec || !small || !ed) {
		printf("Bail out! key generation failed\n");
		return 1;
	}
	write_pub(rsa, rsa_file);
	write_pub(ec, ec_file);
	write_pub(small, small_rsa_file);
	write_pub(ed, ed_file);
	fd = mkstemp(junk_file);
	if (write(fd, "not a key\n", 10) != 10)
		return 1;
	close(fd);
	mem = BIO_new(BIO_s_mem());
	PEM_write_bio_PUBKEY(mem, rsa);
	rsa_pem[BIO_read(mem, rsa_pem, sizeof(rsa_pem) - 1)] = '\0';
	BIO_free(mem);

	unsetenv("AUTH_JWT_LEEWAY");
	unsetenv("AUTH_JWT_ISSUER");
	unsetenv("AUTH_JWT_AUDIENCE");
	unsetenv("REMOTE_USER");
	test_hs256();
	test_encoding();
	test_asymmetric();
	test_key_file();
	test_identify();

	unlink(rsa_file);
	unlink(ec_file);
	unlink(small_rsa_file);
	unlink(ed_file);
	unlink(junk_file);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(small);
	EVP_PKEY_free(ed);
	{
		char id[200];

		memset(id, 'a', 128);
		id[128] = '\0';
		ok(auth_user_id_valid(id), "user id of 128 bytes");
		id[128] = 'a';
		id[129] = '\0';
		ok(!auth_user_id_valid(id), "user id of 129 bytes refused");
		id[0] = '\0';
		for (int k = 0; k < 43; k++)
			strcat(id, "\xc3\xa9");	/* 86 bytes: fine */
		ok(auth_user_id_valid(id), "multibyte user id within 128 bytes");
		for (int k = 0; k < 22; k++)
			strcat(id, "\xc3\xa9");	/* 130 bytes */
		ok(!auth_user_id_valid(id), "user id over 128 bytes refused, however few characters");
		ok(!auth_user_id_valid(""), "empty user id refused");
		ok(!auth_user_id_valid(NULL), "NULL user id refused");
		ok(!auth_user_id_valid("a\tb"), "control character refused");
		ok(!auth_user_id_valid("\xff"), "invalid UTF-8 refused");
	}
	return done_testing();
}
