#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>

#include "config.h"
#include "http.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "smtp.h"

/* Where in the SMTP dialogue a failure happened: it decides whose fault it is. */
enum stage {
	STAGE_CONNECT,	/* greeting, EHLO, STARTTLS, TLS */
	STAGE_AUTH,
	STAGE_MAIL,
	STAGE_RCPT,
	STAGE_DATA,	/* DATA and the message itself */
	STAGE__MAX
};

static const char *const stage_names[STAGE__MAX] = {
	[STAGE_CONNECT] = "connect",
	[STAGE_AUTH] = "AUTH",
	[STAGE_MAIL] = "MAIL FROM",
	[STAGE_RCPT] = "RCPT TO",
	[STAGE_DATA] = "DATA",
};

struct smtp {
	CURL *curl;
	long timeout_ms;
	/* The message being sent. */
	const char *data;
	size_t len, off;
	enum stage stage;
	int quitting;
	char reply[160];		/* the server's last reply line, sanitised */
	char errbuf[CURL_ERROR_SIZE];
};

int
smtp_url_allowed(const char *url, int *starttls)
{
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
	int allowed = 0;

	*starttls = 0;
	if (url == NULL || (u = curl_url()) == NULL)
		goto out;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
		goto out;
	/* Credentials belong in SMTP_USERNAME/SMTP_PASSWORD, never in a URL that gets logged. */
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK)
		goto out;
	if (strcasecmp(scheme, "smtps") == 0)
		allowed = 1;
	else if (strcasecmp(scheme, "smtp") == 0) {
		allowed = 1;
		*starttls = !http_loopback_host(host);
	}
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(query);
	curl_free(frag);
	curl_url_cleanup(u);
	return allowed;
}

static size_t
on_read(char *dst, size_t size, size_t nmemb, void *arg)
{
	struct smtp *s = arg;
	size_t n = size * nmemb, left = s->len - s->off;

	if (n > left)
		n = left;
	memcpy(dst, s->data + s->off, n);
	s->off += n;
	return n;
}

/*
 * libcurl's debug stream is the one place it shows the SMTP dialogue:
 * commands tell the stage, replies the server's words.  Nothing of it is
 * printed; AUTH lines (credentials) are only matched against verbs.
 */
static int
on_debug(CURL *c, curl_infotype type, char *data, size_t n, void *arg)
{
	static const struct {
		const char *verb;
		enum stage stage;
	} verbs[] = {
		{ "EHLO", STAGE_CONNECT }, { "HELO", STAGE_CONNECT }, { "STARTTLS", STAGE_CONNECT },
		{ "AUTH", STAGE_AUTH }, { "MAIL", STAGE_MAIL }, { "RCPT", STAGE_RCPT },
		{ "DATA", STAGE_DATA }, { "QUIT", STAGE__MAX },
	};
	struct smtp *s = arg;
	size_t i, len;

	(void)c;
	if (type == CURLINFO_HEADER_OUT) {
		for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
			len = strlen(verbs[i].verb);
			if (n > len && strncasecmp(data, verbs[i].verb, len) == 0 &&
			    (data[len] == ' ' || data[len] == '\r')) {
				/* After QUIT, keep the stage and reply that made libcurl give up. */
				if (verbs[i].stage == STAGE__MAX)
					s->quitting = 1;
				else
					s->stage = verbs[i].stage;
			}
		}
	} else if (type == CURLINFO_HEADER_IN && !s->quitting) {
		/* The last line of a (possibly multi-line) reply, printable ASCII only. */
		while (n > 0 && (data[n - 1] == '\r' || data[n - 1] == '\n'))
			n--;
		for (i = n; i > 0 && data[i - 1] != '\n'; i--)
			;
		len = n - i < sizeof(s->reply) - 1 ? n - i : sizeof(s->reply) - 1;
		for (size_t k = 0; k < len; k++) {
			unsigned char ch = (unsigned char)data[i + k];
			s->reply[k] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
		}
		s->reply[len] = '\0';
	}
	return 0;
}

