#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "config.h"
#include "form.h"
#include "jsonget.h"
#include "plan_change.h"
#include "tap.h"

/* A Stripe invoice with period_end and lines "amount:p" (p: proration) or "amount:r@end". */
static struct json_object *
invoice(long long due, long long period_end, const char *currency, const char *lines)
{
	char text[4096];

	snprintf(
	    text, sizeof(text),
	    "{\"object\":\"invoice\",\"amount_due\":%lld,\"period_end\":%lld,\"currency\":\"%s\","
	    "\"lines\":{\"data\":[%s]}}",
	    due, period_end, currency, lines);
	return json_tokener_parse(text);
}

#define LINE(amount, proration, end)                                                               \
	"{\"amount\":" #amount ",\"description\":\"d" #amount                                      \
	"\",\"period\":{\"start\":1,\"end\":" #end                                                 \
	"},\"parent\":{\"subscription_item_details\":{\"proration\":" #proration "}}}"

static const char *
member(struct json_object *o, const char *path)
{
	struct json_object *v = jsonget_path(o, path);

	return v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "(absent)";
}

int
main(void)
{
	struct plan_change c = {"sub_1", "si_1", "price_new", PRORATION_CREATE, 0};
	struct json_object *inv, *renewal, *a;
	enum plan_proration p;
	const char *why = NULL;
	struct form f;

	/* Names and the behaviour a request may use. */
	ok(plan_change_proration_parse("always_invoice", &p) == 0 && p == PRORATION_ALWAYS_INVOICE,
	   "parse always_invoice");
	ok(plan_change_proration_parse("later", &p) == -1, "unknown behaviour");
	unsetenv("BILLING_CONFIG");
	unsetenv("STRIPE_PRORATION_BEHAVIOR");
	unsetenv("STRIPE_PRORATION_CHOICES");
	ok(config_load() == OUT_OK, "config loads");
	ok(plan_change_proration(NULL, &p, &why) == OUT_OK && p == PRORATION_CREATE,
	   "default: create_prorations");
	ok(plan_change_proration("always_invoice", &p, &why) == OUT_OK &&
	       p == PRORATION_ALWAYS_INVOICE,
	   "always_invoice allowed by default");
	ok(plan_change_proration("none", &p, &why) == OUT_INVALID_FIELD && why != NULL,
	   "none refused by default (a free upgrade for the rest of the period)");
	setenv("STRIPE_PRORATION_CHOICES", "none, create_prorations", 1);
	ok(plan_change_proration("none", &p, &why) == OUT_OK && p == PRORATION_NONE,
	   "none when STRIPE_PRORATION_CHOICES lists it");
	ok(plan_change_proration("always_invoice", &p, &why) == OUT_INVALID_FIELD,
	   "a behaviour the list leaves out");
	setenv("STRIPE_PRORATION_BEHAVIOR", "none", 1);
	ok(plan_change_proration(NULL, &p, &why) == OUT_OK && p == PRORATION_NONE,
	   "STRIPE_PRORATION_BEHAVIOR is the default");
	setenv("STRIPE_PRORATION_BEHAVIOR", "maybe", 1);
	ok(plan_change_proration(NULL, &p, &why) == OUT_MISCONFIGURED, "bad default setting");

	/* Stripe parameters. */
	form_init(&f);
	ok(plan_change_update_params(&f, &c) == 0, "update params");
	is_str(form_str(&f),
	       "items[0][id]=si_1&items[0][price]=price_new"
	       "&proration_behavior=create_prorations&payment_behavior=pending_if_incomplete",
	       "update: item, price, behaviour, pending_if_incomplete; no proration_date");
	form_free(&f);
	form_init(&f);
	c.proration_date = 1700000000;
	c.proration = PRORATION_ALWAYS_INVOICE;
	ok(plan_change_update_params(&f, &c) == 0 &&
	       strstr(form_str(&f), "&proration_date=1700000000&") != NULL,
	   "update: proration_date when given");
	form_free(&f);
	form_init(&f);
	ok(plan_change_preview_params(&f, &c, PRORATION_NONE) == 0, "preview params");
	is_str(form_str(&f),
	       "subscription=sub_1&subscription_details[items][0][id]=si_1"
	       "&subscription_details[items][0][price]=price_new"
	       "&subscription_details[proration_behavior]=none"
	       "&subscription_details[proration_date]=1700000000",
	       "preview: the given behaviour");
	form_free(&f);

	ok(!plan_change_invoiced_now(PRORATION_CREATE, 0, 0), "create_prorations: next invoice");
	ok(plan_change_invoiced_now(PRORATION_ALWAYS_INVOICE, 0, 0), "always_invoice: now");
	ok(!plan_change_invoiced_now(PRORATION_ALWAYS_INVOICE, 0, 1), "always_invoice in a trial");
	ok(plan_change_invoiced_now(PRORATION_NONE, 1, 0), "a new interval: now, whatever");

	/* The preview answer: the next invoice. */
	inv = invoice(1400, 1800000000, "usd",
		      LINE(-500, true, 9) "," LINE(1000, true, 9) "," LINE(900, false, 9));
	ok(plan_change_preview_answer(inv, NULL, 0, PRORATION_CREATE, 1700000000, &a) == OUT_OK,
	   "next-invoice preview");
	is_str(member(a, "dueNow"), "{\"amount\":0,\"lines\":[]}", "nothing due now");
	is_str(member(a, "nextInvoice.amount"), "1400", "next invoice: amount_due");
	is_str(member(a, "nextInvoice.date"), "\"2027-01-15T08:00:00Z\"", "next invoice: its date");
	is_str(member(a, "nextInvoice.lines.0"),
	       "{\"description\":\"d-500\",\"amount\":-500,\"proration\":true}", "a line");
	is_str(member(a, "prorationDate"), "1700000000", "prorationDate");
	is_str(member(a, "proration"), "\"create_prorations\"", "proration");
	is_str(member(a, "currency"), "\"usd\"", "currency");
	json_object_put(a);
	json_object_put(inv);

	/* Invoiced now, same interval: the renewal's non-proration lines. */
	inv = invoice(500, 1, "usd", LINE(-500, true, 9) "," LINE(1000, true, 9));
	renewal = invoice(1400, 1800000000, "usd", LINE(-100, true, 9) "," LINE(1500, false, 9));
	ok(plan_change_preview_answer(inv, renewal, 1, PRORATION_ALWAYS_INVOICE, 1, &a) == OUT_OK,
	   "invoiced-now preview");
	is_str(member(a, "dueNow.amount"), "500", "due now: the change's invoice");
	is_str(member(a, "nextInvoice.amount"), "1500",
	       "next: the renewal only (earlier prorations go on the change's invoice)");
	is_str(member(a, "nextInvoice.date"), "\"2027-01-15T08:00:00Z\"", "next: renewal date");
	json_object_put(a);
	json_object_put(renewal);
	json_object_put(inv);

	/* A new interval: the new period is billed now and renews at its end. */
	inv = invoice(18500, 1, "eur", LINE(-500, true, 1) "," LINE(19000, false, 1831536000));
	ok(plan_change_preview_answer(inv, NULL, 1, PRORATION_CREATE, 1, &a) == OUT_OK,
	   "new-interval preview");
	is_str(member(a, "dueNow.amount"), "18500", "due now: credit + the new period");
	is_str(member(a, "nextInvoice.amount"), "19000", "next: the new period's price");
	is_str(member(a, "nextInvoice.date"), "\"2028-01-15T08:00:00Z\"", "next: at its end");
	json_object_put(a);
	json_object_put(inv);

	inv = json_tokener_parse("{\"amount_due\":\"12\",\"lines\":{\"data\":[]}}");
	ok(plan_change_preview_answer(inv, NULL, 0, PRORATION_CREATE, 1, &a) == OUT_STRIPE_ERROR &&
	       a == NULL,
	   "an invoice without an integer amount_due: stripe error");
	json_object_put(inv);
	inv = invoice(1, 1, "usd", "{\"amount\":null}");
	ok(plan_change_preview_answer(inv, NULL, 0, PRORATION_CREATE, 1, &a) == OUT_STRIPE_ERROR,
	   "a line without an amount: stripe error");
	json_object_put(inv);

	/* Amounts whose sum a long long cannot hold (a broken answer): refused, not wrapped. */
	inv = invoice(1, 1, "usd",
		      LINE(9223372036854775806, false, 9) "," LINE(9223372036854775806, false, 9));
	ok(plan_change_preview_answer(inv, NULL, 1, PRORATION_CREATE, 1, &a) == OUT_STRIPE_ERROR &&
	       a == NULL,
	   "line amounts that overflow their sum: stripe error");
	json_object_put(a);
	json_object_put(inv);
	inv = invoice(1, 1, "usd", LINE(-9223372036854775806, false, 9) "," LINE(-3, false, 9));
	ok(plan_change_preview_answer(inv, NULL, 1, PRORATION_CREATE, 1, &a) == OUT_STRIPE_ERROR &&
	       a == NULL,
	   "line amounts that overflow their sum downwards: stripe error");
	json_object_put(a);
	json_object_put(inv);
	return done_testing();
}
