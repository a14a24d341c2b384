#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "auth.h"
#include "buf.h"
#include "config.h"
#include "digest.h"
#include "hex.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "request.h"
#include "response.h"


enum jwt_alg { ALG_HS256, ALG_RS256, ALG_ES256, ALG__MAX };

static const char *const alg_names[ALG__MAX] = {
    [ALG_HS256] = "HS256",
    [ALG_RS256] = "RS256",
    [ALG_ES256] = "ES256",
};

/*
 * Strict base64url without padding (RFC 7515 2, RFC 4648 5): only the
 * URL alphabet, no '=', no whitespace, a length that is not 1 mod 4 and
 * zero bits in the unused tail, so each byte string has exactly one
 * accepted encoding.  Returns the decoded length or -1.  out must hold
 * n * 3 / 4 + 1 bytes.
 */
static long
b64url_decode(const char *s, size_t n, unsigned char *out)
{
	unsigned long acc = 0;
	size_t i;
	long len = 0;
	int bits = 0, v;

	if (n % 4 == 1)
		return -1;
	for (i = 0; i < n; i++) {
		char ch = s[i];

		if (ch >= 'A' && ch <= 'Z')
			v = ch - 'A';
		else if (ch >= 'a' && ch <= 'z')
			v = ch - 'a' + 26;
		else if (ch >= '0' && ch <= '9')
			v = ch - '0' + 52;
		else if (ch == '-')
			v = 62;
		else if (ch == '_')
			v = 63;
		else
			return -1;
		acc = (acc << 6) | (unsigned long)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[len++] = (unsigned char)(acc >> bits);
			acc &= (1UL << bits) - 1;
		}
	}
	if (acc != 0)
		return -1;
	return len;
}

/* Decodes one JWS segment into a fresh buffer (caller frees). */
static unsigned char *
segment_decode(const char *s, size_t n, size_t *len)
{
	unsigned char *p = mem_alloc(n * 3 / 4 + 1);
	long got = b64url_decode(s, n, p);

	if (got < 0) {
		free(p);
		return NULL;
	}
	*len = (size_t)got;
	return p;
}

/*
 * A NumericDate (RFC 7519 2), as we accept it: a JSON integer (no
 * fraction, no exponent) from 0 to LIMIT_TIMESTAMP_MAX (end of year
 * 9999).  json-c clamps integers beyond int64 and reads 1e300 as a
 * double: both would otherwise never expire.  0 with *present set, or
 * -1 when present but not such an integer.
 */
static int
numeric_date(struct json_object *claims, const char *name, int *present, long long *out)
{
	struct json_object *v;
	int64_t n;

	*present = 0;
	if (!json_object_object_get_ex(claims, name, &v))
		return 0;
	*present = 1;
	if (!json_object_is_type(v, json_type_int))
		return -1;
	n = json_object_get_int64(v);
	if (n < 0 || n > LIMIT_TIMESTAMP_MAX)
		return -1;
	*out = (long long)n;
	return 0;
}

/*
 * The aud an operator's token must name.  Operators' and users' tokens
 * may come from one issuer and one key; without an audience of its own,
 * any user whose id is an operator's name would be that operator.
 */
static const char *
operator_audience(void)
{
	const char *v = config_get("ADMIN_JWT_AUDIENCE");

	return v != NULL ? v : "billing-admin";
}

static int
aud_matches(struct json_object *claims, const char *want)
{
	struct json_object *aud;
	const char *s;
	size_t i, n;

	if (!json_object_object_get_ex(claims, "aud", &aud))
		return 0;
	if ((s = jsonget_string(aud)) != NULL)
		return strcmp(s, want) == 0;
	if (!json_object_is_type(aud, json_type_array))
		return 0;
	n = json_object_array_length(aud);
	for (i = 0; i < n; i++)
		if ((s = jsonget_string(json_object_array_get_idx(aud, i))) != NULL &&
		    strcmp(s, want) == 0)
			return 1;
	return 0;
}

/*
 * Reads at most LIMIT_JWT_KEY_FILE bytes of the regular file at fd into
 * out.  -1 (logged) when it is larger or unreadable.
 */