enum outcome
smtp_open(struct smtp **out)
{
	const char *url, *user = config_get("SMTP_USERNAME"), *pass = config_get("SMTP_PASSWORD");
	const char *ca = config_get("SMTP_CA_FILE");
	struct smtp *s = NULL;
	long timeout_s;
	int starttls;
	enum outcome rc;

	*out = NULL;
	if ((rc = config_require("SMTP_URL", &url)) != OUT_OK ||
	    (rc = config_get_long("SMTP_TIMEOUT", LIMIT_SMTP_TIMEOUT_S, 1, LIMIT_SMTP_TIMEOUT_MAX_S,
				  &timeout_s)) !=
	    OUT_OK)
		return rc;
	if (!smtp_url_allowed(url, &starttls)) {
		log_msg("setting SMTP_URL must be smtp://host[:port] or smtps://host[:port],"
		    " without credentials, query or fragment");
		return OUT_MISCONFIGURED;
	}
	if ((user == NULL) != (pass == NULL)) {
		log_msg("settings SMTP_USERNAME and SMTP_PASSWORD go together");
		return OUT_MISCONFIGURED;
	}
	if (ca && access(ca, R_OK) != 0) {
		log_msg("setting SMTP_CA_FILE names a file that cannot be read");
		return OUT_MISCONFIGURED;
	}
	s = mem_calloc(1, sizeof(*s));
	if (http_curl_init() == -1 || (s->curl = curl_easy_init()) == NULL) {
		log_msg("smtp: cannot initialise libcurl");
		free(s);
		return OUT_INTERNAL;
	}
	s->timeout_ms = timeout_s * 1000;
	curl_easy_setopt(s->curl, CURLOPT_URL, url);
	curl_easy_setopt(s->curl, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
	/* CURLUSESSL_ALL: no STARTTLS offered (or a stripped one) is a failure, not plain text. */
	curl_easy_setopt(s->curl, CURLOPT_USE_SSL, starttls ? (long)CURLUSESSL_ALL :
	    (long)CURLUSESSL_TRY);
	curl_easy_setopt(s->curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(s->curl, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(s->curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (ca)
		curl_easy_setopt(s->curl, CURLOPT_CAINFO, ca);
	if (user) {
		curl_easy_setopt(s->curl, CURLOPT_USERNAME, user);
		curl_easy_setopt(s->curl, CURLOPT_PASSWORD, pass);
	}
	curl_easy_setopt(s->curl, CURLOPT_CONNECTTIMEOUT_MS,
	    s->timeout_ms < LIMIT_SMTP_CONNECT_MS ? s->timeout_ms : (long)LIMIT_SMTP_CONNECT_MS);
	curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, s->timeout_ms);
	/* Each reply, also the QUIT's when a connection is closed (120 s in libcurl otherwise). */
	curl_easy_setopt(s->curl, CURLOPT_SERVER_RESPONSE_TIMEOUT, timeout_s);
	curl_easy_setopt(s->curl, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(s->curl, CURLOPT_READFUNCTION, on_read);
	curl_easy_setopt(s->curl, CURLOPT_READDATA, s);
	curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->errbuf);
	curl_easy_setopt(s->curl, CURLOPT_VERBOSE, 1L);
	curl_easy_setopt(s->curl, CURLOPT_DEBUGFUNCTION, on_debug);
	curl_easy_setopt(s->curl, CURLOPT_DEBUGDATA, s);
	*out = s;
	return OUT_OK;
}

/* Whose fault a failed send is, from libcurl's code, the stage and the reply code. */
static void
judge(struct smtp *s, CURLcode rc, struct smtp_result *res)
{
	int code = res->code, message_stage = s->stage == STAGE_RCPT || s->stage == STAGE_DATA;
	const char *words = s->reply[0] ? s->reply : s->errbuf[0] ? s->errbuf :
	    curl_easy_strerror(rc);

	res->status = SMTP_TEMPORARY;
	res->fatal = 1;
	if (rc == CURLE_LOGIN_DENIED) {
		snprintf(res->brief, sizeof(res->brief), "AUTH refused (SMTP %d)", code);
	} else if (code >= 400 && code < 600 && code != 421 && message_stage) {
		/* The recipient or this message: the next message may well go through. */
		res->status = code >= 500 ? SMTP_PERMANENT : SMTP_TEMPORARY;
		res->fatal = 0;
		snprintf(res->brief, sizeof(res->brief), "SMTP %d at %s", code,
		    stage_names[s->stage]);
	} else if (code >= 400 && code < 600) {
		snprintf(res->brief, sizeof(res->brief), "SMTP %d at %s", code,
		    stage_names[s->stage]);
	} else {
		if (rc == CURLE_USE_SSL_FAILED)
			words = "the server does not offer STARTTLS";
		else
			words = s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc);
		snprintf(res->brief, sizeof(res->brief), "%s failed at %s",
		    rc == CURLE_OPERATION_TIMEDOUT ? "timeout" : "connection",
		    stage_names[s->stage]);
	}
	snprintf(res->reason, sizeof(res->reason), "%s: %.200s", res->brief, words);
}

void
smtp_send(struct smtp *s, const char *from, const char *to, const char *msg, size_t len,
    struct smtp_result *res)
{
	struct curl_slist *rcpt = NULL;
	char path[LIMIT_MAIL_ADDRESS + 3];
	long code = 0;
	CURLcode rc;

	memset(res, 0, sizeof(*res));
	s->data = msg;
	s->len = len;
	s->off = 0;
	s->stage = STAGE_CONNECT;
	s->quitting = 0;
	s->reply[0] = s->errbuf[0] = '\0';
	snprintf(path, sizeof(path), "<%s>", to);
	if ((rcpt = curl_slist_append(NULL, path)) == NULL)
		response_fatal("out of memory");
	snprintf(path, sizeof(path), "<%s>", from);
	curl_easy_setopt(s->curl, CURLOPT_MAIL_FROM, path);
	curl_easy_setopt(s->curl, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(s->curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
	rc = curl_easy_perform(s->curl);
	curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
	res->code = (int)code;
	if (rc == CURLE_OK) {
		res->status = SMTP_SENT;
		snprintf(res->brief, sizeof(res->brief), "sent (SMTP %d)", res->code);
		snprintf(res->reason, sizeof(res->reason), "%s", res->brief);
	} else
		judge(s, rc, res);
	curl_easy_setopt(s->curl, CURLOPT_MAIL_RCPT, NULL);
	curl_slist_free_all(rcpt);
}

long
smtp_timeout_ms(const struct smtp *s)
{
	return s->timeout_ms;
}

void
smtp_close(struct smtp *s)
{
	if (s == NULL)
		return;
	/* The QUIT to a server that stalled must not hold the run up for long. */
	curl_easy_setopt(s->curl, CURLOPT_SERVER_RESPONSE_TIMEOUT, 2L);
	curl_easy_cleanup(s->curl);
	free(s);
}
