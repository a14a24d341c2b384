#include <stdlib.h>

#include "config.h"
#include "plan.h"
#include "tap.h"

int
main(void)
{
	enum plan_tier t;
	enum plan_interval i;
	long days;

	ok(plan_tier_parse("pro", &t) == 0 && t == TIER_PRO, "parse pro");
	ok(plan_tier_parse("Pro", &t) == -1, "tier names are exact");
	ok(plan_tier_parse(NULL, &t) == -1, "NULL tier");
	is_str(plan_tier_name(TIER_ENTERPRISE), "enterprise", "tier name");
	ok(plan_interval_parse("month", &i) == 0 && i == INTERVAL_MONTHLY, "Stripe's month");
	ok(plan_interval_parse("yearly", &i) == 0 && i == INTERVAL_YEARLY, "our yearly");
	ok(plan_interval_parse("week", &i) == -1, "unknown interval");

	unsetenv("BILLING_CONFIG");
	setenv("STRIPE_PRICE_PRO_YEARLY", "price_py", 1);
	setenv("STRIPE_PRICE_BASIC_MONTHLY", "price_bm", 1);
	ok(config_load() == OUT_OK, "config loads");
	is_str(plan_price_id(TIER_PRO, INTERVAL_YEARLY), "price_py", "price from setting");
	is_str(plan_price_id(TIER_PRO, INTERVAL_MONTHLY), NULL, "unset price is NULL");
	is_str(plan_price_id(TIER_FREE, INTERVAL_MONTHLY), NULL, "free has no price");
	ok(plan_from_price("price_bm", &t, &i) == 0 && t == TIER_BASIC && i == INTERVAL_MONTHLY,
	    "reverse lookup");
	ok(plan_from_price("price_other", &t, &i) == -1, "unknown price");
	ok(plan_from_price("", &t, &i) == -1, "empty price");

	ok(plan_trial_days(TIER_BASIC, &days) == OUT_OK && days == 14, "basic trial default 14");
	ok(plan_trial_days(TIER_PRO, &days) == OUT_OK && days == 30, "pro trial default 30");
	setenv("STRIPE_TRIAL_DAYS_PRO", "0", 1);
	ok(plan_trial_days(TIER_PRO, &days) == OUT_OK && days == 0, "trial configurable to 0");
	setenv("STRIPE_TRIAL_DAYS_PRO", "7x", 1);
	ok(plan_trial_days(TIER_PRO, &days) == OUT_MISCONFIGURED, "malformed trial days");
	setenv("STRIPE_TRIAL_DAYS_PRO", "731", 1);
	ok(plan_trial_days(TIER_PRO, &days) == OUT_MISCONFIGURED, "trial days over Stripe's 730");
	return done_testing();
}
