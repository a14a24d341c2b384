#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "config.h"
#include "http.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "stripe.h"

#define STRIPE_DEFAULT_BASE "https://api.stripe.com"
#define STRIPE_DEFAULT_VERSION "2026-07-29.dahlia"

/* Backoff before try n+1: 250 ms, 500 ms, 1 s ... capped, with jitter. */
#define BACKOFF_BASE_MS 250
#define BACKOFF_CAP_MS 2000
/* A Retry-After we honour; longer ones mean "not within this request". */
#define RETRY_AFTER_MAX_MS 2000
/* A try with less time than this left is not worth starting. */
#define MIN_TRY_MS 500

static const char *const method_names[HTTP__MAX] = {
    [HTTP_GET] = "GET",
    [HTTP_POST] = "POST",
    [HTTP_DELETE] = "DELETE",
};

/* Header values must not be able to inject lines (CR/LF) or carry controls. */
static int
header_safe(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return 0;
	return 1;
}

static long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* "Equal jitter": half the exponential delay fixed, half random. */
static long
backoff_ms(int tries_done)
{
	long d = (long)BACKOFF_BASE_MS << (tries_done - 1);
	unsigned int r = 0;

	if (d > BACKOFF_CAP_MS || d <= 0)
		d = BACKOFF_CAP_MS;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (unsigned int)now_ms();
	return d / 2 + (long)(r % (unsigned int)(d / 2 + 1));
}

/* Retry-After in whole seconds (RFC 9110 10.2.3; HTTP dates are not used by Stripe). */
static long
retry_after_ms(const char *v)
{
	long s = 0;

	if (v == NULL || *v == '\0' || strlen(v) > 4)
		return -1;
	for (; *v; v++) {
		if (*v < '0' || *v > '9')
			return -1;
		s = s * 10 + (*v - '0');
	}
	return s * 1000;
}

/*
 * Whether a try that ended with status (0: no response) should be
 * repeated.  Stripe-Should-Retry, when present, overrides our own
 * reading of the status (docs.stripe.com/error-low-level#idempotency).
 */
static int
retryable(long status, const char *should_retry)
{
	if (status > 0 && should_retry != NULL) {
		if (strcasecmp(should_retry, "true") == 0)
			return 1;
		if (strcasecmp(should_retry, "false") == 0)
			return 0;
	}
	return status == 0 || status == 409 || status == 429 || status >= 500;
}

/*
 * Logs Stripe's error type/code/param, never the message (it can quote
 * the key), and says whether Stripe refused an Idempotency-Key reused
 * with other parameters.
 */
static int
log_stripe_error(enum http_method method, const char *path, long status,
		 const struct http_response *resp)
{
	struct json_object *root = NULL;
	const char *type = NULL, *code = NULL, *param = NULL;
	int key_reused;

	if (jsonget_parse(buf_str(&resp->body), resp->body.len, &root) == OUT_OK) {
		type = jsonget_path_str(root, "error.type");
		code = jsonget_path_str(root, "error.code");
		param = jsonget_path_str(root, "error.param");
	}
	log_msg("stripe %s %s: HTTP %ld type=%.64s code=%.64s param=%.128s", method_names[method],
		path, status, type ? type : "-", code ? code : "-", param ? param : "-");
	key_reused = status == 400 && type != NULL && strcmp(type, "idempotency_error") == 0;
	json_object_put(root);
	return key_reused;
}

