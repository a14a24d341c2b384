#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "config.h"
#include "hex.h"
#include "http.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "stripe.h"

#define STRIPE_DEFAULT_BASE "https://api.stripe.com"
#define STRIPE_DEFAULT_VERSION "2026-07-29.dahlia"


/*
 * Within one request: a Retry-After or backoff over 2 s means "not within
 * this request".  A program may set another (stripe_set_policy).
 */
const struct stripe_policy stripe_request_policy = {
	.tries = LIMIT_HTTP_TRIES,
	.call_ms = LIMIT_HTTP_TOTAL_MS,
	.try_ms = LIMIT_HTTP_TRY_MS,
	.backoff_cap_ms = 2000,
	.retry_after_max_ms = 2000,
	.max_response = LIMIT_HTTP_RESPONSE,
	.interval_ms = 0,
};
/* The policy in force: the request policy, or a copy of the one a program set. */
static struct stripe_policy custom_policy;
static const struct stripe_policy *policy = &stripe_request_policy;
/* Pacing: when the next request may start (CLOCK_MONOTONIC ms; see pace()). */
static long next_start_ms;
static unsigned long requests_sent;

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
	long d = tries_done < 20 ? (long)LIMIT_HTTP_BACKOFF_BASE_MS << (tries_done - 1) : 0;
	unsigned int r = 0;

	if (d > policy->backoff_cap_ms || d <= 0)
		d = policy->backoff_cap_ms;
	if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
		r = (unsigned int)now_ms();
	return d / 2 + (long)(r % (unsigned int)(d / 2 + 1));
}

/*
 * Pacing: the next request starts interval_ms after the previous answer
 * at the earliest.  Counting from the answer rather than from our start
 * keeps Stripe from seeing two requests closer than that even when one
 * was slow to leave (loading libcurl, a new TLS connection).
 */
static void
pace(void)
{
	long now = now_ms();

	if (policy->interval_ms > 0 && next_start_ms > now)
		sleep_ms(next_start_ms - now);
	requests_sent++;
}

