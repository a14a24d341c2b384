#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "jsonget.h"
#include "log.h"
#include "plan_change.h"
#include "response.h"

static const char *const proration_names[PRORATION__MAX] = {
    [PRORATION_CREATE] = "create_prorations",
    [PRORATION_ALWAYS_INVOICE] = "always_invoice",
    [PRORATION_NONE] = "none",
};

const char *
plan_change_proration_name(enum plan_proration p)
{
	return (unsigned)p < PRORATION__MAX ? proration_names[p] : "create_prorations";
}

int
plan_change_proration_parse(const char *s, enum plan_proration *p)
{
	int i;

	for (i = 0; s && i < PRORATION__MAX; i++)
		if (strcmp(s, proration_names[i]) == 0) {
			*p = (enum plan_proration)i;
			return 0;
		}
	return -1;
}

/* Whether name is in STRIPE_PRORATION_CHOICES; unset: create_prorations and always_invoice. */
static int
proration_allowed(const char *name)
{
	if (config_get("STRIPE_PRORATION_CHOICES") != NULL)
		return config_list_contains("STRIPE_PRORATION_CHOICES", name, strlen(name), 0);
	return strcmp(name, "create_prorations") == 0 || strcmp(name, "always_invoice") == 0;
}

enum outcome
plan_change_proration(const char *requested, enum plan_proration *p, const char **why)
{
	const char *dflt = config_get_default("STRIPE_PRORATION_BEHAVIOR", "create_prorations");

	if (requested == NULL) {
		if (plan_change_proration_parse(dflt, p) == -1) {
			log_msg("setting STRIPE_PRORATION_BEHAVIOR must be create_prorations,"
				" always_invoice or none");
			return OUT_MISCONFIGURED;
		}
		return OUT_OK;
	}
	if (plan_change_proration_parse(requested, p) == -1) {
		*why = "must be one of create_prorations, always_invoice, none";
		return OUT_INVALID_FIELD;
	}
	if (!proration_allowed(requested)) {
		*why = "is not allowed here (STRIPE_PRORATION_CHOICES)";
		return OUT_INVALID_FIELD;
	}
	return OUT_OK;
}

int
plan_change_update_params(struct form *f, const struct plan_change *c)
{
	if (form_add(f, "items[0][id]", c->item) == -1 ||
	    form_add(f, "items[0][price]", c->price) == -1 ||
	    form_add(f, "proration_behavior", plan_change_proration_name(c->proration)) == -1 ||
	    (c->proration_date > 0 &&
	     form_add_long(f, "proration_date", c->proration_date) == -1) ||
	    form_add(f, "payment_behavior", "pending_if_incomplete") == -1)
		return -1;
	return 0;
}

int
plan_change_preview_params(struct form *f, const struct plan_change *c,
			   enum plan_proration behaviour)
{
	if (form_add(f, "subscription", c->subscription) == -1 ||
	    form_add(f, "subscription_details[items][0][id]", c->item) == -1 ||
	    form_add(f, "subscription_details[items][0][price]", c->price) == -1 ||
	    form_add(f, "subscription_details[proration_behavior]",
		     plan_change_proration_name(behaviour)) == -1 ||
	    form_add_long(f, "subscription_details[proration_date]", c->proration_date) == -1)
		return -1;
	return 0;
}

int
plan_change_invoiced_now(enum plan_proration p, int interval_changes, int trialing)
{
	return interval_changes || (p == PRORATION_ALWAYS_INVOICE && !trialing);
}

/* RFC 3339 UTC, as the rest of the API writes times. */
static struct json_object *
utc_time(long long t)
{
	char s[32];
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		return NULL;
	return json_object_new_string(s);
}

/* A line's proration flag: basil's parent.subscription_item_details, else the older field. */
static int
line_is_proration(struct json_object *ln)
{
	struct json_object *v = jsonget_path(ln, "parent.subscription_item_details.proration");
	int b = 0;

	if (v != NULL && json_object_is_type(v, json_type_boolean))
		return json_object_get_boolean(v);
	return jsonget_bool(ln, "proration", &b) == 0 && b;
}