static enum outcome
stripe_call(enum http_method method, const char *path, const struct form *params,
	    const char *idempotency_key, struct json_object **out)
{
	struct buf url = BUF_INIT(4096), auth = BUF_INIT(1024), version = BUF_INIT(256),
		   idem = BUF_INIT(512);
	struct http_response resp;
	const char *key, *base, *api_version, *headers[8];
	const char *body = params ? form_str(params) : NULL;
	size_t body_len = params ? form_len(params) : 0;
	enum outcome o = OUT_UNAVAILABLE;
	long start = now_ms(), left, wait, ra;
	int tries = 0, h = 0, got;

	*out = NULL;
	memset(&resp, 0, sizeof(resp));
	if (config_require("STRIPE_SECRET_KEY", &key) != OUT_OK) {
		o = OUT_MISCONFIGURED;
		goto out;
	}
	base = config_get_default("STRIPE_API_BASE", STRIPE_DEFAULT_BASE);
	api_version = config_get_default("STRIPE_API_VERSION", STRIPE_DEFAULT_VERSION);
	if (!header_safe(key) || !header_safe(api_version)) {
		log_msg("STRIPE_SECRET_KEY or STRIPE_API_VERSION holds control characters");
		o = OUT_MISCONFIGURED;
		goto out;
	}
	if (path[0] != '/' || buf_addstr(&url, base) == -1) {
		o = OUT_MISCONFIGURED;
		goto out;
	}
	while (url.len > 0 && url.data[url.len - 1] == '/')
		url.data[--url.len] = '\0';
	if (buf_addstr(&url, path) == -1 || !http_url_allowed(buf_str(&url))) {
		log_msg("STRIPE_API_BASE is not an https URL (http only for loopback)");
		o = OUT_MISCONFIGURED;
		goto out;
	}
	if (buf_printf(&auth, "Authorization: Bearer %s", key) == -1 ||
	    buf_printf(&version, "Stripe-Version: %s", api_version) == -1) {
		o = OUT_MISCONFIGURED;
		goto out;
	}
	headers[h++] = buf_str(&auth);
	headers[h++] = buf_str(&version);
	headers[h++] = "Accept: application/json";
	headers[h++] = "User-Agent: billing-cgi/" PACKAGE_VERSION;
	if (method == HTTP_POST) {
		headers[h++] = "Content-Type: application/x-www-form-urlencoded";
		if (idempotency_key != NULL) {
			/* Stripe: keys up to 255 characters. */
			if (strlen(idempotency_key) > 255 || !header_safe(idempotency_key) ||
			    buf_printf(&idem, "Idempotency-Key: %s", idempotency_key) == -1) {
				o = OUT_INTERNAL;
				goto out;
			}
			headers[h++] = buf_str(&idem);
		}
	}
	headers[h] = NULL;

	for (;;) {
		left = LIMIT_HTTP_TOTAL_MS - (now_ms() - start);
		tries++;
		http_response_free(&resp);
		got = http_request(method, buf_str(&url), headers, body, body_len,
				   left < LIMIT_HTTP_TRY_MS ? left : LIMIT_HTTP_TRY_MS, &resp);
		if (got == 0 && resp.status >= 200 && resp.status < 300) {
			if (jsonget_parse(buf_str(&resp.body), resp.body.len, out) != OUT_OK) {
				log_msg(
				    "stripe %s %s: HTTP %ld with a body that is not a JSON object",
				    method_names[method], path, resp.status);
				o = OUT_STRIPE_ERROR;
				goto out;
			}
			o = OUT_OK;
			goto out;
		}
		if (got == 0 && !retryable(resp.status, resp.should_retry)) {
			if (log_stripe_error(method, path, resp.status, &resp))
				o = OUT_IDEMPOTENCY_CONFLICT;
			else if (resp.status == 404 && method != HTTP_POST)
				o = OUT_NOT_FOUND;
			else if (resp.status >= 400 && resp.status < 500 && resp.status != 409 &&
				 resp.status != 429)
				o = OUT_STRIPE_ERROR;
			else
				o = OUT_UNAVAILABLE;
			goto out;
		}
		if (got == 0)
			log_stripe_error(method, path, resp.status, &resp);
		if (tries >= LIMIT_HTTP_TRIES)
			break;
		wait = backoff_ms(tries);
		ra = got == 0 ? retry_after_ms(resp.retry_after) : -1;
		if (ra > RETRY_AFTER_MAX_MS)
			break;
		if (ra > wait)
			wait = ra;
		left = LIMIT_HTTP_TOTAL_MS - (now_ms() - start);
		if (left - wait < MIN_TRY_MS)
			break;
		log_msg("stripe %s %s: try %d failed, retrying in %ld ms", method_names[method],
			path, tries, wait);
		sleep_ms(wait);
	}
	log_msg("stripe %s %s: giving up after %d tries, %ld ms", method_names[method], path, tries,
		now_ms() - start);
	o = OUT_UNAVAILABLE;
out:
	http_response_free(&resp);
	buf_free_secret(&auth);
	buf_free(&version);
	buf_free(&idem);
	buf_free(&url);
	return o;
}

enum outcome
stripe_post(const char *path, const struct form *params, const char *idempotency_key,
	    struct json_object **out)
{
	return stripe_call(HTTP_POST, path, params, idempotency_key, out);
}

enum outcome
stripe_get(const char *path, struct json_object **out)
{
	return stripe_call(HTTP_GET, path, NULL, NULL, out);
}

enum outcome
stripe_delete(const char *path, const struct form *params, struct json_object **out)
{
	struct buf target = BUF_INIT(4096);
	enum outcome o;

	*out = NULL;
	/* Stripe's libraries send DELETE parameters in the query string. */
	if (buf_addstr(&target, path) == -1 ||
	    (params != NULL && form_len(params) > 0 &&
	     buf_printf(&target, "?%s", form_str(params)) == -1)) {
		buf_free(&target);
		return OUT_INTERNAL;
	}
	o = stripe_call(HTTP_DELETE, buf_str(&target), NULL, NULL, out);
	buf_free(&target);
	return o;
}

int
stripe_id_valid(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	for (n = 0; s[n] != '\0'; n++)
		if (n >= 255 || !((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
				  (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
			return 0;
	return n > 0;
}

static char *
hex_with_prefix(const char *prefix, const unsigned char *raw, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t plen = strlen(prefix), i;
	char *s = mem_alloc(plen + 1 + 2 * n + 1), *p = s;

	memcpy(p, prefix, plen);
	p += plen;
	*p++ = '-';
	for (i = 0; i < n; i++) {
		*p++ = hex[raw[i] >> 4];
		*p++ = hex[raw[i] & 15];
	}
	*p = '\0';
	return s;
}

char *
stripe_idempotency_key(const char *prefix, const char *const *parts, int nparts)
{
	EVP_MD_CTX *ctx;
	unsigned char md[EVP_MAX_MD_SIZE], len[8];
	unsigned int mdlen = 0;
	size_t n;
	int i, j, okay;

	if ((ctx = EVP_MD_CTX_new()) == NULL)
		response_fatal("out of memory");
	okay = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
	/* Length-prefixed parts: ("ab","c") and ("a","bc") give different keys. */
	for (i = 0; okay && i < nparts; i++) {
		n = parts[i] ? strlen(parts[i]) : 0;
		for (j = 0; j < 8; j++)
			len[j] = (unsigned char)((unsigned long long)n >> (56 - 8 * j));
		okay = EVP_DigestUpdate(ctx, len, sizeof(len)) == 1 &&
		       EVP_DigestUpdate(ctx, parts[i] ? parts[i] : "", n) == 1;
	}
	okay = okay && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
	EVP_MD_CTX_free(ctx);
	if (!okay)
		response_fatal("SHA-256 unavailable");
	return hex_with_prefix(prefix, md, mdlen);
}

char *
stripe_random_idempotency_key(const char *prefix)
{
	unsigned char raw[16];

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		response_fatal("no randomness for an idempotency key");
	return hex_with_prefix(prefix, raw, sizeof(raw));
}
