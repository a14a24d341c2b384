#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "checkout.h"
#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "response.h"
#include "stripe.h"

static const char *const tier_choices[] = {"basic", "pro", NULL};
static const char *const interval_choices[] = {"monthly", "yearly", NULL};

/* The request body, declared once (STYLE: validate by declaration). */
static const struct jsonget_field order_fields[] = {
    {"userId", JG_STRING, 1, 1, LIMIT_USER_ID_LEN, NULL},
    {"tier", JG_STRING, 1, 1, LIMIT_CHOICE_LEN, tier_choices},
    {"interval", JG_STRING, 1, 1, LIMIT_CHOICE_LEN, interval_choices},
    {"successUrl", JG_STRING, 1, 1, LIMIT_URL_LEN, NULL},
    {"cancelUrl", JG_STRING, 1, 1, LIMIT_URL_LEN, NULL},
    {"email", JG_STRING, 0, 3, LIMIT_EMAIL_LEN, NULL},
};

/*
 * Splits an authority "host[:port]" in [s, end): the host is a DNS name
 * or a bracketed IP literal (kept as written, brackets included).
 * *host_end is set; *port is the explicit port (1..65535) or 0 without
 * one.  -1 when the port is not 1 to 5 digits in that range.
 */
static int
split_authority(const char *s, const char *end, const char **host_end, long *port)
{
	const char *p, *colon;

	*port = 0;
	if (s < end && *s == '[') {
		if ((p = memchr(s, ']', (size_t)(end - s))) == NULL)
			return -1;
		colon = p + 1;
		if (colon < end && *colon != ':')
			return -1;
	} else if ((colon = memchr(s, ':', (size_t)(end - s))) == NULL)
		colon = end;
	*host_end = colon;
	if (colon == end)
		return 0;
	if (end - colon < 2 || end - colon > 6)
		return -1;
	for (p = colon + 1; p < end; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		*port = *port * 10 + (*p - '0');
	}
	return *port >= 1 && *port <= 65535 ? 0 : -1;
}

/*
 * ALLOWED_REDIRECT_HOSTS, compared as origins (RFC 6454 4): the host
 * case-insensitively, and the port, where an entry or a URL without one
 * means the scheme's default.  So "app.example.com" allows
 * https://app.example.com/ and https://app.example.com:443/ but not
 * :8443, which needs the entry "app.example.com:8443".  An entry that
 * is not host[:port] never matches.
 */
static int
redirect_allowed(const char *host, size_t host_len, long port, long default_port)
{
	const char *cursor = config_get("ALLOWED_REDIRECT_HOSTS"), *item, *item_host_end;
	size_t n;
	long item_port;

	while (config_list_next(&cursor, &item, &n)) {
		if (split_authority(item, item + n, &item_host_end, &item_port) == -1)
			continue;
		if ((size_t)(item_host_end - item) == host_len &&
		    strncasecmp(item, host, host_len) == 0 &&
		    (item_port ? item_port : default_port) == port)
			return 1;
	}
	return 0;
}

const char *
checkout_redirect_problem(const char *url)
{
	const char *p, *host, *host_end, *auth_end;
	size_t n = strlen(url), i;
	long port, default_port;

	if (n > LIMIT_URL_LEN)
		return "is too long";
	/*
	 * Visible ASCII only: no blanks or controls (a browser would strip or
	 * re-encode them, so what we checked would not be what it follows),
	 * and no backslash, which browsers read as "/" in http(s) URLs.
	 */
	for (i = 0; i < n; i++)
		if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f ||
		    url[i] == '\\')
			return "must be a URL of visible ASCII characters";
	if (strncasecmp(url, "https://", 8) == 0) {
		host = url + 8;
		default_port = 443;
	} else if (strncasecmp(url, "http://", 7) == 0) {
		host = url + 7;
		default_port = 80;
	} else
		return "must be an absolute http(s) URL";
	/* RFC 3986 3.2: the authority ends at the first "/", "?" or "#". */
	auth_end = host + strcspn(host, "/?#");
	if (memchr(host, '@', (size_t)(auth_end - host)) != NULL)
		return "must not contain user information";
	if (split_authority(host, auth_end, &host_end, &port) == -1)
		return *host == '[' && memchr(host, ']', (size_t)(auth_end - host)) == NULL
			   ? "has an invalid host"
			   : "has an invalid port";
	if (*host != '[')
		for (p = host; p < host_end; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
				return "has an invalid host";
	if (host_end == host)
		return "has no host";
	if (!redirect_allowed(host, (size_t)(host_end - host), port ? port : default_port,
			      default_port))
		return "must point to an allowed host";
	return NULL;
}