static int
read_key_file(int fd, struct buf *out)
{
	char chunk[4096];
	ssize_t n;

	while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_msg("AUTH_JWT_PUBLIC_KEY_FILE cannot be read (errno %d)", errno);
			return -1;
		}
		if (buf_add(out, chunk, (size_t)n) == -1) {
			log_msg("AUTH_JWT_PUBLIC_KEY_FILE is larger than %d bytes", LIMIT_JWT_KEY_FILE);
			return -1;
		}
	}
	return 0;
}

/*
 * Parses a PEM public key and decides the one algorithm it verifies.
 * OUT_OK with *pkey (caller frees) and *alg, or OUT_MISCONFIGURED.
 */
static enum outcome
parse_public_key(const struct buf *pem, EVP_PKEY **pkey, enum jwt_alg *alg)
{
	BIO *bio = NULL;
	EVP_PKEY *k = NULL;
	char group[64];
	size_t glen = 0;
	enum outcome o = OUT_MISCONFIGURED;

	*pkey = NULL;
	if ((bio = BIO_new_mem_buf(buf_str(pem), (int)pem->len)) == NULL)
		response_fatal("out of memory");
	if ((k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL)) == NULL) {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE holds no PEM public key");
		goto out;
	}
	if (EVP_PKEY_is_a(k, "RSA")) {
		if (EVP_PKEY_get_bits(k) < LIMIT_RS256_MIN_BITS) {
			log_msg("AUTH_JWT_PUBLIC_KEY_FILE: RSA key shorter than %d bits",
				LIMIT_RS256_MIN_BITS);
			goto out;
		}
		*alg = ALG_RS256;
	} else if (EVP_PKEY_is_a(k, "EC")) {
		/* ES256 is ECDSA on P-256 only (RFC 7518 3.4). */
		if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group,
						   sizeof(group), &glen) != 1 ||
		    (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
			log_msg("AUTH_JWT_PUBLIC_KEY_FILE: EC key not on P-256");
			goto out;
		}
		*alg = ALG_ES256;
	} else {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE: key type is neither RSA nor EC");
		goto out;
	}
	*pkey = k;
	k = NULL;
	o = OUT_OK;
out:
	EVP_PKEY_free(k);
	BIO_free(bio);
	return o;
}

/*
 * The key of AUTH_JWT_PUBLIC_KEY_FILE, parsed once per process: a
 * FastCGI process verifies many tokens with it.  It is reused while the
 * path and the file (device, inode, size, modification time) are the
 * same, and read again on the first request after any of them changes,
 * so replacing the file (in place or by rename) takes effect without a
 * restart.  Configuration, not request data; only a good key is kept.
 */
static struct {
	char *path;
	struct stat st;
	EVP_PKEY *pkey;
	enum jwt_alg alg;
} key_cache;

static int
same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * The public key of file: OUT_OK with *pkey (borrowed from the cache,
 * valid until the next call) and *alg, or OUT_MISCONFIGURED (logged).
 */
static enum outcome
public_key(const char *file, EVP_PKEY **pkey, enum jwt_alg *alg)
{
	struct buf pem = BUF_INIT(LIMIT_JWT_KEY_FILE);
	struct stat st;
	EVP_PKEY *k = NULL;
	enum jwt_alg a = ALG__MAX;
	enum outcome o = OUT_MISCONFIGURED;
	int fd = -1;

	*pkey = NULL;
	if (stat(file, &st) == -1) {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE cannot be opened (errno %d)", errno);
		goto out;
	}
	if (key_cache.pkey != NULL && strcmp(key_cache.path, file) == 0 &&
	    same_file(&key_cache.st, &st)) {
		o = OUT_OK;
		goto out;
	}
	/* Checked before open: opening a FIFO would block. */
	if (!S_ISREG(st.st_mode)) {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE is not a regular file");
		goto out;
	}
	if (st.st_size > LIMIT_JWT_KEY_FILE) {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE is larger than %d bytes", LIMIT_JWT_KEY_FILE);
		goto out;
	}
	/* What is cached is described by the file actually read. */
	if ((fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) == -1 || fstat(fd, &st) == -1) {
		log_msg("AUTH_JWT_PUBLIC_KEY_FILE cannot be opened (errno %d)", errno);
		goto out;
	}
	if (!S_ISREG(st.st_mode) || read_key_file(fd, &pem) == -1 ||
	    parse_public_key(&pem, &k, &a) != OUT_OK)
		goto out;
	EVP_PKEY_free(key_cache.pkey);
	free(key_cache.path);
	key_cache.path = mem_strdup(file);
	key_cache.st = st;
	key_cache.pkey = k;
	key_cache.alg = a;
	k = NULL;
	o = OUT_OK;
out:
	if (o == OUT_OK) {
		*pkey = key_cache.pkey;
		*alg = key_cache.alg;
	}
	if (fd != -1)
		close(fd);
	EVP_PKEY_free(k);
	buf_free(&pem);
	return o;
}

