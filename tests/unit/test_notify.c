/*
 * lib/notify without a database: kind names and the NOTIFY_KINDS
 * setting.  Queueing is SQL against a real server in
 * tests/test_notify_queue.py.
 */
#include <stdlib.h>

#include "config.h"
#include "notify.h"
#include "tap.h"

static unsigned
kinds(const char *setting, enum outcome *rc)
{
	unsigned mask = 12345;

	if (setting)
		setenv("NOTIFY_KINDS", setting, 1);
	else
		unsetenv("NOTIFY_KINDS");
	*rc = notify_kinds(&mask);
	return mask;
}

int
main(void)
{
	const unsigned all = (1u << NOTIFY__MAX) - 1, welcome = 1u << NOTIFY_WELCOME;
	enum notify_kind k;
	enum outcome rc;
	unsigned m;
	int i;

	for (i = 0; i < NOTIFY__MAX; i++)
		ok(notify_kind_parse(notify_kind_name((enum notify_kind)i), &k) == 0 && (int)k == i,
		    "kind %s round-trips", notify_kind_name((enum notify_kind)i));
	ok(notify_kind_parse("newsletter", &k) == -1 && notify_kind_parse(NULL, &k) == -1,
	    "unknown kinds are refused");
	ok(notify_kind_name(NOTIFY__MAX) == NULL, "no name out of range");

	m = kinds(NULL, &rc);
	ok(rc == OUT_OK && m == (all & ~welcome), "unset: every kind but welcome");
	m = kinds("", &rc);
	ok(rc == OUT_OK && m == (all & ~welcome), "empty counts as unset");
	m = kinds("all", &rc);
	ok(rc == OUT_OK && m == all, "all");
	m = kinds("none", &rc);
	ok(rc == OUT_OK && m == 0, "none");
	m = kinds(" welcome , payment_failed ", &rc);
	ok(rc == OUT_OK && m == (welcome | 1u << NOTIFY_PAYMENT_FAILED), "a list, blanks trimmed");
	m = kinds("trial_will_end,payment_action_required,subscription_canceled", &rc);
	ok(rc == OUT_OK && m == (1u << NOTIFY_TRIAL_WILL_END | 1u << NOTIFY_PAYMENT_ACTION_REQUIRED |
	    1u << NOTIFY_SUBSCRIPTION_CANCELED), "three kinds");
	kinds("welcome,bogus", &rc);
	ok(rc == OUT_MISCONFIGURED, "an unknown kind: misconfigured");
	kinds("welcome,,trial_will_end", &rc);
	ok(rc == OUT_MISCONFIGURED, "an empty entry: misconfigured");
	kinds("WELCOME", &rc);
	ok(rc == OUT_MISCONFIGURED, "kinds are lower case");
	return done_testing();
}