/*
 * The lines of inv as [{"description","amount","proration"}] (all, or
 * only the non-proration ones), their sum in *sum and the latest
 * period.end among them in *end.  NULL when a line has no integer amount
 * or the amounts add up beyond 64 bits (an answer no invoice gives).
 */
static struct json_object *
lines_of(struct json_object *inv, int renewal_only, long long *sum, long long *end)
{
	struct json_object *data = jsonget_path(inv, "lines.data"), *out, *ln, *o;
	long long amount, e;
	const char *desc;
	size_t i, n;

	*sum = 0;
	*end = 0;
	if (data == NULL || !json_object_is_type(data, json_type_array))
		return NULL;
	out = json_object_new_array();
	if (out == NULL)
		response_fatal("out of memory");
	n = json_object_array_length(data);
	for (i = 0; i < n; i++) {
		ln = json_object_array_get_idx(data, i);
		if (jsonget_int(ln, "amount", &amount) == -1) {
			json_object_put(out);
			return NULL;
		}
		if (renewal_only && line_is_proration(ln))
			continue;
		if (amount > 0 ? *sum > INT64_MAX - amount : *sum < INT64_MIN - amount) {
			json_object_put(out);
			return NULL;
		}
		*sum += amount;
		if (jsonget_path_int(ln, "period.end", &e) == 0 && e > *end)
			*end = e;
		o = response_object();
		desc = jsonget_str(ln, "description");
		response_add(o, "description", desc ? json_object_new_string(desc) : NULL);
		response_add(o, "amount", json_object_new_int64(amount));
		response_add(o, "proration", json_object_new_boolean(line_is_proration(ln)));
		if (json_object_array_add(out, o) != 0)
			response_fatal("out of memory");
	}
	return out;
}

static struct json_object *
money_part(long long amount, struct json_object *lines, long long date)
{
	struct json_object *o = response_object();

	response_add(o, "amount", json_object_new_int64(amount));
	if (date >= 0)
		response_add(o, "date", date > 0 ? utc_time(date) : NULL);
	response_add(o, "lines", lines);
	return o;
}

enum outcome
plan_change_preview_answer(struct json_object *preview, struct json_object *renewal,
			   int invoiced_now, enum plan_proration p, long long proration_date,
			   struct json_object **answer)
{
	struct json_object *now_lines = NULL, *next_lines = NULL, *a;
	const char *currency = jsonget_str(preview, "currency");
	long long due = 0, next = 0, date = 0, sum, end;

	*answer = NULL;
	if (jsonget_int(preview, "amount_due", &due) == -1)
		goto bad;
	if (!invoiced_now) {
		/* The preview is the next invoice: prorations plus the next period. */
		if ((next_lines = lines_of(preview, 0, &sum, &end)) == NULL ||
		    jsonget_int(preview, "period_end", &date) == -1)
			goto bad;
		next = due;
		due = 0;
		now_lines = json_object_new_array();
	} else if (renewal != NULL) {
		/* Same interval: the renewal at the new price, from a preview without prorations.
		 */
		if ((now_lines = lines_of(preview, 0, &sum, &end)) == NULL ||
		    (next_lines = lines_of(renewal, 1, &next, &end)) == NULL ||
		    jsonget_int(renewal, "period_end", &date) == -1)
			goto bad;
	} else {
		/* A new interval: the new period billed now is what each renewal costs, at its end.
		 */
		if ((now_lines = lines_of(preview, 0, &sum, &end)) == NULL ||
		    (next_lines = lines_of(preview, 1, &next, &date)) == NULL)
			goto bad;
	}
	if (now_lines == NULL)
		response_fatal("out of memory");
	a = response_object();
	response_add(a, "proration", json_object_new_string(plan_change_proration_name(p)));
	response_add(a, "prorationDate", json_object_new_int64(proration_date));
	response_add(a, "currency", currency ? json_object_new_string(currency) : NULL);
	response_add(a, "dueNow", money_part(due, now_lines, -1));
	response_add(a, "nextInvoice", money_part(next, next_lines, date));
	*answer = a;
	return OUT_OK;
bad:
	json_object_put(now_lines);
	json_object_put(next_lines);
	log_msg("stripe POST /v1/invoices/create_preview: invoice without amounts or periods");
	return OUT_STRIPE_ERROR;
}