/* ES256 signatures are raw r || s (RFC 7518 3.4); OpenSSL wants DER. */
static unsigned char *
es256_to_der(const unsigned char *sig, size_t len, size_t *der_len)
{
	ECDSA_SIG *es = NULL;
	BIGNUM *r = NULL, *s = NULL;
	unsigned char *der = NULL;
	int n;

	if (len != 64)
		return NULL;
	if ((es = ECDSA_SIG_new()) == NULL || (r = BN_bin2bn(sig, 32, NULL)) == NULL ||
	    (s = BN_bin2bn(sig + 32, 32, NULL)) == NULL)
		response_fatal("out of memory");
	if (ECDSA_SIG_set0(es, r, s) != 1)
		response_fatal("out of memory");
	r = s = NULL;
	if ((n = i2d_ECDSA_SIG(es, &der)) <= 0)
		der = NULL;
	else
		*der_len = (size_t)n;
	ECDSA_SIG_free(es);
	return der;
}

static int
verify_asymmetric(EVP_PKEY *pkey, enum jwt_alg alg, const char *input, size_t input_len,
		  const unsigned char *sig, size_t sig_len)
{
	EVP_MD_CTX *ctx = NULL;
	unsigned char *der = NULL;
	size_t der_len = 0;
	int good = 0;

	if (alg == ALG_ES256) {
		if ((der = es256_to_der(sig, sig_len, &der_len)) == NULL)
			goto out;
		sig = der;
		sig_len = der_len;
	}
	if ((ctx = EVP_MD_CTX_new()) == NULL)
		response_fatal("out of memory");
	if (EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) != 1)
		goto out;
	good = EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)input, input_len) == 1;
out:
	EVP_MD_CTX_free(ctx);
	OPENSSL_free(der);
	return good;
}

static int
verify_hs256(const char *secret, const char *input, size_t input_len, const unsigned char *sig,
	     size_t sig_len)
{
	const struct digest_part message = { input, input_len };
	unsigned char mac[DIGEST_SHA256_LEN];
	int good;

	digest_hmac_sha256(secret, strlen(secret), &message, 1, mac);
	good = sig_len == sizeof(mac) && CRYPTO_memcmp(mac, sig, sizeof(mac)) == 0;
	OPENSSL_cleanse(mac, sizeof(mac));
	return good;
}

/* Why a token was refused, for the log line (never the token). */
#define REJECT(reason)                                                                             \
	do {                                                                                       \
		why = (reason);                                                                    \
		goto out;                                                                          \
	} while (0)

