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

/*
 * Unix times we take from outside (JWT exp/nbf/iat, Stripe's created):
 * integers up to the last second of year 9999, 9999-12-31T23:59:59Z,
 * which every date type and tool we use can represent.
 */
#define LIMIT_TIMESTAMP_MAX	253402300799LL

/*
 * JWT keys: an HS256 secret at least as long as the hash (RFC 7518 3.2),
 * RSA keys of 2048 bits or more (RFC 7518 3.3), and the PEM file of
 * AUTH_JWT_PUBLIC_KEY_FILE, a few hundred bytes in practice.
 */
#define LIMIT_HS256_MIN_KEY	32
#define LIMIT_RS256_MIN_BITS	2048
#define LIMIT_JWT_KEY_FILE	(64 * 1024)

/*
 * Bearer keys set in the settings (USAGE_API_KEY, auth_operator's tokens):
 * at least this many bytes, so that a placeholder such as "secret" or
 * "changeme" is refused as a misconfiguration rather than guessed.
 */
#define LIMIT_BEARER_KEY_MIN	16

/* Application user ids (TEXT in the schema, CHECK 1..128). */
#define LIMIT_USER_ID_LEN	128

/*
 * Checkout requests: return URLs, the email (RFC 5321: a 64-byte local
 * part, 254 bytes in all), and Idempotency-Key headers, on both
 * endpoints and towards Stripe (Stripe's own limit, and the schema's
 * CHECK on usage_idempotency).
 */
#define LIMIT_URL_LEN		2048
#define LIMIT_EMAIL_LEN		254
#define LIMIT_EMAIL_LOCAL_LEN	64
#define LIMIT_IDEMPOTENCY_KEY_LEN	255

/*
 * Checkout sessions: an open session is handed out again only if it
 * stays open at least this long (seconds); steps (read the live session,
 * finish or expire it, create) before giving up with
 * OUT_CHECKOUT_SUPERSEDED: only concurrent checkouts of one user for
 * different plans, each replacing the other's, use more than three.
 */
#define LIMIT_CHECKOUT_REUSE_MIN_S	3600
#define LIMIT_CHECKOUT_SESSION_STEPS	10

/*
 * Stripe objects: ids (Stripe's are short; anything longer is not one of
 * theirs), event types, and the short texts we copy (status, reason,
 * invoice number) and currency codes, as their columns allow.
 */
#define LIMIT_STRIPE_ID_LEN	255
#define LIMIT_STRIPE_EVENT_TYPE_LEN	128
#define LIMIT_STRIPE_SHORT_TEXT	64
#define LIMIT_STRIPE_CURRENCY_LEN	16

/*
 * Making a payload fit jsonb: the longest number token kept (Stripe's
 * largest are 19-digit integers), how many left-out paths are named (the
 * count covers all of them), the longest member name written into one.
 */
#define LIMIT_JSONB_NUMBER_LEN	64
#define LIMIT_JSONB_PATHS	16
#define LIMIT_JSONB_PATH_KEY_LEN	64
/*
 * The largest exponent a stored number may have, either sign.  A number
 * of a double's range needs less than 400; a zero can be written with any
 * exponent, and PostgreSQL's numeric refuses the huge ones
 * (0E99999999999999999999).
 */
#define LIMIT_JSONB_EXPONENT	999

/*
 * Plan changes: how long a prorationDate from a preview may be used for
 * the change, and how far it may be ahead of our clock (another server's
 * preview), in seconds.
 */
#define LIMIT_PRORATION_PREVIEW_MAX_AGE_S	3600
#define LIMIT_PRORATION_CLOCK_SKEW_S	60

/* Strings that must be one of a fixed list (tier, interval, usageType). */
#define LIMIT_CHOICE_LEN	32

/*
 * POST /api/usage: the largest amount (storage is counted in bytes, so
 * 1 GiB) and "metadata" serialised as compact JSON.
 */
#define LIMIT_USAGE_AMOUNT	1073741824LL
#define LIMIT_USAGE_METADATA	4096

/* Whole transactions retried on serialization failure or deadlock. */
#define LIMIT_DB_TRIES		3

/*
 * Stripe webhooks: secrets honoured in STRIPE_WEBHOOK_SECRET (rotation
 * keeps two), digits of a Stripe-Signature timestamp (19 stay below
 * 2^64), and STRIPE_WEBHOOK_TOLERANCE (seconds, either way).
 */
#define LIMIT_WEBHOOK_SECRETS	8
#define LIMIT_SIG_TIMESTAMP_DIGITS	19
#define LIMIT_WEBHOOK_TOLERANCE_DEFAULT_S	300
#define LIMIT_WEBHOOK_TOLERANCE_MAX_S	86400

/* AUTH_JWT_LEEWAY: clock skew allowed for exp/nbf/iat (seconds). */
#define LIMIT_JWT_LEEWAY_DEFAULT_S	60
#define LIMIT_JWT_LEEWAY_MAX_S	600

/* STRIPE_TRIAL_DAYS_*: Stripe accepts trial_period_days up to 730. */
#define LIMIT_TRIAL_DAYS_MAX	730

/* How long a browser may cache a CORS preflight answer (seconds). */
#define LIMIT_CORS_MAX_AGE_S	600

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
 * How long a request may spend reading (or draining) its body, from its
 * start.  Under CGI the server is normally writing it as fast as we read,
 * and this only stops a process waiting forever.  Under FastCGI mod_fcgid
 * has the whole body before it calls us, but mod_proxy_fcgi streams it as
 * the client sends it: there this keeps a slow client from holding a
 * process, and every request queued behind it, for Apache's Timeout.
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