int
checkout_email_ok(const char *email)
{
	const char *at = strchr(email, '@'), *p, *dot;
	size_t n = strlen(email);

	if (n < 3 || n > LIMIT_EMAIL_LEN || at == NULL || at == email ||
	    strchr(at + 1, '@') != NULL || at - email > LIMIT_EMAIL_LOCAL_LEN)
		return 0;
	for (p = email; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f ||
		    strchr("<>()[]\\,;:\"", *p) != NULL)
			return 0;
	/* A dotted domain, without empty labels at either end. */
	dot = strchr(at + 1, '.');
	return dot != NULL && at[1] != '.' && email[n - 1] != '.' && strstr(at, "..") == NULL;
}

enum outcome
checkout_parse(struct json_object *body, struct checkout_order *order, const char **field,
	       const char **why)
{
	enum outcome o;

	o = jsonget_validate(body, order_fields, sizeof(order_fields) / sizeof(order_fields[0]),
			     field, why);
	if (o != OUT_OK)
		return o;
	memset(order, 0, sizeof(*order));
	order->user_id = jsonget_str(body, "userId");
	order->success_url = jsonget_str(body, "successUrl");
	order->cancel_url = jsonget_str(body, "cancelUrl");
	order->email = jsonget_str(body, "email");
	if (plan_tier_parse(jsonget_str(body, "tier"), &order->tier) == -1) {
		*field = "tier";
		*why = "must be one of basic, pro";
		return OUT_INVALID_FIELD;
	}
	if (plan_interval_parse(jsonget_str(body, "interval"), &order->interval) == -1) {
		*field = "interval";
		*why = "must be one of monthly, yearly";
		return OUT_INVALID_FIELD;
	}
	if ((*why = checkout_redirect_problem(order->success_url)) != NULL) {
		*field = "successUrl";
		return OUT_INVALID_FIELD;
	}
	if ((*why = checkout_redirect_problem(order->cancel_url)) != NULL) {
		*field = "cancelUrl";
		return OUT_INVALID_FIELD;
	}
	if (order->email != NULL && !checkout_email_ok(order->email)) {
		*field = "email";
		*why = "must be an email address";
		return OUT_INVALID_FIELD;
	}
	return OUT_OK;
}

enum outcome
checkout_not_subscribed(struct db *db, const char *user_id)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	enum outcome o;

	r = DB_QUERY(db, &rows,
		     "SELECT 1 FROM subscriptions WHERE user_id = $1"
		     " AND status IN ('active', 'trialing', 'past_due') LIMIT 1",
		     user_id);
	if (r != DB_OK)
		return db_outcome(r);
	o = db_rows_count(rows) > 0 ? OUT_ALREADY_SUBSCRIBED : OUT_OK;
	db_rows_free(rows);
	return o;
}

/* Whether a search result is a customer made for user_id (its metadata.userId, exactly). */
static const char *
customer_of(struct json_object *cus, const char *user_id)
{
	const char *id = jsonget_str(cus, "id"), *meta = jsonget_path_str(cus, "metadata.userId");
	int deleted = 0;

	jsonget_bool(cus, "deleted", &deleted);
	if (id == NULL || strncmp(id, "cus_", 4) != 0 || !stripe_id_valid(id) || deleted ||
	    meta == NULL || strcmp(meta, user_id) != 0)
		return NULL;
	return id;
}