enum outcome
auth_verify_jwt(const char *token, size_t len, time_t now, enum auth_audience meant_for,
    char **subject)
{
	const char *secret = config_get("AUTH_JWT_SECRET");
	const char *key_file = config_get("AUTH_JWT_PUBLIC_KEY_FILE");
	const char *issuer = config_get("AUTH_JWT_ISSUER");
	const char *audience = meant_for == AUTH_FOR_OPERATORS ? operator_audience()
							       : config_get("AUTH_JWT_AUDIENCE");
	const char *dot1, *dot2, *alg_name, *sub, *iss, *users, *why = NULL;
	unsigned char *header_raw = NULL, *payload_raw = NULL, *sig = NULL;
	size_t header_len = 0, payload_len = 0, sig_len = 0, i;
	struct json_object *header = NULL, *claims = NULL, *v;
	EVP_PKEY *pkey = NULL; /* borrowed from the key cache */
	enum jwt_alg alg = ALG__MAX, key_alg = ALG__MAX;
	enum outcome o = OUT_UNAUTHORIZED;
	long leeway = LIMIT_JWT_LEEWAY_DEFAULT_S;
	long long exp_at = 0, nbf_at = 0, iat_at = 0;
	int present, good;

	*subject = NULL;
	if (secret == NULL && key_file == NULL) {
		log_msg("no JWT key configured (AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY_FILE)");
		return OUT_MISCONFIGURED;
	}
	if (meant_for == AUTH_FOR_OPERATORS && (users = config_get("AUTH_JWT_AUDIENCE")) != NULL &&
	    strcmp(users, audience) == 0) {
		/* Then every user's token would be an operator's. */
		log_msg("ADMIN_JWT_AUDIENCE must differ from AUTH_JWT_AUDIENCE");
		return OUT_MISCONFIGURED;
	}
	if (secret != NULL && strlen(secret) < LIMIT_HS256_MIN_KEY) {
		log_msg("AUTH_JWT_SECRET is shorter than %d bytes", LIMIT_HS256_MIN_KEY);
		return OUT_MISCONFIGURED;
	}
	if (config_get_long("AUTH_JWT_LEEWAY", LIMIT_JWT_LEEWAY_DEFAULT_S, 0,
			    LIMIT_JWT_LEEWAY_MAX_S, &leeway) != OUT_OK)
		return OUT_MISCONFIGURED;
	if (key_file != NULL && public_key(key_file, &pkey, &key_alg) != OUT_OK)
		return OUT_MISCONFIGURED;

	/* Compact serialisation (RFC 7515 7.1): exactly three segments. */
	if (token == NULL || len == 0 || len > LIMIT_HEADER_VALUE)
		REJECT("empty or oversized token");
	if ((dot1 = memchr(token, '.', len)) == NULL ||
	    (dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) == NULL ||
	    memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
		REJECT("not three segments");
	if ((header_raw = segment_decode(token, (size_t)(dot1 - token), &header_len)) == NULL ||
	    (payload_raw = segment_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload_len)) ==
		NULL ||
	    (sig = segment_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &sig_len)) == NULL)
		REJECT("bad base64url");
	if (jsonget_parse((const char *)header_raw, header_len, &header) != OUT_OK)
		REJECT("header is not a JSON object");

	/* The key decides the algorithm, never the token (RFC 8725 3.1). */
	if ((alg_name = jsonget_str(header, "alg")) == NULL)
		REJECT("no alg");
	for (i = 0; i < ALG__MAX; i++)
		if (strcmp(alg_name, alg_names[i]) == 0)
			alg = (enum jwt_alg)i;
	if (alg == ALG__MAX)
		REJECT("unsupported alg");
	if (!((alg == ALG_HS256 && secret != NULL) || (alg != ALG_HS256 && alg == key_alg)))
		REJECT("alg does not match the configured key");
	/* We implement no JWS extensions: a critical one must be refused (RFC 7515 4.1.11). */
	if (json_object_object_get_ex(header, "crit", &v))
		REJECT("crit header");
	if (sig_len == 0)
		REJECT("empty signature");

	if (alg == ALG_HS256)
		good = verify_hs256(secret, token, (size_t)(dot2 - token), sig, sig_len);
	else
		good = verify_asymmetric(pkey, alg, token, (size_t)(dot2 - token), sig, sig_len);
	if (!good)
		REJECT("bad signature");

	/* Claims only count once the signature is good. */
	if (jsonget_parse((const char *)payload_raw, payload_len, &claims) != OUT_OK)
		REJECT("payload is not a JSON object");
	/* All three are at most LIMIT_TIMESTAMP_MAX, so no sum below overflows. */
	if (numeric_date(claims, "exp", &present, &exp_at) == -1 || !present)
		REJECT("exp missing or not an integer date");
	if ((long long)now >= exp_at + leeway)
		REJECT("expired");
	if (numeric_date(claims, "nbf", &present, &nbf_at) == -1)
		REJECT("nbf not an integer date");
	if (present && (long long)now + leeway < nbf_at)
		REJECT("not yet valid (nbf)");
	if (numeric_date(claims, "iat", &present, &iat_at) == -1)
		REJECT("iat not an integer date");
	if (present && (long long)now + leeway < iat_at)
		REJECT("issued in the future (iat)");
	if (issuer != NULL &&
	    ((iss = jsonget_str(claims, "iss")) == NULL || strcmp(iss, issuer) != 0))
		REJECT("wrong issuer");
	/*
	 * RFC 7519 4.1.3: a recipient that does not find itself in a present
	 * aud MUST reject the token.  Without AUTH_JWT_AUDIENCE we have no
	 * name, so a token meant for some audience is not meant for us.
	 */
	if (audience != NULL ? !aud_matches(claims, audience)
			     : json_object_object_get_ex(claims, "aud", NULL))
		REJECT(audience != NULL ? "wrong audience" : "aud present, AUTH_JWT_AUDIENCE unset");
	/* sub is a StringOrURI (RFC 7519 4.1.2): a JSON number is refused. */
	if ((sub = jsonget_str(claims, "sub")) == NULL)
		REJECT("sub missing or not a string");
	if (!auth_user_id_valid(sub))
		REJECT("sub empty, too long or with control characters");
	*subject = mem_strdup(sub);
	o = OUT_OK;
