#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "config.h"
#include "stripe.h"
#include "subscription.h"
#include "sync.h"
#include "tap.h"

/* 2026-11-24T12:00:00Z */
#define NOW 1795521600LL

static long long
since(const char *arg)
{
	long long v = 12345;

	return sync_parse_since(arg, NOW, &v) == 0 ? v : -12345;
}

static struct json_object *
sub(const char *text)
{
	return json_tokener_parse(text);
}

int
main(void)
{
	struct subscription_columns c;
	struct json_object *s;

	is_int(since("72h"), NOW - 72 * 3600, "72h ago");
	is_int(since("30d"), NOW - 30 * 86400, "30d ago");
	is_int(since("90m"), NOW - 90 * 60, "90m ago");
	is_int(since("0h"), NOW, "0h is now");
	is_int(since("2026-11-01"), 1793491200LL, "a UTC date is its midnight");
	is_int(since("2026-11-01T06:30:00Z"), 1793514600LL, "a UTC time");
	is_int(since("72"), -12345, "a number needs a unit");
	is_int(since("72s"), -12345, "seconds are no unit");
	is_int(since("72hh"), -12345, "one unit letter");
	is_int(since("-3h"), -12345, "no negative durations");
	is_int(since("h"), -12345, "no number");
	is_int(since(""), -12345, "empty");
	is_int(since("2026-1-5"), -12345, "the date needs two-digit month and day");
	is_int(since("2026-11-01T06:30:00"), -12345, "a time must say Z (UTC)");
	is_int(since("2026-11-01T06:30:00+01:00"), -12345, "only Z");
	is_int(since("2026-13-01"), -12345, "month 13");
	is_int(since("2026-02-30"), -12345, "February 30th is no date (not March 2nd)");
	is_int(since("2026-04-31"), -12345, "April 31st");
	is_int(since("2026-11-01T06:30:60Z"), -12345, "second 60 (not the next minute)");
	is_int(since("2024-02-29"), 1709164800LL, "a leap day");
	is_int(since("2026-11-24T12:00:00Z"), NOW, "now");
	is_int(since("2026-11-24T12:00:01Z"), -12345, "a time still to come");
	is_int(since("2027-11-01"), -12345, "a date still to come");
	is_int(since("2026-11-01x"), -12345, "trailing garbage");
	is_int(since("99999999999999999999d"), -12345, "overflow");

	ok(stripe_id_valid("sub_1S4bWLkdIwHu7ixYTI6wLqee"), "a subscription id");
	ok(!stripe_id_valid("sub_1/../x"), "no path characters in ids");
	ok(!stripe_id_valid(""), "no empty id");

	unsetenv("BILLING_CONFIG");
	setenv("STRIPE_PRICE_PRO_MONTHLY", "price_pm", 1);
	setenv("STRIPE_PRICE_BASIC_YEARLY", "price_by", 1);
	ok(config_load() == OUT_OK, "config loads");

	s = sub("{\"id\":\"sub_1\",\"status\":\"past_due\",\"cancel_at_period_end\":true,"
	    "\"items\":{\"data\":[{\"current_period_end\":1796000000,"
	    "\"price\":{\"id\":\"price_by\",\"recurring\":{\"interval\":\"year\"}}}]},"
	    "\"current_period_end\":1700000000}");
	subscription_columns_of(s, NULL, NULL, &c);
	is_str(c.status, "past_due", "status as listed");
	is_str(c.tier, "basic", "tier from the configured price");
	is_str(c.interval, "yearly", "interval from the configured price");
	is_int(c.period_end, 1796000000LL, "the item's period end wins (API 2025-03-31+)");
	ok(c.cancel_at_period_end, "cancel flag");
	json_object_put(s);

	s = sub("{\"id\":\"sub_2\",\"status\":\"active\",\"current_period_end\":1700000000,"
	    "\"items\":{\"data\":[{\"price\":{\"id\":\"price_unknown\"}}]}}");
	subscription_columns_of(s, "enterprise", "monthly", &c);
	is_str(c.tier, "enterprise", "an unknown price keeps the row's tier");
	is_str(c.interval, "monthly", "and interval");
	is_int(c.period_end, 1700000000LL, "older APIs: the subscription's period end");
	ok(!c.cancel_at_period_end, "no cancel flag");
	subscription_columns_of(s, NULL, NULL, &c);
	is_str(c.tier, "free", "an unknown price on a new row is free");
	is_str(c.interval, NULL, "and its interval unknown");
	json_object_put(s);

	s = sub("{\"id\":\"sub_3\",\"status\":\"sleeping\",\"metadata\":{\"tier\":\"pro\","
	    "\"interval\":\"yearly\"}}");
	subscription_columns_of(s, NULL, NULL, &c);
	is_str(c.status, NULL, "a status we do not know");
	is_str(c.tier, "pro", "tier from metadata");
	is_str(c.interval, "yearly", "interval from metadata");
	is_int(c.period_end, -1, "no period end");
	json_object_put(s);
	return done_testing();
}