/* The user customers links stripe_customer_id to (caller frees), or NULL. */
static enum outcome
linked_user(struct db *db, const char *customer_id, char **user)
{
	struct db_rows *rows = NULL;
	enum db_result r;

	*user = NULL;
	r = DB_QUERY(db, &rows, "SELECT user_id FROM customers WHERE stripe_customer_id = $1",
		     customer_id);
	if (r == DB_OK && db_rows_get(rows, 0, 0) != NULL)
		*user = mem_strdup(db_rows_get(rows, 0, 0));
	db_rows_free(rows);
	return db_outcome(r);
}

/*
 * The user's existing Stripe customer: GET /v1/customers/search for
 * metadata['userId'] (docs.stripe.com/search#search-query-language),
 * the oldest match that customers does not give to another user.  *id
 * NULL when there is none, or when Stripe refused the search (logged;
 * the idempotent create still guards against doubles).  Stripe's search
 * index is eventually consistent (a customer created a moment ago may
 * not be found yet), hence also the idempotent create.
 */
static enum outcome
search_stripe_customer(struct db *db, const char *user_id, char **id)
{
	struct buf query = BUF_INIT(2 * LIMIT_USER_ID_LEN + 32), path = BUF_INIT(1024);
	struct form f;
	struct json_object *found = NULL, *data, *best = NULL;
	long long created, best_created = 0;
	const char *p, *cid;
	char *other = NULL;
	size_t i, n;
	enum outcome o = OUT_INTERNAL;

	*id = NULL;
	form_init(&f);
	/* A quoted value: backslash escapes a quote or a backslash. */
	if (buf_addstr(&query, "metadata['userId']:'") == -1)
		goto out;
	for (p = user_id; *p != '\0'; p++)
		if (((*p == '\'' || *p == '\\') && buf_addch(&query, '\\') == -1) ||
		    buf_addch(&query, *p) == -1)
			goto out;
	if (buf_addch(&query, '\'') == -1 || form_add(&f, "query", buf_str(&query)) == -1 ||
	    form_add_long(&f, "limit", 10) == -1 ||
	    buf_printf(&path, "/v1/customers/search?%s", form_str(&f)) == -1)
		goto out;
	o = stripe_get(buf_str(&path), &found);
	if (o == OUT_STRIPE_ERROR || o == OUT_NOT_FOUND) {
		log_msg("stripe customer search refused: creating the customer idempotently instead");
		o = OUT_OK;
		goto out;
	}
	if (o != OUT_OK || (data = jsonget_array(found, "data")) == NULL)
		goto out;
	n = json_object_array_length(data);
	/* Oldest first, so repeated checkouts settle on the same one. */
	for (i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(data, i);

		if ((cid = customer_of(c, user_id)) == NULL)
			continue;
		if ((o = linked_user(db, cid, &other)) != OUT_OK)
			goto out;
		if (other != NULL) {
			log_msg("stripe customer %s names user %s but customers links it to %s: not"
				" used", cid, user_id, other);
			free(other);
			other = NULL;
			continue;
		}
		if (jsonget_int(c, "created", &created) == -1)
			created = 0;
		if (best == NULL || created < best_created ||
		    (created == best_created && strcmp(cid, jsonget_str(best, "id")) < 0)) {
			best = c;
			best_created = created;
		}
	}
	if (best != NULL)
		*id = mem_strdup(jsonget_str(best, "id"));
	o = OUT_OK;
out:
	json_object_put(found);
	form_free(&f);
	buf_free(&query);
	buf_free(&path);
	return o;
}

/*
 * POST /v1/customers; *id is the new customer's id (caller frees).  The
 * Idempotency-Key is derived from exactly what is sent (email and
 * metadata[userId]), so a retry with the same details gets the same
 * customer and a retry with other details is a new request, not a 400
 * idempotency_error for 24 hours.
 */
