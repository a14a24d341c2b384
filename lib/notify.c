#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "notify.h"
#include "outbox.h"
#include "response.h"
#include "template.h"

static const char *const kind_names[NOTIFY__MAX] = {
	[NOTIFY_TRIAL_WILL_END] = "trial_will_end",
	[NOTIFY_PAYMENT_FAILED] = "payment_failed",
	[NOTIFY_PAYMENT_ACTION_REQUIRED] = "payment_action_required",
	[NOTIFY_SUBSCRIPTION_CANCELED] = "subscription_canceled",
	[NOTIFY_WELCOME] = "welcome",
};

const char *
notify_kind_name(enum notify_kind k)
{
	return (unsigned)k < NOTIFY__MAX ? kind_names[k] : NULL;
}

static int
kind_parse_n(const char *s, size_t n, enum notify_kind *k)
{
	int i;

	for (i = 0; i < NOTIFY__MAX; i++)
		if (strlen(kind_names[i]) == n && memcmp(kind_names[i], s, n) == 0) {
			*k = (enum notify_kind)i;
			return 0;
		}
	return -1;
}

int
notify_kind_parse(const char *s, enum notify_kind *k)
{
	return s ? kind_parse_n(s, strlen(s), k) : -1;
}

enum outcome
notify_kinds(unsigned *mask)
{
	const unsigned all = (1u << NOTIFY__MAX) - 1;
	const char *v = config_get("NOTIFY_KINDS"), *s, *e, *comma;
	enum notify_kind k;

	/* welcome is opt-in: many apps already greet new customers themselves. */
	*mask = all & ~(1u << NOTIFY_WELCOME);
	if (v == NULL)
		return OUT_OK;
	*mask = 0;
	for (s = v;; s = comma + 1) {
		comma = strchr(s, ',');
		e = comma ? comma : s + strlen(s);
		while (s < e && (*s == ' ' || *s == '\t'))
			s++;
		while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (e - s == 3 && memcmp(s, "all", 3) == 0)
			*mask = all;
		else if (e - s == 4 && memcmp(s, "none", 4) == 0)
			;
		else if (kind_parse_n(s, (size_t)(e - s), &k) == 0)
			*mask |= 1u << k;
		else {
			log_msg("setting NOTIFY_KINDS must list kinds (trial_will_end, payment_failed,"
			    " payment_action_required, subscription_canceled, welcome), all or none");
			return OUT_MISCONFIGURED;
		}
		if (comma == NULL)
			return OUT_OK;
	}
}

static void
add(struct json_object *o, const char *key, struct json_object *v)
{
	if (v == NULL || json_object_object_add(o, key, v) != 0)
		response_fatal("out of memory");
}

/* A unix time as RFC 3339 UTC text (billing_iso_utc's format). */
static void
add_unix_time(struct json_object *o, const char *key, long long t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char s[32];

	if (t < 0 || t > 253402300799LL || gmtime_r(&tt, &tm) == NULL ||
	    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		return;
	add(o, key, json_object_new_string(s));
}

static void
add_time(struct json_object *o, const char *key, struct json_object *obj, const char *path)
{
	long long t;

	if (jsonget_path_int(obj, path, &t) == 0)
		add_unix_time(o, key, t);
}

static void
add_int(struct json_object *o, const char *key, struct json_object *obj, const char *path)
{
	long long v;

	if (jsonget_path_int(obj, path, &v) == 0)
		add(o, key, json_object_new_int64(v));
}

/* A short clean string (currency, invoice number, reason). */
static void
add_short(struct json_object *o, const char *key, struct json_object *obj, const char *path)
{
	const char *s = jsonget_path_str(obj, path);
	size_t n = s ? strlen(s) : 0;

	if (s && n > 0 && n <= LIMIT_STRIPE_SHORT_TEXT && jsonget_clean_utf8(s, n))
		add(o, key, json_object_new_string(s));
}

/* The invoice's page at Stripe, where the customer pays or confirms: it goes into an href. */
static void
add_url(struct json_object *o, const char *key, struct json_object *obj, const char *path)
{
	const char *s = jsonget_path_str(obj, path);

	if (template_url_ok(s, 1))
		add(o, key, json_object_new_string(s));
}

/* The event's own values for kind (see notify.h). */
static struct json_object *
extras(enum notify_kind kind, const struct notify_event *ev)
{
	struct json_object *o = json_object_new_object(), *obj = ev->object;
	long long t;

	if (o == NULL)
		response_fatal("out of memory");
	switch (kind) {
	case NOTIFY_TRIAL_WILL_END:
		add_time(o, "trial_end", obj, "trial_end");
		break;
	case NOTIFY_PAYMENT_FAILED:
	case NOTIFY_PAYMENT_ACTION_REQUIRED:
		add_int(o, "amount", obj, "amount_due");
		add_short(o, "currency", obj, "currency");
		add_url(o, "hosted_invoice_url", obj, "hosted_invoice_url");
		add_short(o, "invoice_number", obj, "number");
		add_int(o, "attempt_count", obj, "attempt_count");
		add_time(o, "next_payment_attempt", obj, "next_payment_attempt");
		break;
	case NOTIFY_SUBSCRIPTION_CANCELED:
		/* A deletion without ended_at ended when Stripe sent it. */
		if (jsonget_path_int(obj, "ended_at", &t) == -1)
			t = ev->created;
		add_unix_time(o, "ended_at", t);
		add_short(o, "cancellation_reason", obj, "cancellation_details.reason");
		break;
	default:
		break;
	}
	return o;
}

enum db_result
notify_queue(struct db *db, enum notify_kind kind, const struct notify_event *ev)
{
	struct json_object *x = NULL;
	unsigned mask;
	char dedupe[300];
	const char *status;
	enum db_result r;

	if (notify_kinds(&mask) != OUT_OK || !(mask & (1u << kind)))
		return DB_OK;
	status = jsonget_str(ev->object, "status");
	if (kind == NOTIFY_SUBSCRIPTION_CANCELED && status &&
	    strcmp(status, "incomplete_expired") == 0)
		return DB_OK;
	snprintf(dedupe, sizeof(dedupe), "%s:%s", ev->id, kind_names[kind]);
	x = extras(kind, ev);
	r = outbox_queue(db, kind_names[kind], dedupe, ev->id, ev->user_id, ev->customer_id,
	    ev->subscription_id, json_object_to_json_string_ext(x, JSON_C_TO_STRING_PLAIN));
	json_object_put(x);
	return r;
}