static void
paced(void)
{
	if (policy->interval_ms > 0)
		next_start_ms = now_ms() + policy->interval_ms;
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

	if (jsonget_parse_loose(buf_str(&resp->body), resp->body.len, &root) == OUT_OK) {
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
	    const char *idempotency_key, struct json_object **out, int *replayed)
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
	if (replayed != NULL)
		*replayed = 0;
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
			if (strlen(idempotency_key) > LIMIT_IDEMPOTENCY_KEY_LEN || !header_safe(idempotency_key) ||
			    buf_printf(&idem, "Idempotency-Key: %s", idempotency_key) == -1) {
				o = OUT_INTERNAL;
				goto out;
			}
			headers[h++] = buf_str(&idem);
		}
	}
	headers[h] = NULL;

	for (;;) {
		pace();
		left = policy->call_ms - (now_ms() - start);
		tries++;
		http_response_free(&resp);
		got = http_request(method, buf_str(&url), headers, body, body_len,
				   left < policy->try_ms ? left : policy->try_ms, policy->max_response,
				   &resp);
		paced();
		if (got == 0 && resp.status >= 200 && resp.status < 300) {
			/*
			 * Loose: Stripe's objects carry text its users typed (metadata,
			 * names), where JSON may hold a lone surrogate escape; refusing
			 * it would make that object unreadable for good.  Getters never
			 * return a string holding \u0000.
			 */
			if (jsonget_parse_loose(buf_str(&resp.body), resp.body.len, out) != OUT_OK) {
				log_msg(
				    "stripe %s %s: HTTP %ld with a body that is not a JSON object",
				    method_names[method], path, resp.status);
				o = OUT_STRIPE_ERROR;
				goto out;
			}
			if (replayed != NULL)
				*replayed =
				    resp.replayed != NULL && strcasecmp(resp.replayed, "true") == 0;
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
		if (tries >= policy->tries)
			break;
		wait = backoff_ms(tries);
		ra = got == 0 ? retry_after_ms(resp.retry_after) : -1;
		if (ra > policy->retry_after_max_ms) {
			log_msg("stripe %s %s: Retry-After %ld s is longer than we wait",
				method_names[method], path, ra / 1000);
			break;
		}
		if (ra > wait)
			wait = ra;
		left = policy->call_ms - (now_ms() - start);
		if (left - wait < LIMIT_HTTP_MIN_TRY_MS)
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
	return stripe_call(HTTP_POST, path, params, idempotency_key, out, NULL);
}

enum outcome
stripe_post_replayed(const char *path, const struct form *params, const char *idempotency_key,
		     struct json_object **out, int *replayed)
{
	return stripe_call(HTTP_POST, path, params, idempotency_key, out, replayed);
}

enum outcome
stripe_get(const char *path, struct json_object **out)
{
	return stripe_call(HTTP_GET, path, NULL, NULL, out, NULL);
}

/* path?params in target (Stripe takes GET and DELETE parameters in the query string). */
static int
path_with_query(struct buf *target, const char *path, const struct form *params)
{
	return buf_addstr(target, path) == -1 ||
	    (params != NULL && form_len(params) > 0 &&
	     buf_printf(target, "?%s", form_str(params)) == -1) ? -1 : 0;
}

enum outcome
stripe_delete(const char *path, const struct form *params, struct json_object **out)
{
	struct buf target = BUF_INIT(4096);
	enum outcome o;

	*out = NULL;
	if (path_with_query(&target, path, params) == -1) {
		buf_free(&target);
		return OUT_INTERNAL;
	}
	o = stripe_call(HTTP_DELETE, buf_str(&target), NULL, NULL, out, NULL);
	buf_free(&target);
	return o;
}

enum outcome
stripe_list(const char *path, const struct form *query, struct json_object **page,
	    struct json_object **data, int *has_more)
{
	struct buf url = BUF_INIT(LIMIT_QUERY_STRING);
	const char *object;
	enum outcome o;

	*page = *data = NULL;
	*has_more = 0;
	if (path_with_query(&url, path, query) == -1) {
		buf_free(&url);
		return OUT_INTERNAL;
	}
	o = stripe_call(HTTP_GET, buf_str(&url), NULL, NULL, page, NULL);
	if (o == OUT_OK) {
		object = jsonget_str(*page, "object");
		*data = jsonget_array(*page, "data");
		if (object == NULL || strcmp(object, "list") != 0 || *data == NULL ||
		    jsonget_bool(*page, "has_more", has_more) == -1) {
			log_msg("stripe GET %s: the answer is not a list", path);
			json_object_put(*page);
			*page = *data = NULL;
			o = OUT_STRIPE_ERROR;
		}
	}
	buf_free(&url);
	return o;
}

void
stripe_set_policy(const struct stripe_policy *p)
{
	if (p != NULL)
		custom_policy = *p;
	policy = p != NULL ? &custom_policy : &stripe_request_policy;
}

unsigned long
stripe_requests_sent(void)
{
	return requests_sent;
}

static char *
hex_with_prefix(const char *prefix, const unsigned char *raw, size_t n)
{
	size_t plen = strlen(prefix);
	char *s = mem_alloc(plen + 1 + 2 * n + 1);

	memcpy(s, prefix, plen);
	s[plen] = '-';
	hex_encode(s + plen + 1, raw, n);
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

char *
stripe_client_idempotency_key(const char *prefix, const char *user_id, const char *client_key)
{
	const char *parts[2] = {user_id, client_key};

	if (client_key == NULL)
		return stripe_random_idempotency_key(prefix);
	/* Scoped to the user: another user's identical key is another request. */
	return stripe_idempotency_key(prefix, parts, 2);
}

int
stripe_id_valid(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	for (n = 0; s[n] != '\0'; n++)
		if (n >= LIMIT_STRIPE_ID_LEN ||
		    !((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
		      (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
			return 0;
	return n > 0;
}

int
stripe_page_url_ok(const char *url)
{
	return http_url_allowed(url);
}