static enum outcome
create_stripe_customer(const char *user_id, const char *email, char **id)
{
	struct form f;
	struct json_object *cus = NULL;
	const char *parts[1];
	char *key = NULL;
	const char *cid;
	enum outcome o = OUT_INTERNAL;

	form_init(&f);
	if ((email && form_add(&f, "email", email) == -1) ||
	    form_add(&f, "metadata[userId]", user_id) == -1)
		goto out;
	parts[0] = form_str(&f);
	key = stripe_idempotency_key("customer", parts, 1);
	if ((o = stripe_post("/v1/customers", &f, key, &cus)) == OUT_IDEMPOTENCY_CONFLICT) {
		/* Cannot happen with a key over the whole body; say so if it does. */
		log_msg("stripe POST /v1/customers: idempotency key refused for the same body");
		o = OUT_STRIPE_ERROR;
	}
	if (o != OUT_OK)
		goto out;
	if ((cid = jsonget_str(cus, "id")) == NULL || strncmp(cid, "cus_", 4) != 0 ||
	    !stripe_id_valid(cid)) {
		log_msg("stripe POST /v1/customers: answer without a customer id");
		o = OUT_STRIPE_ERROR;
		goto out;
	}
	*id = mem_strdup(cid);
	o = OUT_OK;
out:
	json_object_put(cus);
	form_free(&f);
	free(key);
	return o;
}

/*
 * Stores user <-> customer_id unless either is linked already.  *stored
 * (caller frees) is the user's customer afterwards: customer_id, or the
 * one linked meanwhile (a webhook or a concurrent checkout).
 * OUT_CUSTOMER_CONFLICT when customer_id belongs to another user.
 */
static enum outcome
link_customer(struct db *db, const char *user_id, const char *customer_id, const char *email,
	      char **stored)
{
	struct db_rows *rows = NULL;
	enum db_result r;
	enum outcome o = OUT_INTERNAL;
	int tries, i;

	*stored = NULL;
	/* Twice at most: a link that vanishes between our two statements is tried again. */
	for (tries = 0; tries < 2 && *stored == NULL; tries++) {
		db_rows_free(rows);
		rows = NULL;
		r = DB_QUERY(db, &rows,
			     "INSERT INTO customers (user_id, stripe_customer_id, email)"
			     " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING user_id",
			     user_id, customer_id, email);
		if (r != DB_OK)
			return db_outcome(r);
		if (db_rows_count(rows) == 1) {
			*stored = mem_strdup(customer_id);
			break;
		}
		db_rows_free(rows);
		rows = NULL;
		if ((r = DB_QUERY(db, &rows,
				  "SELECT user_id, stripe_customer_id FROM customers"
				  " WHERE user_id = $1 OR stripe_customer_id = $2",
				  user_id, customer_id)) != DB_OK)
			return db_outcome(r);
		for (i = 0; i < db_rows_count(rows); i++)
			if (strcmp(db_rows_get(rows, i, 0), user_id) == 0)
				*stored = mem_strdup(db_rows_get(rows, i, 1));
		if (*stored != NULL) {
			if (strcmp(*stored, customer_id) != 0)
				log_msg("user %s was linked to %s meanwhile (webhook or concurrent"
					" checkout): using it; stripe customer %s left unused",
					user_id, *stored, customer_id);
			break;
		}
		if (db_rows_count(rows) > 0) {
			log_msg("stripe customer %s for user %s is linked to user %s in customers:"
				" refusing", customer_id, user_id, db_rows_get(rows, 0, 0));
			o = OUT_CUSTOMER_CONFLICT;
			goto out;
		}
	}
	o = *stored ? OUT_OK : OUT_UNAVAILABLE;
out:
	db_rows_free(rows);
	return o;
}

enum outcome
checkout_customer(struct db *db, const char *user_id, const char *email, char **customer_id)
{
	struct db_rows *rows = NULL;
	char *found = NULL;
	enum db_result r;
	enum outcome o;

	/*
	 * No transaction or lock is held across the Stripe calls: concurrent
	 * first checkouts with the same details get one customer through the
	 * Idempotency-Key, and the link is settled by customers' unique
	 * constraints (link_customer).
	 */
	*customer_id = NULL;
	r = DB_QUERY(db, &rows, "SELECT stripe_customer_id FROM customers WHERE user_id = $1",
		     user_id);
	if (r != DB_OK)
		return db_outcome(r);
	if (db_rows_get(rows, 0, 0) != NULL) {
		*customer_id = mem_strdup(db_rows_get(rows, 0, 0));
		db_rows_free(rows);
		return OUT_OK;
	}
	db_rows_free(rows);
	if ((o = search_stripe_customer(db, user_id, &found)) == OUT_OK && found == NULL)
		o = create_stripe_customer(user_id, email, &found);
	if (o == OUT_OK)
		o = link_customer(db, user_id, found, email, customer_id);
	free(found);
	return o;
}