out:
	if (why != NULL)
		log_msg("jwt rejected: %s", why);
	json_object_put(header);
	json_object_put(claims);
	free(header_raw);
	free(payload_raw);
	free(sig);
	return o;
}

/* Constant-time equality of two strings of any lengths (compares their digests). */
static int
secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	unsigned char da[DIGEST_SHA256_LEN], db[DIGEST_SHA256_LEN];
	int same;

	digest_sha256(a, alen, da);
	digest_sha256(b, blen, db);
	same = CRYPTO_memcmp(da, db, sizeof(da)) == 0 && alen == blen;
	OPENSSL_cleanse(da, sizeof(da));
	OPENSSL_cleanse(db, sizeof(db));
	return same;
}

static void
invalid_token(void)
{
	response_header("WWW-Authenticate", "Bearer realm=\"billing\", error=\"invalid_token\"");
}

/* Bearer credentials (RFC 6750 2.1): the scheme is case-insensitive, then b64token. */
static int
bearer_token(const char *h, const char **tok, size_t *len)
{
	size_t n;

	if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
		return -1;
	h += 6;
	while (*h == ' ' || *h == '\t')
		h++;
	n = strlen(h);
	while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	if (n == 0)
		return -1;
	*tok = h;
	*len = n;
	return 0;
}

static enum outcome
identify(int allow_api_key, enum auth_audience meant_for, struct auth_caller *caller)
{
	const char *remote = request_env("REMOTE_USER"), *h, *tok = NULL;
	const char *api_key = allow_api_key ? config_get("USAGE_API_KEY") : NULL;
	int jwt = config_get("AUTH_JWT_SECRET") || config_get("AUTH_JWT_PUBLIC_KEY_FILE");
	size_t len = 0;
	char *sub = NULL, *copy;
	enum outcome o;

	caller->kind = AUTH__MAX;
	caller->user_id = NULL;
	/* Apache authenticated the request itself (RFC 3875 4.1.11). */
	if (remote != NULL && *remote != '\0') {
		if (!auth_user_id_valid(remote)) {
			log_msg("REMOTE_USER unusable as a user id");
			return OUT_FORBIDDEN;
		}
		caller->kind = AUTH_REMOTE_USER;
		caller->user_id = mem_strdup(remote);
		return OUT_OK;
	}
	if (api_key != NULL && strlen(api_key) < LIMIT_BEARER_KEY_MIN) {
		log_msg("USAGE_API_KEY is shorter than %d bytes", LIMIT_BEARER_KEY_MIN);
		return OUT_MISCONFIGURED;
	}
	if (!jwt && api_key == NULL) {
		log_msg("no authentication configured (REMOTE_USER, AUTH_JWT_SECRET, "
			"AUTH_JWT_PUBLIC_KEY_FILE%s)",
			allow_api_key ? ", USAGE_API_KEY" : "");
		return OUT_MISCONFIGURED;
	}
	h = request_header("Authorization");
	if (h == NULL || *h == '\0') {
		/* No credentials: a bare challenge (RFC 6750 3.1). */
		response_header("WWW-Authenticate", "Bearer realm=\"billing\"");
		return OUT_UNAUTHORIZED;
	}
	if (strlen(h) > LIMIT_HEADER_VALUE || bearer_token(h, &tok, &len) == -1) {
		log_msg("authorization header is not a Bearer token");
		invalid_token();
		return OUT_UNAUTHORIZED;
	}
	if (api_key != NULL && secret_equal(tok, len, api_key, strlen(api_key))) {
		caller->kind = AUTH_API_KEY;
		return OUT_OK;
	}
	if (!jwt) {
		log_msg("bearer token is not the API key");
		invalid_token();
		return OUT_UNAUTHORIZED;
	}
	copy = mem_strndup(tok, len);
	o = auth_verify_jwt(copy, len, time(NULL), meant_for, &sub);
	mem_free_secret(copy, len);
	if (o == OUT_UNAUTHORIZED)
		invalid_token();
	if (o != OUT_OK)
		return o;
	caller->kind = AUTH_JWT;
	caller->user_id = sub;
	return OUT_OK;
}

