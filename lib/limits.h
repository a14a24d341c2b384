/*
 * Every size and time limit of billing-cgi, in one place.
 * They bound what one request can make us read, allocate, send or wait
 * for, whether the process serves one request (CGI) or many (FastCGI).
 */
#ifndef LIMITS_H
#define LIMITS_H

/* Request bodies: default cap, overridable by BILLING_MAX_BODY up to the hard ceiling. */
#define LIMIT_BODY_DEFAULT	(1024 * 1024)
#define LIMIT_BODY_CEILING	(16 * 1024 * 1024)

/* Digits accepted in CONTENT_LENGTH before we call it malformed (no overflow possible). */
#define LIMIT_CONTENT_LENGTH_DIGITS	9

/* QUERY_STRING and single header values we are willing to parse. */
#define LIMIT_QUERY_STRING	4096
#define LIMIT_HEADER_VALUE	8192

/* The optional KEY=VALUE settings file (BILLING_CONFIG). */
#define LIMIT_CONFIG_FILE	(64 * 1024)
#define LIMIT_CONFIG_ENTRIES	256

/* JSON nesting accepted in request bodies and Stripe payloads. */
#define LIMIT_JSON_DEPTH	64

/* Application user ids (TEXT in the schema, CHECK 1..128). */
#define LIMIT_USER_ID_LEN	128

/* One log line. */
#define LIMIT_LOG_LINE		2048

/* Generic response bodies we build, and the header block of one answer. */
#define LIMIT_RESPONSE_BODY	(256 * 1024)
#define LIMIT_RESPONSE_HEADERS	(16 * 1024)

/*
 * A body over the cap is still read off the wire before the 413 (an
 * early answer is lost under mod_cgid otherwise), but only this much of
 * it; past that the answer goes out regardless.
 */
#define LIMIT_DRAIN_BYTES	(64 * 1024 * 1024)

/*
 * How long a plain CGI may spend reading (or draining) a body.  The server
 * is normally writing it as fast as we read; a stalled client is Apache's
 * Timeout to enforce, this only stops a process waiting forever.  Under
 * FastCGI mod_fcgid has the whole body before it calls us.
 */
#define LIMIT_BODY_READ_MS	10000

/*
 * Outgoing HTTP (Stripe): connect and per-try timeouts, response cap, tries.
 * All tries of one call end within LIMIT_HTTP_TOTAL_MS, which leaves 1.5 s of
 * the 10 s a request may take for starting, the database and the answer.
 */
#define LIMIT_HTTP_CONNECT_MS	3000
#define LIMIT_HTTP_TRY_MS	4000
#define LIMIT_HTTP_TOTAL_MS	8500
#define LIMIT_HTTP_RESPONSE	(1024 * 1024)
#define LIMIT_HTTP_TRIES	3
#define LIMIT_FORM_BODY		(64 * 1024)

/*
 * Idempotency-Keys kept per user for POST /api/usage (setting
 * USAGE_IDEMPOTENCY_MAX_KEYS, 1..LIMIT_USAGE_IDEMPOTENCY_KEYS_MAX): past
 * it the user's oldest keys are forgotten.
 */
#define LIMIT_USAGE_IDEMPOTENCY_KEYS	1000
#define LIMIT_USAGE_IDEMPOTENCY_KEYS_MAX	1000000

/* Database connect timeout (libpq's connect_timeout, seconds). */
#define LIMIT_DB_CONNECT_S	5

/*
 * Mail (billing-mailer).  A template file, one rendered message, one
 * value put into a template, an address (RFC 5321 4.5.3.1.3: a path is
 * at most 256 octets with its angle brackets) and a failure reason as
 * stored in notifications.last_error.
 */
#define LIMIT_MAIL_TEMPLATE	(64 * 1024)
#define LIMIT_MAIL_MESSAGE	(1024 * 1024)
#define LIMIT_MAIL_VALUE	2048
#define LIMIT_MAIL_ADDRESS	254
#define LIMIT_MAIL_REASON	300
/* SMTP: connecting (TCP and TLS), and the default for one whole message (SMTP_TIMEOUT). */
#define LIMIT_SMTP_CONNECT_MS	10000
#define LIMIT_SMTP_TIMEOUT_S	30

/*
 * Defaults of the per-transaction database timeouts (settings
 * DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS,
 * DB_IDLE_IN_TRANSACTION_TIMEOUT_MS; each 1..LIMIT_DB_TIMEOUT_MAX_MS).
 * A lock wait gives up before a statement does (PostgreSQL: a
 * lock_timeout at or above statement_timeout never fires).  A webhook in
 * refetch mode stays in its transaction while it asks Stripe (at most
 * LIMIT_HTTP_TOTAL_MS), so idle in transaction must outlast that.
 */
#define LIMIT_DB_STATEMENT_MS	8000
#define LIMIT_DB_LOCK_MS	4000
#define LIMIT_DB_IDLE_IN_TRANSACTION_MS	15000
#define LIMIT_DB_TIMEOUT_MAX_MS	3600000

/*
 * The operator console (admin.cgi).  A form body it accepts; one page it
 * renders; how long a confirmation form stays valid (its token carries
 * the time it was made); a reason given for an action and a search term,
 * in bytes; rows one table of a page lists; subscriptions one re-sync
 * stores (one page of Stripe's list).
 */
#define LIMIT_FORM_BODY_IN	(16 * 1024)
#define LIMIT_PAGE		(4 * 1024 * 1024)
#define LIMIT_ADMIN_FORM_SECONDS	3600
#define LIMIT_ADMIN_REASON	500
#define LIMIT_ADMIN_SEARCH_TERM	200
#define LIMIT_ADMIN_ROWS	50
#define LIMIT_ADMIN_SYNC_SUBSCRIPTIONS	100

#endif