char *
checkout_idempotency_key(const char *user_id, const char *client_key)
{
	return stripe_client_idempotency_key("checkout", user_id, client_key);
}

/* The parameters of POST /v1/checkout/sessions; -1 past the form cap. */
static int
session_params(struct form *f, const struct checkout_order *order, const char *customer_id,
	       const char *price, long trial_days)
{
	const char *tier = plan_tier_name(order->tier);
	const char *interval = plan_interval_name(order->interval);

	/*
	 * Metadata goes on the session and, separately, on the subscription:
	 * Stripe does not copy one to the other.  customer is always set, so
	 * customer_email is never sent (Stripe refuses both together).
	 */
	if (form_add(f, "mode", "subscription") == -1 ||
	    form_add(f, "line_items[0][price]", price) == -1 ||
	    form_add_long(f, "line_items[0][quantity]", 1) == -1 ||
	    form_add(f, "success_url", order->success_url) == -1 ||
	    form_add(f, "cancel_url", order->cancel_url) == -1 ||
	    form_add(f, "customer", customer_id) == -1 ||
	    form_add(f, "client_reference_id", order->user_id) == -1 ||
	    form_add(f, "metadata[userId]", order->user_id) == -1 ||
	    form_add(f, "metadata[tier]", tier) == -1 ||
	    form_add(f, "metadata[interval]", interval) == -1 ||
	    form_add(f, "subscription_data[metadata][userId]", order->user_id) == -1 ||
	    form_add(f, "subscription_data[metadata][tier]", tier) == -1 ||
	    form_add(f, "subscription_data[metadata][interval]", interval) == -1 ||
	    (trial_days > 0 &&
	     form_add_long(f, "subscription_data[trial_period_days]", trial_days) == -1) ||
	    form_add(f, "allow_promotion_codes", "true") == -1 ||
	    form_add(f, "billing_address_collection", "required") == -1)
		return -1;
	return 0;
}

/* A user's live checkout_sessions row (or one found by its Idempotency-Key). */
struct session_row {
	char *id;		/* checkout_sessions.id */
	char *status;
	char *body;		/* request_body */
	char *key;		/* idempotency_key */
	char *session_id;	/* stripe_session_id, NULL while creating */
	char *url;
	int fresh;		/* open for at least LIMIT_CHECKOUT_REUSE_MIN_S more */
	int past;		/* expires_at has passed */
	int stale;		/* creating for longer than Stripe keeps keys */
};

static void
session_row_free(struct session_row *row)
{
	free(row->id);
	free(row->status);
	free(row->body);
	free(row->key);
	free(row->session_id);
	free(row->url);
	memset(row, 0, sizeof(*row));
}

static char *
dup_or_null(const char *s)
{
	return s ? mem_strdup(s) : NULL;
}

static const char sql_row_columns[] =
    "SELECT id, status, request_body, idempotency_key, stripe_session_id, url,"
    " coalesce(expires_at > now() + make_interval(secs => $3::double precision), false),"
    " coalesce(expires_at <= now(), false), created_at < now() - interval '23 hours'"
    " FROM checkout_sessions WHERE user_id = $1 ";

/*
 * Reads one row: the live one (by_key NULL) or the newest one of the last
 * 24 hours with Idempotency-Key by_key.  *found 0 when there is none.
 */
static enum outcome
read_session_row(struct db *db, const char *user_id, const char *by_key,
		 struct session_row *row, int *found)
{
	struct buf sql = BUF_INIT(1024);
	struct db_rows *rows = NULL;
	char margin[24];
	enum db_result r;