enum outcome
auth_identify(int allow_api_key, struct auth_caller *caller)
{
	return identify(allow_api_key, AUTH_FOR_USERS, caller);
}

enum outcome
auth_identify_operator(struct auth_caller *caller)
{
	return identify(0, AUTH_FOR_OPERATORS, caller);
}

enum outcome
auth_operator(const char *setting)
{
	const char *remote = request_env("REMOTE_USER"), *secret = config_get(setting), *h, *tok;
	size_t len;

	if (remote != NULL && *remote != '\0')
		return OUT_OK;
	if (secret == NULL || strlen(secret) < LIMIT_BEARER_KEY_MIN) {
		log_msg("%s unset or shorter than %d bytes, and no Apache authentication", setting,
			LIMIT_BEARER_KEY_MIN);
		return OUT_MISCONFIGURED;
	}
	h = request_header("Authorization");
	if (h == NULL || *h == '\0') {
		response_header("WWW-Authenticate", "Bearer realm=\"billing\"");
		return OUT_UNAUTHORIZED;
	}
	if (strlen(h) > LIMIT_HEADER_VALUE || bearer_token(h, &tok, &len) == -1 ||
	    !secret_equal(tok, len, secret, strlen(secret))) {
		log_msg("bearer token is not %s", setting);
		invalid_token();
		return OUT_UNAUTHORIZED;
	}
	return OUT_OK;
}

enum outcome
auth_authorize(const struct auth_caller *caller, const char *user_id)
{
	if (caller == NULL || user_id == NULL)
		return OUT_FORBIDDEN;
	if (caller->kind == AUTH_API_KEY)
		return OUT_OK;
	if ((caller->kind == AUTH_REMOTE_USER || caller->kind == AUTH_JWT) &&
	    caller->user_id != NULL && strcmp(caller->user_id, user_id) == 0)
		return OUT_OK;
	log_msg("caller may not act for the requested user");
	return OUT_FORBIDDEN;
}

void
auth_caller_free(struct auth_caller *caller)
{
	if (caller == NULL)
		return;
	free(caller->user_id);
	caller->user_id = NULL;
}

int
auth_user_id_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	return n >= 1 && n <= LIMIT_USER_ID_LEN && jsonget_clean_utf8(s, n);
}

/* --- form tokens ------------------------------------------------------------ */

_Static_assert(LIMIT_FORM_KEY == DIGEST_SHA256_LEN, "a form key is one SHA-256 output");

/* What a key derived from STRIPE_SECRET_KEY is for (HKDF-style domain separation). */
#define FORM_KEY_LABEL "billing-cgi admin form tokens v1"

static enum outcome
form_key(unsigned char key[LIMIT_FORM_KEY])
{
	const char *secret = config_get("ADMIN_CSRF_SECRET"), *stripe;
	struct digest_part label = { FORM_KEY_LABEL, strlen(FORM_KEY_LABEL) };

	if (secret != NULL) {
		if (strlen(secret) < LIMIT_HS256_MIN_KEY) {
			log_msg("ADMIN_CSRF_SECRET is shorter than %d bytes", LIMIT_HS256_MIN_KEY);
			return OUT_MISCONFIGURED;
		}
		/* Any length in, LIMIT_FORM_KEY bytes out. */
		digest_sha256(secret, strlen(secret), key);
		return OUT_OK;
	}
	if ((stripe = config_get("STRIPE_SECRET_KEY")) == NULL) {
		log_msg("form tokens need ADMIN_CSRF_SECRET (or STRIPE_SECRET_KEY to derive one)");
		return OUT_MISCONFIGURED;
	}
	digest_hmac_sha256(stripe, strlen(stripe), &label, 1, key);
	return OUT_OK;
}

