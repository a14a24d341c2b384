#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* We call libcurl through the pointers below, not the type-checking macros. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <dlfcn.h>

#include "http.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"

static const char *const method_names[HTTP__MAX] = {
    [HTTP_GET] = "GET",
    [HTTP_POST] = "POST",
    [HTTP_DELETE] = "DELETE",
};

/*
 * libcurl is loaded when the first exchange needs it, not at exec time:
 * its dependency tree (nghttp2, ssh2, rtmp, psl, brotli, zstd...) cost a
 * plain CGI about 1 ms of dynamic linking on every request, and most
 * requests (usage, the webhook in event mode) never call Stripe.  The
 * SONAME has been libcurl.so.4 since libcurl 7.16 (2006).
 */
#define CURL_SONAME "libcurl.so.4"

static struct {
	int loaded;	/* 1 loaded, -1 failed for good */
	CURLcode (*global_init)(long);
	void (*global_cleanup)(void);
	CURL *(*easy_init)(void);
	void (*easy_reset)(CURL *);
	void (*easy_cleanup)(CURL *);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_perform)(CURL *);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	const char *(*easy_strerror)(CURLcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	CURLU *(*url)(void);
	void (*url_cleanup)(CURLU *);
	CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
	CURLUcode (*url_get)(const CURLU *, CURLUPart, char **, unsigned int);
	void (*free)(void *);
} lc;