	*found = 0;
	memset(row, 0, sizeof(*row));
	snprintf(margin, sizeof(margin), "%d", LIMIT_CHECKOUT_REUSE_MIN_S);
	if (buf_addstr(&sql, sql_row_columns) == -1 ||
	    buf_addstr(&sql, by_key ? "AND idempotency_key = $2 AND status <> 'abandoned'"
				      " AND created_at > now() - interval '24 hours'"
				      " ORDER BY id DESC LIMIT 1"
				    : "AND status IN ('creating', 'open') AND $2::text IS NULL") == -1)
		response_fatal("out of memory");
	r = DB_QUERY(db, &rows, buf_str(&sql), user_id, by_key, margin);
	buf_free(&sql);
	if (r != DB_OK)
		return db_outcome(r);
	if (db_rows_count(rows) == 1) {
		*found = 1;
		row->id = dup_or_null(db_rows_get(rows, 0, 0));
		row->status = dup_or_null(db_rows_get(rows, 0, 1));
		row->body = dup_or_null(db_rows_get(rows, 0, 2));
		row->key = dup_or_null(db_rows_get(rows, 0, 3));
		row->session_id = dup_or_null(db_rows_get(rows, 0, 4));
		row->url = dup_or_null(db_rows_get(rows, 0, 5));
		row->fresh = strcmp(db_rows_get(rows, 0, 6), "t") == 0;
		row->past = strcmp(db_rows_get(rows, 0, 7), "t") == 0;
		row->stale = strcmp(db_rows_get(rows, 0, 8), "t") == 0;
	}
	db_rows_free(rows);
	return OUT_OK;
}

/* Moves row id from one status to another (only if it still has the first). */
static enum outcome
set_session_status(struct db *db, const char *id, const char *from, const char *to)
{
	return db_outcome(DB_QUERY(db, NULL,
				   "UPDATE checkout_sessions SET status = $3"
				   " WHERE id = $1::bigint AND status = $2",
				   id, from, to));
}

/* The answer the caller returns: a copy of the row's session. */
static enum outcome
give_session(const struct session_row *row, char **session_id, char **url)
{
	if (row->session_id == NULL || row->url == NULL)
		return OUT_INTERNAL;
	*session_id = mem_strdup(row->session_id);
	*url = mem_strdup(row->url);
	return OUT_OK;
}

/*
 * POST /v1/checkout/sessions for a creating row, with its own body and
 * key: the first call creates the session, a repeat (this request's, a
 * concurrent one's, or a later checkout finishing a call whose answer
 * was lost) gets the same session back from Stripe.  The row becomes
 * open (row->session_id, row->url set).  OUT_CHECKOUT_SUPERSEDED when a
 * newer checkout expired the row meanwhile.
 */
