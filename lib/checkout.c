#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "checkout.h"
#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "stripe.h"

static const char *const tier_choices[] = {"basic", "pro", NULL};
static const char *const interval_choices[] = {"monthly", "yearly", NULL};

/* The request body, declared once (STYLE: validate by declaration). */
static const struct jsonget_field order_fields[] = {
    {"userId", JG_STRING, 1, 1, LIMIT_USER_ID_LEN, NULL},
    {"tier", JG_STRING, 1, 1, 16, tier_choices},
    {"interval", JG_STRING, 1, 1, 16, interval_choices},
    {"successUrl", JG_STRING, 1, 1, CHECKOUT_URL_MAX, NULL},
    {"cancelUrl", JG_STRING, 1, 1, CHECKOUT_URL_MAX, NULL},
    {"email", JG_STRING, 0, 3, CHECKOUT_EMAIL_MAX, NULL},
};

const char *
checkout_redirect_problem(const char *url)
{
	const char *p, *host, *host_end, *auth_end;
	size_t n = strlen(url), i;

	if (n > CHECKOUT_URL_MAX)
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
	if (strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else
		return "must be an absolute http(s) URL";
	/* RFC 3986 3.2: the authority ends at the first "/", "?" or "#". */
	auth_end = host + strcspn(host, "/?#");
	if (memchr(host, '@', (size_t)(auth_end - host)) != NULL)
		return "must not contain user information";
	if (*host == '[') {
		/* IP literal: compared as written, brackets included. */
		if ((p = memchr(host, ']', (size_t)(auth_end - host))) == NULL)
			return "has an invalid host";
		host_end = p + 1;
	} else {
		host_end = memchr(host, ':', (size_t)(auth_end - host));
		if (host_end == NULL)
			host_end = auth_end;
		for (p = host; p < host_end; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
				return "has an invalid host";
	}
	if (host_end == host)
		return "has no host";
	if (host_end < auth_end) {
		/* A port: ":" then 1..5 digits, up to 65535. */
		long port = 0;

		if (*host_end != ':' || auth_end - host_end < 2 || auth_end - host_end > 6)
			return "has an invalid port";
		for (p = host_end + 1; p < auth_end; p++) {
			if (*p < '0' || *p > '9')
				return "has an invalid port";
			port = port * 10 + (*p - '0');
		}
		if (port < 1 || port > 65535)
			return "has an invalid port";
	}
	if (!config_list_contains("ALLOWED_REDIRECT_HOSTS", host, (size_t)(host_end - host), 1))
		return "must point to an allowed host";
	return NULL;
}

int
checkout_email_ok(const char *email)
{
	const char *at = strchr(email, '@'), *p, *dot;
	size_t n = strlen(email);

	if (n < 3 || n > CHECKOUT_EMAIL_MAX || at == NULL || at == email ||
	    strchr(at + 1, '@') != NULL || at - email > 64)
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

/* POST /v1/customers; *id is the new customer's id (caller frees). */
static enum outcome
create_stripe_customer(const char *user_id, const char *email, char **id)
{
	struct form f;
	struct json_object *cus = NULL;
	const char *parts[] = {user_id};
	char *key = stripe_idempotency_key("customer", parts, 1);
	const char *cid;
	enum outcome o = OUT_INTERNAL;

	form_init(&f);
	if ((email && form_add(&f, "email", email) == -1) ||
	    form_add(&f, "metadata[userId]", user_id) == -1)
		goto out;
	if ((o = stripe_post("/v1/customers", &f, key, &cus)) == OUT_IDEMPOTENCY_CONFLICT) {
		/*
		 * The key is the user's: an earlier checkout created the
		 * customer with another email and could not store it.  Only
		 * an operator can pick it up (metadata.userId names the user).
		 */
		log_msg("stripe POST /v1/customers: customer created earlier with other details"
			" and not stored");
		o = OUT_STRIPE_ERROR;
	}
	if (o != OUT_OK)
		goto out;
	if ((cid = jsonget_str(cus, "id")) == NULL || strncmp(cid, "cus_", 4) != 0) {
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

enum outcome
checkout_customer(struct db *db, const char *user_id, const char *email, char **customer_id)
{
	struct db_rows *rows = NULL;
	char *created = NULL;
	enum db_result r;
	enum outcome o;

	*customer_id = NULL;
	if ((r = db_begin(db)) != DB_OK)
		return db_outcome(r);
	/*
	 * One customer per user: concurrent first checkouts of a user wait
	 * here, so only one of them creates it.  The lock ends with the
	 * transaction.
	 */
	if ((r = DB_QUERY(db, NULL, "SELECT pg_advisory_xact_lock(hashtext('customer:' || $1))",
			  user_id)) != DB_OK ||
	    (r = DB_QUERY(db, &rows, "SELECT stripe_customer_id FROM customers WHERE user_id = $1",
			  user_id)) != DB_OK) {
		o = db_outcome(r);
		goto out;
	}
	if (db_rows_count(rows) > 0 && db_rows_get(rows, 0, 0) != NULL) {
		*customer_id = mem_strdup(db_rows_get(rows, 0, 0));
		db_rollback(db);
		o = OUT_OK;
		goto out;
	}
	if ((o = create_stripe_customer(user_id, email, &created)) != OUT_OK)
		goto out;
	if ((r = DB_QUERY(
		 db, NULL,
		 "INSERT INTO customers (user_id, stripe_customer_id, email) VALUES ($1, $2, $3)",
		 user_id, created, email)) != DB_OK ||
	    (r = db_commit(db)) != DB_OK) {
		o = db_outcome(r);
		goto out;
	}
	*customer_id = created;
	created = NULL;
	o = OUT_OK;
out:
	if (o != OUT_OK)
		db_rollback(db);
	db_rows_free(rows);
	free(created);
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

enum outcome
checkout_create_session(const struct checkout_order *order, const char *customer_id,
			const char *idempotency_key, char **session_id, char **url)
{
	struct form f;
	struct json_object *session = NULL;
	const char *price, *sid, *surl;
	long trial_days = 0;
	enum outcome o;

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
	if ((o = stripe_post("/v1/checkout/sessions", &f, idempotency_key, &session)) != OUT_OK)
		goto out;
	sid = jsonget_str(session, "id");
	surl = jsonget_str(session, "url");
	if (sid == NULL || surl == NULL || strncmp(surl, "https://", 8) != 0) {
		log_msg("stripe POST /v1/checkout/sessions: answer without id or https url");
		o = OUT_STRIPE_ERROR;
		goto out;
	}
	*session_id = mem_strdup(sid);
	*url = mem_strdup(surl);
	o = OUT_OK;
out:
	json_object_put(session);
	form_free(&f);
	return o;
}
