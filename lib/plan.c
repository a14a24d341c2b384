#include <stdio.h>
#include <string.h>

#include "config.h"
#include "limits.h"
#include "plan.h"

static const char *const tier_names[TIER__MAX] = {
	[TIER_FREE] = "free",
	[TIER_BASIC] = "basic",
	[TIER_PRO] = "pro",
	[TIER_ENTERPRISE] = "enterprise",
};

static const char *const tier_settings[TIER__MAX] = {
	[TIER_FREE] = "FREE",
	[TIER_BASIC] = "BASIC",
	[TIER_PRO] = "PRO",
	[TIER_ENTERPRISE] = "ENTERPRISE",
};

static const char *const interval_names[INTERVAL__MAX] = {
	[INTERVAL_MONTHLY] = "monthly",
	[INTERVAL_YEARLY] = "yearly",
};

static const char *const interval_settings[INTERVAL__MAX] = {
	[INTERVAL_MONTHLY] = "MONTHLY",
	[INTERVAL_YEARLY] = "YEARLY",
};

/* Documented defaults: the first customer's Basic and Pro trials. */
static const long default_trial_days[TIER__MAX] = {
	[TIER_FREE] = 0,
	[TIER_BASIC] = 14,
	[TIER_PRO] = 30,
	[TIER_ENTERPRISE] = 0,
};

const char *
plan_tier_name(enum plan_tier t)
{
	return (unsigned)t < TIER__MAX ? tier_names[t] : "free";
}

int
plan_tier_parse(const char *s, enum plan_tier *t)
{
	int i;

	for (i = 0; s && i < TIER__MAX; i++)
		if (strcmp(s, tier_names[i]) == 0) {
			*t = (enum plan_tier)i;
			return 0;
		}
	return -1;
}

const char *
plan_interval_name(enum plan_interval i)
{
	return (unsigned)i < INTERVAL__MAX ? interval_names[i] : "monthly";
}

int
plan_interval_parse(const char *s, enum plan_interval *i)
{
	if (s == NULL)
		return -1;
	if (strcmp(s, "monthly") == 0 || strcmp(s, "month") == 0) {
		*i = INTERVAL_MONTHLY;
		return 0;
	}
	if (strcmp(s, "yearly") == 0 || strcmp(s, "year") == 0) {
		*i = INTERVAL_YEARLY;
		return 0;
	}
	return -1;
}

const char *
plan_price_id(enum plan_tier t, enum plan_interval i)
{
	char name[64];

	if ((unsigned)t >= TIER__MAX || t == TIER_FREE || (unsigned)i >= INTERVAL__MAX)
		return NULL;
	snprintf(name, sizeof(name), "STRIPE_PRICE_%s_%s", tier_settings[t],
	    interval_settings[i]);
	return config_get(name);
}

int
plan_from_price(const char *price_id, enum plan_tier *t, enum plan_interval *i)
{
	const char *p;
	int ti, ii;

	if (price_id == NULL || *price_id == '\0')
		return -1;
	for (ti = TIER_BASIC; ti < TIER__MAX; ti++)
		for (ii = 0; ii < INTERVAL__MAX; ii++) {
			p = plan_price_id((enum plan_tier)ti, (enum plan_interval)ii);
			if (p && strcmp(p, price_id) == 0) {
				*t = (enum plan_tier)ti;
				*i = (enum plan_interval)ii;
				return 0;
			}
		}
	return -1;
}

enum outcome
plan_trial_days(enum plan_tier t, long *days)
{
	char name[64];

	if ((unsigned)t >= TIER__MAX)
		return OUT_INTERNAL;
	snprintf(name, sizeof(name), "STRIPE_TRIAL_DAYS_%s", tier_settings[t]);
	return config_get_long(name, default_trial_days[t], 0, LIMIT_TRIAL_DAYS_MAX, days);
}
