#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

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

	if (url == NULL || (u = curl_url()) == NULL)
		goto out;
	/* Parse exactly as libcurl will connect: no guessing of a scheme. */
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		goto out;
	/* Credentials in the URL would end up in logs and proxies: never. */
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
		goto out;
	if (strcasecmp(scheme, "https") == 0)
		allowed = host[0] != '\0';
	else if (strcasecmp(scheme, "http") == 0)
		allowed = http_loopback_host(host);
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_url_cleanup(u);
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
		resp->should_retry = resp->retry_after = NULL;
		return n;
	}
	if (n > LIMIT_HEADER_VALUE)
		return n;
	capture_header(line, n, "Stripe-Should-Retry", &resp->should_retry);
	capture_header(line, n, "Retry-After", &resp->retry_after);
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

int
http_curl_init(void)
{
	static int done;

	if (!done) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return -1;
		done = 1;
	}
	return 0;
}

int
http_request(enum http_method method, const char *url, const char *const *headers, const char *body,
	     size_t len, long timeout_ms, struct http_response *resp)
{
	CURL *c = NULL;
	struct curl_slist *list = NULL, *tmp;
	CURLcode rc;
	size_t i;
	int ret = -1;

	memset(resp, 0, sizeof(*resp));
	buf_init(&resp->body, LIMIT_HTTP_RESPONSE);
	if ((unsigned)method >= HTTP__MAX || timeout_ms <= 0)
		return -1;
	if (!http_url_allowed(url)) {
		log_failure(method, url, "URL not allowed (https, or http to loopback only)");
		return -1;
	}
	if (http_curl_init() == -1 || (c = curl_easy_init()) == NULL) {
		log_failure(method, url, "cannot initialise libcurl");
		goto out;
	}
	/* Out of memory ends the request (mem.h): a list append only fails that way. */
	for (i = 0; headers && headers[i]; i++) {
		if ((tmp = curl_slist_append(list, headers[i])) == NULL)
			response_fatal("out of memory");
		list = tmp;
	}
	/* Small bodies: no "Expect: 100-continue" round trip. */
	if ((tmp = curl_slist_append(list, "Expect:")) == NULL)
		response_fatal("out of memory");
	list = tmp;

	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
			 timeout_ms < LIMIT_HTTP_CONNECT_MS ? timeout_ms
							    : (long)LIMIT_HTTP_CONNECT_MS);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE, (long)LIMIT_HTTP_RESPONSE);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
	switch (method) {
	case HTTP_POST:
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
		break;
	case HTTP_DELETE:
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
		if (body && len) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		}
		break;
	default:
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		break;
	}

	rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		log_failure(method, url,
			    rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED
				? "response too large"
				: curl_easy_strerror(rc));
		resp->status = 0;
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
	ret = resp->status > 0 ? 0 : -1;
out:
	curl_slist_free_all(list);
	curl_easy_cleanup(c);
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
	resp->should_retry = resp->retry_after = NULL;
	resp->status = 0;
}