/* Hex HMAC over length-prefixed fields, so no two inputs share a MAC input. */
static enum outcome
form_mac(const char *operator, const char *binding, const char *ts, const char *nonce,
	 char hex[2 * DIGEST_SHA256_LEN + 1])
{
	const char *parts[4] = { operator, binding, ts, nonce };
	unsigned char key[LIMIT_FORM_KEY], mac[DIGEST_SHA256_LEN];
	struct digest_part message;
	struct buf in = BUF_INIT(16 * 1024);
	enum outcome o;
	size_t p;

	if ((o = form_key(key)) != OUT_OK)
		goto out;
	o = OUT_INTERNAL;
	for (p = 0; p < 4; p++)
		if (buf_printf(&in, "%zu:%s;", strlen(parts[p]), parts[p]) == -1)
			goto out;
	message.p = buf_str(&in);
	message.len = in.len;
	digest_hmac_sha256(key, sizeof(key), &message, 1, mac);
	hex_encode(hex, mac, sizeof(mac));
	o = OUT_OK;
out:
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(mac, sizeof(mac));
	buf_free(&in);
	return o;
}

enum outcome
auth_form_token(const char *operator, const char *binding, time_t now, char **token)
{
	unsigned char raw[LIMIT_FORM_NONCE];
	char nonce[2 * LIMIT_FORM_NONCE + 1], ts[24], mac[2 * DIGEST_SHA256_LEN + 1];
	struct buf out = BUF_INIT(256);
	enum outcome o;

	*token = NULL;
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		response_fatal("no randomness for a form token");
	hex_encode(nonce, raw, sizeof(raw));
	snprintf(ts, sizeof(ts), "%lld", (long long)now);
	if ((o = form_mac(operator, binding, ts, nonce, mac)) != OUT_OK)
		return o;
	if (buf_printf(&out, "%s.%s.%s", ts, nonce, mac) == -1)
		return OUT_INTERNAL;
	*token = buf_detach(&out, NULL);
	return OUT_OK;
}

enum outcome
auth_form_check(const char *token, const char *operator, const char *binding, time_t now,
    char **nonce)
{
	char ts[24], got_nonce[2 * LIMIT_FORM_NONCE + 1], mac[2 * DIGEST_SHA256_LEN + 1];
	const char *d1, *d2, *why = NULL;
	long long t = 0;
	size_t n, i;
	enum outcome o;

	*nonce = NULL;
	if (token == NULL || (d1 = strchr(token, '.')) == NULL || (d2 = strchr(d1 + 1, '.')) == NULL) {
		why = "malformed";
		goto out;
	}
	n = (size_t)(d1 - token);
	if (n == 0 || n >= 12) {
		why = "malformed time";
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (token[i] < '0' || token[i] > '9') {
			why = "malformed time";
			goto out;
		}
		t = t * 10 + (token[i] - '0');
	}
	memcpy(ts, token, n);
	ts[n] = '\0';
	if ((size_t)(d2 - d1 - 1) != 2 * LIMIT_FORM_NONCE) {
		why = "malformed nonce";
		goto out;
	}
	memcpy(got_nonce, d1 + 1, 2 * LIMIT_FORM_NONCE);
	got_nonce[2 * LIMIT_FORM_NONCE] = '\0';
	for (i = 0; i < 2 * LIMIT_FORM_NONCE; i++)
		if (!((got_nonce[i] >= '0' && got_nonce[i] <= '9') ||
		      (got_nonce[i] >= 'a' && got_nonce[i] <= 'f'))) {
			why = "malformed nonce";
			goto out;
		}
	if ((o = form_mac(operator, binding, ts, got_nonce, mac)) != OUT_OK)
		return o;
	if (strlen(d2 + 1) != strlen(mac) || CRYPTO_memcmp(d2 + 1, mac, strlen(mac)) != 0) {
		why = "signature does not match this operator and form";
		goto out;
	}
	if (t > (long long)now + LIMIT_FORM_CLOCK_SKEW_S || (long long)now - t > LIMIT_ADMIN_FORM_SECONDS) {
		why = "expired";
		goto out;
	}
	*nonce = mem_strdup(got_nonce);
out:
	OPENSSL_cleanse(mac, sizeof(mac));	/* the MAC this token should carry */
	if (why != NULL) {
		log_msg("form token refused: %s", why);
		return OUT_FORBIDDEN;
	}
	return OUT_OK;
}
