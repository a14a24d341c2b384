/*
 * lib/compose: amounts and dates as a mail shows them, loading the
 * installed templates (SRCDIR/mail) with the settings, and one message
 * per kind; what it refuses at start-up and per row.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "compose.h"
#include "config.h"
#include "tap.h"

static void
test_amounts(void)
{
	static const struct {
		long long minor;
		const char *currency, *want;
	} cases[] = {
		{ 1500, "usd", "15.00 USD" }, { 5, "eur", "0.05 EUR" }, { 0, "gbp", "0.00 GBP" },
		{ 1500, "jpy", "1500 JPY" }, { 1500, "KRW", "1500 KRW" }, { 1500, "kwd", "1.500 KWD" },
		{ -250, "usd", "-2.50 USD" }, { 4900000, "chf", "49000.00 CHF" },
	};
	char out[64];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ok(compose_amount(cases[i].minor, cases[i].currency, out, sizeof(out)) == 0,
		    "amount %lld %s", cases[i].minor, cases[i].currency);
		is_str(out, cases[i].want, "  shown as expected");
	}
	ok(compose_amount(1, "us", out, sizeof(out)) == -1 && compose_amount(1, NULL, out, 8) == -1 &&
	    compose_amount(1, "u1d", out, sizeof(out)) == -1 && compose_amount(1, "usdx", out, 9) == -1,
	    "a currency that is not three letters is refused");
	ok(compose_amount(123456789, "usd", out, 6) == -1, "a buffer too small is refused");
}

static void
test_dates(void)
{
	char out[64];

	ok(compose_date("2026-11-27T09:00:00Z", out, sizeof(out)) == 0, "RFC 3339 UTC time");
	is_str(out, "27 November 2026", "  as a date");
	ok(compose_date("2027-01-05T23:59:59Z", out, sizeof(out)) == 0 &&
	    strcmp(out, "5 January 2027") == 0, "no leading zero");
	ok(compose_date("2026-13-01T00:00:00Z", out, sizeof(out)) == -1, "month 13 refused");
	ok(compose_date("2026-11-27", out, sizeof(out)) == -1, "a bare date refused");
	ok(compose_date("2026-11-27T09:00:00Z junk", out, sizeof(out)) == -1, "trailing text refused");
	ok(compose_date(NULL, out, sizeof(out)) == -1, "NULL refused");
}

static char dir[4096];

static void
settings(void)
{
	setenv("MAIL_FROM", "Billing <billing@example.test>", 1);
	setenv("MAIL_ACCOUNT_URL", "https://app.example.test/account", 1);
	setenv("MAIL_APP_NAME", "Pain Tracker", 1);
	setenv("MAIL_TEMPLATE_DIR", dir, 1);
	unsetenv("MAIL_REPLY_TO");
}

static int
message(struct compose *c, const char *kind, const char *payload, const char *to, struct buf *out,
    char **id, char *reason)
{
	struct compose_input in = { "7", kind, payload, to, 1795521228496342LL, 1795770000 };

	buf_reset(out);
	return compose_message(c, &in, out, id, reason, 300);
}

static void
test_messages(void)
{
	static const char *const kinds[] = { "trial_will_end", "payment_failed",
		"payment_action_required", "subscription_canceled", "welcome" };
	const char *payload = "{\"plan\":\"pro\",\"interval\":\"yearly\",\"amount\":49000,"
	    "\"currency\":\"usd\",\"trial_end\":\"2026-11-27T09:00:00Z\",\"ended_at\":"
	    "\"2026-12-23T11:20:31Z\",\"hosted_invoice_url\":\"https://invoice.stripe.com/i/x\","
	    "\"invoice_number\":\"INV-7\"}";
	struct compose *c = NULL;
	struct buf out = BUF_INIT(1 << 20);
	char *id = NULL, reason[300];
	size_t i;

	settings();
	ok(compose_load("/nonexistent", &c) == OUT_OK, "the installed templates load");
	if (c == NULL)
		return;
	is_str(compose_sender(c), "billing@example.test", "the envelope sender is MAIL_FROM's address");
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		ok(message(c, kinds[i], payload, "ada@example.test", &out, &id, reason) == 0,
		    "%s renders", kinds[i]);
		is_str(id, "<billing.7.1795521228496342@example.test>", "  Message-ID");
		ok(strstr(buf_str(&out), "\r\nX-Billing-Notification: ") != NULL &&
		    strstr(buf_str(&out), kinds[i]) != NULL && strstr(buf_str(&out), "{{") == NULL,
		    "  every placeholder filled");
		free(id);
	}
	ok(message(c, "trial_will_end", payload, "ada@example.test", &out, &id, reason) == 0 &&
	    strstr(buf_str(&out), "Subject: Your Pain Tracker trial ends on 27 November 2026\r\n") &&
	    strstr(buf_str(&out), "at 490.00 USD per year"), "values: subject, amount, interval");
	free(id);
	ok(message(c, "payment_failed", "{\"plan\":\"pro\",\"amount\":1500,\"currency\":\"usd\","
	    "\"invoice_number\":\"1\"}", "ada@example.test", &out, &id, reason) == -1 && id == NULL,
	    "a payload without what the template needs is refused");
	ok(strstr(reason, "{{interval}}") || strstr(reason, "{{invoice_url}}"),
	    "  naming the placeholder: %s", reason);
	ok(message(c, "payment_failed", "{\"plan\":\"pro\",\"interval\":\"monthly\",\"amount\":1,"
	    "\"currency\":\"usd\",\"invoice_number\":\"1\",\"hosted_invoice_url\":"
	    "\"http://evil.example/\"}", "ada@example.test", &out, &id, reason) == -1 &&
	    strstr(reason, "{{invoice_url}}"), "an invoice URL that is not https is never put in");
	ok(message(c, "newsletter", payload, "ada@example.test", &out, &id, reason) == -1 &&
	    strcmp(reason, "unknown kind") == 0, "an unknown kind is refused");
	ok(message(c, "welcome", payload, "ada@example.test\r\nBcc: x@y.z", &out, &id, reason) == -1,
	    "a recipient that is not a plain address is refused");
	ok(message(c, "welcome", "[1]", "ada@example.test", &out, &id, reason) == -1,
	    "a payload that is not an object is refused");
	compose_free(c);
}

static void
test_refusals(void)
{
	struct compose *c = NULL;

	settings();
	unsetenv("MAIL_FROM");
	ok(compose_load("/nonexistent", &c) == OUT_MISCONFIGURED && c == NULL, "MAIL_FROM is required");
	settings();
	setenv("MAIL_REPLY_TO", "not an address", 1);
	ok(compose_load("/nonexistent", &c) == OUT_MISCONFIGURED, "MAIL_REPLY_TO must be a mailbox");
	settings();
	setenv("MAIL_ACCOUNT_URL", "javascript:alert(1)", 1);
	ok(compose_load("/nonexistent", &c) == OUT_MISCONFIGURED, "MAIL_ACCOUNT_URL must be http(s)");
	settings();
	unsetenv("MAIL_ACCOUNT_URL");
	ok(compose_load("/nonexistent", &c) == OUT_MISCONFIGURED,
	    "the installed templates use {{account_url}}: MAIL_ACCOUNT_URL required");
	settings();
	unsetenv("MAIL_TEMPLATE_DIR");
	ok(compose_load("/nonexistent", &c) == OUT_MISCONFIGURED,
	    "without MAIL_TEMPLATE_DIR the default directory is used (here: missing)");
	ok(compose_load(dir, &c) == OUT_OK, "and the default directory is what it loads");
	compose_free(c);
	compose_free(NULL);
}

int
main(void)
{
	const char *src = getenv("SRCDIR");

	snprintf(dir, sizeof(dir), "%s/mail", src ? src : "..");
	test_amounts();
	test_dates();
	test_messages();
	test_refusals();
	return done_testing();
}