static enum outcome
create_session(struct db *db, struct session_row *row)
{
	struct form f;
	struct json_object *session = NULL;
	struct db_rows *rows = NULL;
	const char *sid, *surl;
	long long expires = 0;
	char expires_txt[24];
	enum db_result r;
	enum outcome o;

	form_init(&f);
	if (form_add_encoded(&f, row->body) == -1) {
		o = OUT_INTERNAL;
		goto out;
	}
	o = stripe_post("/v1/checkout/sessions", &f, row->key, &session);
	if (o == OUT_IDEMPOTENCY_CONFLICT || o == OUT_STRIPE_ERROR) {
		/* Stripe refused it: nothing was created, this row can never succeed. */
		if (set_session_status(db, row->id, "creating", "abandoned") != OUT_OK)
			log_msg("checkout session row %s could not be marked abandoned", row->id);
		goto out;
	}
	if (o != OUT_OK)
		goto out;
	sid = jsonget_str(session, "id");
	surl = jsonget_str(session, "url");
	jsonget_int(session, "expires_at", &expires);
	if (sid == NULL || !stripe_id_valid(sid) || surl == NULL ||
	    !stripe_page_url_ok(surl) || expires <= 0) {
		log_msg("stripe POST /v1/checkout/sessions: answer without id, https url or"
			" expires_at");
		o = OUT_STRIPE_ERROR;
		goto out;
	}
	snprintf(expires_txt, sizeof(expires_txt), "%lld", expires);
	r = DB_QUERY(db, &rows,
		     "UPDATE checkout_sessions SET status = 'open', stripe_session_id = $2,"
		     " url = $3, expires_at = to_timestamp($4::bigint)"
		     " WHERE id = $1::bigint AND status = 'creating' RETURNING id",
		     row->id, sid, surl, expires_txt);
	if (r == DB_UNIQUE_VIOLATION) {
		/* Stripe replayed a session another row holds: a key reused across orders. */
		log_msg("stripe returned session %s, which another checkout holds", sid);
		o = OUT_IDEMPOTENCY_CONFLICT;
		goto out;
	}
	if (r != DB_OK) {
		o = db_outcome(r);
		goto out;
	}
	if (db_rows_count(rows) == 0) {
		/* Someone else finished the row: fine if it is this session and alive. */
		db_rows_free(rows);
		r = DB_QUERY(db, &rows,
			     "SELECT 1 FROM checkout_sessions WHERE id = $1::bigint"
			     " AND stripe_session_id = $2 AND status IN ('open', 'complete')",
			     row->id, sid);
		if (r != DB_OK) {
			o = db_outcome(r);
			goto out;
		}
		if (db_rows_count(rows) == 0) {
			log_msg("checkout session %s was replaced by a newer checkout of the user",
				sid);
			o = OUT_CHECKOUT_SUPERSEDED;
			goto out;
		}
	}
	free(row->session_id);
	free(row->url);
	row->session_id = mem_strdup(sid);
	row->url = mem_strdup(surl);
	o = OUT_OK;
out:
	db_rows_free(rows);
	json_object_put(session);
	form_free(&f);
	return o;
}

/*
 * Ends an open row that is not what the user orders now: expired at
 * Stripe (POST /v1/checkout/sessions/{id}/expire) unless its time is up
 * anyway.  When Stripe says it cannot be expired, the session's own
 * status decides: complete (paid: OUT_ALREADY_SUBSCRIBED) or expired.
 */
static enum outcome
expire_session(struct db *db, const struct session_row *row)
{
	struct buf path = BUF_INIT(512);
	struct json_object *session = NULL;
	const char *parts[1] = {row->session_id}, *status;
	char *key = NULL;
	enum outcome o;

	if (row->past || row->session_id == NULL || !stripe_id_valid(row->session_id))
		return set_session_status(db, row->id, "open", "expired");
	key = stripe_idempotency_key("expire", parts, 1);
	if (buf_printf(&path, "/v1/checkout/sessions/%s/expire", row->session_id) == -1)
		response_fatal("out of memory");
	o = stripe_post(buf_str(&path), NULL, key, &session);
	if (o == OUT_STRIPE_ERROR) {
		/* Not open any more: ask what it is. */
		buf_reset(&path);
		if (buf_printf(&path, "/v1/checkout/sessions/%s", row->session_id) == -1)
			response_fatal("out of memory");
		o = stripe_get(buf_str(&path), &session);
		if (o == OUT_NOT_FOUND) {
			o = set_session_status(db, row->id, "open", "abandoned");
			goto out;
		}
	}
	if (o != OUT_OK)
		goto out;
	status = jsonget_str(session, "status");
	if (status != NULL && strcmp(status, "expired") == 0) {
		log_msg("checkout session %s expired for a new order", row->session_id);
		o = set_session_status(db, row->id, "open", "expired");
	} else if (status != NULL && strcmp(status, "complete") == 0) {
		if ((o = set_session_status(db, row->id, "open", "complete")) == OUT_OK)
			o = OUT_ALREADY_SUBSCRIBED;
	} else {
		log_msg("checkout session %s is still open after expiring it", row->session_id);
		o = OUT_STRIPE_ERROR;
	}
out:
	json_object_put(session);
	buf_free(&path);
	free(key);
	return o;
}

