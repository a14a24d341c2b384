/*
 * The only user of libcurl for SMTP (RFC 5321); http.c owns HTTPS.
 * libcurl owns the connection: the greeting, EHLO, STARTTLS (RFC 3207),
 * AUTH (RFC 4954), dot-stuffing, and reusing one connection for every
 * message of a billing-mailer run.  This module owns the policy around it:
 *
 *   SMTP_URL       smtp://host:587 (STARTTLS required) or smtps://host:465
 *                  (TLS from the first byte).  Plain smtp:// without TLS
 *                  only to a loopback host (127.0.0.1, ::1, localhost),
 *                  where STARTTLS is still used when the server offers it.
 *                  A path names the EHLO domain (smtp://host:587/app.example).
 *                  No credentials, query or fragment in the URL.
 *   SMTP_USERNAME, SMTP_PASSWORD  AUTH, both or neither (never logged).
 *   SMTP_CA_FILE   PEM bundle to verify the server with instead of the
 *                  system's.  Certificate and host name are always verified.
 *   SMTP_TIMEOUT   seconds for one whole message (default 30, 1..300).
 *
 * A result says what became of one message: sent; temporary (retry
 * later: no connection, timeout, TLS failure, any 4xx); or permanent (a
 * 5xx to RCPT TO or to the message).  "fatal" marks failures that are not
 * the message's own (the server is down or stalls, refuses STARTTLS, our
 * credentials or sender): every other message would fail the same way,
 * so the run stops there instead of burning their attempts.
 */
#ifndef SMTP_H
#define SMTP_H

#include <stddef.h>

#include "limits.h"
#include "outcome.h"

struct smtp;

enum smtp_status {
	SMTP_SENT,
	SMTP_TEMPORARY,
	SMTP_PERMANENT,
};

struct smtp_result {
	enum smtp_status status;
	int fatal;			/* stop sending in this run */
	int code;			/* the last SMTP reply code, 0 when none */
	char brief[64];			/* for log lines: "SMTP 550 at RCPT", "connect failed" */
	char reason[LIMIT_MAIL_REASON];	/* for the row: brief plus the server's or libcurl's words */
};

/*
 * Whether url may be SMTP_URL (rules above).  When it may, *starttls is
 * 1 when STARTTLS is required, 0 when it is optional (loopback) or
 * implicit (smtps).
 */
int smtp_url_allowed(const char *url, int *starttls);

/*
 * Reads the settings above and prepares a connection (nothing is
 * connected yet).  OUT_OK and *s, or OUT_MISCONFIGURED with a log line
 * naming the setting.
 */
enum outcome smtp_open(struct smtp **s) __attribute__((warn_unused_result));

/*
 * Sends msg (len bytes, CRLF lines) from the envelope sender to one
 * recipient (both plain addresses).  Always fills *res.
 */
void smtp_send(struct smtp *s, const char *from, const char *to, const char *msg, size_t len,
    struct smtp_result *res);

/* The most one smtp_send may take, connecting included (SMTP_TIMEOUT), in ms. */
long smtp_timeout_ms(const struct smtp *s);

/* Closes the connection (QUIT); NULL is fine. */
void smtp_close(struct smtp *s);

#endif