/* 0 when libcurl is usable; -1 (logged once per process) when it is not installed. */
static int
curl_load(void)
{
	void *h;

	if (lc.loaded)
		return lc.loaded == 1 ? 0 : -1;
	lc.loaded = -1;
	if ((h = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		log_msg("cannot load %s", CURL_SONAME);
		return -1;
	}
#define SYM(field, name) if ((*(void **)&lc.field = dlsym(h, name)) == NULL) goto missing
	SYM(global_init, "curl_global_init");
	SYM(global_cleanup, "curl_global_cleanup");
	SYM(easy_init, "curl_easy_init");
	SYM(easy_reset, "curl_easy_reset");
	SYM(easy_cleanup, "curl_easy_cleanup");
	SYM(easy_setopt, "curl_easy_setopt");
	SYM(easy_perform, "curl_easy_perform");
	SYM(easy_getinfo, "curl_easy_getinfo");
	SYM(easy_strerror, "curl_easy_strerror");
	SYM(slist_append, "curl_slist_append");
	SYM(slist_free_all, "curl_slist_free_all");
	SYM(url, "curl_url");
	SYM(url_cleanup, "curl_url_cleanup");
	SYM(url_set, "curl_url_set");
	SYM(url_get, "curl_url_get");
	SYM(free, "curl_free");
#undef SYM
	lc.loaded = 1;
	return 0;
missing:
	log_msg("%s lacks a function we need (libcurl >= 7.62 required)", CURL_SONAME);
	return -1;
}

int
http_loopback_host(const char *host)
{
	return strcasecmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 ||
	       strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0;
}

int
http_url_allowed(const char *url)
{
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *user = NULL;
	int allowed = 0;

	if (url == NULL || curl_load() == -1)
		return 0;
	if ((u = lc.url()) == NULL)
		goto out;
	/* Parse exactly as libcurl will connect: no guessing of a scheme. */
	if (lc.url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    lc.url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    lc.url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		goto out;
	/* Credentials in the URL would end up in logs and proxies: never. */
	if (lc.url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
		goto out;
	if (strcasecmp(scheme, "https") == 0)
		allowed = host[0] != '\0';
	else if (strcasecmp(scheme, "http") == 0)
		allowed = http_loopback_host(host);
out:
	lc.free(scheme);
	lc.free(host);
	lc.free(user);
	lc.url_cleanup(u);
	return allowed;
}

static size_t
on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct http_response *resp = arg;
	size_t n = size * nmemb;

	/* Returning less than n makes libcurl abort with CURLE_WRITE_ERROR. */
	if (buf_add(&resp->body, data, n) == -1)
		return 0;
	return n;
}

/* Copies the value of header line (name: value\r\n) when it is `name`. */
static void
capture_header(const char *line, size_t n, const char *name, char **dst)
{
	size_t nl = strlen(name);
	const char *v, *e;

	if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
		return;
	v = line + nl + 1;
	e = line + n;
	while (v < e && (*v == ' ' || *v == '\t'))
		v++;
	while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
		e--;
	free(*dst);
	*dst = mem_strndup(v, (size_t)(e - v));
}

static size_t
on_header(char *line, size_t size, size_t nmemb, void *arg)
{
	struct http_response *resp = arg;
	size_t n = size * nmemb;

	/* A new status line (e.g. after 100 Continue): forget earlier headers. */
	if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
		free(resp->should_retry);
		free(resp->retry_after);
		free(resp->replayed);
		resp->should_retry = resp->retry_after = resp->replayed = NULL;
		return n;
	}
	if (n > LIMIT_HEADER_VALUE)
		return n;
	capture_header(line, n, "Stripe-Should-Retry", &resp->should_retry);
	capture_header(line, n, "Retry-After", &resp->retry_after);
	capture_header(line, n, "Idempotent-Replayed", &resp->replayed);
	return n;
}

/* The path of url without scheme, host or query, for log lines. */
static void
log_failure(enum http_method method, const char *url, const char *what)
{
	const char *p = strstr(url, "://");
	size_t n;

	p = p ? strchr(p + 3, '/') : NULL;
	if (p == NULL)
		p = "/";
	n = strcspn(p, "?#");
	log_msg("http %s %.*s failed: %s", method_names[method], (int)(n > 200 ? 200 : n), p, what);
}

/*
 * One easy handle per process, reset before each use: it keeps its
 * connection cache, so a FastCGI process reuses its TLS connection to
 * Stripe across requests.  Nothing of one exchange survives the reset
 * but that cache (options, headers and callbacks are set anew).
 */
static CURL *handle;

static void
handle_release(void)
{
	lc.easy_cleanup(handle);
	handle = NULL;
	lc.global_cleanup();
}

int
http_curl_init(void)
{
	static int done;

	if (done)
		return 0;
	if (curl_load() == -1 || lc.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	done = 1;
	return 0;
}

static CURL *
handle_get(void)
{
	if (handle != NULL) {
		lc.easy_reset(handle);
		return handle;
	}
	if (http_curl_init() == -1 || (handle = lc.easy_init()) == NULL)
		return NULL;
	atexit(handle_release);
	return handle;
}

int
http_request(enum http_method method, const char *url, const char *const *headers, const char *body,
	     size_t len, long timeout_ms, size_t max_body, struct http_response *resp)
{
	CURL *c = NULL;
	struct curl_slist *list = NULL, *tmp;
	CURLcode rc;
	size_t i;
	int ret = -1;

	memset(resp, 0, sizeof(*resp));
	buf_init(&resp->body, max_body);
	if ((unsigned)method >= HTTP__MAX || timeout_ms <= 0)
		return -1;
	if (!http_url_allowed(url)) {
		log_failure(method, url, "URL not allowed (https, or http to loopback only)");
		return -1;
	}
	if ((c = handle_get()) == NULL) {
		log_failure(method, url, "cannot initialise libcurl");
		goto out;
	}
	/* Out of memory ends the request (mem.h): a list append only fails that way. */
	for (i = 0; headers && headers[i]; i++) {
		if ((tmp = lc.slist_append(list, headers[i])) == NULL)
			response_fatal("out of memory");
		list = tmp;
	}
	/* Small bodies: no "Expect: 100-continue" round trip. */
	if ((tmp = lc.slist_append(list, "Expect:")) == NULL)
		response_fatal("out of memory");
	list = tmp;

	lc.easy_setopt(c, CURLOPT_URL, url);
	lc.easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	lc.easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	lc.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	lc.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	lc.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	lc.easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
			 timeout_ms < LIMIT_HTTP_CONNECT_MS ? timeout_ms
							    : (long)LIMIT_HTTP_CONNECT_MS);
	lc.easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	lc.easy_setopt(c, CURLOPT_MAXFILESIZE, (long)max_body);
	lc.easy_setopt(c, CURLOPT_HTTPHEADER, list);
	lc.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	lc.easy_setopt(c, CURLOPT_WRITEDATA, resp);
	lc.easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	lc.easy_setopt(c, CURLOPT_HEADERDATA, resp);
	switch (method) {
	case HTTP_POST:
		lc.easy_setopt(c, CURLOPT_POST, 1L);
		lc.easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		lc.easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
		break;
	case HTTP_DELETE:
		lc.easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
		if (body && len) {
			lc.easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
			lc.easy_setopt(c, CURLOPT_POSTFIELDS, body);
		}
		break;
	default:
		lc.easy_setopt(c, CURLOPT_HTTPGET, 1L);
		break;
	}

	rc = lc.easy_perform(c);
	if (rc != CURLE_OK) {
		log_failure(method, url,
			    rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED
				? "response too large"
				: lc.easy_strerror(rc));
		resp->status = 0;
		goto out;
	}
	lc.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
	ret = resp->status > 0 ? 0 : -1;
out:
	/* The handle keeps a pointer to the list until the next reset: drop it. */
	if (c != NULL)
		lc.easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	lc.slist_free_all(list);
	return ret;
}

void
http_response_free(struct http_response *resp)
{
	if (resp == NULL)
		return;
	buf_free(&resp->body);
	free(resp->should_retry);
	free(resp->retry_after);
	free(resp->replayed);
	resp->should_retry = resp->retry_after = resp->replayed = NULL;
	resp->status = 0;
}