/*
 * Between tries: "equal jitter" backoff from 250 ms doubling up to 2 s;
 * a Retry-After longer than 2 s means "not within this request"; a try
 * with less than 500 ms left is not worth starting.
 */
#define LIMIT_HTTP_BACKOFF_BASE_MS	250
#define LIMIT_HTTP_BACKOFF_CAP_MS	2000
#define LIMIT_HTTP_RETRY_AFTER_MS	2000
#define LIMIT_HTTP_MIN_TRY_MS	500

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
#define LIMIT_SMTP_TIMEOUT_MAX_S	300
/*
 * billing-mailer keeps a row's transaction idle while its mail is sent: at
 * least SMTP_TIMEOUT plus this (rendering, the reply read after the timer).
 */
#define LIMIT_MAIL_HOLD_MARGIN_MS	5000

/*
 * Mail: display names longer than this are refused (they would only make
 * long lines); template placeholder names longer than this are malformed.
 */
#define LIMIT_MAIL_DISPLAY_NAME	200
#define LIMIT_TEMPLATE_NAME_LEN	64

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
/*
 * Statement texts a long-lived process prepares per connection (db.c);
 * past that they run unprepared.  Every endpoint has fewer fixed
 * statements than this; the cap bounds what text built at run time costs.
 */
#define LIMIT_DB_PREPARED	64
#define LIMIT_DB_TIMEOUT_MAX_MS	3600000

/*
 * Rate limits (RATE_LIMIT_* settings): the largest count and window a
 * policy may have, and the housekeeping of the rate_limits table: one
 * check in LIMIT_RATE_PRUNE_ONE_IN deletes up to LIMIT_RATE_PRUNE_BATCH
 * expired rows, more than the at most two keys a request can add.
 */
#define LIMIT_RATE_MAX		1000000
#define LIMIT_RATE_WINDOW_MAX	86400
#define LIMIT_RATE_PRUNE_ONE_IN	256
#define LIMIT_RATE_PRUNE_BATCH	1000
/* A rate-limit key: policy name, a space, and a caller or an address. */
#define LIMIT_RATE_KEY		(LIMIT_USER_ID_LEN + 64)

/* The /metrics answer, and the path of the metrics file (METRICS_DIR + name). */
#define LIMIT_METRICS_BODY	(1024 * 1024)
#define LIMIT_PATH		4096

/*
 * billing-sync, a program that may run for hours, not a request: Stripe
 * calls may take longer and wait out a rate limit.  A list page holds
 * 100 objects (an event with an invoice can be 20 KB of JSON).
 */
#define LIMIT_SYNC_RESPONSE	(16 * 1024 * 1024)
#define LIMIT_SYNC_TRY_MS	30000
#define LIMIT_SYNC_CALL_MS	(10 * 60 * 1000)	/* all tries of one call */
#define LIMIT_SYNC_TRIES	10
#define LIMIT_SYNC_BACKOFF_MS	30000	/* longest wait between tries we choose */
#define LIMIT_SYNC_RETRY_AFTER_MS 120000	/* a longer Retry-After ends the run */
#define LIMIT_SYNC_MAX_RPS	100	/* Stripe's live-mode limit */
/* A run whose process is gone, or silent this long, is taken over. */
#define LIMIT_SYNC_LEASE_S	(LIMIT_SYNC_CALL_MS / 1000 + 300)
/* Stripe keeps events for 30 days (docs.stripe.com/api/events). */
#define LIMIT_EVENTS_DAYS	30

/*
 * billing-sync: Stripe's largest list page; the default pace, well under
 * Stripe's test-mode limit of 25 requests a second (SYNC_MAX_RPS); how far
 * back `events` looks by default (Stripe retries webhooks for 3 days);
 * database rows read at a time for check's reverse comparison; rows
 * Stripe does not have named one by one in the log before "and N more";
 * and the clock margin taken off a listing's time when it is stored as
 * last_event_created (so an event from those seconds still applies).
 */
#define LIMIT_SYNC_PAGE			100
#define LIMIT_SYNC_MAX_RPS_DEFAULT	10
#define LIMIT_SYNC_EVENTS_SINCE_S	(72 * 3600)
#define LIMIT_SYNC_LOCAL_BATCH		"1000"
#define LIMIT_SYNC_MISSING_LOGGED	50
#define LIMIT_SYNC_CLOCK_MARGIN_S	60

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

/*
 * The console's analytics API: the most months one request may ask for,
 * and how many it shows when not asked.  Console form tokens: the key and
 * nonce sizes (bytes), and how far ahead of ours a clock that made a token
 * may be.  Statements the dashboard may run at once on separate
 * connections (db_exec_parallel).
 */
#define LIMIT_ADMIN_MONTHS		240
#define LIMIT_ADMIN_MONTHS_DEFAULT	12
#define LIMIT_FORM_KEY			32
#define LIMIT_FORM_NONCE		16
#define LIMIT_FORM_CLOCK_SKEW_S		60
#define LIMIT_DB_PARALLEL		4
/* Statements db_exec_batch sends in one round trip. */
#define LIMIT_DB_BATCH			5
/* The longest name lib/db gives a prepared statement, with its NUL. */
#define LIMIT_DB_NAME_LEN		32

#endif