enum outcome
checkout_create_session(struct db *db, const struct checkout_order *order,
			const char *customer_id, const char *idempotency_key, char **session_id,
			char **url)
{
	struct form f;
	struct session_row row = {0};
	struct db_rows *rows = NULL;
	const char *price, *body;
	long trial_days = 0;
	enum outcome o;
	enum db_result r;
	int found, steps;

	*session_id = *url = NULL;
	form_init(&f);
	if ((price = plan_price_id(order->tier, order->interval)) == NULL) {
		log_msg("setting STRIPE_PRICE_%s_%s is not set",
			order->tier == TIER_PRO ? "PRO" : "BASIC",
			order->interval == INTERVAL_YEARLY ? "YEARLY" : "MONTHLY");
		o = OUT_MISCONFIGURED;
		goto out;
	}
	if ((o = plan_trial_days(order->tier, &trial_days)) != OUT_OK)
		goto out;
	if (session_params(&f, order, customer_id, price, trial_days) == -1) {
		o = OUT_INTERNAL;
		goto out;
	}
	body = form_str(&f);

	/* The same Idempotency-Key again: the same order gets its session, another is 409. */
	if ((o = read_session_row(db, order->user_id, idempotency_key, &row, &found)) != OUT_OK)
		goto out;
	if (found) {
		if (strcmp(row.body, body) != 0)
			o = OUT_IDEMPOTENCY_CONFLICT;
		else if (strcmp(row.status, "creating") == 0 &&
			 (o = create_session(db, &row)) != OUT_OK)
			goto out;
		else
			o = give_session(&row, session_id, url);
		goto out;
	}
	session_row_free(&row);

	/*
	 * One live session per user (checkout_sessions in the schema): each
	 * step below moves the user's live row on; a few suffice unless
	 * concurrent checkouts keep replacing each other.
	 */
	for (steps = 0; steps < LIMIT_CHECKOUT_SESSION_STEPS; steps++) {
		session_row_free(&row);
		if ((o = read_session_row(db, order->user_id, NULL, &row, &found)) != OUT_OK)
			goto out;
		if (!found) {
			db_rows_free(rows);
			r = DB_QUERY(db, &rows,
				     "INSERT INTO checkout_sessions (user_id, tier, billing_interval,"
				     " stripe_customer_id, idempotency_key, request_body)"
				     " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
				     " RETURNING id",
				     order->user_id, plan_tier_name(order->tier),
				     plan_interval_name(order->interval), customer_id,
				     idempotency_key, body);
			if (r != DB_OK) {
				o = db_outcome(r);
				goto out;
			}
			if (db_rows_count(rows) == 0)
				continue; /* a concurrent checkout got there first */
			row.id = mem_strdup(db_rows_get(rows, 0, 0));
			row.status = mem_strdup("creating");
			row.body = mem_strdup(body);
			row.key = mem_strdup(idempotency_key);
			if ((o = create_session(db, &row)) == OUT_OK)
				o = give_session(&row, session_id, url);
			goto out;
		}
		if (strcmp(row.status, "creating") == 0) {
			if (row.stale) {
				/* Stripe forgot the key; any session it made has expired. */
				if ((o = set_session_status(db, row.id, "creating", "abandoned")) !=
				    OUT_OK)
					goto out;
				continue;
			}
			/* Join (same order) or finish (another order, then expired next step). */
			if ((o = create_session(db, &row)) != OUT_OK)
				goto out;
			if (strcmp(row.body, body) == 0) {
				o = give_session(&row, session_id, url);
				goto out;
			}
			continue;
		}
		if (strcmp(row.body, body) == 0 && row.fresh) {
			o = give_session(&row, session_id, url);
			goto out;
		}
		if ((o = expire_session(db, &row)) != OUT_OK)
			goto out;
	}
	log_msg("checkout: the user's live session kept changing under concurrent checkouts");
	o = OUT_CHECKOUT_SUPERSEDED;
out:
	session_row_free(&row);
	db_rows_free(rows);
	form_free(&f);
	return o;
}
